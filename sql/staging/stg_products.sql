-- stg_products: the landed products typed, each with the reason it is rejected (NULL: good).
with source as (
    select * from land_products
),

renamed as (
    select
        -- keys
        crm_text(source.product_id)                       as product_id,
        crm_text(source.shop_id)                          as shop_id,
        shops.timezone                                    as tz,
        -- description
        crm_text(source.title)                            as title,
        crm_text(source.category)                         as category,
        -- 'cute;gift' -> ['cute', 'gift'] (lower case, blanks dropped)
        list_filter(list_transform(string_split(coalesce(source.style_tags, ''), ';'), t -> lower(trim(t))),
                    t -> t <> '')                         as style_tags,
        crm_int(source.followup_days)                     as followup_days,
        source.followup_days                              as followup_days_raw,
        -- lineage
        source._source_file, source._file_ord, source._row_number
    from source
    left join ops.shops as shops on shops.shop_id = crm_text(source.shop_id)
),

checked as (
    select
        *,
        concat_ws('; ',
            crm_need('product_id', product_id),
            coalesce(crm_need('shop_id', shop_id),
                     case when tz is null then 'unknown shop_id ' || to_json(shop_id) end),
            crm_need('title', title),
            crm_need('category', category),
            crm_unparsable('followup_days', followup_days_raw, followup_days),
            case when followup_days < 0 then 'negative followup_days ' || followup_days end
        ) as reasons
    from renamed
),

final as (
    select
        product_id, shop_id, title, category,
        case when len(style_tags) > 0 then style_tags end as style_tags,
        followup_days,
        _source_file, _file_ord, _row_number,
        nullif(reasons, '') as _reject_reason
    from checked
)

select * from final
