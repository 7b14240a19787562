"""Plan and backfill flows: write the marts for an evaluation time T (docs/rules.md §2-5)."""

from __future__ import annotations

from datetime import datetime

from prefect import flow, get_run_logger, task

from crm import progress
from crm.config import DEFAULT_CONFIG, DEFAULT_DB, load_settings
from crm.db import publish as publish_run
from crm.db import session
from flows.partition import serial
from flows.retry import only_transient
from transforms.plan import MAX_BACKFILL_TIMES, backfill_times, parse_as_of, parse_duration, plan, planned_times, retired_line


def _summary(result) -> dict:
    return {
        "as_of": result.as_of.isoformat(),
        "unpaid_orders": result.unpaid_orders,
        "decisions": result.decisions,
        "visit_tasks": result.visit_tasks,
        "visit_channels": result.visit_channels,
        "segments_written": result.segments_written,
        "retired_shops": result.retired_shops,
        "seconds": round(result.seconds, 3),
    }


@task(retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=only_transient)
def plan_at(as_of: datetime, db: str, config: str, segments: bool = True, backfill_key: str | None = None,
            publish: bool = True, partition: int | None = None) -> dict:
    settings = load_settings(config)
    with serial(partition), session(db, settings, lake=True, partition=partition) as con:
        summary = _summary(plan(con, as_of, segments=segments, backfill_key=backfill_key))
        if publish:
            publish_run(con, db, settings)
        return summary


@flow(name="plan")
def plan_flow(as_of: str | None = None, db: str = DEFAULT_DB, config: str = DEFAULT_CONFIG,
              partition: int | None = None) -> dict:
    """Write marts.reminder_decisions, marts.visit_tasks and marts.customer_segments for T (default: now);
    `partition`: of that partition of a partitioned lake."""
    logger = get_run_logger()
    t = parse_as_of(as_of)
    summary = plan_at(t, db, config, partition=partition)
    logger.info("plan at %s: %d unpaid orders %s; %d visit tasks %s (%.2f s)", summary["as_of"],
                summary["unpaid_orders"], summary["decisions"], summary["visit_tasks"], summary["visit_channels"],
                summary["seconds"])
    if summary["retired_shops"]:
        logger.info("not planned: %s", retired_line(summary["retired_shops"]))
    return summary


@task
def pending_times(start: datetime, end: datetime, every: str, db: str, config: str, key: str, force: bool,
                  max_times: int = MAX_BACKFILL_TIMES, partition: int | None = None) -> list[datetime]:
    times = backfill_times(start, end, parse_duration(every), max_times)
    if force:
        return times
    with session(db, load_settings(config), lake=True, partition=partition) as con:
        done = planned_times(con, key)
    return [t for t in times if t not in done]


@flow(name="backfill")
def backfill_flow(start: str, end: str, every: str = "1h", db: str = DEFAULT_DB, config: str = DEFAULT_CONFIG,
                  force: bool = False, max_times: int = MAX_BACKFILL_TIMES, partition: int | None = None) -> dict:
    """Plan at every T in [start, end], `every` apart. A re-run skips the T this backfill already planned;
    customer_segments is written once, at the last T (if it is the newest planned). More than `max_times`
    T are refused before anything runs (a deployment run's parameters come here unchecked)."""
    logger = get_run_logger()
    t1, t2 = parse_as_of(start), parse_as_of(end)
    total = len(backfill_times(t1, t2, parse_duration(every), max_times))
    key = f"{t1.isoformat()}|{t2.isoformat()}|{every}"
    todo = pending_times(t1, t2, every, db, config, key, force, max_times, partition)
    logger.info("backfill %s: %d of %d times to plan", key, len(todo), total)
    results = []
    for i, t in enumerate(todo):
        last = i == len(todo) - 1
        results.append(plan_at(t, db, config, segments=(t == t2), backfill_key=key, publish=last, partition=partition))
        progress.step(f"{i + 1}/{len(todo)} planned ({t.isoformat()})")
    logger.info("backfill %s: planned %d times, %d skipped as done", key, len(results), total - len(todo))
    return {"key": key, "planned": len(results), "skipped": total - len(todo), "times": results}
