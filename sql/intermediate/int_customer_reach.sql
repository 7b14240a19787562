-- int_customer_reach: how each customer of an unpaid order or a visit candidate can be reached at T.
--   opted_out: the customer has opt_out, or a suppression with channel 'all' matching its id, phone
--              or email, created <= T (docs/rules.md §4 reason 3; also used for visits, §5);
--   suppressed_<channel>: a suppression for that channel matching id, phone or email, created <= T.
-- Suppressions: the landing's (staging.suppressions) and the opt-out replies (ops.suppressions, §7), alike.
-- A customer missing from staging.customers has no contact and has not opted out.
with wanted as (
    select customer_id from int_unpaid_orders
    union
    select customer_id from int_visit_candidates
),

customers as (
    select customers.*
    from staging.customers as customers
    semi join wanted using (customer_id)
),

suppressions as (
    select customer_id, phone, email, channel from staging.suppressions where created_at <= $as_of::TIMESTAMPTZ
    union all
    select customer_id, phone, email, channel from ops.suppressions where created_at <= $as_of::TIMESTAMPTZ
),

matched as (
    -- three equality joins rather than one OR join, so each is a hash join
    select w.customer_id, s.channel
    from wanted as w join suppressions as s on s.customer_id = w.customer_id
    union all
    select c.customer_id, s.channel
    from customers as c join suppressions as s on s.phone = c.phone
    union all
    select c.customer_id, s.channel
    from customers as c join suppressions as s on s.email = c.email
),

suppressed as (
    select
        customer_id,
        bool_or(channel = 'all')   as suppressed_all,
        bool_or(channel = 'sms')   as suppressed_sms,
        bool_or(channel = 'email') as suppressed_email,
        bool_or(channel = 'call')  as suppressed_call
    from matched
    group by customer_id
),

final as (
    select
        -- keys
        wanted.customer_id,
        -- contact
        customers.name, customers.phone, customers.email, customers.city, customers.member_level,
        -- may we contact them at all, and on which channel
        coalesce(customers.opt_out, false) or coalesce(suppressed.suppressed_all, false) as opted_out,
        coalesce(suppressed.suppressed_sms, false)                                       as suppressed_sms,
        coalesce(suppressed.suppressed_email, false)                                     as suppressed_email,
        coalesce(suppressed.suppressed_call, false)                                      as suppressed_call
    from wanted
    left join customers using (customer_id)
    left join suppressed using (customer_id)
)

select * from final
