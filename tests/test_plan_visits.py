"""Follow-up visits (docs/rules.md §5): eligibility, tiers, ranking, call capacity, channels, due time.

Shop s1 is Asia/Shanghai: trigger 'delivered', follow-up after 7 days, grace 3 days, windows
11:00-12:00 and 16:00-18:00, high value 500. T is 2026-11-24 11:30 local (D = 2026-11-24), so an
order delivered on 11-17, 11-16 or 11-15 is due.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from planning import MIN, configure, local, message, stage, visits

T = local("2026-11-24 11:30")


def delivered(order_id: str, day: str = "2026-11-17 15:00", **kw) -> dict:
    return {"order_id": order_id, "created_at": local("2026-11-10 10:00"), "paid_at": local("2026-11-10 10:05"),
            "shipped_at": local("2026-11-11 10:00"), "delivered_at": local(day), **kw}


def by_order(rows):
    return {r["order_id"]: r for r in rows}


@pytest.fixture
def shop(con):
    configure(con)
    stage(con, "customers", {"customer_id": "c1"})
    return con


# ------------------------------------------------------------------------------------- eligibility

def test_due_window_with_grace(shop):
    stage(shop, "orders", delivered("d6", "2026-11-18 09:00"), delivered("d7", "2026-11-17 23:59"),
          delivered("d9", "2026-11-15 00:00"), delivered("d10", "2026-11-14 23:59"),
          delivered("late", "2026-11-24 11:31"), {"order_id": "undelivered", "created_at": local("2026-11-10 10:00")})
    assert set(by_order(visits(shop, T))) == {"d7", "d9"}


def test_local_date_of_the_trigger_counts(shop):
    # 2026-11-17 23:30 in Shanghai is 15:30Z the same day; 2026-11-18 00:30 local is still 11-17 in UTC
    stage(shop, "orders", delivered("late_evening", "2026-11-17 23:30"), delivered("after_midnight", "2026-11-18 00:30"))
    assert set(by_order(visits(shop, T))) == {"late_evening"}


def test_product_followup_days_the_largest_wins(shop):
    stage(shop, "products", {"product_id": "tea", "followup_days": 3}, {"product_id": "pot", "followup_days": 14},
          {"product_id": "cup"})
    stage(shop, "order_items", {"order_id": "a", "line_no": 1, "product_id": "tea"},
          {"order_id": "b", "line_no": 1, "product_id": "tea"}, {"order_id": "b", "line_no": 2, "product_id": "pot"},
          {"order_id": "c", "line_no": 1, "product_id": "cup"})
    stage(shop, "orders", delivered("a", "2026-11-21 10:00"), delivered("b", "2026-11-10 10:00"),
          delivered("c", "2026-11-17 10:00"))
    assert set(by_order(visits(shop, T))) == {"a", "b", "c"}


@pytest.mark.parametrize("trigger,field", [("shipped", "shipped_at"), ("paid", "paid_at")])
def test_other_triggers(con, trigger, field):
    configure(con, visits={"trigger": trigger})
    stage(con, "customers", {"customer_id": "c1"})
    stage(con, "orders", {**delivered("o1", "2026-11-24 09:00"), field: local("2026-11-17 10:00")})
    assert [r["order_id"] for r in visits(con, T)] == ["o1"]


def test_refunded_opted_out_and_already_followed_up_are_not_eligible(shop):
    stage(shop, "customers", {"customer_id": "quiet", "opt_out": True}, {"customer_id": "c2"}, {"customer_id": "c3"})
    stage(shop, "orders", delivered("refunded", refunded_at=T - MIN), delivered("refund_later", refunded_at=T + MIN),
          delivered("opted", customer_id="quiet"), delivered("done", customer_id="c2"),
          delivered("failed_before", customer_id="c3"))
    message(shop, "f1", "followup", "done", local("2026-11-24 09:00"), customer_id="c2")
    message(shop, "f2", "followup", "failed_before", local("2026-11-24 09:00"), customer_id="c3", status="failed")
    # a failed follow-up counts too (CONTRACT v3): a plan never re-creates it
    assert set(by_order(visits(shop, T))) == {"refund_later"}


def test_all_suppression_is_an_opt_out_for_visits(shop):
    stage(shop, "suppressions", {"email": "c@example.com", "channel": "all", "created_at": T - MIN})
    stage(shop, "orders", delivered("o1"))
    assert visits(shop, T) == []


# ------------------------------------------------------------------------------------------ tiers

def test_each_tier_from_the_latest_review(shop):
    stage(shop, "orders", delivered("hv", total_amount=Decimal("500.00")), delivered("bad"), delivered("neutral"),
          delivered("hidden"), delivered("happy"), delivered("silent"), delivered("changed"))
    stage(shop, "reviews",
          {"order_id": "hv", "created_at": local("2026-11-18 10:00"), "rating": 1},
          {"order_id": "bad", "created_at": local("2026-11-18 10:00"), "rating": 2},
          {"order_id": "neutral", "created_at": local("2026-11-18 10:00"), "rating": 3},
          {"order_id": "hidden", "created_at": local("2026-11-18 10:00"), "rating": 5, "text": "Great tea, but the BOX was Damaged"},
          {"order_id": "happy", "created_at": local("2026-11-18 10:00"), "rating": 5, "text": "很好"},
          # an earlier bad review replaced by a good one, and a later one after T that does not count yet
          {"order_id": "changed", "created_at": local("2026-11-18 10:00"), "rating": 1},
          {"order_id": "changed", "created_at": local("2026-11-19 10:00"), "rating": 4, "text": "物流有点慢"},
          {"order_id": "changed", "created_at": T + MIN, "rating": 1})
    tiers = {r["order_id"]: r["tier"] for r in visits(shop, T)}
    assert tiers == {"hv": "high_value", "bad": "bad_review", "neutral": "neutral_review", "hidden": "complaint_in_praise",
                     "changed": "complaint_in_praise", "happy": "other", "silent": "other"}


# ---------------------------------------------------------------------------------------- ranking

def test_ranking_inside_each_tier(shop):
    amounts = {"hv1": "900", "hv2": "600", "b1a": "50", "b1b": "80", "b2": "300", "n1": "20", "n2": "70",
               "c1": "10", "c2": "40"}
    stage(shop, "orders", *[delivered(o, total_amount=Decimal(a)) for o, a in amounts.items()],
          *[delivered(o) for o in ("x1", "x2", "x3", "x4")])
    ratings = {"b1a": 1, "b1b": 1, "b2": 2, "n1": 3, "n2": 3, "c1": 4, "c2": 5}
    stage(shop, "reviews", *[{"order_id": o, "created_at": local("2026-11-18 10:00"), "rating": r,
                              "text": "slow" if r >= 4 else None} for o, r in ratings.items()])
    ranked = [r["order_id"] for r in visits(shop, T)]
    import hashlib
    hash01 = lambda x: int(hashlib.md5(x.encode()).hexdigest()[:8], 16) / 2**32  # noqa: E731
    others = sorted(["x1", "x2", "x3", "x4"], key=lambda o: (hash01(f"visit:{o}:2026-11-24"), o))
    assert ranked == ["hv1", "hv2", "b1b", "b1a", "b2", "n2", "n1", "c2", "c1", *others]
    assert [r["rank"] for r in visits(shop, T)] == list(range(1, 14))


def test_equal_amounts_tie_by_order_id(shop):
    stage(shop, "orders", delivered("b", total_amount=Decimal("600")), delivered("a", total_amount=Decimal("600")))
    assert [r["order_id"] for r in visits(shop, T)] == ["a", "b"]


# ------------------------------------------------------------------------------- capacity, channel

def test_call_capacity_boundary(con):
    configure(con, visits={"manual_capacity": 2})
    stage(con, "customers", {"customer_id": "c1"})
    stage(con, "orders", *[delivered(f"o{i}", total_amount=Decimal(1000 - i)) for i in range(4)])
    assert [(r["order_id"], r["channel"]) for r in visits(con, T)] == [
        ("o0", "call"), ("o1", "call"), ("o2", "sms"), ("o3", "sms")]


def test_calls_already_made_today_use_up_capacity(con):
    configure(con, visits={"manual_capacity": 2})
    stage(con, "customers", {"customer_id": "c1"})
    stage(con, "orders", *[delivered(f"o{i}", total_amount=Decimal(1000 - i)) for i in range(3)])
    message(con, "f1", "followup", "earlier", local("2026-11-24 09:00"), channel="call", status="done")
    message(con, "f2", "followup", "yesterday", local("2026-11-23 17:00"), channel="call")
    message(con, "f3", "followup", "failed", local("2026-11-24 09:00"), channel="call", status="failed")
    message(con, "f4", "followup", "sms", local("2026-11-24 09:00"), channel="sms")
    assert [r["channel"] for r in visits(con, T)] == ["call", "sms", "sms"]


def test_missing_or_suppressed_contact(con):
    configure(con, visits={"manual_capacity": 10})
    stage(con, "customers", {"customer_id": "nophone", "phone": None},
          {"customer_id": "nocall", "phone": "13800000002"}, {"customer_id": "nothing", "phone": "13800000003"},
          {"customer_id": "ok", "phone": "13800000004"})
    stage(con, "suppressions", {"customer_id": "nocall", "channel": "call", "created_at": T - MIN},
          {"phone": "13800000003", "channel": "call", "created_at": T - MIN},
          {"phone": "13800000003", "channel": "sms", "created_at": T - MIN},
          {"customer_id": "ok", "channel": "call", "created_at": T + MIN})     # after T: does not count
    stage(con, "orders", delivered("a", customer_id="nophone"), delivered("b", customer_id="nocall"),
          delivered("c", customer_id="nothing"), delivered("d", customer_id="ok"))
    got = {r["order_id"]: r["channel"] for r in visits(con, T)}
    assert got == {"a": None, "b": "sms", "c": None, "d": "call"}


def test_auto_channel_email_and_none(con):
    configure(con, shops=[{"shop_id": "s1", "visits": {"manual_capacity": 0, "auto_channel": "email"}},
                          {"shop_id": "s2", "timezone": "Asia/Shanghai", "visits": {"manual_capacity": 0, "auto_channel": "none"}}])
    stage(con, "customers", {"customer_id": "c1"}, {"customer_id": "c2", "email": None}, {"customer_id": "c3", "shop_id": "s2"})
    stage(con, "orders", delivered("a"), delivered("b", customer_id="c2"), delivered("c", customer_id="c3", shop_id="s2"))
    assert {r["order_id"]: r["channel"] for r in visits(con, T)} == {"a": "email", "b": None, "c": None}


# ----------------------------------------------------------------------------------------- due_at

@pytest.mark.parametrize("now,due", [
    ("2026-11-24 11:30", "2026-11-24 11:30"),   # inside 11:00-12:00: T itself
    ("2026-11-24 11:00", "2026-11-24 11:00"),   # a window's start is inside
    ("2026-11-24 12:00", "2026-11-24 16:00"),   # its end is not: the next window
    ("2026-11-24 09:15", "2026-11-24 11:00"),
    ("2026-11-24 18:30", "2026-11-25 11:00"),   # none left today: tomorrow's first
])
def test_due_at(shop, now, due):
    stage(shop, "orders", delivered("o1", "2026-11-16 10:00"))
    [task] = visits(shop, local(now))
    assert task["due_at"] == local(due)
