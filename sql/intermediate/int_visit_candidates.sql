-- int_visit_candidates: orders whose follow-up falls due on T's local date D (docs/rules.md §5), before the
-- checks on the customer and on ops.messages (those are in marts/visit_tasks.sql).
--   trigger time x (delivered_at, shipped_at or paid_at, per the shop's trigger) is not null and <= T;
--   N = the largest followup_days among its products, the shop's followup_days where none sets it;
--   due = local_date(x) + N days, and due <= D < due + grace_days;
--   not refunded at T.
-- Only orders that can be due are read: a trigger on a local date D - N - k (0 <= k < grace_days) for one of
-- the N in use (the shop's default or a product's). Each such date is an interval of instants in the shop's
-- zone, [its midnight, the next), so an order is matched on its trigger time, without converting every
-- order's time to local time.
with follow_up_days as (
    -- every N in use, per shop
    select clock.shop_id, n.days
    from int_shop_clock as clock,
         (select distinct followup_days as days from staging.products where followup_days is not null) as n
    union
    select shop_id, followup_days from int_shop_clock
),

candidate_dates as (
    select distinct days.shop_id, clock.local_date - days.days - k::INTEGER as trigger_date
    from follow_up_days as days
    join int_shop_clock as clock using (shop_id),
         range(0, clock.grace_days) as ks(k)
),

trigger_windows as (
    -- each candidate date as the instants it spans in the shop's zone
    select
        shop_id, trigger_date,
        crm_shop_utc(shop_id, trigger_date::TIMESTAMP)       as starts,
        crm_shop_utc(shop_id, (trigger_date + 1)::TIMESTAMP) as ends
    from candidate_dates
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
    select
        orders.order_id, orders.shop_id, orders.customer_id, orders.total_amount, orders.refunded_at,
        shops.local_date, shops.shop_followup_days, shops.grace_days,
        case shops.visit_trigger
            when 'delivered' then orders.delivered_at
            when 'shipped' then orders.shipped_at
            else orders.paid_at end                                   as trigger_at,
        shops.first_start
    from staging.orders as orders
    join shop_windows as shops using (shop_id)
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
