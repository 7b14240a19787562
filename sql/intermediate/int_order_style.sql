-- int_order_style: the product tone of each unpaid order (docs/rules.md §4, the seed's "cute product"
-- message): the first style tag of its products, by line_no then by the tag's place in style_tags,
-- for which a template variant exists for the order's segment ($variants: 'segment.tag' names).
with items as (
    select items.order_id, items.line_no, products.style_tags
    from staging.order_items as items
    join staging.products as products using (product_id)
    where items.order_id in (select order_id from int_unpaid_orders)
      and products.style_tags is not null
),

tags as (
    select
        items.order_id,
        items.line_no,
        unnest(items.style_tags)                 as tag,
        generate_subscripts(items.style_tags, 1) as tag_position
    from items
),

final as (
    select
        tags.order_id,
        arg_min(tags.tag, tags.line_no::BIGINT * 1000 + tags.tag_position) as style_tag
    from tags
    join int_order_segments as segments using (order_id)
    where list_contains($variants::VARCHAR[], segments.segment || '.' || tags.tag)
    group by tags.order_id
)

select * from final
