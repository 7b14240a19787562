"""An independent, plain-Python reading of docs/rules.md §2–§6 (payment reminders, follow-up visits,
customer segments), written from the rules text only (docs/rules.md), row by row, for clarity over speed.

Inputs are lists of dicts with the column names of docs/rules.md §1:

* datetimes are aware (any zone; everything is compared as UTC instants),
* amounts are Decimal (or float / str), ``style_tags`` a list of lower-case strings or None,
  ``opt_out`` a bool,
* ``shops`` are dicts shaped like the TOML of docs/rules.md §3 with every default filled
  (``shop_id``, ``timezone``, ``distribution_platforms``, ``reminders={...}``, ``visits={...}``),
* ``messages`` rows have ``message_id, purpose, shop_id, order_id, customer_id, channel, status,
  created_at``.

Where the rules are silent this follows the project's documented choices:

1. ops.messages is read as it was at T (only ``created_at <= T`` counts).
2. Wall clock -> instant with zoneinfo, fold=0 (ambiguous: first occurrence; nonexistent: the offset
   before the change). Window starts are wall-clock arithmetic (cut-off minus lead on the wall
   clock, then converted). Quiet hours compare the local minute of day with [start, end), wrapping
   midnight when start > end; start == end or [] means none.
3. channel / send_at / template / variant are filled on every decision row (variant: none outside an
   experiment, and none on the channel call).
4. Suppressions match by customer_id, phone or email (non-null) and count when created <= T. Phones are
   compared in E.164 (libphonenumber after NFKC; a number without a country code is in its shop's
   phone_region: a customer's shop, for a suppression its customer's shop, else the first shop).
5. Visit due_at is per shop; call capacity counts the shop's non-failed follow-up calls created
   <= T on D.
6. customer_segments: every customer row plus every (shop, customer) with a paid, unrefunded order.
7. A product's followup_days may be None (then it does not take part in the max).
8. hash01 = first 8 hex digits of MD5 / 2**32; dates inside keys are YYYY-MM-DD.
"""

from __future__ import annotations

import hashlib
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

UTC = timezone.utc
CENT = Decimal("0.01")

__all__ = ["hash01", "reminder_decisions", "visit_tasks", "customer_segments", "send_time"]


# ------------------------------------------------------------------------------------ small helpers

def hash01(x: str) -> float:
    return int(hashlib.md5(x.encode("utf-8")).hexdigest()[:8], 16) / 2**32


def as_utc(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    if ts.tzinfo is None:
        raise ValueError(f"naive datetime {ts!r}: the reference wants aware datetimes")
    return ts.astimezone(UTC)


def money(x) -> Decimal | None:
    if x is None:
        return None
    return Decimal(str(x)).quantize(CENT)


def hhmm(text: str) -> time:
    h, m = text.split(":")
    return time(int(h), int(m))


def minutes_of(text: str) -> int:
    t = hhmm(text)
    return t.hour * 60 + t.minute


def local(ts: datetime, tz: str) -> datetime:
    """The wall-clock reading of an instant in the shop's zone."""
    return as_utc(ts).astimezone(ZoneInfo(tz))


def local_date(ts: datetime, tz: str) -> date:
    return local(ts, tz).date()


def local_minute(ts: datetime, tz: str) -> int:
    lt = local(ts, tz)
    return lt.hour * 60 + lt.minute


def wall_to_instant(wall: datetime, tz: str) -> datetime:
    """A naive local wall-clock time -> UTC instant, zoneinfo fold=0 semantics."""
    assert wall.tzinfo is None
    return wall.replace(tzinfo=ZoneInfo(tz), fold=0).astimezone(UTC)


def at_local(d: date, hm: str, tz: str) -> datetime:
    return wall_to_instant(datetime.combine(d, hhmm(hm)), tz)


def is_paid(o: dict, T: datetime) -> bool:
    return o.get("paid_at") is not None and as_utc(o["paid_at"]) <= T


def is_refunded(o: dict, T: datetime) -> bool:
    return o.get("refunded_at") is not None and as_utc(o["refunded_at"]) <= T


def is_unpaid(o: dict, T: datetime) -> bool:
    if as_utc(o["created_at"]) > T:
        return False
    if is_paid(o, T):
        return False
    closed = o.get("closed_at")
    return closed is None or as_utc(closed) > T


def segment_of_count(n: int) -> str:
    if n == 0:
        return "new"
    if n == 1:
        return "second"
    return "repeat"


def prior_purchases(o: dict, orders: list[dict], T: datetime) -> int:
    """The customer's other orders in the same shop paid before o was created and not refunded at T."""
    n = 0
    for p in orders:
        if p["order_id"] == o["order_id"]:
            continue
        if p["shop_id"] != o["shop_id"] or p["customer_id"] != o["customer_id"]:
            continue
        if p.get("paid_at") is None:
            continue
        if not as_utc(p["paid_at"]) < as_utc(o["created_at"]):
            continue
        if is_refunded(p, T):
            continue
        n += 1
    return n


# ----------------------------------------------------------------------------- customers & reach

def _customer(customers: list[dict], customer_id: str) -> dict | None:
    for c in customers:
        if c["customer_id"] == customer_id:
            return c
    return None


def e164(text: str | None, region: str) -> str | None:
    """A phone number as docs/rules.md §1 stores it; the reference is given only numbers that parse."""
    import unicodedata

    import phonenumbers

    if text is None or not text.strip():
        return None
    number = phonenumbers.parse(unicodedata.normalize("NFKC", text), region)
    if not phonenumbers.is_possible_number(number):
        raise ValueError(f"{text!r}: the reference wants phone numbers that parse")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def phones_in_e164(shops: list[dict], customers: list[dict], suppressions: list[dict]) -> tuple[list, list]:
    region = {s["shop_id"]: s["phone_region"] for s in shops}
    shop_of = {c["customer_id"]: c["shop_id"] for c in customers}
    first = shops[0]["phone_region"]
    customers = [{**c, "phone": e164(c.get("phone"), region.get(c["shop_id"], first))} for c in customers]
    suppressions = [{**s, "phone": e164(s.get("phone"), region.get(shop_of.get(s.get("customer_id")), first))}
                    for s in suppressions]
    return customers, suppressions


def _matching_suppressions(customer_id: str, customer: dict | None, suppressions: list[dict], T: datetime) -> list[dict]:
    phone = customer.get("phone") if customer else None
    email = customer.get("email") if customer else None
    found = []
    for s in suppressions:
        if as_utc(s["created_at"]) > T:
            continue
        hit = False
        if s.get("customer_id") is not None and s["customer_id"] == customer_id:
            hit = True
        if s.get("phone") is not None and phone is not None and s["phone"] == phone:
            hit = True
        if s.get("email") is not None and email is not None and s["email"] == email:
            hit = True
        if hit:
            found.append(s)
    return found


def opted_out(customer_id: str, customers: list[dict], suppressions: list[dict], T: datetime) -> bool:
    c = _customer(customers, customer_id)
    if c is not None and bool(c.get("opt_out")):
        return True
    for s in _matching_suppressions(customer_id, c, suppressions, T):
        if s["channel"] == "all":
            return True
    return False


def reachable(customer_id: str, channel: str, customers: list[dict], suppressions: list[dict], T: datetime) -> bool:
    """Has the contact the channel needs and no suppression for that very channel."""
    c = _customer(customers, customer_id)
    if channel in ("sms", "call"):
        contact = c.get("phone") if c else None
    elif channel == "email":
        contact = c.get("email") if c else None
    else:
        return False
    if contact is None or contact == "":
        return False
    for s in _matching_suppressions(customer_id, c, suppressions, T):
        if s["channel"] == channel:
            return False
    return True


# ---------------------------------------------------------------------------------- quiet hours

def _quiet(shop: dict) -> tuple[int, int] | None:
    q = shop["reminders"]["quiet_hours"]
    if not q:
        return None
    start, end = minutes_of(q[0]), minutes_of(q[1])
    if start == end:
        return None
    return start, end


def in_quiet(ts: datetime, shop: dict) -> bool:
    q = _quiet(shop)
    if q is None:
        return False
    start, end = q
    m = local_minute(ts, shop["timezone"])
    if start < end:
        return start <= m < end
    return m >= start or m < end


def end_of_quiet(ts: datetime, shop: dict) -> datetime:
    """The end of the quiet period that contains ts (ts must be inside one)."""
    start, end = _quiet(shop)
    tz = shop["timezone"]
    m = local_minute(ts, tz)
    d = local_date(ts, tz)
    if start > end and m >= start:       # evening part of a period wrapping midnight
        d = d + timedelta(days=1)
    end_hm = f"{end // 60:02d}:{end % 60:02d}"
    return at_local(d, end_hm, tz)


# ------------------------------------------------------------------------------------ send time

def send_time(o: dict, shop: dict) -> tuple[datetime, datetime, datetime]:
    """(s, e, deadline) for an order, docs/rules.md §4 'Send time'."""
    r = shop["reminders"]
    tz = shop["timezone"]
    t0 = as_utc(o["created_at"])
    e = t0 + timedelta(minutes=r["min_age_minutes"])
    deadline = t0 + timedelta(minutes=r["auto_close_minutes"] - r["close_margin_minutes"])

    # step 1
    if r["strategy"] == "delay":
        s = t0 + timedelta(minutes=r["delay_minutes"])
    else:
        cutoffs = r["shipping_cutoffs"]
        if not cutoffs:
            s = e
        else:
            lead = timedelta(minutes=r["lead_minutes"])
            windows = []
            e_day = local_date(e, tz)
            # enough days around e for any lead: windows of day d start at (d + cut-off - lead)
            span = 2 + r["lead_minutes"] // 1440
            for k in range(-span, span + 3):
                d = e_day + timedelta(days=k)
                for c in cutoffs:
                    wall_end = datetime.combine(d, hhmm(c))
                    wall_start = wall_end - lead
                    windows.append((wall_to_instant(wall_start, tz), wall_to_instant(wall_end, tz)))
            if any(ws <= e < we for ws, we in windows):
                s = e
            else:
                later = [ws for ws, _we in windows if ws > e]
                s = min(later)

    # step 2
    if s >= deadline:
        s = e

    # step 3
    if in_quiet(s, shop):
        s = end_of_quiet(s, shop)
    return s, e, deadline


# ------------------------------------------------------------------------------------ templates

def style_tag(o: dict, segment: str, items: list[dict], products: list[dict], variants) -> str | None:
    """The order's product tone: the first tag (by line_no, then its place in style_tags) with a template
    <segment>.<tag>."""
    variants = set(variants or [])
    lines = sorted((it for it in items if it["order_id"] == o["order_id"]), key=lambda it: int(it["line_no"]))
    for it in lines:
        prod = next((p for p in products if p["product_id"] == it["product_id"]), None)
        if prod is None or not prod.get("style_tags"):
            continue
        for tag in prod["style_tags"]:
            if f"{segment}.{tag}" in variants:
                return tag
    return None


def experiment_variant(o: dict, segment: str, channel: str, shop: dict) -> str | None:
    """[shops.experiments]: the variant of the shop's experiment for the segment whose share of
    hash01("variant:" + order_id) holds the order (shares in list order, the last one ending at 1; no weights:
    equal shares); none on the channel call."""
    experiment = ((shop.get("experiments") or {}).get("payment_reminder") or {}).get(segment) or {}
    names, weights = experiment.get("variants") or [], experiment.get("weights") or []
    if not names or channel == "call":
        return None
    h = hash01("variant:" + o["order_id"])
    for i, name in enumerate(names):
        end = 1.0 if i == len(names) - 1 else (sum(weights[: i + 1]) if weights else (i + 1) / len(names))
        if h < end:
            return name
    return names[-1]


def template_for(o: dict, segment: str, items: list[dict], products: list[dict], variants,
                 variant: str | None = None) -> str:
    """payment_reminder/<variant or segment>, with the order's product tone when that template exists."""
    base = variant or segment
    tag = style_tag(o, segment, items, products, variants)
    if tag is not None and f"{base}.{tag}" in set(variants or []):
        return f"payment_reminder/{base}.{tag}"
    return f"payment_reminder/{base}"


# ------------------------------------------------------------------------------ §4 reminders

def _shop(shops: list[dict], shop_id: str) -> dict:
    for s in shops:
        if s["shop_id"] == shop_id:
            return s
    raise KeyError(shop_id)


def reminder_decisions(T, shops, orders, items, products, customers, suppressions, messages, variants) -> list[dict]:
    T = as_utc(T)
    customers, suppressions = phones_in_e164(shops, customers, suppressions)
    messages = [m for m in messages if as_utc(m["created_at"]) <= T]   # ops.messages as it was at T
    out = []
    for o in orders:
        if not is_unpaid(o, T):
            continue
        shop = _shop(shops, o["shop_id"])
        r = shop["reminders"]
        tz = shop["timezone"]
        cid = o["customer_id"]
        t0 = as_utc(o["created_at"])
        segment = segment_of_count(prior_purchases(o, orders, T))
        channel = r["channels"][segment]
        s, _e, deadline = send_time(o, shop)
        same_customer = [p for p in orders
                         if p["order_id"] != o["order_id"] and p["shop_id"] == o["shop_id"] and p["customer_id"] == cid]

        reason = None
        # 1 expired
        if T >= t0 + timedelta(minutes=r["auto_close_minutes"]):
            reason = "expired"
        # 2 distribution platform
        elif o["platform"] in shop["distribution_platforms"]:
            reason = "distribution_platform"
        # 3 opted out
        elif opted_out(cid, customers, suppressions, T):
            reason = "opted_out"
        # 4 paid another order on the same local date or later
        elif any(is_paid(p, T) and (local_date(p["created_at"], tz) == local_date(t0, tz) or as_utc(p["created_at"]) > t0)
                 for p in same_customer):
            reason = "paid_other"
        # 5 a later unpaid order (not on a distribution platform)
        elif any(is_unpaid(p, T) and p["platform"] not in shop["distribution_platforms"]
                 and (as_utc(p["created_at"]), p["order_id"]) > (t0, o["order_id"])
                 for p in same_customer):
            reason = "not_latest"
        # 6 already reminded
        elif any(m["purpose"] == "payment_reminder" and m["order_id"] == o["order_id"] for m in messages):
            reason = "already_reminded"
        # 7 no second-purchase offer
        elif segment == "second" and r["second_purchase_offer"] == "":
            reason = "no_offer"
        # 8 daily cap
        elif sum(1 for m in messages
                 if m["purpose"] == "payment_reminder" and m["status"] != "failed"
                 and m["customer_id"] == cid and m["shop_id"] == o["shop_id"]
                 and local_date(m["created_at"], tz) == local_date(T, tz)) >= r["daily_cap"]:
            reason = "daily_cap"
        # 9 closes before it could be sent
        elif not s < deadline:
            reason = "closes_before_send"
        # 10 unreachable on the segment's channel
        elif not reachable(cid, channel, customers, suppressions, T):
            reason = "unreachable"
        # 11 holdout
        elif hash01("holdout:" + o["order_id"]) < r["holdout_rate"]:
            reason = "holdout"
        # 12 wait
        elif s > T or in_quiet(T, shop):
            reason = "wait"

        if reason is None:
            decision = "remind"
        elif reason == "wait":
            decision = "wait"
        else:
            decision = "skip"
        variant = experiment_variant(o, segment, channel, shop)
        out.append({
            "as_of": T, "shop_id": o["shop_id"], "order_id": o["order_id"], "customer_id": cid,
            "segment": segment, "decision": decision, "reason": reason, "channel": channel,
            "send_at": s, "template": template_for(o, segment, items, products, variants, variant),
            "variant": variant,
        })
    return out


# ------------------------------------------------------------------------------------ §5 visits

TIERS = ["high_value", "bad_review", "neutral_review", "complaint_in_praise", "other"]


def _trigger_time(o: dict, trigger: str):
    col = {"delivered": "delivered_at", "shipped": "shipped_at", "paid": "paid_at"}[trigger]
    return o.get(col)


def _followup_days(o: dict, shop: dict, items: list[dict], products: list[dict]) -> int:
    days = []
    for it in items:
        if it["order_id"] != o["order_id"]:
            continue
        prod = next((p for p in products if p["product_id"] == it["product_id"]), None)
        if prod is not None and prod.get("followup_days") is not None:
            days.append(int(prod["followup_days"]))
    return max(days) if days else shop["visits"]["followup_days"]


def _latest_review(o: dict, reviews: list[dict], T: datetime) -> dict | None:
    mine = [rv for rv in reviews if rv["order_id"] == o["order_id"] and as_utc(rv["created_at"]) <= T]
    if not mine:
        return None
    return max(mine, key=lambda rv: as_utc(rv["created_at"]))


def _tier(o: dict, shop: dict, review: dict | None) -> str:
    v = shop["visits"]
    if money(o["total_amount"]) >= Decimal(str(v["high_value_amount"])):
        return "high_value"
    if review is None:
        return "other"
    rating = int(review["rating"])
    if rating <= 2:
        return "bad_review"
    if rating == 3:
        return "neutral_review"
    text = (review.get("text") or "").lower()
    if any(k.lower() in text for k in v["complaint_keywords"]):
        return "complaint_in_praise"
    return "other"


def visit_due_at(T: datetime, shop: dict) -> datetime:
    tz = shop["timezone"]
    windows = shop["visits"]["windows"]
    if not windows:
        return T
    D = local_date(T, tz)
    spans = []
    for w in windows:
        a, b = w.split("-")
        spans.append((at_local(D, a, tz), at_local(D, b, tz)))
    for start, end in spans:
        if start <= T < end:
            return T
    later = [start for start, _end in spans if start > T]
    if later:
        return min(later)
    firsts = []
    for w in windows:
        a, _b = w.split("-")
        firsts.append(at_local(D + timedelta(days=1), a, tz))
    return min(firsts)


def visit_tasks(T, shops, orders, items, products, customers, suppressions, reviews, messages) -> list[dict]:
    T = as_utc(T)
    customers, suppressions = phones_in_e164(shops, customers, suppressions)
    messages = [m for m in messages if as_utc(m["created_at"]) <= T]
    out = []
    for shop in shops:
        tz = shop["timezone"]
        v = shop["visits"]
        D = local_date(T, tz)
        eligible = []
        for o in orders:
            if o["shop_id"] != shop["shop_id"]:
                continue
            x = _trigger_time(o, v["trigger"])
            if x is None or as_utc(x) > T:
                continue
            N = _followup_days(o, shop, items, products)
            due = local_date(x, tz) + timedelta(days=N)
            if not (due <= D < due + timedelta(days=v["grace_days"])):
                continue
            if is_refunded(o, T):
                continue
            if opted_out(o["customer_id"], customers, suppressions, T):
                continue
            if any(m["purpose"] == "followup" and m["order_id"] == o["order_id"] for m in messages):
                continue
            review = _latest_review(o, reviews, T)
            eligible.append((o, _tier(o, shop, review), review))

        def sort_key(entry):
            o, tier, review = entry
            amount = money(o["total_amount"])
            t = TIERS.index(tier)
            if tier == "high_value":
                k = (-amount,)
            elif tier == "bad_review":
                k = (int(review["rating"]), -amount)
            elif tier in ("neutral_review", "complaint_in_praise"):
                k = (-amount,)
            else:
                k = (hash01("visit:" + o["order_id"] + ":" + D.isoformat()),)
            return (t, k, o["order_id"])

        eligible.sort(key=sort_key)
        due_at = visit_due_at(T, shop)
        given = sum(1 for m in messages
                    if m["shop_id"] == shop["shop_id"] and m["purpose"] == "followup" and m["channel"] == "call"
                    and m["status"] != "failed" and local_date(m["created_at"], tz) == D)
        for rank, (o, tier, _review) in enumerate(eligible, start=1):
            cid = o["customer_id"]
            if reachable(cid, "call", customers, suppressions, T) and given < v["manual_capacity"]:
                channel = "call"
                given += 1
            elif v["auto_channel"] != "none" and reachable(cid, v["auto_channel"], customers, suppressions, T):
                channel = v["auto_channel"]
            else:
                channel = None
            out.append({
                "as_of": T, "shop_id": shop["shop_id"], "order_id": o["order_id"], "customer_id": cid,
                "tier": tier, "rank": rank, "channel": channel, "due_at": due_at,
            })
    return out


# -------------------------------------------------------------------------------- §2/§6 segments

def customer_segments(T, orders, customers) -> list[dict]:
    T = as_utc(T)
    keys: dict[tuple[str, str], int | None] = {}
    for c in customers:
        keys[(c["shop_id"], c["customer_id"])] = c.get("member_level")
    good = [o for o in orders if is_paid(o, T) and not is_refunded(o, T)]
    for o in good:
        key = (o["shop_id"], o["customer_id"])
        if key not in keys:
            c = _customer(customers, o["customer_id"])
            keys[key] = c.get("member_level") if c else None
    out = []
    for (shop_id, cid), level in keys.items():
        mine = [o for o in good if o["shop_id"] == shop_id and o["customer_id"] == cid]
        n = len(mine)
        out.append({
            "as_of": T, "shop_id": shop_id, "customer_id": cid, "paid_orders": n,
            "lifetime_value": sum((money(o["total_amount"]) for o in mine), Decimal("0.00")).quantize(CENT),
            "last_paid_at": max((as_utc(o["paid_at"]) for o in mine), default=None),
            "member_level": level, "segment": segment_of_count(n),
        })
    return out
