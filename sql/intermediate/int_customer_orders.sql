-- int_customer_orders: every order (in any state) of the customers who have an unpaid order at T,
-- in the same shop, with its state at T (docs/rules.md §2). The reminder rules compare an unpaid order
-- with these: paid_other, not_latest and the prior purchases behind the segment.
with customers as (
    select distinct shop_id, customer_id from int_unpaid_orders
),

orders as (
    select orders.*
    from staging.orders as orders
    semi join customers using (shop_id, customer_id)
),

final as (
    select
        -- keys
        orders.order_id, orders.shop_id, orders.customer_id,
        -- when
        orders.created_at, orders.paid_at,
        crm_shop_local_date(orders.shop_id, orders.created_at)                      as created_local_date,
        -- state at T
        orders.paid_at is not null and orders.paid_at <= clock.as_of                as paid_at_t,
        orders.refunded_at is not null and orders.refunded_at <= clock.as_of        as refunded_at_t,
        orders.created_at <= clock.as_of
            and (orders.paid_at is null or orders.paid_at > clock.as_of)
            and (orders.closed_at is null or orders.closed_at > clock.as_of)        as unpaid_at_t,
        list_contains(clock.distribution_platforms, orders.platform)                as on_distribution_platform
    from orders
    join int_shop_clock as clock using (shop_id)
)

select * from final
