-- send_queue: the queued automatic messages (sms, chat, email) a send at T takes up, the oldest first, each
-- checked again just before it goes (docs/rules.md §7), because much can happen between the run that queued
-- a message and the one that sends it (a crash, an outage, a customer who paid or opted out meanwhile).
-- $ids (optional): only these messages (a batch about to go); $as_of: the run's T; $sent_since (optional): when
-- the run began sending (what it sent since counts for T's day, whatever day the clock says).
--   fail_reason (the message ends 'failed', never sent), the first that applies:
--     retired_shop  the message's shop is no longer configured (top-level retired_shops)
--     expired       T is at or past the end of the time it is worth sending (expires_at): a payment reminder
--                   until its order's deadline (created_at + auto_close_minutes - close_margin_minutes), a
--                   follow-up until the end of its due day (the shop's local date of the T that created it);
--                   a message from before expires_at was stored gets the same limit computed here
--     paid          a payment reminder whose order is paid at T
--     closed        a payment reminder whose order is closed at T
--     refunded      a follow-up whose order is refunded at T
--     opted_out     the customer has opt_out, or a suppression 'all' by id, phone or email created <= T
--     suppressed    a suppression for the message's channel matching the customer's id, phone or email, or
--                   the recipient (suppressions: the landing's created <= T, and every opt-out reply received
--                   so far, ops.suppressions, whatever its time)
--   wait_reason (the message stays queued, untouched, for a later run), when no fail_reason applies:
--     quiet_hours   T is inside the shop's quiet hours
--     daily_cap     a payment reminder queued on an earlier day, when the customer's reminders created on
--                   T's local date (not failed) leave no room under daily_cap, counting the customer's older
--                   reminders still queued before it (of this batch or another: one an earlier batch is
--                   sending counts until it is recorded sent, and then among the reminders of the day)
with queued as (
    select message_id, channel, shop_id, purpose, order_id, customer_id, recipient, body, created_at, expires_at
    from ops.messages
    where status = 'queued' and list_contains($channels::VARCHAR[], channel)
      and ($ids::VARCHAR[] is null or message_id in (select unnest($ids::VARCHAR[])))
),

clock as (
    select
        shop_id, auto_close_minutes, close_margin_minutes, daily_cap,
        crm_shop_local_date(shop_id, $as_of::TIMESTAMPTZ)                                     as local_date,
        crm_in_quiet(crm_minute_of_day(crm_shop_local(shop_id, $as_of::TIMESTAMPTZ)), quiet_start, quiet_end)
                                                                                              as in_quiet
    from ops.shops
),

suppressions as (
    -- the landing's, created <= T, and every opt-out a customer replied that has been received (crm/hooks.py),
    -- whatever its time: a reply that came in while this run was sending (after its T) stops the next batch
    select customer_id, phone, email, channel from staging.suppressions where created_at <= $as_of::TIMESTAMPTZ
    union all
    select customer_id, phone, email, channel from ops.suppressions
),

matched as (
    -- suppressions matching a message's customer by id, phone or email, or its recipient; equality joins
    -- only (each a hash join)
    select q.message_id, q.channel as message_channel, s.channel
    from queued as q join suppressions as s on s.customer_id = q.customer_id
    union all
    select q.message_id, q.channel, s.channel
    from queued as q join staging.customers as c on c.customer_id = q.customer_id join suppressions as s on s.phone = c.phone
    union all
    select q.message_id, q.channel, s.channel
    from queued as q join staging.customers as c on c.customer_id = q.customer_id join suppressions as s on s.email = c.email
    union all
    select q.message_id, q.channel, s.channel
    from queued as q join suppressions as s on s.phone = q.recipient where q.channel <> 'email'
    union all
    select q.message_id, q.channel, s.channel
    from queued as q join suppressions as s on s.email = q.recipient where q.channel = 'email'
),

reach as (
    select
        message_id,
        bool_or(channel = 'all')                as suppressed_all,
        bool_or(channel = message_channel)      as suppressed_channel
    from matched
    group by message_id
),

reminders_today as (
    -- payment reminders each customer got from each shop on T's local date: those created that day (not
    -- failed), and older ones sent that day (a batch earlier in this run, or an earlier run of the day)
    select m.shop_id, m.customer_id, count(*) as given
    from ops.messages as m
    join clock using (shop_id)
    where m.purpose = 'payment_reminder' and m.created_at <= $as_of::TIMESTAMPTZ
      and ((m.status <> 'failed' and crm_shop_local_date(m.shop_id, m.created_at) = clock.local_date)
           or (m.status in ('sent', 'done') and crm_shop_local_date(m.shop_id, m.created_at) <> clock.local_date
               and (crm_shop_local_date(m.shop_id, m.sent_at) = clock.local_date
                    or m.sent_at >= $sent_since::TIMESTAMPTZ)))
    group by all
),

facts as (
    select
        queued.*,
        clock.shop_id is null                                                                 as retired,
        coalesce(reminders_today.given, 0)                                                    as given_today,
        clock.in_quiet, clock.daily_cap, clock.local_date,
        coalesce(
            queued.expires_at,
            case when queued.purpose = 'payment_reminder'
                 then orders.created_at + to_minutes(clock.auto_close_minutes - clock.close_margin_minutes)
                 when queued.purpose = 'followup'
                 then crm_shop_utc(queued.shop_id, (crm_shop_local_date(queued.shop_id, queued.created_at) + 1)::TIMESTAMP)
            end)                                                                              as worth_until,
        orders.paid_at <= $as_of::TIMESTAMPTZ                                                 as paid,
        orders.closed_at <= $as_of::TIMESTAMPTZ                                               as closed,
        orders.refunded_at <= $as_of::TIMESTAMPTZ                                             as refunded,
        coalesce(customers.opt_out, false) or coalesce(reach.suppressed_all, false)           as opted_out,
        coalesce(reach.suppressed_channel, false)                                             as suppressed_channel,
        queued.purpose = 'payment_reminder'
            and crm_shop_local_date(queued.shop_id, queued.created_at) <> clock.local_date    as older_reminder
    from queued
    left join clock on clock.shop_id = queued.shop_id
    left join staging.orders as orders on orders.order_id = queued.order_id
    left join staging.customers as customers on customers.customer_id = queued.customer_id
    left join reach on reach.message_id = queued.message_id
    left join reminders_today
        on reminders_today.shop_id = queued.shop_id and reminders_today.customer_id = queued.customer_id
),

queue_place as (
    -- every older payment reminder still queued, in sending order per customer (all of them, not only $ids)
    select m.message_id,
           row_number() over (partition by m.shop_id, m.customer_id order by m.created_at, m.message_id) as place
    from ops.messages as m
    join clock using (shop_id)
    where m.status = 'queued' and m.purpose = 'payment_reminder' and list_contains($channels::VARCHAR[], m.channel)
      and crm_shop_local_date(m.shop_id, m.created_at) <> clock.local_date
),

capped as (
    -- an older reminder's place among the customer's older queued ones, against the room left today
    select facts.*, facts.older_reminder and facts.given_today + queue_place.place > facts.daily_cap as over_cap
    from facts
    left join queue_place using (message_id)
),

final as (
    select
        -- the message
        message_id, channel, shop_id, purpose, recipient, body, created_at,
        -- may it still go at T
        worth_until,
        case
            when retired then 'retired_shop: the shop is not configured any more (retired_shops)'
            when worth_until <= $as_of::TIMESTAMPTZ
            then 'expired: not sent by ' || strftime(crm_shop_local(shop_id, worth_until), '%Y-%m-%d %H:%M')
                 || ' local time, when it stopped being worth sending'
            when purpose = 'payment_reminder' and paid then 'paid: the order was paid after the reminder was queued'
            when purpose = 'payment_reminder' and closed then 'closed: the order was closed after the reminder was queued'
            when purpose = 'followup' and refunded then 'refunded: the order was refunded after the follow-up was queued'
            when opted_out then 'opted_out: the customer opted out after the message was queued'
            when suppressed_channel then 'suppressed: the recipient was suppressed for ' || channel
                                         || ' after the message was queued'
        end                                                                                   as fail_reason,
        case
            when in_quiet then 'quiet_hours'
            when over_cap then 'daily_cap'
        end                                                                                   as wait_reason
    from capped
)

select * from final
order by created_at, message_id
