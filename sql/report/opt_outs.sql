-- opt_outs: the opt-out replies a shop's customers sent in a period of local dates [$start, $end], as of
-- $as_of (docs/rules.md §7): each customer's number counted once, matched by phone (both E.164).
with replies as (
    select sender, coalesce(replied_at, received_at) as replied_at
    from ops.replies
    where opt_out and coalesce(replied_at, received_at) <= $as_of::TIMESTAMPTZ
),

final as (
    select count(distinct replies.sender) as opt_outs
    from replies
    join staging.customers as customers on customers.phone = replies.sender and customers.shop_id = $shop
    where crm_shop_local_date($shop, replies.replied_at) between $start and $end
)

select * from final
