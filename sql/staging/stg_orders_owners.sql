-- stg_orders_owners: an order_id belongs to one shop (see stg_orders.sql). For an order_id that no earlier run
-- loaded and that this run gives more than one shop, it is the shop of the run's first good row for it (drop
-- order, then row); every row of it that names another shop is refused, naming both. Reads stg_orders (the
-- typed rows of this run) and _dup (the order_ids with more than one good row in this run: the only ones that
-- can have two shops), both made by the ingest; gives each refused row's new reason, which the ingest writes
-- into stg_orders.
with candidates as (
    -- every row, good or not, of the repeated order_ids that no earlier run loaded
    select stg.order_id, stg.shop_id, stg._file_ord, stg._row_number, stg._reject_reason
    from stg_orders as stg
    semi join _dup using (order_id)
    where stg._loaded_shop_id is null
),

first_rows as (
    -- the first good row's shop, for the order_ids whose good rows name more than one shop
    select order_id, arg_min(shop_id, _file_ord::BIGINT * 4294967296 + _row_number) as first_shop_id
    from candidates
    where _reject_reason is null
    group by order_id
    having min(shop_id) <> max(shop_id)
),

final as (
    select
        -- the row
        candidates._file_ord, candidates._row_number,
        -- its reasons: any it had, and this one
        concat_ws('; ', candidates._reject_reason,
            'order_id' || crm_echo('order_id', candidates.order_id) || ' belongs to shop '
            || first_rows.first_shop_id || ', this row says ' || candidates.shop_id) as _reject_reason
    from candidates
    join first_rows using (order_id)
    where candidates.shop_id <> first_rows.first_shop_id
)

select * from final
