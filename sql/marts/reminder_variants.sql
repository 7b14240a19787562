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
        orders.paid_at <= $as_of::TIMESTAMPTZ
            or orders.closed_at <= $as_of::TIMESTAMPTZ
            or orders.created_at + to_minutes(shops.auto_close_minutes) <= $as_of::TIMESTAMPTZ   as known,
        coalesce(orders.paid_at <= $as_of::TIMESTAMPTZ
            and orders.paid_at < orders.created_at + to_minutes(shops.auto_close_minutes)
            and (orders.closed_at is null or orders.paid_at <= orders.closed_at), false)         as paid_before_close
    from staging.orders as orders
    join ops.shops as shops using (shop_id)
    where orders.order_id in (select order_id from assigned)
),

rows as (
    select a.shop_id, a.day, coalesce(a.segment, 'unknown') as segment, a.variant,
           coalesce(o.known, false) as known, coalesce(o.paid_before_close, false) as paid
    from assigned as a left join outcomes as o using (order_id)
),

counts as (
    select
        shop_id, day, segment, variant,
        count(*)                                                                       as orders_assigned,
        count(*) filter (where known)                                                  as orders_known,
        count(*) filter (where not known)                                              as orders_open,
        count(*) filter (where paid)                                                   as paid_before_close
    from rows
    group by shop_id, day, segment, variant
),

compared as (
    -- the experiment's first variant in the configuration (not configured any more: the first by name)
    select
        counts.*,
        coalesce(json_extract_string(shops.config_json, '$.experiments.payment_reminder.' || counts.segment || '.variants[0]'),
                 min(counts.variant) over (partition by counts.shop_id, counts.day, counts.segment)) as reference_variant
    from counts
    join ops.shops as shops using (shop_id)
),

referenced as (
    select
        compared.*,
        max(case when variant = reference_variant then orders_known end)
            over (partition by shop_id, day, segment)                                 as reference_known,
        max(case when variant = reference_variant then paid_before_close end)
            over (partition by shop_id, day, segment)                                 as reference_paid
    from compared
),

final as (
    select
        $as_of::TIMESTAMPTZ as as_of, shop_id, day, segment, variant,
        orders_assigned, orders_known, orders_open, paid_before_close,
        -- the variant's paid rate with Wilson's 95% interval (NULL: no outcome known yet)
        case when orders_known > 0 then paid_before_close / orders_known end          as paid_rate,
        crm_wilson_low(paid_before_close, orders_known)                                as paid_rate_low,
        crm_wilson_high(paid_before_close, orders_known)                               as paid_rate_high,
        -- against the reference variant: the difference of the paid rates with Newcombe's 95% interval, NULL
        -- while either has too few outcomes known
        reference_variant,
        case when variant <> reference_variant
              and crm_effect_status(orders_known, coalesce(reference_known, 0)) = 'ok'
             then paid_before_close / orders_known - reference_paid / reference_known end as difference,
        case when variant <> reference_variant
              and crm_effect_status(orders_known, coalesce(reference_known, 0)) = 'ok'
             then crm_newcombe_low(paid_before_close, orders_known, reference_paid, reference_known) end
                                                                                       as difference_low,
        case when variant <> reference_variant
              and crm_effect_status(orders_known, coalesce(reference_known, 0)) = 'ok'
             then crm_newcombe_high(paid_before_close, orders_known, reference_paid, reference_known) end
                                                                                       as difference_high,
        case when variant = reference_variant then 'reference'
             else crm_effect_status(orders_known, coalesce(reference_known, 0)) end   as status
    from referenced
)

select * from final
