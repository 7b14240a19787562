-- effect_reminders: per shop and order, its payment reminders as reminder_effect counts them (docs/rules.md §8):
-- made (one of them reached the customer's side: an SMS/email/chat message 'sent', a call an agent made,
-- 'done'), the local day of the first one made and of the first one; the reminder's channel, segment (as its
-- decision had it; a message from before that was kept: its template's, payment_reminder/<segment>…) and
-- template experiment variant. Read from the messages in effect_message_rows (transforms/plan.py: every message
-- on a rebuild, those of the days that changed since the last refresh otherwise), created <= T, merged with what
-- ops.effect_reminders holds for the same orders: a reminder is never deleted, once made stays made, and its
-- channel, segment and variant never change, so "any made", "first" and "smallest" of the union are those of all
-- of the order's reminders (an order has one payment reminder, its id is fixed; of several, the smallest value).
-- Only configured shops (ops.shops).
with reminders as (
    select
        m.shop_id, m.order_id,
        (m.channel = 'call' and m.status = 'done') or (m.channel <> 'call' and m.status = 'sent') as made,
        crm_shop_local_date(m.shop_id, m.created_at) as day,
        m.channel,
        coalesce(m.customer_segment,
                 case when m.template like 'payment_reminder/%'
                      then split_part(split_part(m.template, '/', 2), '.', 1) end) as segment,
        m.variant
    from effect_message_rows as m
    join ops.shops as shops using (shop_id)
    where m.purpose = 'payment_reminder' and m.created_at <= $as_of::TIMESTAMPTZ
),

fresh as (
    select shop_id, order_id, bool_or(made) as made, min(day) filter (where made) as made_day, min(day) as first_day,
           min(channel) as channel, min(segment) as segment, min(variant) as variant
    from reminders
    group by shop_id, order_id
),

kept as (
    select kept.*
    from ops.effect_reminders as kept
    semi join fresh using (shop_id, order_id)
),

final as (
    select
        -- keys
        shop_id, order_id,
        -- reminded: made on made_day; else planned but not made, counted on first_day
        bool_or(made) as made, min(made_day) as made_day, min(first_day) as first_day,
        -- what the effect is broken down by
        min(channel) as channel, min(segment) as segment, min(variant) as variant
    from (select * from fresh union all by name select * from kept)
    group by shop_id, order_id
)

select * from final
