"""A queued message is checked again just before it goes (issue 12.2), one poison message never stops the
others (12.4), and e-mail goes out at most once (12.6). Real gateway and SMTP servers on 127.0.0.1, real
DuckDB files, a real `crm dispatch` killed with SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from datetime import timedelta

import pytest
from aiosmtpd.controller import Controller

from conftest import BIN, crm, free_port, rows
from crm.config import load_settings, parse_settings
from crm.db import connect, sync_shops
from crm.journal import SendJournal
from dispatching import T, opt_out_while_held, shop_config, sms_crowd
from gateway import Gateway
from planning import local, message, stage
from transforms.dispatch import dispatch_db, send_queued

N = 40




@pytest.fixture
def queued(tmp_path):
    """N SMS reminders queued at T by a run whose gateway was down (as after an outage or a crash)."""
    gw = Gateway().start()
    db, config = tmp_path / "crm.duckdb", tmp_path / "shops.toml"
    sms_crowd(db, config, gw.url, N)
    settings = load_settings(config)
    gw.down = True
    dispatch_db(db, settings, T)
    gw.down = False
    assert rows(db, "SELECT status, count(*) FROM ops.messages GROUP BY 1") == [("queued", N)]
    yield db, settings, gw
    gw.stop()


def test_what_happened_since_a_message_was_queued_is_checked_before_it_goes(queued):
    # catches: after a crash, reminders sent for orders paid since, to customers who opted out since, for
    # orders auto-closed since
    db, settings, gw = queued
    con = connect(db)
    try:
        con.execute("UPDATE staging.orders SET paid_at = ? WHERE order_id IN ('o0000', 'o0001')", [T + timedelta(minutes=5)])
        con.execute("UPDATE staging.orders SET closed_at = ? WHERE order_id = 'o0002'", [T + timedelta(minutes=5)])
        con.execute("UPDATE staging.customers SET opt_out = true WHERE customer_id = 'c3'")
        stage(con, "suppressions", {"phone": "13900000004", "channel": "sms", "created_at": T + timedelta(minutes=5)},
              {"customer_id": "c5", "channel": "all", "created_at": T + timedelta(minutes=5)},
              # one created after the run's T does not count yet
              {"customer_id": "c6", "channel": "all", "created_at": T + timedelta(hours=5)})
    finally:
        con.close()
    r = dispatch_db(db, settings, T + timedelta(minutes=10))
    assert (r.sent, r.withdrawn) == (N - 6, 6)
    assert len(gw.accepted) == N - 6 and not {f"payment_reminder:o000{i}" for i in range(6)} & set(gw.accepted)
    reasons = dict(rows(db, "SELECT order_id, split_part(last_error, ':', 1) FROM ops.messages WHERE status = 'failed'"))
    assert reasons == {"o0000": "paid", "o0001": "paid", "o0002": "closed", "o0003": "opted_out",
                       "o0004": "suppressed", "o0005": "opted_out"}


def test_in_quiet_hours_a_queued_reminder_waits_untouched(queued):
    # catches: 2,581 reminders sent in a run whose T was inside the shop's quiet hours
    db, settings, gw = queued
    before, requests = rows(db, "SELECT message_id, attempts, last_error FROM ops.messages ORDER BY 1"), len(gw.requests)
    r = dispatch_db(db, settings, local("2026-11-24 21:30"))        # quiet hours 21:00-09:00
    assert (r.sent, r.failed, r.waiting, r.problem) == (0, 0, N, None)
    assert len(gw.requests) == requests, "nothing went to the gateway"
    assert rows(db, "SELECT message_id, attempts, last_error FROM ops.messages ORDER BY 1") == before


def test_an_opt_out_during_a_run_stops_the_later_batches(queued):
    db, settings, gw = queued
    gw.delay = 0.05                                  # 4 at a time: ~0.15 s a batch of 10
    settings = settings.model_copy(update={"gateway": settings.gateway.model_copy(update={"timeout_seconds": 120})})
    opted = threading.Event()

    def opt_out_while_the_first_batch_is_at_the_gateway() -> None:
        # the first batch waits at the gateway until the opt-out is in: the fourth batch (c30-c39) is checked
        # when the third starts, after it, however slowly this thread gets to the database
        deadline = time.monotonic() + 20
        while not gw.held and time.monotonic() < deadline:
            time.sleep(0.01)
        opt_out_while_held(db, "c39", gw, opted)

    gw.hold()
    thread = threading.Thread(target=opt_out_while_the_first_batch_is_at_the_gateway)
    thread.start()
    r = send_queued(db, settings, T + timedelta(minutes=10), batch=10)
    thread.join()
    assert opted.is_set() and r.checks == 3, "each later batch was checked again"
    assert (r.sent, r.withdrawn) == (N - 1, 1)
    assert rows(db, "SELECT status, last_error FROM ops.messages WHERE order_id = 'o0039'")[0][0] == "failed"


def test_an_older_reminder_waits_when_the_customer_had_todays_already(tmp_path):
    gw = Gateway().start()
    try:
        db = tmp_path / "crm.duckdb"
        settings = parse_settings({"shops": [{"shop_id": "s1", "reminders": {"auto_close_minutes": 4320}}],
                                   "gateway": {"webhook_url": gw.url}})
        con = connect(db)
        sync_shops(con, settings)
        stage(con, "customers", {"customer_id": "c1", "phone": "13800000001"})
        stage(con, "orders", {"order_id": "old", "created_at": T - timedelta(days=1)},
              {"order_id": "new", "created_at": T - timedelta(minutes=30)})
        message(con, "payment_reminder:old", "payment_reminder", "old", T - timedelta(days=1), status="queued")
        message(con, "payment_reminder:new", "payment_reminder", "new", T, status="sent")
        con.execute("UPDATE ops.messages SET recipient = '13800000001', body = 'hi'")
        con.close()
        r = send_queued(db, settings, T + timedelta(minutes=1))
        assert (r.sent, r.waiting) == (0, 1), "daily_cap 1: today's reminder went already"
    finally:
        gw.stop()


# --------------------------------------------------------------------------------------------------
# 12.4 one poison message never stops the others


def test_a_non_ascii_order_id_and_a_broken_answer_do_not_stop_the_others(tmp_path):
    # catches: UnicodeEncodeError on a non-ASCII Idempotency-Key stopping every later message for good, and a
    # 200 with a broken Content-Encoding posted again on every run
    gw = Gateway().start()
    try:
        db, config = tmp_path / "crm.duckdb", tmp_path / "shops.toml"
        sms_crowd(db, config, gw.url, 5)
        con = connect(db)
        stage(con, "customers", {"customer_id": "c-x", "phone": "13900009999"})
        stage(con, "orders", {"order_id": "订单-2", "customer_id": "c-x", "created_at": local("2026-11-24 10:00")})
        con.close()
        gw.script["payment_reminder:o0001"] = [("broken_body",)]
        settings = load_settings(config)
        r = dispatch_db(db, settings, T)
        assert (r.sent, r.failed, r.problem) == (6, 0, None)
        assert "payment_reminder:订单-2" in gw.accepted and gw.missing_key == 0
        assert rows(db, "SELECT count(*) FROM ops.messages WHERE status = 'sent'") == [(6,)]
        again = dispatch_db(db, settings, T + timedelta(minutes=5))
        assert again.sent == 0 and gw.repeats == 0, "nothing posted again"
    finally:
        gw.stop()


# --------------------------------------------------------------------------------------------------
# 12.6 e-mail at most once


class SlowMailbox:
    def __init__(self, delay: float = 0.0):
        self.delay, self.ids = delay, []

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(self.delay)
        for line in envelope.content.decode("utf-8", "replace").splitlines():
            if line.lower().startswith("x-crm-message-id:"):
                self.ids.append(line.split(":", 1)[1].strip())
        return "250 OK"


def email_crowd(db, config, smtp_port: int, n: int) -> None:
    """n new customers with only an email address, each with an order at 10:00: n e-mail reminders at T."""
    shop_config(config, "http://127.0.0.1:9/send", smtp_port)
    config.write_text(config.read_text().replace("[shops.visits]", 'channels = { new = "email" }\n[shops.visits]'))
    con = connect(db)
    try:
        sync_shops(con, load_settings(config))
        stage(con, "customers", *[{"customer_id": f"c{i}", "phone": None, "email": f"c{i}@example.com"}
                                  for i in range(n)])
        stage(con, "orders", *[{"order_id": f"o{i:04d}", "customer_id": f"c{i}", "created_at": local("2026-11-24 10:00")}
                               for i in range(n)])
    finally:
        con.close()


def test_the_journal_of_a_run_that_died_settles_its_emails(tmp_path):
    box = SlowMailbox()
    smtp = Controller(box, hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        db, config = tmp_path / "crm.duckdb", tmp_path / "shops.toml"
        email_crowd(db, config, smtp.port, 3)
        settings = load_settings(config)
        # the run that died: it had handed o0000 over (no answer yet), o0001 was accepted, o0002 refused
        dispatch_db(db, settings, T, dry_run=False, channels=["call"])     # plan only: nothing created
        con = connect(db)
        for i in range(3):
            message(con, f"payment_reminder:o000{i}", "payment_reminder", f"o000{i}", T, customer_id=f"c{i}",
                    channel="email", status="queued")
        con.execute("UPDATE ops.messages SET recipient = 'x@example.com', body = 'Subject\nbody', attempts = 0")
        con.close()
        journal = SendJournal(db)
        journal.begin("payment_reminder:o0000")
        journal.begin("payment_reminder:o0001")
        journal.accepted("payment_reminder:o0001")
        journal.begin("payment_reminder:o0002")
        journal.not_sent("payment_reminder:o0002")
        journal.close()
        r = send_queued(db, settings, T + timedelta(minutes=1))
        assert (r.sent, r.in_doubt, r.failed) == (2, 1, 1)
        assert box.ids == ["payment_reminder:o0002"], "only the one refused before was sent"
        states = dict(rows(db, "SELECT order_id, status FROM ops.messages"))
        assert states == {"o0000": "failed", "o0001": "sent", "o0002": "sent"}
        assert rows(db, "SELECT last_error FROM ops.messages WHERE order_id = 'o0000'")[0][0].startswith("in doubt")
        assert not journal.path.exists(), "emptied once every outcome is recorded"
    finally:
        smtp.stop()


def test_sigkill_mid_send_never_mails_anyone_twice(local_server, tmp_path):
    # catches: 195 of 14,030 follow-ups arriving twice after one SIGKILL
    n = 60
    box = SlowMailbox(delay=0.05)
    smtp = Controller(box, hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        db, config = local_server.parent / "mail-crash.duckdb", tmp_path / "shops.toml"
        email_crowd(db, config, smtp.port, n)
        args = [str(BIN), "--db", str(db), "--config", str(config), "dispatch", "--as-of", T.isoformat()]
        env = {**os.environ, "PREFECT_API_URL": "", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 120
        while len(box.ids) < 15 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rerun = crm("--db", str(db), "--config", str(config), "dispatch", "--as-of", (T + timedelta(minutes=1)).isoformat(),
                    env={"PREFECT_API_URL": ""})
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert len(box.ids) == len(set(box.ids)), "nobody got an e-mail twice"
        states = dict(rows(db, "SELECT status, count(*) FROM ops.messages GROUP BY 1"))
        sent, in_doubt = states.get("sent", 0), states.get("failed", 0)
        # the one in flight when the run died is in doubt: it may have arrived (the server took it before the
        # journal heard so) or not; every other arrived exactly once and is recorded as sent
        assert in_doubt <= 1 and sent <= len(box.ids) <= sent + in_doubt, (states, len(box.ids))
        assert sum(states.values()) == n, "every message sent or (at most the one in flight) in doubt"
    finally:
        smtp.stop()


def test_retry_failed_queues_failed_messages_again_under_the_same_id(queued):
    db, settings, gw = queued
    gw.script["payment_reminder:o0007"] = [("status", 400, "number blocked")]
    first = dispatch_db(db, settings, T + timedelta(minutes=5))
    assert (first.sent, first.failed) == (N - 1, 1)
    again = dispatch_db(db, settings, T + timedelta(minutes=10))
    assert (again.sent, again.failed, again.requeued) == (0, 0, 0), "a failed message is not sent again by itself"
    dry = dispatch_db(db, settings, T + timedelta(minutes=15), dry_run=True, retry_failed=True)
    assert dry.requeued == 1 and rows(db, "SELECT status FROM ops.messages WHERE order_id = 'o0007'") == [("failed",)]
    retried = dispatch_db(db, settings, T + timedelta(minutes=15), retry_failed=True)
    assert (retried.requeued, retried.sent) == (1, 1)
    # 4 attempts in the outage, the 400, and the one that went
    assert rows(db, "SELECT status, attempts FROM ops.messages WHERE order_id = 'o0007'") == [("sent", 6)]
    assert len(gw.accepted) == N and gw.repeats == 0
