"""marts.feedback_summary and marts.reminder_effect (docs/rules.md §8) on given rows, written by the plan:
reminder_effect one row per shop and local day, the view of marts.reminder_effect_segments' day totals."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import duckdb
import pytest

from crm.db import connect
from planning import MIN, NY, SH, configure, local, message, stage
from transforms.plan import REPORTS_VERSION, plan

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


def task(con, order_id, as_of, channel="call", shop_id="s1"):
    con.execute("INSERT INTO marts.visit_tasks (as_of, shop_id, order_id, customer_id, tier, rank, channel, due_at) "
                "VALUES (?, ?, ?, 'c1', 'other', 1, ?, ?)", [as_of, shop_id, order_id, channel, as_of])


def holdout(con, order_id, as_of, shop_id="s1"):
    con.execute("INSERT INTO marts.reminder_decisions (as_of, shop_id, order_id, customer_id, segment, decision, reason) "
                "VALUES (?, ?, ?, 'c1', 'new', 'skip', 'holdout')", [as_of, shop_id, order_id])


def rows(con, table, columns, order="1"):
    """{key: (columns...)} of a mart: key = (period, period_start) or day."""
    key = "period, period_start" if table == "feedback_summary" else "day"
    found = con.execute(f"SELECT {key}, {', '.join(columns)} FROM marts.{table} ORDER BY {key}").fetchall()
    width = 2 if table == "feedback_summary" else 1
    return {(r[:width] if width > 1 else r[0]): r[width:] for r in found}


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
    # a's not-reached call and its reached call back are one call made on Monday
    attempted = rows(shop, "feedback_summary", ["calls_planned", "calls_attempted", "reached"])
    assert attempted == {("day", monday): (2, 2, 2), ("day", wednesday): (1, 1, 1), ("week", week): (3, 3, 3)}


def test_feedback_summary_reach_per_channel(shop):
    monday, tuesday = local("2026-11-23 11:00"), local("2026-11-24 11:00")
    for o in ("k1", "k2", "k3"):                   # an outcome's shop is its order's
        stage(shop, "orders", {"order_id": o, "created_at": local("2026-11-01 10:00")})
    # Monday: 3 calls planned (k1 first planned as an SMS, then a call: its latest task counts), 2 SMS, 1 email,
    # 1 without a usable contact
    task(shop, "k1", monday - 60 * MIN, "sms")
    for o in ("k1", "k2", "k3"):
        task(shop, o, monday)
    for o in ("s1o", "s2o"):
        task(shop, o, monday, "sms")
    task(shop, "e1o", monday, "email")
    task(shop, "n1o", monday, None)
    # agents called k1 (not reached) and k2 (reached); k3 not called yet
    outcome(shop, "k1", monday + 30 * MIN, reached=False, quality="n/a", logistics="n/a", service="n/a")
    outcome(shop, "k2", monday + 40 * MIN)
    # follow-ups: s1o sent, s2o failed, e1o sent; on Tuesday s3o planned and sent, k3 called back and reached
    message(shop, "followup:s1o", "followup", "s1o", monday, channel="sms")
    message(shop, "followup:s2o", "followup", "s2o", monday, channel="sms", status="failed")
    message(shop, "followup:e1o", "followup", "e1o", monday, channel="email")
    message(shop, "followup:k1", "followup", "k1", monday, channel="call", status="queued")
    task(shop, "s3o", tuesday, "sms")
    message(shop, "followup:s3o", "followup", "s3o", tuesday, channel="sms")
    message(shop, "followup:late", "followup", "late", T + MIN, channel="sms")          # after T: not yet
    outcome(shop, "k3", tuesday + 10 * MIN)
    plan(shop, T)
    columns = ["visits_planned", "calls_planned", "sms_planned", "email_planned", "no_channel_planned",
               "calls_attempted", "reached", "sms_sent", "email_sent"]
    got = rows(shop, "feedback_summary", columns)
    #                                          planned call sms email none | made reached sms_sent email_sent
    assert got[("day", date(2026, 11, 23))] == (7, 3, 2, 1, 1, 2, 1, 1, 1)
    assert got[("day", date(2026, 11, 24))] == (1, 0, 1, 0, 0, 1, 1, 1, 0)
    assert got[("week", date(2026, 11, 23))] == (8, 3, 3, 1, 1, 3, 2, 2, 1)
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


def test_reminder_effect_counts_reminders_made_on_orders_whose_outcome_is_known(shop):
    day = local("2026-11-24 10:00")
    t = day + 1000 * MIN                           # before the platform's auto-close (1440 min) of day's orders
    stage(shop, "orders",
          {"order_id": "paid", "created_at": day, "paid_at": day + 60 * MIN, "total_amount": Decimal("120.50")},
          {"order_id": "closed", "created_at": day, "closed_at": day + 300 * MIN},
          {"order_id": "expired", "created_at": day - 500 * MIN},               # auto-closed before t
          {"order_id": "open", "created_at": day},
          {"order_id": "called", "created_at": day, "paid_at": day + 90 * MIN, "total_amount": Decimal("30")},
          {"order_id": "queued_call", "created_at": day, "paid_at": day + 90 * MIN},
          {"order_id": "queued_sms", "created_at": day},
          {"order_id": "failed_sms", "created_at": day, "paid_at": day + 90 * MIN},
          {"order_id": "h_paid", "created_at": day, "paid_at": day + 30 * MIN},
          {"order_id": "h_closed", "created_at": day, "closed_at": day + 200 * MIN},
          {"order_id": "h_open", "created_at": day},
          {"order_id": "h_then_reminded", "created_at": day, "paid_at": day + 400 * MIN})
    for o in ("paid", "closed", "expired", "open"):
        message(shop, f"payment_reminder:{o}", "payment_reminder", o, day + 15 * MIN)          # SMS sent
    message(shop, "payment_reminder:called", "payment_reminder", "called", day + 15 * MIN, channel="call", status="done")
    message(shop, "payment_reminder:queued_call", "payment_reminder", "queued_call", day + 15 * MIN, channel="call",
            status="queued")
    message(shop, "payment_reminder:queued_sms", "payment_reminder", "queued_sms", day + 15 * MIN, status="queued")
    message(shop, "payment_reminder:failed_sms", "payment_reminder", "failed_sms", day + 15 * MIN, status="failed")
    for o in ("h_paid", "h_closed", "h_open", "h_then_reminded"):
        holdout(shop, o, day + 20 * MIN)
    # held out first, reminded later (the holdout rate was lowered): not a clean control, counted as reminded
    message(shop, "payment_reminder:h_then_reminded", "payment_reminder", "h_then_reminded", day + 200 * MIN)
    plan(shop, t)
    columns = ["orders_reminded", "orders_reminded_known", "orders_reminded_open", "reminded_paid_before_close",
               "recovered_amount", "reminders_not_made", "orders_held_out", "orders_held_out_known",
               "orders_held_out_open", "held_out_paid_before_close"]
    # reminded: paid, closed, expired, open, called, h_then_reminded; known: all but open; paid: paid, called,
    # h_then_reminded; not made: queued_call, queued_sms, failed_sms; held out: h_paid, h_closed, h_open
    assert rows(shop, "reminder_effect", columns) == {
        date(2026, 11, 24): (6, 5, 1, 3, Decimal("250.50"), 3, 3, 2, 1, 1)}
    # once past the auto-close, the open orders are known and counted
    plan(shop, day + 1440 * MIN)
    assert rows(shop, "reminder_effect", columns) == {
        date(2026, 11, 24): (6, 6, 0, 3, Decimal("250.50"), 3, 3, 3, 0, 1)}


def test_rows_of_a_shop_the_configuration_lacks_are_left_out(shop):
    """A shop removed from the shops file has no time zone: its rows must not give NULL dates (the plan
    used to fail with `NOT NULL constraint failed: feedback_summary.period_start`)."""
    at = local("2026-11-24 11:00")
    for shop_id in ("s1", "gone"):
        task(shop, f"{shop_id}-o", at, shop_id=shop_id)
        message(shop, f"followup:{shop_id}-o", "followup", f"{shop_id}-o", at, shop_id=shop_id)
        message(shop, f"payment_reminder:{shop_id}-r", "payment_reminder", f"{shop_id}-r", at, shop_id=shop_id)
        holdout(shop, f"{shop_id}-h", at, shop_id=shop_id)
        shop.execute("INSERT INTO ops.visit_outcomes (order_id, reached, recorded_at, shop_id) VALUES (?, true, ?, ?)",
                     [f"{shop_id}-o", at + MIN, shop_id])
    # an outcome without a shop whose order is unknown too
    shop.execute("INSERT INTO ops.visit_outcomes (order_id, reached, recorded_at) VALUES ('nobody', true, ?)", [at])
    plan(shop, T)
    assert shop.execute("SELECT DISTINCT shop_id FROM marts.feedback_summary").fetchall() == [("s1",)]
    assert shop.execute("SELECT DISTINCT shop_id FROM marts.reminder_effect").fetchall() == [("s1",)]
    assert rows(shop, "feedback_summary", ["visits_planned", "calls_attempted", "reached", "sms_sent"])[
        ("day", date(2026, 11, 24))] == (1, 1, 1, 1)
    assert rows(shop, "reminder_effect", ["orders_reminded", "orders_held_out"]) == {date(2026, 11, 24): (1, 1)}


def test_a_database_of_the_first_release_gets_the_new_columns(tmp_path):
    """A file whose two marts have only the first release's columns: connecting adds the new ones to
    feedback_summary and replaces the table reminder_effect by the view, and a plan fills them (INSERT BY NAME)."""
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as old:
        old.execute("CREATE SCHEMA marts")
        old.execute("CREATE TABLE marts.feedback_summary (as_of TIMESTAMPTZ NOT NULL, shop_id VARCHAR NOT NULL, "
                    "period VARCHAR NOT NULL, period_start DATE NOT NULL, visits_planned BIGINT NOT NULL, "
                    "reached BIGINT NOT NULL, quality_issues BIGINT NOT NULL, logistics_issues BIGINT NOT NULL, "
                    "packaging_issues BIGINT NOT NULL, service_issues BIGINT NOT NULL, gifts BIGINT NOT NULL, "
                    "compensations BIGINT NOT NULL, suggestions BIGINT NOT NULL)")
        old.execute("CREATE TABLE marts.reminder_effect (as_of TIMESTAMPTZ NOT NULL, shop_id VARCHAR NOT NULL, "
                    "day DATE NOT NULL, orders_reminded BIGINT NOT NULL, reminded_paid_before_close BIGINT NOT NULL, "
                    "recovered_amount DECIMAL(18, 2) NOT NULL, orders_held_out BIGINT NOT NULL, "
                    "held_out_paid_before_close BIGINT NOT NULL)")
    con = connect(path)
    try:
        configure(con)
        at = local("2026-11-24 11:00")
        task(con, "o1", at, "sms")
        message(con, "payment_reminder:r1", "payment_reminder", "r1", at, channel="call", status="queued")
        plan(con, T)
        assert con.execute("SELECT sms_planned, calls_planned FROM marts.feedback_summary "
                           "WHERE period = 'day'").fetchall() == [(1, 0)]
        assert con.execute("SELECT orders_reminded, reminders_not_made FROM marts.reminder_effect").fetchall() == [(0, 1)]
    finally:
        con.close()


def effect_columns(con, table: str) -> list[str]:
    return [r[0] for r in con.execute(f"DESCRIBE marts.{table}").fetchall()]


def test_reminder_effect_is_one_row_per_shop_and_day(con):
    """marts.reminder_effect holds one row per shop and local day whatever the segments and channels: the day
    totals of reminder_effect_segments (segment and channel 'all') with every other column, so summing it counts
    each order once; reminder_effect_segments holds the rows per segment and channel beside them."""
    configure(con, shops=[{"shop_id": "s1", "reminders": {"holdout_rate": 0.0}},
                          {"shop_id": "s2", "timezone": "America/New_York", "reminders": {"holdout_rate": 0.0}}])
    stage(con, "customers", {"customer_id": "c1"})
    day1, day2, ny = local("2026-11-23 10:00"), local("2026-11-24 10:00"), local("2026-11-23 10:00", NY)
    # (shop, order, created, channel, status, segment): every reminder made
    reminded = [("s1", "a1", day1, "sms", "sent", "new"), ("s1", "a2", day1, "sms", "sent", "new"),
                ("s1", "b1", day1, "call", "done", "repeat"), ("s1", "c1", day2, "sms", "sent", "new"),
                ("s1", "c2", day2, "email", "sent", "second"), ("s2", "d1", ny, "email", "sent", "second")]
    for shop_id, order_id, created, channel, status, segment in reminded:
        stage(con, "orders", {"order_id": order_id, "shop_id": shop_id, "created_at": created,
                              "paid_at": created + 60 * MIN})
        message(con, f"payment_reminder:{order_id}", "payment_reminder", order_id, created + 15 * MIN,
                shop_id=shop_id, channel=channel, status=status)
        con.execute("UPDATE ops.messages SET customer_segment = ? WHERE message_id = ?",
                    [segment, f"payment_reminder:{order_id}"])
    stage(con, "orders", {"order_id": "h1", "created_at": day1, "closed_at": day1 + 300 * MIN})
    holdout(con, "h1", day1 + 20 * MIN)                                   # segment 'new', no channel: 'unknown'
    plan(con, T)

    zones = {"s1": SH, "s2": NY}
    days = {(shop_id, created.astimezone(zones[shop_id]).date()) for shop_id, _, created, *_ in reminded}
    groups = {(shop_id, created.astimezone(zones[shop_id]).date(), segment, channel)
              for shop_id, _, created, channel, _, segment in reminded} | {("s1", day1.astimezone(SH).date(), "new", "unknown")}
    per_day = con.execute("SELECT shop_id, day, count(*) FROM marts.reminder_effect GROUP BY ALL").fetchall()
    assert {(s, d) for s, d, _ in per_day} == days and all(n == 1 for *_, n in per_day)
    assert set(con.execute("SELECT shop_id, day, segment, channel FROM marts.reminder_effect_segments "
                           "WHERE segment <> 'all'").fetchall()) == groups
    # the view's columns: the segments table's but segment and channel, among them the lift's
    columns = effect_columns(con, "reminder_effect")
    assert columns == [c for c in effect_columns(con, "reminder_effect_segments") if c not in ("segment", "channel")]
    assert {"orders_reminded", "recovered_amount", "orders_held_out", "lift", "lift_low", "effect_status"} <= set(columns)
    assert con.execute("SELECT * FROM marts.reminder_effect ORDER BY shop_id, day").fetchall() == con.execute(
        f"SELECT {', '.join(columns)} FROM marts.reminder_effect_segments WHERE segment = 'all' AND channel = 'all' "
        "ORDER BY shop_id, day").fetchall()
    # summed over the view, each order counts once
    assert con.execute("SELECT sum(orders_reminded), sum(reminded_paid_before_close), sum(orders_held_out) "
                       "FROM marts.reminder_effect").fetchone() == (len(reminded), len(reminded), 1)


def test_a_database_whose_reminder_effect_is_a_table_gets_the_view(tmp_path):
    """A file from before the view: marts.reminder_effect a table holding the day totals and the rows per segment and
    channel, and the refresh's state as of its T. Connecting replaces the table by the view; the next plan, with
    nothing changed since, rebuilds reminder_effect_segments whole (a new REPORTS_VERSION) and so fills the view."""
    path = tmp_path / "old.duckdb"
    con = connect(path)
    configure(con, reminders={"holdout_rate": 0.0})
    stage(con, "customers", {"customer_id": "c1"})
    day = local("2026-11-24 10:00")
    stage(con, "orders", {"order_id": "won", "created_at": day, "paid_at": day + 60 * MIN},
          {"order_id": "lost", "created_at": day, "closed_at": day + 300 * MIN},
          {"order_id": "ctl", "created_at": day, "paid_at": day + 30 * MIN})
    message(con, "payment_reminder:won", "payment_reminder", "won", day + 15 * MIN)
    message(con, "payment_reminder:lost", "payment_reminder", "lost", day + 15 * MIN, channel="call", status="done")
    holdout(con, "ctl", day + 20 * MIN)
    plan(con, T)
    before = con.execute("SELECT * EXCLUDE (as_of) FROM marts.reminder_effect ORDER BY day").fetchall()
    assert len(before) == 1
    # the file as the previous version left it (every outcome known: an incremental refresh would change nothing)
    con.execute("DROP VIEW marts.reminder_effect")
    con.execute("CREATE TABLE marts.reminder_effect AS SELECT * FROM marts.reminder_effect_segments")
    con.execute("DROP TABLE marts.reminder_effect_segments")
    con.execute("UPDATE ops.report_state SET shops_key = replace(shops_key, ?, 'effect-2')", [REPORTS_VERSION])
    assert con.execute("SELECT shops_key LIKE 'effect-2:%' FROM ops.report_state").fetchone() == (True,)
    con.close()

    con = connect(path)
    try:
        assert con.execute("SELECT table_type FROM information_schema.tables WHERE table_schema = 'marts' "
                           "AND table_name = 'reminder_effect'").fetchone() == ("VIEW",)
        assert con.execute("SELECT count(*) FROM marts.reminder_effect").fetchone()[0] == 0
        configure(con, reminders={"holdout_rate": 0.0})                  # the same shops, as every session does
        assert plan(con, T + MIN).reports == "full"
        assert con.execute("SELECT * EXCLUDE (as_of) FROM marts.reminder_effect ORDER BY day").fetchall() == before
        assert con.execute("SELECT DISTINCT as_of FROM marts.reminder_effect").fetchall() == [(T + MIN,)]
        assert con.execute("SELECT count(*) FROM marts.reminder_effect_segments WHERE segment <> 'all'").fetchone()[0] > 0
    finally:
        con.close()


def test_reports_are_empty_without_visits_or_reminders(shop):
    plan(shop, T)
    assert shop.execute("SELECT count(*) FROM marts.feedback_summary").fetchone()[0] == 0
    assert shop.execute("SELECT count(*) FROM marts.reminder_effect").fetchone()[0] == 0
    assert shop.execute("SELECT count(*) FROM marts.feedback_summary WHERE as_of <> ?", [T]).fetchone()[0] == 0
