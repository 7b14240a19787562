-- int_visit_candidates: orders whose follow-up falls due on T's local date D (CONTRACT §5), before the
-- checks on the customer and on ops.messages (those are in marts/visit_tasks.sql).
--   trigger time x (delivered_at, shipped_at or paid_at, per the shop's trigger) is not null and <= T;
--   N = the largest followup_days among its products, the shop's followup_days where none sets it;
--   due = local_date(x) + N days, and due <= D < due + grace_days;
--   not refunded at T.
-- Only orders whose trigger lies inside the widest follow-up horizon are read.
with horizon as (
    select greatest(
               coalesce((select max(followup_days) from staging.products), 0),
               (select max(followup_days) from ops.shops))
           + (select max(grace_days) from ops.shops) + 2 as days
),

recent as (
    select orders.*
    from staging.orders as orders, horizon
    where orders.delivered_at >= $as_of::TIMESTAMPTZ - to_days(horizon.days)
       or orders.shipped_at >= $as_of::TIMESTAMPTZ - to_days(horizon.days)
       or orders.paid_at >= $as_of::TIMESTAMPTZ - to_days(horizon.days)
),

triggered as (
    select
        recent.order_id, recent.shop_id, recent.customer_id, recent.total_amount, recent.refunded_at,
        clock.timezone, clock.local_date, clock.followup_days as shop_followup_days, clock.grace_days,
        case clock.visit_trigger
            when 'delivered' then recent.delivered_at
            when 'shipped' then recent.shipped_at
            else recent.paid_at end                                   as trigger_at
    from recent
    join int_shop_clock as clock using (shop_id)
),

product_days as (
    select items.order_id, max(products.followup_days) as followup_days
    from staging.order_items as items
    join staging.products as products using (product_id)
    where items.order_id in (select order_id from triggered where trigger_at is not null)
    group by items.order_id
),

due as (
    select
        triggered.*,
        coalesce(product_days.followup_days, triggered.shop_followup_days)                  as followup_days,
        crm_local_date(triggered.trigger_at, triggered.timezone)
            + coalesce(product_days.followup_days, triggered.shop_followup_days)            as due_date
    from triggered
    left join product_days using (order_id)
    where triggered.trigger_at is not null and triggered.trigger_at <= $as_of::TIMESTAMPTZ
),

final as (
    select order_id, shop_id, customer_id, total_amount, trigger_at, followup_days, due_date
    from due
    where due_date <= local_date
      and local_date < due_date + grace_days
      and not (refunded_at is not null and refunded_at <= $as_of::TIMESTAMPTZ)
)

select * from final
