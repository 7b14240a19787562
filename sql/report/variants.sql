-- variants: the template experiments' variants over a period (docs/rules.md §8) — the rows of reminder_variants in
-- variant_period_rows (the caller's: the model at T for the report, marts.reminder_variants for `crm effect`) of
-- shop $shop (NULL: every shop) and local days [$start, $end] (NULL: all), summed per shop, segment and variant:
-- each variant's paid rate with Wilson's 95% interval, and its difference from the experiment's first variant
-- (configured; else the first by name) with Newcombe's, computed on the sums as the mart does per day.
with days as (
    select *
    from variant_period_rows
    where shop_id = coalesce($shop, shop_id)
      and day >= coalesce($start::DATE, day) and day <= coalesce($end::DATE, day)
),

sums as (
    select
        shop_id, segment, variant,
        sum(orders_assigned)::BIGINT as orders_assigned, sum(orders_known)::BIGINT as orders_known,
        sum(orders_open)::BIGINT as orders_open, sum(paid_before_close)::BIGINT as paid_before_close
    from days
    group by shop_id, segment, variant
),

referenced as (
    select
        sums.*,
        coalesce(json_extract_string(shops.config_json, '$.experiments.payment_reminder.' || sums.segment || '.variants[0]'),
                 min(sums.variant) over (partition by sums.shop_id, sums.segment))                   as reference_variant,
        list_position(json_extract(shops.config_json,
                                   '$.experiments.payment_reminder.' || sums.segment || '.variants')::VARCHAR[],
                      sums.variant)                                                                 as position
    from sums
    left join ops.shops as shops using (shop_id)
),

final as (
    select
        referenced.*,
        case when orders_known > 0 then paid_before_close / orders_known end               as paid_rate,
        crm_wilson_low(paid_before_close, orders_known)                                      as paid_rate_low,
        crm_wilson_high(paid_before_close, orders_known)                                     as paid_rate_high,
        max(case when variant = reference_variant then orders_known end)
            over (partition by shop_id, segment)                                             as reference_known,
        max(case when variant = reference_variant then paid_before_close end)
            over (partition by shop_id, segment)                                             as reference_paid
    from referenced
)

select
    shop_id, segment, variant, orders_assigned, orders_known, orders_open, paid_before_close,
    paid_rate, paid_rate_low, paid_rate_high, reference_variant,
    case when variant = reference_variant then 'reference'
         else crm_effect_status(orders_known, coalesce(reference_known, 0)) end              as status,
    case when variant <> reference_variant and crm_effect_status(orders_known, coalesce(reference_known, 0)) = 'ok'
         then paid_before_close / orders_known - reference_paid / reference_known end        as difference,
    case when variant <> reference_variant and crm_effect_status(orders_known, coalesce(reference_known, 0)) = 'ok'
         then crm_newcombe_low(paid_before_close, orders_known, reference_paid, reference_known) end  as difference_low,
    case when variant <> reference_variant and crm_effect_status(orders_known, coalesce(reference_known, 0)) = 'ok'
         then crm_newcombe_high(paid_before_close, orders_known, reference_paid, reference_known) end as difference_high
from final
order by shop_id, list_position(['new', 'second', 'repeat'], segment), segment, variant <> reference_variant,
         position nulls last, variant
