-- stg_products: the landed products typed, each with the reason it is rejected (NULL: good).
with source as (
    select * from land_products
),

cleaned as (
    select
        -- keys
        crm_text(product_id) as product_id, crm_text(shop_id) as shop_id,
        -- description
        crm_text(title) as title, crm_text(category) as category,
        style_tags as style_tags_txt, crm_text(followup_days) as followup_days_txt,
        -- the same, typed, when a Parquet file had it so (NULL otherwise; the text is then NULL)
        followup_days__typed,
        -- lineage
        _source_file, _file_ord, _row_number
    from source
),

typed as (
    select
        cleaned.*,
        shops.timezone                                    as tz,
        -- 'cute;gift' -> ['cute', 'gift'] (lower case, blanks dropped)
        list_filter(list_transform(string_split(coalesce(style_tags_txt, ''), ';'), t -> lower(trim(t))),
                    t -> t <> '')                         as style_tags,
        coalesce(followup_days__typed, crm_int(followup_days_txt)) as followup_days
    from cleaned
    left join ops.shops as shops on shops.shop_id = cleaned.shop_id
),

checked as (
    select
        *,
        concat_ws('; ',
            crm_need('product_id', product_id),
            crm_shop_problem(shop_id, tz),
            crm_need('title', title),
            crm_need('category', category),
            crm_unparsable('followup_days', followup_days_txt, followup_days),
            case when followup_days < 0 then 'negative followup_days ' || followup_days end
        ) as reasons
    from typed
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
