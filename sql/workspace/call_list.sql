-- call_list: the agents' follow-up calls of one shop (docs/rules.md §5-§6), for the page `crm serve`.
-- A call is an ops.messages row (purpose 'followup', channel 'call'): 'queued' until an agent records a
-- reached outcome, then 'done'. Listed: every queued call (also one left from an earlier day) and every
-- call done on the shop's local day of $now; or only $order_id's call when it is given.
-- Context for the agent: the visit task the call came from (tier, rank, review), as the plan that created
-- the message saw it (kept on the message, so a later plan cannot change it; a message from before that
-- was kept falls back to the task row of its T), the order, what was bought, the customer, and the latest
-- outcome recorded (a call-back time).
-- Order: tier in the order of docs/rules.md §5, then the run that created it, then the rank the plan gave.
with calls as (
    select message_id, order_id, customer_id, status, created_at, as_of, body as script,
           tier, rank, rating, review_text
    from ops.messages
    where purpose = 'followup' and channel = 'call' and shop_id = $shop_id
      and ($order_id is null or order_id = $order_id)
),

tasks as (
    -- older messages only: the task row of the run that created the call (or the latest one before it)
    select tasks.*
    from marts.visit_tasks as tasks
    join calls on calls.order_id = tasks.order_id and tasks.as_of <= coalesce(calls.as_of, calls.created_at)
    where tasks.shop_id = $shop_id and calls.tier is null
    qualify row_number() over (partition by tasks.order_id order by tasks.as_of desc) = 1
),

items as (
    select
        order_items.order_id,
        string_agg(coalesce(products.title, order_items.product_id) || ' ×' || order_items.quantity, ', '
                   order by order_items.line_no) as bought
    from staging.order_items as order_items
    left join staging.products as products using (product_id)
    where order_items.order_id in (select order_id from calls)
    group by order_items.order_id
),

outcomes as (
    select
        order_id,
        count(*) filter (where not reached)                            as tries_not_reached,
        max(recorded_at) filter (where reached)                        as reached_at,
        arg_max_null(callback_at, recorded_at)                         as callback_at,
        arg_max(reached, recorded_at)                                  as last_reached,
        arg_max_null(agent, recorded_at)                               as last_agent
    from ops.visit_outcomes
    where order_id in (select order_id from calls)
    group by order_id
),

final as (
    select
        -- the call
        calls.message_id, calls.order_id, calls.customer_id, calls.status, calls.created_at, calls.script,
        -- why it is on the list
        coalesce(calls.tier, tasks.tier)                                  as tier,
        coalesce(calls.rank, tasks.rank)                                  as rank,
        case when calls.tier is not null then calls.as_of else tasks.as_of end as planned_at,
        case when calls.tier is not null then calls.rating else tasks.rating end as rating,
        case when calls.tier is not null then calls.review_text else tasks.review_text end as review_text,
        case when coalesce(calls.tier, tasks.tier) = 'complaint_in_praise'
             then list_filter(shops.complaint_keywords,
                              k -> contains(lower(coalesce(calls.review_text, tasks.review_text)), lower(k))) end
            as complaint_words,
        shops.high_value_amount,
        -- the order
        orders.total_amount, orders.currency, orders.receiver_city, orders.platform,
        orders.paid_at, orders.shipped_at, orders.delivered_at, items.bought,
        -- the customer
        customers.name as customer_name, customers.phone, customers.city, customers.member_level,
        -- what agents recorded so far
        coalesce(outcomes.tries_not_reached, 0) as tries_not_reached, outcomes.reached_at,
        case when not outcomes.last_reached then outcomes.callback_at end as callback_at,
        outcomes.last_agent
    from calls
    left join tasks using (order_id)
    left join staging.orders as orders using (order_id)
    left join staging.customers as customers on customers.customer_id = calls.customer_id
    left join items using (order_id)
    left join outcomes using (order_id)
    left join ops.shops as shops on shops.shop_id = $shop_id
    where calls.status = 'queued'
       or $order_id is not null
       or (calls.status = 'done' and crm_shop_local_date($shop_id, outcomes.reached_at)
                                     = crm_shop_local_date($shop_id, $now::TIMESTAMPTZ))
)

select * from final
order by
    status = 'done',
    list_position(['high_value', 'bad_review', 'neutral_review', 'complaint_in_praise', 'other'], tier) nulls last,
    planned_at, rank, order_id
