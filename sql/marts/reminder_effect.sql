-- reminder_effect: per shop and local day, what the payment reminders recovered against the held-out
-- control group (CONTRACT §8), as of T.
--   reminded: orders with a payment reminder (not failed) created that day; held out: orders whose first
--   'holdout' decision was that day. Paid before closing: paid at T, before created_at + auto_close_minutes
--   and before closed_at. Recovered revenue: the reminded orders paid before closing, their total_amount.
with reminded as (
    select m.shop_id, m.order_id, min(crm_shop_local_date(m.shop_id, m.created_at)) as day
    from ops.messages as m
    where m.purpose = 'payment_reminder' and m.status <> 'failed' and m.created_at <= $as_of::TIMESTAMPTZ
    group by m.shop_id, m.order_id
),

held_out as (
    select d.shop_id, d.order_id, min(crm_shop_local_date(d.shop_id, d.as_of)) as day
    from marts.reminder_decisions as d
    where d.reason = 'holdout' and d.as_of <= $as_of::TIMESTAMPTZ
    group by d.shop_id, d.order_id
),

paid as (
    -- orders paid at T before they closed
    select orders.order_id, orders.total_amount
    from staging.orders as orders
    join ops.shops as shops using (shop_id)
    where orders.paid_at <= $as_of::TIMESTAMPTZ
      and orders.paid_at < orders.created_at + to_minutes(shops.auto_close_minutes)
      and (orders.closed_at is null or orders.paid_at <= orders.closed_at)
      and orders.order_id in (select order_id from reminded union select order_id from held_out)
),

final as (
    select
        $as_of::TIMESTAMPTZ                                               as as_of,
        coalesce(r.shop_id, h.shop_id)                                    as shop_id,
        coalesce(r.day, h.day)                                            as day,
        coalesce(r.orders, 0)                                             as orders_reminded,
        coalesce(r.paid, 0)                                               as reminded_paid_before_close,
        coalesce(r.amount, 0)::DECIMAL(18, 2)                             as recovered_amount,
        coalesce(h.orders, 0)                                             as orders_held_out,
        coalesce(h.paid, 0)                                               as held_out_paid_before_close
    from (
        select reminded.shop_id, reminded.day, count(*) as orders, count(paid.order_id) as paid,
               sum(paid.total_amount) as amount
        from reminded left join paid using (order_id) group by all
    ) as r
    full join (
        select held_out.shop_id, held_out.day, count(*) as orders, count(paid.order_id) as paid
        from held_out left join paid using (order_id) group by all
    ) as h using (shop_id, day)
)

select * from final
