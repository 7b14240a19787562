-- report_buckets: a fingerprint of what the §8 marts (docs/rules.md §8) read from ops.messages and
-- ops.visit_outcomes, per source, shop and UTC day, so that a refresh finds the days that changed since the
-- last one (transforms/plan.py refresh_reports) without comparing every row. A message counts in the bucket
-- of its created_at, an outcome in that of its recorded_at (all shops: '' — its shop may come from its order).
--   n: rows; n_made: messages made (an SMS/email/chat 'sent', a call 'done'); fingerprint: the sum of a hash of
--   every column the marts read, so any change of a row changes it.
with messages as (
    select
        'messages:' || purpose                                                    as source,
        shop_id,
        timezone('UTC', created_at)::DATE                                         as day,
        count(*)                                                                  as n,
        count(*) filter (where (channel = 'call' and status = 'done')
                            or (channel <> 'call' and status = 'sent'))           as n_made,
        sum(hash(message_id, order_id, channel, status, created_at))::HUGEINT     as fingerprint
    from ops.messages
    where purpose in ('payment_reminder', 'followup')
    group by all
),

outcomes as (
    select
        'outcomes'                                                                as source,
        ''                                                                        as shop_id,
        timezone('UTC', recorded_at)::DATE                                        as day,
        count(*)                                                                  as n,
        0::BIGINT                                                                 as n_made,
        sum(hash(order_id, shop_id, recorded_at, reached, quality, logistics, packaging, service, suggestion,
                 gift, compensation))::HUGEINT                                    as fingerprint
    from ops.visit_outcomes
    group by all
),

final as (
    select * from messages
    union all
    select * from outcomes
)

select * from final
