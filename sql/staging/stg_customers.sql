-- stg_customers: the landed customers typed, each with the reason it is rejected (NULL: good).
with source as (
    select * from land_customers
),

cleaned as (
    select
        -- keys
        crm_text(customer_id) as customer_id, crm_text(shop_id) as shop_id,
        -- contact: a phone as text (typed below, in the shop's region), an email in lower case
        crm_text(name) as name, crm_text(phone) as phone_txt, lower(crm_text(email)) as email,
        crm_text(city) as city,
        -- membership as text
        crm_text(member_level) as member_level_txt, crm_text(registered_at) as registered_at_txt,
        crm_text(opt_out) as opt_out_txt, crm_text(updated_at) as updated_at_txt,
        -- the same, typed, when a Parquet file had them so (NULL otherwise; the text is then NULL)
        member_level__typed, registered_at__typed, opt_out__typed, updated_at__typed,
        -- naive Parquet timestamps (the shop's local time; NULL otherwise, and the text is then NULL)
        registered_at__naive, updated_at__naive,
        -- lineage
        _source_file, _file_ord, _row_number
    from source
),

offsets as (
    -- whether each timestamp's text names its zone (crm_has_offset), once per value
    select
        cleaned.*,
        crm_has_offset(registered_at_txt) as registered_at__off,
        crm_has_offset(updated_at_txt) as updated_at__off
    from cleaned
),

walls as (
    -- the naive timestamps as wall-clock times: a Parquet TIMESTAMP, or text without offset (crm_wall_clock)
    select
        offsets.*,
        coalesce(registered_at__naive, crm_wall_clock(registered_at_txt, registered_at__off)) as registered_at__wall,
        coalesce(updated_at__naive, crm_wall_clock(updated_at_txt, updated_at__off)) as updated_at__wall
    from offsets
),

typed as (
    select
        walls.*,
        shops.timezone                                    as tz,
        shops.phone_region,
        crm_e164(phone_txt, shops.phone_region)           as phone,   -- E.164 (crm/phones.py)
        coalesce(member_level__typed, crm_int(member_level_txt))                      as member_level,
        crm_landed_ts(registered_at__typed, registered_at__wall, registered_at_txt, registered_at__off, shops.timezone) as registered_at,
        coalesce(opt_out__typed, crm_bool(opt_out_txt))                               as opt_out_parsed,
        crm_landed_ts(updated_at__typed, updated_at__wall, updated_at_txt, updated_at__off, shops.timezone) as updated_at
    from walls
    left join ops.shops as shops on shops.shop_id = walls.shop_id
),

checked as (
    select
        *,
        concat_ws('; ',
            crm_need('customer_id', customer_id),
            crm_shop_problem(shop_id, tz),
            crm_need('name', name),
            case when tz is not null and phone_txt is not null and phone is null
                 then crm_phone_problem(phone_txt, phone_region) end,          -- never quotes the number
            crm_required('member_level', member_level_txt, member_level),
            case when member_level < 0 then 'negative member_level ' || member_level end,
            case when tz is not null then nullif(concat_ws('; ',
                crm_required('registered_at', registered_at_txt, registered_at),
                crm_required('updated_at', updated_at_txt, updated_at)), '') end,
            crm_unparsable('opt_out', opt_out_txt, opt_out_parsed)
        ) as reasons
    from typed
),

final as (
    select
        customer_id, shop_id, name, phone, email, city, member_level, registered_at,
        coalesce(opt_out_parsed, false) as opt_out,       -- default false
        updated_at,
        _source_file, _file_ord, _row_number,
        nullif(reasons, '') as _reject_reason
    from checked
)

select * from final
