-- stg_order_items: the landed order lines typed, each with the reason it is rejected (NULL: good).
-- An item whose order is not (yet) known is kept and reported by validation, not rejected here.
with source as (
    select * from land_order_items
),

cleaned as (
    select
        -- keys
        crm_text(order_id) as order_id, crm_text(line_no) as line_no_txt, crm_text(product_id) as product_id,
        -- quantities as text
        crm_text(quantity) as quantity_txt, crm_text(unit_price) as unit_price_txt,
        -- the same, typed, when a Parquet file had them so (NULL otherwise; the text is then NULL)
        line_no__typed, quantity__typed, unit_price__typed,
        -- lineage
        _source_file, _file_ord, _row_number
    from source
),

typed as (
    select
        cleaned.*,
        coalesce(line_no__typed, crm_int(line_no_txt))          as line_no,
        coalesce(quantity__typed, crm_int(quantity_txt))        as quantity,
        coalesce(unit_price__typed, crm_money(unit_price_txt))  as unit_price
    from cleaned
),

checked as (
    select
        *,
        concat_ws('; ',
            crm_need('order_id', order_id),
            crm_required('line_no', line_no_txt, line_no),
            crm_need('product_id', product_id),
            crm_required('quantity', quantity_txt, quantity),
            case when quantity <= 0 then 'quantity must be > 0, got ' || quantity end,
            crm_required('unit_price', unit_price_txt, unit_price),
            crm_money_problem('unit_price', unit_price_txt),
            case when unit_price__typed < 0 then 'negative unit_price ' || unit_price__typed end
        ) as reasons
    from typed
),

final as (
    select
        order_id, line_no, product_id, quantity, unit_price,
        _source_file, _file_ord, _row_number,
        nullif(reasons, '') as _reject_reason
    from checked
)

select * from final
