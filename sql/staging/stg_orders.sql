-- stg_orders: the landed orders rows typed, each with the reason it is rejected (NULL: good).
-- Reads land_orders (every column as text, made by the ingest from the drop files), ops.shops and
-- staging.orders: an order_id belongs to one shop, the one it was first loaded for. A row that gives it
-- another shop is refused, naming both (an order does not move between shops: two shops' orders with one
-- order_id, or a wrong shop_id, is for a person to look at; nothing is replaced silently).
-- Here: the shop it was loaded for by an earlier run (_loaded_shop_id). An order_id that no earlier run
-- loaded and that this run gives two shops belongs to the shop of its first good row of this run (drop
-- order, then row): sql/staging/stg_orders_owners.sql, run on these rows by the ingest (it needs only the
-- order_ids this run repeats, so it does not hold every row a second time, as a join here would).
with source as (
    select * from land_orders
),

cleaned as (
    select
        -- keys
        crm_text(order_id) as order_id, crm_text(shop_id) as shop_id,
        crm_text(customer_id) as customer_id, crm_text(platform) as platform,
        -- timestamps as text
        crm_text(created_at) as created_at_txt, crm_text(paid_at) as paid_at_txt,
        crm_text(shipped_at) as shipped_at_txt, crm_text(delivered_at) as delivered_at_txt,
        crm_text(closed_at) as closed_at_txt, crm_text(refunded_at) as refunded_at_txt,
        crm_text(updated_at) as updated_at_txt,
        -- money and place as text
        crm_text(total_amount) as total_amount_txt, crm_text(currency) as currency_txt,
        crm_text(receiver_city) as receiver_city,
        -- the same, typed, when a Parquet file had them so (NULL otherwise; the text is then NULL)
        created_at__typed, paid_at__typed, shipped_at__typed, delivered_at__typed, closed_at__typed,
        refunded_at__typed, updated_at__typed, total_amount__typed,
        -- naive Parquet timestamps (the shop's local time; NULL otherwise, and the text is then NULL)
        created_at__naive, paid_at__naive, shipped_at__naive, delivered_at__naive, closed_at__naive,
        refunded_at__naive, updated_at__naive,
        -- lineage
        _source_file, _file_ord, _row_number
    from source
),

offsets as (
    -- whether each timestamp's text names its zone (crm_has_offset), once per value
    select
        cleaned.*,
        crm_has_offset(created_at_txt) as created_at__off,
        crm_has_offset(paid_at_txt) as paid_at__off,
        crm_has_offset(shipped_at_txt) as shipped_at__off,
        crm_has_offset(delivered_at_txt) as delivered_at__off,
        crm_has_offset(closed_at_txt) as closed_at__off,
        crm_has_offset(refunded_at_txt) as refunded_at__off,
        crm_has_offset(updated_at_txt) as updated_at__off
    from cleaned
),

walls as (
    -- the naive timestamps as wall-clock times: a Parquet TIMESTAMP, or text without offset (crm_wall_clock)
    select
        offsets.*,
        coalesce(created_at__naive, crm_wall_clock(created_at_txt, created_at__off)) as created_at__wall,
        coalesce(paid_at__naive, crm_wall_clock(paid_at_txt, paid_at__off)) as paid_at__wall,
        coalesce(shipped_at__naive, crm_wall_clock(shipped_at_txt, shipped_at__off)) as shipped_at__wall,
        coalesce(delivered_at__naive, crm_wall_clock(delivered_at_txt, delivered_at__off)) as delivered_at__wall,
        coalesce(closed_at__naive, crm_wall_clock(closed_at_txt, closed_at__off)) as closed_at__wall,
        coalesce(refunded_at__naive, crm_wall_clock(refunded_at_txt, refunded_at__off)) as refunded_at__wall,
        coalesce(updated_at__naive, crm_wall_clock(updated_at_txt, updated_at__off)) as updated_at__wall
    from offsets
),

typed as (
    select
        walls.*,
        shops.timezone                                    as tz,
        -- timestamps, naive ones (text or Parquet) in the shop's zone
        crm_landed_ts(created_at__typed, created_at__wall, created_at_txt, created_at__off, shops.timezone) as created_at,
        crm_landed_ts(paid_at__typed, paid_at__wall, paid_at_txt, paid_at__off, shops.timezone) as paid_at,
        crm_landed_ts(shipped_at__typed, shipped_at__wall, shipped_at_txt, shipped_at__off, shops.timezone) as shipped_at,
        crm_landed_ts(delivered_at__typed, delivered_at__wall, delivered_at_txt, delivered_at__off, shops.timezone) as delivered_at,
        crm_landed_ts(closed_at__typed, closed_at__wall, closed_at_txt, closed_at__off, shops.timezone) as closed_at,
        crm_landed_ts(refunded_at__typed, refunded_at__wall, refunded_at_txt, refunded_at__off, shops.timezone) as refunded_at,
        crm_landed_ts(updated_at__typed, updated_at__wall, updated_at_txt, updated_at__off, shops.timezone) as updated_at,
        -- money
        coalesce(total_amount__typed, crm_money(total_amount_txt))                     as total_amount,
        coalesce(upper(currency_txt), 'CNY')              as currency,
        -- the shop of the order_id as loaded before this run
        loaded.shop_id                                    as loaded_shop_id
    from walls
    left join ops.shops as shops on shops.shop_id = walls.shop_id
    left join staging.orders as loaded on loaded.order_id = walls.order_id
),

checked as (
    select
        *,
        concat_ws('; ',
            crm_need('order_id', order_id),
            crm_shop_problem(shop_id, tz),
            crm_need('customer_id', customer_id),
            crm_need('platform', platform),
            case when tz is not null then nullif(concat_ws('; ',
                crm_required('created_at', created_at_txt, created_at),
                crm_unparsable('paid_at', paid_at_txt, paid_at),
                crm_unparsable('shipped_at', shipped_at_txt, shipped_at),
                crm_unparsable('delivered_at', delivered_at_txt, delivered_at),
                crm_unparsable('closed_at', closed_at_txt, closed_at),
                crm_unparsable('refunded_at', refunded_at_txt, refunded_at),
                crm_required('updated_at', updated_at_txt, updated_at)), '') end,
            crm_required('total_amount', total_amount_txt, total_amount),
            crm_money_problem('total_amount', total_amount_txt),
            case when total_amount__typed < 0 then 'negative total_amount ' || total_amount__typed end,
            case when paid_at < created_at then 'paid_at before created_at' end
        ) as reasons
    from typed
),

owned as (
    select
        checked.* exclude (reasons),
        concat_ws('; ', nullif(reasons, ''),
            case when loaded_shop_id <> shop_id
                 then 'order_id' || crm_echo('order_id', order_id) || ' belongs to shop '
                      || loaded_shop_id || ', this row says ' || shop_id end
        ) as reasons
    from checked
),

final as (
    select
        order_id, shop_id, customer_id, platform,
        created_at, paid_at, shipped_at, delivered_at, closed_at, refunded_at,
        total_amount, currency, receiver_city, updated_at,
        _source_file, _file_ord, _row_number,
        nullif(reasons, '') as _reject_reason,
        -- the shop an earlier run loaded this order_id for (NULL: none; for stg_orders_owners.sql)
        loaded_shop_id as _loaded_shop_id
    from owned
)

select * from final
