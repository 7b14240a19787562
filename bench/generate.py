"""Benchmark data of another shape than the demo's (crm/demo.py): a shop group's landing folder.

    .venv/bin/python bench/generate.py /tmp/bench/data-1000000 --orders 1000000

Writes ``<out>/landing/<entity>/…`` and ``<out>/shops.toml``. Vectorised with numpy + polars (loops only
over time zones, files and chunks), deterministic for a given seed and anchor. Where the demo has three
shops, a fifth of all orders in the last 48 hours and Parquet only (bench mode), this has:

* **many shops of very different size**: ``shops`` shops (default orders / 5,000, 8 to 400) whose sizes
  follow a Zipf law (the n-th largest has 1/n^1.1 of the largest's orders); most in China, the rest in
  the US, Germany, the UK and Japan, each with its own zone (``phone_region`` from the zone);
* **customers with a long tail of order counts**: a discrete Pareto law (most buy once, a few hundred
  times), plus registered customers who never ordered;
* **a realistic share of recent orders**: orders spread over ``weeks`` weeks (default 26) with a growth
  of e^1 over that time and a local daily curve, so about 1-2 % fall in the last 48 hours; 12 % are
  never paid (closed by the platform after a day), and of the last day's orders a realistic share is
  still unpaid at the anchor;
* **the formats of a real drop**: a Parquet snapshot as of 36 hours before the anchor (one file per
  million orders; aware UTC timestamps, except every second orders file, which has naive shop-local
  ones), then a CSV drop of what changed since (new and updated orders, their items, new customers,
  reviews; timestamps as text with the shop's offset, naive shop-local, or ``Z``, by shop), and a
  *stale* CSV drop repeating 3 % of the snapshot's orders with an older ``updated_at`` and older values
  (the newer version must win), plus a CSV of suppressions. Phones come in every shape platforms export
  (``13812345678``, ``+86 138 1234 5678``, ``0086-138…``, ``(212) 555-0123``, ``030 1234567``, full-width
  digits, …), 0.02 % of them not a number (those rows are quarantined).

``extra_drop(out, fraction)`` then adds a later drop of ``fraction`` more orders (with their items and
customers): the incremental ingest of bench/bench_ingest.py.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl

MIN, HOUR, DAY = 60, 3600, 86400
NA = np.int64(2**62)                  # no timestamp
ANCHOR = datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc)
ORDERS_PER_FILE = 1_000_000

# (zone, locale, share of shops); the first is the largest shop's
ZONES = (("Asia/Shanghai", "zh-CN", 0.62), ("America/New_York", "en", 0.10), ("America/Los_Angeles", "en", 0.06),
         ("Europe/Berlin", "en", 0.10), ("Europe/London", "en", 0.06), ("Asia/Tokyo", "en", 0.06))
PLATFORMS = {"zh-CN": ("taobao", "tmall", "jd", "douyin", "pinduoduo", "fenxiao"),
             "en": ("shopify", "amazon", "etsy", "ebay", "dropship")}
PLATFORM_P = {"zh-CN": (0.38, 0.22, 0.14, 0.14, 0.07, 0.05), "en": (0.6, 0.2, 0.1, 0.06, 0.04)}
COLUMNS = {
    "orders": ["order_id", "shop_id", "customer_id", "platform", "created_at", "paid_at", "shipped_at",
               "delivered_at", "closed_at", "refunded_at", "total_amount", "currency", "receiver_city", "updated_at"],
    "order_items": ["order_id", "line_no", "product_id", "quantity", "unit_price"],
    "products": ["product_id", "shop_id", "title", "category", "style_tags", "followup_days"],
    "customers": ["customer_id", "shop_id", "name", "phone", "email", "city", "member_level", "registered_at",
                  "opt_out", "updated_at"],
    "reviews": ["order_id", "created_at", "rating", "text"],
    "suppressions": ["customer_id", "phone", "email", "channel", "created_at", "reason"],
}
TS = {"orders": ["created_at", "paid_at", "shipped_at", "delivered_at", "closed_at", "refunded_at", "updated_at"],
      "customers": ["registered_at", "updated_at"], "reviews": ["created_at"], "suppressions": ["created_at"]}
CURRENCY = {"Asia/Shanghai": "CNY", "America/New_York": "USD", "America/Los_Angeles": "USD",
            "Europe/Berlin": "EUR", "Europe/London": "GBP", "Asia/Tokyo": "JPY"}
CITIES = ["上海", "北京", "杭州", "广州", "深圳", "成都", "Boston", "Seattle", "Berlin", "London", "大阪", None]
REVIEWS = ["很好,会回购", "物流有点慢", "质量一般", "Love it", "Arrived broken", "Great quality", "还行", "差评",
           "Perfect gift", "包装破了"]
# local-hour weights of order creation
HOUR_W = np.array([0.30, 0.16, 0.08, 0.05, 0.04, 0.05, 0.10, 0.22, 0.40, 0.60, 0.85, 0.95,
                   1.00, 0.95, 0.90, 0.88, 0.88, 0.90, 0.95, 1.00, 1.00, 1.00, 0.92, 0.60])


@dataclass
class Summary:
    out_dir: Path
    landing_dir: Path
    config_path: Path
    anchor: datetime
    shops: int
    customers: int
    rows: dict[str, int]
    files: int

    def as_dict(self) -> dict:
        return {"shops": self.shops, "customers": self.customers, "rows": self.rows, "files": self.files,
                "anchor": self.anchor.isoformat()}


# --------------------------------------------------------------------------------------------------
# time zones: UTC offsets on an hourly grid (every zone here switches on the hour)


class _Zones:
    def __init__(self, t0: int, t1: int):
        self.g0 = t0 - t0 % HOUR
        n = (t1 - self.g0) // HOUR + 2
        utc = pl.Series("t", np.arange(n, dtype=np.int64) * HOUR + self.g0)
        ts = pl.from_epoch(utc, time_unit="s").dt.replace_time_zone("UTC")
        self.off = np.stack([
            (ts.dt.convert_time_zone(z).dt.replace_time_zone(None).dt.epoch("s") - utc).to_numpy()
            for z, _, _ in ZONES])

    def local(self, zone: np.ndarray, t: np.ndarray) -> np.ndarray:
        i = np.clip((t - self.g0) // HOUR, 0, self.off.shape[1] - 1)
        return t + self.off[zone, i]


# --------------------------------------------------------------------------------------------------
# the world: shops, customers, orders, items (all timestamps, also those after the anchor)


@dataclass
class _World:
    A: int
    D1: int                            # the snapshot's time
    shop_zone: np.ndarray              # per shop: index into ZONES
    n_prod: np.ndarray                 # per shop
    prod_first: np.ndarray             # per shop: first global product index
    price: np.ndarray                  # per product: cents
    prod_shop: np.ndarray
    cust_shop: np.ndarray              # per customer
    cust_registered: np.ndarray
    cust_first: np.ndarray             # first order's time or NA
    o_shop: np.ndarray                 # per order (sorted by created)
    o_cust: np.ndarray
    created: np.ndarray
    paid: np.ndarray
    shipped: np.ndarray
    delivered: np.ndarray
    closed: np.ndarray
    refunded: np.ndarray
    platform: np.ndarray               # index into the locale's platforms
    o_first_item: np.ndarray           # per order: first item index (items are in order order)
    i_order: np.ndarray                # per item
    i_line: np.ndarray
    i_prod: np.ndarray
    i_qty: np.ndarray
    amount: np.ndarray                 # per order: cents


def _zipf_sizes(rng, n_items: int, total: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n_items + 1) ** s
    sizes = rng.multinomial(total - n_items, w / w.sum()) + 1 if total >= n_items else np.ones(n_items, int)
    return sizes.astype(np.int64)


def _times(rng, n: int, start: int, end: int, zone: np.ndarray, zones: _Zones) -> np.ndarray:
    """n instants in [start, end): density growing e-fold over the span, with the local daily curve."""
    out = np.empty(n, np.int64)
    todo = np.arange(n)
    while len(todo):
        u = rng.random(len(todo))
        t = start + (np.log1p(u * (math.e - 1)) * (end - start)).astype(np.int64)   # inverse CDF of e^x
        hour = (zones.local(zone[todo], t) // HOUR) % 24
        keep = rng.random(len(todo)) < HOUR_W[hour]
        out[todo[keep]] = t[keep]
        todo = todo[~keep]
    return out


def _world(orders: int, shops: int, seed: int, anchor: datetime, weeks: int) -> tuple[_World, _Zones]:
    rng = np.random.default_rng([seed, 1])
    A = int(anchor.timestamp())
    start = A - weeks * 7 * DAY
    zones = _Zones(start - 400 * DAY, A + 60 * DAY)
    # shops: Zipf sizes, zones by share (the largest in the first zone)
    shop_orders = _zipf_sizes(rng, shops, orders, 1.1)
    p = np.array([z[2] for z in ZONES])
    shop_zone = rng.choice(len(ZONES), shops, p=p / p.sum())
    shop_zone[0] = 0
    # products: per shop ~ orders / 150, 5 to 4,000, prices log-normal around a zone's usual price
    n_prod = np.clip(shop_orders // 150, 5, 4000)
    prod_first = np.concatenate([[0], np.cumsum(n_prod)[:-1]])
    prod_shop = np.repeat(np.arange(shops), n_prod)
    price = np.maximum(100, np.round(rng.lognormal(np.log(6000), 0.9, len(prod_shop)) / 100) * 100 - 1)
    price = np.where(shop_zone[prod_shop] == 0, price, np.maximum(199, price // 7)).astype(np.int64)
    # customers: each shop's orders split over customers with a discrete Pareto law of counts
    counts_all, cust_shop = [], []
    for s in range(shops):      # a loop over shops, not rows
        n = int(shop_orders[s])
        c = np.minimum(np.floor(rng.pareto(1.7, n + 8) + 1).astype(np.int64), 800)
        cs = np.cumsum(c)
        m = int(np.searchsorted(cs, n)) + 1
        c = c[:m]
        c[-1] -= cs[m - 1] - n
        c = c[c > 0]
        c = np.concatenate([c, np.zeros(max(1, len(c) // 10), np.int64)])    # registered, never ordered
        counts_all.append(c)
        cust_shop.append(np.full(len(c), s, np.int32))
    counts = np.concatenate(counts_all)
    cust_shop = np.concatenate(cust_shop)
    n_cust = len(counts)
    perm = rng.permutation(n_cust)                    # customer ids not grouped by shop
    counts, cust_shop = counts[perm], cust_shop[perm]
    o_cust = np.repeat(np.arange(n_cust, dtype=np.int32), counts)
    o_shop = cust_shop[o_cust]
    n = len(o_cust)
    created = _times(rng, n, start, A, shop_zone[o_shop], zones)
    srt = np.argsort(created, kind="stable")
    created, o_cust, o_shop = created[srt], o_cust[srt], o_shop[srt]
    cust_first = np.full(n_cust, NA, np.int64)
    np.minimum.at(cust_first, o_cust, created)
    before = np.where(rng.random(n_cust) < 0.4, rng.integers(MIN, HOUR, n_cust),
                      np.minimum(rng.exponential(90 * DAY, n_cust), 700 * DAY).astype(np.int64) + HOUR)
    cust_registered = np.where(cust_first < NA, cust_first - before, A - rng.integers(DAY, 400 * DAY, n_cust))
    # lifecycle: 12 % never paid (closed after a day), the rest paid after minutes to hours
    never = rng.random(n) < 0.12
    mix = rng.random(n)
    delay = np.where(mix < 0.7, rng.integers(MIN, 20 * MIN, n), rng.integers(20 * MIN, 20 * HOUR, n))
    paid = np.where(never, NA, created + delay)
    closed = np.where(never, created + DAY, NA)
    shipped = np.where(never, NA, paid + rng.integers(2 * HOUR, 3 * DAY, n))
    delivered = np.where(never, NA, shipped + rng.integers(DAY, 6 * DAY, n))
    refunded = np.where(~never & (rng.random(n) < 0.03), delivered + rng.integers(HOUR, 10 * DAY, n), NA)
    loc = np.where(shop_zone[o_shop] == 0, 0, 1)
    plat = np.empty(n, np.int8)
    for k, name in enumerate(("zh-CN", "en")):
        sel = loc == k
        pp = np.array(PLATFORM_P[name])
        plat[sel] = rng.choice(len(pp), int(sel.sum()), p=pp)
    # items: 1 + geometric lines, products by Zipf popularity inside the shop
    lines = np.minimum(rng.geometric(0.62, n), 12)
    o_first_item = np.concatenate([[0], np.cumsum(lines)[:-1]])
    i_order = np.repeat(np.arange(n, dtype=np.int64), lines)
    i_line = (np.arange(len(i_order)) - o_first_item[i_order] + 1).astype(np.int32)
    sh = o_shop[i_order]
    i_prod = prod_first[sh] + np.floor(n_prod[sh] * rng.random(len(i_order)) ** 2.5).astype(np.int64)
    i_qty = (1 + rng.poisson(0.25, len(i_order))).astype(np.int32)
    amount = np.bincount(i_order, weights=price[i_prod] * i_qty, minlength=n).astype(np.int64)
    w = _World(A, A - 36 * HOUR, shop_zone, n_prod, prod_first, price, prod_shop, cust_shop, cust_registered,
               cust_first, o_shop, o_cust, created, paid, shipped, delivered, closed, refunded, plat,
               o_first_item, i_order, i_line, i_prod, i_qty, amount)
    return w, zones


# --------------------------------------------------------------------------------------------------
# rendering


def _ts(a: np.ndarray) -> pl.Series:
    """Epoch seconds (NA: null) as aware UTC timestamps."""
    a = np.asarray(a, np.int64)
    t = pl.from_epoch(pl.Series(np.where(a < NA, a, 0)), time_unit="s").dt.replace_time_zone("UTC")
    return pl.select(pl.when(pl.Series(a < NA)).then(t)).to_series()


def _pick(pool: list, idx: np.ndarray) -> pl.Series:
    return pl.Series(pool, dtype=pl.String).gather(np.asarray(idx, np.int64))


def _visible(a: np.ndarray, T: int) -> np.ndarray:
    return np.where(a <= T, a, NA)


def _shop_ids(idx: np.ndarray) -> pl.Series:
    return _prefixed("shop", np.asarray(idx, np.int64) + 1, 3)


def _prefixed(prefix: str, idx: np.ndarray, width: int) -> pl.Series:
    return pl.select(pl.concat_str([pl.lit(prefix), pl.Series(np.asarray(idx, np.int64)).cast(pl.String)
                                    .str.zfill(width)])).to_series()


def _order_ids(idx: np.ndarray) -> pl.Series:
    # platform-style numeric ids: not in creation order
    return pl.Series((np.asarray(idx, np.int64) * 7_919_993 + 300_000_000_000) % 10**13 + 10**15).cast(pl.String)


def _order_state(w: _World, idx: np.ndarray, T: int) -> dict[str, np.ndarray]:
    """The orders `idx` as the platform exported them at T."""
    s = {"created": w.created[idx], "paid": _visible(w.paid[idx], T), "shipped": _visible(w.shipped[idx], T),
         "delivered": _visible(w.delivered[idx], T), "closed": _visible(w.closed[idx], T),
         "refunded": _visible(w.refunded[idx], T)}
    upd = s["created"].copy()
    for k in ("paid", "shipped", "delivered", "closed", "refunded"):
        upd = np.where(s[k] < NA, np.maximum(upd, s[k]), upd)
    s["updated"] = upd
    return s


def _orders_frame(w: _World, idx: np.ndarray, s: dict[str, np.ndarray]) -> pl.DataFrame:
    sz = w.shop_zone[w.o_shop[idx]]
    names = list(PLATFORMS["zh-CN"]) + list(PLATFORMS["en"])
    plat = _pick(names, np.where(sz == 0, np.minimum(w.platform[idx], 5), 6 + np.minimum(w.platform[idx], 4)))
    cur = _pick([CURRENCY[z[0]] for z in ZONES], sz)
    city = _pick(CITIES, (idx * 31 + 7) % len(CITIES))
    return pl.DataFrame({
        "order_id": _order_ids(idx), "shop_id": _shop_ids(w.o_shop[idx]),
        "customer_id": _prefixed("u", w.o_cust[idx], 8), "platform": plat,
        "created_at": _ts(s["created"]), "paid_at": _ts(s["paid"]), "shipped_at": _ts(s["shipped"]),
        "delivered_at": _ts(s["delivered"]), "closed_at": _ts(s["closed"]), "refunded_at": _ts(s["refunded"]),
        "total_amount": (pl.Series(w.amount[idx]).cast(pl.Decimal(18, 2)) / 100).cast(pl.Decimal(12, 2)),
        "currency": cur, "receiver_city": city,
        "updated_at": _ts(s["updated"]),
    })


def _items_frame(w: _World, order_idx: np.ndarray) -> pl.DataFrame:
    lines = np.diff(np.append(w.o_first_item, len(w.i_order)))[order_idx]
    first = w.o_first_item[order_idx]
    items = np.repeat(first, lines) + (np.arange(lines.sum()) - np.repeat(np.cumsum(lines) - lines, lines))
    return pl.DataFrame({
        "order_id": _order_ids(w.i_order[items]), "line_no": pl.Series(w.i_line[items]),
        "product_id": _prefixed("p", w.i_prod[items], 6), "quantity": pl.Series(w.i_qty[items]),
        "unit_price": (pl.Series(w.price[w.i_prod[items]]).cast(pl.Decimal(18, 2)) / 100).cast(pl.Decimal(12, 2)),
    })


_CN_PRE = ["138", "139", "137", "135", "136", "186", "188", "150", "152", "158", "177", "199", "166"]
_US_AREA = ["212", "646", "718", "917", "415", "206", "310", "617"]
_DE_PRE = ["30", "40", "89", "151", "160", "170", "176"]


def _phones(rng, zone: np.ndarray, idx: np.ndarray) -> pl.Series:
    """One number per customer, written the way platforms export them (by zone, several shapes each)."""
    n = len(idx)
    idx = np.asarray(idx, np.int64)
    f = pl.DataFrame({
        "zone": pl.Series(zone).cast(pl.Int32), "shape": pl.Series(rng.integers(0, 6, n)),
        "t8": pl.Series((idx * 7919 + 13) % 10**8).cast(pl.String).str.zfill(8),
        # a NANP exchange starts with 2-9
        "t7": pl.Series(((idx * 7919 + 29) % 8 + 2) * 10**6 + (idx * 7919 + 29) % 10**6).cast(pl.String),
        "cn": _pick(_CN_PRE, rng.integers(0, len(_CN_PRE), n)),
        "us": _pick(_US_AREA, rng.integers(0, len(_US_AREA), n)),
        "de": _pick(_DE_PRE, rng.integers(0, len(_DE_PRE), n)),
    })
    c, shape = pl.col, pl.col("shape")
    a4, b4 = c("t8").str.slice(0, 4), c("t8").str.slice(4)
    a3, b4u = c("t7").str.slice(0, 3), c("t7").str.slice(3)

    def cat(*parts):
        return pl.concat_str([p if isinstance(p, pl.Expr) else pl.lit(p) for p in parts])

    def shapes(*alts):
        e = None
        for k, alt in enumerate(alts[:-1]):
            e = pl.when(shape == k).then(alt) if e is None else e.when(shape == k).then(alt)
        return e.otherwise(alts[-1])

    cn = shapes(cat(c("cn"), c("t8")), cat("+86 ", c("cn"), " ", a4, " ", b4), cat("0086-", c("cn"), "-", a4, "-", b4),
                cat("86", c("cn"), c("t8")), cat(c("cn"), "-", a4, "-", b4), cat("+86", c("cn"), c("t8")))
    us = shapes(cat("+1", c("us"), c("t7")), cat("(", c("us"), ") ", a3, "-", b4u), cat(c("us"), "-", a3, "-", b4u),
                cat("+1 ", c("us"), " ", a3, " ", b4u), cat("1", c("us"), c("t7")), cat(c("us"), c("t7")))
    de = shapes(cat("+49", c("de"), c("t8")), cat("0", c("de"), " ", c("t8")), cat("+49 ", c("de"), " ", c("t8")),
                cat("0049", c("de"), c("t8")), cat("0", c("de"), "-", c("t8")))
    gb = pl.when(shape < 3).then(cat("+44 7700 ", c("t8").str.slice(0, 6))).otherwise(cat("07700 ", c("t8").str.slice(0, 6)))
    jp = pl.when(shape < 3).then(cat("090-", a4, "-", b4)).otherwise(cat("+81 90 ", a4, " ", b4))
    z = c("zone")
    phone = (pl.when(z == 0).then(cn).when(z.is_in([1, 2])).then(us).when(z == 3).then(de)
             .when(z == 4).then(gb).otherwise(jp))
    out = np.array(f.select(phone.alias("phone")).to_series().to_list(), dtype=object)
    wide = np.flatnonzero(rng.random(n) < 0.01)         # full-width digits, as some exports have them
    out[wide] = [x.translate(_FULLWIDTH) for x in out[wide]]
    bad = np.flatnonzero(rng.random(n) < 0.0002)        # not a number: quarantined
    out[bad] = np.array(["n/a", "12345", "待补充", "+0 000"], object)[rng.integers(0, 4, len(bad))]
    out[rng.random(n) < 0.08] = None                    # no phone
    return pl.Series("phone", out.tolist(), dtype=pl.String)     # (an object array does not cast at 30M)


_FULLWIDTH = str.maketrans("0123456789+-", "０１２３４５６７８９＋－")


def _customers_frame(w: _World, rng, idx: np.ndarray, T: int) -> pl.DataFrame:
    n = len(idx)
    zone = w.shop_zone[w.cust_shop[idx]]
    si, gi = rng.integers(0, 5, n), rng.integers(0, 6, n)
    zh = pl.concat_str([_pick(["王", "李", "张", "刘", "陈"], si), _pick(["伟", "芳", "娜", "敏", "静", "强"], gi)])
    en = pl.concat_str([_pick(["Emma", "Liam", "Anna", "Jonas", "Yuki", "Grace"], gi), pl.lit(" "),
                        _pick(["Smith", "Müller", "Tanaka", "Brown", "Wagner"], si)])
    name = pl.select(pl.when(pl.Series(zone == 0)).then(zh).otherwise(en)).to_series()
    email = pl.select(pl.concat_str([pl.lit("user"), pl.Series(idx.astype(np.int64)).cast(pl.String),
                                     pl.lit("@example.com")])).to_series()
    email = email.set(pl.Series(rng.random(n) < np.where(zone == 0, 0.5, 0.05)), None)
    orders = np.bincount(w.o_cust, minlength=len(w.cust_shop))[idx]
    level = np.clip(rng.poisson(0.3 + 0.4 * np.minimum(orders, 8)), 0, 5).astype(np.int32)
    reg = w.cust_registered[idx]
    upd = np.where(rng.random(n) < 0.3, reg + (rng.random(n) * np.maximum(0, T - reg)).astype(np.int64), reg)
    return pl.DataFrame({
        "customer_id": _prefixed("u", idx, 8), "shop_id": _shop_ids(w.cust_shop[idx]),
        "name": name, "phone": _phones(rng, zone, idx), "email": email,
        "city": _pick(CITIES, idx % len(CITIES)),
        "member_level": pl.Series(level), "registered_at": _ts(reg),
        "opt_out": pl.Series(rng.random(n) < 0.03), "updated_at": _ts(np.minimum(upd, T)),
    })


def _as_text(df: pl.DataFrame, entity: str, zone_of_row: np.ndarray, shop_of_row: np.ndarray) -> pl.DataFrame:
    """Timestamps as CSV text: the shop's offset (shops 0, 3, 6, …), naive shop-local (1, 4, …) or Z (2, 5, …)."""
    mode = pl.Series(shop_of_row % 3)
    zone = pl.Series(zone_of_row)
    cols = []
    for c in TS.get(entity, []):
        local = None
        for k, (z, _, _) in enumerate(ZONES):
            conv = pl.col(c).dt.convert_time_zone(z)
            v = pl.when(mode == 0).then(conv.dt.strftime("%Y-%m-%dT%H:%M:%S%:z")) \
                  .when(mode == 1).then(conv.dt.strftime("%Y-%m-%d %H:%M:%S"))
            local = pl.when(zone == k).then(v) if local is None else local.when(zone == k).then(v)
        cols.append(pl.when(mode == 2).then(pl.col(c).dt.strftime("%Y-%m-%dT%H:%M:%SZ")).otherwise(local).alias(c))
    return df.with_columns(cols) if cols else df


def _naive_local(df: pl.DataFrame, entity: str, zone_of_row: np.ndarray) -> pl.DataFrame:
    """Parquet with naive timestamps: the shop's wall-clock time."""
    zone = pl.Series(zone_of_row)
    cols = []
    for c in TS.get(entity, []):
        e = None
        for k, (z, _, _) in enumerate(ZONES):
            v = pl.col(c).dt.convert_time_zone(z).dt.replace_time_zone(None)
            e = pl.when(zone == k).then(v) if e is None else e.when(zone == k).then(v)
        cols.append(e.alias(c))
    return df.with_columns(cols)


class _Writer:
    def __init__(self, landing: Path):
        self.landing = landing
        self.rows = {e: 0 for e in COLUMNS}
        self.files = 0

    def write(self, entity: str, df: pl.DataFrame, stamp: int, name: str, fmt: str) -> Path:
        assert df.columns == COLUMNS[entity], (entity, df.columns)
        d = self.landing / entity
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{datetime.fromtimestamp(stamp, timezone.utc):%Y-%m-%dT%H%M}_{name}.{fmt}"
        if fmt == "parquet":
            df.write_parquet(path, compression="zstd", statistics=True)
        else:
            df.write_csv(path)
        self.rows[entity] += df.height
        self.files += 1
        return path


def _config(shop_zone: np.ndarray) -> str:
    lines = ["# Benchmark shops written by bench/generate.py; every other key takes its default.", ""]
    for s, z in enumerate(shop_zone):
        zone, locale, _ = ZONES[z]
        lines += ["[[shops]]", f'shop_id = "shop{s + 1:03d}"', f'timezone = "{zone}"', f'locale = "{locale}"',
                  'distribution_platforms = ["fenxiao", "dropship"]', "", "[shops.reminders]",
                  f'strategy = "{"cutoff" if s % 2 == 0 else "delay"}"', ""]
    return "\n".join(lines)


def generate(out_dir: str | Path, *, orders: int = 100_000, shops: int | None = None, seed: int = 11,
             anchor: datetime = ANCHOR, weeks: int = 26, orders_per_file: int = ORDERS_PER_FILE) -> Summary:
    """Write the landing folder and shops.toml (see the module's doc)."""
    out = Path(out_dir)
    landing = out / "landing"
    if landing.exists():
        raise FileExistsError(f"{landing}: already there (delete it first)")
    shops = shops or int(np.clip(orders // 5000, 8, 400))
    w, _ = _world(orders, shops, seed, anchor, weeks)
    rng = np.random.default_rng([seed, 2])
    writer = _Writer(landing)
    out.mkdir(parents=True, exist_ok=True)
    (out / "shops.toml").write_text(_config(w.shop_zone), encoding="utf-8")
    A, D1 = w.A, w.D1
    n = len(w.created)

    # products (Parquet, one file)
    npr = len(w.prod_shop)
    w_products = pl.DataFrame({
        "product_id": _prefixed("p", np.arange(npr), 6), "shop_id": _shop_ids(w.prod_shop),
        "title": _prefixed("商品 ", np.arange(npr), 6),
        "category": _pick(["服饰", "美妆", "家居", "食品", "Kitchen", "Apparel", "Tea", "Toys"], np.arange(npr) % 8),
        "style_tags": _pick([None, "cute", "gift", "cute;gift", None], np.arange(npr) % 5),
        "followup_days": pl.Series(np.where(np.arange(npr) % 7 == 0, 14, -1)).cast(pl.Int32),
    }).with_columns(pl.when(pl.col("followup_days") >= 0).then(pl.col("followup_days")).alias("followup_days"))
    writer.write("products", w_products, D1, "snapshot", "parquet")

    # the snapshot at D1: orders created by then, in files of a million, every second one naive
    snap = np.flatnonzero(w.created <= D1)
    k_files = max(1, math.ceil(len(snap) / orders_per_file))
    for k in range(k_files):
        idx = snap[len(snap) * k // k_files: len(snap) * (k + 1) // k_files]
        df = _orders_frame(w, idx, _order_state(w, idx, D1))
        if k % 2 == 1:
            df = _naive_local(df, "orders", w.shop_zone[w.o_shop[idx]])
        writer.write("orders", df, D1, f"snapshot{k + 1:02d}", "parquet")
        del df
        items = _items_frame(w, idx)
        writer.write("order_items", items, D1, f"snapshot{k + 1:02d}", "parquet")
        del items
    cust_snap = np.flatnonzero(w.cust_registered <= D1)
    kc = max(1, math.ceil(len(cust_snap) / orders_per_file))
    for k in range(kc):
        idx = cust_snap[len(cust_snap) * k // kc: len(cust_snap) * (k + 1) // kc]
        writer.write("customers", _customers_frame(w, rng, idx, D1), D1, f"snapshot{k + 1:02d}", "parquet")
    # reviews of orders delivered by D1 (15 %), one Parquet file
    deliv = np.flatnonzero((w.delivered <= A) & (np.arange(n) % 7 == 3))
    r_t = w.delivered[deliv] + (np.arange(len(deliv)) % 5 + 1) * DAY // 2
    keep = r_t <= A
    deliv, r_t = deliv[keep], r_t[keep]
    rating = np.array([5, 5, 5, 4, 4, 3, 2, 1, 5, 4])[deliv % 10]
    reviews = pl.DataFrame({"order_id": _order_ids(deliv), "created_at": _ts(r_t),
                            "rating": pl.Series(rating).cast(pl.Int32),
                            "text": _pick(REVIEWS, deliv % len(REVIEWS))})
    early = pl.Series(r_t <= D1)
    writer.write("reviews", reviews.filter(early), D1, "snapshot", "parquet")

    # the CSV drop at A: orders new or changed since D1 (their state at A), new orders' items, new customers
    changed = np.zeros(n, bool)
    for a in (w.paid, w.shipped, w.delivered, w.closed, w.refunded):
        changed |= (a > D1) & (a <= A)
    upd = np.flatnonzero((w.created <= A) & ((w.created > D1) | changed))
    df = _orders_frame(w, upd, _order_state(w, upd, A))
    writer.write("orders", _as_text(df, "orders", w.shop_zone[w.o_shop[upd]], w.o_shop[upd]), A, "updates", "csv")
    new = upd[w.created[upd] > D1]
    writer.write("order_items", _items_frame(w, new), A, "updates", "csv")
    cust_new = np.flatnonzero((w.cust_registered > D1) & (w.cust_registered <= A))
    cdf = _customers_frame(w, rng, cust_new, A)
    writer.write("customers", _as_text(cdf, "customers", w.shop_zone[w.cust_shop[cust_new]], w.cust_shop[cust_new]),
                 A, "updates", "csv")
    late = reviews.filter(~early)
    r_idx = deliv[~early.to_numpy()]
    writer.write("reviews", _as_text(late, "reviews", w.shop_zone[w.o_shop[r_idx]], w.o_shop[r_idx]), A, "updates", "csv")
    # the stale drop (named later, so it sorts after the others): 3 % of the snapshot's orders as they were
    # a minute to three days before their last change, with that older updated_at
    stale = snap[(snap % 33) == 5]
    then = _order_state(w, stale, D1)["updated"] - rng.integers(MIN, 3 * DAY, len(stale))
    keep = w.created[stale] <= then
    stale, then = stale[keep], then[keep]
    sdf = _orders_frame(w, stale, _order_state(w, stale, then))       # as exported before their last change
    writer.write("orders", _as_text(sdf, "orders", w.shop_zone[w.o_shop[stale]], w.o_shop[stale]), A + MIN,
                 "stale_resend", "csv")
    # suppressions: 0.5 % of customers, by id, phone or email
    who = np.flatnonzero(np.arange(len(w.cust_shop)) % 200 == 17)
    who = who[w.cust_registered[who] <= A]
    supp = pl.DataFrame({"customer_id": _prefixed("u", who, 8), "phone": pl.Series([None] * len(who), dtype=pl.String),
                         "email": pl.Series([None] * len(who), dtype=pl.String),
                         "channel": _pick(["all", "sms", "call", "email"], who % 4),
                         "created_at": pl.Series([f"{datetime.fromtimestamp(A - DAY, timezone.utc):%Y-%m-%dT%H:%M:%SZ}"]
                                                 * len(who), dtype=pl.String),
                         "reason": pl.Series(["customer request"] * len(who), dtype=pl.String)})
    writer.write("suppressions", supp, A, "updates", "csv")
    summary = Summary(out, landing, out / "shops.toml", anchor, shops, len(w.cust_shop), dict(writer.rows), writer.files)
    (out / "generated.json").write_text(json.dumps({"orders": orders, "seed": seed, "weeks": weeks,
                                                    **summary.as_dict()}, indent=2))
    return summary


def extra_drop(out_dir: str | Path, fraction: float = 0.01, *, seed: int = 11,
               landing: str | Path | None = None) -> dict[str, int]:
    """A later drop: `fraction` × the set's orders more, placed in the hour after the anchor, by existing
    (70 %, by their order counts) and new customers, with their items (CSV) and the new customers (Parquet),
    written into `landing` (default: the set's own landing folder). Returns rows written per entity."""
    out = Path(out_dir)
    meta = json.loads((out / "generated.json").read_text())
    anchor = datetime.fromisoformat(meta["anchor"])
    w, zones = _world(meta["orders"], meta["shops"], meta["seed"], anchor, meta["weeks"])
    rng = np.random.default_rng([seed, 3, int(fraction * 1e6)])
    m = max(1, int(meta["orders"] * fraction))
    A2 = w.A + HOUR
    n0, c0 = len(w.created), len(w.cust_shop)
    # 70 % by existing customers (a long tail again: by their order counts), 30 % by new ones (one order each)
    counts = np.bincount(w.o_cust, minlength=c0).astype(float) + 0.5
    old = rng.random(m) < 0.7
    cust = np.empty(m, np.int64)
    cust[old] = rng.choice(c0, int(old.sum()), p=counts / counts.sum())
    n_new_c = int((~old).sum())
    cust[~old] = c0 + np.arange(n_new_c)
    shop_new = w.o_shop[rng.integers(0, n0, n_new_c)]
    cust_shop = np.concatenate([w.cust_shop, shop_new]).astype(np.int32)
    created = w.A + np.sort(rng.integers(0, HOUR, m))
    paid = np.where(rng.random(m) < 0.8, created + rng.integers(MIN, 20 * MIN, m), NA)
    lines = np.minimum(rng.geometric(0.62, m), 12)
    first = np.concatenate([[0], np.cumsum(lines)[:-1]])
    i_order = np.repeat(np.arange(m), lines)
    sh = cust_shop[cust][i_order]
    i_prod = w.prod_first[sh] + np.floor(w.n_prod[sh] * rng.random(len(i_order)) ** 2.5).astype(np.int64)
    i_qty = (1 + rng.poisson(0.25, len(i_order))).astype(np.int32)
    amount = np.bincount(i_order, weights=w.price[i_prod] * i_qty, minlength=m).astype(np.int64)
    reg = np.concatenate([w.cust_registered, created[~old] - MIN])
    w2 = _World(A2, w.D1, w.shop_zone, w.n_prod, w.prod_first, w.price, w.prod_shop, cust_shop, reg,
                np.zeros(0), np.concatenate([w.o_shop, cust_shop[cust]]), np.concatenate([w.o_cust, cust]),
                np.concatenate([w.created, created]), np.concatenate([w.paid, paid]),
                np.concatenate([w.shipped, np.full(m, NA)]), np.concatenate([w.delivered, np.full(m, NA)]),
                np.concatenate([w.closed, np.full(m, NA)]), np.concatenate([w.refunded, np.full(m, NA)]),
                np.concatenate([w.platform, rng.integers(0, 4, m).astype(np.int8)]),
                np.concatenate([w.o_first_item, first + len(w.i_order)]),
                np.concatenate([w.i_order, i_order + n0]), np.concatenate([w.i_line, (np.arange(len(i_order))
                                                                                       - first[i_order] + 1).astype(np.int32)]),
                np.concatenate([w.i_prod, i_prod]), np.concatenate([w.i_qty, i_qty]),
                np.concatenate([w.amount, amount]))
    idx = n0 + np.arange(m)
    writer = _Writer(Path(landing) if landing else out / "landing")
    tag = f"extra{int(fraction * 1000):03d}"
    df = _orders_frame(w2, idx, _order_state(w2, idx, A2))
    writer.write("orders", _as_text(df, "orders", w.shop_zone[w2.o_shop[idx]], w2.o_shop[idx]), A2, tag, "csv")
    writer.write("order_items", _items_frame(w2, idx), A2, tag, "csv")
    c_idx = c0 + np.arange(n_new_c)
    writer.write("customers", _customers_frame(w2, rng, c_idx, A2), A2, tag, "parquet")
    return dict(writer.rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--shops", type=int, default=None)
    parser.add_argument("--weeks", type=int, default=26)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--extra", type=float, default=None, help="add a later drop of this fraction more orders")
    args = parser.parse_args()
    t = time.perf_counter()
    if args.extra:
        rows = extra_drop(args.out, args.extra, seed=args.seed)
        print(f"extra drop: {rows} in {time.perf_counter() - t:.1f} s")
        return
    s = generate(args.out, orders=args.orders, shops=args.shops, seed=args.seed, weeks=args.weeks)
    print(f"{args.orders:,} orders, {s.shops} shops, {s.customers:,} customers, {sum(s.rows.values()):,} rows "
          f"in {s.files} files ({time.perf_counter() - t:.1f} s)")
    print(json.dumps(s.rows))


if __name__ == "__main__":
    main()
