"""A gateway outage loses nothing (issue 11.3): a message whose every attempt fails transiently stays queued
while it is still worth sending; after `gateway.down_after` such messages in a row the run stops sending,
leaves the rest queued and fails with one line; the next run sends them. A message past its deadline fails
unsent. Real gateways (an HTTP server on 127.0.0.1, or a port where nothing listens), real DuckDB files."""

from __future__ import annotations

import json
from datetime import timedelta

import duckdb
import httpx
import pytest

from conftest import crm, rows
from crm.config import load_settings
from crm.db import connect, sync_shops
from dispatching import T, shop_config, sms_crowd
from gateway import Gateway, closed_port_url
from planning import local, stage
from transforms.dispatch import dispatch_db

N = 40


def statuses(db) -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return dict(con.execute("SELECT status, count(*) FROM ops.messages GROUP BY 1").fetchall())
    finally:
        con.close()




@pytest.fixture
def crowd(tmp_path):
    gw = Gateway().start()
    db, config = tmp_path / "crm.duckdb", tmp_path / "shops.toml"
    sms_crowd(db, config, gw.url, N)
    config.write_text(config.read_text().replace("concurrency = 4", "concurrency = 4\ndown_after = 6"))
    yield db, config, gw
    gw.stop()


def test_an_outage_keeps_every_message_queued_and_the_next_run_sends_them_once(crowd):
    # catches: 817 messages marked failed for good in an outage, the run exiting 0, the next run sending none
    db, config, gw = crowd
    settings = load_settings(config)
    gw.down = True
    r = dispatch_db(db, settings, T)
    assert r.created == {"payment_reminder/sms": N}
    assert (r.sent, r.failed) == (0, 0), "a transient failure fails nothing for good"
    assert r.kept + r.skipped == N and r.kept >= 6, (r.kept, r.skipped)
    assert r.skipped > 0, "the run stopped sending once the gateway looked down"
    assert r.problem and "looks down" in r.problem and f"{N} messages stay queued" in r.problem, r.problem
    assert len(gw.requests) <= (6 + 4) * 4, "no more than down_after + those in flight, 4 attempts each"
    assert statuses(db) == {"queued": N}
    tried = rows(db, "SELECT attempts, last_error FROM ops.messages WHERE attempts > 0")
    assert len(tried) == r.kept and all(a == 4 and "HTTP 503" in e and "stays queued" in e for a, e in tried)

    gw.down = False
    again = dispatch_db(db, settings, T + timedelta(minutes=10))
    assert again.created == {}, "the plan creates nothing new: the messages exist"
    assert (again.sent, again.failed, again.kept, again.skipped, again.problem) == (N, 0, 0, 0, None)
    assert statuses(db) == {"sent": N}
    assert len(gw.accepted) == N and gw.repeats == 0


def test_a_refused_connection_counts_as_an_outage_too(crowd):
    db, config, _ = crowd
    config.write_text(config.read_text().replace(load_settings(config).gateway.webhook_url, closed_port_url()))
    r = dispatch_db(db, load_settings(config), T)
    assert r.problem and "looks down" in r.problem and "connection error" in r.problem, r.problem
    assert statuses(db) == {"queued": N}


def test_a_gateway_that_answers_again_resets_the_count(crowd):
    # a few transient failures among successes are retried later; they do not stop the run
    db, config, gw = crowd
    for i in range(0, N, 8):                       # 5 of the 40 fail all 4 attempts, none in a row
        gw.script[f"payment_reminder:o{i:04d}"] = [("status", 502)] * 4
    r = dispatch_db(db, load_settings(config), T)
    assert (r.sent, r.kept, r.skipped, r.failed) == (N - 5, 5, 0, 0)
    assert r.problem and "5 messages could not be sent after 4 attempts each and stay queued" in r.problem
    assert statuses(db) == {"sent": N - 5, "queued": 5}


def test_a_reminder_kept_queued_past_its_deadline_fails_unsent(crowd):
    # catches: a reminder sent after its order could no longer be paid (the platform closed it)
    db, config, gw = crowd
    settings = load_settings(config)
    gw.down = True
    dispatch_db(db, settings, T)
    gw.down = False
    # the orders were placed at 10:00; 1440 - 5 minutes later their deadline (next day 09:55) has passed
    late = local("2026-11-25 09:55")
    r = dispatch_db(db, settings, late)
    assert (r.sent, r.withdrawn, r.failed, r.problem) == (0, N, N, None)
    assert gw.accepted == {}, "nothing went to the gateway"
    errors = rows(db, "SELECT DISTINCT status, last_error FROM ops.messages")
    assert errors == [("failed", "expired: not sent by 2026-11-25 09:55 local time, when it stopped being worth "
                                 "sending")], errors


def test_a_followup_kept_queued_is_worth_sending_until_its_due_day_ends(tmp_path):
    gw = Gateway().start()
    try:
        db, config = tmp_path / "crm.duckdb", tmp_path / "shops.toml"
        shop_config(config, gw.url, 1, capacity=0)           # no calls: every follow-up goes by SMS
        settings = load_settings(config)
        con = connect(db)
        sync_shops(con, settings)
        stage(con, "customers", {"customer_id": "c1", "phone": "13800000001"})
        stage(con, "orders", {"order_id": "d1", "customer_id": "c1", "created_at": local("2026-11-10 10:00"),
                              "paid_at": local("2026-11-10 10:01"), "delivered_at": local("2026-11-17 12:00")})
        con.close()
        gw.down = True
        r = dispatch_db(db, settings, local("2026-11-24 11:05"))      # due on 11-24, in the 11:00 window
        assert r.created == {"followup/sms": 1} and r.kept == 1
        gw.down = False
        # that evening it still goes
        still = dispatch_db(db, settings, local("2026-11-24 20:59"))
        assert (still.sent, still.failed) == (1, 0)

        # another one kept past its day fails unsent the next morning
        con = connect(db)
        stage(con, "customers", {"customer_id": "c2", "phone": "13800000002"})
        stage(con, "orders", {"order_id": "d2", "customer_id": "c2", "created_at": local("2026-11-11 10:00"),
                              "paid_at": local("2026-11-11 10:01"), "delivered_at": local("2026-11-18 12:00")})
        con.close()
        gw.down = True
        dispatch_db(db, settings, local("2026-11-25 11:05"))
        gw.down = False
        # in the quiet hours (21:00-09:00) it waits, untouched …
        quiet = dispatch_db(db, settings, local("2026-11-25 22:00"))
        assert (quiet.sent, quiet.failed, quiet.waiting) == (0, 0, 1)
        # … and the next morning its day is over
        late = dispatch_db(db, settings, local("2026-11-26 11:05"))
        assert (late.sent, late.withdrawn) == (0, 1)
        assert rows(db, "SELECT status, last_error FROM ops.messages WHERE order_id = 'd2'") == [
            ("failed", "expired: not sent by 2026-11-26 00:00 local time, when it stopped being worth sending")]
    finally:
        gw.stop()


def test_crm_dispatch_in_an_outage_exits_1_with_one_line_and_fails_the_flow_run(local_server, tmp_path):
    # catches: a run that lost its gateway reporting success (exit 0, a Completed flow run)
    from crm.orchestration import running_server

    db, config = local_server.parent / "outage.duckdb", tmp_path / "shops.toml"
    sms_crowd(db, config, closed_port_url(), N)
    down = crm("--db", str(db), "--config", str(config), "dispatch", "--as-of", T.isoformat(),
               env={"PREFECT_API_URL": ""})
    assert down.returncode == 1, down.stdout + down.stderr
    errors = [line for line in down.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "looks down" in errors[0] and f"{N} messages stay queued" in errors[0], down.stderr
    assert "Traceback" not in down.stderr, down.stderr[-2000:]
    assert f"kept queued for the next run {N}" in down.stdout, down.stdout
    assert statuses(db) == {"queued": N}

    api = running_server(db)["api_url"]
    # (not the scheduled runs of deployments other tests deploy on this shared server: they sort first by start time)
    runs = httpx.post(f"{api}/flow_runs/filter", timeout=60, json={
        "sort": "START_TIME_DESC", "limit": 20,
        "flow_runs": {"state": {"type": {"not_any_": ["SCHEDULED", "PENDING"]}}}}).json()
    ours = [r for r in runs if r["parameters"].get("db") == str(db)]
    assert ours and ours[0]["state"]["type"] == "FAILED", [r["state"] for r in ours]
    assert "looks down" in json.dumps(ours[0]["state"]), ours[0]["state"]

    gw = Gateway().start()
    try:
        config.write_text(config.read_text().replace(load_settings(config).gateway.webhook_url, gw.url))
        up = crm("--db", str(db), "--config", str(config), "dispatch", "--as-of", (T + timedelta(minutes=15)).isoformat(),
                 env={"PREFECT_API_URL": ""})
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"sent {N}, failed 0" in up.stdout
        assert statuses(db) == {"sent": N} and len(gw.accepted) == N
    finally:
        gw.stop()
