"""Demo flow: the whole pipeline on freshly generated demo data, in one process (one Prefect start-up).
The dispatch is a dry run (the demo has no gateway or SMTP server to send to), then a real one for the
call channel only: it sends nothing, and queues the agents' calls for the page (`crm serve`)."""

from __future__ import annotations

from prefect import flow

from crm.config import DEFAULT_CONFIG, DEFAULT_DB
from flows.dispatch import dispatch_flow
from flows.ingest import ingest_flow
from flows.plan import plan_flow


@flow(name="demo")
def demo_flow(landing_dir: str, as_of: str, db: str = DEFAULT_DB, config: str = DEFAULT_CONFIG) -> dict:
    ingested = ingest_flow(landing_dir, db, config)
    planned = plan_flow(as_of, db, config)
    previewed = dispatch_flow(as_of, db, config, dry_run=True)
    calls = dispatch_flow(as_of, db, config, channels=["call"])
    return {"ingest": ingested, "plan": planned, "dispatch": previewed, "calls": calls}
