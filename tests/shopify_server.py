"""A loopback Shopify GraphQL Admin API for tests: an ASGI app served by uvicorn on 127.0.0.1.

It follows the published protocol where the extract depends on it:
- ``POST /admin/api/<api_version>/graphql.json`` with a JSON body ``{"query", "variables"}``; another path
  or version is a 404; a missing or wrong ``X-Shopify-Access-Token`` a 401 with Shopify's text;
- ``orders(first:, after:, sortKey: UPDATED_AT, query:)``: the search terms ``updated_at:>=`` / ``<=`` /
  ``>`` / ``<`` joined by ``AND`` (anything else is refused, so a wrong filter shows); oldest change first,
  ties by id; opaque cursors that carry the last order's (``updatedAt``, id), as Shopify's do, so an order
  changed while it is paged moves behind the cursor; ``pageInfo { hasNextPage endCursor }``;
- ``order(id:) { lineItems(first:, after:) }`` for the rest of an order's line items;
- cost-based throttling: a leaky bucket (``maximumAvailable``, ``restoreRate`` points a second) on the
  injected clock; each query's requested cost is computed like Shopify's (objects 1, a connection or list
  2 + first × its node; scalars 0), over 1,000 is ``MAX_COST_EXCEEDED``; a bucket holding less than the
  requested cost answers ``THROTTLED`` (HTTP 200, ``actualQueryCost`` null); otherwise the bucket pays the
  requested cost and gets back the difference to the actual one; every answer has ``extensions.cost``.

Faults are scripted: ``script`` is a list of behaviours used one per request before the normal answer:
``("status", 503)``, ``("retry_after", 429, seconds)``, ``("slow", seconds)`` (answers late: a client
timeout), ``("graphql_error", code)``, ``("hold",)`` (answers only once ``release`` is set: a run to kill while
it waits), ``None`` (answer normally). ``on_request(n, variables)`` runs before request n is answered (to
change orders while they are paged). The clock is a :class:`Clock`, shared with the test's injected sleep.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from loopback import Loopback

TOKEN = "shpat_test_0123456789abcdef"
MAX_QUERY_COST = 1000


class Clock:
    """The test's time: the client's injected sleep advances it, the server's bucket and edits read it."""

    def __init__(self, start: datetime):
        self.now = start
        self.waits: list[float] = []
        self._elapsed = 0.0          # seconds moved since the start (monotonic time, exact sums of the waits)
        self._lock = threading.Lock()

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.waits.append(seconds)
            self.now += timedelta(seconds=seconds)
            self._elapsed += seconds

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += timedelta(seconds=seconds)
            self._elapsed += seconds

    def set(self, t: datetime) -> None:
        """Jump forward to t."""
        self.advance((t - self.now).total_seconds())

    def monotonic(self) -> float:
        return self._elapsed


def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _num(gid: str) -> int:
    """gid://shopify/Order/123 -> 123"""
    return int(gid.rsplit("/", 1)[-1])


# ------------------------------------------------------------------------------------------------ records


def customer(cid: int, *, first="Mei", last="Lin", email: str | None = "mei@example.com",
             phone: str | None = "+8613800138000", created: datetime, updated: datetime | None = None,
             email_state="SUBSCRIBED", sms_state="NOT_SUBSCRIBED", city="Hangzhou") -> dict:
    return {
        "legacyResourceId": str(cid), "firstName": first, "lastName": last,
        "displayName": " ".join(p for p in (first, last) if p) or (email or phone or ""),
        "createdAt": iso(created), "updatedAt": iso(updated or created),
        "defaultEmailAddress": {"emailAddress": email, "marketingState": email_state} if email else None,
        "defaultPhoneNumber": {"phoneNumber": phone, "marketingState": sms_state} if phone else None,
        "defaultAddress": {"city": city},
    }


def product(pid: int, title="Mug", product_type="Kitchen", tags=("cute", "gift")) -> dict:
    return {"legacyResourceId": str(pid), "title": title, "productType": product_type, "tags": list(tags)}


def line(lid: int, prod: dict | None, quantity=1, price="19.90", currency="USD", title=None) -> dict:
    return {"id": f"gid://shopify/LineItem/{lid}", "title": title or (prod or {}).get("title") or "Custom item",
            "quantity": quantity,
            "originalUnitPriceSet": {"shopMoney": {"amount": price, "currencyCode": currency}},
            "product": prod}


def order(oid: int, *, created: datetime, updated: datetime | None = None, cust: dict | None = None,
          lines: list[dict] | None = None, total="19.90", currency="USD", city="Hangzhou",
          financial="PENDING", fulfillment="UNFULFILLED", transactions=(), fulfillments=(), refunds=(),
          cancelled: datetime | None = None) -> dict:
    return {
        "id": f"gid://shopify/Order/{oid}", "legacyResourceId": str(oid), "name": f"#{oid}",
        "createdAt": iso(created), "updatedAt": iso(updated or created),
        "cancelledAt": iso(cancelled) if cancelled else None,
        "displayFinancialStatus": financial, "displayFulfillmentStatus": fulfillment,
        "totalPriceSet": {"shopMoney": {"amount": total, "currencyCode": currency}},
        "shippingAddress": {"city": city}, "customer": cust,
        "lineItems": list(lines or []),            # the whole list; pages are cut when answered
        "fulfillments": list(fulfillments), "refunds": list(refunds), "transactions": list(transactions),
    }


def tx(kind: str, at: datetime, status="SUCCESS") -> dict:
    return {"kind": kind, "status": status, "processedAt": iso(at), "createdAt": iso(at)}


# ------------------------------------------------------------------------------------------------ server

_TERM = re.compile(r"^updated_at:(>=|<=|>|<)'([^']+)'$")
_LIST_FIRST = re.compile(r"\b(fulfillments|refunds|transactions)\(first:\s*(\d+)\)")


@dataclass
class ShopifyServer:
    clock: Clock
    token: str = TOKEN
    api_version: str = "2025-10"
    bucket_max: float = 1000.0
    restore_rate: float = 100.0
    orders: dict[int, dict] = field(default_factory=dict)
    script: list = field(default_factory=list)
    on_request: Callable[[int, dict], None] | None = None
    requests: list[dict] = field(default_factory=list)      # {"n", "status", "variables", "token_ok", "code"}
    throttled: int = 0
    release: threading.Event = field(default_factory=threading.Event)
    real_time: bool = False      # the bucket refills in real time (a client in another process really sleeps)

    def __post_init__(self):
        self._available = self.bucket_max
        self._seen = self._monotonic()
        self._lock = threading.Lock()
        self._server: Loopback | None = None
        self.url = ""

    # ---------------------------------------------------------------- data
    def put(self, *records: dict) -> None:
        with self._lock:
            for r in records:
                self.orders[_num(r["id"])] = r

    def modify(self, oid: int, **changes: Any) -> dict:
        """An edit on the platform: the fields change and updatedAt becomes the clock's now."""
        names = {"financial": "displayFinancialStatus", "fulfillment": "displayFulfillmentStatus"}
        with self._lock:
            record = self.orders[oid]
            for key, value in changes.items():
                key = names.get(key, key)
                if key not in record:
                    raise KeyError(f"an order has no field {key!r}")
                record[key] = value
            record["updatedAt"] = iso(self.clock.now)
            return record

    def drain(self, points: float) -> None:
        """Another client of the same app and store used this much of the bucket just now."""
        with self._lock:
            self._refill()
            self._available = max(0.0, self._available - points)

    # ---------------------------------------------------------------- the bucket
    def _monotonic(self) -> float:
        return time.monotonic() if self.real_time else self.clock.monotonic()

    def use_real_time(self) -> None:
        with self._lock:
            self.real_time, self._seen = True, time.monotonic()

    def _refill(self) -> None:
        now = self._monotonic()
        self._available = min(self.bucket_max, self._available + self.restore_rate * max(0.0, now - self._seen))
        self._seen = now

    def _cost_ext(self, requested: int, actual: int | None) -> dict:
        return {"cost": {"requestedQueryCost": requested, "actualQueryCost": actual,
                         "throttleStatus": {"maximumAvailable": self.bucket_max,
                                            "currentlyAvailable": round(self._available, 1),
                                            "restoreRate": self.restore_rate}}}

    @staticmethod
    def _order_cost(query: str, lines: int) -> int:
        # Order 1; totalPriceSet 1 + shopMoney 1; shippingAddress 1; customer 1 + its three objects 3;
        # lineItems 2 + pageInfo 1 + lines × (LineItem 1 + originalUnitPriceSet 2 + product 1); each list
        # with first: N costs N (one object per element)
        lists = sum(int(n) for _, n in _LIST_FIRST.findall(query))
        return 8 + 3 + 4 * lines + lists

    # ---------------------------------------------------------------- the endpoint
    async def _graphql(self, request: Request):
        n = len(self.requests) + 1
        entry: dict[str, Any] = {"n": n, "status": 200, "variables": None, "code": None,
                                 "token_ok": request.headers.get("x-shopify-access-token") == self.token}
        self.requests.append(entry)
        if request.path_params["version"] != self.api_version:
            entry["status"] = 404
            return PlainTextResponse("Not Found", status_code=404)
        if not entry["token_ok"]:
            entry["status"] = 401
            return JSONResponse({"errors": "[API] Invalid API key or access token (unrecognized login or "
                                           "wrong password)"}, status_code=401)
        if not request.headers.get("content-type", "").startswith("application/json"):
            entry["status"] = 415
            return JSONResponse({"errors": "Content-Type must be application/json"}, status_code=415)
        body = await request.json()
        query, variables = body.get("query") or "", body.get("variables") or {}
        entry["variables"] = variables
        if self.on_request:
            self.on_request(n, variables)
        behaviour = self.script.pop(0) if self.script else None
        if behaviour is not None:
            entry["code"] = behaviour[0]
            if behaviour[0] == "status":
                entry["status"] = behaviour[1]
                return PlainTextResponse("upstream trouble", status_code=behaviour[1])
            if behaviour[0] == "retry_after":
                entry["status"] = behaviour[1]
                return JSONResponse({"errors": "Exceeded 2 calls per second for api client. Reduce request "
                                               "rates to resume uninterrupted service."},
                                    status_code=behaviour[1], headers={"Retry-After": str(behaviour[2])})
            if behaviour[0] == "slow":
                await asyncio.sleep(behaviour[1])
            if behaviour[0] == "hold":
                for _ in range(3000):
                    if self.release.is_set():
                        break
                    await asyncio.sleep(0.02)
            if behaviour[0] == "graphql_error":
                return JSONResponse({"errors": [{"message": behaviour[1].replace("_", " ").lower(),
                                                 "extensions": {"code": behaviour[1]}}]})
        with self._lock:
            return self._answer(query, variables, entry)

    def _answer(self, query: str, variables: dict, entry: dict):
        if "orders(" in query and "sortKey: UPDATED_AT" in query:
            first, lines = int(variables["first"]), int(variables.get("lines") or 0)
            requested = 3 + first * self._order_cost(query, lines)
            run = lambda: self._orders(first, variables.get("after"), variables.get("query") or "", lines, query)
        elif "order(id:" in query:
            first = int(variables["first"])
            requested = 2 + 1 + 2 + first * 4
            run = lambda: self._more_lines(variables["id"], first, variables.get("after"))
        else:
            entry["code"] = "unknown query"
            return JSONResponse({"errors": [{"message": "this test server knows orders and order(id:) only"}]})
        if requested > MAX_QUERY_COST:
            entry["code"] = "MAX_COST_EXCEEDED"
            return JSONResponse({"errors": [{
                "message": f"Query cost is {requested}, which exceeds the single query max cost limit (1000).",
                "extensions": {"code": "MAX_COST_EXCEEDED", "cost": requested, "maxCost": MAX_QUERY_COST}}]})
        self._refill()
        if self._available < requested - 1e-6:          # float noise is not a shortfall
            self.throttled += 1
            entry["code"] = "THROTTLED"
            return JSONResponse({"errors": [{"message": "Throttled", "extensions": {
                "code": "THROTTLED", "documentation": "https://shopify.dev/api/usage/rate-limits"}}],
                "extensions": self._cost_ext(requested, None)})
        try:
            data, actual = run()
        except ValueError as e:
            entry["code"] = "bad query"
            return JSONResponse({"errors": [{"message": str(e)}]})
        self._available -= min(actual, requested)       # pays the requested cost, gets the rest back
        entry["available"] = round(self._available, 1)
        return JSONResponse({"data": data, "extensions": self._cost_ext(requested, actual)})

    def _orders(self, first: int, after: str | None, search: str, lines: int, query: str):
        terms = [t.strip() for t in search.split(" AND ")] if search.strip() else []
        bounds = []
        for t in terms:
            m = _TERM.match(t)
            if not m:
                raise ValueError(f"unsupported search term {t!r}")
            bounds.append((m.group(1), _ts(m.group(2))))

        def keep(r: dict) -> bool:
            u = _ts(r["updatedAt"])
            return all({">=": u >= b, "<=": u <= b, ">": u > b, "<": u < b}[op] for op, b in bounds)

        def key(r: dict):
            return (_ts(r["updatedAt"]), _num(r["id"]))

        chosen = sorted((r for r in self.orders.values() if keep(r)), key=key)
        if after:
            c = json.loads(base64.b64decode(after))
            last = (_ts(c["last_value"]), int(c["last_id"]))
            chosen = [r for r in chosen if key(r) > last]
        page, more = chosen[:first], len(chosen) > first
        nodes, actual = [], 3
        for r in page:
            node = json.loads(json.dumps(r))
            all_lines = node["lineItems"]
            node["lineItems"] = self._line_page(node["id"], all_lines, lines, 0)
            nodes.append(node)
            # what came back: the order's objects, its lines, one per list element
            actual += 11 + 4 * len(node["lineItems"]["nodes"]) + len(r["fulfillments"]) + len(r["refunds"]) \
                + len(r["transactions"])
        end = None
        if page:
            last = page[-1]
            end = base64.b64encode(json.dumps({"last_id": _num(last["id"]),
                                               "last_value": last["updatedAt"]}).encode()).decode()
        return {"orders": {"pageInfo": {"hasNextPage": more, "endCursor": end}, "nodes": nodes}}, actual

    @staticmethod
    def _line_page(order_gid: str, all_lines: list[dict], first: int, start: int) -> dict:
        chunk = all_lines[start:start + first]
        more = start + first < len(all_lines)
        end = base64.b64encode(json.dumps({"order": order_gid, "at": start + len(chunk)}).encode()).decode()
        return {"pageInfo": {"hasNextPage": more, "endCursor": end if chunk else None}, "nodes": chunk}

    def _more_lines(self, gid: str, first: int, after: str | None):
        oid = _num(gid)
        record = self.orders.get(oid)
        if record is None:
            return {"order": None}, 1
        start = json.loads(base64.b64decode(after))["at"] if after else 0
        conn = self._line_page(gid, json.loads(json.dumps(record["lineItems"])), first, start)
        return {"order": {"lineItems": conn}}, 3 + 4 * len(conn["nodes"])

    # ---------------------------------------------------------------- lifecycle
    @property
    def endpoint(self) -> str:
        return self.url

    def start(self) -> "ShopifyServer":
        self._server = Loopback(Starlette(routes=[Route("/admin/api/{version}/graphql.json", self._graphql,
                                                        methods=["POST"])]))
        self.url = f"http://127.0.0.1:{self._server.port}"
        return self

    def stop(self) -> None:
        self.release.set()
        if self._server:
            self._server.stop()
