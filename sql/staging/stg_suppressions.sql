-- stg_suppressions: the landed suppressions typed, each with the reason it is rejected (NULL: good).
-- A naive created_at is placed in the customer's shop zone, else in the first configured shop's; a phone
-- without a country code likewise in that shop's phone_region.
with source as (
    select * from land_suppressions
),

cleaned as (
    select
        -- who: a phone as text (typed below), an email in lower case
        crm_text(customer_id) as customer_id, crm_text(phone) as phone_txt,
        lower(crm_text(email)) as email,
        -- what
        lower(crm_text(channel)) as channel, crm_text(created_at) as created_at_txt, crm_text(reason) as reason,
        -- the same, typed, when a Parquet file had it so (NULL otherwise; the text is then NULL)
        created_at__typed,
        -- a naive Parquet created_at (NULL otherwise, and the text is then NULL)
        created_at__naive,
        -- lineage
        _source_file, _file_ord, _row_number
    from source
),

offsets as (
    -- whether each timestamp's text names its zone (crm_has_offset), once per value
    select
        cleaned.*,
        crm_has_offset(created_at_txt) as created_at__off
    from cleaned
),

walls as (
    -- the naive timestamps as wall-clock times: a Parquet TIMESTAMP, or text without offset (crm_wall_clock)
    select
        offsets.*,
        coalesce(created_at__naive, crm_wall_clock(created_at_txt, created_at__off)) as created_at__wall
    from offsets
),

typed as (
    select
        walls.*,
        crm_landed_ts(created_at__typed, created_at__wall, created_at_txt, created_at__off,
                      coalesce(shops.timezone, default_shop.timezone))                     as created_at,
        coalesce(shops.phone_region, default_shop.phone_region)                    as phone_region,
        crm_e164(phone_txt, coalesce(shops.phone_region, default_shop.phone_region)) as phone  -- E.164
    from walls
    left join staging.customers as customers on customers.customer_id = walls.customer_id
    left join ops.shops as shops on shops.shop_id = customers.shop_id
    cross join (select shop_id, timezone, phone_region from ops.shops where position = 0) as default_shop
),

checked as (
    select
        *,
        concat_ws('; ',
            case when customer_id is null and phone_txt is null and email is null
                 then 'names no customer_id, phone or email' end,
            case when phone_txt is not null and phone is null
                 then crm_phone_problem(phone_txt, phone_region) end,          -- never quotes the number
            coalesce(crm_need('channel', channel),
                     case when channel not in ('sms', 'email', 'call', 'all')
                          then 'channel must be sms, email, call or all, got' || crm_echo('channel', channel) end),
            crm_required('created_at', created_at_txt, created_at)
        ) as reasons
    from typed
),

final as (
    select
        customer_id, phone, email, channel, created_at, reason,
        _source_file, _file_ord, _row_number,
        nullif(reasons, '') as _reject_reason
    from checked
)

select * from final
