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
