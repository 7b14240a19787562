"""The agents' page, served by ``crm serve``: pick a shop, work today's follow-up calls in rank order with
the customer's context and the call script, and record each outcome (docs/rules.md §5-§6, issue 6).

Concurrency with the flows: DuckDB lets one process write a file, and while it does no other process can
open it. The page therefore never keeps the file open. Every request opens a short connection and closes
it: reads wait up to ``read_wait`` seconds for a running flow, then fall back to the analytics copy the
flows publish (the page says so); a save waits up to ``write_wait`` seconds for the lock and otherwise
saves nothing and says so, keeping what the agent typed. A flow that meets the page's connection retries
for a moment (crm.db.connect), so the page never blocks a flow for longer than one request's query.

On the lake (`[storage] kind = "ducklake"`, docs/rules.md §10) there is no file to share: the lake and its
PostgreSQL tables take readers and writers from any process at once. Opening the lake costs about a second
(extensions, catalog, the tables' views), so the page keeps one connection for its process, opened by the first
request, and runs one request at a time on it (the same turn); each query sees the newest committed snapshot, a
save is one PostgreSQL transaction. The lake unreachable is the page's "busy" answer; a connection that failed is
dropped and the next request opens a new one (a read tries once more on it at once).

Time: the page has one clock (`Workspace.clock`): what is listed today, what counts as done today, whether a
call-back time is in the future, and the time a save or a "Called" records all come from it. By default it
is the real time; ``crm serve --as-of T`` starts it at T (demo data, tests). Every time a shop's page shows
is in the shop's zone, and refusals are worded in the page's language (labels.json, "refusals").

Cross-site requests: every request that can change something must come from the page itself (`CsrfGuard`:
the browser's Sec-Fetch-Site or Origin, and a token in every form); the gateways' hooks under /hooks/ are
machine to machine and carry their own signatures instead.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from datetime import datetime, timedelta, timezone
from functools import cached_property
from pathlib import Path
from typing import Callable
from urllib.parse import quote, unquote, urlsplit
from zoneinfo import ZoneInfo

import duckdb
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route

from crm.config import Settings
from crm.db import DatabaseLocked, analytics_path, asset_dir, connect, shop_macros, sql_text
from crm.hooks import Hooks, Spool
from crm.storage.layout import ops_table
from transforms.outcomes import CATEGORIES, Refusal, check, record

COMPENSATIONS = ("none", "coupon", "free_shipping", "partial_refund", "resend")
TIERS = ("high_value", "bad_review", "neutral_review", "complaint_in_praise", "other")
# the page's own refusals (besides transforms.outcomes.ENGLISH): labels.json words each in every language
PAGE_REFUSALS = ("say_reached", "callback_missing", "callback_bad", "callback_past", "no_call", "no_reminder_call",
                 "no_such_shop", "busy_write", "busy_read", "csrf")
CSRF_COOKIE, CSRF_FIELD = "crm_csrf", "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
HOOKS = "/hooks"          # the gateways' callbacks (crm/hooks.py): checked by their own key or signature


def _is_hook(path: str) -> bool:
    return path == HOOKS or path.startswith(HOOKS + "/")


def real_time() -> datetime:
    return datetime.now(timezone.utc)


def clock_from(start: datetime) -> Callable[[], datetime]:
    """A clock set to `start` that runs on from there (so saves made one after another keep their order)."""
    began = time.monotonic()
    return lambda: start + timedelta(seconds=time.monotonic() - began)


class Busy(Exception):
    """The database stayed locked by a flow for longer than the page waits."""

    def __init__(self, refusal: Refusal):
        super().__init__(refusal)
        self.refusal = refusal


class Workspace:
    """Short DuckDB connections for the page. One connection at a time in this process (DuckDB refuses a
    read-only and a writing connection to one file side by side in a process), but nobody waits while
    holding that turn: each attempt to open the file is a single try, and the waiting between tries is
    done outside it, so reads go on (from the analytics copy) while a save waits for a flow."""

    def __init__(self, db: str | Path, settings: Settings, *, read_wait: float = 0.5, write_wait: float = 15.0,
                 clock: Callable[[], datetime] | None = None):
        self.db, self.settings = Path(db), settings
        self.read_wait, self.write_wait = read_wait, write_wait
        self.clock, self.clock_is_set = clock or real_time, clock is not None     # the page's one "now"
        self._turn = threading.Lock()
        self._zones = [(s.shop_id, s.timezone) for s in settings.shops]
        self._busy_until = 0.0          # a flow held the file just now: reads go to the copy until then
        self.lake = settings.storage.kind == "ducklake"
        self._lake = None               # the lake: the process's one connection, opened by the first request

    def close(self) -> None:
        with self._turn:
            if self._lake is not None:
                self._lake.close()
                self._lake = None

    def _on_lake(self, action, *, read_only: bool, wait: float):
        """``action(con)`` on the process's lake connection (opened when there is none), one at a time; the lake
        unreachable for `wait` seconds is DatabaseLocked. A connection an action failed on is dropped (a read
        runs once more on a new one: it changes nothing)."""
        from crm.storage import StorageError, connect_layout

        deadline, delay = time.monotonic() + wait, 0.05
        while True:
            with self._turn:
                fresh = self._lake is None
                if fresh:
                    try:
                        con = connect_layout(self.settings.storage)
                        shop_macros(con, self._zones)
                        self._lake = con
                    except StorageError:
                        self._lake = None
                if self._lake is not None:
                    try:
                        return action(self._lake)
                    except duckdb.Error:
                        self._lake.close()
                        self._lake = None
                        if fresh or not read_only:
                            raise
                        continue
            if time.monotonic() >= deadline:
                raise DatabaseLocked("the lake: cannot be reached")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _with(self, path: Path, action, *, read_only: bool, wait: float):
        """``action(con)`` on a short connection to `path`, trying again until `wait` runs out."""
        if self.lake:
            return self._on_lake(action, read_only=read_only, wait=wait)
        deadline, delay = time.monotonic() + wait, 0.02
        while True:
            with self._turn:
                try:
                    con = connect(path, read_only=read_only, wait_seconds=0)
                except DatabaseLocked:
                    con = None
                if con is not None:
                    try:
                        shop_macros(con, self._zones)
                        return action(con)
                    finally:
                        con.close()
            if time.monotonic() >= deadline:
                raise DatabaseLocked(f"{path}: a flow is writing")
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def read(self, query, /, **params) -> tuple[list[dict], datetime | None]:
        """Rows of a query, and None — or the time of the analytics copy they came from while a flow writes."""
        (rows,), stale = self.read_many((query, params))
        return rows, stale

    def read_many(self, *queries: tuple[str, dict]) -> tuple[list[list[dict]], datetime | None]:
        """Several queries on one short connection: the live file, or the analytics copy while a flow
        holds the file (with the copy's time, which the page shows)."""
        def run(con):
            results = []
            for query, params in queries:
                cursor = con.execute(query, params)
                columns = [d[0] for d in cursor.description]
                results.append([dict(zip(columns, row)) for row in cursor.fetchall()])
            return results

        if self.lake:                   # nothing to wait for but the lake itself, and no copy of it
            try:
                return self._with(self.db, run, read_only=True, wait=self.read_wait), None
            except DatabaseLocked:
                raise Busy(Refusal("busy_read")) from None
        if time.monotonic() >= self._busy_until:
            try:
                return self._with(self.db, run, read_only=True, wait=self.read_wait), None
            except DatabaseLocked:
                self._busy_until = time.monotonic() + 2.0
        copy = analytics_path(self.db)
        if not copy.exists():
            raise Busy(Refusal("busy_read"))
        # when the copy was published: a real file time (not the page's clock)
        stale = datetime.fromtimestamp(copy.stat().st_mtime, timezone.utc)
        try:
            return self._with(copy, run, read_only=True, wait=self.read_wait), stale
        except DatabaseLocked:
            raise Busy(Refusal("busy_read")) from None

    def write(self, action):
        """Run ``action(con)`` on a short writing connection; Busy if a flow holds the file too long."""
        try:
            return self._with(self.db, action, read_only=False, wait=self.write_wait)
        except DatabaseLocked:
            raise Busy(Refusal("busy_write", {"seconds": round(self.write_wait)})) from None


def _labels() -> dict:
    return json.loads((asset_dir("templates") / "web" / "labels.json").read_text(encoding="utf-8"))


class Page:
    def __init__(self, workspace: Workspace):
        self.ws = workspace
        self.env = Environment(loader=FileSystemLoader(asset_dir("templates") / "web"),
                               autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
        self.labels = _labels()

    @cached_property
    def call_list_sql(self) -> str:
        return sql_text("workspace/call_list.sql")

    # ---------------------------------------------------------------------------------------------
    def shop_or_404(self, shop_id: str):
        for shop in self.ws.settings.shops:
            if shop.shop_id == shop_id:
                return shop
        return None

    def t(self, shop) -> dict:
        return self.labels.get(shop.locale if shop else "en", self.labels["en"])

    def request_locale(self, request: Request) -> str:
        """The language of a page that belongs to no shop (the index): the first of the browser's
        Accept-Language we have (zh… → zh-CN, en… → en, by q-value), else the first configured shop's."""
        ranked = []
        for position, part in enumerate(request.headers.get("accept-language", "").split(",")):
            tag, *params = [piece.strip() for piece in part.split(";")]
            q = 1.0
            for param in params:
                key, _, value = param.partition("=")
                if key.strip() == "q":
                    try:
                        q = float(value)
                    except ValueError:
                        q = 0.0
            if tag and q > 0:
                ranked.append((-q, position, tag.lower().split("-")[0]))
        for _, _, language in sorted(ranked):
            if language == "zh":
                return "zh-CN"
            if language == "en":
                return "en"
        shops = self.ws.settings.shops
        return shops[0].locale if shops else "en"

    def say(self, t: dict, shop, refusals) -> str:
        """Refusals in the page's language: each code's wording in labels.json, its facts in the page's terms
        (a time in the shop's zone, a category by its label)."""
        texts = []
        for refusal in refusals:
            facts = {}
            for key, value in refusal.facts.items():
                if isinstance(value, datetime):
                    value = self.local(shop, value)
                elif key == "category":
                    value = t["categories"].get(value, value)
                elif key == "field":
                    value = t["fields"].get(value, value)
                facts[key] = "" if value is None else value
            wording = t["refusals"].get(refusal.code)
            texts.append(wording.format(**facts) if wording else str(refusal))
        return t["refusal_sep"].join(texts)

    def refused(self, t: dict, shop, refusals) -> str:
        """A refused save: why, and that nothing was saved."""
        return t["refused"].format(problems=self.say(t, shop, refusals), nothing_saved=t["nothing_saved"])

    def plain(self, t: dict, shop, refusal: Refusal, status: int) -> PlainTextResponse:
        return PlainTextResponse(self.say(t, shop, [refusal]), status_code=status)

    def html(self, name: str, request: Request, status: int = 200, **context) -> HTMLResponse:
        """A page; with a shop, its times are that shop's local times (labelled once with the zone). Its
        forms carry the browser's CSRF token (CsrfGuard)."""
        shop, t = context.get("shop"), context["t"]
        now = self.ws.clock()
        extra = {"lang": shop.locale if shop else context.get("lang", "en"),
                 "csrf_field": CSRF_FIELD, "csrf_token": request.scope.get(CsrfGuard.SCOPE_KEY, ""),
                 "clock_note": f"{t['clock_set']} {self.local(shop, now)}" if self.ws.clock_is_set else None}
        if shop:
            offset = now.astimezone(ZoneInfo(shop.timezone)).strftime("%z")
            extra["zone"] = t["times_in"].format(zone=shop.timezone, offset=f"UTC{offset[:3]}:{offset[3:]}")
        return HTMLResponse(self.env.get_template(name).render(**{**extra, **context}), status_code=status)

    def local(self, shop, ts: datetime | None) -> str:
        """A time as the shop's local wall time (with no shop: the first configured shop's, zone named)."""
        if ts is None:
            return ""
        if shop is None:
            first = self.ws.settings.shops[0] if self.ws.settings.shops else None
            zone = first.timezone if first else "UTC"
            return f"{ts.astimezone(ZoneInfo(zone)):%Y-%m-%d %H:%M} ({zone})"
        return ts.astimezone(ZoneInfo(shop.timezone)).strftime("%Y-%m-%d %H:%M")

    def why(self, shop, call: dict, t: dict) -> str:
        tier = call.get("tier")
        if tier is None:
            return ""
        money = f"{call['currency'] or ''} {call['total_amount']:,.2f}".strip() if call.get("total_amount") is not None else "?"
        threshold = f"{call['currency'] or ''} {call['high_value_amount']:,.2f}".strip() if call.get("high_value_amount") is not None else "?"
        words = "、".join(call.get("complaint_words") or []) if shop.locale == "zh-CN" else ", ".join(
            f"“{w}”" for w in call.get("complaint_words") or [])
        return t[f"why_{tier}"].format(amount=money, threshold=threshold, rating=call.get("rating"), words=words)

    @cached_property
    def replies_sql(self) -> str:
        return sql_text("workspace/replies.sql")

    @cached_property
    def reminder_calls_sql(self) -> str:
        return sql_text("workspace/reminder_calls.sql")

    def calls(self, shop, order_id: str | None = None):
        rows, stale = self.ws.read(self.call_list_sql, shop_id=shop.shop_id, order_id=order_id, now=self.ws.clock())
        return rows, stale

    # ---------------------------------------------------------------------------------------------
    def csrf_refused(self, request: Request) -> Response:
        """403 for a request CsrfGuard refused, in the language of the shop it was for (else the browser's)."""
        parts = request.url.path.split("/")
        shop = self.shop_or_404(parts[2]) if len(parts) > 2 and parts[1] == "shops" else None
        t = self.t(shop) if shop else self.labels[self.request_locale(request)]
        return PlainTextResponse(self.refused(t, shop, [Refusal("csrf")]), status_code=403)

    def no_such_shop(self, request: Request) -> Response:
        return self.plain(self.labels[self.request_locale(request)], None,
                          Refusal("no_such_shop", {"shop": request.path_params["shop_id"]}), 404)

    def index(self, request: Request) -> Response:
        locale = self.request_locale(request)
        t = self.labels[locale]
        try:
            rows, stale = self.ws.read(
                "SELECT shop_id, count(*) AS n FROM ops.messages WHERE purpose = 'followup' AND channel = 'call' "
                "AND status = 'queued' GROUP BY shop_id")
        except Busy as e:
            return self.plain(t, None, e.refusal, 503)
        counts = {r["shop_id"]: r["n"] for r in rows}
        shops = [{"shop": s, "queued": counts.get(s.shop_id, 0)} for s in self.ws.settings.shops]
        return self.html("index.html.j2", request, shops=shops, t=t, lang=locale, stale=stale,
                         local=lambda ts: self.local(None, ts))

    def shop(self, request: Request) -> Response:
        shop = self.shop_or_404(request.path_params["shop_id"])
        if shop is None:
            return self.no_such_shop(request)
        t = self.t(shop)
        now = self.ws.clock()
        try:
            (rows, reminders, replies), stale = self.ws.read_many(
                (self.call_list_sql, {"shop_id": shop.shop_id, "order_id": None, "now": now}),
                (self.reminder_calls_sql, {"shop_id": shop.shop_id, "now": now, "per_state": 100}),
                (self.replies_sql, {"shop_id": shop.shop_id, "order_id": None, "limit": 50}))
        except Busy as e:
            return self.plain(t, shop, e.refusal, 503)
        to_call = [r for r in rows if r["status"] == "queued" and not (r["callback_at"] and r["callback_at"] > now)]
        later = sorted((r for r in rows if r["status"] == "queued" and r["callback_at"] and r["callback_at"] > now),
                       key=lambda r: r["callback_at"])
        done = [r for r in rows if r["status"] == "done"]
        saved = request.query_params.get("saved")
        return self.html("shop.html.j2", request, shop=shop, t=t, to_call=to_call, later=later, done=done, stale=stale,
                         reminders=[r for r in reminders if r["state"] != "settled"],
                         reminder_totals={r["state"]: r["state_total"] for r in reminders},
                         called=request.query_params.get("called"), replies=replies,
                         saved=saved, saved_done=request.query_params.get("done") == "1",
                         local=lambda ts: self.local(shop, ts))

    def task(self, request: Request) -> Response:
        shop = self.shop_or_404(request.path_params["shop_id"])
        if shop is None:
            return self.no_such_shop(request)
        return self.task_page(shop, request.path_params["order_id"], request)

    def task_page(self, shop, order_id: str, request: Request, *, error: str | None = None,
                  values: dict | None = None, status: int = 200) -> Response:
        t = self.t(shop)
        try:
            (rows, replies), stale = self.ws.read_many(
                (self.call_list_sql, {"shop_id": shop.shop_id, "order_id": order_id, "now": self.ws.clock()}),
                (self.replies_sql, {"shop_id": shop.shop_id, "order_id": order_id, "limit": 20}))
        except Busy as e:
            return self.plain(t, shop, e.refusal, 503)
        if not rows:
            return self.plain(t, shop, Refusal("no_call", {"order_id": order_id, "shop": shop.shop_id}), 404)
        call = rows[0]
        values = values or {"reached": "", **{c: "n/a" for c in CATEGORIES}, "compensation": "none",
                            "agent": unquote(request.cookies.get("crm_agent", ""))}
        return self.html("task.html.j2", request, status=status, shop=shop, t=t, call=call, why=self.why(shop, call, t),
                         stale=stale, error=error, values=values, categories=CATEGORIES, compensations=COMPENSATIONS,
                         replies=replies, local=lambda ts: self.local(shop, ts))

    async def save(self, request: Request) -> Response:
        shop = self.shop_or_404(request.path_params["shop_id"])
        if shop is None:
            return self.no_such_shop(request)
        order_id = request.path_params["order_id"]
        form = await request.form()
        values = {k: str(form.get(k, "")).strip() for k in
                  ("reached", *CATEGORIES, "suggestion", "compensation", "callback_at", "agent")}
        values["gift"] = "true" if form.get("gift") else "false"
        # the database work runs in a thread: the page keeps answering while a save waits for the lock
        return await run_in_threadpool(self.save_form, shop, order_id, values, request)

    def save_form(self, shop, order_id: str, values: dict, request: Request) -> Response:
        problems, outcome = self.form_outcome(shop, order_id, values)
        status = 422
        if not problems:
            try:
                refusal = self.ws.write(lambda con: self._record(con, shop, outcome))
            except Busy as e:
                refusal, status = e.refusal, 503
            problems = [refusal] if refusal else []
        if problems:
            page = self.task_page(shop, order_id, request, error=self.refused(self.t(shop), shop, problems),
                                  values=values, status=status)
            return self.with_cookie(page, values)
        done = "1" if outcome["reached"] else "0"
        response = RedirectResponse(f"/shops/{shop.shop_id}?saved={order_id}&done={done}", status_code=303)
        return self.with_cookie(response, values)

    def reminder_called(self, request: Request) -> Response:
        """A payment-reminder call made: the message is `done` (sent_at = when the agent said so)."""
        shop = self.shop_or_404(request.path_params["shop_id"])
        if shop is None:
            return self.no_such_shop(request)
        order_id = request.path_params["order_id"]
        message_id = f"payment_reminder:{order_id}"

        def mark(con):                  # the rows changed (no RETURNING: PostgreSQL's tables on the lake refuse it)
            return con.execute(
                f"UPDATE {ops_table(con, 'messages')} SET status = 'done', sent_at = ?, attempts = attempts + 1 "
                "WHERE message_id = ? AND shop_id = ? AND channel = 'call' AND status = 'queued'",
                [self.ws.clock(), message_id, shop.shop_id]).fetchone()[0]
        t = self.t(shop)
        try:
            changed = self.ws.write(mark)
        except Busy as e:
            return PlainTextResponse(self.refused(t, shop, [e.refusal]), status_code=503)
        if not changed:
            return self.plain(t, shop, Refusal("no_reminder_call", {"order_id": order_id, "shop": shop.shop_id}), 404)
        return RedirectResponse(f"/shops/{shop.shop_id}?called={order_id}#reminders", status_code=303)

    @staticmethod
    def with_cookie(response: Response, values: dict) -> Response:
        if values.get("agent"):
            # a name like 小李 is not latin-1: the cookie carries it percent-encoded
            response.set_cookie("crm_agent", quote(values["agent"][:80]), max_age=30 * 86400, samesite="lax")
        return response

    def form_outcome(self, shop, order_id: str, values: dict) -> tuple[list[Refusal], dict | None]:
        """The form as an outcome row for transforms.outcomes.check: the call-back time is the shop's local
        time; a customer not reached needs one, after the page's now."""
        if values["reached"] not in ("true", "false"):
            return [Refusal("say_reached")], None
        row = {**values, "order_id": order_id, "recorded_at": None}
        if values["reached"] == "false":
            if not values["callback_at"]:
                return [Refusal("callback_missing")], None
            try:
                local_time = datetime.fromisoformat(values["callback_at"])
            except ValueError:
                return [Refusal("callback_bad", {"value": values["callback_at"]})], None
            if local_time.tzinfo is None:
                local_time = local_time.replace(tzinfo=ZoneInfo(shop.timezone))
            now = self.ws.clock()
            if local_time <= now:
                return [Refusal("callback_past", {"now": now})], None
            row["callback_at"] = local_time.isoformat()
            for category in CATEGORIES:
                row[category] = "n/a"
        else:
            row["callback_at"] = ""
        outcome, problems = check(row)
        return problems, outcome

    def _record(self, con, shop, outcome: dict) -> Refusal | None:
        belongs = con.execute("SELECT 1 FROM ops.messages WHERE message_id = ? AND shop_id = ? AND channel = 'call'",
                              [f"followup:{outcome['order_id']}", shop.shop_id]).fetchone()
        if belongs is None:
            return Refusal("no_call", {"order_id": outcome["order_id"], "shop": shop.shop_id})
        return record(con, self.ws.settings, outcome, self.ws.clock())


class CsrfGuard:
    """Cross-site request forgery: a request that can change something (any method but GET, HEAD, OPTIONS)
    is served only when it comes from the page itself; otherwise `refuse(request)` answers (403) and nothing
    runs. Two checks, each enough on its own against a hostile page in the agent's browser:

    1. The browser's word. Sec-Fetch-Site must be ``same-origin`` (or ``none``, a user's own action); a
       browser that does not send it must send no Origin or the page's own (Go's CrossOriginProtection does
       the same). Another port on the same host is another origin but the same site: ``same-site`` is refused.
    2. A token. Every browser gets a random cookie (HttpOnly); every form carries HMAC(secret, cookie) in a
       hidden field, with a secret of this process's own. Another origin can read neither the page nor the
       token, and though it can set the cookie (cookies do not tell ports apart), it cannot sign it. A restart
       of the page makes a new secret: a form opened before it is refused and works again once reloaded.

    Paths under /hooks/ are machine-to-machine callbacks that carry their senders' signatures; no browser
    token is asked of them (each hook checks its own signature)."""

    SCOPE_KEY = "crm.csrf_token"
    _COOKIE_VALUE = re.compile(r"[A-Za-z0-9_-]{43}")

    def __init__(self, app, refuse: Callable[[Request], Response], *, secret: bytes | None = None):
        self.app, self.refuse = app, refuse
        self.secret = secret or secrets.token_bytes(32)

    def token(self, cookie: str) -> str:
        digest = hmac.new(self.secret, cookie.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    @staticmethod
    def exempt(path: str) -> bool:
        return _is_hook(path)

    @staticmethod
    def same_origin(request: Request) -> bool:
        site = request.headers.get("sec-fetch-site")
        if site is not None:
            return site in ("same-origin", "none")
        origin = request.headers.get("origin")
        if origin is None:
            return True                       # not a browser, or one too old to say: the token decides
        return origin != "null" and urlsplit(origin).netloc.lower() == request.headers.get("host", "").lower()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        cookie = request.cookies.get(CSRF_COOKIE, "")
        fresh = self._COOKIE_VALUE.fullmatch(cookie) is None
        if fresh:
            cookie = secrets.token_urlsafe(32)
        scope[self.SCOPE_KEY] = self.token(cookie)
        if fresh:
            send = self._setting_cookie(send, cookie)
        if scope["method"] in SAFE_METHODS or self.exempt(scope["path"]):
            return await self.app(scope, receive, send)
        allowed = not fresh and self.same_origin(request)
        if allowed:
            body = await self._body(receive)
            if body is None:
                return                        # the client went away
            receive = self._replay(body, receive)
            form = await Request(scope, receive).form()
            try:
                given = str(form.get(CSRF_FIELD) or "")
            finally:
                await form.close()
            allowed = hmac.compare_digest(given.encode(), scope[self.SCOPE_KEY].encode())
            receive = self._replay(body, receive)
        if not allowed:
            return await self.refuse(request)(scope, receive, send)
        await self.app(scope, receive, send)

    @staticmethod
    async def _body(receive) -> bytes | None:
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    def _replay(body: bytes, receive):
        """A receive that gives the body already read once, then waits on the client as before."""
        given = False

        async def replay():
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        return replay

    @staticmethod
    def _setting_cookie(send, cookie: str):
        header = f"{CSRF_COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Lax".encode("latin-1")

        async def sending(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", header)]}
            await send(message)
        return sending


class PasswordGate:
    """HTTP Basic auth with one shared password (any user name), for a page served beyond this machine."""

    def __init__(self, app, password: str):
        self.app, self.password = app, password

    async def __call__(self, scope, receive, send):
        # the gateways' hooks carry their own key or signature (crm/hooks.py): no Basic auth there
        if scope["type"] == "http" and scope["path"] != "/healthz" and not _is_hook(scope["path"]):
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            given = ""
            if header.lower().startswith("basic "):
                try:
                    given = base64.b64decode(header[6:]).decode("utf-8").partition(":")[2]
                except ValueError:
                    given = ""
            if not hmac.compare_digest(given.encode(), self.password.encode()):
                response = PlainTextResponse("password required", status_code=401,
                                             headers={"WWW-Authenticate": 'Basic realm="crm", charset="UTF-8"'})
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def create_app(db: str | Path, settings: Settings, *, password: str | None = None,
               clock: Callable[[], datetime] | None = None, **waits):
    """The page's app; `clock` is the page's now (default: the real time; see clock_from). Every request
    that changes something goes through CsrfGuard (the password, when set, is asked first)."""
    page = Page(Workspace(db, settings, clock=clock, **waits))
    # the gateways' receipts and replies (crm/hooks.py): spooled, then written through the page's turn
    spool = Spool(db, settings, write=lambda action: page.ws._with(page.ws.db, action, read_only=False, wait=0.5))
    hooks = Hooks(spool, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        spool.start()
        try:
            yield
        finally:
            await run_in_threadpool(spool.stop)
            await run_in_threadpool(page.ws.close)

    app = Starlette(routes=[
        Route("/", page.index),
        Route("/healthz", lambda request: PlainTextResponse("ok")),
        Route("/shops/{shop_id}", page.shop),
        Route("/shops/{shop_id}/calls/{order_id}", page.task, methods=["GET"]),
        Route("/shops/{shop_id}/calls/{order_id}", page.save, methods=["POST"]),
        Route("/shops/{shop_id}/reminders/{order_id}", page.reminder_called, methods=["POST"]),
        *hooks.routes(),
    ], lifespan=lifespan)
    app.state.spool = spool
    guarded = CsrfGuard(app, page.csrf_refused)
    return PasswordGate(guarded, password) if password else guarded
