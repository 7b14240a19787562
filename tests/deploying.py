"""prefect.yaml on a real Prefect server as the README runs it: a process work pool, `prefect deploy --all`
from this checkout, a process worker. Shared by the orchestration and schedule tests."""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from conftest import BIN, crm
from crm.groupdemo import call  # the Prefect API retried on 503 and timeouts; the tests use it from here
from dispatching import shop_config
from planning import local

REPO = Path(__file__).resolve().parent.parent
PREFECT = str(BIN.with_name("prefect"))
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def shop_with_orders(db: Path, config: Path, gateway_url: str, n: int) -> None:
    """One shop (new customers by SMS) and `n` customers, each with an order placed 2026-11-24 10:00 local."""
    from crm.config import load_settings
    from crm.db import connect, sync_shops
    from planning import stage

    shop_config(config, gateway_url, 1)
    config.write_text(config.read_text().replace("[shops.visits]", 'channels = { new = "sms" }\n[shops.visits]'))
    con = connect(db)
    sync_shops(con, load_settings(config))
    stage(con, "customers", *[{"customer_id": f"c{i}", "phone": f"1390000{i:04d}"} for i in range(n)])
    stage(con, "orders", *[{"order_id": f"o{i:04d}", "customer_id": f"c{i}", "created_at": local("2026-11-24 10:00")}
                           for i in range(n)])
    con.close()


def api_url(server_db: Path) -> str:
    """The API of the server `crm server start` keeps beside `server_db`, as `crm server status` tells it."""
    status = crm("--db", str(server_db), "server", "status", env={"PREFECT_API_URL": ""}).stdout
    assert "running at " in status, status
    return status.split("running at ")[1].split()[0]


def deploy_env(api: str, db: Path, config: Path) -> dict:
    """The environment of the README's deploy steps: the deployments' parameters come from CRM_*."""
    return {**os.environ, "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
            "CRM_HOME": str(REPO), "CRM_DB": str(db), "CRM_CONFIG": str(config)}


@contextmanager
def deployed(env: dict):
    """`prefect work-pool create crm-process --type process` (and crm-parent) and `prefect deploy --all` of this checkout. On
    exit the deployments are deleted, and with them their scheduled runs: on a server other tests share, the
    scheduler would otherwise keep filling it with future runs (which sort first by start time)."""
    for pool in ("crm-process", "crm-parent"):                 # crm-parent: the group flows' pool
        subprocess.run([PREFECT, "work-pool", "create", pool, "--type", "process", "--overwrite"],
                       env=env, cwd=REPO, check=True, capture_output=True)
    result = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all"], env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    try:
        yield
    finally:
        with httpx.Client(base_url=env["PREFECT_API_URL"], timeout=60) as client:
            for deployment in deployments(client).values():
                call(client, "DELETE", f"/deployments/{deployment['id']}")


@contextmanager
def worker(env: dict, cwd: Path, pool: str = "crm-process", **settings: str):
    """`prefect worker start --pool crm-process` (or `pool`) in its own process group, killed on exit."""
    proc = subprocess.Popen([PREFECT, "worker", "start", "--pool", pool], env={**env, **settings}, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def deployments(client: httpx.Client) -> dict[str, dict]:
    return {d["name"]: d for d in call(client, "POST", "/deployments/filter", json={}).json()}


def wait_until_final(client: httpx.Client, run_id: str, timeout: float = 240) -> str:
    """The flow run's state type once it is final (or the last one seen when `timeout` runs out). Each read is
    `call`ed: a server busy under the workers' load may answer one read late, and that is not the run's state."""
    deadline = time.monotonic() + timeout
    while True:
        state = call(client, "GET", f"/flow_runs/{run_id}").json()["state"]["type"]
        if state in FINAL or time.monotonic() > deadline:
            return state
        time.sleep(0.5)
