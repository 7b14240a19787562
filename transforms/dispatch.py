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
sending; the queued messages listed through a short connection; then, while sending, about once a second a
short connection (open, record the outcomes so far in one UPDATE, check the next batch, close) on a thread
of its own, so that sending goes on meanwhile; the analysts' snapshot in a last short one. Between them
others (the agents' page, a plan) get in, and a write that meets them waits. Two dispatches never overlap:
the flow holds ``<db>.dispatch.lock`` for the whole run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from functools import partial
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import httpx
import polars as pl
import pyarrow as pa
import uvloop

from crm.channels import Outcome, SmtpSender, WebhookClient, send_webhook
from crm.journal import SendJournal, in_doubt
from crm.kannel import send_kannel
from crm.db import DatabaseLocked, connect, publish, session, shop_macros, sql_text, transaction
from crm.storage import layout
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
                "review_text": pl.String, "customer_segment": pl.String, "variant": pl.String}
    frame = frame.with_columns(pl.lit(None, dtype=t).alias(c) for c, t in optional.items() if c not in frame.columns)
    rows = frame.select("message_id", "purpose", "shop_id", "order_id", "customer_id", "channel", "recipient",
                        "body", "template", "created_at", "segments", *optional)
    con.register("_new_messages", rows.to_arrow())

    def write() -> None:
        with transaction(con):
            con.execute(
                f"INSERT INTO {layout.ops_table(con, 'messages')} (message_id, purpose, shop_id, order_id, customer_id, channel, recipient, "
                "body, status, attempts, created_at, template, as_of, segments, expires_at, tier, rank, rating, "
                "review_text, customer_segment, variant) "
                "SELECT message_id, purpose, shop_id, order_id, customer_id, channel, recipient, body, 'queued', 0, "
                "created_at, template, ?, segments, expires_at, tier, rank, rating, review_text, customer_segment, "
                "variant FROM _new_messages "
                "ON CONFLICT (message_id) DO NOTHING",
                [as_of],
            )

    try:
        # on the lake, two workers of one shop's outbox may write the same message at once: the one whose COPY
        # meets the other's commit writes again and skips it (crm/storage/layout.py)
        layout.skip_what_others_wrote(write)
    finally:
        con.unregister("_new_messages")
    return rows.height


# --------------------------------------------------------------------------------------------------
# sending


class _Database:
    """The run's use of the database while it sends: the check before each batch and the recorder's writes, one
    at a time on a thread of its own, so that sending goes on meanwhile (DuckDB releases the GIL as it works).

    `target` is an open connection (kept for the whole send: then every job runs at once, on the caller's
    thread) or the database's path: then each job opens its own short writing connection (DuckDB allows one
    kind of connection to a file per process), does its one thing and closes it, and between jobs the file is
    free for other processes."""

    def __init__(self, target: duckdb.DuckDBPyConnection | str | Path, settings):
        self.target, self.zones = target, [(s.shop_id, s.timezone) for s in settings.shops]
        self.sending_since = datetime.now(timezone.utc)     # what this run sends is sent after this
        self.held = 0.0                       # the file held open by this run's jobs (path target)
        self._thread = (None if isinstance(target, duckdb.DuckDBPyConnection)
                        else ThreadPoolExecutor(max_workers=1, thread_name_prefix="crm-db"))
        self._shared: duckdb.DuckDBPyConnection | None = None     # the connection of `together`, while it runs

    def submit(self, fn, *args) -> Future:
        """`fn(*args)` on the database thread, after the jobs submitted before it."""
        if self._thread is not None:
            return self._thread.submit(fn, *args)
        done: Future = Future()
        try:
            done.set_result(fn(*args))
        except BaseException as e:
            done.set_exception(e)
        return done

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)

    @contextmanager
    def _connection(self, wait_seconds: float = 30.0, *, macros: bool = False):
        if isinstance(self.target, duckdb.DuckDBPyConnection) or self._shared is not None:
            yield self._shared or self.target
            return
        opened = time.monotonic()
        con = connect(self.target, wait_seconds=wait_seconds, setup=False)
        try:
            if macros:
                con.execute(sql_text("macros.sql"))
                shop_macros(con, self.zones)
            yield con
        finally:
            con.close()
            self.held += time.monotonic() - opened     # open + work + close (with any wait before)

    def check(self, as_of: datetime, channels, ids: list[str] | None = None) -> tuple[list[dict], float]:
        """The queued messages (`ids` only, if given) checked for T (queued_messages), and when the check began."""
        began = time.monotonic()
        with self._connection(macros=True) as con:
            return queued_messages(con, as_of, channels, ids, self.sending_since), began

    def together(self, write, check_args: tuple) -> tuple[list[dict], float]:
        """A recorder's write job (or None), then a check (`check_args` as for check), in one short connection.
        If the file stays held by another process (connect gives up), the write is kept for a later one and
        DatabaseLocked raised, as a check alone would."""
        if write is None:
            return self.check(*check_args)
        try:
            with self._connection(macros=True) as con:
                self._shared = con
                try:
                    write()
                    return self.check(*check_args)
                finally:
                    self._shared = None
        except DatabaseLocked:       # the connection could not be opened (nothing ran in it)
            write()                  # on its own: if the file stays held, its outcomes wait for a later write
            raise

    def receipts_for(self, ids: list[str]) -> set[str]:
        """Those of `ids` that a delivery receipt names (the gateway had the message)."""
        with self._connection() as con:
            return {r[0] for r in con.execute(
                "SELECT DISTINCT message_id FROM ops.delivery_receipts WHERE message_id IN (SELECT unnest(?::VARCHAR[]))",
                [ids]).fetchall()}

    def update(self, outcomes: list[Outcome], wait_seconds: float) -> None:
        frame = _outcomes_frame(outcomes)
        with self._connection(wait_seconds) as con:
            _update(con, frame)


class _Recorder:
    """Collects outcomes and records them in ops.messages in batches: when a batch of messages starts (in
    the connection that checks the next one, :meth:`take`), or after `batch` outcomes or `every` seconds
    (a batch that sends slowly), whichever comes first.

    Each write is a job on the run's database thread (`db`, :class:`_Database`: on a database path, a short
    connection, ~30 ms on a file of 20k messages), so sending goes on while it writes. If another
    process holds the file, the write waits for it (connect's retry, `wait_seconds`) and later writes queue
    behind it while sending goes on; a batch whose wait runs out is kept and written with the next one; the
    last write waits up to `final_wait_seconds`. An outcome left unrecorded means the next run sends the message
    again: a webhook message is then accepted once thanks to its Idempotency-Key, an email is not (the send
    journal settles those)."""

    def __init__(self, db: _Database, batch: int = 5000, every: float = 2.0, wait_seconds: float = 30.0,
                 final_wait_seconds: float = 600.0):
        self.db, self.batch, self.every = db, batch, every
        self.wait_seconds, self.final_wait_seconds = wait_seconds, final_wait_seconds
        self.pending: list[Outcome] = []
        self.sent = self.failed = self.kept = 0
        self.failures: list[str] = []
        self.flushed = time.monotonic()
        self.writes = 0
        # outcomes a write could not record yet: touched only by the database thread's jobs
        self._unwritten: list[Outcome] = []
        self._error: BaseException | None = None

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
        # a crash can lose the outcomes not yet written (a batch or two, or more while another process holds
        # the file); those messages are sent again with the same Idempotency-Key, accepted once
        if len(self.pending) >= self.batch or time.monotonic() - self.flushed >= self.every:
            self.flush()

    def flush(self) -> None:
        write = self.take()
        if write is not None:
            self.db.submit(write)

    def take(self):
        """The outcomes pending as a write job for the database thread (None if there are none)."""
        batch, self.pending = self.pending, []
        self.flushed = time.monotonic()
        return partial(self._write, batch, self.wait_seconds) if batch else None

    def close(self) -> None:
        """Write everything still pending, after the writes before it, waiting for the file as long as
        `final_wait_seconds`; raise if some outcomes stay unrecorded."""
        batch, self.pending = self.pending, []
        if not self.db.submit(self._write, batch, self.final_wait_seconds).result():
            raise self._error or DatabaseLocked(f"{self.db.target}: {len(self._unwritten)} outcomes could not be "
                                                "recorded; their messages stay queued for the next run")

    def _write(self, batch: list[Outcome], wait_seconds: float) -> bool:
        """Record the outcomes kept from earlier and `batch`; False (and kept) if the file stayed locked."""
        batch = self._unwritten + batch
        if not batch:
            return True
        try:
            self.db.update(batch, wait_seconds)
        except DatabaseLocked as e:
            self._unwritten = batch
            log.warning("%d outcomes wait to be recorded: %s", len(batch), e)
            return False
        except BaseException as e:
            self._unwritten, self._error = batch, e
            log.error("recording %d outcomes failed: %s", len(batch), e)
            return False
        self._unwritten = []
        self.writes += 1
        return True


def _outcomes_frame(batch: list[Outcome]) -> pa.Table:
    return pa.table({
        "message_id": pa.array([o.message_id for o in batch], pa.string()),
        "status": pa.array([o.status for o in batch], pa.string()),
        "attempts": pa.array([o.attempts for o in batch], pa.int32()),
        "error": pa.array([o.error for o in batch], pa.string()),
        "sent_at": pa.array([o.sent_at for o in batch], pa.timestamp("us", tz="UTC")),
    })


def _update(con: duckdb.DuckDBPyConnection, outcomes: pa.Table) -> None:
    """Record outcomes on the messages still queued, in one statement (so all or none): a message already
    recorded keeps its record, so writing a batch twice changes nothing."""
    con.register("_outcomes", outcomes)
    try:
        con.execute(
            "UPDATE ops.messages AS m SET status = o.status, attempts = m.attempts + o.attempts, "
            "sent_at = o.sent_at, last_error = o.error FROM _outcomes AS o "
            "WHERE m.message_id = o.message_id AND m.status = 'queued'"
        )
    finally:
        con.unregister("_outcomes")


def queued_messages(con: duckdb.DuckDBPyConnection, as_of: datetime, channels=AUTOMATIC,
                    ids: list[str] | None = None, sent_since: datetime | None = None) -> list[dict]:
    """The queued automatic messages a send at T takes up (sql/dispatch/send_queue.sql), oldest first, each
    checked again for T: ``fail_reason`` when it may no longer go, ``wait_reason`` when it must wait.
    `ids`: only those (a batch about to go); `sent_since`: when the run began sending (what it sent since
    counts for T's day in the daily cap, whatever day the clock says)."""
    cursor = con.execute(sql_text("dispatch/send_queue.sql"),
                         {"as_of": as_of, "channels": [c for c in channels if c in AUTOMATIC], "ids": ids,
                          "sent_since": sent_since})
    cols = [d[0] for d in cursor.description]
    return [dict(zip(cols, r)) for r in cursor.fetchall()]


class ClaimLost(Exception):
    """Raised by a journal's begin() when the message may not go (transforms/dispatch_pg.py: the worker's claim on
    it ran out and another worker may hold it now): nothing went out, and no outcome is recorded."""


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
    lost: int = 0                     # not sent: the worker's claim ran out first (transforms/dispatch_pg.py)

    def problem(self, settings) -> str | None:
        """One line when messages stayed queued for a gateway that could not be reached, else None."""
        if not (self.kept or self.skipped):
            return None
        gw = settings.gateway
        where = {"gateway": (f"Kannel {gw.sendsms_url}" if gw.kind == "kannel" else f"the SMS/chat gateway {gw.webhook_url}"),
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
    """The run's connections to the gateway (a WebhookClient, or for `kind = "kannel"` an httpx client for the
    SMS, opened in the loop on first use) and the SMTP server, with a breaker for each; sends one batch at a
    time. E-mail and SMS to Kannel go at most once: each is written to the send journal before it goes."""

    def __init__(self, settings, recorder: _Recorder, result: SendResult, journal: SendJournal, step=None):
        gw, smtp_cfg = settings.gateway, settings.smtp
        self.gw, self.recorder, self.result, self.journal, self.step = gw, recorder, result, journal, step
        self.smtp = SmtpSender(smtp_cfg.host, smtp_cfg.port, smtp_cfg.sender, smtp_cfg.username, smtp_cfg.password,
                               smtp_cfg.starttls, timeout=gw.timeout_seconds)
        self.smtp_lock = asyncio.Lock()
        self.breakers = {"gateway": _Breaker(gw.down_after), "smtp": _Breaker(gw.down_after)}
        self.debug = log.isEnabledFor(logging.DEBUG)
        self.webhook: WebhookClient | None = None
        self.kannel: httpx.AsyncClient | None = None          # kind kannel: SMS, at most once (crm/kannel.py)
        self.signer = None
        if gw.signing_secret:
            from standardwebhooks.webhooks import Webhook

            self.signer = Webhook(gw.signing_secret)

    def all_down(self, messages: list[dict]) -> bool:
        return all(self.breakers[_sender(m)].open for m in messages)

    async def _send(self, msg: dict) -> Outcome:
        gw = self.gw
        if msg["channel"] == "email":
            async with self.smtp_lock:
                return await asyncio.to_thread(self.smtp.send, msg, max_attempts=gw.max_attempts,
                                               base_delay=gw.backoff_seconds, journal=self.journal)
        if gw.kind == "kannel" and msg["channel"] == "sms":
            if self.kannel is None:
                self.kannel = httpx.AsyncClient(timeout=gw.timeout_seconds,
                                                limits=httpx.Limits(max_connections=gw.concurrency))
            return await send_kannel(self.kannel, gw, msg, journal=self.journal)
        if self.webhook is None:
            self.webhook = WebhookClient(gw.webhook_url, timeout=gw.timeout_seconds)
        return await send_webhook(self.webhook, msg, max_attempts=gw.max_attempts, base_delay=gw.backoff_seconds,
                                  token=gw.token, signer=self.signer)

    async def one(self, msg: dict) -> None:
        breaker = self.breakers[_sender(msg)]
        if breaker.open:
            self.result.skipped += 1          # left queued, untouched: the next run sends it
            return
        try:
            outcome = await self._send(msg)
        except ClaimLost:                     # another worker holds it now: not sent, nothing to record
            self.result.lost += 1
            return
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
        pending = iter(messages)

        async def worker() -> None:
            for msg in pending:
                await self.one(msg)

        await asyncio.gather(*(worker() for _ in range(min(self.gw.concurrency, max(1, len(messages))))))

    async def aclose(self) -> None:
        if self.webhook is not None:
            await self.webhook.aclose()
        if self.kannel is not None:
            await self.kannel.aclose()
        await asyncio.to_thread(self.smtp.close)
        self.result.down = {k: b.why for k, b in self.breakers.items() if b.open}


def _db_path(target: duckdb.DuckDBPyConnection | str | Path) -> Path:
    if isinstance(target, duckdb.DuckDBPyConnection):
        return Path(target.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()")
                    .fetchone()[0])
    return Path(target)


def _settle_journal(db: _Database, journal: SendJournal, queued: dict[str, dict]) -> tuple[set[str], int, int]:
    """Messages a run that died left in the journal (e-mails, and SMS to Kannel: both go at most once): last
    seen accepted, or with a delivery receipt already in -> recorded sent; begun but not answered -> in
    doubt, failed (never sent again automatically; a later receipt settles it as sent, crm/hooks.py).
    Returns (their ids, sent, in doubt)."""
    marks = {mid: mark for mid, mark in journal.last_marks().items() if mid in queued}
    doubtful = [mid for mid, mark in marks.items() if mark == "?"]
    received = db.submit(db.receipts_for, doubtful).result() if doubtful else set()
    now = datetime.now(timezone.utc)
    outcomes = [Outcome(mid, "sent", 0, sent_at=now) for mid, mark in marks.items()
                if mark == "+" or (mark == "?" and mid in received)]
    outcomes += [Outcome(mid, "failed", 0, in_doubt(queued[mid]["channel"])) for mid in doubtful if mid not in received]
    if outcomes:
        # recorded now, waiting for the file (before any send: nothing may be lost)
        db.submit(db.update, outcomes, 600.0).result()
        log.warning("the send journal of a run that stopped: %d messages recorded as sent, %d in doubt (failed, "
                    "not sent again)", sum(o.status == "sent" for o in outcomes), sum(o.status == "failed" for o in outcomes))
    journal.clear()
    return ({o.message_id for o in outcomes}, sum(o.status == "sent" for o in outcomes),
            sum(o.status == "failed" for o in outcomes))


# Messages are checked again in batches of about a second's sending (at the rate of the batch before), the
# next batch's check made while a batch sends, in the same short connection as the outcomes recorded then.
FIRST_BATCH = 500           # the first batch (checked by the run's first listing, a moment before)
BATCH_SECONDS = 1.0
MIN_BATCH, MAX_BATCH = 100, 5000
FRESH_SECONDS = 1.0         # a batch's check older than this when the batch starts (a slow gateway) is made again


def _batch_size(sent: int, seconds: float) -> int:
    """The next batch: what goes in about BATCH_SECONDS at the rate of the last one (sent in seconds)."""
    if sent <= 0 or seconds <= 0:
        return MIN_BATCH
    return max(MIN_BATCH, min(MAX_BATCH, round(sent / seconds * BATCH_SECONDS)))


def send_queued(target: duckdb.DuckDBPyConnection | str | Path, settings, as_of: datetime, step=None,
                channels=AUTOMATIC, batch: int | None = None, fresh_seconds: float = FRESH_SECONDS) -> SendResult:
    """Send every queued automatic message that may still go at T. `target` is an open connection (kept for
    the whole send) or the database's path: then the file is opened only briefly, to check each batch and to
    record outcomes, on a thread of its own while sending goes on.

    First the send journal of a run that died is settled (e-mails go at most once). Then, batch by batch,
    every message is checked again shortly before it goes (sql/dispatch/send_queue.sql): one that may no
    longer go fails unsent with the reason, one that must wait (quiet hours, the daily cap) stays queued
    untouched. A batch is about BATCH_SECONDS of sending (`batch` messages, if given); the next batch is
    checked when a batch starts, while it sends, so a message's check is at most about two batches old when
    it goes, and a check older than `fresh_seconds` when its batch starts (a slow gateway) is made again
    first. A message whose every attempt fails transiently stays queued; when `gateway.down_after` messages
    in a row do so on one sender (the webhook gateway, or SMTP), the run stops sending there and leaves the
    rest queued. The caller decides what a result with kept or skipped messages means (SendResult.problem)."""
    result = SendResult()
    db = _Database(target, settings)
    try:
        journal = SendJournal(_db_path(target))
        queued = {m["message_id"]: m for m in db.submit(db.check, as_of, channels).result()[0]}
        settled, result.sent, result.in_doubt = _settle_journal(db, journal, queued)
        ids = [mid for mid in queued if mid not in settled]
        recorder = _Recorder(db)
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                senders = _Senders(settings, recorder, result, journal, step)
                try:
                    start, size = 0, batch or FIRST_BATCH
                    chunk, rows = ids[:size], [queued[i] for i in ids[:size]]      # checked a moment ago
                    while chunk:
                        # the next batch is checked while this one sends, with the outcomes so far recorded
                        # in the same connection
                        start += len(chunk)
                        upcoming = ids[start:start + size]
                        ahead = (db.submit(db.together, recorder.take(), (as_of, channels, upcoming))
                                 if upcoming else None)
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
                        elif go:
                            went = time.monotonic()
                            runner.run(senders.batch(go))
                            if batch is None:
                                size = _batch_size(len(go), time.monotonic() - went)
                        if ahead is None:
                            break
                        chunk = upcoming
                        rows, began = ahead.result()
                        if time.monotonic() - began > fresh_seconds:
                            rows, _ = db.submit(db.check, as_of, channels, chunk).result()
                        result.checks += 1
                finally:
                    runner.run(senders.aclose())
        finally:
            recorder.close()
    finally:
        db.close()
    # every outcome is recorded: what the journal said is in the database now
    journal.clear()
    result.sent += recorder.sent
    result.failed = recorder.failed + result.in_doubt
    result.failures = recorder.failures
    result.kept = recorder.kept
    result.writes, result.held_seconds = recorder.writes, db.held
    return result


# --------------------------------------------------------------------------------------------------
# the run


def prepare(con, as_of: datetime, *, dry_run: bool, validate=None, renderer: Renderer | None = None,
            channels=None):
    """Plan (or, dry, only build), list the new messages (of `channels` only, if given), validate and
    render them."""
    if validate is not None and hasattr(validate, "warm_up"):
        validate.warm_up()          # GX's import and context, on a thread, while DuckDB plans
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
    with transaction(con):                    # counted, then updated (PostgreSQL's UPDATE returns no rows here)
        n = con.execute("SELECT count(*) FROM ops.messages WHERE status = 'failed' AND list_contains(?, channel)",
                        [wanted]).fetchone()[0]
        con.execute(f"UPDATE {layout.ops_table(con, 'messages')} SET status = 'queued', "
                    "last_error = 'retried after: ' || coalesce(last_error, '') "
                    "WHERE status = 'failed' AND list_contains(?, channel)", [wanted])
        return n


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
            publish(con, db, settings)
        finally:
            con.close()
            held += time.perf_counter() - opened
    result.seconds = time.perf_counter() - started
    result.db_seconds = held
    log.debug("dispatch at %s held the database %.2f s of %.2f s", as_of.isoformat(), held, result.seconds)
    return result


def dispatch_lake(db: str | Path, settings, as_of: datetime, *, worker: str, partition: int | None = None,
                  dry_run: bool = False, validate=None, renderer=None, step=None, channels=None,
                  retry_failed: bool = False, hold=nullcontext, lease_seconds: float | None = None) -> DispatchResult:
    """A dispatch on the lake layout (docs/rules.md §10), one of any number of workers at once: plan, validate,
    render and write the new messages into the outbox in PostgreSQL (ON CONFLICT DO NOTHING: a message another
    worker wrote is one row) while holding `hold()` (the partition's one-writer slot: the plan writes its lake);
    then send from the outbox with claims (transforms/dispatch_pg.py: FOR UPDATE SKIP LOCKED under a lease, the row
    as the at-most-once journal), each claimed batch checked again for T by sql/dispatch/send_queue.sql on the lake.
    `worker` names this worker uniquely among those running; `partition`: that partition's lake and shops."""
    from crm.storage import partitions
    from crm.storage.outbox import PgOutbox
    from transforms.dispatch_pg import LEASE_SECONDS, send_claimed

    started = time.perf_counter()
    settings = partitions.of(settings, partition)
    with PgOutbox(settings.storage.ops_dsn) as pg:
        pg.ensure()                       # the claim columns, before the lake's view of the table is made
        with hold(), session(db, settings, lake=True, partition=partition) as con:
            result = dispatch(con, settings, as_of, dry_run=dry_run, validate=validate, renderer=renderer, step=step,
                              send=False, channels=channels, retry_failed=retry_failed)
        if dry_run:
            result.seconds = time.perf_counter() - started
            return result
        wanted = channels or AUTOMATIC
        sending_since = datetime.now(timezone.utc)
        with session(db, settings, lake=True, partition=partition) as con:
            def check(rows: list[dict]) -> list[dict]:
                return queued_messages(con, as_of, wanted, [r["message_id"] for r in rows], sending_since)

            sent = send_claimed(pg, settings, as_of, worker=worker, check=check, channels=wanted,
                                shops=[s.shop_id for s in settings.shops],
                                lease_seconds=lease_seconds or LEASE_SECONDS, step=step)
        result.take(sent, settings)
    result.seconds = time.perf_counter() - started
    return result
