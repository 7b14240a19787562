-- stg_reviews: the landed reviews typed, each with the reason it is rejected (NULL: good).
-- A review's naive created_at is in its order's shop zone; an unknown order cannot place it.
with source as (
    select * from land_reviews
),

renamed as (
    select
        -- keys
        crm_text(source.order_id)                         as order_id,
        shops.timezone                                    as tz,
        crm_ts(source.created_at, shops.timezone)         as created_at,
        -- the review
        crm_int(source.rating)                            as rating,
        crm_text(source.text)                             as text,
        -- raw text, kept for the checks
        source.created_at as created_at_raw, source.rating as rating_raw,
        coalesce(crm_has_offset(trim(source.created_at)), false) as has_offset,
        -- lineage
        source._source_file, source._file_ord, source._row_number
    from source
    left join staging.orders as orders on orders.order_id = crm_text(source.order_id)
    left join ops.shops as shops on shops.shop_id = orders.shop_id
),

placed as (
    -- an absolute time needs no zone: any zone parses it the same
    select * replace (
        coalesce(created_at, case when has_offset then try_cast(trim(created_at_raw) as timestamptz) end) as created_at)
    from renamed
),

checked as (
    select
        *,
        concat_ws('; ',
            crm_need('order_id', order_id),
            case when tz is null and not has_offset and crm_text(created_at_raw) is not null
                 then 'unknown order_id ' || to_json(order_id) || ': cannot place a created_at without offset'
                 else crm_required('created_at', created_at_raw, created_at) end,
            crm_required('rating', rating_raw, rating),
            case when rating not between 1 and 5 then 'rating must be 1-5, got ' || rating end
        ) as reasons
    from placed
),

final as (
    select
        order_id, created_at, rating, text,
        _source_file, _file_ord, _row_number,
        nullif(reasons, '') as _reject_reason
    from checked
)

select * from final
