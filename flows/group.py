"""The group flow: one step of a shop group's pipeline on a partitioned lake ([storage] partitions = P, docs/rules.md
§10), fanned out as one run per partition of that step's `*-partition` deployment (prefect.yaml), which the work
pool's workers take up side by side; the group run waits for them all and fails if any did.

Before it fans out it makes sure each partition's concurrency limit exists (`crm-partition-<k>`, limit 1:
flows/partition.py), so that a partition is written by one run at a time even when a schedule, a person and a retry
start runs at once. The group flow is deployed in a pool of its own (`crm-parent`): in its children's pool, under a
pool limit of 1, it would hold the only slot while waiting for children that can never start."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, task
from prefect.deployments import run_deployment
from prefect.runtime import flow_run

from crm.config import DEFAULT_CONFIG, DEFAULT_DB, load_settings
from flows.partition import limit_name

STEPS = {          # step -> (the deployment each partition runs, parameters of the step besides db/config/partition)
    "ingest": "ingest/ingest-partition",
    "plan": "plan/plan-partition",
    "dispatch": "dispatch/dispatch-partition",
    "maintenance": "lake-maintenance/maintenance-partition",
}


@task
def ensure_limits(partitions: int) -> None:
    """crm-partition-0 … P-1 with one slot each, made when missing."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        for k in range(partitions):
            try:
                client.read_global_concurrency_limit_by_name(limit_name(k))
            except ObjectNotFound:
                try:
                    client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit_name(k), limit=1))
                except ObjectAlreadyExists:
                    pass                                     # another group run made it meanwhile


def _wait(ids: dict, wait_seconds: float) -> dict[int, str]:
    """Each run's final state type (COMPLETED, FAILED, …), polled; a run still going at the deadline: its state."""
    from prefect.client.orchestration import get_client

    deadline, states = time.monotonic() + wait_seconds, {}
    with get_client(sync_client=True) as client:
        while True:
            for k, run_id in ids.items():
                if states.get(k) not in FINAL:
                    state = client.read_flow_run(run_id).state
                    states[k] = state.type.value if state else "UNKNOWN"
            if all(s in FINAL for s in states.values()) or time.monotonic() > deadline:
                return states
            time.sleep(2)


FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def child_key(step: str, partition: int) -> str:
    """The idempotency key of this group run's (and attempt's) run of `step` for `partition`. Prefect's client sends a
    request again after a read timeout, which a loaded server can give after it has made the run: with the key the
    server answers the second request with that run, where it would otherwise start a second run of the
    partition (seen once under load: two ingest-p0 runs of one group-ingest)."""
    return f"{flow_run.id}:{flow_run.run_count}:{step}:p{partition}"


@flow(name="group")
def group_flow(step: str = "dispatch", db: str = DEFAULT_DB, config: str = DEFAULT_CONFIG, as_of: str | None = None,
               landing_root: str | None = None, wait_seconds: int = 3600) -> dict:
    """Run `step` (ingest, plan, dispatch or maintenance) once per partition, side by side, and wait for them all.
    `landing_root`: for ingest, the folder with one landing folder per partition (p0/, p1/, …). `as_of`: T for
    plan and dispatch (default: each run's now)."""
    logger = get_run_logger()
    if step not in STEPS:
        raise ValueError(f"step {step!r}: one of {', '.join(STEPS)}")
    storage = load_settings(config).storage
    if storage.kind != "ducklake":
        logger.info('[storage] kind = "%s": no partitions to fan out over (the group flow is for kind = "ducklake")',
                    storage.kind)
        return {"step": step, "partitions": 0, "runs": {}}
    ensure_limits(storage.partitions)
    runs = {}
    for k in range(storage.partitions):
        parameters = {"db": db, "config": config, "partition": k}
        if step == "ingest":
            if not landing_root:
                raise ValueError("step ingest: landing_root names the folder of the partitions' landing folders")
            parameters["landing_dir"] = f"{landing_root.rstrip('/')}/p{k}"
        if step in ("plan", "dispatch") and as_of:
            parameters["as_of"] = as_of
        runs[k] = run_deployment(STEPS[step], parameters=parameters, timeout=0,
                                 flow_run_name=f"{step}-p{k}", idempotency_key=child_key(step, k))
    logger.info("group %s: %d partition runs started", step, len(runs))
    states = _wait({k: r.id for k, r in runs.items()}, wait_seconds)
    failed = {k: s for k, s in states.items() if s != "COMPLETED"}
    logger.info("group %s: %s", step, ", ".join(f"p{k} {s.lower()}" for k, s in states.items()))
    if failed:
        raise RuntimeError(f"group {step}: partitions {', '.join(f'p{k} {s.lower()}' for k, s in failed.items())}")
    return {"step": step, "partitions": len(runs), "runs": {k: str(r.id) for k, r in runs.items()}}
