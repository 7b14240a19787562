-- feedback_summary: per shop and period — each local day, and each ISO week (Monday) — the visits planned
-- and what the reached customers said (CONTRACT §8), as of T.
--   visits_planned: orders with a visit task planned in the period (each order once, whatever the number of T)
--   reached: orders with a reached outcome recorded in the period; the categories, gift, compensation and
--   suggestion come from each order's latest reached outcome in the period (recorded <= T)
with planned as (
    select distinct tasks.shop_id, tasks.order_id, crm_shop_local_date(tasks.shop_id, tasks.as_of) as day
    from marts.visit_tasks as tasks
    where tasks.as_of <= $as_of::TIMESTAMPTZ
),

outcomes as (
    select
        coalesce(outcomes.shop_id, orders.shop_id)                                          as shop_id,
        outcomes.*  exclude (shop_id),
        crm_shop_local_date(coalesce(outcomes.shop_id, orders.shop_id), outcomes.recorded_at) as day
    from ops.visit_outcomes as outcomes
    left join staging.orders as orders using (order_id)
    where outcomes.recorded_at <= $as_of::TIMESTAMPTZ and outcomes.reached
),

periods as (
    select 'day' as period, shop_id, order_id, day as period_start from planned
    union all
    select 'week', shop_id, order_id, date_trunc('week', day)::DATE from planned
),

reached as (
    -- each order's latest reached outcome per day and per week
    select * from (
        select 'day' as period, day as period_start, * from outcomes
        union all by name
        select 'week' as period, date_trunc('week', day)::DATE as period_start, * from outcomes
    )
    qualify row_number() over (partition by period, period_start, shop_id, order_id order by recorded_at desc) = 1
),

final as (
    select
        $as_of::TIMESTAMPTZ                                           as as_of,
        coalesce(p.shop_id, r.shop_id)                                as shop_id,
        coalesce(p.period, r.period)                                  as period,
        coalesce(p.period_start, r.period_start)                      as period_start,
        coalesce(p.visits_planned, 0)                                 as visits_planned,
        coalesce(r.reached, 0)                                        as reached,
        coalesce(r.quality_issues, 0) as quality_issues, coalesce(r.logistics_issues, 0) as logistics_issues,
        coalesce(r.packaging_issues, 0) as packaging_issues, coalesce(r.service_issues, 0) as service_issues,
        coalesce(r.gifts, 0) as gifts, coalesce(r.compensations, 0) as compensations,
        coalesce(r.suggestions, 0) as suggestions
    from (
        select shop_id, period, period_start, count(distinct order_id) as visits_planned
        from periods group by all
    ) as p
    full join (
        select
            shop_id, period, period_start,
            count(*)                                                       as reached,
            count(*) filter (where quality = 'issue')                      as quality_issues,
            count(*) filter (where logistics = 'issue')                    as logistics_issues,
            count(*) filter (where packaging = 'issue')                    as packaging_issues,
            count(*) filter (where service = 'issue')                      as service_issues,
            count(*) filter (where gift)                                   as gifts,
            count(*) filter (where coalesce(compensation, 'none') <> 'none') as compensations,
            count(*) filter (where nullif(trim(suggestion), '') is not null) as suggestions
        from reached group by all
    ) as r using (shop_id, period, period_start)
)

select * from final
