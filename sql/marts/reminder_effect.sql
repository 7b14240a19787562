-- reminder_effect: per shop and local day, what the payment reminders recovered against the held-out
-- control group (docs/rules.md §8), as of T. Only configured shops (ops.shops).
--   reminded: the reminder reached the customer's side — an SMS/email/chat message 'sent' (a later failed
--   delivery still counts: there are no receipts yet), a call an agent made ('done'); a call still queued,
--   a message queued or failed is not a reminder (counted in reminders_not_made). The day is the local
--   date of the reminder's created_at (<= T).
--   held out: orders whose first 'holdout' decision was that day (as_of <= T), never reminded by T.
--   known at T: the outcome can no longer change — paid (paid_at <= T), closed (closed_at <= T) or past
--   the platform's auto-close (created_at + auto_close_minutes <= T). Still open: the rest.
--   paid before closing: paid at T, before created_at + auto_close_minutes and before closed_at (such an
--   order is always known). Recovered revenue: the reminded orders paid before closing, their total_amount.
--   The paid rate of a group is its *_paid_before_close / orders_*_known: open orders are not counted yet.
with reminders as (
    select
        m.shop_id, m.order_id,
        (m.channel = 'call' and m.status = 'done') or (m.channel <> 'call' and m.status = 'sent') as made,
        crm_shop_local_date(m.shop_id, m.created_at) as day
    from ops.messages as m
    join ops.shops as shops using (shop_id)
    where m.purpose = 'payment_reminder' and m.order_id is not null and m.created_at <= $as_of::TIMESTAMPTZ
),

reminded_orders as (
    -- one row per order: reminded when any of its reminders was made, on the day of the first one made
    select shop_id, order_id, bool_or(made) as reminded, coalesce(min(day) filter (where made), min(day)) as day
    from reminders
    group by shop_id, order_id
),

held_out as (
    select d.shop_id, d.order_id, min(crm_shop_local_date(d.shop_id, d.as_of)) as day
    from marts.reminder_decisions as d
    join ops.shops as shops using (shop_id)
    where d.reason = 'holdout' and d.as_of <= $as_of::TIMESTAMPTZ
      and not exists (select 1 from reminded_orders as r where r.order_id = d.order_id and r.reminded)
    group by d.shop_id, d.order_id
),

outcomes as (
    -- each order's outcome at T: known or still open, paid before closing or not
    select
        orders.order_id, orders.total_amount,
        orders.paid_at <= $as_of::TIMESTAMPTZ
            or orders.closed_at <= $as_of::TIMESTAMPTZ
            or orders.created_at + to_minutes(shops.auto_close_minutes) <= $as_of::TIMESTAMPTZ   as known,
        coalesce(orders.paid_at <= $as_of::TIMESTAMPTZ
            and orders.paid_at < orders.created_at + to_minutes(shops.auto_close_minutes)
            and (orders.closed_at is null or orders.paid_at <= orders.closed_at), false)         as paid_before_close
    from staging.orders as orders
    join ops.shops as shops using (shop_id)
    where orders.order_id in (select order_id from reminded_orders union select order_id from held_out)
),

groups as (
    -- an order missing from staging.orders counts as still open
    select 'reminded' as grp, r.shop_id, r.day, coalesce(o.known, false) as known,
           coalesce(o.paid_before_close, false) as paid, o.total_amount
    from reminded_orders as r left join outcomes as o using (order_id)
    where r.reminded
    union all
    select 'not_made', r.shop_id, r.day, false, false, null
    from reminded_orders as r
    where not r.reminded
    union all
    select 'held_out', h.shop_id, h.day, coalesce(o.known, false), coalesce(o.paid_before_close, false), o.total_amount
    from held_out as h left join outcomes as o using (order_id)
),

final as (
    select
        $as_of::TIMESTAMPTZ                                                            as as_of,
        shop_id, day,
        -- reminded
        count(*) filter (where grp = 'reminded')                                       as orders_reminded,
        count(*) filter (where grp = 'reminded' and known)                             as orders_reminded_known,
        count(*) filter (where grp = 'reminded' and not known)                         as orders_reminded_open,
        count(*) filter (where grp = 'reminded' and paid)                              as reminded_paid_before_close,
        coalesce(sum(total_amount) filter (where grp = 'reminded' and paid), 0)::DECIMAL(18, 2) as recovered_amount,
        -- planned but not made: a call still queued, a message queued or failed
        count(*) filter (where grp = 'not_made')                                       as reminders_not_made,
        -- held out (the control group)
        count(*) filter (where grp = 'held_out')                                       as orders_held_out,
        count(*) filter (where grp = 'held_out' and known)                             as orders_held_out_known,
        count(*) filter (where grp = 'held_out' and not known)                         as orders_held_out_open,
        count(*) filter (where grp = 'held_out' and paid)                              as held_out_paid_before_close
    from groups
    group by shop_id, day
)

select * from final
