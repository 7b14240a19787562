"""Plan at an evaluation time T (docs/rules.md §2-5): run the SQL models, write the marts.

The models under sql/intermediate and sql/marts are materialised in order as temp tables, with T bound
as ``$as_of`` (never the wall clock). Then, in one transaction, the marts' rows for T are replaced
(``DELETE ... WHERE as_of = T`` + ``INSERT``), and ``customer_segments`` is replaced whole when T is the
newest T planned so far. A plan reads only what can matter at T: unpaid orders, orders whose follow-up
trigger lies inside the widest follow-up horizon, and the order histories of those customers.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb

from crm.db import asset_dir, sql_text, transaction

# in dependency order
INTERMEDIATE = [
    "int_shop_clock",
    "int_unpaid_orders",
    "int_customer_orders",
    "int_order_segments",
    "int_visit_candidates",
    "int_customer_reach",
    "int_reminder_send_times",
    "int_order_style",
]
MARTS = ["reminder_decisions", "visit_tasks"]
REPORTS = ["feedback_summary", "reminder_effect"]      # rebuilt whole at the newest T


class PlanError(Exception):
    """Bad input for a plan (e.g. an unparsable T): one line for the user."""


@dataclass
class PlanResult:
    as_of: datetime
    unpaid_orders: int = 0
    decisions: dict[str, int] = field(default_factory=dict)     # reason (or 'remind') -> count
    visit_tasks: int = 0
    visit_channels: dict[str, int] = field(default_factory=dict)
    segments_written: bool = False
    retired_shops: dict[str, int] = field(default_factory=dict)   # shop -> orders not planned (retired_shops)
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------------
# T and durations


def parse_as_of(text: str | None) -> datetime:
    """ISO 8601 with an offset or Z (docs/rules.md §9); None: now."""
    if text is None:
        return datetime.now(timezone.utc).replace(microsecond=0)
    try:
        value = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise PlanError(f"{text!r} is not an ISO 8601 time (e.g. 2026-11-20T10:00:00+08:00 or 2026-11-20T02:00:00Z)") from None
    if value.tzinfo is None:
        raise PlanError(f"{text!r} has no offset: write it with one, e.g. {text}+08:00 or {text}Z")
    return value.astimezone(timezone.utc)


_DURATION = re.compile(r"(\d+)\s*(min|d|h|m|s)", re.I)


def parse_duration(text: str) -> timedelta:
    """'1h', '30m', '15min', '1d', '2h30m'."""
    compact = text.strip().lower()
    parts = _DURATION.findall(compact)
    if not parts or _DURATION.sub("", compact).strip():
        raise PlanError(f"{text!r} is not a duration (e.g. 1h, 30m, 1d, 2h30m)")
    unit = {"d": "days", "h": "hours", "m": "minutes", "min": "minutes", "s": "seconds"}
    try:
        total = sum((timedelta(**{unit[u]: int(n)}) for n, u in parts), timedelta())
    except (OverflowError, ValueError):                   # past timedelta's range, or a number of 4300+ digits
        raise PlanError(f"{text!r} is too long a duration (at most 999999999 days)") from None
    if total <= timedelta(0):
        raise PlanError(f"{text!r} must be longer than zero")
    return total


# A backfill plans every T of its range, each writing the marts' rows for T: above this many T it is refused
# (counted before anything is listed or planned) unless --max-times (the flow's max_times) raises the limit.
MAX_BACKFILL_TIMES = 10_000


def backfill_times(start: datetime, end: datetime, every: timedelta,
                   max_times: int = MAX_BACKFILL_TIMES) -> list[datetime]:
    """Every T from start to end (included), `every` apart; at most `max_times` of them, else one line."""
    if end < start:
        raise PlanError(f"--to ({end.isoformat()}) is before --from ({start.isoformat()})")
    if max_times < 1:
        raise PlanError(f"--max-times must be at least 1 (got {max_times})")
    count = (end - start) // every + 1
    if count > max_times:
        raise PlanError(f"this backfill would plan {count:,} times ({start.isoformat()} to {end.isoformat()}, "
                        f"every {every}), more than {max_times:,}: pass --max-times {count} to plan them all, "
                        f"or choose a longer --every")
    return [start + i * every for i in range(count)]


# --------------------------------------------------------------------------------------------------
# template variants: which product tones have a template (docs/rules.md §4)


def template_variants(root: Path | None = None) -> list[str]:
    """'segment.tag' for every payment_reminder/<segment>.<tag>.j2 under templates/ (any locale)."""
    try:
        root = root or asset_dir("templates")
    except FileNotFoundError:
        return []
    names = {p.name[: -len(".j2")] for p in root.glob("*/payment_reminder/*.*.j2")}
    return sorted(n for n in names if n.count(".") == 1)


# --------------------------------------------------------------------------------------------------
# the plan


def _bind(sql: str, params: dict) -> dict:
    return {k: v for k, v in params.items() if f"${k}" in sql}


def check_shops(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """The retired shops that have orders (shop -> orders). A shop with orders in the database that the
    configuration neither configures nor retires stops the plan (PlanError): its orders would silently
    drop out of the marts, which is most often a wrong --config."""
    rows = con.execute(
        "SELECT orders.shop_id, count(*), bool_or(retired.shop_id IS NOT NULL) FROM staging.orders AS orders "
        "LEFT JOIN ops.retired_shops AS retired ON retired.shop_id = orders.shop_id "
        "WHERE orders.shop_id NOT IN (SELECT shop_id FROM ops.shops) GROUP BY 1 ORDER BY 1").fetchall()
    unknown = [(shop, n) for shop, n, retired in rows if not retired]
    if unknown:
        shops = ", ".join(f"{shop!r} ({n:,} orders)" for shop, n in unknown)
        listed = ", ".join(f'"{shop}"' for shop, _ in unknown)
        raise PlanError(f"the database holds shop{'s' if len(unknown) > 1 else ''} {shops} that the shops "
                        f"configuration does not have: put its [[shops]] block back (or pass the right --config), "
                        f"or add retired_shops = [{listed}] to stop planning it (its data stays); nothing was planned")
    return {shop: n for shop, n, _ in rows}


def retired_line(retired: dict[str, int]) -> str:
    """'retired shop 's3' (9,812 orders)', for the one line a plan or dispatch says about them."""
    return ", ".join(f"retired shop {shop!r} ({n:,} orders)" for shop, n in retired.items())


def build(con: duckdb.DuckDBPyConnection, as_of: datetime, variants: list[str] | None = None) -> dict[str, int]:
    """Materialise every model for T as temp tables (intermediate models, then the marts as mart_<name>).
    Returns the retired shops left out (shop -> orders); refuses a shop that is neither configured nor
    retired (check_shops)."""
    retired = check_shops(con)
    params = {"as_of": as_of, "variants": variants if variants is not None else template_variants()}
    for name in INTERMEDIATE:
        sql = sql_text(f"intermediate/{name}.sql")
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {sql}", _bind(sql, params))
    for name in MARTS:
        sql = sql_text(f"marts/{name}.sql")
        con.execute(f"CREATE OR REPLACE TEMP TABLE mart_{name} AS {sql}", _bind(sql, params))
    return retired


def plan(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime,
    *,
    segments: bool = True,
    backfill_key: str | None = None,
    variants: list[str] | None = None,
) -> PlanResult:
    """Plan at T and write the marts in one transaction. `segments=False` skips customer_segments
    (a backfill writes it only at its last T)."""
    started = time.perf_counter()
    result = PlanResult(as_of=as_of)
    result.retired_shops = build(con, as_of, variants)
    with transaction(con):
        for name in MARTS:
            con.execute(f"DELETE FROM marts.{name} WHERE as_of = ?", [as_of])
            con.execute(f"INSERT INTO marts.{name} BY NAME SELECT * FROM mart_{name}")
        if segments:
            result.segments_written = refresh_segments(con, as_of)
        if result.segments_written:
            # the feedback and the reminders' effect, as of the newest T (docs/rules.md §8)
            for name in REPORTS:
                con.execute(f"DELETE FROM marts.{name}")
                con.execute(f"INSERT INTO marts.{name} BY NAME {sql_text(f'marts/{name}.sql')}", {"as_of": as_of})
        result.unpaid_orders = con.execute("SELECT count(*) FROM mart_reminder_decisions").fetchone()[0]
        result.decisions = dict(con.execute(
            "SELECT coalesce(reason, 'remind'), count(*) FROM mart_reminder_decisions GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall())
        result.visit_tasks = con.execute("SELECT count(*) FROM mart_visit_tasks").fetchone()[0]
        result.visit_channels = dict(con.execute(
            "SELECT coalesce(channel, 'none'), count(*) FROM mart_visit_tasks GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall())
        result.seconds = time.perf_counter() - started
        con.execute(
            "INSERT INTO ops.plan_runs VALUES (?, now(), ?, ?, ?, ?, ?)",
            [as_of, backfill_key, result.unpaid_orders, result.decisions.get("remind", 0), result.visit_tasks,
             result.seconds],
        )
    return result


def refresh_segments(con: duckdb.DuckDBPyConnection, as_of: datetime) -> bool:
    """Bring marts.customer_segments to T when T is the newest T so far (inside the plan's transaction).
    The first time every customer is computed; later only those whose state can differ from the last
    T0: orders paid or refunded in (T0, T], rows changed by an ingest since, orders moved by an ingest."""
    state = con.execute("SELECT as_of, last_ingest_id FROM ops.segment_state").fetchone()
    if state is not None and as_of < state[0]:
        return False
    last_ingest = con.execute("SELECT coalesce(max(ingest_id), 0) FROM ops.ingest_runs WHERE status = 'ok'").fetchone()[0]
    if state is None:
        con.execute("CREATE OR REPLACE TEMP TABLE segment_scope AS "
                    "SELECT shop_id, customer_id FROM staging.customers UNION SELECT shop_id, customer_id FROM staging.orders")
        con.execute("DELETE FROM ops.segment_rows")
    else:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE segment_scope AS "
            "SELECT shop_id, customer_id FROM staging.orders "
            "WHERE (paid_at > $t0 AND paid_at <= $t) OR (refunded_at > $t0 AND refunded_at <= $t) OR _ingest_id > $i0 "
            "UNION SELECT shop_id, customer_id FROM staging.customers WHERE _ingest_id > $i0 "
            "UNION SELECT shop_id, customer_id FROM ops.segment_dirty",
            {"t0": state[0], "t": as_of, "i0": state[1]},
        )
        con.execute("DELETE FROM ops.segment_rows AS r USING segment_scope AS s "
                    "WHERE r.shop_id = s.shop_id AND r.customer_id = s.customer_id")
    con.execute(f"INSERT INTO ops.segment_rows BY NAME {sql_text('marts/customer_segments.sql')}", {"as_of": as_of})
    con.execute("DELETE FROM ops.segment_state")
    con.execute("INSERT INTO ops.segment_state VALUES (?, ?)", [as_of, last_ingest])
    con.execute("DELETE FROM ops.segment_dirty")
    return True


def planned_times(con: duckdb.DuckDBPyConnection, backfill_key: str) -> set[datetime]:
    """The T a backfill with this key has already planned (a re-run skips them)."""
    rows = con.execute("SELECT DISTINCT as_of FROM ops.plan_runs WHERE backfill_key = ?", [backfill_key]).fetchall()
    return {r[0] for r in rows}
