-- customer_segments: every customer of every shop — also one without orders — with the orders paid and
-- not refunded at T (docs/rules.md §2, §6): paid_orders, lifetime_value, last_paid_at; segment new (0),
-- second (1), repeat (2 or more). A customer who bought in a shop other than their record's gets a row
-- for that shop too. Computed for the (shop, customer) pairs in segment_scope: the ones whose orders changed
-- since the last T (transforms.plan.refresh_segments). A full rebuild (the first T) computes every customer:
-- it leaves out the lines marked `-- scoped` (a join with every pair would only cost time), and
-- segment_scope need not exist then.
with paid as (
    select
        orders.shop_id, orders.customer_id,
        count(*)                 as paid_orders,
        sum(orders.total_amount) as lifetime_value,
        max(orders.paid_at)      as last_paid_at
    from staging.orders as orders
    semi join segment_scope using (shop_id, customer_id)         -- scoped
    where orders.paid_at <= $as_of::TIMESTAMPTZ
      and (orders.refunded_at is null or orders.refunded_at > $as_of::TIMESTAMPTZ)
    group by orders.shop_id, orders.customer_id
),

records as (
    select shop_id, customer_id, member_level from staging.customers
    semi join segment_scope using (shop_id, customer_id)         -- scoped
),

people as (
    -- every customer record, and every (shop, customer) with paid orders: one full join (not a UNION, then
    -- two joins to find each pair's orders and record again; 10M orders: 3.1 s instead of 5.5 s)
    select
        shop_id, customer_id,
        paid.paid_orders, paid.lifetime_value, paid.last_paid_at,
        records.member_level,
        records.customer_id is null                         as elsewhere   -- paid in a shop other than the record's
    from records
    full join paid using (shop_id, customer_id)
),

levels as (
    -- the member_level of those who paid elsewhere: their record's, found by customer_id
    select people.shop_id, people.customer_id, customers.member_level
    from people
    join staging.customers as customers using (customer_id)
    where people.elsewhere
),

final as (
    select
        people.shop_id, people.customer_id,
        -- what they paid at T
        coalesce(people.paid_orders, 0)                     as paid_orders,
        coalesce(people.lifetime_value, 0)::DECIMAL(18, 2)  as lifetime_value,
        people.last_paid_at,
        -- who they are
        coalesce(people.member_level, levels.member_level)  as member_level,
        case when coalesce(people.paid_orders, 0) = 0 then 'new'
             when people.paid_orders = 1 then 'second'
             else 'repeat' end                              as segment
    from people
    left join levels using (shop_id, customer_id)
)

select * from final
