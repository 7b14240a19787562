"""Schedules on a real Prefect server: `prefect deploy --all` of the real prefect.yaml, then the server's
scheduler creates the scheduled flow runs and a process worker finishes one of them.

Loading the definitions (test_definitions.py) cannot see a server that fails to schedule: with SQLAlchemy
2.1 the Prefect 3.8.8 scheduler raised on every loop (`Can't evaluate bulk DML statement`) and created no run.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import duckdb
import httpx
import yaml
from cronsim import CronSim

from conftest import prefect_server
from deploying import REPO, api_url, call, deploy_env, deployed, deployments, shop_with_orders, wait_until_final, worker

DEPLOYMENTS = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
SCHEDULED = {name for name, d in DEPLOYMENTS.items() if d.get("schedules")}


def _scheduled_runs(client: httpx.Client) -> list[dict]:
    return call(client, "POST", "/flow_runs/filter",
                json={"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}, "limit": 200}).json()


def _on_schedule(when: datetime, cron: str, zone: str) -> bool:
    """Whether `when` is one of the cron's times in that zone (cronsim, not Prefect, does the counting)."""
    local = when.astimezone(ZoneInfo(zone))
    return next(CronSim(cron, local - timedelta(seconds=1))) == local


def test_the_scheduler_creates_runs_and_a_worker_finishes_a_scheduled_one(tmp_path):
    # the main scheduler loop every second (Prefect's default is 60 s; a deployment just created is also
    # picked up by its 5 s "recent deployments" loop)
    (tmp_path / "server").mkdir()
    with prefect_server(tmp_path / "server", PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1") as server_db:
        db, config = tmp_path / "scheduled.duckdb", tmp_path / "shops.toml"
        shop_with_orders(db, config, "http://127.0.0.1:9/send", 3)
        api = api_url(server_db)
        env = deploy_env(api, db, config)
        deployed_at = datetime.now(timezone.utc)
        with deployed(env), httpx.Client(base_url=api, timeout=30) as client:
            found = deployments(client)
            assert set(DEPLOYMENTS) <= set(found)
            every = {s["id"]: (name, s) for name in SCHEDULED for s in found[name]["schedules"]}
            assert len(every) == sum(len(DEPLOYMENTS[n]["schedules"]) for n in SCHEDULED)
            # the group flows' schedules are off until a group turns them on: no runs for them
            off = {i for i, (_, s) in every.items() if not s["active"]}
            assert {every[i][0] for i in off} == {n for n, d in DEPLOYMENTS.items()
                                                  if any(e.get("active") is False for e in d.get("schedules", []))}
            assert {every[i][0] for i in off} == {"group-ingest", "group-dispatch", "group-maintenance"}
            schedules = {i: v for i, v in every.items() if i not in off}

            # (a) the scheduler gives every schedule of prefect.yaml its upcoming runs
            start, deadline = time.monotonic(), time.monotonic() + 45
            while time.monotonic() < deadline:
                runs = _scheduled_runs(client)
                if {r["created_by"]["id"] for r in runs if r["created_by"]} >= set(schedules):
                    break
                time.sleep(0.5)
            waited = time.monotonic() - start
            log = (server_db.parent / "prefect" / "server.log").read_text(errors="replace")
            made = {r["created_by"]["id"] for r in runs if r["created_by"]}
            assert made >= set(schedules), (f"after {waited:.0f} s the scheduler made runs for {len(made)} of "
                                            f"{len(schedules)} schedules; server log:\n{log[-3000:]}")
            latest = max(datetime.fromisoformat(r["created"]) for r in runs)
            print(f"{len(runs)} scheduled runs, the last made {(latest - deployed_at).total_seconds():.1f} s after "
                  f"`prefect deploy` started")
            for run in runs:
                name, schedule = schedules[run["created_by"]["id"]]
                assert run["created_by"]["type"] == "SCHEDULE" and "auto-scheduled" in run["tags"]
                assert run["deployment_id"] == found[name]["id"]
                [entry] = [e for e in DEPLOYMENTS[name]["schedules"]
                           if (e["cron"], e["timezone"]) == (schedule["schedule"]["cron"], schedule["schedule"]["timezone"])]
                when = datetime.fromisoformat(run["expected_start_time"])
                assert when > deployed_at and _on_schedule(when, entry["cron"], entry["timezone"]), (name, when)
                assert run["parameters"] == {**found[name]["parameters"], **entry.get("parameters", {})}
            assert not [r for r in runs if r["deployment_id"] == found["backfill"]["id"]], "backfill starts by hand"

            # (b) a worker runs a scheduled run to completion. The earliest plan-daily run may be hours away
            # (00:05 in each shop's zone), so the test moves that run, made by the scheduler with the
            # deployment's and the schedule's parameters, to now: a forced Scheduled state whose
            # scheduled_time is now, through the API. Nothing else about the run changes. The other scheduled
            # deployments are paused first (which deletes their scheduled runs), so that an ingest or dispatch
            # due at :00/:15/:30/:45 cannot reach the worker and the test does not depend on when it runs.
            assert not [r for r in runs if r["created_by"] and r["created_by"]["id"] in off], "no run of a schedule that is off"
            for name in SCHEDULED - {"plan-daily"}:
                call(client, "POST", f"/deployments/{found[name]['id']}/pause_deployment")
            plans = sorted((r for r in _scheduled_runs(client) if r["deployment_id"] == found["plan-daily"]["id"]),
                           key=lambda r: r["expected_start_time"])
            chosen = plans[0]
            moved_at = datetime.now(timezone.utc)
            moved = call(client, "POST", f"/flow_runs/{chosen['id']}/set_state", json={"force": True, "state": {
                "type": "SCHEDULED", "name": "Scheduled", "state_details": {"scheduled_time": moved_at.isoformat()}}})
            assert moved.json()["status"] == "ACCEPT", moved.text
            with worker(env, tmp_path, PREFECT_WORKER_QUERY_SECONDS="1"):
                final = wait_until_final(client, chosen["id"], timeout=120)
            finished_at = datetime.now(timezone.utc)
            print(f"the worker finished it {(finished_at - moved_at).total_seconds():.1f} s after it was moved to now")
            assert final == "COMPLETED", f"the scheduled run ended {final}"
            others = {r["state"]["type"] for r in call(client, "POST", "/flow_runs/filter", json={}).json()
                      if r["id"] != chosen["id"] and r["state"]["type"] not in ("SCHEDULED",)}
            assert not others, "the worker ran only the scheduled run it was given"

    con = duckdb.connect(str(db), read_only=True)
    planned = con.execute("SELECT as_of, backfill_key FROM ops.plan_runs").fetchall()
    con.close()
    [(as_of, backfill_key)] = planned
    assert backfill_key is None and moved_at <= as_of <= finished_at, "it planned once, at the time it ran"
