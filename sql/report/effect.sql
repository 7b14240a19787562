-- effect: the payment reminders' effect over a period (docs/rules.md §8) — the rows of reminder_effect_segments in
-- effect_period_rows (the caller's: the model at T for the report, marts.reminder_effect_segments for `crm effect`)
-- of shop $shop (NULL: every shop) and local days [$start, $end] (NULL: from the first, to the last), summed per
-- shop, segment and channel ('all': the shop's), with the paid rates, the lift and its 95% interval and the
-- revenue it implies computed on the sums exactly as the mart computes them per day.
with days as (
    select *
    from effect_period_rows
    where shop_id = coalesce($shop, shop_id)
      and day >= coalesce($start::DATE, day) and day <= coalesce($end::DATE, day)
),

sums as (
    select
        shop_id, segment, channel, min(day) as first_day, max(day) as last_day,
        sum(orders_reminded)::BIGINT as orders_reminded, sum(orders_reminded_known)::BIGINT as orders_reminded_known,
        sum(orders_reminded_open)::BIGINT as orders_reminded_open,
        sum(reminded_paid_before_close)::BIGINT as reminded_paid_before_close,
        sum(recovered_amount)::DECIMAL(18, 2) as recovered_amount, sum(reminders_not_made)::BIGINT as reminders_not_made,
        sum(orders_assigned_known)::BIGINT as orders_assigned_known, sum(orders_assigned_open)::BIGINT as orders_assigned_open,
        sum(assigned_paid_before_close)::BIGINT as assigned_paid_before_close,
        sum(assigned_known_amount)::DECIMAL(18, 2) as assigned_known_amount,
        sum(orders_held_out)::BIGINT as orders_held_out, sum(orders_held_out_known)::BIGINT as orders_held_out_known,
        sum(orders_held_out_open)::BIGINT as orders_held_out_open,
        sum(held_out_paid_before_close)::BIGINT as held_out_paid_before_close
    from days
    group by shop_id, segment, channel
),

final as (
    select
        sums.*,
        case when orders_reminded_known > 0 then reminded_paid_before_close / orders_reminded_known end as reminded_paid_rate,
        case when orders_assigned_known > 0 then assigned_paid_before_close / orders_assigned_known end as assigned_paid_rate,
        case when orders_held_out_known > 0 then held_out_paid_before_close / orders_held_out_known end as held_out_paid_rate,
        -- the lift, its interval and the revenue it implies; NULL while a group is too small
        crm_effect_status(orders_assigned_known, orders_held_out_known)                    as effect_status,
        case when crm_effect_status(orders_assigned_known, orders_held_out_known) = 'ok'
             then assigned_paid_before_close / orders_assigned_known
                  - held_out_paid_before_close / orders_held_out_known end                 as lift,
        case when crm_effect_status(orders_assigned_known, orders_held_out_known) = 'ok'
             then crm_newcombe_low(assigned_paid_before_close, orders_assigned_known,
                                   held_out_paid_before_close, orders_held_out_known) end  as lift_low,
        case when crm_effect_status(orders_assigned_known, orders_held_out_known) = 'ok'
             then crm_newcombe_high(assigned_paid_before_close, orders_assigned_known,
                                    held_out_paid_before_close, orders_held_out_known) end as lift_high
    from sums
)

select
    *,
    (lift * assigned_known_amount)::DECIMAL(18, 2)                                        as implied_recovered_amount,
    (lift_low * assigned_known_amount)::DECIMAL(18, 2)                                    as implied_recovered_low,
    (lift_high * assigned_known_amount)::DECIMAL(18, 2)                                   as implied_recovered_high
from final
order by shop_id, segment <> 'all', list_position(['new', 'second', 'repeat'], segment), segment, channel
