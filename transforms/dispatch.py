"""Dispatch at T (docs/rules.md §6-§7): plan, validate, render, then send each message exactly once.

1. *plan* at T (the marts are written; a dry run only builds them as temp tables);
2. *outbox*: ``sql/intermediate/int_outbox.sql`` lists the messages T creates that ops.messages
   does not hold yet (message_id = purpose:order_id);
3. *validate* them with Great Expectations: no reminder for an order paid at T, none inside quiet
   hours, at most daily_cap per customer and local day, nothing to an opted-out customer, a
   recipient for everything sent automatically. A failure stops the run before anything is written;
4. *render* every body (a missing or broken template stops the run before anything is written);
5. *write* them all to ops.messages as ``queued`` in one transaction (the transactional outbox);
6. *send* every queued SMS/chat/email that may still go at T — this run's and any an earlier run left
   queued — and record sent/failed, attempts and sent_at in batches. Calls stay queued for the agents.
   A message no longer worth sending at T (sql/dispatch/send_queue.sql) fails unsent, with the reason.
   One whose every attempt fails transiently (gateway down, slow, busy) stays queued; after
   ``gateway.down_after`` such messages in a row the run stops sending on that gateway, leaves the rest
   queued and ends with GatewayDown (the flow run fails with one line, the CLI exits 1).

A message recorded as sent is never sent again. One sent but not yet recorded when the process dies
is sent again by the next run with the same Idempotency-Key, which the gateway accepts once.

DuckDB lets one process hold the file for writing, and then no other process can open it at all. So a
flow's run (:func:`dispatch_db`) holds it only while it writes: steps 1-5 in one session, closed before
sending; the queued messages listed through a short connection; each batch of outcomes recorded through
its own short connection (open, one UPDATE, close); the analysts' snapshot in a last short one. Between
them others (the agents' page, a plan) get in, and a batch that meets them waits. Two dispatches never
overlap: the flow holds ``<db>.dispatch.lock`` for the whole run.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import httpx
import polars as pl
import uvloop

from crm.channels import Outcome, SmtpSender, send_webhook
from crm.journal import IN_DOUBT, SendJournal
from crm.db import DatabaseLocked, connect, publish_snapshot, session, shop_macros, sql_text, transaction
from crm.redact import mask_email, mask_phone, redact
from crm.render import Renderer, sms_segments
from transforms.plan import build, plan

log = logging.getLogger("crm.dispatch")

TRIGGER_LABELS = {
    "zh-CN": {"delivered": "签收", "shipped": "发货", "paid": "付款"},
    "en": {"delivered": "delivered", "shipped": "shipped", "paid": "paid for"},
}
AUTOMATIC = ("sms", "chat", "email")


@dataclass
class DispatchResult:
    as_of: datetime
    dry_run: bool = False
    created: dict[str, int] = field(default_factory=dict)     # 'purpose/channel' -> new messages
    sent: int = 0
    failed: int = 0
    calls_queued: int = 0
    long_sms: int = 0                                          # bodies longer than one SMS segment
    preview: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    kept: int = 0                                              # transient failures: still queued for a later run
    skipped: int = 0                                           # not tried, their gateway looked down: still queued
    withdrawn: int = 0                                         # failed unsent: may no longer go at T (paid, …)
    waiting: int = 0                                           # not tried: quiet hours or the daily cap at T
    in_doubt: int = 0                                          # e-mails a run that died may have sent: failed
    requeued: int = 0                                          # --retry-failed: failed messages queued again
    problem: str | None = None                                 # one line when messages stayed queued (gateway down)
    retired_shops: dict[str, int] = field(default_factory=dict)   # shop -> orders not planned (retired_shops)
    validation: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    db_seconds: float = 0.0                                    # of those, the database file held open (dispatch_db)

    def take(self, sent: "SendResult", settings) -> None:
        self.sent, self.failed, self.failures = sent.sent, sent.failed, sent.failures
        self.kept, self.skipped, self.withdrawn = sent.kept, sent.skipped, sent.withdrawn
        self.waiting, self.in_doubt = sent.waiting, sent.in_doubt
        self.problem = sent.problem(settings)


# --------------------------------------------------------------------------------------------------
# outbox: build, validate, render


def outbox(con: duckdb.DuckDBPyConnection, as_of: datetime) -> pl.DataFrame:
    sql = sql_text("intermediate/int_outbox.sql")
    return con.execute(sql, {"as_of": as_of}).pl()


def _context(row: dict) -> dict:
    locale = row["locale"]
    return {
        "shop": row["shop_name"], "customer_name": row["customer_name"], "member_level": row["member_level"],
        "order_id": row["order_id"], "amount": f"{row['total_amount']:.2f}", "currency": row["currency"],
        "items": row["items"], "close_time": row["close_time"], "offer": row["offer"],
        "paid_orders": row["paid_orders"], "tier": row["tier"], "rating": row["rating"],
        "review_text": row["review_text"],
        "trigger_label": TRIGGER_LABELS.get(locale, TRIGGER_LABELS["en"]).get(row["visit_trigger"], row["visit_trigger"]),
    }


def render_all(frame: pl.DataFrame, renderer: Renderer) -> pl.DataFrame:
    """Bodies for every message; every template is compiled first, so a broken one fails before any send."""
    for locale, template in frame.select("locale", "template").unique().iter_rows():
        renderer.check(locale, template)
    bodies = [renderer.render(row["locale"], row["template"], _context(row)) for row in frame.iter_rows(named=True)]
    frame = frame.with_columns(pl.Series("body", bodies, dtype=pl.String))
    segments = [sms_segments(b) if c == "sms" else None for b, c in zip(bodies, frame["channel"])]
    return frame.with_columns(pl.Series("segments", segments, dtype=pl.Int32))


def write_outbox(con: duckdb.DuckDBPyConnection, frame: pl.DataFrame, as_of: datetime) -> int:
    """All new messages, queued, in one transaction; a message_id already there is left alone."""
    optional = {"expires_at": pl.Datetime("us", "UTC"), "tier": pl.String, "rank": pl.Int64, "rating": pl.Int32,
                "review_text": pl.String}
    frame = frame.with_columns(pl.lit(None, dtype=t).alias(c) for c, t in optional.items() if c not in frame.columns)
    rows = frame.select("message_id", "purpose", "shop_id", "order_id", "customer_id", "channel", "recipient",
                        "body", "template", "created_at", "segments", *optional)
    con.register("_new_messages", rows.to_arrow())
    try:
        with transaction(con):
            con.execute(
                "INSERT INTO ops.messages (message_id, purpose, shop_id, order_id, customer_id, channel, recipient, "
                "body, status, attempts, created_at, template, as_of, segments, expires_at, tier, rank, rating, "
                "review_text) "
                "SELECT message_id, purpose, shop_id, order_id, customer_id, channel, recipient, body, 'queued', 0, "
                "created_at, template, ?, segments, expires_at, tier, rank, rating, review_text FROM _new_messages "
                "ON CONFLICT (message_id) DO NOTHING",
                [as_of],
            )
    finally:
        con.unregister("_new_messages")
    return rows.height


# --------------------------------------------------------------------------------------------------
# sending


class _Recorder:
    """Collects outcomes and records them in ops.messages in batches: one UPDATE every `batch` outcomes or
    `every` seconds, whichever comes first.

    `target` is an open connection to write through, or a database path: then each batch opens its own
    short connection (open, UPDATE in a transaction, close: ~30 ms on a file of 20k messages), and
    between batches the file is free for other processes. The write is made at once, on the sending
    thread (a background thread would hold the file ~3x longer, waiting for the GIL); if another process
    holds the file, the batch goes to a writer thread that waits for it (connect's retry, `wait_seconds`)
    while sending goes on, and later batches follow it there until it is done. A batch whose wait runs out
    is kept and written with the next one; the last write waits up to `final_wait_seconds`. An outcome
    left unrecorded means the next run sends the message again: a webhook message is then accepted once
    thanks to its Idempotency-Key, an email is not."""

    def __init__(self, target: duckdb.DuckDBPyConnection | str | Path, batch: int = 1000, every: float = 0.5,
                 wait_seconds: float = 30.0, final_wait_seconds: float = 600.0):
        self.target, self.batch, self.every = target, batch, every
        self.wait_seconds, self.final_wait_seconds = wait_seconds, final_wait_seconds
        self.pending: list[Outcome] = []
        self.sent = self.failed = self.kept = 0
        self.failures: list[str] = []
        self.flushed = time.monotonic()
        self.writes = 0
        self.held_seconds = 0.0               # the file held open by the writes (path target)
        # outcomes a write could not record yet; touched by the writer thread while it works, else here
        self._unwritten: list[Outcome] = []
        self._error: BaseException | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crm-recorder")
        self._waiting: Future | None = None   # the writer thread's last job

    def add(self, outcome: Outcome) -> None:
        if self._error is not None:
            raise self._error                 # recording is broken: stop sending
        self.pending.append(outcome)
        if outcome.status == "sent":
            self.sent += 1
        elif outcome.transient:
            self.kept += 1                    # recorded (attempts, last_error), still queued
        else:
            self.failed += 1
            # the gateway's or SMTP server's answer may quote the recipient: masked, as these lines are logged
            self.failures.append(f"{outcome.message_id}: {redact(outcome.error or '')}")
        # a crash can lose the outcomes not yet written (one batch, or more while another process holds
        # the file); those messages are sent again with the same Idempotency-Key, accepted once
        if len(self.pending) >= self.batch or time.monotonic() - self.flushed >= self.every:
            self.flush()

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        self.flushed = time.monotonic()
        if not batch:
            return
        if self._waiting is not None and not self._waiting.done():
            self._waiting = self._writer.submit(self._write, batch, self.wait_seconds)   # behind the waiting one
        elif not self._write(batch, 0.0):   # at once, if the file is free
            if self._error is not None:
                raise self._error
            batch, self._unwritten = self._unwritten, []
            self._waiting = self._writer.submit(self._write, batch, self.wait_seconds)

    def close(self) -> None:
        """Write everything still pending, waiting for the file as long as `final_wait_seconds`; raise if
        some outcomes stay unrecorded."""
        self._writer.shutdown(wait=True)
        batch, self.pending = self.pending, []
        if not self._write(batch, self.final_wait_seconds):
            raise self._error or DatabaseLocked(f"{self.target}: {len(self._unwritten)} outcomes could not be "
                                                "recorded; their messages stay queued for the next run")

    def _write(self, batch: list[Outcome], wait_seconds: float) -> bool:
        """Record the outcomes kept from earlier and `batch`; False (and kept) if the file stayed locked."""
        batch = self._unwritten + batch
        if not batch:
            return True
        try:
            self._record(batch, wait_seconds)
        except DatabaseLocked as e:
            self._unwritten = batch
            if wait_seconds:
                log.warning("%d outcomes wait to be recorded: %s", len(batch), e)
            return False
        except BaseException as e:
            self._unwritten, self._error = batch, e
            log.error("recording %d outcomes failed: %s", len(batch), e)
            return False
        self._unwritten = []
        self.writes += 1
        return True

    def _record(self, batch: list[Outcome], wait_seconds: float) -> None:
        frame = _outcomes_frame(batch)
        if isinstance(self.target, duckdb.DuckDBPyConnection):
            _update(self.target, frame)       # never locked: always written at once, on the caller's thread
            return
        started = time.monotonic()
        con = connect(self.target, wait_seconds=wait_seconds, setup=False)
        try:
            _update(con, frame)
        finally:
            con.close()
            self.held_seconds += time.monotonic() - started     # open + write + close (with any wait before)


def _outcomes_frame(batch: list[Outcome]):
    return pl.DataFrame({
        "message_id": [o.message_id for o in batch],
        "status": [o.status for o in batch],
        "attempts": [o.attempts for o in batch],
        "error": [o.error for o in batch],
        "sent_at": [o.sent_at for o in batch],
    }, schema={"message_id": pl.String, "status": pl.String, "attempts": pl.Int32, "error": pl.String,
               "sent_at": pl.Datetime("us", "UTC")}).to_arrow()


def _update(con: duckdb.DuckDBPyConnection, outcomes) -> None:
    """Record outcomes (an Arrow table) on the messages still queued: a message already recorded keeps
    its record, so writing a batch twice changes nothing."""
    con.register("_outcomes", outcomes)
    try:
        with transaction(con):
            con.execute(
                "UPDATE ops.messages AS m SET status = o.status, attempts = m.attempts + o.attempts, "
                "sent_at = o.sent_at, last_error = o.error FROM _outcomes AS o "
                "WHERE m.message_id = o.message_id AND m.status = 'queued'"
            )
    finally:
        con.unregister("_outcomes")


def queued_messages(con: duckdb.DuckDBPyConnection, as_of: datetime, channels=AUTOMATIC,
                    ids: list[str] | None = None) -> list[dict]:
    """The queued automatic messages a send at T takes up (sql/dispatch/send_queue.sql), oldest first, each
    checked again for T: ``fail_reason`` when it may no longer go, ``wait_reason`` when it must wait.
    `ids`: only those (a batch about to go)."""
    cursor = con.execute(sql_text("dispatch/send_queue.sql"),
                         {"as_of": as_of, "channels": [c for c in channels if c in AUTOMATIC], "ids": ids})
    cols = [d[0] for d in cursor.description]
    return [dict(zip(cols, r)) for r in cursor.fetchall()]


class GatewayDown(Exception):
    """A send left messages queued because a gateway (or the SMTP server) could not be reached: one line for
    the user, and the run's summary (``summary``) for whoever prints it."""

    def __init__(self, message: str, summary: dict | None = None):
        super().__init__(message)
        self.summary = summary


@dataclass
class SendResult:
    sent: int = 0
    failed: int = 0                   # for good: a permanent answer, in doubt, or no longer allowed to go
    withdrawn: int = 0                # of those, failed unsent at the check before their batch (fail_reason)
    in_doubt: int = 0                 # of those, e-mails a run that died may have handed over already
    kept: int = 0                     # every attempt failed transiently: still queued, for a later run
    skipped: int = 0                  # not attempted: their gateway looked down; still queued
    waiting: int = 0                  # not attempted: quiet hours or the daily cap at T; still queued
    failures: list[str] = field(default_factory=list)
    down: dict[str, str] = field(default_factory=dict)    # 'gateway' / 'smtp' -> why it looked down
    last_transient: dict[str, str] = field(default_factory=dict)   # sender -> the last transient error
    writes: int = 0
    held_seconds: float = 0.0
    checks: int = 0                   # batches checked again just before they went

    def problem(self, settings) -> str | None:
        """One line when messages stayed queued for a gateway that could not be reached, else None."""
        if not (self.kept or self.skipped):
            return None
        where = {"gateway": f"the SMS/chat gateway {settings.gateway.webhook_url}",
                 "smtp": f"the SMTP server {settings.smtp.host}:{settings.smtp.port}"}
        if self.down:
            what = "; ".join(f"{where[k]} looks down ({why})" for k, why in self.down.items())
            return (f"{what}: stopped sending there; {self.kept + self.skipped:,} messages stay queued for the "
                    f"next run (sent {self.sent:,}, failed {self.failed:,})")
        errors = "; ".join(f"{where[k]}: {e}" for k, e in self.last_transient.items())
        return (f"{self.kept:,} messages could not be sent after {settings.gateway.max_attempts} attempts each and "
                f"stay queued for the next run ({errors}); sent {self.sent:,}, failed {self.failed:,}")


class _Breaker:
    """A sender looks down after `limit` messages in a row failed transiently (each after all its attempts);
    a message sent, or refused for good (the gateway answered), resets the count."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row, self.why = limit, 0, None

    @property
    def open(self) -> bool:
        return self.why is not None

    def record(self, outcome: Outcome) -> None:
        if not outcome.transient:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        if self.in_a_row >= self.limit and self.why is None:
            self.why = f"{self.in_a_row} messages in a row failed: {redact(outcome.error or '')}"


def _sender(msg: dict) -> str:
    return "smtp" if msg["channel"] == "email" else "gateway"


class _Senders:
    """The run's connections to the gateway (httpx clients) and the SMTP server, with a breaker for each; sends
    one batch at a time. E-mail goes at most once: each is written to the send journal before it goes."""

    def __init__(self, settings, recorder: _Recorder, result: SendResult, journal: SendJournal, step=None):
        gw, smtp_cfg = settings.gateway, settings.smtp
        self.gw, self.recorder, self.result, self.journal, self.step = gw, recorder, result, journal, step
        self.smtp = SmtpSender(smtp_cfg.host, smtp_cfg.port, smtp_cfg.sender, smtp_cfg.username, smtp_cfg.password,
                               smtp_cfg.starttls, timeout=gw.timeout_seconds)
        self.smtp_lock = asyncio.Lock()
        self.breakers = {"gateway": _Breaker(gw.down_after), "smtp": _Breaker(gw.down_after)}
        self.debug = log.isEnabledFor(logging.DEBUG)
        # several small connection pools rather than one big one: httpcore's pool does work proportional
        # to its size for every request, so one pool of 64 is ~3x slower than 16 pools of 4.
        # TCP_NODELAY: a request's head and body go out at once, not held back by Nagle's algorithm.
        per_pool = 4
        timeout = httpx.Timeout(gw.timeout_seconds)
        self.clients = [
            httpx.AsyncClient(timeout=timeout, transport=httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool),
                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]))
            for _ in range(max(1, -(-gw.concurrency // per_pool)))
        ]
        self.sent_so_far = 0

    def all_down(self, messages: list[dict]) -> bool:
        return all(self.breakers[_sender(m)].open for m in messages)

    async def _send(self, i: int, msg: dict) -> Outcome:
        gw = self.gw
        if msg["channel"] == "email":
            async with self.smtp_lock:
                return await asyncio.to_thread(self.smtp.send, msg, max_attempts=gw.max_attempts,
                                               base_delay=gw.backoff_seconds, journal=self.journal)
        return await send_webhook(self.clients[i % len(self.clients)], gw.webhook_url, msg,
                                  max_attempts=gw.max_attempts, base_delay=gw.backoff_seconds, token=gw.token)

    async def one(self, i: int, msg: dict) -> None:
        breaker = self.breakers[_sender(msg)]
        if breaker.open:
            self.result.skipped += 1          # left queued, untouched: the next run sends it
            return
        try:
            outcome = await self._send(i, msg)
        except Exception as e:                # one message's failure never stops the others
            log.error("sending %s failed unexpectedly: %s: %s", msg["message_id"], type(e).__name__, redact(str(e)))
            outcome = Outcome(msg["message_id"], "failed", 1,
                              f"not sent: unexpected error {type(e).__name__}: {redact(str(e))[:200]}")
        breaker.record(outcome)
        if outcome.transient:
            self.result.last_transient[_sender(msg)] = redact(outcome.error or "")
        self.recorder.add(outcome)
        if self.debug:
            to = mask_email(msg["recipient"]) if msg["channel"] == "email" else mask_phone(msg["recipient"])
            log.debug("%s %s to %s: %s after %d attempt(s)", msg["channel"], msg["message_id"], to, outcome.status,
                      outcome.attempts)
        if self.step:
            self.step("send", 1)

    async def batch(self, messages: list[dict]) -> None:
        """A fixed crew of `concurrency` workers taking the next message, rather than a task per message."""
        pending = iter(enumerate(messages, start=self.sent_so_far))
        self.sent_so_far += len(messages)

        async def worker() -> None:
            for i, msg in pending:
                await self.one(i, msg)

        await asyncio.gather(*(worker() for _ in range(min(self.gw.concurrency, max(1, len(messages))))))

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()
        await asyncio.to_thread(self.smtp.close)
        self.result.down = {k: b.why for k, b in self.breakers.items() if b.open}


def _db_path(target: duckdb.DuckDBPyConnection | str | Path) -> Path:
    if isinstance(target, duckdb.DuckDBPyConnection):
        return Path(target.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()")
                    .fetchone()[0])
    return Path(target)


class _Reader:
    """The checks before each batch: through the open connection, or a short one of its own (a writing one,
    like the recorder's, as DuckDB allows one kind of connection to a file per process)."""

    def __init__(self, target, settings):
        self.target, self.zones, self.held = target, [(s.shop_id, s.timezone) for s in settings.shops], 0.0

    def __call__(self, as_of: datetime, channels, ids: list[str] | None = None) -> list[dict]:
        if isinstance(self.target, duckdb.DuckDBPyConnection):
            return queued_messages(self.target, as_of, channels, ids)
        opened = time.monotonic()
        con = connect(self.target, setup=False)
        try:
            con.execute(sql_text("macros.sql"))
            shop_macros(con, self.zones)
            return queued_messages(con, as_of, channels, ids)
        finally:
            con.close()
            self.held += time.monotonic() - opened

    def write(self, outcomes: list[Outcome]) -> None:
        """Record outcomes now, waiting for the file (used before any send: nothing may be lost)."""
        frame = _outcomes_frame(outcomes)
        if isinstance(self.target, duckdb.DuckDBPyConnection):
            _update(self.target, frame)
            return
        con = connect(self.target, wait_seconds=600, setup=False)
        try:
            _update(con, frame)
        finally:
            con.close()


def _settle_journal(reader: _Reader, journal: SendJournal, queued: dict[str, dict]) -> tuple[set[str], int, int]:
    """E-mails a run that died left in the journal: last seen accepted -> recorded sent; begun but not
    answered -> in doubt, failed (never sent again automatically). Returns (their ids, sent, in doubt)."""
    marks = journal.last_marks()
    now = datetime.now(timezone.utc)
    outcomes = [Outcome(mid, "sent", 0, sent_at=now) for mid, mark in marks.items() if mark == "+" and mid in queued]
    outcomes += [Outcome(mid, "failed", 0, IN_DOUBT) for mid, mark in marks.items() if mark == "?" and mid in queued]
    if outcomes:
        reader.write(outcomes)
        log.warning("the send journal of a run that stopped: %d e-mails recorded as sent, %d in doubt (failed, "
                    "not sent again)", sum(o.status == "sent" for o in outcomes), sum(o.status == "failed" for o in outcomes))
    journal.clear()
    return ({o.message_id for o in outcomes}, sum(o.status == "sent" for o in outcomes),
            sum(o.status == "failed" for o in outcomes))


BATCH = 500     # messages checked again together just before they go


def send_queued(target: duckdb.DuckDBPyConnection | str | Path, settings, as_of: datetime, step=None,
                channels=AUTOMATIC, batch: int = BATCH) -> SendResult:
    """Send every queued automatic message that may still go at T. `target` is an open connection (kept for
    the whole send) or the database's path: then the file is opened only briefly, to check each batch and to
    record outcomes.

    First the send journal of a run that died is settled (e-mails go at most once). Then, batch by batch,
    every message is checked again just before it goes (sql/dispatch/send_queue.sql): one that may no longer
    go fails unsent with the reason, one that must wait (quiet hours, the daily cap) stays queued untouched.
    A message whose every attempt fails transiently stays queued; when `gateway.down_after` messages in a row
    do so on one sender (the webhook gateway, or SMTP), the run stops sending there and leaves the rest
    queued. The caller decides what a result with kept or skipped messages means (SendResult.problem)."""
    result = SendResult()
    reader = _Reader(target, settings)
    journal = SendJournal(_db_path(target))
    queued = {m["message_id"]: m for m in reader(as_of, channels)}
    settled, result.sent, result.in_doubt = _settle_journal(reader, journal, queued)
    ids = [mid for mid in queued if mid not in settled]
    recorder = _Recorder(target)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            senders = _Senders(settings, recorder, result, journal, step)
            try:
                for start in range(0, len(ids), batch):
                    chunk = ids[start:start + batch]
                    # checked again just before it goes (the first batch was checked a moment ago)
                    rows = [queued[i] for i in chunk] if start == 0 else reader(as_of, channels, chunk)
                    if start:
                        result.checks += 1
                    go = []
                    for msg in rows:
                        if msg["fail_reason"]:
                            recorder.add(Outcome(msg["message_id"], "failed", 0, msg["fail_reason"]))
                            result.withdrawn += 1
                        elif msg["wait_reason"]:
                            result.waiting += 1
                        else:
                            go.append(msg)
                    if go and senders.all_down(go):
                        result.skipped += len(go)
                        continue
                    runner.run(senders.batch(go))
            finally:
                runner.run(senders.aclose())
    finally:
        recorder.close()
    # every outcome is recorded: what the journal said is in the database now
    journal.clear()
    result.sent += recorder.sent
    result.failed = recorder.failed + result.in_doubt
    result.failures = recorder.failures
    result.kept = recorder.kept
    result.writes, result.held_seconds = recorder.writes, reader.held + recorder.held_seconds
    return result


# --------------------------------------------------------------------------------------------------
# the run


def prepare(con, as_of: datetime, *, dry_run: bool, validate=None, renderer: Renderer | None = None,
            channels=None):
    """Plan (or, dry, only build), list the new messages (of `channels` only, if given), validate and
    render them."""
    retired = build(con, as_of) if dry_run else plan(con, as_of).retired_shops
    frame = outbox(con, as_of)
    if channels:
        frame = frame.filter(pl.col("channel").is_in(list(channels)))
    checks = validate(con, frame, as_of) if validate is not None else []
    return render_all(frame, renderer or Renderer()), checks, retired


def requeue_failed(con, channels=AUTOMATIC, *, dry_run: bool = False) -> int:
    """`crm dispatch --retry-failed`: the failed automatic messages (of `channels`) queued again under the
    same id, so this run sends them (each is checked again before it goes, like any queued message); until
    the send records its new outcome, last_error keeps the old one, prefixed 'retried after: '. A dry run only
    counts them."""
    wanted = [c for c in channels if c in AUTOMATIC]
    if dry_run:
        return con.execute("SELECT count(*) FROM ops.messages WHERE status = 'failed' AND list_contains(?, channel)",
                           [wanted]).fetchone()[0]
    with transaction(con):
        return len(con.execute(
            "UPDATE ops.messages SET status = 'queued', last_error = 'retried after: ' || coalesce(last_error, '') "
            "WHERE status = 'failed' AND list_contains(?, channel) RETURNING message_id", [wanted]).fetchall())


def dispatch(con, settings, as_of: datetime, *, dry_run: bool = False, validate=None, renderer=None,
             step=None, send: bool = True, channels=None, retry_failed: bool = False) -> DispatchResult:
    """Plan, validate, render and write the outbox through `con`; then, with `send`, send the queued
    messages through it too. A flow uses :func:`dispatch_db`, which sends without holding the file.
    `channels` (e.g. ["call"]) limits the run to those channels: the others' messages are neither created
    nor sent, and a later run creates them (their message_id does not exist yet). `retry_failed` first
    queues the failed messages again (requeue_failed)."""
    started = time.perf_counter()
    result = DispatchResult(as_of=as_of, dry_run=dry_run)
    frame, result.validation, result.retired_shops = prepare(con, as_of, dry_run=dry_run, validate=validate,
                                                             renderer=renderer, channels=channels)
    result.created = {f"{p}/{c}": n for p, c, n in frame.group_by("purpose", "channel").len().sort("purpose", "channel").iter_rows()}
    result.long_sms = frame.filter(pl.col("segments") > 1).height
    result.calls_queued = frame.filter(pl.col("channel") == "call").height
    if retry_failed:
        result.requeued = requeue_failed(con, channels or AUTOMATIC, dry_run=dry_run)
    if dry_run:
        # one message of each template first, so a short preview shows every kind
        result.preview = (frame.sort("message_id")
                          .with_columns(pl.int_range(pl.len()).over("template").alias("_nth"))
                          .sort("_nth", "template")
                          .select("message_id", "purpose", "channel", "recipient", "template", "body", "segments")
                          .to_dicts())
        result.seconds = time.perf_counter() - started
        return result
    write_outbox(con, frame, as_of)
    if send:
        result.take(send_queued(con, settings, as_of, step, channels=channels or AUTOMATIC), settings)
    result.seconds = time.perf_counter() - started
    return result


def dispatch_db(db: str | Path, settings, as_of: datetime, *, dry_run: bool = False, validate=None, renderer=None,
                step=None, channels=None, retry_failed: bool = False) -> DispatchResult:
    """A flow's dispatch on the database file `db`, holding the file only while it writes: plan, outbox,
    validate, render and write the outbox in one session (closed before sending), then send through short
    connections, then publish the analysts' snapshot in a last short one. The caller keeps other
    dispatches out (flows.dispatch holds ``<db>.dispatch.lock``)."""
    started = time.perf_counter()
    with session(db, settings) as con:
        result = dispatch(con, settings, as_of, dry_run=dry_run, validate=validate, renderer=renderer, step=step,
                          send=False, channels=channels, retry_failed=retry_failed)
    held = time.perf_counter() - started
    if not dry_run:
        sent = send_queued(Path(db), settings, as_of, step, channels=channels or AUTOMATIC)
        result.take(sent, settings)
        held += sent.held_seconds
        opened = time.perf_counter()
        con = connect(db, setup=False)
        try:
            publish_snapshot(con, db)
        finally:
            con.close()
            held += time.perf_counter() - opened
    result.seconds = time.perf_counter() - started
    result.db_seconds = held
    log.debug("dispatch at %s held the database %.2f s of %.2f s", as_of.isoformat(), held, result.seconds)
    return result
