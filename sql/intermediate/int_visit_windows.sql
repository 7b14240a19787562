-- int_visit_windows: the local dates whose triggers can make a follow-up due on T's local date D (docs/rules.md
-- §5), each as the instants it spans in the shop's zone: one row per shop and candidate trigger date.
--   a trigger on a local date D - N - k (0 <= k < grace_days) for one of the N in use (the shop's default
--   followup_days or a product's) can be due on D; each such date is [its midnight, the next midnight).
-- The plan (transforms/plan.py) binds the earliest start as $visit_from, a constant, so that
-- int_visit_candidates reads only the orders triggered since then: DuckDB skips the row groups of older orders
-- (their min/max) instead of reading every order.
with follow_up_days as (
    -- every N in use, per shop
    select clock.shop_id, n.days
    from int_shop_clock as clock,
         (select distinct followup_days as days from staging.products where followup_days is not null) as n
    union
    select shop_id, followup_days from int_shop_clock
),

candidate_dates as (
    select distinct days.shop_id, clock.local_date - days.days - k::INTEGER as trigger_date
    from follow_up_days as days
    join int_shop_clock as clock using (shop_id),
         range(0, clock.grace_days) as ks(k)
),

final as (
    select
        shop_id, trigger_date,
        crm_shop_utc(shop_id, trigger_date::TIMESTAMP)       as starts,
        crm_shop_utc(shop_id, (trigger_date + 1)::TIMESTAMP) as ends
    from candidate_dates
)

select * from final
