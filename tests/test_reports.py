"""marts.feedback_summary and marts.reminder_effect (CONTRACT §8) on given rows, written by the plan."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest

from planning import MIN, configure, local, message, stage
from transforms.plan import plan

T = local("2026-11-25 20:00")          # a Wednesday evening in Shanghai


@pytest.fixture
def shop(con):
    configure(con, reminders={"holdout_rate": 0.0})
    stage(con, "customers", {"customer_id": "c1"})
    return con


def outcome(con, order_id, recorded_at, *, reached=True, quality="good", logistics="good", packaging="n/a",
            service="good", suggestion=None, gift=False, compensation="none"):
    con.execute("INSERT INTO ops.visit_outcomes (order_id, reached, quality, logistics, packaging, service, suggestion, "
                "gift, compensation, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [order_id, reached, quality, logistics, packaging, service, suggestion, gift, compensation, recorded_at])


def summary(con):
    rows = con.execute("SELECT period, period_start, visits_planned, reached, quality_issues, logistics_issues, "
                       "packaging_issues, service_issues, gifts, compensations, suggestions "
                       "FROM marts.feedback_summary ORDER BY period, period_start").fetchall()
    return {(r[0], r[1]): r[2:] for r in rows}


def test_feedback_summary_by_day_and_week(shop):
    for o in ("a", "b", "c"):
        stage(shop, "orders", {"order_id": o, "created_at": local("2026-11-01 10:00")})
    # visit tasks planned: a and b on Monday (a twice), c on Wednesday
    for order_id, at in (("a", local("2026-11-23 11:00")), ("a", local("2026-11-23 16:00")),
                         ("b", local("2026-11-23 11:00")), ("c", local("2026-11-25 11:00"))):
        shop.execute("INSERT INTO marts.visit_tasks (as_of, shop_id, order_id, customer_id, tier, rank, channel, due_at) "
                     "VALUES (?, 's1', ?, 'c1', 'other', 1, 'call', ?)", [at, order_id, at])
    outcome(shop, "a", local("2026-11-23 11:30"), reached=False)
    outcome(shop, "a", local("2026-11-23 16:30"), quality="issue", packaging="issue", suggestion="box too thin",
            gift=True)
    outcome(shop, "b", local("2026-11-23 12:00"), logistics="issue", compensation="coupon", suggestion="  ")
    outcome(shop, "c", local("2026-11-25 11:15"), service="issue")
    outcome(shop, "c", T + MIN, quality="issue")                 # after T: not yet
    plan(shop, T)
    got = summary(shop)
    monday, wednesday, week = date(2026, 11, 23), date(2026, 11, 25), date(2026, 11, 23)
    #                              planned reached quality logistics packaging service gifts comp sugg
    assert got[("day", monday)] == (2, 2, 1, 1, 1, 0, 1, 1, 1)
    assert got[("day", wednesday)] == (1, 1, 0, 0, 0, 1, 0, 0, 0)
    assert got[("week", week)] == (3, 3, 1, 1, 1, 1, 1, 1, 1)
    assert len(got) == 3


def test_reminder_effect_reminded_against_held_out(shop):
    stage(shop, "customers", {"customer_id": "c2"}, {"customer_id": "c3"})
    day = local("2026-11-24 10:00")
    stage(shop, "orders",
          {"order_id": "won", "created_at": day, "paid_at": day + 60 * MIN, "total_amount": Decimal("120.50")},
          {"order_id": "late", "created_at": day, "paid_at": day + 1500 * MIN, "total_amount": Decimal("80")},
          {"order_id": "lost", "created_at": day, "closed_at": day + 1440 * MIN},
          {"order_id": "ctl_paid", "customer_id": "c2", "created_at": day, "paid_at": day + 30 * MIN},
          {"order_id": "ctl_lost", "customer_id": "c3", "created_at": day})
    for o in ("won", "late", "lost"):
        message(shop, f"payment_reminder:{o}", "payment_reminder", o, day + 15 * MIN)
    message(shop, "payment_reminder:x", "payment_reminder", "lost", day + 16 * MIN, status="failed")
    for o in ("ctl_paid", "ctl_lost"):
        shop.execute("INSERT INTO marts.reminder_decisions (as_of, shop_id, order_id, customer_id, segment, decision, reason) "
                     "VALUES (?, 's1', ?, 'c2', 'new', 'skip', 'holdout')", [day + 20 * MIN, o])
    plan(shop, T)
    rows = shop.execute("SELECT day, orders_reminded, reminded_paid_before_close, recovered_amount, orders_held_out, "
                        "held_out_paid_before_close FROM marts.reminder_effect").fetchall()
    assert rows == [(date(2026, 11, 24), 3, 1, Decimal("120.50"), 2, 1)]


def test_reports_are_empty_without_visits_or_reminders(shop):
    plan(shop, T)
    assert shop.execute("SELECT count(*) FROM marts.feedback_summary").fetchone()[0] == 0
    assert shop.execute("SELECT count(*) FROM marts.reminder_effect").fetchone()[0] == 0
    assert shop.execute("SELECT count(*) FROM marts.feedback_summary WHERE as_of <> ?", [T]).fetchone()[0] == 0
