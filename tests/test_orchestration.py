"""Runs side by side, as an operator meets them: two dispatches at once, an analyst reading while a flow
writes. A real Prefect server, real processes, real DuckDB files."""

from __future__ import annotations

import os
import subprocess

import duckdb

from conftest import BIN, crm
from dispatching import T, shop_config
from gateway import Gateway
from planning import local


def _shop_with_orders(db, config, gateway_url, n: int):
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


def test_two_dispatches_started_at_once_send_each_message_once(local_server, tmp_path):
    gw = Gateway(delay=0.02).start()
    try:
        db, config = local_server.parent / "twice.duckdb", tmp_path / "shops.toml"
        _shop_with_orders(db, config, gw.url, 40)
        args = [str(BIN), "--db", str(db), "--config", str(config), "dispatch", "--as-of", T.isoformat()]
        env = {**os.environ, "PREFECT_API_URL": "", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "200"}
        runs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
        outputs = [r.communicate(timeout=240) for r in runs]
        assert [r.returncode for r in runs] == [0, 0], outputs
        assert len(gw.accepted) == 40 and gw.repeats == 0, "no message was sent twice"
        sent = sorted(int(out.split("sent ")[1].split(",")[0]) for out, _ in outputs)
        assert sent == [0, 40], "one run sent everything, the other found nothing left"
        assert any("another dispatch is running" in out + err for out, err in outputs), "the second one said it waited"
        con = duckdb.connect(str(db), read_only=True)
        assert con.execute("SELECT status, count(*) FROM ops.messages GROUP BY 1").fetchall() == [("sent", 40)]
        con.close()
    finally:
        gw.stop()


def test_an_analyst_reading_does_not_block_a_flow(local_server, tmp_path):
    db, config = local_server.parent / "analyst.duckdb", tmp_path / "shops.toml"
    _shop_with_orders(db, config, "http://127.0.0.1:9/send", 3)
    first = crm("--db", str(db), "--config", str(config), "plan", "--as-of", T.isoformat(), env={"PREFECT_API_URL": ""})
    assert first.returncode == 0, first.stderr
    copy = db.with_name("analyst.analytics.duckdb")
    analyst = duckdb.connect(str(copy), read_only=True)          # held open through the next run
    query = "SELECT count(DISTINCT as_of) FROM marts.reminder_decisions"
    assert analyst.execute(query).fetchone()[0] == 1

    later = crm("--db", str(db), "--config", str(config), "plan", "--as-of", local("2026-11-24 11:30").isoformat(),
                env={"PREFECT_API_URL": ""})
    assert later.returncode == 0, later.stderr
    assert analyst.execute(query).fetchone()[0] == 1, "the open connection keeps its consistent copy"
    analyst.close()
    fresh = duckdb.connect(str(copy), read_only=True)
    assert fresh.execute(query).fetchone()[0] == 2, "a new connection sees the latest run"
    assert fresh.execute("SELECT count(*) FROM marts.customer_segments").fetchone()[0] == 3
    fresh.close()


def test_deploy_from_prefect_yaml_and_run_through_the_api(local_server, tmp_path):
    """prefect work-pool create + prefect deploy --all + a process worker, as the README says; then a plan
    run triggered through the API writes the marts."""
    import time
    from pathlib import Path

    import httpx

    repo = Path(__file__).resolve().parent.parent
    db, config = local_server.parent / "deployed.duckdb", tmp_path / "shops.toml"
    _shop_with_orders(db, config, "http://127.0.0.1:9/send", 5)
    api = crm("--db", str(local_server), "server", "status").stdout.split("running at ")[1].split()[0]
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "CRM_HOME": str(repo), "CRM_DB": str(db), "CRM_CONFIG": str(config)}
    prefect = str(BIN.with_name("prefect"))
    subprocess.run([prefect, "work-pool", "create", "crm-process", "--type", "process", "--overwrite"],
                   env=env, cwd=repo, check=True, capture_output=True)
    deployed = subprocess.run([prefect, "--no-prompt", "deploy", "--all"], env=env, cwd=repo, capture_output=True,
                              text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
    worker = subprocess.Popen([prefect, "worker", "start", "--pool", "crm-process"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        with httpx.Client(base_url=api, timeout=30) as client:
            names = {d["name"] for d in client.post("/deployments/filter", json={}).json()}
            assert {"ingest", "dispatch", "plan-daily", "backfill"} <= names
            [deployment] = client.post("/deployments/filter", json={"deployments": {"name": {"any_": ["plan-daily"]}}}).json()
            run = client.post(f"/deployments/{deployment['id']}/create_flow_run",
                              json={"parameters": {"as_of": T.isoformat()}}).json()
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                state = client.get(f"/flow_runs/{run['id']}").json()["state"]["type"]
                if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                    break
                time.sleep(1)
        assert state == "COMPLETED"
    finally:
        os.killpg(worker.pid, 9)
        worker.wait()
    con = duckdb.connect(str(db), read_only=True)
    decisions = con.execute("SELECT decision, count(*) FROM marts.reminder_decisions WHERE as_of = ? GROUP BY 1",
                            [T]).fetchall()
    con.close()
    assert decisions == [("remind", 5)]
