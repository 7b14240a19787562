-- reminder_variants: per shop, local day, segment and template experiment variant ([shops.experiments],
-- docs/rules.md §4, §8), as of T: the orders assigned a reminder with that variant (made or not, on the day
-- reminder_effect counts them), those whose outcome is known and still open, those paid before closing; the
-- paid rate with Wilson's 95% interval, and the difference from the experiment's first variant (the reference)
-- with Newcombe's 95% interval — NULL, status 'too_small', while either has fewer than crm_effect_min_known()
-- outcomes known (sql/macros.sql). Only configured shops (ops.shops). The held-out orders are the shop's
-- control group for every variant alike (reminder_effect).
with reminders as (
    select
        m.shop_id, m.order_id,
        (m.channel = 'call' and m.status = 'done') or (m.channel <> 'call' and m.status = 'sent') as made,
        crm_shop_local_date(m.shop_id, m.created_at) as day,
        coalesce(m.customer_segment,
                 case when m.template like 'payment_reminder/%'
                      then split_part(split_part(m.template, '/', 2), '.', 1) end) as segment,
        m.variant
    from ops.messages as m
    join ops.shops as shops using (shop_id)
    where m.purpose = 'payment_reminder' and m.order_id is not null and m.created_at <= $as_of::TIMESTAMPTZ
),

assigned as (
    -- one row per order, on the day reminder_effect counts it: of the first reminder made, else of the first
    select shop_id, order_id, coalesce(min(day) filter (where made), min(day)) as day,
           min(segment) as segment, min(variant) as variant
    from reminders
    group by shop_id, order_id
    having min(variant) is not null
),

outcomes as (
    select
        orders.order_id,
        crm_outcome_known(orders.paid_at, orders.closed_at, orders.created_at, shops.auto_close_minutes,
                          $as_of::TIMESTAMPTZ)                                                   as known,
        crm_paid_before_close(orders.paid_at, orders.closed_at, orders.created_at, shops.auto_close_minutes,
                              $as_of::TIMESTAMPTZ)                                               as paid_before_close
    from staging.orders as orders
    join ops.shops as shops using (shop_id)
    where orders.order_id in (select order_id from assigned)
),

rows as (
    select a.shop_id, a.day, coalesce(a.segment, 'unknown') as segment, a.variant,
           coalesce(o.known, false) as known, coalesce(o.paid_before_close, false) as paid
    from assigned as a left join outcomes as o using (order_id)
),

-- @include marts/_variant_counts.sql
