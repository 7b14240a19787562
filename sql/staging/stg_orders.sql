-- stg_orders: the landed orders rows typed, each with the reason it is rejected (NULL: good).
-- Reads land_orders (every column as text, made by the ingest from the drop files) and ops.shops.
with source as (
    select * from land_orders
),

renamed as (
    select
        -- keys
        crm_text(source.order_id)                         as order_id,
        crm_text(source.shop_id)                          as shop_id,
        crm_text(source.customer_id)                      as customer_id,
        crm_text(source.platform)                         as platform,
        shops.timezone                                    as tz,
        -- raw text, kept for the checks
        source.created_at as created_at_raw, source.paid_at as paid_at_raw,
        source.shipped_at as shipped_at_raw, source.delivered_at as delivered_at_raw,
        source.closed_at as closed_at_raw, source.refunded_at as refunded_at_raw,
        source.updated_at as updated_at_raw, source.total_amount as total_amount_raw,
        -- timestamps, naive ones in the shop's zone
        crm_ts(source.created_at, shops.timezone)         as created_at,
        crm_ts(source.paid_at, shops.timezone)            as paid_at,
        crm_ts(source.shipped_at, shops.timezone)         as shipped_at,
        crm_ts(source.delivered_at, shops.timezone)       as delivered_at,
        crm_ts(source.closed_at, shops.timezone)          as closed_at,
        crm_ts(source.refunded_at, shops.timezone)        as refunded_at,
        crm_ts(source.updated_at, shops.timezone)         as updated_at,
        -- money and place
        crm_money(source.total_amount)                    as total_amount,
        coalesce(upper(crm_text(source.currency)), 'CNY') as currency,
        crm_text(source.receiver_city)                    as receiver_city,
        -- lineage
        source._source_file, source._file_ord, source._row_number
    from source
    left join ops.shops as shops on shops.shop_id = crm_text(source.shop_id)
),

checked as (
    select
        *,
        concat_ws('; ',
            crm_need('order_id', order_id),
            coalesce(crm_need('shop_id', shop_id),
                     case when tz is null then 'unknown shop_id ' || to_json(shop_id) end),
            crm_need('customer_id', customer_id),
            crm_need('platform', platform),
            case when tz is not null then nullif(concat_ws('; ',
                crm_required('created_at', created_at_raw, created_at),
                crm_unparsable('paid_at', paid_at_raw, paid_at),
                crm_unparsable('shipped_at', shipped_at_raw, shipped_at),
                crm_unparsable('delivered_at', delivered_at_raw, delivered_at),
                crm_unparsable('closed_at', closed_at_raw, closed_at),
                crm_unparsable('refunded_at', refunded_at_raw, refunded_at),
                crm_required('updated_at', updated_at_raw, updated_at)), '') end,
            crm_required('total_amount', total_amount_raw, total_amount),
            case when total_amount < 0 then 'negative total_amount ' || total_amount end,
            case when paid_at < created_at then 'paid_at before created_at' end
        ) as reasons
    from renamed
),

final as (
    select
        order_id, shop_id, customer_id, platform,
        created_at, paid_at, shipped_at, delivered_at, closed_at, refunded_at,
        total_amount, currency, receiver_city, updated_at,
        _source_file, _file_ord, _row_number,
        nullif(reasons, '') as _reject_reason
    from checked
)

select * from final
