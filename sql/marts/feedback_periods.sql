-- feedback_periods: the rows of feedback_summary (docs/rules.md §8) for the periods in report_periods
-- (shop_id, period, period_start) only, as of T: what an incremental refresh recomputes
-- (transforms/plan.py refresh_reports). The same counts as marts/feedback_summary.sql, which rebuilds every
-- period, with the planned visits read from the period's latest T and ops.feedback_tasks (kept up to date by
-- the refresh) instead of every visit task of history. Outcomes and messages are read between
-- $lo and $hi, instants around the periods (a day beyond each end, wider than any zone's offset).
with periods as (
    select shop_id, period, period_start from report_periods
),

planned as (
    -- each order's latest task in the period: the orders planned before its latest T with their last task
    -- there, and that T's tasks
    select tasks.shop_id, tasks.period, tasks.period_start, tasks.order_id, tasks.channel
    from ops.feedback_tasks as tasks
    semi join periods using (shop_id, period, period_start)
    union all
    select latest.shop_id, latest.period, latest.period_start, tasks.order_id, coalesce(tasks.channel, 'none')
    from (select l.* from ops.feedback_latest as l semi join periods using (shop_id, period, period_start)) as latest
    join marts.visit_tasks as tasks on tasks.as_of = latest.as_of and tasks.shop_id = latest.shop_id
),

outcomes as (
    select
        coalesce(outcomes.shop_id, orders.shop_id)                                          as shop_id,
        outcomes.*  exclude (shop_id),
        crm_shop_local_date(coalesce(outcomes.shop_id, orders.shop_id), outcomes.recorded_at) as day
    from ops.visit_outcomes as outcomes
    -- only an outcome without a shop looks up its order
    left join (select order_id, shop_id from staging.orders
               where order_id in (select order_id from ops.visit_outcomes
                                  where shop_id is null and recorded_at >= $lo and recorded_at < $hi)) as orders
        on orders.order_id = outcomes.order_id and outcomes.shop_id is null
    join ops.shops as shops on shops.shop_id = coalesce(outcomes.shop_id, orders.shop_id)
    where outcomes.recorded_at <= $as_of::TIMESTAMPTZ and outcomes.recorded_at >= $lo and outcomes.recorded_at < $hi
),

followups_sent as (
    select m.shop_id, m.order_id, m.channel, crm_shop_local_date(m.shop_id, m.created_at) as day
    from ops.messages as m
    join ops.shops as shops using (shop_id)
    where m.purpose = 'followup' and m.status = 'sent' and m.created_at <= $as_of::TIMESTAMPTZ
      and m.created_at >= $lo and m.created_at < $hi
),

-- every outcome per day and per week (attempts), and each order's latest reached one (what they said)
outcome_periods as (
    select * from (
        select 'day' as period, day as period_start, * from outcomes
        union all by name
        select 'week' as period, date_trunc('week', day)::DATE as period_start, * from outcomes
    )
    semi join periods using (shop_id, period, period_start)
),

reached as (
    select * from outcome_periods
    where reached
    qualify row_number() over (partition by period, period_start, shop_id, order_id order by recorded_at desc) = 1
),

sent_periods as (
    select * from (
        select 'day' as period, day as period_start, * from followups_sent
        union all by name
        select 'week' as period, date_trunc('week', day)::DATE as period_start, * from followups_sent
    )
    semi join periods using (shop_id, period, period_start)
),

-- @include marts/_feedback_counts.sql
