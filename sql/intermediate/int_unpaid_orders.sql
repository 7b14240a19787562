-- int_unpaid_orders: every order unpaid at T (docs/rules.md §2): created_at <= T, not paid at T
-- (paid_at null or > T), and not closed at T (closed_at null or > T).
with orders as (
    select *
    from staging.orders
    where created_at <= $as_of::TIMESTAMPTZ
      and (paid_at is null or paid_at > $as_of::TIMESTAMPTZ)
      and (closed_at is null or closed_at > $as_of::TIMESTAMPTZ)
),

final as (
    select
        -- keys
        orders.order_id, orders.shop_id, orders.customer_id,
        -- the order
        orders.platform, orders.created_at, orders.total_amount, orders.currency,
        crm_shop_local_date(orders.shop_id, orders.created_at)        as created_local_date
    from orders
    join int_shop_clock as clock using (shop_id)
)

select * from final
