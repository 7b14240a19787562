"""Cross-check of the planning marts against tests/reference.py, an independent plain-Python reading
of docs/rules.md §2-§6, on small, seeded, edge-case-dense data.

Each case generates three shops around one evaluation time T:

* ``sa`` Asia/Shanghai, strategy cutoff (sometimes a 00:30 cut-off whose window starts the day
  before), quiet hours wrapping midnight, daily_cap 2, visits on delivery with a tiny call capacity;
* ``sb`` America/New_York, strategy delay (sometimes delay = auto_close - margin, the rescue path),
  a second-purchase offer, holdout_rate 0.3, two distribution platforms, auto_channel email, visits
  on shipping with windows in the DST hours;
* ``sc`` Europe/Berlin, strategy cutoff (or no cut-offs), quiet hours not wrapping midnight (or none,
  or start == end), no distribution platforms, visits on payment, capacity 0 or 1, auto_channel
  'none' or 'sms', no visit windows in some cases.

Orders cluster within auto_close_minutes before T (a few up to three days) and around the follow-up
due dates, among ~45 customers (plus one without a customer row per shop), with many equal
created_at times, some not on a whole minute, orders created exactly at T - auto_close, at cut-off minus lead minus min_age, at
quiet start/end, paid/closed/refunded exactly at T and on both sides of it; suppressions of each
channel by id/phone/email before and after T; reviews with every rating and mixed-case keywords;
messages (payment reminders and follow-ups, some failed, some after T, follow-up calls on D).

The same data goes through the project's ingest + plan and through the reference; the row sets
must be equal. A mismatch lists the differing rows side by side.
"""

from __future__ import annotations

import csv
import json
import random
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import reference as ref
from crm.config import parse_settings
from crm.db import connect, sync_shops
from transforms.ingest import load
from transforms.plan import plan

UTC = timezone.utc
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

VARIANTS = ["new.cute", "new.gift", "repeat.gift", "second.retro", "repeat.minimal", "second.cute",
            "new.short.cute", "repeat.short.gift", "repeat.b.minimal"]

# (seed, T, overrides of the seeded shop options). The times: inside Shanghai's cut-off window; on the
# New York fall-back night (01:30 EST, the second 01:30, inside NY quiet hours, inside a visit window
# that starts at the first 01:00); on the New York spring-forward morning (quiet hours ending at the
# nonexistent 02:30); inside Berlin's quiet hours; exactly at Shanghai's quiet start and Berlin's quiet
# end; on the Berlin fall-back night (a cut-off at the ambiguous 02:30); the day after the New York
# fall-back (orders and messages span the change); Shanghai at its 00:30 cut-off window (which starts
# at 23:00 the day before, inside quiet hours); T with seconds and overlapping cut-off windows; the
# Berlin spring-forward night (a cut-off, a visit window start and a quiet end at nonexistent times).
CASES = [
    (1, datetime(2026, 11, 20, 2, 30, tzinfo=UTC), {}),
    (2, datetime(2026, 11, 1, 6, 30, tzinfo=UTC),
     {("sb", "visits", "windows"): ["01:00-02:30", "09:00-10:00", "15:00-17:00"],
      ("sb", "reminders", "quiet_hours"): ["22:00", "08:00"]}),
    (3, datetime(2026, 3, 8, 7, 30, tzinfo=UTC),
     {("sb", "reminders", "quiet_hours"): ["23:00", "02:30"], ("sb", "reminders", "delay_minutes"): 150,
      ("sb", "visits", "windows"): ["01:00-02:30", "09:00-10:00", "15:00-17:00"]}),
    (4, datetime(2026, 11, 20, 12, 0, tzinfo=UTC), {("sc", "reminders", "quiet_hours"): ["12:00", "14:00"]}),
    (5, datetime(2026, 11, 20, 13, 0, tzinfo=UTC),
     {("sc", "reminders", "quiet_hours"): ["12:00", "14:00"], ("sc", "reminders", "shipping_cutoffs"): ["10:00", "15:30"]}),
    (6, datetime(2026, 10, 25, 1, 30, tzinfo=UTC),
     {("sc", "reminders", "shipping_cutoffs"): ["02:30"], ("sc", "visits", "windows"): ["02:00-03:30", "13:00-14:00"]}),
    (7, datetime(2026, 11, 2, 14, 0, tzinfo=UTC), {("sb", "reminders", "delay_minutes"): 350}),
    (8, datetime(2026, 11, 20, 15, 50, tzinfo=UTC),
     {("sa", "reminders", "shipping_cutoffs"): ["00:30", "11:00", "17:00"], ("sa", "reminders", "lead_minutes"): 90,
      ("sc", "reminders", "shipping_cutoffs"): []}),
    (9, datetime(2026, 11, 20, 2, 5, 30, tzinfo=UTC),
     {("sa", "reminders", "shipping_cutoffs"): ["11:00", "11:30", "17:00"], ("sa", "reminders", "lead_minutes"): 90}),
    (10, datetime(2026, 3, 29, 1, 10, tzinfo=UTC),
     {("sc", "reminders", "shipping_cutoffs"): ["02:30", "15:30"], ("sc", "visits", "windows"): ["02:00-03:30"],
      ("sc", "reminders", "quiet_hours"): ["01:00", "02:15"]}),
]
CASE_IDS = [f"seed{s}-{t:%Y%m%dT%H%MZ}" for s, t, _o in CASES]

DECISION_COLS = ["as_of", "shop_id", "customer_id", "segment", "decision", "reason", "channel", "send_at", "template",
                 "variant"]
VISIT_COLS = ["as_of", "shop_id", "customer_id", "tier", "rank", "channel", "due_at"]
SEGMENT_COLS = ["as_of", "paid_orders", "lifetime_value", "last_paid_at", "member_level", "segment"]


# ============================================================================== data generation

def wall(d: date, hm: str, tz: str) -> datetime:
    h, m = map(int, hm.split(":"))
    return datetime.combine(d, time(h, m)).replace(tzinfo=ZoneInfo(tz)).astimezone(UTC)


def make_shops(rng: random.Random) -> list[dict]:
    sa = {
        "shop_id": "sa", "timezone": "Asia/Shanghai", "distribution_platforms": ["fenxiao"],
        "reminders": {
            "strategy": "cutoff",
            "shipping_cutoffs": rng.choice([["11:00", "17:00"], ["00:30", "11:00", "17:00"], ["09:15", "21:30"]]),
            "lead_minutes": rng.choice([60, 90, 45]), "min_age_minutes": 15,
            "auto_close_minutes": rng.choice([1440, 720]), "close_margin_minutes": 5,
            "quiet_hours": ["21:00", "09:00"], "daily_cap": 2,
            "channels": {"new": "call", "second": "sms", "repeat": "sms"}, "holdout_rate": 0.0,
        },
        "visits": {
            "trigger": "delivered", "followup_days": 7, "grace_days": 3,
            "windows": ["11:00-12:00", "16:00-18:00"], "manual_capacity": rng.choice([2, 3, 4]),
            "high_value_amount": 500, "auto_channel": "sms",
        },
    }
    sb = {
        "shop_id": "sb", "timezone": "America/New_York", "distribution_platforms": ["fenxiao", "jd_dist"],
        "reminders": {
            "strategy": "delay", "delay_minutes": rng.choice([150, 45, 350]), "min_age_minutes": 30,
            "auto_close_minutes": 360, "close_margin_minutes": 10,
            "quiet_hours": rng.choice([["22:00", "08:00"], ["23:00", "02:30"]]), "daily_cap": 1,
            "second_purchase_offer": "SAVE10",
            "channels": {"new": "sms", "second": "email", "repeat": "call"}, "holdout_rate": 0.3,
        },
        "visits": {
            "trigger": "shipped", "followup_days": 2, "grace_days": 2,
            "windows": rng.choice([["01:00-02:30", "09:00-10:00", "15:00-17:00"], ["08:00-09:00"]]),
            "manual_capacity": 2, "high_value_amount": 200, "auto_channel": "email",
        },
    }
    sc = {
        "shop_id": "sc", "timezone": "Europe/Berlin", "distribution_platforms": [],
        "reminders": {
            "strategy": "cutoff", "shipping_cutoffs": rng.choice([["10:00", "15:30"], [], ["02:30"]]),
            "lead_minutes": 45, "min_age_minutes": 10, "auto_close_minutes": 240, "close_margin_minutes": 5,
            "quiet_hours": rng.choice([["12:00", "14:00"], ["12:00", "14:00"], [], ["13:00", "13:00"]]),
            "daily_cap": 1, "channels": {"new": "email", "second": "sms", "repeat": "email"}, "holdout_rate": 0.1,
        },
        "visits": {
            "trigger": "paid", "followup_days": 1, "grace_days": 1,
            "windows": rng.choice([[], ["09:00-10:00"], ["02:00-03:30", "13:00-14:00"]]),
            "manual_capacity": rng.choice([0, 1]), "high_value_amount": 300,
            "auto_channel": rng.choice(["none", "sms"]),
            "complaint_keywords": ["Slow", "broken", "破", "Not Good"],
        },
    }
    # template experiments (docs/rules.md §4): weights, equal shares, variants with product tones of their own
    sa["experiments"] = {"payment_reminder": {"repeat": {"variants": ["repeat", "repeat.short"], "weights": [0.25, 0.75]}}}
    sb["experiments"] = {"payment_reminder": {"new": {"variants": ["new", "new.short", "new.long"]}}}
    sc["experiments"] = {"payment_reminder": {"repeat": {"variants": ["repeat.b", "repeat"], "weights": [0.7, 0.3]},
                                              "second": {"variants": ["second", "second.x"], "weights": [0.1, 0.9]}}}
    return [sa, sb, sc]


AMOUNTS = ["0.00", "9.90", "99.00", "199.99", "200.00", "300.00", "300.00", "499.99", "500.00", "500.00", "800.00", "1200.50"]
REVIEW_TEXTS = [None, "", "Great, love it", "Arrived SLOW but ok", "box BROKEN, sad", "包装有点破", "物流太慢了",
                "not good at all", "Not Good", "DISAPPOINTED a bit", "一般般", "Perfect", "damaged corner", "cute!"]
TAGS = ["cute", "gift", "retro", "minimal"]


def generate(seed: int, T: datetime, overrides: dict | None = None) -> dict:
    rng = random.Random(seed * 1_000_003 + int(T.timestamp()))
    raw_shops = make_shops(rng)
    for (sid, section, key), value in (overrides or {}).items():
        next(s for s in raw_shops if s["shop_id"] == sid)[section][key] = value
    settings = parse_settings({"shops": raw_shops})
    shops = [s.model_dump() for s in settings.shops]

    # ---------------------------------------------------------------- products
    products = []
    fdays = {"sa": [None, None, 0, 3, 10, 14], "sb": [None, None, 1, 3], "sc": [None, None, 0, 2]}
    for shop in shops:
        sid = shop["shop_id"]
        for i in range(6):
            tags = None if rng.random() < 0.2 else rng.sample(TAGS, rng.randint(1, 3))
            products.append({"product_id": f"{sid}-p{i}", "shop_id": sid, "title": f"product {i}",
                             "category": rng.choice(["toys", "home"]), "style_tags": tags,
                             "followup_days": rng.choice(fdays[sid])})

    # ---------------------------------------------------------------- customers
    phone_pool = [f"+861380000{i:04d}" for i in range(12)] + [f"1555000{i:04d}" for i in range(12)]
    email_pool = [f"user{i}@example.com" for i in range(22)]
    customers = []
    for shop in shops:
        sid = shop["shop_id"]
        for i in range(15):
            customers.append({
                "customer_id": f"{sid}-c{i:02d}", "shop_id": sid, "name": f"name {i}",
                "phone": rng.choice(phone_pool) if rng.random() < 0.8 else None,
                "email": rng.choice(email_pool) if rng.random() < 0.7 else None,
                "city": None, "member_level": rng.randint(0, 3),
                "registered_at": T - 200 * DAY, "opt_out": rng.random() < 0.08,
                "updated_at": T - 100 * DAY,
            })

    # ---------------------------------------------------------------- orders (+ their lines)
    orders: list[dict] = []
    items: list[dict] = []
    counter = iter(rng.sample(range(100, 1000), 600))   # ids not in creation order

    def pick_lines(sid):
        if rng.random() < 0.05:
            return []                                       # an order without lines
        mine = [p["product_id"] for p in products if p["shop_id"] == sid]
        return [(line_no, rng.choice(mine)) for line_no in rng.sample([1, 2, 3, 4], rng.randint(1, 3))]

    def followup_n(shop, lines):
        days = [p["followup_days"] for _n, pid in lines for p in products
                if p["product_id"] == pid and p["followup_days"] is not None]
        return max(days) if days else shop["visits"]["followup_days"]

    def pick_customer(sid, which):
        ids = [f"{sid}-c{i:02d}" for i in (range(0, 15) if which == "buyers" else range(6, 15))] + [f"{sid}-ghost"]
        weights = [1 / (i + 1) ** 0.5 for i in range(len(ids))] if which == "buyers" else [1] * len(ids)
        return rng.choices(ids, weights)[0]

    def add_order(shop, created, who="buyers", lines=None, **kw):
        sid = shop["shop_id"]
        o = {"order_id": f"{sid}-o{next(counter)}", "shop_id": sid, "customer_id": pick_customer(sid, who),
             "platform": rng.choice(["taobao"] * 6 + ["douyin", "fenxiao", "jd_dist"]),
             "created_at": created, "paid_at": None, "shipped_at": None, "delivered_at": None,
             "closed_at": None, "refunded_at": None, "total_amount": Decimal(rng.choice(AMOUNTS)),
             "currency": None, "receiver_city": None}
        o.update(kw)
        stamps = [o[k] for k in ("created_at", "paid_at", "shipped_at", "delivered_at", "closed_at", "refunded_at") if o[k]]
        o["updated_at"] = max(stamps)
        orders.append(o)
        for line_no, pid in (pick_lines(sid) if lines is None else lines):
            items.append({"order_id": o["order_id"], "line_no": line_no, "product_id": pid,
                          "quantity": rng.randint(1, 3), "unit_price": Decimal("9.90")})
        return o

    for shop in shops:
        sid, tz, r, v = shop["shop_id"], shop["timezone"], shop["reminders"], shop["visits"]
        D = T.astimezone(ZoneInfo(tz)).date()
        ac, ma = timedelta(minutes=r["auto_close_minutes"]), timedelta(minutes=r["min_age_minutes"])

        # history: earlier purchases that make customers 'second' / 'repeat'
        for _ in range(6):
            created = T - timedelta(days=rng.randint(4, 60), minutes=rng.randrange(0, 1440, 30))
            paid = created + timedelta(minutes=rng.choice([0, 3, 30]))
            refunded = rng.choice([None] * 3 + [T - DAY, T, T + HOUR])
            add_order(shop, created, paid_at=paid, refunded_at=refunded, platform="taobao")

        # recent orders on a coarse grid (many equal created_at), mostly within auto_close of T
        span = int(ac / MIN) + 15
        grid = [T - timedelta(minutes=rng.randrange(0, span, 15)) for _ in range(14)]
        grid += [T - timedelta(minutes=rng.randrange(0, 3 * 1440, 15)) for _ in range(2)]
        for _ in range(40):
            created = rng.choice(grid)
            if rng.random() < 0.12:
                created += timedelta(seconds=rng.choice([1, 30, 59]))  # not on a whole minute
            kw = {}
            u = rng.random()
            if u < 0.62:
                pass                                              # unpaid and open
            elif u < 0.68:
                kw["paid_at"] = T + timedelta(minutes=rng.choice([1, 30, 600]))
            elif u < 0.78:
                kw["paid_at"] = created + timedelta(minutes=rng.choice([0, 1, 10, 60, 300]))
            elif u < 0.86:
                kw["closed_at"] = max(created, rng.choice([T, T - MIN, T + MIN, created + ac]))
            elif u < 0.93:
                kw["paid_at"] = created + 5 * MIN
                kw["refunded_at"] = max(kw["paid_at"], rng.choice([T, T + HOUR, T - HOUR]))
            else:
                kw["paid_at"] = max(created, T)
            add_order(shop, created, **kw)

        # boundaries of the reminder rules
        special = [T - ac, T - ac + MIN, T - ac - MIN, T, T - ma, T - ma + MIN, T - MIN, T - ac + ma]
        if r["strategy"] == "delay":
            dl = timedelta(minutes=r["delay_minutes"])
            special += [T - dl, T - dl + MIN, T - dl - MIN]
        for d in (D - timedelta(days=2), D - DAY, D):
            if r["strategy"] == "cutoff":
                for c in r["shipping_cutoffs"]:
                    end = datetime.combine(d, time(*map(int, c.split(":"))))
                    start = end - timedelta(minutes=r["lead_minutes"])
                    ws = start.replace(tzinfo=ZoneInfo(tz)).astimezone(UTC)
                    we = end.replace(tzinfo=ZoneInfo(tz)).astimezone(UTC)
                    special += [ws - ma, ws - ma - MIN, we - ma, we - ma - MIN]
            if r["quiet_hours"]:
                shift = timedelta(minutes=r["delay_minutes"]) if r["strategy"] == "delay" else ma
                for hm in r["quiet_hours"]:
                    q = wall(d, hm, tz)
                    special += [q - shift, q - shift - MIN, q - ma]
        special = [s for s in special if T - ac - 30 * MIN <= s <= T] + [T - ac - MIN]
        for s in rng.sample(special, min(len(special), 18)):
            for _ in range(rng.choice([1, 1, 2])):              # sometimes two orders at the same instant
                add_order(shop, s, platform=rng.choice(["taobao"] * 8 + ["fenxiao"]))
        add_order(shop, T + MIN)                                # created after T: not unpaid at T
        add_order(shop, T + 2 * HOUR)

        # follow-up visit candidates around their due dates
        trig = {"delivered": "delivered_at", "shipped": "shipped_at", "paid": "paid_at"}[v["trigger"]]
        for i in range(34):
            lines = pick_lines(sid)
            n = followup_n(shop, lines)
            g = rng.choice([-1, 0, 0, v["grace_days"] - 1, v["grace_days"] - 1, v["grace_days"]] + list(range(v["grace_days"])))
            hm = rng.choice(["00:00", "23:59", "09:30", "12:10", "18:45", "02:30", "01:15"])
            x = wall(D - timedelta(days=n + g), hm, tz)
            if i == 0:
                x = T
            elif i == 1:
                x = T + MIN
            kw = {trig: x}
            if trig == "delivered_at":
                kw["shipped_at"] = x - timedelta(hours=rng.randint(1, 48))
                kw["paid_at"] = kw["shipped_at"] - timedelta(hours=rng.randint(0, 24))
            elif trig == "shipped_at":
                kw["paid_at"] = x - timedelta(hours=rng.randint(0, 24))
                if rng.random() < 0.5:
                    kw["delivered_at"] = x + timedelta(hours=rng.randint(1, 30))
            else:
                if rng.random() < 0.5:
                    kw["shipped_at"] = x + timedelta(hours=rng.randint(1, 30))
            created = kw["paid_at"] - timedelta(minutes=rng.choice([0, 2, 40]))
            if rng.random() < 0.12:
                kw["refunded_at"] = max(kw["paid_at"], rng.choice([T, T + HOUR, T - HOUR, kw["paid_at"] + HOUR]))
            add_order(shop, created, who="visited", lines=lines, platform="taobao", **kw)

    # ---------------------------------------------------------------- reviews
    reviews = []
    for o in orders:
        if (o["delivered_at"] or o["shipped_at"] or o["paid_at"]) is None or rng.random() < 0.3:
            continue
        base = o["paid_at"] or o["created_at"]
        used = set()
        for _ in range(rng.choice([1, 1, 2])):
            created = rng.choice([base + HOUR, T - HOUR, T, T + MIN, base + 3 * DAY])
            if created in used:
                continue
            used.add(created)
            reviews.append({"order_id": o["order_id"], "created_at": created,
                            "rating": rng.randint(1, 5), "text": rng.choice(REVIEW_TEXTS)})

    # ---------------------------------------------------------------- suppressions
    suppressions = []
    for _ in range(20):
        c = rng.choice(customers)
        by = rng.choice(["id", "phone", "email", "phone", "email"])
        row = {"customer_id": None, "phone": None, "email": None}
        if by == "phone" and c["phone"]:
            row["phone"] = c["phone"]
        elif by == "email" and c["email"]:
            row["email"] = c["email"]
        else:
            row["customer_id"] = c["customer_id"]
        row["channel"] = rng.choice(["sms", "email", "call", "all", "sms", "call"])
        row["created_at"] = T + rng.choice([-3 * DAY, -HOUR, -MIN, timedelta(0), MIN, HOUR])
        row["reason"] = rng.choice([None, "complaint"])
        suppressions.append(row)

    # ---------------------------------------------------------------- messages
    messages = []
    mid = iter(range(10_000))

    def add_message(o, purpose, channel, created, status=None):
        messages.append({"message_id": f"m{next(mid)}", "purpose": purpose, "shop_id": o["shop_id"],
                         "order_id": o["order_id"], "customer_id": o["customer_id"], "channel": channel,
                         "status": status or rng.choice(["queued", "sent", "failed", "done", "sent"]),
                         "created_at": created})

    tzs = {s["shop_id"]: s["timezone"] for s in shops}
    recent = [o for o in orders if T - 3 * DAY <= o["created_at"] <= T]
    for o in rng.sample(recent, 40):
        midnight = wall(T.astimezone(ZoneInfo(tzs[o["shop_id"]])).date(), "00:00", tzs[o["shop_id"]])
        created = rng.choice([T - 5 * MIN, T - 2 * HOUR, midnight + MIN, midnight - MIN, T, T + MIN,
                              o["created_at"] + 15 * MIN])
        add_message(o, "payment_reminder", rng.choice(["sms", "call", "email"]), created)
    visited = [o for o in orders if o["paid_at"] is not None and o["created_at"] < T - DAY]
    for o in rng.sample(visited, 10):
        midnight = wall(T.astimezone(ZoneInfo(tzs[o["shop_id"]])).date(), "00:00", tzs[o["shop_id"]])
        created = rng.choice([T - 5 * MIN, T, T + MIN, midnight + MIN, midnight - MIN, T - 2 * DAY])
        add_message(o, "followup", rng.choice(["call", "sms", "email", "sms"]), created)
    for shop in shops:                                           # calls already given on D (or not quite)
        mine = [o for o in visited if o["shop_id"] == shop["shop_id"]]
        midnight = wall(T.astimezone(ZoneInfo(shop["timezone"])).date(), "00:00", shop["timezone"])
        for created in rng.sample([midnight, midnight - MIN, T, T + MIN, T - HOUR], rng.choice([0, 1, 1, 2])):
            add_message(rng.choice(mine), "followup", "call", created)

    return {"T": T, "raw_shops": raw_shops, "shops": shops, "orders": orders, "items": items,
            "products": products, "customers": customers, "reviews": reviews,
            "suppressions": suppressions, "messages": messages}


# ============================================================================== landing folder

def iso(ts: datetime | None, tz: str | None = None) -> str:
    if ts is None:
        return ""
    return ts.astimezone(ZoneInfo(tz) if tz else UTC).isoformat()


def write_csv(path: Path, rows: list[dict], header: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=header)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in header})


def write_ndjson(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


ORDER_COLS = ["order_id", "shop_id", "customer_id", "platform", "created_at", "paid_at", "shipped_at", "delivered_at",
              "closed_at", "refunded_at", "total_amount", "currency", "receiver_city", "updated_at"]
TS_ORDER_COLS = ["created_at", "paid_at", "shipped_at", "delivered_at", "closed_at", "refunded_at", "updated_at"]


def write_landing(data: dict, root: Path) -> None:
    tzs = {s["shop_id"]: s["timezone"] for s in data["shops"]}

    def order_text(o, local):
        tz = tzs[o["shop_id"]] if local else None
        row = {k: ("" if o[k] is None else str(o[k])) for k in ORDER_COLS}
        for k in TS_ORDER_COLS:
            row[k] = iso(o[k], tz)
        return row

    orders = data["orders"]
    half = len(orders) // 2
    write_csv(root / "orders" / "d1.csv", [order_text(o, False) for o in orders[:half]], ORDER_COLS)
    write_ndjson(root / "orders" / "d2.ndjson",
                 [{k: (v if v != "" else None) for k, v in order_text(o, True).items()} for o in orders[half:]])
    write_csv(root / "order_items" / "d1.csv",
              [{k: str(it[k]) for k in it} for it in data["items"]],
              ["order_id", "line_no", "product_id", "quantity", "unit_price"])
    write_csv(root / "products" / "d1.csv",
              [{**p, "style_tags": ";".join(p["style_tags"] or []),
                "followup_days": "" if p["followup_days"] is None else str(p["followup_days"])} for p in data["products"]],
              ["product_id", "shop_id", "title", "category", "style_tags", "followup_days"])
    write_csv(root / "customers" / "d1.csv",
              [{**c, "phone": c["phone"] or "", "email": c["email"] or "", "city": "",
                "member_level": str(c["member_level"]), "opt_out": "true" if c["opt_out"] else "false",
                "registered_at": iso(c["registered_at"]), "updated_at": iso(c["updated_at"], tzs[c["shop_id"]])}
               for c in data["customers"]],
              ["customer_id", "shop_id", "name", "phone", "email", "city", "member_level", "registered_at", "opt_out",
               "updated_at"])
    write_ndjson(root / "reviews" / "d1.ndjson",
                 [{"order_id": rv["order_id"], "created_at": iso(rv["created_at"]), "rating": rv["rating"],
                   "text": rv["text"]} for rv in data["reviews"]])
    write_csv(root / "suppressions" / "d1.csv",
              [{"customer_id": s["customer_id"] or "", "phone": s["phone"] or "", "email": s["email"] or "",
                "channel": s["channel"], "created_at": iso(s["created_at"]), "reason": s["reason"] or ""}
               for s in data["suppressions"]],
              ["customer_id", "phone", "email", "channel", "created_at", "reason"])


def run_project(data: dict, tmp_path: Path, plan_times: list[datetime]):
    con = connect(tmp_path / "crm.duckdb")
    sync_shops(con, parse_settings({"shops": data["raw_shops"]}))
    landing = tmp_path / "landing"
    write_landing(data, landing)
    load(con, landing)
    quarantined = con.execute("SELECT entity, row, reason FROM ops.quarantine").fetchall()
    assert not quarantined, f"the generated data should load cleanly: {quarantined[:5]}"
    for m in data["messages"]:
        con.execute("INSERT INTO ops.messages (message_id, purpose, shop_id, order_id, customer_id, channel, status, "
                    "attempts, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
                    [m["message_id"], m["purpose"], m["shop_id"], m["order_id"], m["customer_id"], m["channel"],
                     m["status"], m["created_at"]])
    for t in plan_times:
        plan(con, t, variants=list(VARIANTS))
    return con


def fetch(con, sql: str, params=()) -> list[dict]:
    cur = con.execute(sql, list(params))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


# ============================================================================== comparison

def norm(value):
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    if isinstance(value, (Decimal, float)):
        return Decimal(str(value)).quantize(Decimal("0.01"))
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):   # numpy scalars
        return norm(value.item())
    return value


def show(value) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%MZ") if value.second == 0 else value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, Decimal):
        return str(value)
    return repr(value)


def describe_order(data: dict, order_id: str) -> str:
    o = next((o for o in data["orders"] if o["order_id"] == order_id), None)
    if o is None:
        return ""
    tz = next(s["timezone"] for s in data["shops"] if s["shop_id"] == o["shop_id"])
    parts = [f"{k}={o[k].astimezone(ZoneInfo(tz)).strftime('%m-%d %H:%M%z')}"
             for k in ("created_at", "paid_at", "shipped_at", "delivered_at", "closed_at", "refunded_at") if o[k]]
    return (f"      order: customer={o['customer_id']} platform={o['platform']} amount={o['total_amount']} "
            + " ".join(parts))


def compare(kind: str, key_cols: list[str], cols: list[str], expected: list[dict], got: list[dict], data: dict) -> list[str]:
    exp = {tuple(r[k] for k in key_cols): tuple(norm(r[c]) for c in cols) for r in expected}
    have: dict[tuple, tuple] = {}
    dups = []
    for r in got:
        k = tuple(r[k] for k in key_cols)
        if k in have:
            dups.append(k)
        have[k] = tuple(norm(r[c]) for c in cols)
    problems = []
    if dups:
        problems.append(f"{kind}: {len(dups)} duplicate keys in the project's output, e.g. {dups[:5]}")
    keys = sorted(set(exp) | set(have), key=lambda k: tuple(map(str, k)))
    diffs = [(k, exp.get(k), have.get(k)) for k in keys if exp.get(k) != have.get(k)]
    if diffs:
        lines = [f"{kind}: {len(diffs)} of {len(keys)} rows differ (reference vs project); columns {cols}"]
        for k, a, b in diffs[:10]:
            key = ",".join(map(str, k))
            if b is None:
                lines.append(f"  [{key}] only in reference: {' '.join(map(show, a))}")
            elif a is None:
                lines.append(f"  [{key}] only in project:   {' '.join(map(show, b))}")
            else:
                changed = [c for c, x, y in zip(cols, a, b) if x != y]
                lines.append(f"  [{key}] differs in {changed}")
                lines.append(f"      reference: {' | '.join(f'{c}={show(x)}' for c, x in zip(cols, a))}")
                lines.append(f"      project:   {' | '.join(f'{c}={show(y)}' for c, y in zip(cols, b))}")
            if "order_id" in key_cols:
                lines.append(describe_order(data, k[key_cols.index("order_id")]))
        if len(diffs) > 10:
            lines.append(f"  ... and {len(diffs) - 10} more")
        problems.append("\n".join(lines))
    return problems


def reference_outputs(data: dict, T: datetime) -> tuple[list[dict], list[dict], list[dict]]:
    d = data
    decisions = ref.reminder_decisions(T, d["shops"], d["orders"], d["items"], d["products"], d["customers"],
                                       d["suppressions"], d["messages"], VARIANTS)
    visits = ref.visit_tasks(T, d["shops"], d["orders"], d["items"], d["products"], d["customers"],
                             d["suppressions"], d["reviews"], d["messages"])
    segments = ref.customer_segments(T, d["orders"], d["customers"])
    return decisions, visits, segments


# ============================================================================== the tests

@pytest.mark.parametrize("seed,T,overrides", CASES, ids=CASE_IDS)
def test_plan_matches_reference(tmp_path, seed, T, overrides):
    data = generate(seed, T, overrides)
    T_old = T - 26 * HOUR
    # plan T, then an older T (must not touch T's rows nor customer_segments), then T again (replaces)
    con = run_project(data, tmp_path, [T, T_old, T])
    try:
        problems = []
        for t in (T, T_old):
            decisions, visits, _ = reference_outputs(data, t)
            got = fetch(con, "SELECT * FROM marts.reminder_decisions WHERE as_of = ?", [t])
            problems += compare(f"reminder_decisions @ {t:%Y-%m-%dT%H:%MZ}", ["order_id"], DECISION_COLS,
                                decisions, got, data)
            got = fetch(con, "SELECT * FROM marts.visit_tasks WHERE as_of = ?", [t])
            problems += compare(f"visit_tasks @ {t:%Y-%m-%dT%H:%MZ}", ["order_id"], VISIT_COLS, visits, got, data)
        _, _, segments = reference_outputs(data, T)          # the newest T planned so far
        got = fetch(con, "SELECT * FROM marts.customer_segments")
        problems += compare("customer_segments", ["shop_id", "customer_id"], SEGMENT_COLS, segments, got, data)
    finally:
        con.close()
    assert not problems, "\n\n".join(problems)


def test_generated_data_reaches_every_rule():
    """The data is edge-case dense: across the cases the reference meets every reason, tier and channel."""
    reasons, tiers, visit_channels, segments, templates, variants = set(), set(), set(), set(), set(), set()
    for seed, T, overrides in CASES:
        data = generate(seed, T, overrides)
        decisions, visits, segs = reference_outputs(data, T)
        reasons |= {r["reason"] for r in decisions}
        segments |= {r["segment"] for r in decisions}
        templates |= {r["template"] for r in decisions if "." in r["template"]}
        variants |= {(r["variant"], r["template"]) for r in decisions if r["variant"]}
        tiers |= {r["tier"] for r in visits}
        visit_channels |= {r["channel"] for r in visits}
        assert decisions and visits and segs
    assert reasons >= {None, "expired", "distribution_platform", "opted_out", "paid_other", "not_latest",
                       "already_reminded", "no_offer", "daily_cap", "closes_before_send", "unreachable", "holdout",
                       "wait"}, reasons
    assert tiers == set(ref.TIERS), tiers
    assert visit_channels >= {"call", "sms", "email", None}, visit_channels
    assert segments == {"new", "second", "repeat"}, segments
    assert templates, "some template variant is chosen"
    names = {v for v, _t in variants}
    assert {"repeat.short", "new.short", "new.long", "repeat.b", "second.x"} <= names, names
    assert {t for _v, t in variants} & {"payment_reminder/new.short.cute", "payment_reminder/repeat.short.gift",
                                        "payment_reminder/repeat.b.minimal"}, "a variant with its product tone"
