"""The whole SMS loop with the real Kannel (docs/rules.md §7): Debian's bearerbox and smsbox, `fakesmsc` as the
SMS centre (tests/kannel.py), `crm serve` answering Kannel's delivery reports and replies under /hooks/, and
dispatches into a real DuckDB file. `./run test` installs the packages (kannel, kannel-extras)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest

import kannel
from conftest import BIN, crm, rows, settle
from crm.config import load_settings
from crm.db import connect
from dispatching import T, sms_crowd
from planning import local, stage
from transforms.dispatch import dispatch_db, send_queued
from workspace import Served

pytestmark = pytest.mark.skipif(not kannel.available(), reason="Kannel is not installed (./run test installs it)")

HOOK_KEY = "k-7c21"
SENDER = "10690"
N = 12






def phone(i: int) -> str:
    return f"+86139{i:08d}"


class Loop:
    """A shop of `n` new customers with an unpaid order each (SMS reminders), `crm serve` for the hooks and
    Kannel pointed at it, and the configuration a dispatch reads (`kind = "kannel"`)."""

    def __init__(self, folder: Path, n: int = N, db: Path | None = None, concurrency: int = 4):
        self.folder, self.db, self.config = folder, db or folder / "crm.duckdb", folder / "shops.toml"
        sms_crowd(self.db, self.config, "http://127.0.0.1:9/unused", n)
        con = connect(self.db)
        try:   # phones as ingest stages them (E.164): replies are matched by phone
            con.execute("UPDATE staging.customers SET phone = '+86' || phone")
        finally:
            con.close()
        self.concurrency = concurrency
        self._write_config(sendsms_url="http://127.0.0.1:9/cgi-bin/sendsms", hooks_url="http://127.0.0.1:9")
        self.served = Served(self.db, self.config)
        mo = (f"{self.served.url}/hooks/kannel/mo?from=%p&to=%P&text=%b&charset=%C&ts=%T&key={HOOK_KEY}")
        self.kannel = kannel.Kannel(folder / "kannel", mo_url=mo)
        try:
            self.kannel.start()
        except Exception:
            self.stop()
            raise
        self.use(self.kannel.sendsms_url)

    def _write_config(self, *, sendsms_url: str, hooks_url: str) -> None:
        text = self.config.read_text(encoding="utf-8")
        head, _, _ = text.partition("[gateway]")
        smtp = text[text.index("[smtp]"):]
        self.config.write_text(head + f"""[gateway]
kind = "kannel"
sendsms_url = "{sendsms_url}"
username = "{kannel.USER}"
password = "{kannel.PASSWORD}"
sender = "{SENDER}"
hooks_url = "{hooks_url}"
hook_key = "{HOOK_KEY}"
timeout_seconds = 5
max_attempts = 3
backoff_seconds = 0.01
concurrency = {self.concurrency}
""" + smtp, encoding="utf-8")

    def use(self, sendsms_url: str) -> None:
        self._write_config(sendsms_url=sendsms_url, hooks_url=self.served.url)
        self.settings = load_settings(self.config)

    def stop(self) -> None:
        self.kannel.stop()
        self.served.stop()


@pytest.fixture
def loop(tmp_path):
    lp = Loop(tmp_path)
    yield lp
    lp.stop()


def bodies(db) -> dict[str, str]:
    return dict(rows(db, "SELECT recipient, body FROM ops.messages WHERE channel = 'sms'"))


def test_a_dispatch_arrives_once_in_chinese_and_its_delivery_reports_come_back(loop):
    r = dispatch_db(loop.db, loop.settings, T)
    assert (r.sent, r.failed) == (N, 0), r
    got = loop.kannel.wait_for(N)
    time.sleep(0.5)                            # nothing more is coming
    got = list(loop.kannel.messages)
    assert sorted(m.to for m in got) == sorted(phone(i) for i in range(N)), "each SMS arrived exactly once"
    sent = bodies(loop.db)
    assert all(m.text == sent[m.to] for m in got), [(m.text, sent.get(m.to)) for m in got][:2]
    assert all(m.sender == SENDER and m.coding.startswith("ucs") for m in got)
    assert any("退订" in m.text for m in got), "the Chinese text came through intact"
    # fakesmsc's delivery reports reach /hooks/kannel/dlr: every message delivered, each receipt kept
    expected = [("delivered", N)]
    assert settle(loop.db, "SELECT delivery, count(*) FROM ops.messages GROUP BY ALL", expected, timeout=30) == expected
    assert rows(loop.db, "SELECT count(DISTINCT message_id), bool_and(gateway = 'kannel') FROM ops.delivery_receipts"
                ) == [(N, True)]
    assert rows(loop.db, "SELECT count(*) FROM ops.messages WHERE delivered_at IS NULL") == [(0,)]
    status = crm("--db", str(loop.db), "--config", str(loop.config), "status")
    assert status.returncode == 0 and f"delivered {N}" in status.stdout, status.stdout + status.stderr


def test_an_opt_out_reply_stops_every_later_message_to_that_phone(loop):
    dispatch_db(loop.db, loop.settings, T)
    assert len(loop.kannel.wait_for(N)) == N
    loop.kannel.reply(phone(1), SENDER, "TD")
    loop.kannel.reply(phone(2), SENDER, "ｔｄ ")             # full-width, with a space
    loop.kannel.reply(phone(3), SENDER, "怎么付款")          # a question, not an opt-out
    expected = [(phone(1), "TD", True), (phone(2), "ｔｄ ", True), (phone(3), "怎么付款", False)]
    assert settle(loop.db, "SELECT sender, text, opt_out FROM ops.replies ORDER BY sender", expected, timeout=30) == expected
    assert rows(loop.db, "SELECT phone, channel, reason FROM ops.suppressions ORDER BY phone") == [
        (phone(1), "sms", "reply: TD"), (phone(2), "sms", "reply: ｔｄ ")]
    # the next day each of the three orders again: nothing goes to the two who opted out
    day2 = T + timedelta(days=1)
    con = connect(loop.db)
    try:
        stage(con, "orders", *[{"order_id": f"n{i}", "customer_id": f"c{i}", "created_at": local("2026-11-25 10:00")}
                               for i in (1, 2, 3)])
    finally:
        con.close()
    before = len(loop.kannel.messages)
    dispatch_db(loop.db, loop.settings, day2)
    loop.kannel.wait_for(before + 1)              # the one that goes reaches the SMS centre …
    time.sleep(1.0)                               # … and a moment for any that should not
    new = loop.kannel.messages[before:]
    assert [m.to for m in new] == [phone(3)], [m.to for m in new]
    withdrawn = dict(rows(loop.db, "SELECT order_id, status || ' ' || coalesce(last_error, '') FROM ops.messages "
                                   "WHERE order_id IN ('n1', 'n2')"))
    assert all(v.startswith("failed suppressed") for v in withdrawn.values()) or withdrawn == {}, withdrawn
    assert rows(loop.db, "SELECT count(*) FROM ops.messages WHERE order_id IN ('n1', 'n2') AND status = 'sent'") == [(0,)]


def test_an_opt_out_between_the_plan_and_the_send_of_its_batch_is_not_sent(loop):
    loop.use("http://127.0.0.1:9/cgi-bin/sendsms")            # Kannel unreachable: the run queues everything
    r = dispatch_db(loop.db, loop.settings, T)
    assert rows(loop.db, "SELECT status, count(*) FROM ops.messages GROUP BY 1") == [("queued", N)], r
    assert "Kannel http://127.0.0.1:9/cgi-bin/sendsms looks down" in r.problem, r.problem
    loop.kannel.reply(phone(5), SENDER, "退订")
    assert settle(loop.db, "SELECT count(*) FROM ops.suppressions", [(1,)], timeout=30) == [(1,)]
    loop.use(loop.kannel.sendsms_url)
    r = send_queued(loop.db, loop.settings, T + timedelta(minutes=5))
    assert (r.sent, r.withdrawn) == (N - 1, 1), r
    time.sleep(1.0)
    assert phone(5) not in {m.to for m in loop.kannel.messages}
    assert rows(loop.db, "SELECT status, split_part(last_error, ':', 1) FROM ops.messages WHERE order_id = 'o0005'") == [
        ("failed", "suppressed")]


def test_sigkill_in_the_middle_of_sending_to_kannel_never_sends_twice(local_server, tmp_path):
    n = 150
    lp = Loop(tmp_path, n, db=local_server.parent / "kannel-crash.duckdb", concurrency=1)
    link = kannel.SlowLink(lp.kannel.sendsms, delay=0.03)       # ~30 ms a request: the run takes ~5 s
    try:
        lp.use(f"http://127.0.0.1:{link.port}/cgi-bin/sendsms")
        args = [str(BIN), "--db", str(lp.db), "--config", str(lp.config), "dispatch", "--as-of", T.isoformat()]
        env = {**os.environ, "PREFECT_API_URL": "", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 120
        while len(lp.kannel.messages) < 20 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        lp.use(lp.kannel.sendsms_url)
        rerun = crm("--db", str(lp.db), "--config", str(lp.config), "dispatch", "--as-of",
                    (T + timedelta(minutes=1)).isoformat(), env={"PREFECT_API_URL": ""})
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        lp.kannel.wait_for(n - 1)                 # all but the one in flight at the kill reach the SMS centre …
        time.sleep(1.0)                           # … and a moment for a repeat, which would show here
        got = [m.to for m in lp.kannel.messages]
        assert len(got) == len(set(got)), "nobody got an SMS twice"
        # the one in flight when the run died is in doubt unless its delivery report came: then it is sent
        expected = [("sent", len(got))] + ([("failed", n - len(got))] if n > len(got) else [])
        assert settle(lp.db, "SELECT status, count(*) FROM ops.messages GROUP BY 1 ORDER BY 1 DESC", expected,
                      timeout=30) == expected
        assert n - len(got) <= 1, "only the message in flight may have been lost"
        doubt = rows(lp.db, "SELECT last_error FROM ops.messages WHERE status = 'failed'")
        assert all(e.startswith("in doubt") for (e,) in doubt), doubt
    finally:
        link.close()
        lp.stop()
