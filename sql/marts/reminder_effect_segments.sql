-- reminder_effect_segments: per shop and local day (segment and channel 'all': the day's totals, which the view
-- marts.reminder_effect shows, one row per shop and local day), and per shop, local day, segment and channel, what
-- the payment reminders did against the held-out control group (docs/rules.md §8), as of T. Only configured shops
-- (ops.shops).
--   reminded: the reminder reached the customer's side — an SMS/email/chat message 'sent' (a later failed
--   delivery still counts: there are no receipts yet), a call an agent made ('done'); a call still queued,
--   a message queued or failed is not a reminder (counted in reminders_not_made). The day is the local
--   date of the reminder's created_at (<= T). Assigned: reminded or not made — every order a reminder was
--   planned for (the lift's treated group: whether a planned reminder gets made can depend on the outcome, e.g. a
--   call nobody makes once the order is paid).
--   held out: orders whose first 'holdout' decision at a T at or after its send time — when it would have been
--   reminded — was that day (as_of <= T), without any payment reminder by T.
--   known at T: the outcome can no longer change — paid (paid_at <= T), closed (closed_at <= T) or past
--   the platform's auto-close (created_at + auto_close_minutes <= T). Still open: the rest.
--   paid before closing: paid at T, before created_at + auto_close_minutes and before closed_at (such an
--   order is always known). Recovered revenue: the reminded orders paid before closing, their total_amount.
--   Paid rates are *_paid_before_close / *_known: open orders are not counted yet. The lift is the assigned
--   orders' paid rate minus the held out's, with its 95% interval by Newcombe's hybrid score method; the revenue
--   it implies is lift x assigned_known_amount. Both NULL, effect_status 'too_small', while either group has
--   fewer than crm_effect_min_known() orders whose outcome is known (sql/macros.sql).
-- One payment reminder per order (its id is fixed); its channel, segment (that of its decision, or of its template
-- for a message from before that was kept) and variant; of several reminders, the smallest value.
with reminders as (
    select
        m.shop_id, m.order_id,
        (m.channel = 'call' and m.status = 'done') or (m.channel <> 'call' and m.status = 'sent') as made,
        crm_shop_local_date(m.shop_id, m.created_at) as day,
        m.channel,
        coalesce(m.customer_segment,
                 case when m.template like 'payment_reminder/%'
                      then split_part(split_part(m.template, '/', 2), '.', 1) end) as segment
    from ops.messages as m
    join ops.shops as shops using (shop_id)
    where m.purpose = 'payment_reminder' and m.order_id is not null and m.created_at <= $as_of::TIMESTAMPTZ
),

reminded_orders as (
    -- one row per order: reminded when any of its reminders was made, on the day of the first one made
    select shop_id, order_id, bool_or(made) as reminded, coalesce(min(day) filter (where made), min(day)) as day,
           min(channel) as channel, min(segment) as segment
    from reminders
    group by shop_id, order_id
),

held_out as (
    select d.shop_id, d.order_id, min(crm_shop_local_date(d.shop_id, d.as_of)) as day,
           arg_min_null(d.segment, d.as_of) as segment, arg_min_null(d.channel, d.as_of) as channel
    from marts.reminder_decisions as d
    join ops.shops as shops using (shop_id)
    where d.reason = 'holdout' and d.as_of <= $as_of::TIMESTAMPTZ and coalesce(d.send_at <= d.as_of, true)
      and not exists (select 1 from reminded_orders as r where r.order_id = d.order_id)
    group by d.shop_id, d.order_id
),

outcomes as (
    -- each order's outcome at T: known or still open, paid before closing or not
    select
        orders.order_id, orders.total_amount,
        crm_outcome_known(orders.paid_at, orders.closed_at, orders.created_at, shops.auto_close_minutes,
                          $as_of::TIMESTAMPTZ)                                                   as known,
        crm_paid_before_close(orders.paid_at, orders.closed_at, orders.created_at, shops.auto_close_minutes,
                              $as_of::TIMESTAMPTZ)                                               as paid_before_close
    from staging.orders as orders
    join ops.shops as shops using (shop_id)
    where orders.order_id in (select order_id from reminded_orders union select order_id from held_out)
),

rows as (
    -- each order once: its group, day, outcome (an order missing from staging.orders counts as still open),
    -- segment and channel ('unknown' when not recorded)
    select case when r.reminded then 'reminded' else 'not_made' end as grp, r.shop_id, r.day,
           coalesce(o.known, false) as known, coalesce(o.paid_before_close, false) as paid, o.total_amount,
           coalesce(r.segment, 'unknown') as segment, coalesce(r.channel, 'unknown') as channel
    from reminded_orders as r left join outcomes as o using (order_id)
    union all
    select 'held_out', h.shop_id, h.day, coalesce(o.known, false), coalesce(o.paid_before_close, false),
           o.total_amount, coalesce(h.segment, 'unknown'), coalesce(h.channel, 'unknown')
    from held_out as h left join outcomes as o using (order_id)
),

-- @include marts/_effect_counts.sql
