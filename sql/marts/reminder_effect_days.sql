-- reminder_effect_days: the rows of reminder_effect (docs/rules.md §8) for the shop days in effect_days only, as
-- of T: what an incremental refresh recomputes (transforms/plan.py refresh_reports). The same counts as
-- marts/reminder_effect.sql, which rebuilds every day, grouped from ops.effect_rows (each order's group, day and
-- outcome, kept up to date by the refresh) instead of every message and decision of history.
with rows as (
    select effect.*
    from ops.effect_rows as effect
    semi join effect_days using (shop_id, day)
),

final as (
    select
        $as_of::TIMESTAMPTZ                                                            as as_of,
        shop_id, day,
        -- reminded
        count(*) filter (where grp = 'reminded')                                       as orders_reminded,
        count(*) filter (where grp = 'reminded' and known)                             as orders_reminded_known,
        count(*) filter (where grp = 'reminded' and not known)                         as orders_reminded_open,
        count(*) filter (where grp = 'reminded' and paid)                              as reminded_paid_before_close,
        coalesce(sum(total_amount) filter (where grp = 'reminded' and paid), 0)::DECIMAL(18, 2) as recovered_amount,
        -- planned but not made: a call still queued, a message queued or failed
        count(*) filter (where grp = 'not_made')                                       as reminders_not_made,
        -- held out (the control group)
        count(*) filter (where grp = 'held_out')                                       as orders_held_out,
        count(*) filter (where grp = 'held_out' and known)                             as orders_held_out_known,
        count(*) filter (where grp = 'held_out' and not known)                         as orders_held_out_open,
        count(*) filter (where grp = 'held_out' and paid)                              as held_out_paid_before_close
    from rows
    group by shop_id, day
)

select * from final
