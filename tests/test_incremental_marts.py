"""The §8 marts refreshed incrementally equal the marts rebuilt whole (docs/rules.md §8, issue 13.4).

One history, built through the real parts: the demo generator's drops ingested in three goes, plans at many T
(a later T, older T of a backfill, the same T again after a dispatch), dispatches to a real gateway and SMTP
server (some messages failing, then retried), call outcomes imported, a payment-reminder call marked made,
and T passing the platform's auto-close. After every plan that refreshed the marts, every row of
marts.feedback_summary, marts.reminder_effect_segments and marts.reminder_variants must equal the whole models
(marts/feedback_summary.sql, marts/reminder_effect_segments.sql, marts/reminder_variants.sql) at that T, and the
view marts.reminder_effect the whole model's day totals; at the end the state the incremental refresh keeps must
equal the state a rebuild makes."""

from __future__ import annotations

import csv
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from crm.config import load_settings
from crm.db import connect, sql_text, sync_shops, transaction
from crm.demo import generate
from dispatching import start_smtp
from gateway import Gateway
from transforms.dispatch import dispatch
from transforms.ingest import load
from transforms.outcomes import import_file
from transforms.plan import REPORT_STATE, plan, refresh_reports

ANCHOR = datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc)
KEYS = {"feedback_summary": "shop_id, period, period_start",
        "reminder_effect_segments": "shop_id, day, segment, channel",
        "reminder_variants": "shop_id, day, segment, variant"}
# the view marts.reminder_effect: one row per shop and day, reminder_effect_segments' day totals
DAY_TOTALS = "segment = 'all' AND channel = 'all'"
STATE_KEYS = {"ops.feedback_latest": "shop_id, period, period_start", "ops.feedback_tasks": "shop_id, period, period_start, order_id", "ops.effect_reminders": "shop_id, order_id",
              "ops.effect_holdouts": "shop_id, order_id", "ops.effect_rows": "grp, shop_id, order_id"}


def marts(con) -> dict[str, list[tuple]]:
    out = {}
    for name, key in KEYS.items():
        cols = ", ".join(r[0] for r in con.execute(f"DESCRIBE marts.{name}").fetchall())
        out[name] = con.execute(f"SELECT {cols} FROM marts.{name} ORDER BY {key}").fetchall()
    cols = ", ".join(r[0] for r in con.execute("DESCRIBE marts.reminder_effect").fetchall())
    out["reminder_effect"] = con.execute(f"SELECT {cols} FROM marts.reminder_effect ORDER BY shop_id, day").fetchall()
    return out


def whole(con, at: datetime) -> dict[str, list[tuple]]:
    """The marts as the whole models compute them at T, without writing anything."""
    out = {}
    for name, key in KEYS.items():
        cols = ", ".join(r[0] for r in con.execute(f"DESCRIBE marts.{name}").fetchall())
        out[name] = con.execute(f"SELECT {cols} FROM ({sql_text(f'marts/{name}.sql')}) ORDER BY {key}",
                                {"as_of": at}).fetchall()
    cols = ", ".join(r[0] for r in con.execute("DESCRIBE marts.reminder_effect").fetchall())
    out["reminder_effect"] = con.execute(
        f"SELECT {cols} FROM ({sql_text('marts/reminder_effect_segments.sql')}) WHERE {DAY_TOTALS} "
        "ORDER BY shop_id, day", {"as_of": at}).fetchall()
    return out


def state(con) -> dict[str, list[tuple]]:
    return {t: con.execute(f"SELECT * FROM {t} ORDER BY {STATE_KEYS[t]}").fetchall() for t in REPORT_STATE}


@pytest.fixture
def servers():
    gw = Gateway().start()
    smtp, box = start_smtp()
    yield gw, smtp
    gw.stop()
    smtp.stop()


def _drops(source: Path, target: Path, until: str) -> Path:
    """The demo's drop files stamped at or before `until` (their names start with the stamp), copied."""
    for f in sorted(source.rglob("*")):
        if f.is_file() and f.name[:15] <= until:
            dest = target / f.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest)
    return target


def _outcomes_csv(path: Path, orders: list[str], at: datetime) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["order_id", "reached", "quality", "logistics", "packaging", "service", "suggestion", "gift",
                    "compensation", "recorded_at", "callback_at"])
        for i, order_id in enumerate(orders):
            reached = i % 3 != 2
            w.writerow([order_id, "true" if reached else "false", "issue" if i % 2 else "good", "good", "n/a",
                        "issue" if i % 5 == 0 else "good", "faster please" if i % 4 == 0 else "", "false",
                        "coupon" if i % 6 == 0 else "none", (at + timedelta(minutes=i)).isoformat(),
                        "" if reached else (at + timedelta(hours=3)).isoformat()])
    return path


def _correction(con, root: Path, fixes: dict[str, str]) -> Path:
    """An orders drop (CSV) correcting orders as they stand: 'paid' a minute after placed, or 'amount' + 10."""
    cols = ["order_id", "shop_id", "customer_id", "platform", "created_at", "paid_at", "shipped_at", "delivered_at",
            "closed_at", "refunded_at", "total_amount", "currency", "receiver_city", "updated_at"]
    rows = con.execute(f"SELECT {', '.join(cols)} FROM staging.orders WHERE order_id IN (SELECT unnest(?)) "
                       "ORDER BY order_id", [list(fixes)]).fetchall()
    (root / "orders").mkdir(parents=True)
    with open(root / "orders" / "2026-11-24T0000_fix.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for row in rows:
            r = dict(zip(cols, row))
            if fixes[r["order_id"]] == "paid":
                r.update(paid_at=r["created_at"] + timedelta(minutes=1), closed_at=None)
            else:
                r["total_amount"] += 10
            r["updated_at"] += timedelta(hours=1)
            w.writerow(["" if v is None else v.isoformat() if isinstance(v, datetime) else v for v in r.values()])
    return root


def test_incremental_refreshes_equal_a_rebuild_at_every_t(tmp_path, servers, monkeypatch):
    gw, smtp = servers
    demo = generate(tmp_path / "demo", orders=2500, anchor=ANCHOR)
    config = tmp_path / "shops.toml"
    text = demo.config_path.read_text(encoding="utf-8")
    text = text.replace('webhook_url = "http://127.0.0.1:8080/send"', f'webhook_url = "{gw.url}"\nbackoff_seconds = 0.01')
    text = text.replace("port = 1025", f"port = {smtp.port}")
    # a control group, so that reminder_effect has held-out orders too, and template experiments (reminder_variants)
    experiment = '\n\n[shops.experiments]\npayment_reminder.repeat = {{ variants = ["repeat", "repeat.gift"]{} }}'
    config.write_text(text.replace('strategy = "cutoff"', 'strategy = "cutoff"\nholdout_rate = 0.2'
                                   + experiment.format(", weights = [0.3, 0.7]"))
                          .replace('strategy = "delay"', 'strategy = "delay"\nholdout_rate = 0.2' + experiment.format("")),
                      encoding="utf-8")
    settings = load_settings(config)
    con = connect(tmp_path / "crm.duckdb")
    sync_shops(con, settings)
    checked = []

    def planned(at: datetime, **kw) -> str | None:
        how = plan(con, at, **kw).reports
        if how:
            assert marts(con) == whole(con, at), f"the marts differ from a rebuild at {at} ({how})"
            checked.append(how)
        return how

    def checked_plan(c, at, **kw):                 # a dispatch's own plan, checked before it writes messages
        result = plan(c, at, **kw)
        if result.reports:
            assert marts(c) == whole(c, at), f"the marts differ from a rebuild at {at} (a dispatch's plan)"
            checked.append(result.reports)
        return result

    monkeypatch.setattr("transforms.dispatch.plan", checked_plan)

    landing = demo.landing_dir
    load(con, _drops(landing, tmp_path / "in1", "2026-11-21T1400"))
    t1 = datetime(2026, 11, 21, 15, 0, tzinfo=timezone.utc)
    assert planned(t1) == "full"
    # three of its SMS reminders fail for good (retried below); calls wait for the agents
    failing = [r[0] for r in con.execute(
        "SELECT 'payment_reminder:' || order_id FROM marts.reminder_decisions WHERE as_of = ? AND decision = 'remind' "
        "AND channel = 'sms' ORDER BY order_id LIMIT 3", [t1]).fetchall()]
    gw.script.update({m: [("status", 400, "number not in service")] for m in failing})
    dispatch(con, settings, t1)                # its own plan at t1, then the messages (counted by the next plan)
    assert planned(t1 + timedelta(minutes=30)) == "incremental"
    dispatch(con, settings, t1 + timedelta(minutes=30))
    calls = [r[0] for r in con.execute("SELECT order_id FROM ops.messages WHERE purpose = 'followup' AND channel = 'call' "
                                       "ORDER BY order_id").fetchall()]
    assert calls, "the demo gives the agents follow-up calls"
    import_file(con, settings, _outcomes_csv(tmp_path / "calls.csv", calls[:12], t1 + timedelta(minutes=40)),
                t1 + timedelta(hours=1))
    # a plan at a T before those outcomes: they count from a later T on
    assert planned(t1 + timedelta(minutes=35)) == "incremental"
    # the page's "Called": a payment-reminder call made
    con.execute("UPDATE ops.messages SET status = 'done', sent_at = now(), attempts = attempts + 1 "
                "WHERE message_id = (SELECT min(message_id) FROM ops.messages WHERE purpose = 'payment_reminder' "
                "AND channel = 'call' AND status = 'queued')")
    dispatch(con, settings, t1 + timedelta(hours=1), retry_failed=True)
    assert con.execute("SELECT count(*) FROM ops.messages WHERE message_id IN (SELECT unnest(?)) AND status = 'sent'",
                       [failing]).fetchone()[0] == len(failing) > 0, "the retried reminders went out"
    # the dispatched T planned again: orders with a follow-up now leave its visit tasks
    assert planned(t1 + timedelta(hours=1)) == "incremental"
    # a backfill of older T (no refresh: older than the marts), then the same T again: its rows replaced
    for at in (t1 - timedelta(hours=2), t1 - timedelta(hours=1)):
        assert planned(at, segments=False) is None
    assert planned(t1) is None
    # the next drop: orders paid, closed, updated
    load(con, _drops(landing, tmp_path / "in2", "2026-11-22T1400"))
    t2 = datetime(2026, 11, 22, 15, 0, tzinfo=timezone.utc)
    assert planned(t2) == "incremental"
    dispatch(con, settings, t2 + timedelta(hours=2))
    assert planned(t2 + timedelta(hours=2)) == "incremental"
    # a correction drop: a held-out order was paid a minute after it was placed (every T that held it out is
    # planned again, as a backfill --force would), and a reminded, paid order's amount is corrected
    held, held_at = con.execute(
        "SELECT order_id, list(DISTINCT as_of ORDER BY as_of) FROM marts.reminder_decisions WHERE reason = 'holdout' "
        "GROUP BY order_id ORDER BY len(list(DISTINCT as_of)) DESC, order_id LIMIT 1").fetchone()
    won = con.execute("SELECT m.order_id FROM ops.messages AS m JOIN staging.orders AS o USING (order_id) "
                      "WHERE m.purpose = 'payment_reminder' AND m.status = 'sent' AND o.paid_at IS NOT NULL "
                      "ORDER BY m.order_id LIMIT 1").fetchone()[0]
    load(con, _correction(con, tmp_path / "fix", {held: "paid", won: "amount"}))
    for at in held_at:
        plan(con, at, segments=False)
    assert planned(t2 + timedelta(hours=3)) == "incremental"
    load(con, _drops(landing, tmp_path / "in3", "9999"))
    dispatch(con, settings, ANCHOR + timedelta(hours=1))
    # later T: the platform's auto-close passes, open outcomes become known
    for at in (ANCHOR + timedelta(hours=2), ANCHOR + timedelta(hours=30)):
        assert planned(at) == "incremental"
    # once every outcome of those days is known: a backfill of a T on an earlier local day (an order held out
    # then too counts on that day, no longer on the later one), and calls of days ago recorded only now
    assert planned(t1 - timedelta(hours=12), segments=False) is None
    late = import_file(con, settings, _outcomes_csv(tmp_path / "late.csv", calls[12:24], t2 + timedelta(hours=5)),
                       ANCHOR + timedelta(hours=30))
    assert late.saved == len(calls[12:24]) > 0, late.errors
    assert planned(ANCHOR + timedelta(days=9)) == "incremental"
    assert checked.count("incremental") >= 10
    got = con.execute("SELECT sum(orders_reminded), sum(orders_held_out), sum(reminders_not_made) "
                      "FROM marts.reminder_effect").fetchone()
    assert all(n > 0 for n in got), f"the history has reminded, held-out and unmade reminders: {got}"
    assert con.execute("SELECT count(DISTINCT variant) FROM marts.reminder_variants").fetchone()[0] == 2
    assert con.execute("SELECT sum(calls_attempted), sum(sms_sent) FROM marts.feedback_summary "
                       "WHERE period = 'day'").fetchone()[0] > 0

    # the state kept incrementally equals the state a rebuild makes, and so do the marts
    last = ANCHOR + timedelta(days=9)
    kept, rows = state(con), marts(con)
    with transaction(con):
        assert refresh_reports(con, last, full=True) == "full"
    assert state(con) == kept and marts(con) == rows
    con.close()
