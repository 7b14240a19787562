"""DuckDB connections and the SQL files of the project.

One DuckDB file holds everything. Writers open it through :func:`connect`, which creates the schema
and the parsing macros; readers can use ``read_only=True``. DuckDB allows one writing process at a
time, so a writer that meets a lock waits and retries for a while before giving up with a clear error.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Iterator

import duckdb

from crm import phones

_REPO = Path(__file__).resolve().parent.parent


def asset_dir(name: str) -> Path:
    """`sql/` or `templates/`: beside the package in a checkout, inside it in a wheel."""
    for candidate in (_REPO / name, Path(__file__).resolve().parent / "_assets" / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"cannot find the project's {name}/ folder")


@cache
def sql_text(relative: str) -> str:
    """The text of a SQL file under sql/, e.g. ``sql_text("staging/stg_orders.sql")``."""
    return (asset_dir("sql") / relative).read_text(encoding="utf-8")


class DatabaseLocked(Exception):
    pass


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """BEGIN … COMMIT, or ROLLBACK on any error (then re-raised): all of it or none of it."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass
        raise
    con.execute("COMMIT")


def connect(path: str | Path, *, read_only: bool = False, wait_seconds: float = 30.0,
            setup: bool = True) -> duckdb.DuckDBPyConnection:
    """Open the file, waiting up to `wait_seconds` while another process holds it (then DatabaseLocked).
    A writing connection creates the schema; every one gets the parsing macros. `setup=False` skips both
    (~8 of the ~19 ms an open takes): for short connections that only run plain SQL on existing tables,
    such as a dispatch recording its sends."""
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.exists():
        raise FileNotFoundError(f"{path}: no database yet (run `crm ingest` or `crm demo` first)")
    deadline = time.monotonic() + wait_seconds
    delay = 0.05
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as e:
            if "lock" not in str(e).lower() or time.monotonic() >= deadline:
                if "lock" in str(e).lower():
                    raise DatabaseLocked(f"{path}: another process is writing to this database; tried for {wait_seconds:.0f} s") from None
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    con.execute("SET TimeZone = 'UTC'")
    if not setup:
        return con
    if not read_only:
        con.execute(sql_text("schema.sql"))
        _segments_view(con)
    con.execute(sql_text("macros.sql"))
    return con


SHOP_COLUMNS = """
    shop_id VARCHAR PRIMARY KEY, name VARCHAR, timezone VARCHAR NOT NULL, locale VARCHAR, team_email VARCHAR,
    position INTEGER NOT NULL, distribution_platforms VARCHAR[],
    strategy VARCHAR, cutoff_minutes INTEGER[], lead_minutes INTEGER, delay_minutes INTEGER,
    min_age_minutes INTEGER, auto_close_minutes INTEGER, close_margin_minutes INTEGER,
    quiet_start INTEGER, quiet_end INTEGER, daily_cap INTEGER, second_purchase_offer VARCHAR,
    channel_new VARCHAR, channel_second VARCHAR, channel_repeat VARCHAR, holdout_rate DOUBLE,
    visit_trigger VARCHAR, followup_days INTEGER, grace_days INTEGER,
    window_start_minutes INTEGER[], window_end_minutes INTEGER[], manual_capacity INTEGER,
    high_value_amount DOUBLE, complaint_keywords VARCHAR[], auto_channel VARCHAR, gift_ratio DOUBLE,
    config_json VARCHAR, phone_region VARCHAR
"""


@contextmanager
def session(db: str | Path, settings) -> Iterator[duckdb.DuckDBPyConnection]:
    """A writing connection with the configured shops (ops.shops and the per-shop macros) in place,
    closed afterwards: what every flow task works in."""
    con = connect(db)
    try:
        sync_shops(con, settings)
        yield con
    finally:
        con.close()


def analytics_path(db: str | Path) -> Path:
    """The read-only copy analysts open: data/crm.duckdb -> data/crm.analytics.duckdb."""
    db = Path(db)
    return db.with_name(f"{db.stem}.analytics{db.suffix or '.duckdb'}")


def publish_snapshot(con: duckdb.DuckDBPyConnection, db: str | Path) -> Path:
    """Copy the database for analysts after a run. The copy is taken while this process still holds the
    file (no other writer can change it), after a CHECKPOINT (the file is complete without its WAL), and
    swapped in by rename: an analyst who has the previous copy open keeps reading it undisturbed."""
    target = analytics_path(db)
    con.execute("CHECKPOINT")
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(db, tmp)
    os.replace(tmp, target)
    return target


@contextmanager
def exclusive(lock_file: str | Path, *, wait_seconds: float, on_wait=None) -> Iterator[None]:
    """One holder at a time across processes (an flock on `lock_file`); a second one waits, saying so
    once through `on_wait`, and gives up after `wait_seconds` with DatabaseLocked."""
    path = Path(lock_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        deadline = time.monotonic() + wait_seconds
        told = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and on_wait:
                    on_wait()
                    told = True
                if time.monotonic() >= deadline:
                    raise DatabaseLocked(f"{path}: still held by another run after {wait_seconds:.0f} s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _segments_view(con: duckdb.DuckDBPyConnection) -> None:
    """marts.customer_segments: ops.segment_rows, each as of the one T in ops.segment_state.
    (A file from before this was a view held a table here; its rows are derived, the next plan rebuilds them.)"""
    kind = con.execute("SELECT table_type FROM information_schema.tables "
                       "WHERE table_schema = 'marts' AND table_name = 'customer_segments'").fetchone()
    if kind and kind[0] == "BASE TABLE":
        con.execute("DROP TABLE marts.customer_segments")
    if kind is None or kind[0] == "BASE TABLE":
        con.execute("CREATE VIEW marts.customer_segments AS SELECT state.as_of, r.shop_id, r.customer_id, "
                    "r.paid_orders, r.lifetime_value, r.last_paid_at, r.member_level, r.segment "
                    "FROM ops.segment_rows AS r CROSS JOIN ops.segment_state AS state")


def sync_shops(con: duckdb.DuckDBPyConnection, settings) -> None:
    """Mirror the configured shops into ops.shops, typed (times of day as minutes), for the SQL models."""
    from crm.config import minutes_of

    rows = []
    for i, s in enumerate(settings.shops):
        r, v = s.reminders, s.visits
        quiet = [minutes_of(t) for t in r.quiet_hours] or [None, None]
        windows = [w.split("-") for w in v.windows]
        rows.append((
            s.shop_id, s.display_name, s.timezone, s.locale, s.team_email, i, list(s.distribution_platforms),
            r.strategy, [minutes_of(c) for c in r.shipping_cutoffs], r.lead_minutes, r.delay_minutes,
            r.min_age_minutes, r.auto_close_minutes, r.close_margin_minutes, quiet[0], quiet[1], r.daily_cap,
            r.second_purchase_offer, r.channels.new, r.channels.second, r.channels.repeat, r.holdout_rate,
            v.trigger, v.followup_days, v.grace_days, [minutes_of(a) for a, _ in windows],
            [minutes_of(b) for _, b in windows], v.manual_capacity, float(v.high_value_amount),
            list(v.complaint_keywords), v.auto_channel, v.gift_ratio,
            json.dumps(s.model_dump(), ensure_ascii=False), s.phone_region,
        ))
    con.execute(f"CREATE OR REPLACE TABLE ops.shops ({SHOP_COLUMNS})")
    placeholders = ", ".join("?" * len(rows[0]))
    con.executemany(f"INSERT INTO ops.shops VALUES ({placeholders})", rows)
    con.execute("CREATE OR REPLACE TABLE ops.retired_shops (shop_id VARCHAR NOT NULL)")
    if settings.retired_shops:
        con.executemany("INSERT INTO ops.retired_shops VALUES (?)", [[s] for s in settings.retired_shops])
    shop_macros(con, [(s.shop_id, s.timezone) for s in settings.shops])
    # the staging SQL's phone functions (crm_e164, crm_phone_problem: Python UDFs), on every connection that
    # stages: staging needs the shop macros above, so it never runs on a connection this has not set up.
    # Then, once per database, phones stored before E.164 are converted
    phones.register(con)
    phones.convert_stored(con)


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def shop_macros(con: duckdb.DuckDBPyConnection, zones: list[tuple[str, str]]) -> None:
    """Per-shop time-zone macros with each zone as a literal (DuckDB's timezone() is ~15x slower when the
    zone varies per row). An unknown shop gives NULL.
      crm_shop_local(shop, ts)       instant -> local wall-clock timestamp
      crm_shop_local_date(shop, ts)  instant -> local date
      crm_shop_utc(shop, local)      local wall-clock timestamp -> instant (fold=0, see crm_utc)
      crm_shop_ts(text, shop)        ISO text -> instant (naive text is the shop's local time)"""
    def case(expr: str) -> str:
        branches = " ".join(f"WHEN {_lit(shop)} THEN {expr.format(tz=_lit(tz))}" for shop, tz in zones)
        return f"CASE shop {branches} END"

    con.execute(f"CREATE OR REPLACE TEMP MACRO crm_shop_local(shop, ts) AS {case('timezone({tz}, ts)')}")
    con.execute("CREATE OR REPLACE TEMP MACRO crm_shop_local_date(shop, ts) AS CAST(crm_shop_local(shop, ts) AS DATE)")
    con.execute(f"CREATE OR REPLACE TEMP MACRO crm_shop_utc(shop, l) AS {case('crm_utc(l, {tz})')}")
    con.execute("CREATE OR REPLACE TEMP MACRO crm_shop_ts(t, shop) AS CASE WHEN crm_has_offset(t) THEN crm_ts_aware(t) "
                "WHEN crm_is_wall_clock(t) THEN crm_shop_utc(shop, try_cast(t AS TIMESTAMP)) END")
