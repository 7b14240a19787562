-- int_outbox: the messages a dispatch at T creates (docs/rules.md §5-§7), from the marts built for T:
--   every 'remind' decision (purpose payment_reminder, on the segment's channel),
--   every visit task with channel 'call', and every automatic follow-up (sms, email) whose due_at <= T.
-- message_id = purpose || ':' || order_id, so one purpose and order is one message, ever: a message
-- already in ops.messages (whatever its status) is not created again.
-- expires_at: until when a queued message is still worth sending (a later run fails it after that).
-- Carries the facts the templates use and the columns the dispatch validation checks
-- (paid_at_t, in_quiet, over_cap, opted_out must all be false; recipient must be known but for calls).
with reminders as (
    select
        'payment_reminder' as purpose, shop_id, order_id, customer_id, channel,
        case when channel = 'call' then 'call_script/payment_reminder' else template end as template,
        segment as customer_segment, variant,
        NULL::VARCHAR as tier, NULL::BIGINT as rank, NULL::INTEGER as rating, NULL::VARCHAR as review_text
    from mart_reminder_decisions
    where decision = 'remind'
),

followups as (
    select
        'followup' as purpose, shop_id, order_id, customer_id, channel,
        case when channel = 'call' then 'call_script/followup' else 'followup/' || channel end as template,
        NULL::VARCHAR as customer_segment, NULL::VARCHAR as variant,
        tier, rank, rating, review_text
    from mart_visit_tasks
    where channel = 'call' or (channel in ('sms', 'email') and due_at <= $as_of::TIMESTAMPTZ)
),

new_messages as (
    select wanted.purpose || ':' || wanted.order_id as message_id, wanted.*
    from (select * from reminders union all by name select * from followups) as wanted
    where not exists (select 1 from ops.messages as m where m.message_id = wanted.purpose || ':' || wanted.order_id)
),

items as (
    select
        items.order_id,
        list({'title': coalesce(products.title, items.product_id), 'quantity': items.quantity}
             order by items.line_no) as items
    from staging.order_items as items
    left join staging.products as products using (product_id)
    where items.order_id in (select order_id from new_messages)
    group by items.order_id
),

reminders_today as (
    -- payment reminders already given today (local date D), per customer and shop
    select m.shop_id, m.customer_id, count(*) as given
    from ops.messages as m
    join int_shop_clock as clock using (shop_id)
    where m.purpose = 'payment_reminder' and m.status <> 'failed' and m.created_at <= $as_of::TIMESTAMPTZ
      and crm_shop_local_date(m.shop_id, m.created_at) = clock.local_date
    group by m.shop_id, m.customer_id
),

final as (
    select
        -- the message
        new_messages.message_id, new_messages.purpose, new_messages.shop_id, new_messages.order_id,
        new_messages.customer_id, new_messages.channel,
        case new_messages.channel when 'email' then reach.email when 'call' then reach.phone else reach.phone end
                                                                              as recipient,
        new_messages.template,
        -- a reminder's segment and template experiment variant, kept on the message (docs/rules.md §8)
        new_messages.customer_segment, new_messages.variant,
        $as_of::TIMESTAMPTZ                                                   as created_at,
        -- still worth sending until: a reminder its order's deadline, an automatic follow-up the end of
        -- D (its due day); a follow-up call has no end (agents call back later)
        case when new_messages.purpose = 'payment_reminder'
             then orders.created_at + to_minutes(clock.auto_close_minutes - clock.close_margin_minutes)
             when new_messages.channel <> 'call'
             then crm_shop_utc(new_messages.shop_id, (clock.local_date + 1)::TIMESTAMP) end as expires_at,
        -- what the templates say
        clock.name as shop_name, clock.locale, clock.visit_trigger,
        coalesce(reach.name, '')                                              as customer_name,
        coalesce(reach.member_level, 0)                                       as member_level,
        orders.total_amount, orders.currency,
        coalesce(items.items, [{'title': new_messages.order_id, 'quantity': 1}]) as items,
        strftime(crm_shop_local(new_messages.shop_id, orders.created_at + to_minutes(clock.auto_close_minutes)),
                 '%Y-%m-%d %H:%M')                                             as close_time,
        clock.second_purchase_offer                                           as offer,
        coalesce(segments.prior_purchases, 0)                                 as paid_orders,
        -- the visit task behind a follow-up, kept on the message for the agents
        new_messages.tier, new_messages.rank, new_messages.rating, new_messages.review_text,
        -- checks (all must be false)
        new_messages.purpose = 'payment_reminder'
            and orders.paid_at is not null and orders.paid_at <= $as_of::TIMESTAMPTZ        as paid_at_t,
        new_messages.purpose = 'payment_reminder' and clock.now_in_quiet                    as in_quiet,
        new_messages.purpose = 'payment_reminder'
            and coalesce(reminders_today.given, 0)
                + sum(case when new_messages.purpose = 'payment_reminder' then 1 else 0 end) over (
                      partition by new_messages.shop_id, new_messages.customer_id
                      order by new_messages.order_id rows between unbounded preceding and current row)
                > clock.daily_cap                                                            as over_cap,
        coalesce(reach.opted_out, false)                                                    as opted_out
    from new_messages
    join int_shop_clock as clock on clock.shop_id = new_messages.shop_id
    join staging.orders as orders on orders.order_id = new_messages.order_id
    left join int_customer_reach as reach on reach.customer_id = new_messages.customer_id
    left join int_order_segments as segments on segments.order_id = new_messages.order_id
    left join items on items.order_id = new_messages.order_id
    left join reminders_today
        on reminders_today.shop_id = new_messages.shop_id and reminders_today.customer_id = new_messages.customer_id
)

select * from final
