-- feedback_tasks: each order's latest visit task per shop and period — each local day, and each ISO week
-- (Monday) — with its channel: what feedback_summary counts as planned (docs/rules.md §8). Read from the
-- visit-task rows in report_task_rows (transforms/plan.py: every row of marts.visit_tasks up to T on a
-- rebuild, the rows of the T planned since the last refresh otherwise, merged into ops.feedback_tasks).
-- Only configured shops (ops.shops).
with plans as (
    -- the local day of each shop's T (one per plan, not one per row)
    select shop_id, as_of, crm_shop_local_date(shop_id, as_of) as day
    from (select distinct shop_id, as_of from report_task_rows)
    semi join ops.shops using (shop_id)
),

tasks as (
    select tasks.shop_id, tasks.order_id, tasks.as_of, coalesce(tasks.channel, 'none') as channel, plans.day
    from report_task_rows as tasks
    join plans using (shop_id, as_of)
),

periods as (
    select 'day' as period, day as period_start, * from tasks
    union all by name
    select 'week' as period, date_trunc('week', day)::DATE as period_start, * from tasks
),

final as (
    -- one task per order and T: the latest one's channel
    select shop_id, period, period_start, order_id, max(as_of) as as_of, arg_max(channel, as_of) as channel
    from periods
    group by shop_id, period, period_start, order_id
)

select * from final
