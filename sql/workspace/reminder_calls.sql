-- reminder_calls: a shop's payment-reminder calls (docs/rules.md §4, §6: a `remind` on channel 'call' is an
-- ops.messages row 'queued' until an agent records it), for the page `crm serve`.
-- state: 'open' (queued, the order still unpaid and not closed, nor past the platform's auto-close at
-- $now): to call, the soonest to close first; 'settled' (queued, but paid or closed since: nothing to ask);
-- 'done' (called, on the shop's local day of $now). At most $per_state rows of each state are returned,
-- each row carrying its state's full count (state_total).
with calls as (
    select message_id, order_id, customer_id, status, created_at, sent_at, body as script
    from ops.messages
    where purpose = 'payment_reminder' and channel = 'call' and shop_id = $shop_id
),

stated as (
    select
        -- the call
        calls.message_id, calls.order_id, calls.status, calls.created_at, calls.sent_at as done_at, calls.script,
        case
            when calls.status = 'done' then 'done'
            when orders.paid_at is not null or orders.closed_at is not null
                 or orders.created_at + to_minutes(shops.auto_close_minutes) <= $now::TIMESTAMPTZ then 'settled'
            else 'open'
        end as state,
        -- the order now
        orders.total_amount, orders.currency, orders.created_at as ordered_at, orders.paid_at, orders.closed_at,
        orders.created_at + to_minutes(shops.auto_close_minutes) as closes_at,
        -- the customer
        customers.name as customer_name, customers.phone, customers.member_level
    from calls
    left join staging.orders as orders using (order_id)
    left join staging.customers as customers on customers.customer_id = calls.customer_id
    left join ops.shops as shops on shops.shop_id = $shop_id
    where calls.status = 'queued'
       or crm_shop_local_date($shop_id, calls.sent_at) = crm_shop_local_date($shop_id, $now::TIMESTAMPTZ)
),

final as (
    select
        *,
        count(*) over (partition by state) as state_total
    from stated
    qualify row_number() over (partition by state order by closes_at, order_id) <= $per_state
)

select * from final
order by list_position(['open', 'done', 'settled'], state), closes_at, order_id
