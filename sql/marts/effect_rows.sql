-- effect_rows: what each order of effect_scope counts for in reminder_effect_segments (docs/rules.md §8) as of T —
-- the rows marts/reminder_effect_segments.sql groups, kept in ops.effect_rows so that a refresh recomputes only the
-- orders that can have changed (transforms/plan.py refresh_reports). One row per group, shop and order:
--   reminded / not_made: from its reminders (ops.effect_reminders), on the day of the first one made, else of
--   the first one; held_out: its first holdout decision at or after its send time (ops.effect_holdouts), when
--   the order has no payment reminder at all. With its outcome at T: known (paid, closed or past auto-close),
--   paid before closing, the amount (an order missing from staging.orders counts as still open); and its
--   segment, channel ('unknown' when not recorded) and template experiment variant.
with scope as (
    select distinct order_id from effect_scope
),

reminded_orders as (
    select r.* from ops.effect_reminders as r semi join scope using (order_id)
),

held_out as (
    select h.*
    from ops.effect_holdouts as h
    semi join scope using (order_id)
    where not exists (select 1 from reminded_orders as r where r.order_id = h.order_id)
),

outcomes as (
    -- each order's outcome at T: known or still open, paid before closing or not
    select
        orders.order_id, orders.total_amount,
        crm_outcome_known(orders.paid_at, orders.closed_at, orders.created_at, shops.auto_close_minutes,
                          $as_of::TIMESTAMPTZ)                                                   as known,
        crm_paid_before_close(orders.paid_at, orders.closed_at, orders.created_at, shops.auto_close_minutes,
                              $as_of::TIMESTAMPTZ)                                               as paid_before_close
    from staging.orders as orders
    join ops.shops as shops using (shop_id)
    where orders.order_id in (select order_id from scope)
),

final as (
    select
        case when r.made then 'reminded' else 'not_made' end                      as grp,
        r.shop_id, r.order_id, coalesce(r.made_day, r.first_day)                   as day,
        coalesce(o.known, false)                                                   as known,
        coalesce(o.paid_before_close, false)                                       as paid,
        o.total_amount,
        coalesce(r.segment, 'unknown') as segment, coalesce(r.channel, 'unknown') as channel, r.variant
    from reminded_orders as r left join outcomes as o using (order_id)
    union all
    select 'held_out', h.shop_id, h.order_id, h.first_day, coalesce(o.known, false),
           coalesce(o.paid_before_close, false), o.total_amount,
           coalesce(h.segment, 'unknown'), coalesce(h.channel, 'unknown'), h.variant
    from held_out as h left join outcomes as o using (order_id)
)

select * from final
