"""Ingest flow: load a landing folder's new drop files into DuckDB (docs/rules.md §1)."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, get_run_logger, task

from crm import progress
from crm.config import DEFAULT_CONFIG, DEFAULT_DB, load_settings
from crm.db import DatabaseLocked, session
from crm.db import publish as publish_run
from flows.partition import serial
from flows.retry import only_transient
from transforms.ingest import load
from transforms.validate import describe, validate_ingest


@task(retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=only_transient)
def load_landing(landing_dir: str, db: str, config: str, partition: int | None = None) -> dict:
    settings = load_settings(config)
    with serial(partition), session(db, settings, lake=True, partition=partition) as con:
        result = load(con, landing_dir, validate=validate_ingest, step=progress.step)
        if result.ingest_id is not None:
            publish_run(con, db, settings)
    return {
        "ingest_id": result.ingest_id,
        "files_seen": result.files_seen,
        "files_new": result.files_new,
        "rows_loaded": result.rows_loaded,
        "rows_quarantined": result.rows_quarantined,
        "entities": {k: asdict(v) for k, v in result.entities.items()},
        "files_quarantined": result.files_quarantined,
        "ignored": result.ignored,
        "warnings": [describe(v) for v in result.validation if not v["success"]],
    }


@flow(name="ingest", log_prints=False)
def ingest_flow(landing_dir: str, db: str = DEFAULT_DB, config: str = DEFAULT_CONFIG,
                partition: int | None = None) -> dict:
    """Load the landing folder's new files (`partition`: of that partition of a partitioned lake)."""
    logger = get_run_logger()
    summary = load_landing(landing_dir, db, config, partition)
    logger.info("ingest %s: %d of %d files new, %d rows loaded, %d quarantined",
                summary["ingest_id"], summary["files_new"], summary["files_seen"],
                summary["rows_loaded"], summary["rows_quarantined"])
    for warning in summary["warnings"]:
        logger.warning("orphans reported: %s", warning)
    return summary


__all__ = ["ingest_flow", "DatabaseLocked"]
