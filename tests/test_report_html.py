"""The feedback report (issue 6, docs/rules.md §8): numbers on given rows, the inline chart (an empty day too),
sending once to the team over a real SMTP server through the real command, one-line errors, and its
weekly deployment."""

from __future__ import annotations

import email
import email.policy
import html as htmllib
import re
from datetime import date
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
import yaml

from conftest import crm
from crm.config import parse_settings
from crm.db import connect, sync_shops
from dispatching import start_smtp
from planning import MIN, NY, local, message, stage
from transforms.report import ReportError, gather, period_bounds, render, select_shops

REPO = Path(__file__).resolve().parent.parent
DAY = date(2026, 11, 24)                 # a Tuesday
T = local("2026-11-25 09:00")            # the next morning in Shanghai
SUGGESTION = '<script>alert("x")</script> box & tape were torn'


def settings_for(**shop):
    return parse_settings({"shops": [{"shop_id": "s1", "name": "Pet <Shop>", "locale": "en", **shop},
                                     {"shop_id": "s2", "timezone": "America/New_York", "locale": "en"}]})


def outcome(con, order_id, recorded_at, *, reached=True, quality="good", logistics="good", packaging="good",
            service="good", suggestion=None, gift=False, compensation="none"):
    con.execute("INSERT INTO ops.visit_outcomes (order_id, reached, quality, logistics, packaging, service, suggestion, "
                "gift, compensation, recorded_at, shop_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 's1')",
                [order_id, reached, quality, logistics, packaging, service, suggestion, gift, compensation, recorded_at])


def task(con, order_id, as_of, channel="call"):
    con.execute("INSERT INTO marts.visit_tasks (as_of, shop_id, order_id, customer_id, tier, rank, channel, due_at) "
                "VALUES (?, 's1', ?, 'c1', 'other', 1, ?, ?)", [as_of, order_id, channel, as_of])


def holdout(con, order_id, as_of):
    con.execute("INSERT INTO marts.reminder_decisions (as_of, shop_id, order_id, customer_id, segment, decision, reason) "
                "VALUES (?, 's1', ?, 'c1', 'new', 'skip', 'holdout')", [as_of, order_id])


def build(db: Path, settings, *, rows: bool = True) -> None:
    """A database written the way the pipeline writes it, then closed (the report opens it read-only)."""
    con = connect(db)
    sync_shops(con, settings)
    if rows:
        # visits planned on Tuesday: a, b, c, e (a twice); d on Monday
        for order_id, at in (("a", "2026-11-24 11:00"), ("a", "2026-11-24 16:00"), ("b", "2026-11-24 11:00"),
                             ("c", "2026-11-24 11:00"), ("e", "2026-11-24 11:00"), ("d", "2026-11-23 11:00")):
            task(con, order_id, local(at))
        outcome(con, "a", local("2026-11-24 11:10"), reached=False, quality="n/a", logistics="n/a", packaging="n/a",
                service="n/a")
        outcome(con, "a", local("2026-11-24 16:30"), quality="issue", packaging="issue", suggestion=SUGGESTION, gift=True)
        outcome(con, "b", local("2026-11-24 12:00"), logistics="issue", compensation="coupon")
        # c changed its mind: only the latest reached outcome of the day counts
        outcome(con, "c", local("2026-11-24 11:30"), service="issue", compensation="free_shipping", suggestion="old words")
        outcome(con, "c", local("2026-11-24 17:00"), suggestion="包装很好，下次再来")
        outcome(con, "d", local("2026-11-23 15:00"), quality="issue", suggestion="Monday's words")
        outcome(con, "e", local("2026-11-24 11:20"), reached=False, quality="n/a", logistics="n/a", packaging="n/a",
                service="n/a")
        outcome(con, "b", T + MIN, service="issue", suggestion="after T")          # not yet at T
        # payment reminders on Tuesday (T is before the platform auto-closes Tuesday 10:00's orders): r1 paid
        # before close, r2 closed unpaid, r3 still open (not counted yet), r6 called by an agent and paid; r4's
        # call nobody made and r5's failed SMS are no reminders. Held out: h1 paid, h2 auto-closed unpaid, h3
        # still open. r0 on Monday, paid.
        created = local("2026-11-24 10:00")
        stage(con, "orders",
              {"order_id": "r1", "created_at": created, "paid_at": created + 60 * MIN, "total_amount": Decimal("120.50")},
              {"order_id": "r2", "created_at": created, "closed_at": created + 600 * MIN},
              {"order_id": "r3", "created_at": created},
              {"order_id": "r4", "created_at": created, "paid_at": created + 60 * MIN},
              {"order_id": "r5", "created_at": created},
              {"order_id": "r6", "created_at": created, "paid_at": created + 90 * MIN, "total_amount": Decimal("30")},
              {"order_id": "h1", "created_at": created, "paid_at": created + 30 * MIN, "total_amount": Decimal("80")},
              {"order_id": "h2", "created_at": created - 90 * MIN}, {"order_id": "h3", "created_at": created},
              {"order_id": "r0", "created_at": created - 1440 * MIN, "paid_at": created - 1380 * MIN,
               "total_amount": Decimal("50")})
        for order_id in ("r1", "r2", "r3"):
            message(con, f"payment_reminder:{order_id}", "payment_reminder", order_id, created + 15 * MIN)
        message(con, "payment_reminder:r4", "payment_reminder", "r4", created + 15 * MIN, channel="call", status="queued")
        message(con, "payment_reminder:r5", "payment_reminder", "r5", created + 15 * MIN, status="failed")
        message(con, "payment_reminder:r6", "payment_reminder", "r6", created + 15 * MIN, channel="call", status="done")
        message(con, "payment_reminder:r0", "payment_reminder", "r0", created - 1425 * MIN)
        for order_id in ("h1", "h2", "h3"):
            holdout(con, order_id, created + 20 * MIN)
    con.close()


def values(page: str) -> dict[str, list[str]]:
    """What the page shows under each data-key (unescaped)."""
    found: dict[str, list[str]] = {}
    for key, text in re.findall(r'data-key="([^"]+)">([^<]*)<', page):
        found.setdefault(key, []).append(htmllib.unescape(text))
    return found


def one(page: str) -> dict[str, str]:
    return {k: v[0] for k, v in values(page).items() if len(v) == 1}


def svg_texts(page: str) -> list[str]:
    # the issue-rate chart: the one SVG that is not an effect error bar (those are drawn only with enough data)
    [svg] = [s for s in re.findall(r"<svg.*?</svg>", page, re.S) if 'class="error-bar"' not in s[:60]]
    return [htmllib.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]


def assert_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    for external in ("<script", "<link", "src=", "@import", "url(", "<img"):
        assert external not in page, external


@pytest.fixture
def db(tmp_path):
    return tmp_path / "crm.duckdb"


def test_day_report_numbers_chart_and_escaped_suggestions(db):
    settings = settings_for()
    build(db, settings)
    report = gather(db, settings, "s1", "day", "2026-11-24", T)
    page = render(report)
    got = one(page)
    assert (got["visits_planned"], got["reached"], got["reach_rate"]) == ("4", "3", "75.0%")
    assert [got[f"{c}_issues"] for c in ("quality", "logistics", "packaging", "service")] == ["1", "1", "1", "0"]
    assert [got[f"{c}_rate"] for c in ("quality", "logistics", "packaging", "service")] == ["33.3%", "33.3%", "33.3%", "0.0%"]
    assert (got["gifts"], got["compensations"], got["compensation_coupon"]) == ("1", "1", "1")
    assert "compensation_free_shipping" not in got, "c's earlier outcome was replaced by its latest"
    assert got["suggestions"] == "2"
    assert values(page)["suggestion"] == [SUGGESTION, "包装很好，下次再来"]        # in the order they were recorded
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    assert "Pet &lt;Shop&gt;" in page and "<Shop>" not in page
    for word in ("old words", "Monday's words", "after T"):
        assert word not in page
    # reach: of the calls agents made (a, b, c, e), not of every visit planned
    assert (got["call_planned"], got["call_made"], got["sms_planned"], got["none_planned"]) == ("4", "4", "0", "0")
    assert got["calls_sentence"] == "Calls: 3 reached of 4 made by agents; 4 planned."
    # the reminders' effect on Tuesday, counted on orders whose outcome is known at T: r1, r6 of r1, r2, r6
    # paid (r3 still open; r4, r5 not reminded); h1 of h1, h2 (h3 still open)
    assert (got["reminded_known"], got["reminded_paid"], got["reminded_paid_rate"], got["reminded_open"]) == (
        "3", "2", "66.7%", "1")
    assert (got["held_out_known"], got["held_out_paid"], got["held_out_paid_rate"], got["held_out_open"]) == (
        "2", "1", "50.0%", "1")
    assert (got["paid_rate_difference"], got["recovered_amount"]) == ("+16.7", "150.50")
    assert got["effect_counted"] == ("Counted: orders whose outcome is known at 2026-11-25 09:00 — paid, closed, "
                                     "or past the platform's auto-close.")
    assert got["effect_open"] == "Not counted yet (still open): 1 reminded and 1 held-out orders."
    assert got["effect_not_made"].startswith("Not counted as reminded: 2 reminders not made")
    assert (report.reminded, report.reminders_not_made) == (4, 2), "r1, r2, r3, r6 reminded; r4, r5 not made"
    # the chart: inline SVG, one bar label per category with its rate
    texts = svg_texts(page)
    assert {"Quality", "Logistics", "Packaging", "Service", "Issue rate among reached customers"} <= set(texts)
    assert texts.count("33%") == 3
    assert "No reached visits in this period" not in page
    assert_self_contained(page)
    assert report.message_id == "feedback_summary:s1:day:2026-11-24"


def test_week_report_sums_its_days(db):
    settings = settings_for()
    build(db, settings)
    report = gather(db, settings, "s1", "week", "2026-11-27", T)          # a Friday: the week of Monday the 23rd
    assert (report.start, report.end) == (date(2026, 11, 23), date(2026, 11, 29))
    got = one(render(report))
    assert (got["visits_planned"], got["reached"]) == ("5", "4")
    assert (got["quality_issues"], got["quality_rate"]) == ("2", "50.0%")
    assert got["suggestions"] == "3"
    assert (got["reminded_known"], got["reminded_paid"], got["recovered_amount"]) == ("4", "3", "200.50")
    assert (got["reminded_open"], got["held_out_known"], got["held_out_open"]) == ("1", "2", "1")
    assert report.message_id == "feedback_summary:s1:week:2026-11-23"


def test_an_empty_day_renders_with_its_chart_and_a_note(db):
    settings = settings_for(locale="zh-CN", name="萌宠小铺")
    build(db, settings, rows=False)
    report = gather(db, settings, "s1", "day", "2026-11-20", T)
    page = render(report)
    got = one(page)
    assert (got["visits_planned"], got["reached"], got["reach_rate"]) == ("0", "0", "–")
    assert all(got[f"{c}_rate"] == "–" for c in ("quality", "logistics", "packaging", "service"))
    assert (got["reminded_paid_rate"], got["held_out_paid_rate"], got["recovered_amount"]) == ("–", "–", "0.00")
    assert got["no_reached"] == "本期没有联系上的回访"
    assert got["calls_sentence"] == "电话：坐席已拨打 0 通，接通 0 通；计划 0 通。"
    assert got["effect_counted"].startswith("计入：截至 2026-11-25 09:00 结果已确定的订单")
    assert got["effect_open"] == "暂不计入（仍未结束）：已催付 0 单，对照组 0 单。"
    texts = svg_texts(page)
    assert {"质量", "物流", "包装", "服务", "本期没有联系上的回访"} <= set(texts), "the chart is drawn, labelled, with the note"
    assert 'lang="zh-CN"' in page and "萌宠小铺" in page
    assert_self_contained(page)


def test_reach_rate_is_of_the_calls_agents_made(db):
    """2 of 3 calls made reached, 500 SMS follow-ups planned: the report says 66.7 % of calls made, not
    2 / 504 visits planned (0.4 %)."""
    settings = settings_for()
    build(db, settings, rows=False)
    con = connect(db)
    at = local("2026-11-24 11:00")
    stage(con, "orders", *({"order_id": o, "created_at": local("2026-11-20 10:00")} for o in ("k1", "k2", "k3", "k4")))
    for o in ("k1", "k2", "k3", "k4"):              # 4 calls planned, k4 not made yet
        task(con, o, at)
    con.execute("INSERT INTO marts.visit_tasks (as_of, shop_id, order_id, customer_id, tier, rank, channel, due_at) "
                "SELECT ?, 's1', 'sms' || i, 'c1', 'other', 5 + i, 'sms', ? FROM range(500) AS r(i)", [at, at])
    con.execute("INSERT INTO ops.messages (message_id, purpose, shop_id, order_id, customer_id, channel, status, "
                "attempts, created_at) SELECT 'followup:sms' || i, 'followup', 's1', 'sms' || i, 'c1', 'sms', "
                "CASE WHEN i < 480 THEN 'sent' ELSE 'failed' END, 1, ? FROM range(500) AS r(i)", [at])
    outcome(con, "k1", at + 10 * MIN)
    outcome(con, "k2", at + 20 * MIN, reached=False, quality="n/a", logistics="n/a", packaging="n/a", service="n/a")
    outcome(con, "k3", at + 30 * MIN)
    con.close()
    report = gather(db, settings, "s1", "day", "2026-11-24", T)
    page = render(report)
    got = one(page)
    assert (got["visits_planned"], got["reached"], got["reach_rate"]) == ("504", "2", "66.7%")
    assert got["calls_sentence"] == "Calls: 2 reached of 3 made by agents; 4 planned."
    assert (got["call_planned"], got["call_made"]) == ("4", "3")
    assert (got["sms_planned"], got["sms_made"], got["email_planned"], got["email_made"]) == ("500", "480", "0", "0")
    assert "0.4%" not in page


def test_delivery_per_channel_and_opt_outs_received(db):
    # the receipts' story (docs/rules.md §7): delivered / sent per channel, and the opt-out replies of the period
    settings = settings_for()
    build(db, settings)
    con = connect(db)
    # r1 delivered, r2 undelivered, r3 no receipt yet (all SMS sent on Tuesday); a follow-up e-mail delivered
    con.execute("UPDATE ops.messages SET delivery = 'delivered' WHERE message_id = 'payment_reminder:r1'")
    con.execute("UPDATE ops.messages SET delivery = 'undelivered' WHERE message_id = 'payment_reminder:r2'")
    message(con, "followup:a", "followup", "a", local("2026-11-24 11:05"), channel="email")
    con.execute("UPDATE ops.messages SET delivery = 'delivered' WHERE message_id = 'followup:a'")
    stage(con, "customers", {"customer_id": "c1", "phone": "+8613800000001"},
          {"customer_id": "c2", "phone": "+8613800000002"})
    for reply_id, sender, at, opt_out in (("x1", "+8613800000001", "2026-11-24 12:00", True),
                                          ("x2", "+8613800000001", "2026-11-24 13:00", True),   # the same customer
                                          ("x3", "+8613800000002", "2026-11-24 14:00", False),  # a question
                                          ("x4", "+8613800000002", "2026-11-23 14:00", True),   # Monday's
                                          ("x5", "+8613999999999", "2026-11-24 14:00", True)):  # not this shop's
        con.execute("INSERT INTO ops.replies (reply_id, sender, text, replied_at, received_at, opt_out, gateway) "
                    "VALUES (?, ?, 'TD', ?, ?, ?, 'kannel')", [reply_id, sender, local(at), local(at), opt_out])
    con.close()
    report = gather(db, settings, "s1", "day", "2026-11-24", T)
    got = one(render(report))
    assert (got["sent_sms"], got["delivered_sms"], got["undelivered_sms"], got["delivery_rate_sms"]) == (
        "3", "1", "1", "33.3%"), "r1, r2, r3 sent on Tuesday (r0 on Monday; r5 failed; r4, r6 calls)"
    assert (got["sent_email"], got["delivered_email"], got["delivery_rate_email"]) == ("1", "1", "100.0%")
    assert report.opt_outs == 1 and "1" in got["opt_outs"]


def test_default_period_is_the_last_complete_one_in_the_shops_zone(db):
    settings = settings_for()
    build(db, settings, rows=False)
    sunday_night_in_new_york = local("2026-11-23 11:00")     # Monday 11:00 in Shanghai = Sunday 22:00 in New York
    assert gather(db, settings, "s1", "day", None, sunday_night_in_new_york).start == date(2026, 11, 22)
    assert gather(db, settings, "s2", "day", None, sunday_night_in_new_york).start == date(2026, 11, 21)
    s1_week = gather(db, settings, "s1", "week", None, sunday_night_in_new_york)
    assert (s1_week.start, s1_week.end) == (date(2026, 11, 16), date(2026, 11, 22))
    assert gather(db, settings, "s2", "week", None, sunday_night_in_new_york).start == date(2026, 11, 9)


@pytest.mark.parametrize("args, words", [
    (("nope", "day", "2026-11-24"), ["shop 'nope' is not configured", "s1, s2"]),
    (("s1", "month", "2026-11-24"), ["period 'month' must be day or week"]),
    (("s1", "day", "2026-02-30"), ["date '2026-02-30' is not a date"]),
])
def test_bad_requests_are_one_line(db, args, words):
    settings = settings_for()
    build(db, settings, rows=False)
    with pytest.raises(ReportError) as e:
        gather(db, settings, *args, T)
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words)


def test_missing_database_is_one_line(tmp_path):
    with pytest.raises(ReportError, match="no database yet") as e:
        gather(tmp_path / "none.duckdb", settings_for(), "s1", "day", "2026-11-24", T)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "none.duckdb").exists()


# --------------------------------------------------------------------------------------------------
# the command


def config_file(path: Path, smtp_port: int = 9, team_email: str = "team@petshop.example") -> Path:
    path.write_text(f"""
[[shops]]
shop_id = "s1"
name = "Pet <Shop>"
locale = "en"
team_email = "{team_email}"
[[shops]]
shop_id = "s2"
timezone = "America/New_York"
[gateway]
timeout_seconds = 2
max_attempts = 2
backoff_seconds = 0.01
[smtp]
host = "127.0.0.1"
port = {smtp_port}
""", encoding="utf-8")
    return path


def one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("args, words", [
    (["--shop", "nope"], ["shop 'nope' is not configured"]),
    (["--shop", "s1", "--date", "2026-13-01"], ["date '2026-13-01' is not a date"]),
    (["--shop", "s1", "--period", "month"], ["period 'month' must be day or week"]),
    (["--shop", "s2", "--send"], ["shop 's2'", "team_email is empty"]),
    (["--out", "all.html"], ["a file holds one shop's report"]),
])
def test_command_errors_are_one_line_exit_2(tmp_path, args, words):
    config = config_file(tmp_path / "shops.toml")
    db = tmp_path / "crm.duckdb"
    build(db, parse_settings({"shops": [{"shop_id": "s1"}]}), rows=False)
    line = one_error_line(crm("--db", str(db), "--config", str(config), "report", *args))
    assert all(w in line for w in words), line


def test_send_emails_the_report_once(local_server, tmp_path):
    controller, box = start_smtp()
    try:
        config = config_file(tmp_path / "shops.toml", controller.port)
        db = local_server.parent / "report.duckdb"          # beside the server's state file
        from crm.config import load_settings
        build(db, load_settings(config))
        out = tmp_path / "out" / "tuesday.html"
        args = ["--db", str(db), "--config", str(config), "report", "--shop", "s1", "--period", "day",
                "--date", "2026-11-24", "--as-of", T.isoformat(), "--out", str(out), "--send"]
        env = {"PREFECT_API_URL": ""}
        first = crm(*args, env=env)
        assert first.returncode == 0, first.stderr + first.stdout
        assert f"written to {out}" in first.stdout and "sent to t***@p***" in first.stdout
        assert "team@petshop.example" not in first.stdout + first.stderr, "no full address in the output"
        page = out.read_text(encoding="utf-8")
        assert one(page)["reached"] == "3" and "<svg" in page

        [envelope] = box.messages
        assert envelope.rcpt_tos == ["team@petshop.example"]
        mail = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert mail.get_content_type() == "multipart/alternative"
        assert mail["Subject"] == "Feedback summary · Pet <Shop> · 2026-11-24"
        plain, rich = mail.get_body(("plain",)), mail.get_body(("html",))
        # mail clients drop inline SVG: the mailed page shows the chart as a PNG part it references by cid
        mailed = rich.get_content().replace("\r\n", "\n").strip()
        assert "<svg" not in mailed and mailed.split('<img src="cid:')[0] == page.strip().split("<svg")[0]
        [png] = [p for p in mail.walk() if p.get_content_type() == "image/png"]
        assert png.get_content()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'cid:{png["Content-ID"].strip("<>")}' in mailed
        text = plain.get_content()
        assert "Customers reached" in text and SUGGESTION in text and "<svg" not in text

        con = duckdb.connect(str(db), read_only=True)
        row = con.execute("SELECT purpose, channel, shop_id, recipient, status, attempts, created_at, sent_at IS NOT NULL, "
                          "body = ? FROM ops.messages WHERE message_id = 'feedback_summary:s1:day:2026-11-24'",
                          [page]).fetchall()
        con.close()
        assert row == [("feedback_summary", "email", "s1", "team@petshop.example", "sent", 1, T, True, True)]

        again = crm(*args, env=env)
        assert again.returncode == 0, again.stderr
        assert "already sent" in again.stdout
        assert len(box.messages) == 1, "the same report is not sent twice"
    finally:
        controller.stop()


def test_a_send_to_an_smtp_server_that_is_down_stays_queued_and_the_next_try_sends_it(db, tmp_path):
    from crm.config import load_settings
    from gateway import closed_port_url
    from transforms.report import send_report

    down = int(closed_port_url().rsplit(":", 1)[1].split("/")[0])
    settings = load_settings(config_file(tmp_path / "down.toml", down))
    build(db, settings, rows=False)
    report = gather(db, settings, "s1", "day", "2026-11-24", T)
    first = send_report(db, settings, report, render(report))
    assert (first.status, first.attempts, first.recipient) == ("queued", 2, "t***@p***")
    controller, box = start_smtp()
    try:
        settings = load_settings(config_file(tmp_path / "up.toml", controller.port))
        again = send_report(db, settings, report, render(report))
        assert again.status == "sent" and len(box.messages) == 1
    finally:
        controller.stop()
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT status, attempts FROM ops.messages").fetchall() == [("sent", 3)]
    con.close()


def test_a_report_a_stopped_try_left_in_doubt_is_not_mailed_again(db, tmp_path):
    # at most once (docs/rules.md §7): the try died while handing the report to SMTP
    from crm.config import load_settings
    from crm.journal import SendJournal
    from transforms.report import send_report

    controller, box = start_smtp()
    try:
        settings = load_settings(config_file(tmp_path / "up.toml", controller.port))
        build(db, settings, rows=False)
        report = gather(db, settings, "s1", "day", "2026-11-24", T)
        con = connect(db)
        message(con, report.message_id, "feedback_summary", None, T, customer_id=None, channel="email", status="queued")
        con.close()
        journal = SendJournal(db)
        journal.begin(report.message_id)
        journal.close()
        r = send_report(db, settings, report, render(report))
        assert r.status == "failed" and r.error.startswith("in doubt") and box.messages == []
        con = duckdb.connect(str(db), read_only=True)
        assert con.execute("SELECT status FROM ops.messages").fetchall() == [("failed",)]
        con.close()
    finally:
        controller.stop()


# --------------------------------------------------------------------------------------------------
# the deployment


def test_weekly_deployment_runs_monday_morning_in_each_shops_zone():
    deployments = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    report = deployments["feedback-report"]
    assert report["entrypoint"] == "flows/report.py:report_flow"
    assert report["parameters"]["send"] is True and report["parameters"]["period"] == "week"
    zones = [s["timezone"] for s in report["schedules"]]
    assert sorted(zones) == sorted(s["timezone"] for s in deployments["plan-daily"]["schedules"])
    for schedule in report["schedules"]:
        minute, hour, _dom, _month, weekday = schedule["cron"].split()
        assert (minute, hour, weekday) == ("0", "8", "1"), "Monday 08:00"
        assert schedule["parameters"] == {"timezone": schedule["timezone"]}, "each run reports on its zone's shops"
    settings = settings_for()
    assert [s.shop_id for s in select_shops(settings, None, "America/New_York")] == ["s2"]
    assert [s.shop_id for s in select_shops(settings, None, None)] == ["s1", "s2"]
    # Monday 08:00 in New York: its last week is complete
    assert period_bounds("week", None, local("2026-11-30 08:00", tz=NY), "America/New_York") == (
        date(2026, 11, 23), date(2026, 11, 29))
