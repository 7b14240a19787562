"""Dispatch at T (CONTRACT §6-§7): plan, validate, render, then send each message exactly once.

1. *plan* at T (the marts are written; a dry run only builds them as temp tables);
2. *outbox*: ``sql/intermediate/int_outbox.sql`` lists the messages T creates that ops.messages
   does not hold yet (message_id = purpose:order_id);
3. *validate* them with Great Expectations: no reminder for an order paid at T, none inside quiet
   hours, at most daily_cap per customer and local day, nothing to an opted-out customer, a
   recipient for everything sent automatically. A failure stops the run before anything is written;
4. *render* every body (a missing or broken template stops the run before anything is written);
5. *write* them all to ops.messages as ``queued`` in one transaction (the transactional outbox);
6. *send* every queued SMS/chat/email — this run's and any left by an earlier run that crashed —
   and record sent/failed, attempts and sent_at in batches. Calls stay queued for the agents.

A message recorded as sent is never sent again. One sent but not yet recorded when the process dies
is sent again by the next run with the same Idempotency-Key, which the gateway accepts once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime

import duckdb
import httpx
import polars as pl
import uvloop

from crm.channels import Outcome, SmtpSender, send_webhook
from crm.db import sql_text, transaction
from crm.redact import mask_email, mask_phone
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
    validation: list[dict] = field(default_factory=list)
    seconds: float = 0.0


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
    rows = frame.select("message_id", "purpose", "shop_id", "order_id", "customer_id", "channel", "recipient",
                        "body", "template", "created_at", "segments")
    con.register("_new_messages", rows.to_arrow())
    try:
        with transaction(con):
            con.execute(
                "INSERT INTO ops.messages (message_id, purpose, shop_id, order_id, customer_id, channel, recipient, "
                "body, status, attempts, created_at, template, as_of, segments) "
                "SELECT message_id, purpose, shop_id, order_id, customer_id, channel, recipient, body, 'queued', 0, "
                "created_at, template, ?, segments FROM _new_messages ON CONFLICT (message_id) DO NOTHING",
                [as_of],
            )
    finally:
        con.unregister("_new_messages")
    return rows.height


# --------------------------------------------------------------------------------------------------
# sending


class _Recorder:
    """Collects outcomes and writes them to ops.messages in batches (one UPDATE per batch)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, batch: int = 200, every: float = 0.25):
        self.con, self.batch, self.every, self.pending, self.sent, self.failed = con, batch, every, [], 0, 0
        self.failures: list[str] = []
        self.flushed = time.monotonic()

    def add(self, outcome: Outcome) -> None:
        self.pending.append(outcome)
        if outcome.status == "sent":
            self.sent += 1
        else:
            self.failed += 1
            self.failures.append(f"{outcome.message_id}: {outcome.error}")
        # a crash can lose at most one batch of records; those messages are sent again with the same
        # Idempotency-Key, and the gateway accepts them once
        if len(self.pending) >= self.batch or time.monotonic() - self.flushed >= self.every:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        frame = pl.DataFrame({
            "message_id": [o.message_id for o in self.pending],
            "status": [o.status for o in self.pending],
            "attempts": [o.attempts for o in self.pending],
            "error": [o.error for o in self.pending],
            "sent_at": [o.sent_at for o in self.pending],
        }, schema={"message_id": pl.String, "status": pl.String, "attempts": pl.Int32, "error": pl.String,
                   "sent_at": pl.Datetime("us", "UTC")})
        self.con.register("_outcomes", frame.to_arrow())
        try:
            self.con.execute(
                "UPDATE ops.messages AS m SET status = o.status, attempts = m.attempts + o.attempts, "
                "sent_at = o.sent_at, last_error = o.error FROM _outcomes AS o "
                "WHERE m.message_id = o.message_id AND m.status = 'queued'"
            )
        finally:
            self.con.unregister("_outcomes")
        self.pending = []
        self.flushed = time.monotonic()


def queued_messages(con: duckdb.DuckDBPyConnection) -> list[dict]:
    rows = con.execute(
        "SELECT message_id, channel, shop_id, purpose, recipient, body FROM ops.messages "
        "WHERE status = 'queued' AND channel IN ('sms', 'chat', 'email') ORDER BY created_at, message_id"
    ).fetchall()
    cols = ("message_id", "channel", "shop_id", "purpose", "recipient", "body")
    return [dict(zip(cols, r)) for r in rows]


async def _send_all(messages: list[dict], settings, recorder: _Recorder, step=None) -> None:
    gw, smtp_cfg = settings.gateway, settings.smtp
    base = gw.backoff_seconds
    smtp = SmtpSender(smtp_cfg.host, smtp_cfg.port, smtp_cfg.sender, smtp_cfg.username, smtp_cfg.password,
                      smtp_cfg.starttls, timeout=gw.timeout_seconds)
    smtp_lock = asyncio.Lock()
    timeout = httpx.Timeout(gw.timeout_seconds)
    # several small connection pools rather than one big one: httpcore's pool does work proportional
    # to its size for every request, so one pool of 64 is ~3x slower than 16 pools of 4.
    # TCP_NODELAY: a request's head and body go out at once, not held back by Nagle's algorithm.
    per_pool = 4
    debug = log.isEnabledFor(logging.DEBUG)
    clients = [
        httpx.AsyncClient(timeout=timeout, transport=httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool),
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]))
        for _ in range(max(1, -(-gw.concurrency // per_pool)))
    ]

    async def one(i: int, msg: dict) -> None:
        if msg["channel"] == "email":
            async with smtp_lock:
                outcome = await asyncio.to_thread(smtp.send, msg, max_attempts=gw.max_attempts, base_delay=base)
        else:
            outcome = await send_webhook(clients[i % len(clients)], gw.webhook_url, msg,
                                         max_attempts=gw.max_attempts, base_delay=base, token=gw.token)
        recorder.add(outcome)
        if debug:
            to = mask_email(msg["recipient"]) if msg["channel"] == "email" else mask_phone(msg["recipient"])
            log.debug("%s %s to %s: %s after %d attempt(s)", msg["channel"], msg["message_id"], to, outcome.status,
                      outcome.attempts)
        if step:
            step("send", 1)

    # a fixed crew of `concurrency` workers taking the next message, rather than a task per message
    pending = iter(enumerate(messages))

    async def worker() -> None:
        for i, msg in pending:
            await one(i, msg)

    try:
        await asyncio.gather(*(worker() for _ in range(min(gw.concurrency, max(1, len(messages))))))
    finally:
        for client in clients:
            await client.aclose()
        await asyncio.to_thread(smtp.close)


def send_queued(con: duckdb.DuckDBPyConnection, settings, step=None) -> tuple[int, int, list[str]]:
    """Send every queued automatic message; returns (sent, failed, failure lines)."""
    messages = queued_messages(con)
    recorder = _Recorder(con)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_send_all(messages, settings, recorder, step))
    finally:
        recorder.flush()
    return recorder.sent, recorder.failed, recorder.failures


# --------------------------------------------------------------------------------------------------
# the run


def prepare(con, as_of: datetime, *, dry_run: bool, validate=None, renderer: Renderer | None = None):
    """Plan (or, dry, only build), list the new messages, validate and render them."""
    if dry_run:
        build(con, as_of)
    else:
        plan(con, as_of)
    frame = outbox(con, as_of)
    checks = validate(con, frame, as_of) if validate is not None else []
    return render_all(frame, renderer or Renderer()), checks


def dispatch(con, settings, as_of: datetime, *, dry_run: bool = False, validate=None, renderer=None,
             step=None) -> DispatchResult:
    started = time.perf_counter()
    result = DispatchResult(as_of=as_of, dry_run=dry_run)
    frame, result.validation = prepare(con, as_of, dry_run=dry_run, validate=validate, renderer=renderer)
    result.created = {f"{p}/{c}": n for p, c, n in frame.group_by("purpose", "channel").len().sort("purpose", "channel").iter_rows()}
    result.long_sms = frame.filter(pl.col("segments") > 1).height
    result.calls_queued = frame.filter(pl.col("channel") == "call").height
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
    result.sent, result.failed, result.failures = send_queued(con, settings, step)
    result.seconds = time.perf_counter() - started
    return result
