-- stg_customers: the landed customers typed, each with the reason it is rejected (NULL: good).
with source as (
    select * from land_customers
),

renamed as (
    select
        -- keys
        crm_text(source.customer_id)                      as customer_id,
        crm_text(source.shop_id)                          as shop_id,
        shops.timezone                                    as tz,
        -- contact (kept as given; a blank is missing)
        crm_text(source.name)                             as name,
        crm_text(source.phone)                            as phone,
        lower(crm_text(source.email))                     as email,
        crm_text(source.city)                             as city,
        -- membership
        crm_int(source.member_level)                      as member_level,
        crm_ts(source.registered_at, shops.timezone)      as registered_at,
        coalesce(crm_bool(source.opt_out), false)         as opt_out,
        crm_ts(source.updated_at, shops.timezone)         as updated_at,
        -- raw text, kept for the checks
        source.member_level as member_level_raw, source.registered_at as registered_at_raw,
        source.opt_out as opt_out_raw, source.updated_at as updated_at_raw,
        -- lineage
        source._source_file, source._file_ord, source._row_number
    from source
    left join ops.shops as shops on shops.shop_id = crm_text(source.shop_id)
),

checked as (
    select
        *,
        concat_ws('; ',
            crm_need('customer_id', customer_id),
            coalesce(crm_need('shop_id', shop_id),
                     case when tz is null then 'unknown shop_id ' || to_json(shop_id) end),
            crm_need('name', name),
            crm_required('member_level', member_level_raw, member_level),
            case when member_level < 0 then 'negative member_level ' || member_level end,
            case when tz is not null then nullif(concat_ws('; ',
                crm_required('registered_at', registered_at_raw, registered_at),
                crm_required('updated_at', updated_at_raw, updated_at)), '') end,
            crm_unparsable('opt_out', opt_out_raw, crm_bool(opt_out_raw))
        ) as reasons
    from renamed
),

final as (
    select
        customer_id, shop_id, name, phone, email, city, member_level, registered_at, opt_out, updated_at,
        _source_file, _file_ord, _row_number,
        nullif(reasons, '') as _reject_reason
    from checked
)

select * from final
