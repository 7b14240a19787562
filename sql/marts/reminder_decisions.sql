-- reminder_decisions: one decision per order unpaid at T — remind, wait or skip — with the first reason
-- that applies, in the order of docs/rules.md §4:
--    1 expired                T >= created_at + auto_close_minutes
--    2 distribution_platform  platform is one of the shop's distribution_platforms
--    3 opted_out              opt_out, or an 'all' suppression by id, phone or email created <= T
--    4 paid_other             another order of the customer in the shop, paid at T, created on the same
--                             local date as this one or later than this one
--    5 not_latest             another order of the customer in the shop, unpaid at T, not on a distribution
--                             platform, created later (equal times: the greater order_id is later)
--    6 already_reminded       ops.messages holds a payment reminder for this order (any status, failed
--                             included: its id is fixed; `crm dispatch --retry-failed` re-queues it)
--    7 no_offer               segment 'second' and the shop has no second_purchase_offer
--    8 daily_cap              daily_cap or more payment reminders (status not failed) to the customer from
--                             this shop created on T's local date
--    9 closes_before_send     the send time is not before the deadline
--   10 unreachable            the segment's channel has no contact (sms, call: phone; email: email) or is
--                             suppressed for it
--   11 holdout                hash01('holdout:' || order_id) < holdout_rate
--   12 wait (decision wait)   send time > T, or T inside quiet hours
--    - remind                 otherwise (reason NULL)
-- ops.messages is read as it was at T: only messages created <= T count.
-- Template: payment_reminder/<segment>, or in a template experiment of the shop for the segment
-- ([shops.experiments], int_experiment_arms) the order's variant, hash01('variant:' || order_id) against the
-- variants' cumulative weights (on every row, wait and skip included; none on the channel call, which uses the
-- call script); then the product tone: <template>.<style_tag> where that template exists ($variants).
with unpaid as (
    select * from int_unpaid_orders
),

reminders_made as (
    -- rule 6: every payment reminder of an order, whatever its status
    select * from ops.messages
    where purpose = 'payment_reminder' and created_at <= $as_of::TIMESTAMPTZ
),

reminders_sent as (
    -- rule 8: those that count towards the daily cap (not failed)
    select * from reminders_made where status <> 'failed'
),

experiment_variants as (
    -- the order's variant in its shop's experiment for its segment, if there is one (the hash only for those)
    select unpaid.order_id, arms.variant
    from unpaid
    join int_order_segments as segments using (order_id)
    join int_experiment_arms as arms on arms.shop_id = unpaid.shop_id and arms.segment = segments.segment
    where hash01('variant:' || unpaid.order_id) >= arms.lo and hash01('variant:' || unpaid.order_id) < arms.hi
),

facts as (
    select
        unpaid.*,
        clock.as_of, clock.local_date, clock.now_in_quiet, clock.auto_close_minutes, clock.distribution_platforms,
        clock.second_purchase_offer, clock.daily_cap, clock.holdout_rate,
        segments.segment, segments.prior_purchases,
        send.deadline, send.send_at,
        reach.opted_out, reach.phone, reach.email, reach.suppressed_sms, reach.suppressed_email, reach.suppressed_call,
        style.style_tag, variants.variant as experiment_variant,
        case segments.segment when 'new' then clock.channel_new
                              when 'second' then clock.channel_second
                              else clock.channel_repeat end                        as channel,
        -- 4: another order paid at T, created the same local date or later
        exists (select 1 from int_customer_orders as other
                where other.shop_id = unpaid.shop_id and other.customer_id = unpaid.customer_id
                  and other.order_id <> unpaid.order_id and other.paid_at_t
                  and (other.created_local_date = unpaid.created_local_date
                       or other.created_at > unpaid.created_at))                  as paid_other,
        -- 5: a later unpaid order, not on a distribution platform
        exists (select 1 from int_customer_orders as other
                where other.shop_id = unpaid.shop_id and other.customer_id = unpaid.customer_id
                  and other.order_id <> unpaid.order_id and other.unpaid_at_t
                  and not other.on_distribution_platform
                  and (other.created_at > unpaid.created_at
                       or (other.created_at = unpaid.created_at and other.order_id > unpaid.order_id))) as has_later_unpaid,
        -- 6
        exists (select 1 from reminders_made as m where m.order_id = unpaid.order_id) as already_reminded,
        -- 8
        (select count(*) from reminders_sent as m
         where m.shop_id = unpaid.shop_id and m.customer_id = unpaid.customer_id
           and crm_shop_local_date(m.shop_id, m.created_at) = clock.local_date)   as reminders_today
    from unpaid
    join int_shop_clock as clock using (shop_id)
    join int_order_segments as segments using (order_id)
    join int_reminder_send_times as send using (order_id)
    join int_customer_reach as reach using (customer_id)
    left join int_order_style as style using (order_id)
    left join experiment_variants as variants using (order_id)
),

reasoned as (
    select
        *,
        case
            when as_of >= created_at + to_minutes(auto_close_minutes)       then 'expired'
            when list_contains(distribution_platforms, platform)            then 'distribution_platform'
            when opted_out                                                  then 'opted_out'
            when paid_other                                                 then 'paid_other'
            when has_later_unpaid                                           then 'not_latest'
            when already_reminded                                           then 'already_reminded'
            when segment = 'second' and second_purchase_offer = ''          then 'no_offer'
            when reminders_today >= daily_cap                               then 'daily_cap'
            when send_at >= deadline                                        then 'closes_before_send'
            when (channel in ('sms', 'call') and (phone is null or (channel = 'sms' and suppressed_sms)
                                                                or (channel = 'call' and suppressed_call)))
              or (channel = 'email' and (email is null or suppressed_email)) then 'unreachable'
            when hash01('holdout:' || order_id) < holdout_rate              then 'holdout'
            when send_at > as_of or now_in_quiet                            then 'wait'
        end as reason,
        case when channel <> 'call' then experiment_variant end             as variant
    from facts
),

final as (
    select
        -- keys
        as_of, shop_id, order_id, customer_id,
        -- the decision
        segment,
        case when reason is null then 'remind' when reason = 'wait' then 'wait' else 'skip' end as decision,
        reason,
        channel,
        send_at,
        'payment_reminder/' || coalesce(variant, segment)
            || case when list_contains($variants::VARCHAR[], coalesce(variant, segment) || '.' || style_tag)
                    then '.' || style_tag else '' end                                            as template,
        variant,
        -- context
        created_at, deadline, prior_purchases, total_amount, platform, style_tag
    from reasoned
)

select * from final
