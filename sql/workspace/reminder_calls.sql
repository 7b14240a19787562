-- reminder_calls: a shop's payment-reminder calls (CONTRACT §4, §6: a `remind` on channel 'call' is an
-- ops.messages row 'queued' until an agent records it), for the page `crm serve`. Listed: every queued one
-- and those done on the shop's local day of $now, with what the agent needs: the order, the customer, the
-- amount, whether it has been paid since (then there is nothing to ask), and the script.
with calls as (
    select message_id, order_id, customer_id, status, created_at, sent_at, body as script
    from ops.messages
    where purpose = 'payment_reminder' and channel = 'call' and shop_id = $shop_id
),

final as (
    select
        -- the call
        calls.message_id, calls.order_id, calls.status, calls.created_at, calls.sent_at as done_at, calls.script,
        -- the order now
        orders.total_amount, orders.currency, orders.created_at as ordered_at, orders.paid_at, orders.closed_at,
        -- the customer
        customers.name as customer_name, customers.phone, customers.member_level
    from calls
    left join staging.orders as orders using (order_id)
    left join staging.customers as customers on customers.customer_id = calls.customer_id
    where calls.status = 'queued'
       or crm_shop_local_date($shop_id, calls.sent_at) = crm_shop_local_date($shop_id, $now::TIMESTAMPTZ)
)

select * from final
order by status = 'done', created_at, order_id
