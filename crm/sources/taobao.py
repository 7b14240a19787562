"""Taobao / Tmall through the TOP API (docs/rules.md §11).

The router (``[shops.source] endpoint``, default https://eco.taobao.com/router/rest) takes one POST form per call
with the common parameters ``method``, ``app_key``, ``session``, ``timestamp`` (``yyyy-MM-dd HH:mm:ss`` in China
Standard Time), ``format=json``, ``v=2.0``, ``sign_method`` (``md5`` or ``hmac-sha256``) and ``sign``: the upper-case
hex of md5(secret + every parameter but sign, sorted by name, as name + value + secret) or of
hmac-sha256(key = secret, the same name + value text). Everything goes in the body, so no secret is ever in a URL.

Orders come from ``taobao.trades.sold.increment.get`` (by modification time): at most one day per request, the
last three months only, newest-modified first. Each day-window is read from its last page back to its first
(page 1 first for ``total_results``, then the last page to page 2 with ``use_has_next``, then page 1 again), so
that an order modified while the window is being paged — it leaves the window, and the ones after it move up a
place — is read twice at worst, never missed; a window keeps each ``tid``'s newest version. Receiver fields the
increment does not carry come from ``taobao.trade.fullinfo.get``. ``error_response`` code 7 (App Call Limited)
and ``isp.*`` sub-codes wait (the ban's seconds when TOP names them) and retry, as do 5xx answers and timeouts;
an invalid session (26, 27), signature (25) or app key (29) is one line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import random
import re
import time
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterator, Mapping

import httpx

from crm import progress
from crm.sources import Batch, SourceError, SourceUnavailable

CST = timezone(timedelta(hours=8), "CST")
DAY = timedelta(days=1)
READABLE = timedelta(days=90)             # TOP: only the last three months of trades can be read
PAGE_SIZE = 100                           # TOP's largest page
FLUSH_PAGES = 50                          # a window this long is written in parts (the watermark moves at its end)

INCREMENT = "taobao.trades.sold.increment.get"
FULLINFO = "taobao.trade.fullinfo.get"
# every trade type: without `type`, TOP answers only guarantee_trade, auto_delivery, ec, cod and step, so
# distribution (fenxiao) and other orders would be missed
TYPES = ("fixed,auction,guarantee_trade,step,independent_simple_trade,independent_shop_trade,auto_delivery,ec,cod,"
         "fenxiao,game_equipment,shopex_trade,netcn_trade,external_trade,o2o_offlinetrade,nopaid,pre_auth_type,"
         "tmall_i18n")
TRADE_FIELDS = ("tid,type,status,created,modified,pay_time,consign_time,end_time,payment,buyer_open_uid,buyer_nick,"
                "receiver_name,receiver_mobile,receiver_city,receiver_district,orders")
RECEIVER = ("receiver_name", "receiver_mobile", "receiver_city", "receiver_district", "sign_time")
FULLINFO_FIELDS = "tid," + ",".join(RECEIVER)

CLOSED = {"TRADE_CLOSED", "TRADE_CLOSED_BY_TAOBAO"}
DELIVERED = {"TRADE_FINISHED", "TRADE_BUYER_SIGNED"}
_TOP_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
_BAN = re.compile(r"(\d+)\s*more\s*seconds", re.I)

MAX_ATTEMPTS = 6                          # transient failures of one call before the run gives up
MAX_LIMITED = 12                          # App Call Limited answers of one call waited out
LONGEST_WAIT = 120.0                      # a ban longer than this ends the run: the next run continues


def sign(params: Mapping[str, str], secret: str, method: str) -> str:
    """TOP's signature of the parameters (without `sign`): md5 or hmac-sha256, upper-case hex."""
    text = "".join(f"{k}{params[k]}" for k in sorted(params) if params[k] not in (None, ""))
    if method == "hmac-sha256":
        return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest().upper()
    return hashlib.md5(f"{secret}{text}{secret}".encode()).hexdigest().upper()


def top_time(value: datetime) -> str:
    return value.astimezone(CST).strftime("%Y-%m-%d %H:%M:%S")


def windows(since: datetime, until: datetime) -> Iterator[tuple[datetime, datetime]]:
    """[since, until] in whole seconds as one-day windows (each end is the next start)."""
    start = since.astimezone(timezone.utc).replace(microsecond=0)
    end = until.astimezone(timezone.utc).replace(microsecond=0)
    while start < end:
        stop = min(start + DAY, end)
        yield start, stop
        start = stop


class TopError(Exception):
    def __init__(self, answer: dict):
        self.code = answer.get("code")
        self.msg, self.sub_code, self.sub_msg = answer.get("msg"), answer.get("sub_code"), answer.get("sub_msg")
        super().__init__(f"code {self.code} {self.msg}" + (f" ({self.sub_code}: {self.sub_msg})" if self.sub_code else ""))


class Refused(SourceError):
    """TOP refused one call for a reason of its own (not the session, signature or app key)."""


class Client:
    """Signed calls to the TOP router with waits and retries (all waits through `sleep`)."""

    def __init__(self, shop_id: str, url: str, app_key: str, secret: str, session: str, sign_method: str, *,
                 sleep: Callable[[float], None], timeout: float, secret_var: str, session_var: str):
        self.shop_id, self.url, self.app_key = shop_id, url, app_key
        self._secret, self._session, self.sign_method = secret, session, sign_method
        self.sleep, self.secret_var, self.session_var = sleep, secret_var, session_var
        self.http = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                                 headers={"Accept": "application/json"})
        self.calls = 0

    def _params(self, method: str, params: dict) -> dict:
        out = {"method": method, "app_key": self.app_key, "session": self._session,
               "timestamp": top_time(datetime.now(timezone.utc)), "format": "json", "v": "2.0",
               "sign_method": self.sign_method, **{k: str(v) for k, v in params.items() if v is not None}}
        out["sign"] = sign(out, self._secret, self.sign_method)
        return out

    def _fail(self, e: TopError) -> SourceError:
        who = f"shop {self.shop_id!r}: TOP refused the call ({e})"
        if e.code in (26, 27) or str(e.sub_code or "").startswith("isv.session"):
            return SourceError(f"{who}: the seller's session key in {self.session_var} is missing, invalid or "
                               "expired; authorise the app again and put the new session key there")
        if e.code == 25:
            return SourceError(f"{who}: the signature is wrong: the app secret in {self.secret_var} does not belong "
                               f"to app_key {self.app_key!r}, or sign_method {self.sign_method!r} is not the app's")
        if e.code == 29:
            return SourceError(f"{who}: app_key {self.app_key!r} is not a TOP app key")
        return Refused(who)

    def call(self, method: str, **params) -> dict:
        """The `<method>_response` object of one call (waits and retries inside; SourceError /
        SourceUnavailable when it cannot be had)."""
        key = method.removeprefix("taobao.").replace(".", "_") + "_response"
        attempts = limited = 0
        last = ""
        while True:
            self.calls += 1
            wait = None
            try:
                answer = self.http.post(self.url, data=self._params(method, params))
            except httpx.TimeoutException:
                last = "no answer in time"
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'connection failed'}"
            else:
                if answer.status_code == 429 or answer.status_code >= 500:
                    last = f"HTTP {answer.status_code}"
                elif answer.status_code != 200:
                    raise SourceError(f"shop {self.shop_id!r}: {self.url} answered HTTP {answer.status_code}: is the "
                                      "endpoint the TOP router (…/router/rest)?")
                else:
                    try:
                        body = answer.json()
                    except ValueError:
                        body = None
                    if not isinstance(body, dict):
                        last = "an answer that is not TOP's JSON"
                    elif "error_response" in body:
                        e = TopError(body["error_response"] or {})
                        if e.code == 7 or "limited" in str(e.sub_code or "").lower():
                            limited += 1
                            ban = _BAN.search(str(e.sub_msg or "")) or _BAN.search(str(e.msg or ""))
                            wait = float(ban.group(1)) + 1 if ban else min(60.0, 2.0 * 2 ** min(limited, 5))
                            if wait > LONGEST_WAIT or limited > MAX_LIMITED:
                                raise SourceUnavailable(
                                    f"shop {self.shop_id!r}: TOP limits this app's calls ({e}); the next run "
                                    "continues from the watermark")
                            self.sleep(wait)
                            continue
                        sub = str(e.sub_code or "")
                        if sub.startswith("isp.") or e.code == 10 or (e.code == 15 and not sub.startswith("isv.")):
                            last = str(e)                      # TOP's own trouble: worth another try
                        else:
                            raise self._fail(e)
                    elif key not in body:
                        last = f"an answer without {key}"
                    else:
                        return body[key] or {}
            attempts += 1
            if attempts >= MAX_ATTEMPTS:
                raise SourceUnavailable(f"shop {self.shop_id!r}: the TOP router {self.url} gave no usable answer to "
                                        f"{method} after {attempts} tries (last: {last}); the next run continues from "
                                        "the watermark")
            backoff = min(30.0, 0.5 * 2 ** (attempts - 1))
            self.sleep(backoff / 2 + random.uniform(0, backoff / 2))

    def close(self) -> None:
        self.http.close()


# --------------------------------------------------------------------------------------------------
# mapping: a TOP trade -> §1 rows


class Unmappable(ValueError):
    pass


def _time(trade: dict, key: str, required: bool = False) -> str | None:
    value = trade.get(key)
    if value in (None, ""):
        if required:
            raise Unmappable(f"no {key}")
        return None
    text = str(value)
    if not _TOP_TIME.match(text):
        raise Unmappable(f"{key} {text[:40]!r} is not a TOP time (yyyy-MM-dd HH:mm:ss)")
    try:
        datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        raise Unmappable(f"{key} {text!r} is not a TOP time (yyyy-MM-dd HH:mm:ss)") from None
    return text.replace(" ", "T") + "+08:00"                  # China Standard Time, written with its offset


def _sub_orders(trade: dict) -> list:
    orders = trade.get("orders")
    if isinstance(orders, dict):
        orders = orders.get("order")
    if orders is None:
        return []
    if isinstance(orders, dict):                               # one sub-order, not in a list
        orders = [orders]
    if not isinstance(orders, list):
        raise Unmappable("orders is not a list of sub-orders")
    return orders


def platform(trade: dict, subs: list) -> str:
    """'fenxiao' for distribution (type fenxiao, or a sub-order with a 代销 purchase order: is_daixiao), 'tmall'
    for a Tmall (商城, seller_type B) shop's trade, else 'taobao'."""
    if trade.get("type") == "fenxiao" or any(isinstance(o, dict) and o.get("is_daixiao") in (True, "true")
                                             for o in subs):
        return "fenxiao"
    if any(isinstance(o, dict) and o.get("seller_type") == "B" for o in subs):
        return "tmall"
    return "taobao"


def map_trade(shop_id: str, trade: dict) -> tuple[dict[str, list[dict]], list[dict]]:
    """One trade's rows (orders, order_items, products, customers) and the rejects of its parts; raises
    Unmappable when the trade itself cannot be mapped."""
    if not isinstance(trade, dict):
        raise Unmappable("the trade is not a JSON object")
    tid = trade.get("tid_str") or trade.get("tid")
    if tid in (None, ""):
        raise Unmappable("no tid")
    tid = str(tid)
    buyer = trade.get("buyer_open_uid")
    if not buyer:
        raise Unmappable("no buyer_open_uid")
    status = str(trade.get("status") or "")
    created = _time(trade, "created", True)
    modified = _time(trade, "modified", True)
    paid, shipped = _time(trade, "pay_time"), _time(trade, "consign_time")
    end, signed = _time(trade, "end_time"), _time(trade, "sign_time")
    subs = _sub_orders(trade)
    sub_ends = []
    for o in subs:
        if isinstance(o, dict):
            sub_ends.append(_time(o, "end_time"))
    refunded_all = bool(subs) and all(isinstance(o, dict) and o.get("refund_status") == "SUCCESS" for o in subs)
    closed_at = (end or modified) if status in CLOSED else None
    refunded_at = None
    if paid and (status == "TRADE_CLOSED" or refunded_all):
        refunded_at = max([t for t in sub_ends if t] or [end or modified]) if refunded_all else (end or modified)
    delivered_at = signed or ((end or modified) if status in DELIVERED else None)
    city = trade.get("receiver_city") or trade.get("receiver_district") or None
    order = {
        "order_id": tid, "shop_id": shop_id, "customer_id": str(buyer), "platform": platform(trade, subs),
        "created_at": created, "paid_at": paid, "shipped_at": shipped, "delivered_at": delivered_at,
        "closed_at": closed_at, "refunded_at": refunded_at, "total_amount": trade.get("payment"),
        "currency": "CNY", "receiver_city": city, "updated_at": modified,
    }
    mobile = str(trade.get("receiver_mobile") or "")
    customer = {
        "customer_id": str(buyer), "shop_id": shop_id,
        "name": trade.get("receiver_name") or trade.get("buyer_nick") or str(buyer),
        # TOP masks the number for apps without the decrypting permission (138****0000): no phone, not a bad one
        "phone": mobile if mobile and "*" not in mobile else None,
        "email": None, "city": city, "member_level": None, "registered_at": created, "opt_out": None,
        "updated_at": modified,
    }
    rows: dict[str, list[dict]] = {"orders": [order], "customers": [customer], "order_items": [], "products": []}
    rejects = []
    for line_no, o in enumerate(subs, start=1):
        problem = None
        if not isinstance(o, dict):
            problem = "the sub-order is not a JSON object"
        elif o.get("num_iid") in (None, ""):
            problem = "the sub-order has no num_iid"
        if problem:
            rejects.append({"entity": "order_items", "ref": f"tid {tid} line {line_no}", "reason": problem,
                            "raw": json.dumps(o, ensure_ascii=False, default=str)})
            continue
        item = str(o["num_iid"])
        rows["order_items"].append({"order_id": tid, "line_no": line_no, "product_id": item,
                                    "quantity": o.get("num"), "unit_price": o.get("price")})
        rows["products"].append({"product_id": item, "shop_id": shop_id, "title": o.get("title") or item,
                                 "category": None, "style_tags": None, "followup_days": None})
    return rows, rejects


# --------------------------------------------------------------------------------------------------
# the source


class TaobaoSource:
    def __init__(self, shop, cfg, client: Client, page_size: int = PAGE_SIZE):
        self.shop_id, self.cfg, self.client, self.page_size = shop.shop_id, cfg, client, page_size

    def batches(self, since: datetime, until: datetime) -> Iterator[Batch]:
        notes = []
        earliest = until - READABLE
        if since < earliest:
            notes.append(f"shop {self.shop_id!r}: TOP reads only the last three months of trades: starting at "
                         f"{earliest.astimezone(CST):%Y-%m-%d %H:%M} (China time) instead of "
                         f"{since.astimezone(CST):%Y-%m-%d %H:%M}")
            since = earliest
        try:
            for start, end in windows(since, until):
                for batch in self._window(start, end):
                    batch.notes, notes = notes + batch.notes, []
                    yield batch
        finally:
            self.client.close()

    def _page(self, start: datetime, end: datetime, page_no: int, counted: bool) -> dict:
        progress.step(f"{self.shop_id}: trades modified {start.astimezone(CST):%Y-%m-%d}, page {page_no}", 1)
        return self.client.call(INCREMENT, fields=TRADE_FIELDS, start_modified=top_time(start),
                                end_modified=top_time(end), type=TYPES, page_no=page_no, page_size=self.page_size,
                                use_has_next=None if counted else "true")

    def _window(self, start: datetime, end: datetime) -> Iterator[Batch]:
        first = self._page(start, end, 1, counted=True)
        total = int(first.get("total_results") or 0)
        last_page = max(1, math.ceil(total / self.page_size))
        trades: dict[str, tuple[str, dict]] = {}
        bad: list[dict] = []
        pages = 1

        def take(answer: dict, page_no: int) -> None:
            found = answer.get("trades")
            if isinstance(found, dict):
                found = found.get("trade")
            for i, trade in enumerate(found or [], start=1):
                tid = str(trade.get("tid_str") or trade.get("tid") or "") if isinstance(trade, dict) else ""
                if not tid:
                    bad.append({"entity": "orders", "ref": f"{top_time(start)} page {page_no} #{i}",
                                "reason": "no tid" if isinstance(trade, dict) else "the trade is not a JSON object",
                                "raw": json.dumps(trade, ensure_ascii=False, default=str)})
                    continue
                modified = str(trade.get("modified") or "")
                if tid not in trades or modified >= trades[tid][0]:
                    trades[tid] = (modified, trade)

        take(first, 1)
        if last_page > 1:
            for page_no in range(last_page, 1, -1):            # the oldest page first …
                take(self._page(start, end, page_no, counted=False), page_no)
                pages += 1
                if pages % FLUSH_PAGES == 0:
                    yield self._batch(trades, bad, pages, None)
                    trades, bad, pages = {}, [], 0
            take(self._page(start, end, 1, counted=False), 1)  # … and page 1 once more, last
            pages += 1
        yield self._batch(trades, bad, pages, end)

    def _batch(self, trades: dict, bad: list, pages: int, high_water: datetime | None) -> Batch:
        rows: dict[str, list[dict]] = {"customers": [], "products": [], "orders": [], "order_items": []}
        rejects = list(bad)
        for tid, (_modified, trade) in sorted(trades.items()):
            if not any(k in trade for k in RECEIVER[:4]):
                try:
                    full = self.client.call(FULLINFO, tid=tid, fields=FULLINFO_FIELDS).get("trade") or {}
                except Refused:
                    full = {}                                   # e.g. gone since: the increment's fields only
                trade = {**trade, **{k: v for k, v in full.items() if k in RECEIVER}}
            try:
                mapped, parts = map_trade(self.shop_id, trade)
            except Unmappable as e:
                rejects.append({"entity": "orders", "ref": f"tid {tid}", "reason": str(e),
                                "raw": json.dumps(trade, ensure_ascii=False, default=str)})
                continue
            rejects += parts
            for entity, found in mapped.items():
                rows[entity] += found
        # one row per customer (the newest trade's, registered at the earliest) and per product
        customers: dict[str, dict] = {}
        for c in rows["customers"]:
            old = customers.get(c["customer_id"])
            if old is None or c["updated_at"] >= old["updated_at"]:
                c = {**c, "registered_at": min(c["registered_at"], old["registered_at"]) if old else c["registered_at"]}
                customers[c["customer_id"]] = c
            else:
                old["registered_at"] = min(c["registered_at"], old["registered_at"])
        rows["customers"] = list(customers.values())
        rows["products"] = list({p["product_id"]: p for p in rows["products"]}.values())
        return Batch(rows, rejects, high_water, pages)


def open(shop, cfg, env: Mapping[str, str], *, sleep: Callable[[float], None] = time.sleep,
         timeout: float = 20.0, page_size: int = PAGE_SIZE) -> TaobaoSource:
    for key in ("app_secret_env", "session_env"):
        var = getattr(cfg, key)
        if not env.get(var):
            raise SourceError(f"shop {shop.shop_id!r}: the environment variable {var} is not set (source.{key} names it)")
    client = Client(shop.shop_id, cfg.url, cfg.app_key, env[cfg.app_secret_env], env[cfg.session_env],
                    cfg.sign_method, sleep=sleep, timeout=timeout, secret_var=cfg.app_secret_env,
                    session_var=cfg.session_env)
    return TaobaoSource(shop, cfg, client, page_size)
