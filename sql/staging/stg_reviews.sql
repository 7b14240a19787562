-- stg_reviews: the landed reviews typed, each with the reason it is rejected (NULL: good).
-- A review's naive created_at is in its order's shop zone; an unknown order cannot place it
-- (one with an offset needs no zone and is kept; validation reports the orphan).
with source as (
    select * from land_reviews
),

cleaned as (
    select
        -- keys
        crm_text(order_id) as order_id, crm_text(created_at) as created_at_txt,
        -- the review
        crm_text(rating) as rating_txt, crm_text(text) as text,
        -- the same, typed, when a Parquet file had them so (NULL otherwise; the text is then NULL)
        created_at__typed, rating__typed,
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
        shops.timezone                                                   as tz,
        created_at__typed is not null or coalesce(created_at__off, false)          as has_offset,
        crm_landed_ts(created_at__typed, created_at__wall, created_at_txt, created_at__off, shops.timezone) as created_at,
        coalesce(rating__typed, crm_int(rating_txt))                                     as rating
    from walls
    left join staging.orders as orders on orders.order_id = walls.order_id
    left join ops.shops as shops on shops.shop_id = orders.shop_id
),

checked as (
    select
        *,
        concat_ws('; ',
            crm_need('order_id', order_id),
            case when tz is null and not has_offset and (created_at_txt is not null or created_at__naive is not null)
                 then 'unknown order_id' || crm_echo('order_id', order_id) || ': cannot place a created_at without offset'
                 else crm_required('created_at', created_at_txt, created_at) end,
            crm_required('rating', rating_txt, rating),
            case when rating not between 1 and 5 then 'rating must be 1-5, got ' || rating end
        ) as reasons
    from typed
),

final as (
    select
        order_id, created_at, rating, text,
        _source_file, _file_ord, _row_number,
        nullif(reasons, '') as _reject_reason
    from checked
)

select * from final
