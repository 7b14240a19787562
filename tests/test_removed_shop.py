"""A shops file that lacks a shop the database holds (issue 11.4): plan and dispatch, dry or not, refuse in
one line, and write nothing; listed in `retired_shops`, the shop is left out of planning and each plan says
so. Found in the README's own order: the demo (3 shops), then `cp shops.example.toml shops.toml` (2 shops)."""

from __future__ import annotations

from datetime import timedelta

import duckdb
import pytest

from conftest import crm
from crm.config import parse_settings
from crm.db import connect, sync_shops
from dispatching import T
from gateway import Gateway
from planning import message, stage
from transforms.dispatch import dispatch
from transforms.plan import PlanError, plan

THREE = {"shops": [{"shop_id": "s1"}, {"shop_id": "s2", "timezone": "America/New_York"},
                   {"shop_id": "s3", "timezone": "Europe/Berlin"}]}


def _three_shops(con) -> None:
    sync_shops(con, parse_settings(THREE))
    for shop in ("s1", "s2", "s3"):
        stage(con, "customers", {"customer_id": f"c-{shop}", "shop_id": shop, "phone": "13800000001"})
        for i in range(3):
            stage(con, "orders", {"order_id": f"{shop}-u{i}", "shop_id": shop, "customer_id": f"c-{shop}",
                                  "created_at": T - timedelta(minutes=30 + i)})


def _two_shops(**extra) -> object:
    return parse_settings({"shops": THREE["shops"][:2], **extra})


def test_a_plan_without_the_shop_refuses_in_one_line_and_writes_nothing(db_path):
    # catches: ConstraintException (NOT NULL feedback_summary.period_start) and 3 shops' orders silently dropped
    con = connect(db_path)
    try:
        _three_shops(con)
        plan(con, T)
        before = con.execute("SELECT count(*) FROM marts.reminder_decisions").fetchone()[0]
        sync_shops(con, _two_shops())
        with pytest.raises(PlanError) as info:
            plan(con, T + timedelta(hours=1))
        line = str(info.value)
        assert "\n" not in line and "'s3' (3 orders)" in line and 'retired_shops = ["s3"]' in line, line
        assert con.execute("SELECT count(*) FROM marts.reminder_decisions").fetchone()[0] == before
        assert con.execute("SELECT count(*) FROM ops.plan_runs").fetchone()[0] == 1, "nothing was planned"
        # a dry-run dispatch fails exactly where the real one does
        for dry in (True, False):
            with pytest.raises(PlanError, match="'s3' \\(3 orders\\)"):
                dispatch(con, _two_shops(), T + timedelta(hours=1), dry_run=dry, send=False)
    finally:
        con.close()


def test_a_retired_shop_is_left_out_and_said_so(db_path):
    con = connect(db_path)
    try:
        _three_shops(con)
        settings = _two_shops(retired_shops=["s3"])
        sync_shops(con, settings)
        r = plan(con, T)
        assert r.retired_shops == {"s3": 3}
        shops = dict(con.execute("SELECT shop_id, count(*) FROM marts.reminder_decisions GROUP BY 1").fetchall())
        assert shops == {"s1": 3, "s2": 3}, "the retired shop's orders are not planned, the others all are"
        # the §8 marts are rebuilt at the newest T without a NULL date for the shop no zone is known for
        assert con.execute("SELECT count(*) FROM marts.feedback_summary WHERE period_start IS NULL").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM marts.reminder_effect_segments WHERE shop_id = 's3'").fetchone()[0] == 0
    finally:
        con.close()


def test_a_retired_shops_queued_messages_fail_unsent(db_path):
    gw = Gateway().start()
    con = connect(db_path)
    try:
        _three_shops(con)
        message(con, "payment_reminder:s3-u0", "payment_reminder", "s3-u0", T, shop_id="s3", customer_id="c-s3",
                status="queued")
        con.execute("UPDATE ops.messages SET recipient = '13800000001', body = 'hi'")
        settings = parse_settings({"shops": THREE["shops"][:2], "retired_shops": ["s3"],
                                   "gateway": {"webhook_url": gw.url}})
        sync_shops(con, settings)
        r = dispatch(con, settings, T)
        assert "payment_reminder:s3-u0" not in gw.accepted, "never sent"
        status, error = con.execute("SELECT status, last_error FROM ops.messages "
                                    "WHERE message_id = 'payment_reminder:s3-u0'").fetchone()
        assert status == "failed" and error.startswith("retired_shop"), error
        assert r.withdrawn == 1
    finally:
        con.close()
        gw.stop()


def test_the_readme_order_demo_then_the_example_config(local_server, tmp_path):
    # the README's order: a three-shop database, then a shops file with two of them
    db, config = local_server.parent / "readme-order.duckdb", tmp_path / "shops.toml"
    con = connect(db)
    _three_shops(con)
    con.close()
    config.write_text('[[shops]]\nshop_id = "s1"\n\n[[shops]]\nshop_id = "s2"\ntimezone = "America/New_York"\n')
    outputs = []
    for args in (["plan"], ["dispatch", "--dry-run"], ["dispatch"]):
        r = crm("--db", str(db), "--config", str(config), *args, "--as-of", T.isoformat(), env={"PREFECT_API_URL": ""})
        outputs.append(r)
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert r.returncode == 2 and len(errors) == 1 and "'s3' (3 orders)" in errors[0], r.stderr[-3000:]
        assert "put its [[shops]] block back" in errors[0], "printed as text, not read as markup"
        assert "Traceback" not in r.stderr, r.stderr[-3000:]
    ro = duckdb.connect(str(db), read_only=True)
    assert ro.execute("SELECT count(*) FROM ops.plan_runs").fetchone()[0] == 0
    ro.close()

    config.write_text('retired_shops = ["s3"]\n' + config.read_text())      # top-level keys come first in TOML
    r = crm("--db", str(db), "--config", str(config), "plan", "--as-of", T.isoformat(), env={"PREFECT_API_URL": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "not planned: retired shop 's3' (3 orders)" in r.stdout, r.stdout
    assert "6 unpaid orders" in r.stdout.replace(",", ""), r.stdout
