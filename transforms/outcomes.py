"""Visit outcomes: check and record what agents report (docs/rules.md §5), one at a time from the page or in
bulk from a call-centre export (``crm visits import FILE.csv``).

An outcome is for an order that has a follow-up visit planned. Reached or not; when reached, each of
quality, logistics, packaging and service is ``good``, ``issue`` or ``n/a``; a free-text suggestion; a
gift (granted or not) and a compensation (``none``, ``coupon``, ``free_shipping``, …). A gift is refused
when it would lift the shop's share of gifts among its reached visits in the local month above
``gift_ratio``; the month's first gift is always allowed. Recording a reached outcome marks the call
task ``done``; a customer not reached keeps the task queued (with a call-back time when given).

An outcome's time (``recorded_at``, else the clock of the page or the import) lies between the call's
creation (the follow-up message's ``created_at``, or the visit task's first T when there is no message)
and now: a time outside it would put a gift into a month of its own. An order has one reached outcome and
any number of not-reached attempts; an attempt is identified by its order, ``recorded_at``, ``callback_at``
and ``agent`` (with no ``recorded_at`` given, its time is the clock's, new on every run, so it is matched on
the other three), and the same attempt is recorded once: a re-imported file adds nothing.

A refusal is a `Refusal`: a code and its facts. ``str()`` words it in English (the import's report, the
``ENGLISH`` table below); the page words the same code in the shop's language (templates/web/labels.json).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import polars as pl

from crm.db import transaction
from crm.storage.layout import ops_table

CATEGORIES = ("quality", "logistics", "packaging", "service")
CATEGORY_VALUES = ("good", "issue", "n/a")
_TRUE, _FALSE = {"true", "yes", "y", "1", "t", "是"}, {"false", "no", "n", "0", "f", "否", ""}
_COMPENSATION = re.compile(r"^[a-z][a-z_]*$")


# the English wording of every refusal, for `crm visits import` (the page has its own, in both languages)
ENGLISH = {
    "missing_order_id": "missing order_id",
    "reached_bad": "reached must be true or false, got {value!r}",
    "reached_missing": "reached is missing: say true or false",
    "category_bad": "{category} must be good, issue or n/a, got {value!r}",
    "gift_bad": "gift must be true or false, got {value!r}",
    "compensation_bad": "compensation must be a word like none, coupon, free_shipping, got {value!r}",
    "gift_needs_reached": "a gift or compensation needs a reached customer",
    "time_bad": "{field} must be ISO 8601 with an offset, got {value!r}",
    "no_visit": "order {order_id!r} has no follow-up visit planned",
    "already_recorded": "order {order_id!r} was already recorded as reached at {at:%Y-%m-%d %H:%M %Z}",
    "attempt_recorded": "order {order_id!r}: this not-reached attempt was already recorded at {at:%Y-%m-%d %H:%M %Z}",
    "recorded_before_call": "recorded_at {at:%Y-%m-%d %H:%M:%S %Z} is before the call was created "
                            "({created:%Y-%m-%d %H:%M:%S %Z})",
    "recorded_in_future": "recorded_at {at:%Y-%m-%d %H:%M:%S %Z} is after now ({now:%Y-%m-%d %H:%M:%S %Z})",
    "gift_refused": "gift refused: it would make {gifts} gifts in {reached} reached visits this month ({share:.0%}), "
                    "above the shop's gift_ratio of {ratio:.0%}",
}


@dataclass(frozen=True)
class Refusal:
    """Why an outcome is refused: a code (a key of ENGLISH, or one of the page's own) and its facts."""

    code: str
    facts: dict = field(default_factory=dict, hash=False)

    def __str__(self) -> str:
        text = ENGLISH.get(self.code)
        return text.format(**self.facts) if text else f"{self.code} {self.facts}"


def english(refusals) -> str:
    """Several refusals as one English line."""
    return "; ".join(str(r) for r in refusals)


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


def check(row: dict) -> tuple[dict | None, list[Refusal]]:
    """One outcome's fields: the cleaned record and no refusals, or None and every reason it is refused."""
    problems = []
    order_id = (row.get("order_id") or "").strip()
    if not order_id:
        problems.append(Refusal("missing_order_id"))
    # reached must be said; a blank gift means no gift
    reached = _bool(row.get("reached")) if (row.get("reached") or "").strip() else None
    if reached is None:
        problems.append(Refusal("reached_bad", {"value": row.get("reached")}) if (row.get("reached") or "").strip()
                        else Refusal("reached_missing"))
    values = {}
    for category in CATEGORIES:
        value = (row.get(category) or "").strip().lower() or ("n/a" if reached is False else "")
        if value not in CATEGORY_VALUES:
            problems.append(Refusal("category_bad", {"category": category, "value": row.get(category)}))
        values[category] = value
    gift = _bool(row.get("gift"))
    if gift is None:
        problems.append(Refusal("gift_bad", {"value": row.get("gift")}))
    compensation = (row.get("compensation") or "").strip().lower() or "none"
    if not _COMPENSATION.match(compensation):
        problems.append(Refusal("compensation_bad", {"value": row.get("compensation")}))
    if reached is False and (gift or compensation != "none"):
        problems.append(Refusal("gift_needs_reached"))
    times = {}
    for name in ("recorded_at", "callback_at"):
        value = _time(row.get(name))
        if value in ("bad", "naive"):
            problems.append(Refusal("time_bad", {"field": name, "value": row.get(name)}))
        times[name] = value if isinstance(value, datetime) else None
    if problems:
        return None, problems
    suggestion = (row.get("suggestion") or "").strip() or None
    return {"order_id": order_id, "reached": reached, **values, "suggestion": suggestion, "gift": bool(gift),
            "compensation": compensation, "recorded_at": times["recorded_at"], "callback_at": times["callback_at"],
            "agent": (row.get("agent") or "").strip() or None}, []


def _month_counts(con, shop_id: str, when: datetime) -> tuple[int, int]:
    """(reached visits, gifts) of the shop in the local month of `when`."""
    return con.execute(
        "SELECT count(*), count(*) FILTER (WHERE gift) FROM ops.visit_outcomes "
        "WHERE shop_id = ? AND reached AND date_trunc('month', crm_shop_local_date(shop_id, recorded_at)) "
        "= date_trunc('month', crm_shop_local_date(?, ?::TIMESTAMPTZ))",
        [shop_id, shop_id, when],
    ).fetchone()


def gift_refusal(con, shop_id: str, when: datetime, gift_ratio: float) -> Refusal | None:
    """Why a gift recorded now would be refused, or None. The month's first gift is always allowed."""
    reached, gifts = _month_counts(con, shop_id, when)
    if gifts == 0:
        return None
    share = (gifts + 1) / (reached + 1)
    if share > gift_ratio:
        return Refusal("gift_refused", {"gifts": gifts + 1, "reached": reached + 1, "share": share,
                                        "ratio": gift_ratio})
    return None


def record(con: duckdb.DuckDBPyConnection, settings, outcome: dict, now: datetime) -> Refusal | None:
    """Check one cleaned outcome against the plan, its time, the attempts already recorded and the gift
    rule, and save it; the reason if refused. `now` is the caller's clock (the page's, the import's)."""
    order_id, message_id = outcome["order_id"], f"followup:{outcome['order_id']}"
    # the visit's shop, and when its call was created: the follow-up message, else the task's first T
    task = con.execute(
        "SELECT t.shop_id, coalesce((SELECT created_at FROM ops.messages WHERE message_id = ?), t.planned) "
        "FROM (SELECT shop_id, min(as_of) AS planned FROM marts.visit_tasks WHERE order_id = ? GROUP BY shop_id "
        "ORDER BY shop_id LIMIT 1) AS t", [message_id, order_id]).fetchone()
    if task is None:
        return Refusal("no_visit", {"order_id": order_id})
    shop_id, created = task
    done = con.execute("SELECT recorded_at FROM ops.visit_outcomes WHERE order_id = ? AND reached "
                       "ORDER BY recorded_at LIMIT 1", [order_id]).fetchone()
    if done is not None:
        return Refusal("already_recorded", {"order_id": order_id, "at": done[0]})
    when = outcome["recorded_at"] or now
    if when < created:
        return Refusal("recorded_before_call", {"at": when, "created": created})
    if when > now:
        return Refusal("recorded_in_future", {"at": when, "now": now})
    if not outcome["reached"]:
        same = con.execute(
            "SELECT min(recorded_at) FROM ops.visit_outcomes WHERE order_id = ? AND NOT reached "
            "AND callback_at IS NOT DISTINCT FROM ?::TIMESTAMPTZ AND agent IS NOT DISTINCT FROM ? "
            "AND (?::TIMESTAMPTZ IS NULL OR recorded_at = ?::TIMESTAMPTZ)",
            [order_id, outcome["callback_at"], outcome["agent"], outcome["recorded_at"], outcome["recorded_at"]],
        ).fetchone()[0]
        if same is not None:
            return Refusal("attempt_recorded", {"order_id": order_id, "at": same})
    if outcome["gift"]:
        refusal = gift_refusal(con, shop_id, when, settings.shop(shop_id).visits.gift_ratio)
        if refusal:
            return refusal
    # both tables are operational: on the lake, the PostgreSQL ones (one transaction, one database)
    outcomes, messages = ops_table(con, "visit_outcomes"), ops_table(con, "messages")
    with transaction(con):
        con.execute(
            f"INSERT INTO {outcomes} (order_id, reached, quality, logistics, packaging, service, suggestion, "
            "gift, compensation, recorded_at, shop_id, callback_at, agent, message_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [outcome["order_id"], outcome["reached"], outcome["quality"], outcome["logistics"], outcome["packaging"],
             outcome["service"], outcome["suggestion"], outcome["gift"], outcome["compensation"], when, shop_id,
             outcome["callback_at"], outcome["agent"], f"followup:{outcome['order_id']}"],
        )
        if outcome["reached"]:
            con.execute(f"UPDATE {messages} SET status = 'done' WHERE message_id = ? AND channel = 'call'",
                        [f"followup:{outcome['order_id']}"])
    return None


def import_file(con: duckdb.DuckDBPyConnection, settings, path: str | Path, now: datetime) -> ImportResult:
    """A call-centre export: every good row saved, every bad one reported with its line number. `now` is the
    import's clock: the time of a row without recorded_at, and the latest time a row may give."""
    path = Path(path)
    if not path.is_file():
        raise OutcomeError(f"{path}: file not found")
    try:
        frame = pl.read_csv(path, infer_schema=False, encoding="utf8")
    except (pl.exceptions.PolarsError, UnicodeDecodeError) as e:
        raise OutcomeError(f"{path}: not a readable CSV file: {str(e).splitlines()[0]}") from None
    if "order_id" not in frame.columns or "reached" not in frame.columns:
        raise OutcomeError(f"{path}: needs at least the columns order_id and reached (has {', '.join(frame.columns)})")
    result = ImportResult()
    # rows in file order: each gift is judged against the month as it stands, this file's earlier rows included
    for line, row in enumerate(frame.iter_rows(named=True), start=2):
        outcome, problems = check(row)
        if not problems:
            refusal = record(con, settings, outcome, now)
            problems = [refusal] if refusal else []
        if problems:
            result.errors.append((line, english(problems)))
        else:
            result.saved += 1
    return result
