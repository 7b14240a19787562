-- reminder_variants_days: the rows of reminder_variants (docs/rules.md §8) for the shop days in effect_days only,
-- as of T: what an incremental refresh recomputes (transforms/plan.py refresh_reports), grouped from
-- ops.effect_rows (the orders assigned a reminder with a variant) exactly as marts/reminder_variants.sql does
-- from every message of history.
with rows as (
    select effect.shop_id, effect.day, effect.segment, effect.variant, effect.known, effect.paid
    from ops.effect_rows as effect
    semi join effect_days using (shop_id, day)
    where effect.grp <> 'held_out' and effect.variant is not null
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
