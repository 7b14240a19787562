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

-- @include marts/_variant_counts.sql
