-- _feedback_counts: the end of marts/feedback_summary.sql and of its incremental twin feedback_periods.sql
-- (docs/rules.md §8), written once: both include it after their planned, outcome_periods, reached and
-- sent_periods CTEs, so the whole rebuild and the refresh of some periods count exactly alike.
-- one row of counts per source and period; summed below (a period may have plans, outcomes or sends only)
counts as (
    select
        shop_id, period, period_start,
        count(*)                                                       as visits_planned,
        count(*) filter (where channel = 'call')                       as calls_planned,
        count(*) filter (where channel = 'sms')                        as sms_planned,
        count(*) filter (where channel = 'email')                      as email_planned,
        count(*) filter (where channel = 'none')                       as no_channel_planned
    from planned group by all
    union all by name
    select shop_id, period, period_start, count(distinct order_id) as calls_attempted
    from outcome_periods group by all
    union all by name
    select
        shop_id, period, period_start,
        count(*)                                                       as reached,
        count(*) filter (where quality = 'issue')                      as quality_issues,
        count(*) filter (where logistics = 'issue')                    as logistics_issues,
        count(*) filter (where packaging = 'issue')                    as packaging_issues,
        count(*) filter (where service = 'issue')                      as service_issues,
        count(*) filter (where gift)                                   as gifts,
        count(*) filter (where coalesce(compensation, 'none') <> 'none') as compensations,
        count(*) filter (where nullif(trim(suggestion), '') is not null) as suggestions
    from reached group by all
    union all by name
    select
        shop_id, period, period_start,
        count(distinct order_id) filter (where channel = 'sms')       as sms_sent,
        count(distinct order_id) filter (where channel = 'email')     as email_sent
    from sent_periods group by all
),

final as (
    select
        $as_of::TIMESTAMPTZ                                           as as_of,
        shop_id, period, period_start,
        -- visits planned, by channel
        coalesce(sum(visits_planned), 0)::BIGINT                      as visits_planned,
        coalesce(sum(calls_planned), 0)::BIGINT                       as calls_planned,
        coalesce(sum(sms_planned), 0)::BIGINT                         as sms_planned,
        coalesce(sum(email_planned), 0)::BIGINT                       as email_planned,
        coalesce(sum(no_channel_planned), 0)::BIGINT                  as no_channel_planned,
        -- made: calls an agent recorded, automatic messages sent
        coalesce(sum(calls_attempted), 0)::BIGINT                     as calls_attempted,
        coalesce(sum(reached), 0)::BIGINT                             as reached,
        coalesce(sum(sms_sent), 0)::BIGINT                            as sms_sent,
        coalesce(sum(email_sent), 0)::BIGINT                          as email_sent,
        -- what the reached customers said
        coalesce(sum(quality_issues), 0)::BIGINT                      as quality_issues,
        coalesce(sum(logistics_issues), 0)::BIGINT                    as logistics_issues,
        coalesce(sum(packaging_issues), 0)::BIGINT                    as packaging_issues,
        coalesce(sum(service_issues), 0)::BIGINT                      as service_issues,
        coalesce(sum(gifts), 0)::BIGINT                               as gifts,
        coalesce(sum(compensations), 0)::BIGINT                       as compensations,
        coalesce(sum(suggestions), 0)::BIGINT                         as suggestions
    from counts
    group by shop_id, period, period_start
)

select * from final
