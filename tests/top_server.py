"""A loopback TOP router (Taobao Open Platform) for tests: uvicorn on 127.0.0.1, following the published protocol.

- One POST form (or GET query) per call with the common parameters ``method``, ``app_key``, ``session``,
  ``timestamp`` (``yyyy-MM-dd HH:mm:ss``, China time, within 10 minutes), ``format=json``, ``v=2.0``,
  ``sign_method`` and ``sign``; the signature is checked for md5 and hmac-sha256 and a bad one is refused like TOP
  does (``error_response`` code 25 Invalid signature), as are an unknown app key (29) and session (27).
- ``taobao.trades.sold.increment.get``: ``start_modified`` / ``end_modified`` at most one day apart and within
  the last three months (else code 41 Invalid arguments), ``page_size`` ≤ 100, the trade ``type`` filter (without
  it only guarantee_trade, auto_delivery, ec, cod and step, so fenxiao is not served), trades newest-modified
  first, ``total_results`` or, with ``use_has_next=true``, ``has_next``; only the requested ``fields``, and never the
  receiver's fields (as TOP's list calls do not carry them).
- ``taobao.trade.fullinfo.get``: one trade by ``tid`` with the requested fields, the receiver's included.

Scripted failures, one per call from the front of ``script``: ``("limited", seconds)`` answers code 7 App Call
Limited ("This ban will last for N more seconds"), ``("isp",)`` code 15 with an isp.* sub-code, ``("status", 502)``
an HTTP error, ``("slow", seconds)`` answers after a delay; ``before`` (a callable of the call's number and
parameters) runs before each call is answered, e.g. to modify an order between page reads; ``delay(params)``
returns seconds to wait before answering a call (a slow link for some windows).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from loopback import Loopback

CST = timezone(timedelta(hours=8))
DEFAULT_TYPES = {"guarantee_trade", "auto_delivery", "ec", "cod", "step", "fixed", "auction"}
RECEIVER = {"receiver_name", "receiver_mobile", "receiver_phone", "receiver_city", "receiver_district",
            "receiver_address", "receiver_state", "sign_time"}


def cst(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=CST)


def top_signature(params: dict, secret: str, method: str) -> str:
    joined = "".join(k + v for k, v in sorted(params.items()) if k != "sign" and v != "")
    if method == "md5":
        return hashlib.md5((secret + joined + secret).encode("utf-8")).hexdigest().upper()
    return hmac.new(secret.encode("utf-8"), joined.encode("utf-8"), hashlib.sha256).hexdigest().upper()


def _error(code: int, msg: str, sub_code: str | None = None, sub_msg: str | None = None) -> dict:
    err = {"code": code, "msg": msg, "request_id": "test"}
    if sub_code:
        err |= {"sub_code": sub_code, "sub_msg": sub_msg or ""}
    return {"error_response": err}


class TopRouter:
    def __init__(self, app_key: str = "23456789", secret: str = "top-secret-1", session: str = "6100a-session",
                 now: datetime | None = None):
        self.app_key, self.secret, self.session = app_key, secret, session
        self.now = now                            # the router's clock for the three-month limit (None: real time)
        self.trades: dict[str, dict] = {}         # tid -> the trade as TOP holds it (TOP field names, text values)
        self.script: list[tuple] = []
        self.before = None
        self.delay = None
        self.calls: list[dict] = []               # every call's parameters, in order
        self.refused: list[tuple[int, str]] = []  # (code, msg) of every error answer
        self._server: Loopback | None = None
        self._stopping = False
        self.url = ""

    # ------------------------------------------------------------------ data
    def put(self, trade: dict) -> None:
        self.trades[str(trade["tid"])] = trade

    def modify(self, tid, modified: str, **fields) -> None:
        self.trades[str(tid)] |= {"modified": modified, **fields}

    def increments(self) -> list[dict]:
        return [c for c in self.calls if c.get("method") == "taobao.trades.sold.increment.get"]

    # ------------------------------------------------------------------ protocol
    def _check(self, p: dict) -> dict | None:
        for key, code, msg in (("method", 21, "Missing Method"), ("sign", 24, "Missing Signature"),
                               ("app_key", 28, "Missing App Key"), ("timestamp", 30, "Missing Timestamp"),
                               ("v", 32, "Missing Version"), ("session", 26, "Missing Session")):
            if not p.get(key):
                return _error(code, msg)
        if p.get("format", "xml") != "json":
            return _error(23, "Invalid Format")
        if p["v"] != "2.0":
            return _error(33, "Invalid Version")
        if p["app_key"] != self.app_key:
            return _error(29, "Invalid App Key")
        method = p.get("sign_method", "md5")
        if method not in ("md5", "hmac-sha256"):
            return _error(25, "Invalid Signature", "isv.invalid-signature-method", f"unsupported {method}")
        if not hmac.compare_digest(p["sign"], top_signature(p, self.secret, method)):
            return _error(25, "Invalid Signature")
        try:
            skew = abs((cst(p["timestamp"]) - datetime.now(CST)).total_seconds())
        except ValueError:
            return _error(31, "Invalid Timestamp")
        if skew > 600:
            return _error(31, "Invalid Timestamp", "isv.invalid-timestamp", "more than 10 minutes off")
        if p["session"] != self.session:
            return _error(27, "Invalid session", "invalid-sessionkey", "SessionKey非法")
        return None

    def _fields(self, trade: dict, fields: set[str], receiver: bool) -> dict:
        out = {k: v for k, v in trade.items() if k in fields and (receiver or k not in RECEIVER)}
        if "orders" in out:
            out["orders"] = {"order": out["orders"]}
        return out

    def _increment(self, p: dict) -> dict:
        for key in ("fields", "start_modified", "end_modified"):
            if not p.get(key):
                return _error(40, "Missing Required Arguments", f"isv.missing-parameter:{key}", f"{key} is required")
        try:
            start, end = cst(p["start_modified"]), cst(p["end_modified"])
        except ValueError:
            return _error(41, "Invalid Arguments", "isv.invalid-parameter", "start_modified/end_modified: yyyy-MM-dd HH:mm:ss")
        if end < start or end - start > timedelta(days=1):
            return _error(41, "Invalid Arguments", "isv.invalid-parameter",
                          "end_modified - start_modified must be within one day")
        now = self.now or datetime.now(CST)
        if start < now - timedelta(days=90):
            return _error(41, "Invalid Arguments", "isv.invalid-parameter", "only the last three months can be read")
        size, page = int(p.get("page_size", "40")), int(p.get("page_no", "1"))
        if not 1 <= size <= 100 or page < 1:
            return _error(41, "Invalid Arguments", "isv.invalid-parameter", "page_size 1-100, page_no from 1")
        types = set(p["type"].split(",")) if p.get("type") else DEFAULT_TYPES
        found = [t for t in self.trades.values() if start <= cst(t["modified"]) <= end and t.get("type") in types]
        found.sort(key=lambda t: (t["modified"], str(t["tid"])), reverse=True)
        fields = set(p["fields"].split(","))
        chunk = [self._fields(t, fields, receiver=False) for t in found[(page - 1) * size: page * size]]
        body: dict = {"trades": {"trade": chunk}} if chunk else {}
        if p.get("use_has_next") == "true":
            body["has_next"] = page * size < len(found)
        else:
            body["total_results"] = len(found)
        return {"trades_sold_increment_get_response": body | {"request_id": "test"}}

    def _fullinfo(self, p: dict) -> dict:
        trade = self.trades.get(p.get("tid", ""))
        if trade is None:
            return _error(15, "Remote service error", "isv.trade-not-exist", "trade not found")
        return {"trade_fullinfo_get_response": {"trade": self._fields(trade, set(p.get("fields", "").split(",")),
                                                                     receiver=True), "request_id": "test"}}

    async def _router(self, request: Request):
        body = (await request.body()).decode("utf-8")
        p = dict(parse_qsl(request.url.query, keep_blank_values=True)) | dict(parse_qsl(body, keep_blank_values=True))
        self.calls.append(p)
        n = len(self.calls)
        if self.delay:
            until = time.monotonic() + self.delay(p)
            while time.monotonic() < until and not self._stopping:     # a stop ends the wait
                await asyncio.sleep(0.05)
        behaviour = self.script.pop(0) if self.script else None
        if behaviour and behaviour[0] == "status":
            return PlainTextResponse("bad gateway", status_code=behaviour[1])
        if behaviour and behaviour[0] == "slow":
            await asyncio.sleep(behaviour[1])
        answer = self._check(p)
        if answer is None and behaviour and behaviour[0] == "limited":
            answer = _error(7, "App Call Limited", "accesscontrol.limited-by-app-access-count",
                            f"This ban will last for {behaviour[1]} more seconds")
        if answer is None and behaviour and behaviour[0] == "isp":
            answer = _error(15, "Remote service error", "isp.top-remote-connection-timeout", "please retry")
        if answer is None:
            if self.before:
                self.before(n, p)
            if p["method"] == "taobao.trades.sold.increment.get":
                answer = self._increment(p)
            elif p["method"] == "taobao.trade.fullinfo.get":
                answer = self._fullinfo(p)
            else:
                answer = _error(22, "Invalid Method")
        if "error_response" in answer:
            self.refused.append((answer["error_response"]["code"], answer["error_response"]["msg"]))
        return JSONResponse(answer)

    # ------------------------------------------------------------------ server
    def start(self) -> "TopRouter":
        self._server = Loopback(Starlette(routes=[Route("/router/rest", self._router, methods=["GET", "POST"])]))
        self.url = f"http://127.0.0.1:{self._server.port}/router/rest"
        return self

    def stop(self) -> None:
        self._stopping = True
        if self._server:
            self._server.stop()
