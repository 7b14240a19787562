-- _effect_counts: the end of marts/reminder_effect_segments.sql and of its incremental twin
-- reminder_effect_segments_days.sql (docs/rules.md §8), written once: both include it after their `rows` CTE
-- (each order once: grp, shop_id, day, known, paid, total_amount, segment, channel), so the whole rebuild and
-- the refresh of some days count, rate and bound the lift exactly alike.
counts as (
    -- per shop and day, and per shop, day, segment and channel
    select
        shop_id, day,
        case when grouping(segment) = 1 then 'all' else segment end                    as segment,
        case when grouping(channel) = 1 then 'all' else channel end                    as channel,
        -- reminded
        count(*) filter (where grp = 'reminded')                                       as orders_reminded,
        count(*) filter (where grp = 'reminded' and known)                             as orders_reminded_known,
        count(*) filter (where grp = 'reminded' and not known)                         as orders_reminded_open,
        count(*) filter (where grp = 'reminded' and paid)                              as reminded_paid_before_close,
        coalesce(sum(total_amount) filter (where grp = 'reminded' and paid), 0)::DECIMAL(18, 2) as recovered_amount,
        -- planned but not made: a call still queued, a message queued or failed
        count(*) filter (where grp = 'not_made')                                       as reminders_not_made,
        -- assigned a reminder, made or not (the lift's treated group)
        count(*) filter (where grp <> 'held_out' and known)                            as orders_assigned_known,
        count(*) filter (where grp <> 'held_out' and not known)                        as orders_assigned_open,
        count(*) filter (where grp <> 'held_out' and paid)                             as assigned_paid_before_close,
        coalesce(sum(total_amount) filter (where grp <> 'held_out' and known), 0)::DECIMAL(18, 2) as assigned_known_amount,
        -- held out (the control group)
        count(*) filter (where grp = 'held_out')                                       as orders_held_out,
        count(*) filter (where grp = 'held_out' and known)                             as orders_held_out_known,
        count(*) filter (where grp = 'held_out' and not known)                         as orders_held_out_open,
        count(*) filter (where grp = 'held_out' and paid)                              as held_out_paid_before_close
    from rows
    group by grouping sets ((shop_id, day), (shop_id, day, segment, channel))
),

lifts as (
    select
        *,
        crm_effect_status(orders_assigned_known, orders_held_out_known)               as effect_status,
        -- the lift: assigned's paid rate minus the held out's, with Newcombe's 95% interval
        crm_newcombe_low(assigned_paid_before_close, orders_assigned_known,
                         held_out_paid_before_close, orders_held_out_known)            as newcombe_low,
        crm_newcombe_high(assigned_paid_before_close, orders_assigned_known,
                          held_out_paid_before_close, orders_held_out_known)           as newcombe_high
    from counts
),

final as (
    select
        $as_of::TIMESTAMPTZ as as_of, shop_id, day, segment, channel,
        orders_reminded, orders_reminded_known, orders_reminded_open, reminded_paid_before_close, recovered_amount,
        reminders_not_made,
        orders_assigned_known, orders_assigned_open, assigned_paid_before_close, assigned_known_amount,
        orders_held_out, orders_held_out_known, orders_held_out_open, held_out_paid_before_close,
        -- paid rates: paid before closing / orders whose outcome is known (NULL: none known)
        case when orders_reminded_known > 0
             then reminded_paid_before_close / orders_reminded_known end              as reminded_paid_rate,
        case when orders_assigned_known > 0
             then assigned_paid_before_close / orders_assigned_known end              as assigned_paid_rate,
        case when orders_held_out_known > 0
             then held_out_paid_before_close / orders_held_out_known end              as held_out_paid_rate,
        -- the lift and the revenue it implies (lift x the amount of the assigned orders whose outcome is known),
        -- each with its 95% interval; NULL while a group is too small
        case when effect_status = 'ok' then assigned_paid_before_close / orders_assigned_known
                                            - held_out_paid_before_close / orders_held_out_known end as lift,
        case when effect_status = 'ok' then newcombe_low end                          as lift_low,
        case when effect_status = 'ok' then newcombe_high end                         as lift_high,
        case when effect_status = 'ok'
             then ((assigned_paid_before_close / orders_assigned_known
                    - held_out_paid_before_close / orders_held_out_known) * assigned_known_amount)::DECIMAL(18, 2)
             end                                                                       as implied_recovered_amount,
        case when effect_status = 'ok'
             then (newcombe_low * assigned_known_amount)::DECIMAL(18, 2) end          as implied_recovered_low,
        case when effect_status = 'ok'
             then (newcombe_high * assigned_known_amount)::DECIMAL(18, 2) end         as implied_recovered_high,
        effect_status
    from lifts
)

select * from final
