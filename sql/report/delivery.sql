-- delivery: what the gateways' receipts said of a shop's automatic messages created in a period of local
-- dates [$start, $end], as of $as_of (docs/rules.md §7, §8), per channel: sent (status 'sent'), of them
-- delivered and undelivered (ops.messages.delivery), and those with no final receipt yet.
with messages as (
    select channel, status, delivery
    from ops.messages
    where shop_id = $shop and purpose in ('payment_reminder', 'followup') and channel in ('sms', 'chat', 'email')
      and created_at <= $as_of::TIMESTAMPTZ
      and crm_shop_local_date($shop, created_at) between $start and $end
),

final as (
    select
        channel,
        count(*) filter (where status = 'sent')                                 as sent,
        count(*) filter (where status = 'sent' and delivery = 'delivered')      as delivered,
        count(*) filter (where status = 'sent' and delivery = 'undelivered')    as undelivered,
        count(*) filter (where status = 'sent' and delivery is null)            as no_receipt
    from messages
    group by channel
)

select * from final
order by list_position(['sms', 'chat', 'email'], channel)
