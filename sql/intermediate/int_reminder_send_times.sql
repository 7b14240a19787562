-- int_reminder_send_times: when a payment reminder for each unpaid order would go out (docs/rules.md §4).
-- t0 = created_at, e = t0 + min_age_minutes, deadline = t0 + auto_close_minutes - close_margin_minutes.
--   1. strategy 'delay': s = t0 + delay_minutes. Strategy 'cutoff': windows [c - lead, c) for each cut-off c
--      on every local day; s = e if e lies in a window, else the start of the first window after e
--      (no cut-offs configured: s = e).
--   2. if s >= deadline then s = e (rescue an order that would close first).
--   3. if s is inside quiet hours, s moves to the end of that quiet period.
-- Cut-offs, windows and quiet hours are local wall-clock times (see crm_utc for DST).
with orders as (
    select
        unpaid.order_id, unpaid.shop_id, unpaid.created_at,
        clock.timezone, clock.strategy, clock.cutoff_minutes, clock.lead_minutes, clock.delay_minutes,
        clock.quiet_start, clock.quiet_end,
        unpaid.created_at + to_minutes(clock.min_age_minutes)                                     as earliest,
        unpaid.created_at + to_minutes(clock.auto_close_minutes - clock.close_margin_minutes)    as deadline
    from int_unpaid_orders as unpaid
    join int_shop_clock as clock using (shop_id)
),

order_days as (
    -- the local day before e's, e's own and the two after: the windows that can hold the send time
    select orders.order_id, orders.shop_id, orders.earliest,
           crm_shop_local_date(orders.shop_id, orders.earliest) + day::INTEGER as day
    from orders, range(-1, 3) as days(day)
    where orders.strategy = 'cutoff'
),

cutoff_windows as (
    -- [c - lead, c) for each cut-off c, once per shop and local day
    select
        days.shop_id, days.day,
        crm_shop_utc(days.shop_id, days.day::TIMESTAMP + to_minutes(cutoff - clock.lead_minutes)) as window_start,
        crm_shop_utc(days.shop_id, days.day::TIMESTAMP + to_minutes(cutoff))                      as window_end
    from (select distinct shop_id, day from order_days) as days
    join int_shop_clock as clock using (shop_id),
         unnest(clock.cutoff_minutes) as cutoffs(cutoff)
),

next_window as (
    select
        order_days.order_id,
        case when bool_or(w.window_start <= order_days.earliest and order_days.earliest < w.window_end)
             then any_value(order_days.earliest)
             else min(w.window_start) filter (where w.window_start > order_days.earliest) end as window_send_at
    from order_days
    join cutoff_windows as w using (shop_id, day)
    group by order_days.order_id
),

planned as (
    -- step 1
    select
        orders.*,
        case when orders.strategy = 'delay' then orders.created_at + to_minutes(orders.delay_minutes)
             else coalesce(next_window.window_send_at, orders.earliest) end as planned_send_at
    from orders
    left join next_window using (order_id)
),

rescued as (
    -- step 2
    select
        *,
        case when planned_send_at >= deadline then earliest else planned_send_at end as rescued_send_at
    from planned
),

rescued_local as (
    -- step 3: the local time once (its macro is a CASE over the shops' zones; inlined into each use of it
    -- below, it would be converted again for every comparison)
    select *, crm_shop_local(shop_id, rescued_send_at) as rescued_local
    from rescued
),

quiet as (
    select *, crm_in_quiet(crm_minute_of_day(rescued_local), quiet_start, quiet_end) as in_quiet
    from rescued_local
),

final as (
    select
        order_id, earliest, deadline, planned_send_at, rescued_send_at,
        case when in_quiet then crm_shop_utc(shop_id,
                 (CAST(rescued_local AS DATE)
                  -- in the evening part of a period that wraps midnight, it ends tomorrow
                  + case when quiet_start > quiet_end and crm_minute_of_day(rescued_local) >= quiet_start
                         then 1 else 0 end)::TIMESTAMP + to_minutes(quiet_end))
             else rescued_send_at end as send_at
    from quiet
)

select * from final
