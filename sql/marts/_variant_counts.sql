-- _variant_counts: the end of marts/reminder_variants.sql and of its incremental twin reminder_variants_days.sql
-- (docs/rules.md §8), written once: both include it after their `rows` CTE (each assigned order once:
-- shop_id, day, segment, variant, known, paid), so the whole rebuild and the refresh of some days agree.
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
