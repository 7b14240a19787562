-- int_visit_candidates: orders whose follow-up falls due on T's local date D (docs/rules.md §5), before the
-- checks on the customer and on ops.messages (those are in marts/visit_tasks.sql).
--   trigger time x (delivered_at, shipped_at or paid_at, per the shop's trigger) is not null and <= T;
--   N = the largest followup_days among its products, the shop's followup_days where none sets it;
--   due = local_date(x) + N days, and due <= D < due + grace_days;
--   not refunded at T.
-- Only orders that can be due are read: a trigger inside the widest follow-up horizon, on a local date
-- D - N - k (0 <= k < grace_days) for one of the N in use (the shop's default or a product's).
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

horizon as (
    select max(days) + (select max(grace_days) from int_shop_clock) + 2 as days from follow_up_days
),

recent as (
    select orders.*
    from staging.orders as orders
    where orders.delivered_at >= $as_of::TIMESTAMPTZ - to_days((select days from horizon))
       or orders.shipped_at >= $as_of::TIMESTAMPTZ - to_days((select days from horizon))
       or orders.paid_at >= $as_of::TIMESTAMPTZ - to_days((select days from horizon))
),

triggered as (
    select
        recent.order_id, recent.shop_id, recent.customer_id, recent.total_amount, recent.refunded_at,
        clock.local_date, clock.followup_days as shop_followup_days, clock.grace_days,
        case clock.visit_trigger
            when 'delivered' then recent.delivered_at
            when 'shipped' then recent.shipped_at
            else recent.paid_at end                                   as trigger_at
    from recent
    join int_shop_clock as clock using (shop_id)
),

possible as (
    select triggered.*
    from triggered
    semi join candidate_dates
        on  candidate_dates.shop_id = triggered.shop_id
        and candidate_dates.trigger_date = crm_shop_local_date(triggered.shop_id, triggered.trigger_at)
    where triggered.trigger_at <= $as_of::TIMESTAMPTZ
),

product_days as (
    select items.order_id, max(products.followup_days) as followup_days
    from staging.order_items as items
    join staging.products as products using (product_id)
    where items.order_id in (select order_id from possible)
    group by items.order_id
),

due as (
    select
        possible.*,
        coalesce(product_days.followup_days, possible.shop_followup_days)                   as followup_days,
        crm_shop_local_date(possible.shop_id, possible.trigger_at)
            + coalesce(product_days.followup_days, possible.shop_followup_days)             as due_date
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
