-- send_queue: the queued automatic messages (sms, chat, email) a send at T takes up, the oldest first, each
-- with the reason it may no longer go (fail_reason; NULL: send it).
--   expired: T is at or past the end of the time the message is worth sending (expires_at): a payment
--            reminder until its order's deadline (created_at + auto_close_minutes - close_margin_minutes),
--            a follow-up until the end of its due day (the shop's local date of the T that created it).
--            A message from before expires_at was stored gets the same limit computed here.
--   retired_shop: the message's shop is no longer configured (top-level retired_shops).
-- Such a message ends 'failed' with the reason; one that may go is sent, and one whose every attempt fails
-- transiently stays queued for a later run (transforms/dispatch.py).
with queued as (
    select message_id, channel, shop_id, purpose, order_id, recipient, body, created_at, expires_at
    from ops.messages
    where status = 'queued' and list_contains($channels::VARCHAR[], channel)
),

limits as (
    select
        queued.*,
        shops.shop_id is null                                                 as retired,
        coalesce(
            queued.expires_at,
            case when queued.purpose = 'payment_reminder'
                 then orders.created_at + to_minutes(shops.auto_close_minutes - shops.close_margin_minutes)
                 when queued.purpose = 'followup'
                 then crm_shop_utc(queued.shop_id, (crm_shop_local_date(queued.shop_id, queued.created_at) + 1)::TIMESTAMP)
            end)                                                              as worth_until
    from queued
    left join staging.orders as orders on orders.order_id = queued.order_id
    left join ops.shops as shops on shops.shop_id = queued.shop_id
),

final as (
    select
        -- the message
        message_id, channel, shop_id, purpose, recipient, body, created_at,
        -- may it still go at T
        worth_until,
        case when retired then 'retired_shop: the shop is not configured any more (retired_shops)'
             when worth_until <= $as_of::TIMESTAMPTZ
             then 'expired: not sent by ' || strftime(crm_shop_local(shop_id, worth_until), '%Y-%m-%d %H:%M')
                  || ' local time, when it stopped being worth sending'
        end                                                                   as fail_reason
    from limits
)

select * from final
order by created_at, message_id
