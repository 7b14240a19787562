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


# --------------------------------------------------------------------------------------------------
# a backfill of too many T is refused before it plans anything (issue 12.12): `--every 1s` over eleven
# months once wrote 2.9 GB in 40 s


ELEVEN_MONTHS = ("2026-01-01T00:00:00Z", "2026-11-30T00:00:00Z")


def test_too_many_times_are_refused_at_once_with_their_number():
    import time

    from transforms.plan import MAX_BACKFILL_TIMES

    start, end = map(parse_as_of, ELEVEN_MONTHS)
    expected = int((end - start).total_seconds()) + 1                 # every second, both ends included
    began = time.perf_counter()
    with pytest.raises(PlanError) as info:
        backfill_times(start, end, parse_duration("1s"))
    assert time.perf_counter() - began < 0.5, "counted, not listed"
    message = str(info.value)
    assert "\n" not in message and f"{expected:,} times" in message and f"--max-times {expected}" in message
    assert f"{MAX_BACKFILL_TIMES:,}" in message
    # the limit itself: exactly MAX_BACKFILL_TIMES T pass, one more is refused, --max-times raises it
    minute = parse_duration("1m")
    assert len(backfill_times(start, start + (MAX_BACKFILL_TIMES - 1) * minute, minute)) == MAX_BACKFILL_TIMES
    with pytest.raises(PlanError, match=f"{MAX_BACKFILL_TIMES + 1:,} times"):
        backfill_times(start, start + MAX_BACKFILL_TIMES * minute, minute)
    more = backfill_times(start, start + MAX_BACKFILL_TIMES * minute, minute, max_times=MAX_BACKFILL_TIMES + 1)
    assert len(more) == MAX_BACKFILL_TIMES + 1 and more[-1] == start + MAX_BACKFILL_TIMES * minute
    with pytest.raises(PlanError, match="--max-times must be at least 1"):
        backfill_times(start, start, minute, max_times=0)


@pytest.mark.parametrize("text", ["99999999999d", "999999999999999999999h"])
def test_a_duration_too_long_for_a_calendar_is_one_clear_error(text):
    with pytest.raises(PlanError) as info:
        parse_duration(text)
    assert text in str(info.value) and "\n" not in str(info.value)


def _one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


def test_crm_backfill_refuses_too_many_times_and_max_times_raises_the_limit(local_server, tmp_path, config_path):
    from conftest import crm
    from crm.db import connect

    db = tmp_path / "crm.duckdb"
    connect(db).close()
    env = {"PREFECT_API_URL": ""}
    base = ["--db", str(db), "--config", str(config_path), "backfill"]
    line = _one_error_line(crm(*base, "--from", ELEVEN_MONTHS[0], "--to", ELEVEN_MONTHS[1], "--every", "1s",
                               env=env, timeout=60))
    assert "28,771,201 times" in line and "--max-times 28771201" in line and "--every" in line
    four = ["--from", "2026-11-24T01:00:00Z", "--to", "2026-11-24T04:00:00Z", "--every", "1h"]
    line = _one_error_line(crm(*base, *four, "--max-times", "3", env=env, timeout=60))
    assert "4 times" in line and "more than 3" in line and "--max-times 4" in line
    con = connect(db)
    assert con.execute("SELECT count(*) FROM ops.plan_runs").fetchone()[0] == 0, "nothing was planned"
    con.close()
    # the database beside the session's server, so that the flow runs on it
    served = local_server.parent / "max-times.duckdb"
    connect(served).close()
    ran = crm("--db", str(served), "--config", str(config_path), "backfill", *four, "--max-times", "4",
              env={"PREFECT_API_URL": ""})
    assert ran.returncode == 0 and "planned 4 times" in ran.stdout, ran.stderr[-3000:]


def test_the_backfill_flow_enforces_the_limit_itself(local_server, tmp_path, config_path):
    """A deployment run passes its parameters to the flow directly, past the command's check."""
    import os
    import subprocess
    import sys

    import httpx

    from conftest import crm
    from crm.db import connect

    status = crm("--db", str(local_server), "server", "status", env={"PREFECT_API_URL": ""})
    api = status.stdout.split("running at ")[1].split()[0]
    db = tmp_path / "crm.duckdb"
    connect(db).close()
    code = ("from flows.plan import backfill_flow\n"
            f"backfill_flow(start={ELEVEN_MONTHS[0]!r}, end={ELEVEN_MONTHS[1]!r}, every='1s', db={str(db)!r}, "
            f"config={str(config_path)!r})\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    assert run.returncode != 0 and "PlanError" in run.stderr and "28,771,201 times" in run.stderr, run.stderr[-3000:]
    con = connect(db)
    assert con.execute("SELECT count(*) FROM ops.plan_runs").fetchone()[0] == 0, "nothing was planned"
    con.close()
    runs = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"state": {"type": {"any_": ["FAILED"]}}}}).json()
    mine = [r for r in runs if r["parameters"].get("db") == str(db)]
    assert len(mine) == 1 and "28,771,201 times" in mine[0]["state"]["message"]
    tasks = httpx.post(f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [mine[0]["id"]]}}}).json()
    assert tasks == [], "refused before any task ran"
