-- visit_tasks: the follow-up visits of T's local date D, ranked, with their channel (docs/rules.md §5).
-- Eligible: int_visit_candidates (trigger, due date, grace, not refunded) whose customer has not opted
-- out and whose order has no follow-up in ops.messages (any status, failed included; created <= T).
-- Tier, from the latest review created <= T: high_value (total_amount >= high_value_amount), bad_review
-- (rating <= 2), neutral_review (3), complaint_in_praise (>= 4 and the text contains a complaint keyword,
-- case-insensitive), other.
-- Rank within a shop: tier in that order; high_value by amount desc; bad_review by rating asc then amount
-- desc; neutral_review and complaint_in_praise by amount desc; other by hash01('visit:' || order_id || ':' || D)
-- asc; then order_id.
-- Channel: walking the ranking, an order whose customer has a phone not suppressed for calls gets 'call'
-- while the calls given so far — counting the shop's follow-up calls in ops.messages created on D (status
-- not failed) — are fewer than manual_capacity; every other order gets auto_channel, or NULL when that
-- contact is missing or suppressed or auto_channel is 'none'.
-- due_at: T inside a visit window, else the next window's start (int_shop_clock).
with followups_made as (
    -- eligibility: every follow-up of an order, whatever its status
    select * from ops.messages
    where purpose = 'followup' and created_at <= $as_of::TIMESTAMPTZ
),

followups_sent as (
    -- call capacity: those not failed
    select * from followups_made where status <> 'failed'
),

eligible as (
    select candidates.*, reach.phone, reach.email, reach.suppressed_sms, reach.suppressed_email, reach.suppressed_call
    from int_visit_candidates as candidates
    join int_customer_reach as reach using (customer_id)
    where not reach.opted_out
      and not exists (select 1 from followups_made as m where m.order_id = candidates.order_id)
),

latest_review as (
    select order_id, rating, text
    from staging.reviews
    where created_at <= $as_of::TIMESTAMPTZ and order_id in (select order_id from eligible)
    qualify row_number() over (partition by order_id order by created_at desc) = 1
),

tiered as (
    select
        eligible.*,
        latest_review.rating, latest_review.text,
        clock.as_of, clock.local_date, clock.manual_capacity, clock.auto_channel, clock.visit_due_at,
        case
            when eligible.total_amount >= clock.high_value_amount then 'high_value'
            when latest_review.rating <= 2 then 'bad_review'
            when latest_review.rating = 3 then 'neutral_review'
            when latest_review.rating >= 4
                 and len(list_filter(clock.complaint_keywords,
                                     k -> contains(lower(latest_review.text), lower(k)))) > 0 then 'complaint_in_praise'
            else 'other'
        end as tier
    from eligible
    join int_shop_clock as clock using (shop_id)
    left join latest_review using (order_id)
),

ranked as (
    -- on the sort keys alone: narrow rows sort fast (the context is joined back below)
    select
        order_id, shop_id, callable,
        row_number() over (
            partition by shop_id
            order by
                list_position(['high_value', 'bad_review', 'neutral_review', 'complaint_in_praise', 'other'], tier),
                case when tier = 'bad_review' then rating end asc,
                case when tier <> 'other' then total_amount end desc,
                case when tier = 'other' then hash01('visit:' || order_id || ':' || strftime(local_date, '%Y-%m-%d')) end asc,
                order_id
        ) as rank
    from (select order_id, shop_id, tier, rating, total_amount, local_date,
                 phone is not null and not suppressed_call as callable
          from tiered)
),

calls_today as (
    select m.shop_id, count(*) as calls
    from followups_sent as m
    join int_shop_clock as clock using (shop_id)
    where m.channel = 'call' and crm_shop_local_date(m.shop_id, m.created_at) = clock.local_date
    group by m.shop_id
),

numbered as (
    select
        ranked.order_id, ranked.rank, ranked.callable,
        -- this order would be call number (calls already given + callable orders ranked up to here)
        coalesce(calls_today.calls, 0)
            + sum(case when ranked.callable then 1 else 0 end) over (partition by ranked.shop_id order by ranked.rank
                                                                     rows between unbounded preceding and current row)
            as call_number
    from ranked
    left join calls_today using (shop_id)
),

channelled as (
    select tiered.*, numbered.rank, numbered.callable, numbered.call_number
    from tiered
    join numbered using (order_id)
),

final as (
    select
        -- keys
        as_of, shop_id, order_id, customer_id,
        -- the task
        tier, rank,
        case
            when callable and call_number <= manual_capacity then 'call'
            when auto_channel = 'sms' and phone is not null and not suppressed_sms then 'sms'
            when auto_channel = 'email' and email is not null and not suppressed_email then 'email'
        end as channel,
        visit_due_at as due_at,
        -- context
        trigger_at, due_date, total_amount, rating, text as review_text
    from channelled
)

select * from final
