-- replies: what a shop's customers answered by SMS that is not an opt-out (an opt-out becomes a suppression,
-- docs/rules.md §7), for the agents' page: a reply is often a question ("怎么付款?") someone should answer.
-- Matched to the customer by phone (both E.164). $order_id: only the replies of that order's customer;
-- $limit: at most so many, newest first.
with replies as (
    select reply_id, sender, text, coalesce(replied_at, received_at) as replied_at, gateway
    from ops.replies
    where not opt_out
),

customers as (
    select customer_id, name, phone
    from staging.customers
    where shop_id = $shop_id and phone is not null
      and ($order_id is null
           or customer_id = (select customer_id from staging.orders where order_id = $order_id))
),

final as (
    select
        -- the reply
        replies.reply_id, replies.text, replies.replied_at, replies.gateway,
        -- who sent it
        customers.customer_id, customers.name as customer_name, replies.sender as phone
    from replies
    join customers on customers.phone = replies.sender
)

select * from final
order by replied_at desc, reply_id
limit $limit
