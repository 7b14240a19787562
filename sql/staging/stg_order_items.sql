-- stg_order_items: the landed order lines typed, each with the reason it is rejected (NULL: good).
-- An item whose order is not (yet) known is kept and reported by validation, not rejected here.
with source as (
    select * from land_order_items
),

renamed as (
    select
        -- keys
        crm_text(order_id)        as order_id,
        crm_int(line_no)          as line_no,
        crm_text(product_id)      as product_id,
        -- quantities
        crm_int(quantity)         as quantity,
        crm_money(unit_price)     as unit_price,
        -- raw text, kept for the checks
        line_no as line_no_raw, quantity as quantity_raw, unit_price as unit_price_raw,
        -- lineage
        _source_file, _file_ord, _row_number
    from source
),

checked as (
    select
        *,
        concat_ws('; ',
            crm_need('order_id', order_id),
            crm_required('line_no', line_no_raw, line_no),
            crm_need('product_id', product_id),
            crm_required('quantity', quantity_raw, quantity),
            case when quantity <= 0 then 'quantity must be > 0, got ' || quantity end,
            crm_required('unit_price', unit_price_raw, unit_price),
            case when unit_price < 0 then 'negative unit_price ' || unit_price end
        ) as reasons
    from renamed
),

final as (
    select
        order_id, line_no, product_id, quantity, unit_price,
        _source_file, _file_ord, _row_number,
        nullif(reasons, '') as _reject_reason
    from checked
)

select * from final
