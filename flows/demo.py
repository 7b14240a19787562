"""Demo flow: the whole pipeline on freshly generated demo data, in one process (one Prefect start-up)."""

from __future__ import annotations

from prefect import flow

from crm.config import DEFAULT_CONFIG, DEFAULT_DB
from flows.ingest import ingest_flow
from flows.plan import plan_flow


@flow(name="demo")
def demo_flow(landing_dir: str, as_of: str, db: str = DEFAULT_DB, config: str = DEFAULT_CONFIG) -> dict:
    ingested = ingest_flow(landing_dir, db, config)
    planned = plan_flow(as_of, db, config)
    return {"ingest": ingested, "plan": planned}
