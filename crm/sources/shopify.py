"""Shopify: a shop's orders from the GraphQL Admin API (docs/rules.md §11).

One POST per page to ``<endpoint>/admin/api/<api_version>/graphql.json`` with the header
``X-Shopify-Access-Token`` (the token comes from the environment variable that ``token_env`` names):

    orders(first: N, after: <cursor>, sortKey: UPDATED_AT,
           query: "updated_at:>='<since>' AND updated_at:<='<until>'")

oldest change first. With that order a page of orders is final up to its last ``updatedAt``: an order changed
while the pages are read gets a newer ``updatedAt`` and so moves behind the cursor, to a later page (or, past
``until``, to the next run), never in front of it. So each page is a :class:`~crm.sources.Batch` whose
``high_water`` is the newest ``updatedAt`` on it (exclusive: orders sharing that second may follow on the next
page; the next run's overlap re-reads them, newest-wins makes that harmless), and the last page's is ``until``.

Cost-based throttling (GraphQL Admin API rate limits): every answer carries ``extensions.cost`` with the
query's ``requestedQueryCost`` and the bucket's ``throttleStatus`` (``maximumAvailable``, ``currentlyAvailable``,
``restoreRate`` points a second). Before a request whose last requested cost exceeds what the bucket holds
by now, the source waits ``(cost − available) / restoreRate`` seconds; an answer with the error code
``THROTTLED`` waits the same and asks again; 429 waits its ``Retry-After``. A query may not request more than
1,000 points (``MAX_COST_EXCEEDED``): the page starts at 10 orders with up to 10 line items each (about 700
points) and halves on that error; an order with more line items than the page holds reads the rest with
``order(id:) { lineItems(after:) }``. 5xx, ``INTERNAL_SERVER_ERROR``, timeouts and refused connections are
retried with backoff (1, 2, 4, 8, 16 s), then end the run with one line (:class:`SourceUnavailable`: the next
run goes on from the watermark); 401/403 end it at once with one line naming the shop and the variable, never
the token (:class:`SourceError`).

Mapping to the landing entities (§1):

- ``orders``: ``order_id`` = the order's ``legacyResourceId``; ``customer_id`` = the customer's
  ``legacyResourceId``, or ``guest:<order_id>`` for an order without a customer (no customers row: nobody to
  remind); ``created_at`` = ``createdAt``; ``paid_at`` = the first successful SALE, CAPTURE or AUTHORIZATION
  transaction (authorized: the buyer has paid, the shop captures later), not counting authorizations once a
  VOID succeeded;
  ``shipped_at`` = the first fulfillment (not cancelled or failed); ``delivered_at`` = the last ``deliveredAt``
  once the order is fulfilled and every fulfillment delivered; ``closed_at`` = ``cancelledAt`` (Shopify's
  ``closedAt`` means archived after the work is done, not "will never be paid"); ``refunded_at`` = the last
  refund's ``createdAt`` once the order is fully refunded (``displayFinancialStatus`` REFUNDED: a partial
  refund does not undo the purchase); ``total_amount``/``currency`` = ``totalPriceSet.shopMoney``;
  ``receiver_city`` = ``shippingAddress.city``; ``platform`` = ``shopify``; ``updated_at`` = ``updatedAt``.
  Shopify's times carry an offset and are kept as they are.
- ``order_items``: ``line_no`` = the 1-based position in ``lineItems``; ``product_id`` = the product's
  ``legacyResourceId`` (a custom or deleted item has none: ``custom:<line item id>``, with a product row from
  the line's title); ``quantity``; ``unit_price`` = ``originalUnitPriceSet.shopMoney.amount``.
- ``products``: ``title``, ``category`` = ``productType``, ``style_tags`` = its ``tags`` joined by ``;``.
- ``customers``: ``name`` = first and last name (else Shopify's ``displayName``), ``phone`` / ``email`` =
  ``defaultPhoneNumber`` / ``defaultEmailAddress`` (API 2025-04 and later), ``city`` = ``defaultAddress.city``,
  ``registered_at`` = ``createdAt``, ``opt_out`` true when either marketing state is UNSUBSCRIBED or REDACTED,
  ``updated_at`` = ``updatedAt``.
- What Shopify does not say is ``None`` (a blank product type, no tags, ``followup_days``, ``member_level``, an
  opt-out it does not report): the frame keeps what an earlier drop staged, else §1's default.

An order that cannot be mapped (no ``legacyResourceId``, an unparsable or offset-less time, a negative or
unreadable amount, a line with a quantity below 1) becomes a reject with its reason and its record (the
buyer's email and phone masked); the rest of the page goes on. Logs name shops, statuses and waits only.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Iterator, Mapping

import httpx

from crm.redact import mask_email, mask_phone, redact
from crm.sources import Batch, SourceError, SourceUnavailable

log = logging.getLogger("crm.sources.shopify")

PLATFORM = "shopify"
MAX_ATTEMPTS = 6                 # tries of one request on 5xx / timeouts / refused connections
MAX_THROTTLED = 30               # waits in a row on THROTTLED or 429 before giving up
BACKOFF = (1, 2, 4, 8, 16)       # seconds before the 2nd, 3rd, … try
PAGE_ORDERS = 10                 # orders a page (halved on MAX_COST_EXCEEDED)
PAGE_LINES = 10                  # line items an order on a page; the rest through LINES_QUERY
MORE_LINES = 100                 # line items a LINES_QUERY page

_LINE = """
  id title quantity
  originalUnitPriceSet { shopMoney { amount currencyCode } }
  product { legacyResourceId title productType tags }
"""

ORDERS_QUERY = """
query CrmOrders($first: Int!, $after: String, $query: String!, $lines: Int!) {
  orders(first: $first, after: $after, sortKey: UPDATED_AT, query: $query) {
    pageInfo { hasNextPage endCursor }
    nodes {
      id legacyResourceId name createdAt updatedAt cancelledAt
      displayFinancialStatus displayFulfillmentStatus
      totalPriceSet { shopMoney { amount currencyCode } }
      shippingAddress { city }
      customer {
        legacyResourceId firstName lastName displayName createdAt updatedAt
        defaultEmailAddress { emailAddress marketingState }
        defaultPhoneNumber { phoneNumber marketingState }
        defaultAddress { city }
      }
      lineItems(first: $lines) { pageInfo { hasNextPage endCursor } nodes { ...CrmLine } }
      fulfillments(first: 5) { createdAt status deliveredAt }
      refunds(first: 5) { createdAt }
      transactions(first: 10) { kind status processedAt createdAt }
    }
  }
}
fragment CrmLine on LineItem {""" + _LINE + "}\n"

LINES_QUERY = """
query CrmOrderLines($id: ID!, $first: Int!, $after: String) {
  order(id: $id) {
    lineItems(first: $first, after: $after) { pageInfo { hasNextPage endCursor } nodes { ...CrmLine } }
  }
}
fragment CrmLine on LineItem {""" + _LINE + "}\n"


def open(shop, cfg, env: Mapping[str, str], *, sleep=time.sleep, monotonic=time.monotonic,
         timeout: float = 30.0, page_orders: int = PAGE_ORDERS, page_lines: int = PAGE_LINES) -> "ShopifySource":
    """The Shopify source of one shop: `cfg` is its [shops.source] (kind "shopify")."""
    shop_id = shop.shop_id
    if not cfg.token_env:
        raise SourceError(f"shop {shop_id!r}: source.token_env is not set: name the environment variable that "
                          "holds the shop's Admin API access token")
    token = env.get(cfg.token_env) or ""
    if not token.strip():
        raise SourceError(f"shop {shop_id!r}: the environment variable {cfg.token_env} (source.token_env) is not "
                          "set: it must hold the shop's Admin API access token")
    endpoint = (cfg.endpoint or "").rstrip("/")
    if not endpoint.startswith(("http://", "https://")):
        raise SourceError(f"shop {shop_id!r}: source.endpoint {endpoint!r} is not the store's URL "
                          "(https://<store>.myshopify.com)")
    if not cfg.api_version:
        raise SourceError(f"shop {shop_id!r}: source.api_version is not set (e.g. \"2025-10\")")
    return ShopifySource(shop_id=shop_id, url=f"{endpoint}/admin/api/{cfg.api_version}/graphql.json",
                         token=token.strip(), token_env=cfg.token_env, sleep=sleep, monotonic=monotonic,
                         timeout=timeout, page_orders=page_orders, page_lines=page_lines)


@dataclass
class _Throttle:
    available: float
    maximum: float
    rate: float
    seen: float                  # monotonic time of the answer


class _TooCostly(Exception):
    pass


class ShopifySource:
    def __init__(self, *, shop_id: str, url: str, token: str, token_env: str, sleep, monotonic, timeout: float,
                 page_orders: int, page_lines: int):
        self.shop_id = shop_id
        self.url = url
        self._token_env = token_env
        self._sleep = sleep
        self._monotonic = monotonic
        self._first = max(1, page_orders)
        self._lines = max(1, page_lines)
        self._throttle: _Throttle | None = None
        self._cost: dict[str, float] = {}        # last requestedQueryCost per query
        self._timeout = timeout
        self._headers = {"X-Shopify-Access-Token": token, "Content-Type": "application/json",
                         "Accept": "application/json", "User-Agent": "shop-crm"}
        self._client: httpx.Client | None = None

    # ------------------------------------------------------------------ pages
    def batches(self, since: datetime, until: datetime) -> Iterator[Batch]:
        """The changes in [since, until], one batch per page of orders; the connection closes with the walk."""
        with httpx.Client(timeout=httpx.Timeout(self._timeout), headers=self._headers) as client:
            self._client = client
            try:
                yield from self._walk(since, until)
            finally:
                self._client = None

    def _walk(self, since: datetime, until: datetime) -> Iterator[Batch]:
        since_s, until_s = _second(since), _second(until)
        search = f"updated_at:>='{_iso(since_s)}' AND updated_at:<='{_iso(until_s)}'"
        cursor: str | None = None
        while True:
            orders, pages = self._orders_page(search, cursor)
            nodes = [n for n in (orders.get("nodes") or []) if isinstance(n, dict)]
            for node in nodes:
                pages += self._complete_lines(node)
            batch = map_page(self.shop_id, nodes)
            info = orders.get("pageInfo") or {}
            more = bool(info.get("hasNextPage")) and bool(info.get("endCursor"))
            if more:
                newest = [t for t in (_parse(n.get("updatedAt")) for n in nodes) if t is not None]
                batch.high_water = max(newest).astimezone(timezone.utc) if newest else None
            else:
                batch.high_water = until_s
            batch.pages = pages
            yield batch
            if not more:
                return
            cursor = info["endCursor"]

    def _orders_page(self, search: str, cursor: str | None) -> tuple[dict, int]:
        pages = 0
        while True:
            pages += 1
            variables = {"first": self._first, "after": cursor, "query": search, "lines": self._lines}
            try:
                data = self._post("orders", ORDERS_QUERY, variables)
            except _TooCostly:
                if self._first > 1:
                    self._first = max(1, self._first // 2)
                elif self._lines > 1:
                    self._lines = max(1, self._lines // 2)
                else:
                    raise SourceError(f"shop {self.shop_id!r}: Shopify refuses even a one-order page as too "
                                      "costly (MAX_COST_EXCEEDED)") from None
                log.warning("shop %r: the orders page was over Shopify's query cost limit; asking for %d orders "
                            "with %d lines each", self.shop_id, self._first, self._lines)
                self._cost.pop("orders", None)
                continue
            orders = (data or {}).get("orders")
            if not isinstance(orders, dict):
                raise SourceError(f"shop {self.shop_id!r}: Shopify's answer at {self.url} has no orders")
            return orders, pages

    def _complete_lines(self, node: dict) -> int:
        """Reads the rest of an order's line items when the page held only the first ones; the pages it took."""
        conn = node.get("lineItems") or {}
        info = conn.get("pageInfo") or {}
        pages = 0
        while info.get("hasNextPage") and info.get("endCursor") and node.get("id"):
            pages += 1
            data = self._post("lines", LINES_QUERY, {"id": node["id"], "first": MORE_LINES,
                                                      "after": info["endCursor"]})
            more = ((data or {}).get("order") or {}).get("lineItems") or {}
            conn.setdefault("nodes", []).extend(more.get("nodes") or [])
            info = more.get("pageInfo") or {}
        return pages

    # ------------------------------------------------------------------ one request
    def _post(self, kind: str, query: str, variables: dict) -> dict:
        failures = throttled = 0
        while True:
            self._wait_for_budget(kind)
            problem = ""
            try:
                resp = self._client.post(self.url, json={"query": query, "variables": variables})
            except httpx.TimeoutException:
                problem = "did not answer in time"
            except httpx.TransportError as e:
                problem = f"could not be reached ({type(e).__name__})"
            else:
                status = resp.status_code
                if status in (401, 403):
                    raise SourceError(
                        f"shop {self.shop_id!r}: Shopify refused the access token in {self._token_env} "
                        f"({status} {resp.reason_phrase}): check the token and the app's read_orders, "
                        "read_customers and read_products scopes")
                if status == 429:
                    throttled += 1
                    self._give_up_throttled(throttled)
                    wait = _retry_after(resp)
                    log.warning("shop %r: Shopify answered 429; waiting %.1f s", self.shop_id, wait)
                    self._sleep(wait)
                    continue
                if status >= 500:
                    problem = f"answered {status} {resp.reason_phrase}"
                elif status != 200:
                    raise SourceError(f"shop {self.shop_id!r}: Shopify at {self.url} answered {status} "
                                      f"{resp.reason_phrase}{_why(resp)}: check source.endpoint and "
                                      "source.api_version")
                else:
                    try:
                        body = resp.json()
                    except ValueError:
                        body = None
                    if not isinstance(body, dict):
                        problem = "answered 200 with a body that is not a GraphQL answer"
                    else:
                        self._note_cost(kind, body)
                        errors = _errors(body)
                        codes = {e.get("extensions", {}).get("code") for e in errors if isinstance(e, dict)}
                        if not errors:
                            return body.get("data") or {}
                        if "THROTTLED" in codes:
                            throttled += 1
                            self._give_up_throttled(throttled)
                            wait = self._throttled_wait(kind)
                            log.warning("shop %r: Shopify throttled the query; waiting %.1f s for its bucket",
                                        self.shop_id, wait)
                            self._sleep(wait)
                            continue
                        if "MAX_COST_EXCEEDED" in codes:
                            raise _TooCostly()
                        if "INTERNAL_SERVER_ERROR" in codes:
                            problem = "answered INTERNAL_SERVER_ERROR"
                        else:
                            raise SourceError(f"shop {self.shop_id!r}: Shopify refused the query: "
                                              f"{_first_message(errors)}")
            failures += 1
            if failures >= MAX_ATTEMPTS:
                raise SourceUnavailable(f"shop {self.shop_id!r}: Shopify at {self.url} {problem}, {failures} times in a "
                                  "row; what was fetched before is kept, run the extract again later")
            wait = BACKOFF[min(failures, len(BACKOFF)) - 1]
            log.warning("shop %r: Shopify %s; trying again in %d s (attempt %d of %d)", self.shop_id, problem,
                        wait, failures + 1, MAX_ATTEMPTS)
            self._sleep(wait)

    def _give_up_throttled(self, times: int) -> None:
        if times > MAX_THROTTLED:
            raise SourceUnavailable(f"shop {self.shop_id!r}: Shopify kept throttling ({times - 1} waits in a row); "
                              "run the extract again later")

    # ------------------------------------------------------------------ the cost bucket
    def _note_cost(self, kind: str, body: dict) -> None:
        cost = (body.get("extensions") or {}).get("cost") or {}
        requested = _number(cost.get("requestedQueryCost"))
        if requested is not None:
            self._cost[kind] = requested
        status = cost.get("throttleStatus") or {}
        available, maximum, rate = (_number(status.get(k)) for k in
                                    ("currentlyAvailable", "maximumAvailable", "restoreRate"))
        if available is not None and rate and rate > 0:
            self._throttle = _Throttle(available, maximum or available, rate, self._monotonic())

    def _available_now(self) -> float | None:
        t = self._throttle
        if t is None:
            return None
        return min(t.maximum, t.available + t.rate * max(0.0, self._monotonic() - t.seen))

    def _wait_for_budget(self, kind: str) -> None:
        cost, available = self._cost.get(kind), self._available_now()
        if cost is None or available is None or available >= cost:
            return
        wait = (cost - available) / self._throttle.rate
        if wait < 0.001:
            return
        log.info("shop %r: waiting %.1f s for Shopify's cost bucket (%.0f of %.0f points)", self.shop_id, wait,
                 available, cost)
        self._sleep(wait)

    def _throttled_wait(self, kind: str) -> float:
        cost, available = self._cost.get(kind), self._available_now()
        if cost is None or available is None or self._throttle is None:
            return 1.0
        return max((cost - available) / self._throttle.rate, 1.0 / self._throttle.rate)


# ---------------------------------------------------------------------------------------------------------
# mapping


class _Bad(ValueError):
    """One record that cannot be mapped; the message is the reason (no contact data in it)."""


def map_page(shop_id: str, nodes: list[dict]) -> Batch:
    """The landing rows of one page of orders; the orders that cannot be mapped as rejects."""
    rows: dict[str, list[dict]] = {"orders": [], "order_items": [], "products": [], "customers": []}
    products: dict[str, dict] = {}
    customers: dict[str, dict] = {}
    rejects: list[dict] = []
    for position, node in enumerate(nodes, start=1):
        try:
            order, items, prods, customer = map_order(shop_id, node)
        except _Bad as e:
            ref = node.get("legacyResourceId") or node.get("name") or f"position {position} on the page"
            rejects.append({"entity": "orders", "ref": f"order {ref}", "reason": str(e), "raw": _raw(node)})
            continue
        rows["orders"].append(order)
        rows["order_items"].extend(items)
        for p in prods:
            products[p["product_id"]] = p
        if customer is not None:
            known = customers.get(customer["customer_id"])
            if known is None or _parse(customer["updated_at"]) >= _parse(known["updated_at"]):
                customers[customer["customer_id"]] = customer
    rows["products"] = list(products.values())
    rows["customers"] = list(customers.values())
    return Batch(rows=rows, rejects=rejects, high_water=None, pages=1)


def map_order(shop_id: str, node: dict) -> tuple[dict, list[dict], list[dict], dict | None]:
    order_id = _text(node.get("legacyResourceId"))
    if not order_id:
        raise _Bad("missing legacyResourceId (the order id)")
    created_at = _time(node, "createdAt", required=True)
    updated_at = _time(node, "updatedAt", required=True)
    money = ((node.get("totalPriceSet") or {}).get("shopMoney") or {})
    total = _amount(money.get("amount"), "totalPriceSet.shopMoney.amount", required=True)

    customer_node = node.get("customer")
    customer = _customer(shop_id, customer_node) if customer_node else None
    customer_id = customer["customer_id"] if customer else f"guest:{order_id}"

    order = {
        "order_id": order_id, "shop_id": shop_id, "customer_id": customer_id, "platform": PLATFORM,
        "created_at": created_at, "paid_at": _paid_at(node), "shipped_at": None, "delivered_at": None,
        "closed_at": _time(node, "cancelledAt"), "refunded_at": _refunded_at(node),
        "total_amount": total, "currency": _text(money.get("currencyCode")),
        "receiver_city": _text((node.get("shippingAddress") or {}).get("city")), "updated_at": updated_at,
    }
    order["shipped_at"], order["delivered_at"] = _shipping(node)

    items, products = [], []
    lines = (node.get("lineItems") or {}).get("nodes") or []
    for line_no, line in enumerate(lines, start=1):
        item, product = _line(shop_id, order_id, line_no, line)
        items.append(item)
        products.append(product)
    return order, items, products, customer


def _line(shop_id: str, order_id: str, line_no: int, line: Any) -> tuple[dict, dict]:
    if not isinstance(line, dict):
        raise _Bad(f"line {line_no} is not a line item")
    quantity = line.get("quantity")
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
        raise _Bad(f"line {line_no}: quantity {quantity!r} is not a whole number of at least 1")
    price = ((line.get("originalUnitPriceSet") or {}).get("shopMoney") or {}).get("amount")
    unit_price = _amount(price, f"line {line_no} originalUnitPriceSet.shopMoney.amount", required=True)
    product = line.get("product") or {}
    product_id = _text(product.get("legacyResourceId"))
    if product_id:
        title = _text(product.get("title")) or _text(line.get("title")) or product_id
        tags = product.get("tags") or []
        row = {"product_id": product_id, "shop_id": shop_id, "title": title,
               "category": _text(product.get("productType")),
               "style_tags": ";".join(str(t).strip() for t in tags if str(t).strip()) or None,
               "followup_days": None}
    else:
        # a custom item, or a product deleted since: the line keeps its own id and title
        line_id = _text(line.get("id")) or ""
        product_id = "custom:" + (line_id.rsplit("/", 1)[-1] if line_id else f"{order_id}-{line_no}")
        row = {"product_id": product_id, "shop_id": shop_id, "title": _text(line.get("title")) or product_id,
               "category": None, "style_tags": None, "followup_days": None}
    item = {"order_id": order_id, "line_no": line_no, "product_id": product_id, "quantity": quantity,
            "unit_price": unit_price}
    return item, row


def _customer(shop_id: str, node: dict) -> dict:
    customer_id = _text(node.get("legacyResourceId"))
    if not customer_id:
        raise _Bad("the customer has no legacyResourceId")
    name = " ".join(p for p in (_text(node.get("firstName")), _text(node.get("lastName"))) if p)
    email_node = node.get("defaultEmailAddress") or {}
    phone_node = node.get("defaultPhoneNumber") or {}
    states = {email_node.get("marketingState"), phone_node.get("marketingState")}
    return {
        "customer_id": customer_id, "shop_id": shop_id,
        "name": name or _text(node.get("displayName")) or customer_id,
        "phone": _text(phone_node.get("phoneNumber")), "email": _text(email_node.get("emailAddress")),
        "city": _text((node.get("defaultAddress") or {}).get("city")),
        "member_level": None,
        "registered_at": _time(node, "createdAt", required=True, what="customer createdAt"),
        "opt_out": True if states & {"UNSUBSCRIBED", "REDACTED"} else None,
        "updated_at": _time(node, "updatedAt", required=True, what="customer updatedAt"),
    }


def _paid_at(node: dict) -> str | None:
    txs = [t for t in (node.get("transactions") or []) if isinstance(t, dict) and t.get("status") == "SUCCESS"]
    timed = [(t.get("kind"), _tx_time(t)) for t in txs]
    # money taken; or authorized (the buyer has paid, the shop captures later) unless the authorization was voided
    kinds = {"SALE", "CAPTURE"} if any(k == "VOID" for k, _ in timed) else \
        {"SALE", "CAPTURE", "AUTHORIZATION", "EMV_AUTHORIZATION"}
    paid = [(_parse(s), s) for k, s in timed if k in kinds and s]
    return min(paid)[1] if paid else None


def _tx_time(tx: dict) -> str | None:
    value = tx.get("processedAt") or tx.get("createdAt")
    return _check_time(value, f"{tx.get('kind') or 'transaction'} processedAt")


def _shipping(node: dict) -> tuple[str | None, str | None]:
    live = [f for f in (node.get("fulfillments") or [])
            if isinstance(f, dict) and f.get("status") not in ("CANCELLED", "ERROR", "FAILURE")]
    created = [(_parse(s), s) for s in (_check_time(f.get("createdAt"), "fulfillment createdAt") for f in live) if s]
    delivered = [_check_time(f.get("deliveredAt"), "fulfillment deliveredAt") for f in live]
    shipped_at = min(created)[1] if created else None
    delivered_at = None
    if live and all(delivered) and node.get("displayFulfillmentStatus") == "FULFILLED":
        delivered_at = max((_parse(s), s) for s in delivered)[1]
    return shipped_at, delivered_at


def _refunded_at(node: dict) -> str | None:
    refunds = [(_parse(s), s) for s in (_check_time((r or {}).get("createdAt"), "refund createdAt")
                                        for r in (node.get("refunds") or [])) if s]
    if node.get("displayFinancialStatus") != "REFUNDED":
        return None
    if refunds:
        return max(refunds)[1]
    return _time(node, "updatedAt", required=True)


# ---------------------------------------------------------------------------------------------------------
# values


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _parse(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _check_time(value: Any, what: str) -> str | None:
    """The time as Shopify wrote it (ISO 8601 with its offset), checked; None when absent."""
    if value is None or value == "":
        return None
    if _parse(value) is None:
        shown = value if isinstance(value, str) and len(value) <= 40 else type(value).__name__
        raise _Bad(f"unparsable {what} {shown!r} (an ISO 8601 time with an offset is expected)")
    return value


def _time(node: dict, key: str, *, required: bool = False, what: str | None = None) -> str | None:
    value = _check_time(node.get(key), what or key)
    if value is None and required:
        raise _Bad(f"missing {what or key}")
    return value


def _amount(value: Any, what: str, *, required: bool = False) -> str | None:
    if value is None or value == "":
        if required:
            raise _Bad(f"missing {what}")
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite():
        raise _Bad(f"unparsable {what} {str(value)[:40]!r}")
    if amount < 0:
        raise _Bad(f"negative {what} {amount}")
    return str(amount)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _second(t: datetime) -> datetime:
    if t.tzinfo is None:
        raise ValueError("since/until must be timezone-aware")
    return t.astimezone(timezone.utc).replace(microsecond=0)


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _raw(node: dict) -> str:
    """The record for the quarantine, with the buyer's email and phone masked."""
    shown = json.loads(json.dumps(node, default=str))
    customer = shown.get("customer")
    if isinstance(customer, dict):
        for key, field, mask in (("defaultEmailAddress", "emailAddress", mask_email),
                                 ("defaultPhoneNumber", "phoneNumber", mask_phone)):
            contact = customer.get(key)
            if isinstance(contact, dict) and contact.get(field):
                contact[field] = mask(str(contact[field]))
        if isinstance(customer.get("displayName"), str):
            customer["displayName"] = redact(customer["displayName"])
    return json.dumps(shown, ensure_ascii=False, sort_keys=True)


# ---------------------------------------------------------------------------------------------------------
# answers


def _errors(body: dict) -> list:
    errors = body.get("errors")
    if not errors:
        return []
    if isinstance(errors, str):
        return [{"message": errors}]
    if isinstance(errors, dict):
        return [errors]
    return list(errors)


def _first_message(errors: list) -> str:
    first = errors[0] if errors else {}
    message = first.get("message") if isinstance(first, dict) else str(first)
    code = (first.get("extensions") or {}).get("code") if isinstance(first, dict) else None
    text = " ".join(str(message or "unknown error").split())[:200]
    return redact(f"{text} ({code})" if code else text)


def _why(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return ""
    errors = _errors(body) if isinstance(body, dict) else []
    return f" ({_first_message(errors)})" if errors else ""


def _retry_after(resp: httpx.Response) -> float:
    try:
        wait = float(resp.headers.get("Retry-After", ""))
    except ValueError:
        return 2.0
    return min(max(wait, 0.0), 600.0)
