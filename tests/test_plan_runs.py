"""Plans as runs: re-planning T replaces its rows, many T coexist, backfill = plan, a backfill resumes,
customer_segments holds the newest T."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from planning import MIN, configure, local, stage
from transforms.plan import PlanError, backfill_times, parse_as_of, parse_duration, plan, planned_times

T = local("2026-11-24 10:30")
COLS = "as_of, shop_id, order_id, customer_id, segment, decision, reason, channel, send_at, template"
VCOLS = "as_of, shop_id, order_id, customer_id, tier, rank, channel, due_at"


@pytest.fixture
def busy(con):
    """A few customers with a mix of unpaid, paid, delivered orders and reviews."""
    configure(con, reminders={"second_purchase_offer": "10% off"})
    stage(con, "customers", *[{"customer_id": f"c{i}", "phone": f"1380000000{i}"} for i in range(5)],
          {"customer_id": "lonely"})
    for i in range(5):
        stage(con, "orders",
              {"order_id": f"p{i}", "customer_id": f"c{i}", "created_at": local("2026-11-10 10:00") + i * MIN,
               "paid_at": local("2026-11-10 10:05"), "delivered_at": local("2026-11-17 10:00"),
               "total_amount": Decimal(100 * i)},
              {"order_id": f"u{i}", "customer_id": f"c{i}", "created_at": T - (10 + 37 * i) * MIN})
    stage(con, "reviews", {"order_id": "p1", "created_at": local("2026-11-18 10:00"), "rating": 2})
    return con


def _rows(con, table, cols, as_of):
    return con.execute(f"SELECT {cols} FROM marts.{table} WHERE as_of = ? ORDER BY order_id", [as_of]).fetchall()


def test_replanning_the_same_t_gives_identical_rows(busy):
    plan(busy, T)
    first = _rows(busy, "reminder_decisions", COLS, T), _rows(busy, "visit_tasks", VCOLS, T)
    plan(busy, T)
    assert (_rows(busy, "reminder_decisions", COLS, T), _rows(busy, "visit_tasks", VCOLS, T)) == first
    assert busy.execute("SELECT count(*) FROM marts.reminder_decisions").fetchone()[0] == len(first[0]) == 5


def test_many_t_coexist(busy):
    plan(busy, T)
    plan(busy, T + timedelta(hours=1))
    counts = busy.execute("SELECT as_of, count(*) FROM marts.reminder_decisions GROUP BY 1 ORDER BY 1").fetchall()
    assert [c[1] for c in counts] == [5, 5] and counts[0][0] == T


def test_backfill_rows_at_t_equal_a_plan_at_t(busy, db_path, config_path):
    times = backfill_times(T - timedelta(hours=3), T, parse_duration("1h"))
    for t in times:
        plan(busy, t, segments=False, backfill_key="k")
    backfilled = {t: (_rows(busy, "reminder_decisions", COLS, t), _rows(busy, "visit_tasks", VCOLS, t)) for t in times}
    for t in times:
        plan(busy, t)
        assert (_rows(busy, "reminder_decisions", COLS, t), _rows(busy, "visit_tasks", VCOLS, t)) == backfilled[t]


def test_a_backfill_knows_what_it_already_planned(busy):
    times = backfill_times(T - timedelta(hours=2), T, parse_duration("30m"))
    assert len(times) == 5
    for t in times[:2]:
        plan(busy, t, backfill_key="key-a")
    plan(busy, times[3])                               # planned, but not by this backfill
    assert planned_times(busy, "key-a") == set(times[:2])


def test_customer_segments_every_customer_as_of_the_newest_t(busy):
    stage(busy, "orders", {"order_id": "r", "customer_id": "c3", "created_at": local("2026-11-11 10:00"),
                           "paid_at": local("2026-11-11 10:01"), "refunded_at": local("2026-11-12 10:00")},
          {"order_id": "p3b", "customer_id": "c3", "created_at": local("2026-11-12 10:00"),
           "paid_at": local("2026-11-12 10:01"), "total_amount": Decimal("50")})
    plan(busy, T)
    seg = {r[0]: r[1:] for r in busy.execute(
        "SELECT customer_id, paid_orders, lifetime_value, segment, as_of FROM marts.customer_segments").fetchall()}
    assert seg["lonely"][:3] == (0, Decimal("0.00"), "new")
    assert seg["c1"][:3] == (1, Decimal("100.00"), "second")
    assert seg["c3"][:3] == (2, Decimal("350.00"), "repeat"), "the refunded order does not count"
    assert len(seg) == 6 and {s[3] for s in seg.values()} == {T}
    plan(busy, T - timedelta(days=20))                 # an older T does not replace the newest
    assert busy.execute("SELECT DISTINCT as_of FROM marts.customer_segments").fetchall() == [(T,)]
    plan(busy, T + MIN)
    assert busy.execute("SELECT DISTINCT as_of FROM marts.customer_segments").fetchall() == [(T + MIN,)]


def test_a_failed_plan_leaves_the_marts_as_they_were(busy, monkeypatch):
    plan(busy, T)
    before = _rows(busy, "reminder_decisions", COLS, T)
    import transforms.plan as p

    original = p.build

    def build_then_break(con, as_of, variants=None):
        original(con, as_of, variants)
        con.execute("CREATE OR REPLACE TEMP TABLE mart_visit_tasks AS SELECT 1 AS nonsense")

    monkeypatch.setattr(p, "build", build_then_break)
    with pytest.raises(Exception, match="nonsense"):
        plan(busy, T + MIN)
    assert _rows(busy, "reminder_decisions", COLS, T) == before
    assert _rows(busy, "reminder_decisions", COLS, T + MIN) == [], "the half-written T was rolled back"


@pytest.mark.parametrize("text", ["2026-11-24T10:30", "tuesday", "2026-13-01T00:00Z"])
def test_bad_t_is_one_clear_error(text):
    with pytest.raises(PlanError) as info:
        parse_as_of(text)
    assert text in str(info.value) and "\n" not in str(info.value)


def test_durations():
    assert parse_duration("1h") == timedelta(hours=1)
    assert parse_duration("2h30m") == timedelta(hours=2, minutes=30)
    assert parse_duration("15min") == timedelta(minutes=15) and parse_duration("1d") == timedelta(days=1)
    for bad in ("", "h", "1 fortnight", "0m"):
        with pytest.raises(PlanError):
            parse_duration(bad)


def _segments(con):
    return con.execute("SELECT * FROM marts.customer_segments ORDER BY shop_id, customer_id").fetchall()


def _full_rebuild(con, as_of):
    con.execute("DELETE FROM ops.segment_state")
    plan(con, as_of)
    return _segments(con)


def test_incremental_segments_equal_a_full_rebuild(busy, landing):
    from transforms.ingest import load

    plan(busy, T)
    # between T and T+2h: an order is paid, another refunded, and a customer's level changes by ingest
    stage(busy, "orders", {"order_id": "late", "customer_id": "lonely", "created_at": T,
                           "paid_at": T + 30 * MIN, "total_amount": Decimal("70")})
    busy.execute("UPDATE staging.orders SET refunded_at = ? WHERE order_id = 'p2'", [T + 60 * MIN])
    landing.csv("customers", "c.csv", [{"customer_id": "c4", "shop_id": "s1", "name": "n", "member_level": 5,
                                        "registered_at": "2026-01-01T00:00:00Z", "updated_at": "2026-11-24T00:00:00Z"}])
    # an ingest moves order p3 from customer c3 to c0
    landing.csv("orders", "o.csv", [{"order_id": "p3", "shop_id": "s1", "customer_id": "c0",
                                     "platform": "taobao", "created_at": "2026-11-10T10:03:00+08:00",
                                     "paid_at": "2026-11-10T10:05:00+08:00", "total_amount": "300",
                                     "updated_at": "2026-11-24T01:00:00+08:00"}])
    load(busy, landing.root)
    later = T + timedelta(hours=2)
    plan(busy, later)
    incremental = _segments(busy)
    assert {r[2]: (r[3], r[7]) for r in incremental}["lonely"] == (1, "second")
    assert {r[2]: r[3] for r in incremental}["c2"] == 0, "p2 was refunded"
    assert {r[2]: r[6] for r in incremental}["c4"] == 5
    assert {r[2]: r[3] for r in incremental}["c3"] == 0 and {r[2]: r[3] for r in incremental}["c0"] == 2
    assert incremental == _full_rebuild(busy, later)
    assert {r[0] for r in incremental} == {later}
