"""What the gateways tell us back, under ``/hooks/`` on ``crm serve`` (docs/rules.md §7): delivery receipts
and customers' replies, from Kannel (``/hooks/kannel/dlr``, ``/hooks/kannel/mo``) and from the webhook
gateway (``/hooks/receipts``, ``/hooks/replies``).

A gateway calls once and does not call again, and it calls often (two receipts a message), while the DuckDB
file is shared with the flows. So a request is first *spooled*: appended as one JSON line to
``<db>.hooks-spool`` and flushed, then answered 200; a writer thread moves the spool into the database in
batches (``ops.delivery_receipts``, ``ops.replies``, ``ops.suppressions``, and the fold into
``ops.messages.delivery`` / ``delivered_at``), at once for replies and at least every half second for
receipts, whenever the file is free. Every spooled line has its own id, so a line written twice (the writer
stopped between its insert and emptying the spool) is recorded once.

Checks before anything is spooled: Kannel's hooks need ``key=<hook_key>`` when ``hook_key`` is set; the
webhook gateway's need a Standard Webhooks signature (``webhook-id``, ``webhook-timestamp`` within 5
minutes, ``webhook-signature``) when ``signing_secret`` is set. Else 401, and nothing is recorded.
"""

from __future__ import annotations

import hmac
import json
import re
import logging
import os
import threading
import time
import unicodedata
import uuid
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote_to_bytes

from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from crm.db import DatabaseLocked, connect, transaction
from crm.redact import mask_phone
from crm.storage.layout import ops_table

log = logging.getLogger("crm.hooks")

# --------------------------------------------------------------------------------------------------
# opt-out replies

OPT_OUT_WORDS = frozenset({"T", "TD", "N", "R", "0000", "退订", "取消", "STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL",
                           "END", "QUIT"})


def opt_out_word(text: str | None) -> str | None:
    """The opt-out word a reply is, or None: NFKC (full-width letters become ASCII), trimmed of white space and
    punctuation, compared case-insensitively. 'ｔｄ ' -> 'TD'; '怎么付款?' -> None."""
    if not text:
        return None
    normal = unicodedata.normalize("NFKC", text)
    trimmed = "".join(c for c in normal if not (c.isspace() or unicodedata.category(c).startswith("P")))
    word = trimmed.upper()
    return word if word in OPT_OUT_WORDS else None


# Kannel's %d: what a delivery report says
KANNEL_DLR = {1: "delivered", 2: "undelivered", 4: "buffered", 8: "accepted", 16: "rejected"}
# what each receipt status makes of ops.messages.delivery (None: nothing)
DELIVERY = {"delivered": "delivered", "undelivered": "undelivered", "rejected": "undelivered"}


# --------------------------------------------------------------------------------------------------
# the spool and its writer


class Spool:
    """Requests the gateways made, durable before they are answered, moved into the database in batches."""

    def __init__(self, db: str | Path, settings, *, write=None, every: float = 0.5):
        """`write(action)` runs ``action(con)`` on a short writing connection, raising DatabaseLocked when the
        file stays busy (the page's Workspace, which also keeps its reads and this from colliding); default:
        crm.db.connect with a short wait."""
        self.db, self.settings, self.every = Path(db), settings, every
        self.path = self.db.with_name(self.db.name + ".hooks-spool")
        self.path.parent.mkdir(parents=True, exist_ok=True)      # on the lake no database file made the folder
        self._write = write or self._connect_and
        self._lock = threading.Lock()          # the spool file
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written = 0

    def add(self, kind: str, record: dict) -> None:
        line = json.dumps({"id": uuid.uuid4().hex, "kind": kind, **record}, ensure_ascii=False, default=str)
        with self._lock:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
                fh.flush()
        if kind == "reply":
            self._wake.set()                   # an opt-out takes effect at once

    # ---------------------------------------------------------------------------------------- writer
    def _connect_and(self, action):
        con = connect(self.db, wait_seconds=0.5)
        try:
            return action(con)
        finally:
            con.close()

    def start(self) -> "Spool":
        try:
            self._write(lambda con: None)      # a writing connection brings an older file's schema up to date
        except DatabaseLocked:
            pass
        self._thread = threading.Thread(target=self._run, name="crm-hooks-writer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(10)
        self.drain()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.every)
            self._wake.clear()
            try:
                self.drain()
            except Exception as e:            # keep the spool; try again next round
                log.error("recording the gateways' receipts and replies failed (kept, tried again): %s", e)

    def pending(self) -> list[dict]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        records = []
        for line in text.splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue                       # a line cut short by a crash: never answered 200
        return records

    def drain(self) -> int:
        """Move what is spooled into the database; 0 if the file stayed busy (kept for next time)."""
        with self._lock:
            records = self.pending()
            if not records:
                return 0
            taken = len(records)
        try:
            self._write(lambda con: record_all(con, self.settings, records))
        except DatabaseLocked:
            return 0
        with self._lock:
            # only what was taken: lines added meanwhile stay
            rest = self.pending()[taken:]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rest),
                           encoding="utf-8")
            os.replace(tmp, self.path)
        self.written += taken
        return taken


def record_all(con, settings, records: list[dict]) -> None:
    """Receipts and replies into their tables, in one transaction; each spooled line once (its id)."""
    import polars as pl

    from crm import phones

    receipts = [r for r in records if r["kind"] == "receipt"]
    replies = [r for r in records if r["kind"] == "reply"]
    region = settings.shops[0].phone_region if settings.shops else phones.DEFAULT_REGION
    # every table here is operational: on the lake, PostgreSQL's (one transaction, one database)
    receipts_table, replies_table, suppressions = (ops_table(con, n) for n in ("delivery_receipts", "replies",
                                                                                "suppressions"))
    with transaction(con):
        if receipts:
            frame = pl.DataFrame({
                "receipt_id": [r["id"] for r in receipts],
                "message_id": [r.get("message_id") for r in receipts],
                "status": [r["status"] for r in receipts],
                "gateway": [r["gateway"] for r in receipts],
                "reported_at": [_instant(r.get("at")) for r in receipts],
                "received_at": [_instant(r["received_at"]) for r in receipts],
                "raw": [r["raw"] for r in receipts],
            }, schema={"receipt_id": pl.String, "message_id": pl.String, "status": pl.String, "gateway": pl.String,
                       "reported_at": pl.Datetime("us", "UTC"), "received_at": pl.Datetime("us", "UTC"), "raw": pl.String})
            con.register("_receipts", frame.to_arrow())
            try:
                con.execute(f"INSERT INTO {receipts_table} BY NAME SELECT * FROM _receipts "
                            "ON CONFLICT (receipt_id) DO NOTHING")
                _fold(con)
            finally:
                con.unregister("_receipts")
        if replies:
            rows = []
            for r in replies:
                word = opt_out_word(r.get("text"))
                sender = phones.e164(r.get("sender"), region) or r.get("sender")
                rows.append((r["id"], sender, r.get("recipient"), r.get("text"), _instant(r.get("at")),
                             _instant(r["received_at"]), word is not None, r["gateway"], r["raw"]))
            con.executemany(f"INSERT INTO {replies_table} (reply_id, sender, recipient, text, replied_at, received_at, opt_out, "
                            "gateway, raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (reply_id) DO NOTHING", rows)
            con.execute(
                f"INSERT INTO {suppressions} (customer_id, phone, email, channel, created_at, reason, reply_id) "
                "SELECT NULL, r.sender, NULL, 'sms', coalesce(r.replied_at, r.received_at), 'reply: ' || r.text, r.reply_id "
                "FROM ops.replies AS r WHERE r.opt_out AND list_contains(?, r.reply_id) "
                "AND NOT EXISTS (SELECT 1 FROM ops.suppressions AS s WHERE s.reply_id = r.reply_id)",
                [[r[0] for r in rows]])
            for (_, sender, _, _, _, _, opt_out, gateway, _) in rows:
                if opt_out:
                    log.info("opt-out reply from %s (%s): suppressed for sms", mask_phone(sender), gateway)


def _fold(con) -> None:
    """Receipts only move a message forward: its delivery is set once (delivered / undelivered), from the
    first such receipt by `at`; a message left in doubt by a run that died (Kannel has no idempotency key:
    `failed`, `last_error` 'in doubt: …') is settled as sent by any receipt for it. Unknown ids change nothing.
    (One still queued with its journal line '?' is settled by the next dispatch, which looks at its receipts.)"""
    messages = ops_table(con, "messages")
    con.execute(
        f"""
        UPDATE {messages} AS m
        SET delivery = f.delivery, delivered_at = CASE WHEN f.delivery = 'delivered' THEN f.first_at END
        FROM (
            SELECT message_id,
                   arg_min(CASE status WHEN 'delivered' THEN 'delivered' ELSE 'undelivered' END,
                           coalesce(reported_at, received_at)) AS delivery,
                   min(coalesce(reported_at, received_at)) AS first_at
            FROM _receipts WHERE status IN ('delivered', 'undelivered', 'rejected') GROUP BY message_id
        ) AS f
        WHERE m.message_id = f.message_id AND m.delivery IS NULL
        """)
    con.execute(
        f"""
        UPDATE {messages} AS m
        SET status = 'sent', sent_at = coalesce(m.sent_at, r.first_at),
            last_error = 'settled as sent by a delivery receipt: ' || coalesce(m.last_error, '')
        FROM (SELECT message_id, min(coalesce(reported_at, received_at)) AS first_at FROM _receipts GROUP BY message_id) AS r
        WHERE m.message_id = r.message_id AND m.status = 'failed' AND starts_with(m.last_error, 'in doubt')
        """)


def _instant(value) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(timezone.utc) if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


# --------------------------------------------------------------------------------------------------
# the routes


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _raw_query(request: Request) -> dict[str, str]:
    """The query as sent (values still percent-encoded): Kannel's %b is the message's bytes in `charset`."""
    out = {}
    for part in request.scope.get("query_string", b"").decode("latin-1").split("&"):
        key, _, value = part.partition("=")
        if key:
            out[unquote_to_bytes(key.replace("+", " ")).decode("utf-8", "replace")] = value
    return out


def _text(raw: str | None, charset: str | None) -> str | None:
    if raw is None:
        return None
    data = unquote_to_bytes(raw.replace("+", " "))
    for encoding in (charset or "UTF-8", "utf-8", "latin-1"):
        try:
            return data.decode(encoding)
        except (LookupError, UnicodeDecodeError):
            continue
    return data.decode("utf-8", "replace")


def _raw_kannel(request: Request) -> str:
    """The request as kept in ops.*.raw, without the hook_key (a secret)."""
    return str(request.url.path) + "?" + re.sub(r"(^|&)key=[^&]*", r"\1key=***", request.url.query)


class Hooks:
    def __init__(self, spool: Spool, settings):
        self.spool, self.gateway = spool, settings.gateway

    def _kannel_key_ok(self, query: dict[str, str]) -> bool:
        key = self.gateway.hook_key
        given = _text(query.get("key"), "utf-8") or ""
        return not key or hmac.compare_digest(given.encode(), key.encode())

    async def _signed(self, request: Request):
        """The body of a request signed as Standard Webhooks say, or None (unsigned, wrong, stale)."""
        body = await request.body()
        secret = self.gateway.signing_secret
        if not secret:
            return body
        from standardwebhooks.webhooks import Webhook

        try:
            Webhook(secret).verify(body, dict(request.headers), json_parse=False)
        except Exception:                      # missing, malformed, wrong or stale: all the same answer
            return None
        return body

    async def kannel_dlr(self, request: Request):
        query = _raw_query(request)
        if not self._kannel_key_ok(query):
            return PlainTextResponse("bad or missing key", status_code=401)
        try:
            code = int(_text(query.get("s"), "utf-8") or "")
        except ValueError:
            return PlainTextResponse("s must be Kannel's %d", status_code=400)
        message_id = _text(query.get("id"), "utf-8")
        self.spool.add("receipt", {"message_id": message_id, "status": KANNEL_DLR.get(code, f"code {code}"),
                                   "gateway": "kannel", "at": None, "received_at": _now(),
                                   "raw": _raw_kannel(request)})
        return PlainTextResponse("ok")

    async def kannel_mo(self, request: Request):
        query = _raw_query(request)
        if not self._kannel_key_ok(query):
            return PlainTextResponse("bad or missing key", status_code=401)
        text = _text(query.get("text"), _text(query.get("charset"), "utf-8"))
        ts = _text(query.get("ts"), "utf-8")
        try:
            at = datetime.fromtimestamp(int(ts), timezone.utc).isoformat() if ts else None
        except (ValueError, OverflowError, OSError):
            at = None
        self.spool.add("reply", {"sender": _text(query.get("from"), "utf-8"), "recipient": _text(query.get("to"), "utf-8"),
                                 "text": text, "gateway": "kannel", "at": at, "received_at": _now(),
                                 "raw": _raw_kannel(request)})
        return PlainTextResponse("")           # an empty answer: Kannel sends no SMS back

    async def receipts(self, request: Request):
        body = await self._signed(request)
        if body is None:
            return PlainTextResponse("bad or missing signature", status_code=401)
        try:
            data = json.loads(body)
            status = data["status"]
            assert status in ("delivered", "undelivered")
        except (ValueError, KeyError, TypeError, AssertionError):
            return PlainTextResponse('expected {"message_id", "status": "delivered"|"undelivered", "at"}',
                                     status_code=400)
        self.spool.add("receipt", {"message_id": str(data.get("message_id")), "status": status, "gateway": "webhook",
                                   "at": data.get("at"), "received_at": _now(), "raw": body.decode("utf-8", "replace")})
        return PlainTextResponse("ok")

    async def replies(self, request: Request):
        body = await self._signed(request)
        if body is None:
            return PlainTextResponse("bad or missing signature", status_code=401)
        try:
            data = json.loads(body)
            sender, text = str(data["from"]), data.get("text")
        except (ValueError, KeyError, TypeError):
            return PlainTextResponse('expected {"from", "to", "text", "at"}', status_code=400)
        self.spool.add("reply", {"sender": sender, "recipient": data.get("to"), "text": text, "gateway": "webhook",
                                 "at": data.get("at"), "received_at": _now(), "raw": body.decode("utf-8", "replace")})
        return PlainTextResponse("ok")

    def routes(self) -> list[Route]:
        return [
            Route("/hooks/kannel/dlr", self.kannel_dlr, methods=["GET", "POST"]),
            Route("/hooks/kannel/mo", self.kannel_mo, methods=["GET", "POST"]),
            Route("/hooks/receipts", self.receipts, methods=["POST"]),
            Route("/hooks/replies", self.replies, methods=["POST"]),
        ]
