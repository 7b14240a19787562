"""Runs side by side, as an operator meets them: two dispatches at once, an analyst reading while a flow
writes. A real Prefect server, real processes, real DuckDB files."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid

import duckdb

from conftest import BIN, crm
from deploying import api_url, call, deploy_env, deployed, deployments, shop_with_orders, wait_until_final, worker
from dispatching import T
from gateway import Gateway
from planning import local


def test_two_dispatches_started_at_once_send_each_message_once(local_server, tmp_path):
    gw = Gateway().start()
    gw.hold()            # whichever run gets the lock is held mid-send until the other has said it waits
    try:
        db, config = local_server.parent / "twice.duckdb", tmp_path / "shops.toml"
        shop_with_orders(db, config, gw.url, 40)
        config.write_text(config.read_text().replace("timeout_seconds = 2", "timeout_seconds = 200"))
        args = [str(BIN), "--db", str(db), "--config", str(config), "dispatch", "--as-of", T.isoformat()]
        env = {**os.environ, "PREFECT_API_URL": "", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "200"}
        runs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
        lines = {(i, name): [] for i in range(2) for name in ("out", "err")}       # read as the runs print
        readers = [threading.Thread(target=lambda stream=getattr(runs[i], f"std{name}"), into=into: into.extend(stream),
                                    daemon=True) for (i, name), into in lines.items()]
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + 150
        while not any("another dispatch is running" in line for out in lines.values() for line in out):
            assert time.monotonic() < deadline and all(r.poll() is None for r in runs), lines
            time.sleep(0.1)
        assert not gw.accepted, "nothing was answered while the gateway held the first request"
        gw.release()
        for r in runs:
            r.wait(timeout=240)
        for reader in readers:
            reader.join(timeout=10)
        outputs = ["".join(lines[i, "out"]) for i in range(2)]
        assert [r.returncode for r in runs] == [0, 0], lines
        assert len(gw.accepted) == 40 and gw.repeats == 0, "no message was sent twice"
        sent = sorted(int(out.split("sent ")[1].split(",")[0]) for out in outputs)
        assert sent == [0, 40], "the one that waited found nothing left to send"
        con = duckdb.connect(str(db), read_only=True)
        assert con.execute("SELECT status, count(*) FROM ops.messages GROUP BY 1").fetchall() == [("sent", 40)]
        con.close()
    finally:
        gw.stop()


def test_an_analyst_reading_does_not_block_a_flow(local_server, tmp_path):
    db, config = local_server.parent / "analyst.duckdb", tmp_path / "shops.toml"
    shop_with_orders(db, config, "http://127.0.0.1:9/send", 3)
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
    # the replaced copy is freed by a process of its own (not by the command): gone soon, never left behind
    deadline = time.monotonic() + 30
    while list(copy.parent.glob(copy.name + ".old-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list(copy.parent.glob(copy.name + ".old-*"))


def test_the_analysts_copy_is_the_checkpointed_file_byte_for_byte_and_an_open_copy_stays_as_it_was(tmp_path):
    from crm.db import publish_snapshot

    db = tmp_path / "shop.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE t AS SELECT range AS i, repeat('x', 200) || range AS s FROM range(300000)")
    first = publish_snapshot(con, db)
    assert first.read_bytes() == db.read_bytes()
    analyst = duckdb.connect(str(first), read_only=True)
    con.execute("INSERT INTO t SELECT range, 'later' FROM range(1000)")
    second = publish_snapshot(con, db)
    assert second == first and second.read_bytes() == db.read_bytes(), "the new copy is the file as checkpointed"
    assert analyst.execute("SELECT count(*) FROM t").fetchone()[0] == 300000, "the open copy is undisturbed"
    analyst.close()
    fresh = duckdb.connect(str(second), read_only=True)
    assert fresh.execute("SELECT count(*), count(*) FILTER (s = 'later') FROM t").fetchone() == (301000, 1000)
    fresh.close()
    con.close()
    assert not list(tmp_path.glob("*.tmp"))


def test_deploy_from_prefect_yaml_and_run_through_the_api(local_server, tmp_path):
    """prefect work-pool create + prefect deploy --all + a process worker, as the README says; then a plan
    run triggered through the API writes the marts."""
    import httpx

    db, config = local_server.parent / "deployed.duckdb", tmp_path / "shops.toml"
    shop_with_orders(db, config, "http://127.0.0.1:9/send", 5)
    api = api_url(local_server)
    env = deploy_env(api, db, config)
    with deployed(env), worker(env, tmp_path), httpx.Client(base_url=api, timeout=30) as client:
        found = deployments(client)
        assert {"ingest", "dispatch", "plan-daily", "backfill"} <= set(found)
        run = call(client, "POST", f"/deployments/{found['plan-daily']['id']}/create_flow_run",
                   json={"parameters": {"as_of": T.isoformat()}, "idempotency_key": f"plan-daily-{uuid.uuid4()}"}).json()
        assert wait_until_final(client, run["id"]) == "COMPLETED"
    con = duckdb.connect(str(db), read_only=True)
    decisions = con.execute("SELECT decision, count(*) FROM marts.reminder_decisions WHERE as_of = ? GROUP BY 1",
                            [T]).fetchall()
    con.close()
    assert decisions == [("remind", 5)]
