-- effect_holdouts: per shop and order, its first 'holdout' decision (docs/rules.md §4 reason 11) at a T at or
-- after its send time — when it would have been reminded — the control group of reminder_effect (§8): its local
-- day and T, and the segment, channel and template experiment variant that decision had. (A decision without a
-- send time counts too.) Read from the decisions in effect_holdout_rows (transforms/plan.py: every holdout decision
-- up to T on a rebuild, those of the T planned since the last refresh otherwise), merged with what
-- ops.effect_holdouts holds for the same orders: the earlier T wins, at the same T the decision just read.
-- Only configured shops.
with decisions as (
    select
        d.shop_id, d.order_id, d.as_of, crm_shop_local_date(d.shop_id, d.as_of) as day,
        d.segment, d.channel, d.variant
    from effect_holdout_rows as d
    join ops.shops as shops using (shop_id)
    where d.reason = 'holdout' and d.as_of <= $as_of::TIMESTAMPTZ and coalesce(d.send_at <= d.as_of, true)
),

fresh as (
    select
        shop_id, order_id, min(day) as first_day, min(as_of) as first_at,
        arg_min_null(segment, as_of) as segment, arg_min_null(channel, as_of) as channel,
        arg_min_null(variant, as_of) as variant, 0 as is_kept
    from decisions
    group by shop_id, order_id
),

kept as (
    select kept.*, 1 as is_kept
    from ops.effect_holdouts as kept
    semi join fresh using (shop_id, order_id)
),

final as (
    select
        -- keys
        shop_id, order_id,
        -- the first holdout decision
        min(first_day) as first_day, min(first_at) as first_at,
        arg_min_null(segment, (first_at, is_kept)) as segment, arg_min_null(channel, (first_at, is_kept)) as channel,
        arg_min_null(variant, (first_at, is_kept)) as variant
    from (select * from fresh union all by name select * from kept)
    group by shop_id, order_id
)

select * from final
