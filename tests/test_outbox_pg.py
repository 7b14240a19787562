"""The outbox in PostgreSQL (crm/storage/outbox.py) and its workers (transforms/dispatch_pg.py), docs/rules.md §7
and §10: each test a database of its own in the session's PostgreSQL cluster (tests/postgres.py), the loopback
webhook gateway (tests/gateway.py) and aiosmtpd. Several worker processes claim from one outbox at once; one is
SIGKILLed mid-run and another finishes its work; every message reaches its gateway once (e-mails at most once)."""

from __future__ import annotations

import asyncio
import email
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from aiosmtpd.controller import Controller

from crm.channels import Outcome
from crm.config import load_settings
from crm.journal import in_doubt
from crm.storage import StorageError
from crm.storage.outbox import PgOutbox
from dispatching import Mailbox, T, shop_config
from gateway import Gateway
from postgres import free_port, postgres  # noqa: F401  (the session's fixture)
from transforms.dispatch_pg import send_claimed

REPO = Path(__file__).resolve().parent.parent
CHANNELS = ("sms", "chat", "email")


@pytest.fixture
def dsn(postgres):  # noqa: F811
    return postgres.uri(postgres.database("outbox"))


def messages(n: int, *, email_every: int = 0, start: int = 0, shop: str = "s1") -> list[dict]:
    """`n` messages created one second apart from T on: SMS and chat, and every `email_every`-th an e-mail."""
    rows = []
    for i in range(start, start + n):
        channel = "email" if email_every and i % email_every == email_every - 1 else ("sms", "chat")[i % 2]
        rows.append({
            "message_id": f"payment_reminder:o{i:05d}", "purpose": "payment_reminder", "shop_id": shop,
            "order_id": f"o{i:05d}", "customer_id": f"c{i}", "channel": channel,
            "recipient": f"c{i}@example.com" if channel == "email" else f"1390000{i:04d}",
            "body": f"订单 o{i:05d} 待付款\n\"请\"尽快付款, 谢谢" if channel == "email" else f"订单 o{i:05d} 待付款",
            "created_at": T - timedelta(hours=1) + timedelta(seconds=i), "template": "reminder_new",
            "as_of": T, "segments": 1 if channel != "email" else None,
        })
    return rows


def rows_of(outbox: PgOutbox, sql: str, args=()) -> list[tuple]:
    return outbox._run(lambda con: con.execute(sql, args).fetchall())


def execute(outbox: PgOutbox, sql: str, args=()) -> int:
    return outbox._run(lambda con: con.execute(sql, args).rowcount)


def delivered_ids(box: Mailbox) -> Counter:
    return Counter(email.message_from_bytes(e.original_content or e.content)["X-CRM-Message-Id"] for e in box.messages)


def start_smtp(box) -> Controller:
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    return controller


def settings_for(tmp_path: Path, gw: Gateway, smtp_port: int, **gateway):
    """tests/dispatching.py's shop and [gateway], with `gateway`'s keys set."""
    config = shop_config(tmp_path / "shops.toml", gw.url, smtp_port)
    text = config.read_text()
    for key, value in gateway.items():
        text = re.sub(rf"(?m)^{key} = .*$", "", text).replace("[gateway]\n", f"[gateway]\n{key} = {value}\n")
    config.write_text(text)
    return config, load_settings(config)


# --------------------------------------------------------------------------------------------------------------
# the outbox's statements


def test_enqueue_twice_keeps_one_row_per_message_and_the_text_as_written(dsn):
    with PgOutbox(dsn) as outbox:
        outbox.ensure()
        outbox.ensure()                                         # idempotent
        first = messages(50, email_every=5)
        first[0]["body"], first[1]["body"] = "", None           # an empty body is not a missing one
        assert outbox.enqueue(first) == 50
        # again, as a pyarrow table, with 10 new ones among them
        again = messages(60, email_every=5)
        again[0]["body"] = "changed"
        assert outbox.enqueue(pa.Table.from_pylist(again)) == 10
        rows = rows_of(outbox, "SELECT message_id, status, attempts, body, created_at, channel FROM messages "
                               "ORDER BY message_id")
        assert [r[0] for r in rows] == sorted(m["message_id"] for m in again)
        assert {(r[1], r[2]) for r in rows} == {("queued", 0)}
        bodies = {r[0]: r[3] for r in rows}
        assert bodies[first[0]["message_id"]] == "" and bodies[first[1]["message_id"]] is None
        assert bodies[first[4]["message_id"]] == first[4]["body"]           # quotes, a newline, Chinese
        assert {r[0]: r[4] for r in rows}[first[7]["message_id"]] == first[7]["created_at"]
        assert outbox.enqueue([]) == 0
        with pytest.raises(ValueError, match="lack channel"):
            outbox.enqueue([{k: v for k, v in first[0].items() if k != "channel"}])


def test_two_workers_claiming_at_once_get_disjoint_sets_covering_everything(dsn):
    with PgOutbox(dsn) as setup:
        setup.ensure()
        setup.enqueue(messages(2000, email_every=7))
    barrier = threading.Barrier(2)
    got: dict[str, list[str]] = {"a": [], "b": []}

    def claimer(worker: str) -> None:
        with PgOutbox(dsn) as outbox:
            outbox.counts()                          # connected before the start: both begin at once
            barrier.wait()
            while rows := outbox.claim(worker, 37, 60, CHANNELS):
                got[worker] += [r["message_id"] for r in rows]

    threads = [threading.Thread(target=claimer, args=(w,)) for w in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    a, b = set(got["a"]), set(got["b"])
    assert len(a) == len(got["a"]) and len(b) == len(got["b"]), "no worker was given a message twice"
    assert not a & b, "two workers never hold the same message"
    assert len(a | b) == 2000
    assert a and b, f"both workers claimed (a {len(a)}, b {len(b)})"
    with PgOutbox(dsn) as outbox:
        held = dict(rows_of(outbox, "SELECT claimed_by, count(*) FROM messages GROUP BY 1"))
        assert held == {"a": len(a), "b": len(b)}
        # a claim that still holds is not claimable by anyone
        assert outbox.claim("c", 100, 60, CHANNELS) == []


def test_claims_filter_by_channel_and_shop_and_come_oldest_first(dsn):
    with PgOutbox(dsn) as outbox:
        outbox.ensure()
        outbox.enqueue(messages(20, email_every=4) + messages(10, start=100, shop="s2"))
        rows = outbox.claim("w", 100, 60, ["email"], shops=["s1"])
        assert [r["message_id"] for r in rows] == [m["message_id"] for m in messages(20, email_every=4)
                                                    if m["channel"] == "email"]
        rows = outbox.claim("w", 3, 60, CHANNELS, shops=["s2"])
        assert [r["shop_id"] for r in rows] == ["s2"] * 3
        assert [r["message_id"] for r in rows] == ["payment_reminder:o00100", "payment_reminder:o00101",
                                                   "payment_reminder:o00102"]


def test_a_worker_whose_lease_ran_out_cannot_overwrite_the_new_owners_result(dsn):
    with PgOutbox(dsn) as outbox:
        outbox.ensure()
        outbox.enqueue(messages(5))
        old = outbox.claim("old", 10, 60, CHANNELS)
        assert len(old) == 5
        # the old worker's lease runs out (PostgreSQL's clock moved on: its claim_until set into the past)
        execute(outbox, "UPDATE messages SET claim_until = now() - interval '1 second'")
        new = outbox.claim("new", 10, 60, CHANNELS)
        assert {r["message_id"] for r in new} == {r["message_id"] for r in old}
        ids = [r["message_id"] for r in new]
        assert outbox.record("new", [Outcome(i, "sent", 1) for i in ids[:3]]) == 3
        # the old worker comes back with its answers: nothing of it is written
        assert outbox.record("old", [Outcome(i, "failed", 1, "HTTP 400: late") for i in ids]) == 0
        assert not outbox.mark_sending("old", ids[3])
        statuses = dict(rows_of(outbox, "SELECT message_id, status FROM messages"))
        assert [statuses[i] for i in ids] == ["sent"] * 3 + ["queued"] * 2
        # recorded twice: the second time changes nothing (the claim was cleared by the first)
        assert outbox.record("new", [Outcome(i, "failed", 1, "again") for i in ids[:3]]) == 0
        assert outbox.release("new") == 2
        assert rows_of(outbox, "SELECT count(*) FROM messages WHERE claimed_by IS NOT NULL") == [(0,)]


def test_settle_decides_messages_a_dead_worker_was_handing_over_as_the_send_journal_does(dsn):
    with PgOutbox(dsn) as outbox:
        outbox.ensure()
        outbox.enqueue(messages(8, email_every=2))          # o00001, o00003, o00005, o00007 are e-mails
        execute(outbox, "CREATE TABLE delivery_receipts (receipt_id text PRIMARY KEY, message_id text, status text)")
        claimed = outbox.claim("dead", 10, 60, ["email"])
        a, b, c, d = (r["message_id"] for r in claimed)
        assert outbox.mark_sending("dead", a)                # handed over, no answer: in doubt
        assert outbox.mark_sending("dead", b)                # handed over, and a receipt came in since
        execute(outbox, "INSERT INTO delivery_receipts VALUES ('r1', %s, 'delivered')", [b])
        assert outbox.mark_sending("dead", c)
        outbox.mark_accepted("dead", c)                      # accepted, not yet recorded
        # d: claimed, never begun
        assert outbox.settle(["email"]).in_doubt == 0, "nothing is settled while the claims hold"
        execute(outbox, "UPDATE messages SET claim_until = now() - interval '1 second' WHERE claimed_by = 'dead'")
        settled = outbox.settle(["email"])
        assert (settled.sent, settled.in_doubt, settled.cleared) == (1, 1, 1)
        state = {r[0]: r[1:] for r in rows_of(outbox, "SELECT message_id, status, last_error, claimed_by, "
                                                     "sent_at IS NOT NULL FROM messages")}
        assert state[a] == ("failed", in_doubt("email"), None, False)
        assert state[b] == ("sent", None, None, True)
        assert state[c] == ("sent", None, None, True)
        assert state[d][0] == "queued" and state[d][2] == "dead"
        # the next claim takes back only d: nothing settled goes again
        assert [r["message_id"] for r in outbox.claim("next", 10, 60, ["email"])] == [d]
        assert outbox.settle(["email"]) == type(settled)()


def test_an_unreachable_postgresql_is_one_line_naming_the_key_without_the_password():
    closed = free_port()
    outbox = PgOutbox(f"postgresql://crm:hunter2@127.0.0.1:{closed}/crm", connect_timeout=5)
    with pytest.raises(StorageError) as info:
        outbox.ensure()
    message = str(info.value)
    assert message.startswith("[storage] ops_dsn: cannot reach the ops database: "), message
    assert "\n" not in message and "hunter2" not in message and str(closed) in message


# --------------------------------------------------------------------------------------------------------------
# a worker in this process


def test_a_transient_gateway_failure_leaves_messages_queued_and_a_later_run_sends_them(dsn, tmp_path):
    gw = Gateway().start()
    smtp = start_smtp(box := Mailbox())
    try:
        _, settings = settings_for(tmp_path, gw, smtp.port, max_attempts=2, down_after=1000)
        with PgOutbox(dsn) as outbox:
            outbox.ensure()
            outbox.enqueue(messages(30))
            gw.down = True
            first = send_claimed(outbox, settings, T, worker="w1", batch=8)
            assert (first.sent, first.failed, first.kept) == (0, 0, 30)
            assert first.problem(settings) and "stay queued" in first.problem(settings)
            rows = rows_of(outbox, "SELECT status, attempts, last_error, claimed_by FROM messages")
            assert {(s, a, c) for s, a, _, c in rows} == {("queued", 2, None)}, "queued, attempts counted, released"
            assert all(e.startswith("2 attempts failed, stays queued: HTTP 503") for _, _, e, _ in rows)
            assert len(gw.requests) == 60, "each message tried twice in the run, then left for a later one"
            gw.down = False
            second = send_claimed(outbox, settings, T, worker="w2")
            assert (second.sent, second.failed, second.kept) == (30, 0, 0)
            assert set(rows_of(outbox, "SELECT status, attempts, claimed_by FROM messages")) == {("sent", 3, None)}
            assert len(gw.accepted) == 30 and gw.repeats == 0
    finally:
        gw.stop()
        smtp.stop()


def test_the_check_fails_or_holds_back_rows_before_they_go(dsn, tmp_path):
    gw = Gateway().start()
    smtp = start_smtp(box := Mailbox())
    try:
        _, settings = settings_for(tmp_path, gw, smtp.port)
        seen = []

        def check(rows):
            seen.append(len(rows))
            for r in rows:
                n = int(r["order_id"][1:])
                r["fail_reason"] = "paid: the order is paid at T" if n % 3 == 0 else None
                r["wait_reason"] = "quiet_hours" if n % 3 == 1 else None
            return rows

        with PgOutbox(dsn) as outbox:
            outbox.ensure()
            outbox.enqueue(messages(30, email_every=5))
            result = send_claimed(outbox, settings, T, worker="w", check=check, batch=7)
            assert sum(seen) == 30 and max(seen) == 7, "every message checked once, in batches"
            assert (result.withdrawn, result.waiting, result.sent) == (10, 10, 10)
            state = {int(r[0].rsplit("o", 1)[1]): r[1:] for r in rows_of(
                outbox, "SELECT message_id, status, last_error, claimed_by FROM messages")}
            assert all(state[n] == ("failed", "paid: the order is paid at T", None) for n in state if n % 3 == 0)
            assert all(state[n] == ("queued", None, None) for n in state if n % 3 == 1), "waiting: untouched, free"
            assert all(state[n][0] == "sent" for n in state if n % 3 == 2)
            assert len(gw.accepted) + len(box.messages) == 10
    finally:
        gw.stop()
        smtp.stop()


def test_a_slow_worker_keeps_its_claims_past_the_lease_and_nobody_takes_them(dsn, tmp_path):
    lease = 1.5
    gw = Gateway(delay=0.2).start()                 # 10 messages, 2 at a time: a batch outlasts the lease
    smtp = start_smtp(Mailbox())
    try:
        _, settings = settings_for(tmp_path, gw, smtp.port, concurrency=2)
        with PgOutbox(dsn) as outbox:
            outbox.ensure()
            outbox.enqueue(messages(40))
            done: list = []

            def run_slow() -> None:
                with PgOutbox(dsn) as own:
                    done.append(send_claimed(own, settings, T, worker="slow", batch=10, lease_seconds=lease))

            slow = threading.Thread(target=run_slow)
            slow.start()
            deadline = time.monotonic() + 60
            while not (first := rows_of(outbox, "SELECT min(claim_until) FROM messages WHERE claimed_by = 'slow'")
                       )[0][0] and time.monotonic() < deadline:
                time.sleep(0.01)
            claimed_until = first[0][0]
            # PostgreSQL's clock passes the first lease's end while the batch is still going: the claims moved on
            while rows_of(outbox, "SELECT clock_timestamp()")[0][0] <= claimed_until and time.monotonic() < deadline:
                time.sleep(0.05)
            held = rows_of(outbox, "SELECT message_id, claim_until FROM messages WHERE claimed_by = 'slow' "
                                   "AND status = 'queued'")
            assert held and all(until > claimed_until for _, until in held), "the live worker's leases were extended"
            taken = outbox.claim("other", 100, 60, CHANNELS)
            assert not {r["message_id"] for r in taken} & {mid for mid, _ in held}, "nobody took them"
            outbox.release("other")
            slow.join(120)
            assert done and done[0].sent == 40 and done[0].lost == 0
            assert rows_of(outbox, "SELECT status, count(*) FROM messages GROUP BY 1") == [("sent", 40)]
        assert set(Counter(key for _, key, _ in gw.requests).values()) == {1}, "each message went once"
    finally:
        gw.stop()
        smtp.stop()


# --------------------------------------------------------------------------------------------------------------
# worker processes


WORKER = textwrap.dedent("""
    import json, os, sys, time
    from datetime import datetime
    from crm.config import load_settings
    from crm.storage.outbox import PgOutbox
    from transforms.dispatch_pg import send_claimed

    dsn, config, worker, lease, batch, as_of, go = sys.argv[1:8]
    settings = load_settings(config)
    with PgOutbox(dsn) as outbox:
        outbox.ensure()
        while go and not os.path.exists(go):      # every worker imported and connected: start together
            time.sleep(0.005)
        began = time.perf_counter()
        r = send_claimed(outbox, settings, datetime.fromisoformat(as_of), worker=worker,
                         lease_seconds=float(lease), batch=int(batch) or None)
    print(json.dumps({"worker": worker, "sent": r.sent, "failed": r.failed, "kept": r.kept, "lost": r.lost,
                      "in_doubt": r.in_doubt, "seconds": time.perf_counter() - began}))
""")


def worker_process(dsn: str, config: Path, name: str, *, lease: float = 30, batch: int = 0,
                   go: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, dsn, str(config), name, str(lease), str(batch),
                             T.isoformat(), str(go or "")], cwd=REPO, env=os.environ, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.parametrize("workers", [2, 3])
def test_concurrent_worker_processes_send_every_message_exactly_once(dsn, tmp_path, workers):
    n, email_every = 3000, 50                                      # 2,940 SMS/chat and 60 e-mails
    gw = Gateway(delay=0.02).start()                               # a run of a second or two: all take part
    smtp = start_smtp(box := Mailbox())
    try:
        config, _ = settings_for(tmp_path, gw, smtp.port)
        with PgOutbox(dsn) as outbox:
            outbox.ensure()
            assert outbox.enqueue(messages(n, email_every=email_every)) == n
            go = tmp_path / "go"
            procs = [worker_process(dsn, config, f"w{i}", batch=150, go=go) for i in range(workers)]
            # every worker ready (connected, waiting for the go) before any starts
            deadline = time.monotonic() + 120
            while (rows_of(outbox, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'crm-outbox'")
                   [0][0] < workers + 1 and time.monotonic() < deadline):
                time.sleep(0.05)
            go.touch()
            reports = []
            for p in procs:
                out, err = p.communicate(timeout=300)
                assert p.returncode == 0, err[-3000:]
                reports.append(json.loads(out.strip().splitlines()[-1]))
            statuses = rows_of(outbox, "SELECT status, claimed_by, count(*) FROM messages GROUP BY 1, 2")
            assert statuses == [("sent", None, n)], "every row ends sent, no claim left"
        webhook_ids = {m["message_id"] for m in messages(n, email_every=email_every) if m["channel"] != "email"}
        email_ids = {m["message_id"] for m in messages(n, email_every=email_every) if m["channel"] == "email"}
        requests = Counter(key for _, key, _ in gw.requests)
        assert set(requests) == webhook_ids and set(requests.values()) == {1}, "each message reached the gateway once"
        assert gw.repeats == 0 and len(gw.accepted) == len(webhook_ids)
        mails = delivered_ids(box)
        assert set(mails) == email_ids and set(mails.values()) == {1}, "each e-mail delivered once"
        assert sum(r["sent"] for r in reports) == n
        assert all(r["sent"] > 0 for r in reports), f"every worker took part: {reports}"
        print(f"{workers} workers: " + ", ".join(f"{r['worker']} sent {r['sent']} in {r['seconds']:.2f} s"
                                                 for r in reports))
    finally:
        gw.stop()
        smtp.stop()


class HoldingMailbox(Mailbox):
    """Holds the `hold`-th e-mail's DATA until `release` is set (the worker is killed meanwhile); then takes it,
    as a server that got the whole message but whose answer never reached the client (unless aiosmtpd drops
    the handler with the closed connection: the e-mail is then not delivered; either way it is in doubt)."""

    def __init__(self, hold: int):
        super().__init__()
        self.hold, self.seen = hold, 0
        self.held, self.release = threading.Event(), threading.Event()
        self.held_id = None

    async def handle_DATA(self, server, session, envelope):
        self.seen += 1
        if self.seen == self.hold:
            self.held_id = email.message_from_bytes(envelope.original_content)["X-CRM-Message-Id"]
            self.held.set()
            while not self.release.is_set():
                await asyncio.sleep(0.01)
        self.messages.append(envelope)
        return "250 OK"


def test_a_worker_sigkilled_mid_run_then_another_one_loses_nothing_and_doubles_nothing(dsn, tmp_path):
    n, email_every, lease = 400, 10, 2.0                           # 360 SMS/chat, 40 e-mails
    gw = Gateway(delay=0.02).start()                               # slow: the kill lands mid-run
    box = HoldingMailbox(hold=3)
    smtp = start_smtp(box)
    try:
        config, settings = settings_for(tmp_path, gw, smtp.port)
        all_messages = messages(n, email_every=email_every)
        with PgOutbox(dsn) as outbox:
            outbox.ensure()
            outbox.enqueue(all_messages)
            proc = worker_process(dsn, config, "doomed", lease=lease, batch=60)
            deadline = time.monotonic() + 120
            while not (box.held.is_set() and len(gw.accepted) >= 30) and time.monotonic() < deadline:
                assert proc.poll() is None, proc.stderr.read()[-3000:]
                time.sleep(0.02)
            assert box.held.is_set(), "the worker reached the third e-mail"
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            box.release.set()                                       # the server takes the e-mail all the same
            before = len(gw.accepted)
            assert 30 <= before < n - n // email_every
            states = dict(rows_of(outbox, "SELECT status, count(*) FROM messages GROUP BY 1"))
            assert states.get("sending") == 1, f"the e-mail being handed over is marked sending: {states}"
            # wait until the dead worker's leases have run out (PostgreSQL's clock), then another worker runs
            deadline = time.monotonic() + 60
            while rows_of(outbox, "SELECT count(*) FROM messages WHERE claim_until >= now()")[0][0] and \
                    time.monotonic() < deadline:
                time.sleep(0.1)
            result = send_claimed(outbox, settings, T, worker="rescuer", lease_seconds=lease)
            final = {r[0]: r[1:] for r in rows_of(outbox, "SELECT message_id, channel, status, last_error, "
                                                          "claimed_by FROM messages")}
        assert len(final) == n, "nothing lost"
        doubtful = {mid for mid, (_, status, _, _) in final.items() if status != "sent"}
        assert doubtful == {box.held_id}, "only the e-mail being handed over is not sent"
        assert final[box.held_id] == ("email", "failed", in_doubt("email"), None)
        assert result.in_doubt == 1 and result.lost == 0
        assert all(c is None for _, _, _, c in final.values()), "no claim left"
        webhook_ids = {m["message_id"] for m in all_messages if m["channel"] != "email"}
        email_ids = {m["message_id"] for m in all_messages if m["channel"] == "email"}
        # the gateway accepted every webhook message once; what the dead worker sent but had not recorded
        # went again under the same Idempotency-Key (a repeat, accepted once)
        assert set(gw.accepted) == webhook_ids
        accepted = Counter(key for _, key, status in gw.requests if status == 200)
        assert gw.repeats == sum(c - 1 for c in accepted.values())
        mails = delivered_ids(box)
        assert set(mails.values()) == {1}, "no e-mail delivered twice"
        # every e-mail delivered; the one in doubt perhaps (the server dropped it with the dead client's connection)
        assert email_ids - {box.held_id} <= set(mails) <= email_ids, set(mails) ^ email_ids
        print(f"kill after {before} webhook messages accepted: {len(gw.requests)} requests for "
              f"{len(webhook_ids)} webhook messages ({gw.repeats} repeats, accepted once each); "
              f"{len(box.messages)} e-mails delivered for {len(email_ids)}, 1 in doubt "
              f"({'delivered' if box.held_id in mails else 'not delivered'})")
    finally:
        box.release.set()
        gw.stop()
        smtp.stop()
