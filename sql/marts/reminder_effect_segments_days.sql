-- reminder_effect_segments_days: the rows of reminder_effect_segments (docs/rules.md §8) for the shop days in
-- effect_days only, as of T: what an incremental refresh recomputes (transforms/plan.py refresh_reports). The same
-- counts, rates and intervals as marts/reminder_effect_segments.sql, which rebuilds every day, grouped from
-- ops.effect_rows (each order's group, day, outcome, segment and channel, kept up to date by the refresh) instead
-- of every message and decision of history.
with rows as (
    select effect.*
    from ops.effect_rows as effect
    semi join effect_days using (shop_id, day)
),

-- @include marts/_effect_counts.sql
