-- int_experiment_arms: the template experiments of the configured shops ([shops.experiments], docs/rules.md §4):
-- one row per shop, segment and variant, with the variant's place in the list and its share of the orders as
-- the span [lo, hi) of hash01('variant:' || order_id) it takes. The spans follow the list: the first variant
-- takes [0, w1), the next [w1, w1 + w2), …, the last ends at 1. No weights: equal shares.
with experiments as (
    select
        shops.shop_id, segments.segment,
        json_extract(shops.config_json, '$.experiments.payment_reminder.' || segments.segment || '.variants')::VARCHAR[]
                                                                                         as variants,
        json_extract(shops.config_json, '$.experiments.payment_reminder.' || segments.segment || '.weights')::DOUBLE[]
                                                                                         as weights
    from ops.shops as shops
    cross join (values ('new'), ('second'), ('repeat')) as segments(segment)
),

arms as (
    select
        shop_id, segment, weights, len(variants) as variant_count,
        unnest(variants)                  as variant,
        generate_subscripts(variants, 1)  as position
    from experiments
    where len(variants) > 0
),

final as (
    select
        -- keys
        shop_id, segment, variant, position,
        -- the span of hash01('variant:' || order_id) the variant takes
        case when len(weights) = 0 then (position - 1) / variant_count
             else coalesce(list_sum(weights[1:position - 1]), 0.0) end                   as lo,
        case when position = variant_count then 1.0
             when len(weights) = 0 then position / variant_count
             else list_sum(weights[1:position]) end                                      as hi
    from arms
)

select * from final
