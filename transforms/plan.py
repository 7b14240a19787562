"""Plan at an evaluation time T (docs/rules.md §2-5): run the SQL models, write the marts.

The models under sql/intermediate and sql/marts are materialised in order as temp tables, with T bound
as ``$as_of`` (never the wall clock). Then, in one transaction, the marts' rows for T are replaced
(``DELETE ... WHERE as_of = T`` + ``INSERT``); when T is the newest T planned so far, ``customer_segments``
is brought to T for the customers whose orders changed, and ``feedback_summary`` / ``reminder_effect_segments``
(whose day totals the view ``reminder_effect`` shows) / ``reminder_variants`` for the periods that can have changed
(:func:`refresh_reports`). A plan reads only what can matter at T: unpaid
orders, orders whose follow-up trigger lies inside the widest follow-up horizon, and the order histories of
those customers.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb

from crm.db import asset_dir, inline, literal, sql_text, transaction

# in dependency order
INTERMEDIATE = [
    "int_shop_clock",
    "int_unpaid_orders",
    "int_customer_orders",
    "int_order_segments",
    "int_visit_windows",
    "int_visit_candidates",
    "int_customer_reach",
    "int_reminder_send_times",
    "int_order_style",
    "int_experiment_arms",
]
MARTS = ["reminder_decisions", "visit_tasks"]
# constants the later models are bound to, read from a model once it is made: a bound that DuckDB can hold
# against each row group's min/max (a value from a subquery it cannot), so a scan skips what cannot matter at T
DERIVED = {
    "int_visit_windows": ("visit_from", "SELECT min(starts) FROM int_visit_windows"),
}
# at the newest T, refreshed incrementally (marts.reminder_effect: a view of reminder_effect_segments, crm/db.py)
REPORTS = ["feedback_summary", "reminder_effect_segments", "reminder_variants"]


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
    reports: str | None = None          # how the §8 marts were brought to T: 'full', 'incremental' (None: not)
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
    """Every payment_reminder/<name>.<tag>.j2 under templates/ (any locale) as '<name>.<tag>': 'segment.tag' for
    the product tones of a segment's template, 'variant.tag' for those of an experiment's variant (docs/rules.md §4)."""
    try:
        root = root or asset_dir("templates")
    except FileNotFoundError:
        return []
    return sorted({p.name[: -len(".j2")] for p in root.glob("*/payment_reminder/*.*.j2")})


# --------------------------------------------------------------------------------------------------
# the plan


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
        con.execute(inline(f"CREATE OR REPLACE TEMP TABLE {name} AS {sql}", params))
        if name in DERIVED:
            key, query = DERIVED[name]
            params[key] = con.execute(query).fetchone()[0]
    for name in MARTS:
        sql = sql_text(f"marts/{name}.sql")
        con.execute(inline(f"CREATE OR REPLACE TEMP TABLE mart_{name} AS {sql}", params))
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
        note_plan(con, as_of)
        for name in MARTS:
            con.execute(f"DELETE FROM marts.{name} WHERE as_of = {literal(as_of)}")
            con.execute(f"INSERT INTO marts.{name} BY NAME SELECT * FROM mart_{name}")
        if segments:
            result.segments_written = refresh_segments(con, as_of)
        if result.segments_written:
            # the feedback and the reminders' effect, as of the newest T (docs/rules.md §8)
            result.reports = refresh_reports(con, as_of)
        result.unpaid_orders = con.execute("SELECT count(*) FROM mart_reminder_decisions").fetchone()[0]
        result.decisions = dict(con.execute(
            "SELECT coalesce(reason, 'remind'), count(*) FROM mart_reminder_decisions GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall())
        result.visit_tasks = con.execute("SELECT count(*) FROM mart_visit_tasks").fetchone()[0]
        result.visit_channels = dict(con.execute(
            "SELECT coalesce(channel, 'none'), count(*) FROM mart_visit_tasks GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall())
        result.seconds = time.perf_counter() - started
        con.execute(inline(
            "INSERT INTO ops.plan_runs VALUES ($t, now(), $key, $unpaid, $remind, $tasks, $seconds)",
            {"t": as_of, "key": backfill_key, "unpaid": result.unpaid_orders, "remind": result.decisions.get("remind", 0),
             "tasks": result.visit_tasks, "seconds": result.seconds}))
    return result


def refresh_segments(con: duckdb.DuckDBPyConnection, as_of: datetime) -> bool:
    """Bring marts.customer_segments to T when T is the newest T so far (inside the plan's transaction).
    The first time every customer is computed; later only those whose state can differ from the last
    T0: orders paid or refunded in (T0, T], rows changed by an ingest since, orders moved by an ingest."""
    state = con.execute("SELECT as_of, last_ingest_id FROM ops.segment_state").fetchone()
    if state is not None and as_of < state[0]:
        return False
    last_ingest = con.execute("SELECT coalesce(max(ingest_id), 0) FROM ops.ingest_runs WHERE status = 'ok'").fetchone()[0]
    model = sql_text("marts/customer_segments.sql")
    if state is None:
        # every customer: the model without its scope (10M orders: 3.9 s instead of 8.7 s with a scope of every pair)
        model = "\n".join(line for line in model.splitlines() if not line.rstrip().endswith("-- scoped"))
        con.execute("DELETE FROM ops.segment_rows")
    else:
        con.execute(inline(
            "CREATE OR REPLACE TEMP TABLE segment_scope AS "
            "SELECT shop_id, customer_id FROM staging.orders "
            "WHERE (paid_at > $t0 AND paid_at <= $t) OR (refunded_at > $t0 AND refunded_at <= $t) OR _ingest_id > $i0 "
            "UNION SELECT shop_id, customer_id FROM staging.customers WHERE _ingest_id > $i0 "
            "UNION SELECT shop_id, customer_id FROM ops.segment_dirty",
            {"t0": state[0], "t": as_of, "i0": state[1]},
        ))
        con.execute("DELETE FROM ops.segment_rows AS r USING segment_scope AS s "
                    "WHERE r.shop_id = s.shop_id AND r.customer_id = s.customer_id")
    con.execute(inline(f"INSERT INTO ops.segment_rows BY NAME {model}", {"as_of": as_of}))
    con.execute("DELETE FROM ops.segment_state")
    con.execute(f"INSERT INTO ops.segment_state VALUES ({literal(as_of)}, {literal(last_ingest)})")
    con.execute("DELETE FROM ops.segment_dirty")
    return True


def planned_times(con: duckdb.DuckDBPyConnection, backfill_key: str) -> set[datetime]:
    """The T a backfill with this key has already planned (a re-run skips them)."""
    rows = con.execute(f"SELECT DISTINCT as_of FROM ops.plan_runs WHERE backfill_key = {literal(backfill_key)}").fetchall()
    return {r[0] for r in rows}


# --------------------------------------------------------------------------------------------------
# the §8 marts, refreshed incrementally (docs/rules.md §8)
#
# feedback_summary, reminder_effect_segments and reminder_variants are as of the newest T. Rebuilt whole they read
# every visit task and decision of history (both hold rows per T), every message and every outcome; instead a plan
# at a newer T recomputes only the periods that can have changed since the last refresh (ops.report_state, at T0):
#   - the T planned since (ops.report_pending, noted by every plan): their visit tasks are merged into
#     ops.feedback_tasks (each order's latest task per period) and their holdouts into ops.effect_holdouts,
#     and each shop's local day and week of such a T are recomputed. A T planned again once it was counted
#     notes the orders that left its tasks or holdouts (ops.report_gone): those are looked up again;
#   - the UTC days whose messages or outcomes changed (ops.report_buckets: a count and a fingerprint per
#     source, shop and day) and the window (T0, T]: their local days, and the reminders of those days, merged
#     into ops.effect_reminders (a reminder is never deleted and, once made, stays made);
#   - in reminder_effect_segments and reminder_variants, the orders whose row can differ: reminded, planned or
#     held out anew, still open at T0 (their outcome may be known at T), or changed by an ingest since; and the
#     days they count on (both marts' rows of those days, from ops.effect_rows).
# A rebuild — the first refresh, other shops, zones, auto-close or experiments, a new REPORTS_VERSION, or fewer
# reminders than last time — runs the whole models (marts/feedback_summary.sql, marts/reminder_effect_segments.sql,
# marts/reminder_variants.sql) and builds that state anew;
# tests/test_incremental_marts.py checks that both ways give the same rows.

# what the marts were computed with: the shops, their zones, auto-close times and template experiments (a variant's
# reference is its experiment's first), and the version of the models' rows (a new version rebuilds them)
REPORTS_VERSION = "effect-3"      # effect-3: reminder_effect_segments (a table) under the view reminder_effect
SHOPS_KEY = (f"SELECT '{REPORTS_VERSION}:' || coalesce(string_agg(shop_id || '|' || timezone || '|' "
             "|| coalesce(auto_close_minutes, -1) || '|' || coalesce(json_extract(config_json, '$.experiments')::VARCHAR, ''), "
             "';' ORDER BY shop_id), '') FROM ops.shops")
REPORT_STATE = ["ops.feedback_latest", "ops.feedback_tasks", "ops.effect_reminders", "ops.effect_holdouts",
                "ops.effect_rows"]


def _in(values: list[datetime]) -> str:
    return ", ".join(literal(v) for v in values)


def _temp(con: duckdb.DuckDBPyConnection, name: str, sql: str, params: dict | None = None) -> int:
    """Materialise `sql` as the temp table `name`; its row count."""
    con.execute(inline(f"CREATE OR REPLACE TEMP TABLE {name} AS {sql}", params or {}))
    return con.execute(f"SELECT count(*) FROM {name}").fetchone()[0]


# a holdout decision the control group counts (marts/effect_holdouts.sql): at or after the order's send time
COUNTED_HOLDOUT = "{d}.reason = 'holdout' AND coalesce({d}.send_at <= {d}.as_of, true)"
# what the effect models read of the messages and of the holdout decisions
EFFECT_MESSAGE_COLUMNS = "purpose, shop_id, order_id, channel, status, created_at, template, customer_segment, variant"
EFFECT_HOLDOUT_COLUMNS = "as_of, shop_id, order_id, reason, send_at, segment, channel, variant"


def note_plan(con: duckdb.DuckDBPyConnection, as_of: datetime) -> None:
    """Before a plan replaces T's rows (in its transaction): note T for the next refresh of the §8 marts and,
    when the marts may count T already (T <= their T), the orders that leave T's visit tasks or holdouts."""
    state = con.execute("SELECT as_of FROM ops.report_state").fetchone()
    if state is None:
        return                                     # no refresh yet: the next one rebuilds
    con.execute(inline("INSERT INTO ops.report_pending SELECT $t WHERE NOT EXISTS "
                       "(SELECT 1 FROM ops.report_pending WHERE as_of = $t)", {"t": as_of}))
    if as_of > state[0]:
        return
    con.execute(
        "INSERT INTO ops.report_gone SELECT 'task', old.as_of, old.shop_id, old.order_id "
        f"FROM marts.visit_tasks AS old WHERE old.as_of = {literal(as_of)} AND NOT EXISTS "
        "(SELECT 1 FROM mart_visit_tasks AS new WHERE new.shop_id = old.shop_id AND new.order_id = old.order_id)")
    con.execute(
        "INSERT INTO ops.report_gone SELECT 'holdout', old.as_of, old.shop_id, old.order_id "
        f"FROM marts.reminder_decisions AS old WHERE old.as_of = {literal(as_of)} AND {COUNTED_HOLDOUT.format(d='old')} "
        "AND NOT EXISTS (SELECT 1 FROM mart_reminder_decisions AS new WHERE new.shop_id = old.shop_id "
        f"AND new.order_id = old.order_id AND {COUNTED_HOLDOUT.format(d='new')})")


def refresh_reports(con: duckdb.DuckDBPyConnection, as_of: datetime, *, full: bool = False) -> str | None:
    """Bring marts.feedback_summary, reminder_effect_segments and reminder_variants to T, the newest T (inside the
    plan's transaction): 'incremental' (the periods that can have changed), 'full' (rebuilt whole: `full`, the first
    time, other shops, zones, auto-close or experiments, a new REPORTS_VERSION, or reminders that went missing),
    or None when T is older than the marts."""
    state = con.execute("SELECT as_of, last_ingest_id, shops_key FROM ops.report_state").fetchone()
    if state is not None and as_of < state[0]:
        return None
    last_ingest = con.execute("SELECT coalesce(max(ingest_id), 0) FROM ops.ingest_runs WHERE status = 'ok'").fetchone()[0]
    shops_key = con.execute(SHOPS_KEY).fetchone()[0]
    _temp(con, "report_buckets_now", sql_text("marts/report_buckets.sql"))
    # a merged source may only grow: a reminder never disappears, and once made stays made
    shrank = con.execute(
        "SELECT count(*) FROM ops.report_buckets AS old LEFT JOIN report_buckets_now AS now "
        "ON now.source = old.source AND now.shop_id = old.shop_id AND now.day = old.day "
        "WHERE old.source = 'messages:payment_reminder' AND (now.n IS NULL OR now.n < old.n OR now.n_made < old.n_made)"
    ).fetchone()[0]
    if full or state is None or state[2] != shops_key or shrank:
        _rebuild_reports(con, as_of)
        how = "full"
    else:
        _update_reports(con, as_of, state[0], state[1], last_ingest)
        how = "incremental"
        for name in REPORTS:
            con.execute(inline(f"UPDATE marts.{name} SET as_of = $t WHERE as_of <> $t", {"t": as_of}))
    con.execute("DELETE FROM ops.report_buckets")
    con.execute("INSERT INTO ops.report_buckets SELECT * FROM report_buckets_now")
    con.execute(f"DELETE FROM ops.report_pending WHERE as_of <= {literal(as_of)}")
    con.execute("DELETE FROM ops.report_gone")
    con.execute("DELETE FROM ops.report_state")
    con.execute(f"INSERT INTO ops.report_state VALUES ({literal(as_of)}, {literal(last_ingest)}, {literal(shops_key)})")
    return how


def _rebuild_reports(con: duckdb.DuckDBPyConnection, as_of: datetime) -> None:
    """Both marts from their whole models, and the state an incremental refresh starts from, anew."""
    params = {"as_of": as_of}
    for name in REPORTS:
        con.execute(f"DELETE FROM marts.{name}")
        con.execute(inline(f"INSERT INTO marts.{name} BY NAME {sql_text(f'marts/{name}.sql')}", params))
    for table in REPORT_STATE:
        con.execute(f"DELETE FROM {table}")
    _temp(con, "report_task_rows", "SELECT as_of, shop_id, order_id, channel FROM marts.visit_tasks "
          f"WHERE as_of <= {literal(as_of)}")
    _temp(con, "report_merged", sql_text("marts/feedback_tasks.sql"))
    con.execute("INSERT INTO ops.feedback_latest SELECT shop_id, period, period_start, max(as_of) FROM report_merged "
                "GROUP BY ALL")
    con.execute("INSERT INTO ops.feedback_tasks SELECT m.* FROM report_merged AS m JOIN ops.feedback_latest AS l ON "
                + PERIOD_KEYS.format(a="m", b="l") + " WHERE m.as_of < l.as_of")
    _temp(con, "effect_message_rows", f"SELECT {EFFECT_MESSAGE_COLUMNS} "
          "FROM ops.messages WHERE purpose = 'payment_reminder' AND order_id IS NOT NULL")
    sql = sql_text("marts/effect_reminders.sql")
    con.execute(inline(f"INSERT INTO ops.effect_reminders BY NAME {sql}", params))
    _temp(con, "effect_holdout_rows", f"SELECT {EFFECT_HOLDOUT_COLUMNS} FROM marts.reminder_decisions "
          "WHERE reason = 'holdout'")
    sql = sql_text("marts/effect_holdouts.sql")
    con.execute(inline(f"INSERT INTO ops.effect_holdouts BY NAME {sql}", params))
    _temp(con, "effect_scope", "SELECT order_id FROM ops.effect_reminders UNION SELECT order_id FROM ops.effect_holdouts")
    sql = sql_text("marts/effect_rows.sql")
    con.execute(inline(f"INSERT INTO ops.effect_rows BY NAME {sql}", params))


# the orders planned in a period before its latest T (ops.feedback_tasks) and that T (ops.feedback_latest): each
# order's latest task in the period is its row there, else its task at the latest T (marts.visit_tasks)
PERIOD_KEYS = "{a}.shop_id = {b}.shop_id AND {a}.period = {b}.period AND {a}.period_start = {b}.period_start"
TASK_KEYS = PERIOD_KEYS + " AND {a}.order_id = {b}.order_id"
LATEST_TASKS = """
    SELECT latest.shop_id, latest.period, latest.period_start, tasks.order_id, tasks.as_of,
           coalesce(tasks.channel, 'none') AS channel
    FROM {latest} AS latest JOIN marts.visit_tasks AS tasks ON tasks.as_of = latest.as_of AND tasks.shop_id = latest.shop_id
"""
# an order that left the tasks of a T planned again, in each period of that T
GONE_KEYS = """
    SELECT DISTINCT g.shop_id, p.period, p.period_start, g.order_id
    FROM ops.report_gone AS g
    JOIN (SELECT DISTINCT shop_id, as_of, crm_shop_local_date(shop_id, as_of) AS day FROM ops.report_gone
          WHERE kind = 'task') AS t USING (shop_id, as_of),
         LATERAL (SELECT 'day' AS period, t.day AS period_start UNION ALL
                  SELECT 'week', date_trunc('week', t.day)::DATE) AS p
    WHERE g.kind = 'task'
"""


def _next_tasks(con: duckdb.DuckDBPyConnection, at: datetime) -> None:
    """The visit tasks of one T later than every T counted: T becomes the latest T of each shop's day and week
    it has tasks in; the orders planned at the period's previous latest T but not at T are kept with that task,
    and those kept before that are planned at T drop out (their latest task is now T's)."""
    t = literal(at)
    at_t = f"SELECT 1 FROM marts.visit_tasks AS n WHERE n.as_of = {t} AND n.shop_id = {{a}}.shop_id AND n.order_id = {{a}}.order_id"
    _temp(con, "report_latest_new", f"""
        SELECT s.shop_id, p.period, p.period_start, {t} AS as_of
        FROM (SELECT DISTINCT shop_id, crm_shop_local_date(shop_id, {t}) AS day FROM marts.visit_tasks
              WHERE as_of = {t} AND shop_id IN (SELECT shop_id FROM ops.shops)) AS s,
             LATERAL (SELECT 'day' AS period, s.day AS period_start UNION ALL
                      SELECT 'week', date_trunc('week', s.day)::DATE) AS p""")
    _temp(con, "report_latest_old", "SELECT l.* FROM ops.feedback_latest AS l SEMI JOIN report_latest_new AS n "
          "ON " + PERIOD_KEYS.format(a="l", b="n"))
    con.execute("DELETE FROM ops.feedback_tasks AS f USING report_latest_new AS p WHERE "
                + PERIOD_KEYS.format(a="f", b="p") + f" AND EXISTS ({at_t.format(a='f')})")
    con.execute(f"INSERT INTO ops.feedback_tasks SELECT d.* FROM ({LATEST_TASKS.format(latest='report_latest_old')}) AS d "
                f"WHERE NOT EXISTS ({at_t.format(a='d')})")
    con.execute("DELETE FROM ops.feedback_latest AS l USING report_latest_new AS n WHERE " + PERIOD_KEYS.format(a="l", b="n"))
    con.execute("INSERT INTO ops.feedback_latest SELECT * FROM report_latest_new")


def _merge_tasks(con: duckdb.DuckDBPyConnection, pending: list[datetime]) -> None:
    """Merge the latest task per period and order of the pending T's (report_tasks_new) into ops.feedback_tasks
    and ops.feedback_latest: recompute, for the orders planned at a pending T or at a touched period's latest T,
    their latest task from those rows and the ones kept; keep those before the period's new latest T."""
    _temp(con, "report_periods_new", "SELECT shop_id, period, period_start, max(as_of) AS as_of "
          "FROM report_tasks_new GROUP BY ALL")
    _temp(con, "report_latest_old", "SELECT l.* FROM ops.feedback_latest AS l SEMI JOIN report_periods_new AS n "
          "ON " + PERIOD_KEYS.format(a="l", b="n"))
    _temp(con, "report_latest_rows", LATEST_TASKS.format(latest="report_latest_old"))
    # rows kept for these orders (but those of a pending T: its current rows replace them)
    _temp(con, "report_kept_rows",
          "SELECT f.* FROM ops.feedback_tasks AS f SEMI JOIN (SELECT shop_id, period, period_start, order_id "
          "FROM report_tasks_new UNION SELECT shop_id, period, period_start, order_id FROM report_latest_rows) AS x "
          "ON " + TASK_KEYS.format(a="f", b="x") + f" WHERE f.as_of NOT IN ({_in(pending)})")
    _temp(con, "report_latest_new",
          "SELECT n.shop_id, n.period, n.period_start, greatest(n.as_of, o.as_of) AS as_of "
          "FROM report_periods_new AS n LEFT JOIN report_latest_old AS o ON " + PERIOD_KEYS.format(a="n", b="o"))
    _temp(con, "report_merged",
          "SELECT m.shop_id, m.period, m.period_start, m.order_id, max(m.as_of) AS as_of, "
          "arg_max(m.channel, m.as_of) AS channel FROM (SELECT * FROM report_tasks_new UNION ALL BY NAME "
          "SELECT * FROM report_latest_rows UNION ALL BY NAME SELECT * FROM report_kept_rows) AS m GROUP BY ALL")
    con.execute("DELETE FROM ops.feedback_tasks AS f USING report_merged AS m WHERE " + TASK_KEYS.format(a="f", b="m"))
    con.execute("INSERT INTO ops.feedback_tasks SELECT m.* FROM report_merged AS m JOIN report_latest_new AS l ON "
                + PERIOD_KEYS.format(a="m", b="l") + " WHERE m.as_of < l.as_of")
    con.execute("DELETE FROM ops.feedback_latest AS l USING report_latest_new AS n WHERE " + PERIOD_KEYS.format(a="l", b="n"))
    con.execute("INSERT INTO ops.feedback_latest SELECT * FROM report_latest_new")


def _gone_tasks(con: duckdb.DuckDBPyConnection, as_of: datetime) -> None:
    """The orders that left the tasks of a T planned again (report_gone_keys): their latest task in each period
    of that T looked up again in marts.visit_tasks."""
    lo = con.execute("SELECT min(period_start) FROM report_gone_keys").fetchone()[0]
    since = datetime.combine(lo, datetime.min.time(), timezone.utc) - timedelta(days=2)
    _temp(con, "report_task_rows", "SELECT as_of, shop_id, order_id, channel FROM marts.visit_tasks "
          f"WHERE as_of BETWEEN {literal(since)} AND {literal(as_of)} AND order_id IN (SELECT order_id FROM report_gone_keys)")
    _temp(con, "report_gone_latest", f"SELECT n.* FROM ({sql_text('marts/feedback_tasks.sql')}) AS n "
          "SEMI JOIN report_gone_keys AS k ON " + TASK_KEYS.format(a="n", b="k"))
    con.execute("DELETE FROM ops.feedback_tasks AS f USING report_gone_keys AS k WHERE " + TASK_KEYS.format(a="f", b="k"))
    con.execute("INSERT INTO ops.feedback_tasks SELECT g.* FROM report_gone_latest AS g JOIN ops.feedback_latest AS l "
                "ON " + PERIOD_KEYS.format(a="g", b="l") + " WHERE g.as_of < l.as_of")


def _update_reports(con: duckdb.DuckDBPyConnection, as_of: datetime, t0: datetime, i0: int, last_ingest: int) -> None:
    """The incremental refresh from T0 to T (see above)."""
    params = {"as_of": as_of}
    pending = [r[0] for r in con.execute(
        f"SELECT DISTINCT as_of FROM ops.report_pending WHERE as_of <= {literal(as_of)} ORDER BY 1").fetchall()]
    _temp(con, "report_pending_now", "SELECT DISTINCT as_of FROM ops.report_pending WHERE as_of <= $as_of", params)

    # visit tasks: the pending T's merged into each period's latest T and the orders planned there before it
    if len(pending) == 1 and pending[0] > t0:
        _next_tasks(con, pending[0])            # the usual plan: one T, later than every T counted
    elif pending:
        _temp(con, "report_task_rows", "SELECT as_of, shop_id, order_id, channel FROM marts.visit_tasks "
              f"WHERE as_of IN ({_in(pending)})")
        if _temp(con, "report_tasks_new", sql_text("marts/feedback_tasks.sql")):
            _merge_tasks(con, pending)
    if _temp(con, "report_gone_keys", GONE_KEYS):
        _gone_tasks(con, as_of)

    # which UTC days of messages and outcomes changed since T0
    _temp(con, "report_changed",
          "SELECT coalesce(now.source, old.source) AS source, coalesce(now.shop_id, old.shop_id) AS shop_id, "
          "coalesce(now.day, old.day) AS day FROM report_buckets_now AS now FULL JOIN ops.report_buckets AS old "
          "ON now.source = old.source AND now.shop_id = old.shop_id AND now.day = old.day "
          "WHERE now.n IS DISTINCT FROM old.n OR now.n_made IS DISTINCT FROM old.n_made "
          "OR now.fingerprint IS DISTINCT FROM old.fingerprint")
    if i0 < last_ingest and con.execute("SELECT count(*) FROM ops.visit_outcomes WHERE shop_id IS NULL").fetchone()[0]:
        # an outcome without a shop takes its order's, which an ingest may have moved
        con.execute("INSERT INTO report_changed SELECT DISTINCT 'outcomes', '', timezone('UTC', recorded_at)::DATE "
                    "FROM ops.visit_outcomes WHERE shop_id IS NULL AND order_id IN "
                    "(SELECT order_id FROM staging.orders WHERE _ingest_id > $i0)", {"i0": i0})

    # the local days to recompute in feedback_summary: each shop's day of every pending T and of the window
    # (T0, T]; the local days a changed UTC day overlaps (follow-ups: that shop's; outcomes: every shop's)
    window = {"t0": t0, "as_of": as_of}
    _temp(con, "report_days", """
        with spans as (
            select shop_id, crm_shop_local_date(shop_id, $t0::TIMESTAMPTZ) as first_day,
                   crm_shop_local_date(shop_id, $as_of::TIMESTAMPTZ) as last_day
            from ops.shops
            union all
            select shops.shop_id, crm_shop_local_date(shops.shop_id, p.as_of), crm_shop_local_date(shops.shop_id, p.as_of)
            from ops.shops as shops, report_pending_now as p
            union all
            select shops.shop_id,
                   crm_shop_local_date(shops.shop_id, timezone('UTC', c.day::TIMESTAMP)),
                   crm_shop_local_date(shops.shop_id, timezone('UTC', c.day::TIMESTAMP) + INTERVAL 1 DAY - INTERVAL 1 MICROSECOND)
            from report_changed as c
            join ops.shops as shops on c.source = 'outcomes' or (c.source = 'messages:followup' and c.shop_id = shops.shop_id)
        )
        select distinct shop_id, unnest(generate_series(first_day, last_day, INTERVAL 1 DAY))::DATE as day from spans
    """, window)
    _temp(con, "report_periods", """
        select shop_id, 'day' as period, day as period_start from report_days
        union
        select shop_id, 'week', date_trunc('week', day)::DATE from report_days
        union
        select shop_id, period, period_start from report_gone_keys
    """)

    # reminders: those of the changed days and of the window, merged per order
    changed = con.execute("SELECT min(day), max(day) FROM report_changed WHERE source = 'messages:payment_reminder'").fetchone()
    rows = [f"SELECT {EFFECT_MESSAGE_COLUMNS} FROM ops.messages "
            f"WHERE purpose = 'payment_reminder' AND order_id IS NOT NULL AND created_at > {literal(t0)} "
            f"AND created_at <= {literal(as_of)}"]
    if changed[0] is not None:
        lo = datetime.combine(changed[0], datetime.min.time(), timezone.utc)
        hi = datetime.combine(changed[1], datetime.min.time(), timezone.utc) + timedelta(days=1)
        rows.append("SELECT " + ", ".join(f"m.{c}" for c in EFFECT_MESSAGE_COLUMNS.split(", ")) + " FROM ops.messages AS m "
                    "SEMI JOIN (SELECT shop_id, day FROM report_changed WHERE source = 'messages:payment_reminder') AS c "
                    "ON c.shop_id = m.shop_id AND c.day = timezone('UTC', m.created_at)::DATE "
                    f"WHERE m.purpose = 'payment_reminder' AND m.order_id IS NOT NULL "
                    f"AND m.created_at >= {literal(lo)} AND m.created_at < {literal(hi)}")
    _temp(con, "effect_message_rows", " UNION ALL ".join(rows))
    if _temp(con, "effect_reminders_new", sql_text("marts/effect_reminders.sql"), params):
        con.execute("DELETE FROM ops.effect_reminders AS r USING effect_reminders_new AS n "
                    "WHERE r.shop_id = n.shop_id AND r.order_id = n.order_id")
        con.execute("INSERT INTO ops.effect_reminders BY NAME SELECT * FROM effect_reminders_new")

    # holdouts: those of the pending T's merged per order; an order that left the holdouts of a counted T is
    # looked up again in every decision
    _temp(con, "effect_holdout_rows", f"SELECT {EFFECT_HOLDOUT_COLUMNS} FROM marts.reminder_decisions "
          f"WHERE reason = 'holdout' AND as_of IN ({_in(pending) or 'NULL'})")
    if _temp(con, "effect_holdouts_new", sql_text("marts/effect_holdouts.sql"), params):
        con.execute("DELETE FROM ops.effect_holdouts AS h USING effect_holdouts_new AS n "
                    "WHERE h.shop_id = n.shop_id AND h.order_id = n.order_id")
        con.execute("INSERT INTO ops.effect_holdouts BY NAME SELECT * FROM effect_holdouts_new")
    if _temp(con, "report_gone_holdouts", "SELECT DISTINCT order_id FROM ops.report_gone WHERE kind = 'holdout'"):
        con.execute("DELETE FROM ops.effect_holdouts WHERE order_id IN (SELECT order_id FROM report_gone_holdouts)")
        _temp(con, "effect_holdout_rows", f"SELECT {EFFECT_HOLDOUT_COLUMNS} FROM marts.reminder_decisions "
              "WHERE reason = 'holdout' AND order_id IN (SELECT order_id FROM report_gone_holdouts)")
        sql = sql_text("marts/effect_holdouts.sql")
        con.execute(inline(f"INSERT INTO ops.effect_holdouts BY NAME {sql}", params))

    # reminder_effect_segments: the orders whose row can differ, and the days they counted and count on
    scope = ["SELECT order_id FROM effect_reminders_new", "SELECT order_id FROM effect_holdouts_new",
             "SELECT order_id FROM report_gone_holdouts",
             "SELECT order_id FROM ops.effect_rows WHERE NOT known"]
    if i0 < last_ingest:
        scope.append(f"SELECT order_id FROM staging.orders WHERE _ingest_id > {int(i0)} AND (order_id IN "
                     "(SELECT order_id FROM ops.effect_reminders) OR order_id IN (SELECT order_id FROM ops.effect_holdouts))")
    if _temp(con, "effect_scope", " UNION ".join(scope)):
        _temp(con, "effect_days", "SELECT DISTINCT shop_id, day FROM ops.effect_rows "
              "WHERE order_id IN (SELECT order_id FROM effect_scope)")
        con.execute("DELETE FROM ops.effect_rows WHERE order_id IN (SELECT order_id FROM effect_scope)")
        _temp(con, "effect_rows_new", sql_text("marts/effect_rows.sql"), params)
        con.execute("INSERT INTO ops.effect_rows BY NAME SELECT * FROM effect_rows_new")
        con.execute("INSERT INTO effect_days SELECT DISTINCT shop_id, day FROM effect_rows_new "
                    "EXCEPT SELECT shop_id, day FROM effect_days")
        for name in ("reminder_effect_segments", "reminder_variants"):
            con.execute(f"DELETE FROM marts.{name} AS e USING effect_days AS d WHERE e.shop_id = d.shop_id AND e.day = d.day")
            con.execute(inline(f"INSERT INTO marts.{name} BY NAME {sql_text(f'marts/{name}_days.sql')}", params))

    # feedback_summary: the periods of the days above
    lo, hi = con.execute("SELECT min(period_start), max(period_start) FROM report_periods").fetchone()
    if lo is not None:
        bounds = {"as_of": as_of,
                  "lo": datetime.combine(lo, datetime.min.time(), timezone.utc) - timedelta(days=2),
                  "hi": datetime.combine(hi, datetime.min.time(), timezone.utc) + timedelta(days=9)}
        con.execute("DELETE FROM marts.feedback_summary AS f USING report_periods AS p WHERE f.shop_id = p.shop_id "
                    "AND f.period = p.period AND f.period_start = p.period_start")
        sql = sql_text("marts/feedback_periods.sql")
        con.execute(inline(f"INSERT INTO marts.feedback_summary BY NAME {sql}", bounds))
