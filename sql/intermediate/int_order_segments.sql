-- int_order_segments: prior purchases and segment of each unpaid order (docs/rules.md §2).
-- Prior purchases of order o: the customer's other orders in the same shop with paid_at < o.created_at
-- and not refunded at T. Segment: 0 -> new, 1 -> second, 2 or more -> repeat.
with unpaid as (
    select * from int_unpaid_orders
),

prior as (
    select
        unpaid.order_id,
        count(other.order_id) as prior_purchases
    from unpaid
    left join int_customer_orders as other
        on  other.shop_id = unpaid.shop_id
        and other.customer_id = unpaid.customer_id
        and other.order_id <> unpaid.order_id
        and other.paid_at < unpaid.created_at
        and not other.refunded_at_t
    group by unpaid.order_id
),

final as (
    select
        order_id,
        prior_purchases,
        case when prior_purchases = 0 then 'new'
             when prior_purchases = 1 then 'second'
             else 'repeat' end as segment
    from prior
)

select * from final
