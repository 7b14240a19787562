-- int_visit_candidates: orders whose follow-up falls due on T's local date D (docs/rules.md §5), before the
-- checks on the customer and on ops.messages (those are in marts/visit_tasks.sql).
--   trigger time x (delivered_at, shipped_at or paid_at, per the shop's trigger) is not null and <= T;
--   N = the largest followup_days among its products, the shop's followup_days where none sets it;
--   due = local_date(x) + N days, and due <= D < due + grace_days;
--   not refunded at T.
-- Only orders that can be due are read: a trigger on one of the local dates int_visit_windows lists. Each such
-- date is an interval of instants in the shop's zone, [its midnight, the next), so an order is matched on its
-- trigger time, without converting every order's time to local time.
with trigger_windows as (
    select * from int_visit_windows
),

shop_windows as (
    -- per shop, from the first window's start to T
    select clock.shop_id, clock.visit_trigger, clock.local_date, clock.followup_days as shop_followup_days,
           clock.grace_days, min(w.starts) as first_start
    from int_shop_clock as clock
    join trigger_windows as w using (shop_id)
    group by all
),

triggered as (
    -- the trigger time by the shop's trigger (delivered_at, shipped_at, else paid_at), read only since $visit_from:
    -- a bound on each trigger's own column, a constant, lets DuckDB skip the row groups of older orders
    -- (int_visit_windows); an order triggered before it cannot be due
    select
        orders.order_id, orders.shop_id, orders.customer_id, orders.total_amount, orders.refunded_at,
        shops.local_date, shops.shop_followup_days, shops.grace_days, shops.first_start,
        orders.delivered_at as trigger_at
    from staging.orders as orders
    join shop_windows as shops using (shop_id)
    where shops.visit_trigger = 'delivered'
      and orders.delivered_at >= $visit_from::TIMESTAMPTZ
    union all
    select
        orders.order_id, orders.shop_id, orders.customer_id, orders.total_amount, orders.refunded_at,
        shops.local_date, shops.shop_followup_days, shops.grace_days, shops.first_start,
        orders.shipped_at as trigger_at
    from staging.orders as orders
    join shop_windows as shops using (shop_id)
    where shops.visit_trigger = 'shipped'
      and orders.shipped_at >= $visit_from::TIMESTAMPTZ
    union all
    select
        orders.order_id, orders.shop_id, orders.customer_id, orders.total_amount, orders.refunded_at,
        shops.local_date, shops.shop_followup_days, shops.grace_days, shops.first_start,
        orders.paid_at as trigger_at
    from staging.orders as orders
    join shop_windows as shops using (shop_id)
    where shops.visit_trigger is distinct from 'delivered'
      and shops.visit_trigger is distinct from 'shipped'
      and orders.paid_at >= $visit_from::TIMESTAMPTZ
),

possible as (
    select triggered.* exclude (first_start), w.trigger_date
    from triggered
    join trigger_windows as w
        on  w.shop_id = triggered.shop_id
        and triggered.trigger_at >= w.starts
        and triggered.trigger_at < w.ends
    where triggered.trigger_at >= triggered.first_start
      and triggered.trigger_at <= $as_of::TIMESTAMPTZ
),

product_days as (
    -- only products that set followup_days can change an order's N
    select items.order_id, max(products.followup_days) as followup_days
    from staging.order_items as items
    join staging.products as products using (product_id)
    where products.followup_days is not null
      and items.order_id in (select order_id from possible)
    group by items.order_id
),

due as (
    select
        possible.*,
        coalesce(product_days.followup_days, possible.shop_followup_days)                   as followup_days,
        possible.trigger_date + coalesce(product_days.followup_days, possible.shop_followup_days) as due_date
    from possible
    left join product_days using (order_id)
),

final as (
    select order_id, shop_id, customer_id, total_amount, trigger_at, followup_days, due_date
    from due
    where due_date <= local_date
      and local_date < due_date + grace_days
      and not (refunded_at is not null and refunded_at <= $as_of::TIMESTAMPTZ)
)

select * from final
