"""Visit outcomes flow: record a call-centre export (docs/rules.md §5)."""

from __future__ import annotations

from datetime import datetime

from prefect import flow, get_run_logger, task

from crm.config import DEFAULT_CONFIG, DEFAULT_DB, load_settings
from crm.storage import partitions
from crm.db import publish, session
from flows.retry import only_transient
from transforms.outcomes import import_file
from transforms.plan import parse_as_of


@task(retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=only_transient)
def record_file(path: str, db: str, config: str, now: datetime) -> dict:
    settings = partitions.scoped(load_settings(config))
    with session(db, settings, lake=True) as con:
        result = import_file(con, settings, path, now)
        if result.saved:
            publish(con, db, settings)
    return {"saved": result.saved, "errors": result.errors}


@flow(name="visits-import")
def visits_import_flow(path: str, db: str = DEFAULT_DB, config: str = DEFAULT_CONFIG, as_of: str | None = None) -> dict:
    """`as_of` is the import's now (ISO 8601 with an offset); None: the real time, read once for the whole file."""
    now = parse_as_of(as_of)
    summary = record_file(path, db, config, now)
    get_run_logger().info("visit outcomes from %s at %s: %d saved, %d refused", path, now.isoformat(), summary["saved"],
                          len(summary["errors"]))
    return summary
