"""Visit outcomes: check and record what agents report (CONTRACT §5), one at a time from the page or in
bulk from a call-centre export (``crm visits import FILE.csv``).

An outcome is for an order that has a follow-up visit planned. Reached or not; when reached, each of
quality, logistics, packaging and service is ``good``, ``issue`` or ``n/a``; a free-text suggestion; a
gift (granted or not) and a compensation (``none``, ``coupon``, ``free_shipping``, …). A gift is refused
when it would lift the shop's share of gifts among its reached visits in the local month above
``gift_ratio``; the month's first gift is always allowed. Recording a reached outcome marks the call
task ``done``; a customer not reached keeps the task queued (with a call-back time when given).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import polars as pl

from crm.db import transaction

CATEGORIES = ("quality", "logistics", "packaging", "service")
CATEGORY_VALUES = ("good", "issue", "n/a")
_TRUE, _FALSE = {"true", "yes", "y", "1", "t", "是"}, {"false", "no", "n", "0", "f", "否", ""}
_COMPENSATION = re.compile(r"^[a-z][a-z_]*$")


class OutcomeError(Exception):
    """A file that cannot be read at all: one line for the user."""


@dataclass
class ImportResult:
    saved: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)     # (line in the file, reason)


def _bool(text: str | None) -> bool | None:
    value = (text or "").strip().lower()
    return True if value in _TRUE else False if value in _FALSE else None


def _time(text: str | None) -> datetime | None | str:
    value = (text or "").strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return "bad"
    return parsed.astimezone(timezone.utc) if parsed.tzinfo else "naive"


def check(row: dict) -> tuple[dict | None, str | None]:
    """One outcome's fields: the cleaned record, or the reason it is refused."""
    problems = []
    order_id = (row.get("order_id") or "").strip()
    if not order_id:
        problems.append("missing order_id")
    # reached must be said; a blank gift means no gift
    reached = _bool(row.get("reached")) if (row.get("reached") or "").strip() else None
    if reached is None:
        problems.append(f"reached must be true or false, got {row.get('reached')!r}" if (row.get("reached") or "").strip()
                        else "reached is missing: say true or false")
    values = {}
    for category in CATEGORIES:
        value = (row.get(category) or "").strip().lower() or ("n/a" if reached is False else "")
        if value not in CATEGORY_VALUES:
            problems.append(f"{category} must be good, issue or n/a, got {row.get(category)!r}")
        values[category] = value
    gift = _bool(row.get("gift"))
    if gift is None:
        problems.append(f"gift must be true or false, got {row.get('gift')!r}")
    compensation = (row.get("compensation") or "").strip().lower() or "none"
    if not _COMPENSATION.match(compensation):
        problems.append(f"compensation must be a word like none, coupon, free_shipping, got {row.get('compensation')!r}")
    if reached is False and (gift or compensation != "none"):
        problems.append("a gift or compensation needs a reached customer")
    times = {}
    for name in ("recorded_at", "callback_at"):
        value = _time(row.get(name))
        if value in ("bad", "naive"):
            problems.append(f"{name} must be ISO 8601 with an offset, got {row.get(name)!r}")
        times[name] = value if isinstance(value, datetime) else None
    if problems:
        return None, "; ".join(problems)
    suggestion = (row.get("suggestion") or "").strip() or None
    return {"order_id": order_id, "reached": reached, **values, "suggestion": suggestion, "gift": bool(gift),
            "compensation": compensation, "recorded_at": times["recorded_at"], "callback_at": times["callback_at"],
            "agent": (row.get("agent") or "").strip() or None}, None


def _month_counts(con, shop_id: str, when: datetime) -> tuple[int, int]:
    """(reached visits, gifts) of the shop in the local month of `when`."""
    return con.execute(
        "SELECT count(*), count(*) FILTER (WHERE gift) FROM ops.visit_outcomes "
        "WHERE shop_id = ? AND reached AND date_trunc('month', crm_shop_local_date(shop_id, recorded_at)) "
        "= date_trunc('month', crm_shop_local_date(?, ?::TIMESTAMPTZ))",
        [shop_id, shop_id, when],
    ).fetchone()


def gift_refusal(con, shop_id: str, when: datetime, gift_ratio: float) -> str | None:
    """Why a gift recorded now would be refused, or None. The month's first gift is always allowed."""
    reached, gifts = _month_counts(con, shop_id, when)
    if gifts == 0:
        return None
    share = (gifts + 1) / (reached + 1)
    if share > gift_ratio:
        return (f"gift refused: it would make {gifts + 1} gifts in {reached + 1} reached visits this month "
                f"({share:.0%}), above the shop's gift_ratio of {gift_ratio:.0%}")
    return None


def record(con: duckdb.DuckDBPyConnection, settings, outcome: dict, now: datetime) -> str | None:
    """Check one cleaned outcome against the plan and the gift rule and save it; the reason if refused."""
    task = con.execute("SELECT shop_id FROM marts.visit_tasks WHERE order_id = ? LIMIT 1", [outcome["order_id"]]).fetchone()
    if task is None:
        return f"order {outcome['order_id']!r} has no follow-up visit planned"
    shop_id = task[0]
    done = con.execute("SELECT recorded_at FROM ops.visit_outcomes WHERE order_id = ? AND reached "
                       "ORDER BY recorded_at LIMIT 1", [outcome["order_id"]]).fetchone()
    if done is not None:
        return f"order {outcome['order_id']!r} was already recorded as reached at {done[0]:%Y-%m-%d %H:%M %Z}"
    when = outcome["recorded_at"] or now
    if outcome["gift"]:
        refusal = gift_refusal(con, shop_id, when, settings.shop(shop_id).visits.gift_ratio)
        if refusal:
            return refusal
    with transaction(con):
        con.execute(
            "INSERT INTO ops.visit_outcomes (order_id, reached, quality, logistics, packaging, service, suggestion, "
            "gift, compensation, recorded_at, shop_id, callback_at, agent, message_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [outcome["order_id"], outcome["reached"], outcome["quality"], outcome["logistics"], outcome["packaging"],
             outcome["service"], outcome["suggestion"], outcome["gift"], outcome["compensation"], when, shop_id,
             outcome["callback_at"], outcome["agent"], f"followup:{outcome['order_id']}"],
        )
        if outcome["reached"]:
            con.execute("UPDATE ops.messages SET status = 'done' WHERE message_id = ? AND channel = 'call'",
                        [f"followup:{outcome['order_id']}"])
    return None


def import_file(con: duckdb.DuckDBPyConnection, settings, path: str | Path, now: datetime | None = None) -> ImportResult:
    """A call-centre export: every good row saved, every bad one reported with its line number."""
    path = Path(path)
    if not path.is_file():
        raise OutcomeError(f"{path}: file not found")
    try:
        frame = pl.read_csv(path, infer_schema=False, encoding="utf8")
    except (pl.exceptions.PolarsError, UnicodeDecodeError) as e:
        raise OutcomeError(f"{path}: not a readable CSV file: {str(e).splitlines()[0]}") from None
    if "order_id" not in frame.columns or "reached" not in frame.columns:
        raise OutcomeError(f"{path}: needs at least the columns order_id and reached (has {', '.join(frame.columns)})")
    now = now or datetime.now(timezone.utc)
    result = ImportResult()
    # rows in file order: each gift is judged against the month as it stands, this file's earlier rows included
    for line, row in enumerate(frame.iter_rows(named=True), start=2):
        outcome, problem = check(row)
        if problem is None:
            problem = record(con, settings, outcome, now)
        if problem:
            result.errors.append((line, problem))
        else:
            result.saved += 1
    return result
