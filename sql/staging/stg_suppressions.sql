-- stg_suppressions: the landed suppressions typed, each with the reason it is rejected (NULL: good).
-- A naive created_at is placed in the customer's shop zone, else in the first configured shop's.
with source as (
    select * from land_suppressions
),

renamed as (
    select
        -- who
        crm_text(source.customer_id)                      as customer_id,
        crm_text(source.phone)                            as phone,
        lower(crm_text(source.email))                     as email,
        -- what
        lower(crm_text(source.channel))                   as channel,
        crm_ts(source.created_at, coalesce(shops.timezone, default_shop.timezone)) as created_at,
        crm_text(source.reason)                           as reason,
        -- raw text, kept for the checks
        source.created_at as created_at_raw, source.channel as channel_raw,
        -- lineage
        source._source_file, source._file_ord, source._row_number
    from source
    left join staging.customers as customers on customers.customer_id = crm_text(source.customer_id)
    left join ops.shops as shops on shops.shop_id = customers.shop_id
    cross join (select timezone from ops.shops where position = 0) as default_shop
),

checked as (
    select
        *,
        concat_ws('; ',
            case when customer_id is null and phone is null and email is null
                 then 'names no customer_id, phone or email' end,
            coalesce(crm_need('channel', channel_raw),
                     case when channel not in ('sms', 'email', 'call', 'all')
                          then 'channel must be sms, email, call or all, got ' || to_json(channel_raw) end),
            crm_required('created_at', created_at_raw, created_at)
        ) as reasons
    from renamed
),

final as (
    select
        customer_id, phone, email, channel, created_at, reason,
        _source_file, _file_ord, _row_number,
        nullif(reasons, '') as _reject_reason
    from checked
)

select * from final
