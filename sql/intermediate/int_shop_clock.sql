-- int_shop_clock: what T is in each shop's own time zone, with the shop's settings (docs/rules.md §3).
-- One row per shop: local date D of T, whether T is inside quiet hours, and when a visit is due at T
-- (docs/rules.md §5: T itself inside a visit window, else the next window's start, else D+1's first window).
with shops as (
    select * from ops.shops
),

local_now as (
    select
        shops.*,
        $as_of::TIMESTAMPTZ                                            as as_of,
        crm_local($as_of::TIMESTAMPTZ, timezone)                       as local_now,
        crm_local_date($as_of::TIMESTAMPTZ, timezone)                  as local_date
    from shops
),

visit_windows as (
    -- each configured window on D and on D+1, as instants
    select
        shop_id,
        crm_utc((local_date + day::INTEGER)::TIMESTAMP + to_minutes(start_minute), timezone) as window_start,
        crm_utc((local_date + day::INTEGER)::TIMESTAMP + to_minutes(end_minute), timezone)   as window_end
    from (
        select shop_id, timezone, local_date,
               unnest(window_start_minutes) as start_minute, unnest(window_end_minutes) as end_minute
        from local_now
    ) as w
    cross join (values (0), (1)) as days(day)
),

visit_due as (
    select
        w.shop_id,
        case when bool_or(w.window_start <= n.as_of and n.as_of < w.window_end) then n.as_of
             else min(w.window_start) filter (where w.window_start > n.as_of) end as visit_due_at
    from visit_windows as w
    join local_now as n using (shop_id)
    group by w.shop_id, n.as_of
),

final as (
    select
        local_now.*,
        -- T inside quiet hours [start, end), wrapping midnight
        crm_in_quiet(crm_minute_of_day(local_now), quiet_start, quiet_end) as now_in_quiet,
        -- no visit windows configured: due at once
        coalesce(visit_due.visit_due_at, local_now.as_of)                  as visit_due_at
    from local_now
    left join visit_due using (shop_id)
)

select * from final
