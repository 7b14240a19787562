-- effect_holdouts: per shop and order, the local day of its first 'holdout' decision (docs/rules.md §4 reason 11),
-- the control group of reminder_effect (§8). Read from the decisions in effect_holdout_rows (transforms/plan.py:
-- every holdout decision up to T on a rebuild, those of the T planned since the last refresh otherwise), merged
-- with what ops.effect_holdouts holds for the same orders (the earlier day wins). Only configured shops.
with decisions as (
    select d.shop_id, d.order_id, crm_shop_local_date(d.shop_id, d.as_of) as day
    from effect_holdout_rows as d
    join ops.shops as shops using (shop_id)
    where d.reason = 'holdout' and d.as_of <= $as_of::TIMESTAMPTZ
),

fresh as (
    select shop_id, order_id, min(day) as first_day
    from decisions
    group by shop_id, order_id
),

kept as (
    select kept.*
    from ops.effect_holdouts as kept
    semi join fresh using (shop_id, order_id)
),

final as (
    select shop_id, order_id, min(first_day) as first_day
    from (select * from fresh union all by name select * from kept)
    group by shop_id, order_id
)

select * from final
