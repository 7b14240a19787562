-- feedback_summary: per shop and period — each local day, and each ISO week (Monday) — the visits planned
-- by channel, how many were made, and what the reached customers said (docs/rules.md §8), as of T.
-- Only configured shops (ops.shops): a shop the configuration lacks has no time zone, so no local dates.
--   visits_planned: orders with a visit task planned in the period (each order once, whatever the number of
--   T), split by the channel of its latest task in the period: calls_planned, sms_planned, email_planned,
--   no_channel_planned (no usable contact, or auto_channel 'none')
--   calls_attempted: orders with an outcome recorded in the period (reached or not: an agent made the call);
--   reached: of them, orders with a reached outcome in the period — the reach rate is reached / calls_attempted
--   sms_sent, email_sent: follow-up messages created in the period whose status is 'sent' (an automatic
--   message cannot "reach" in the call sense; no delivery receipt is counted yet)
--   the categories, gift, compensation and suggestion come from each order's latest reached outcome in the
--   period (recorded <= T)
with tasks as (
    select
        tasks.shop_id, tasks.order_id, tasks.as_of, coalesce(tasks.channel, 'none') as channel,
        crm_shop_local_date(tasks.shop_id, tasks.as_of) as day
    from marts.visit_tasks as tasks
    join ops.shops as shops using (shop_id)
    where tasks.as_of <= $as_of::TIMESTAMPTZ
),

outcomes as (
    select
        coalesce(outcomes.shop_id, orders.shop_id)                                          as shop_id,
        outcomes.*  exclude (shop_id),
        crm_shop_local_date(coalesce(outcomes.shop_id, orders.shop_id), outcomes.recorded_at) as day
    from ops.visit_outcomes as outcomes
    left join staging.orders as orders using (order_id)
    join ops.shops as shops on shops.shop_id = coalesce(outcomes.shop_id, orders.shop_id)
    where outcomes.recorded_at <= $as_of::TIMESTAMPTZ
),

followups_sent as (
    select m.shop_id, m.order_id, m.channel, crm_shop_local_date(m.shop_id, m.created_at) as day
    from ops.messages as m
    join ops.shops as shops using (shop_id)
    where m.purpose = 'followup' and m.status = 'sent' and m.created_at <= $as_of::TIMESTAMPTZ
),

-- each order's latest task per day and per week: its channel is the one planned for it
planned as (
    select * from (
        select 'day' as period, day as period_start, * from tasks
        union all by name
        select 'week' as period, date_trunc('week', day)::DATE as period_start, * from tasks
    )
    qualify row_number() over (partition by period, period_start, shop_id, order_id order by as_of desc) = 1
),

-- every outcome per day and per week (attempts), and each order's latest reached one (what they said)
outcome_periods as (
    select 'day' as period, day as period_start, * from outcomes
    union all by name
    select 'week' as period, date_trunc('week', day)::DATE as period_start, * from outcomes
),

reached as (
    select * from outcome_periods
    where reached
    qualify row_number() over (partition by period, period_start, shop_id, order_id order by recorded_at desc) = 1
),

sent_periods as (
    select 'day' as period, day as period_start, * from followups_sent
    union all by name
    select 'week' as period, date_trunc('week', day)::DATE as period_start, * from followups_sent
),

-- @include marts/_feedback_counts.sql
