"""The lake's daily upkeep (crm/storage/maintenance.py): flush, merge, expire, clean up. On the DuckDB file it has
nothing to do and says so."""

from __future__ import annotations

from datetime import datetime, timedelta

from prefect import flow, get_run_logger, task

from crm.config import DEFAULT_CONFIG, DEFAULT_DB, load_settings
from crm.db import session
from flows.partition import serial
from flows.retry import only_transient
from transforms.plan import parse_as_of


@task(retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=only_transient)
def upkeep(db: str, config: str, keep_days: int, now: datetime, partition: int | None = None) -> dict:
    from crm.storage.maintenance import maintain

    settings = load_settings(config)
    if settings.storage.kind != "ducklake":
        return {"kind": settings.storage.kind}
    with serial(partition), session(db, settings, lake=True, partition=partition) as con:
        up = maintain(con, now, timedelta(days=keep_days))
    return {"kind": "ducklake", "files_before": up.files_before, "files_after": up.files_after,
            "snapshots_before": up.snapshots_before, "snapshots_after": up.snapshots_after,
            "steps": {k: {"rows": n, "seconds": round(s, 3)} for k, (n, s) in up.steps.items()}}


@flow(name="lake-maintenance")
def maintenance_flow(db: str = DEFAULT_DB, config: str = DEFAULT_CONFIG, keep_days: int = 7,
                     now: str | None = None, partition: int | None = None) -> dict:
    """Flush the lake's inlined rows, merge its small files, expire snapshots older than `keep_days` and delete the
    files none needs (`now`: ISO 8601, default the present)."""
    logger = get_run_logger()
    summary = upkeep(db, config, keep_days, parse_as_of(now), partition)
    if summary["kind"] != "ducklake":
        logger.info('[storage] kind = "%s": the lake\'s upkeep has nothing to do here', summary["kind"])
    else:
        logger.info("lake upkeep: %d -> %d data files, %d -> %d snapshots", summary["files_before"],
                    summary["files_after"], summary["snapshots_before"], summary["snapshots_after"])
    return summary
