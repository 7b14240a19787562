"""DuckDB connections and the SQL files of the project.

One DuckDB file holds everything. Writers open it through :func:`connect`, which creates the schema
and the parsing macros; readers can use ``read_only=True``. DuckDB allows one writing process at a
time, so a writer that meets a lock waits and retries for a while before giving up with a clear error.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import re
import struct
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Iterator

import duckdb

from crm import analytics_copy, phones

log = logging.getLogger("crm.db")

_REPO = Path(__file__).resolve().parent.parent


def asset_dir(name: str) -> Path:
    """`sql/` or `templates/`: beside the package in a checkout, inside it in a wheel."""
    for candidate in (_REPO / name, Path(__file__).resolve().parent / "_assets" / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"cannot find the project's {name}/ folder")


_INCLUDE = re.compile(r"^-- @include (\S+\.sql)[ \t]*$", re.M)


_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def literal(value) -> str:
    """`value` as a DuckDB SQL literal: NULL, a boolean, a number, a quoted string, a DATE, TIMESTAMP or TIMESTAMPTZ,
    an INTERVAL, or a list of these."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value!r}::DOUBLE" if math.isfinite(value) else f"'{value}'::DOUBLE"
    if isinstance(value, Decimal):
        return f"'{value}'::DECIMAL(38, {max(0, -value.as_tuple().exponent)})" if value.is_finite() else f"'{value}'::DOUBLE"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, datetime):
        kind = "TIMESTAMP" if value.tzinfo is None or value.utcoffset() is None else "TIMESTAMPTZ"
        return f"{kind} '{value.isoformat(sep=' ')}'"
    if isinstance(value, date):
        return f"DATE '{value.isoformat()}'"
    if isinstance(value, timedelta):
        return f"to_microseconds({(value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds})"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    raise TypeError(f"no SQL literal for a {type(value).__name__}")


def inline(sql: str, params: dict) -> str:
    """`sql` with each `$name` that `params` holds written as its literal (other `$` words are left as they are).
    The commands run their statements so, not with DuckDB's parameters: duckdb 1.5.5's Python binding checks every
    parameter value against pandas.NaT and pandas.NA, which imports pandas (~0.45 s) in a command that needs
    none of it (a plan, a backfill)."""
    return _PARAM.sub(lambda m: literal(params[m[1]]) if m[1] in params else m[0], sql)


@cache
def sql_text(relative: str) -> str:
    """The text of a SQL file under sql/, e.g. ``sql_text("staging/stg_orders.sql")``. A line
    ``-- @include marts/_effect_counts.sql`` stands for that file's text: the end a whole model and its
    incremental twin share (the days it refreshes), written once."""
    text = (asset_dir("sql") / relative).read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda m: sql_text(m.group(1)), text)


def repeated_keys(con, rows: str, key: tuple[str, ...] | list[str], into: str, params: dict | None = None) -> int:
    """Temp table `into`: the keys that repeat among `rows` (a table, or a parenthesised query; `params` its
    parameters), with how often (`n`); returns how many. Grouped by the key's 64-bit hash first (an integer: much
    cheaper than a text key), into `<into>_hash`; most runs' keys all come once, and then that is the only pass
    over the rows. Only when some hash repeats are the rows of those hashes grouped exactly, so two keys that share
    a hash are told apart. (One statement doing both read the rows twice: at 10M orders 1.6 s instead of 0.9 s.)"""
    using = ", ".join(key)
    params = params or {}
    con.execute(f"CREATE OR REPLACE TEMP TABLE {into}_hash AS SELECT hash({using}) AS h FROM {rows} AS r "
                "GROUP BY 1 HAVING count(*) > 1", params)
    try:
        if con.execute(f"SELECT count(*) FROM {into}_hash").fetchone()[0] == 0:
            con.execute(f"CREATE OR REPLACE TEMP TABLE {into} AS SELECT {using}, 0::BIGINT AS n FROM {rows} AS r "
                        "WHERE false", params)
            return 0
        con.execute(f"CREATE OR REPLACE TEMP TABLE {into} AS SELECT {using}, count(*) AS n FROM {rows} AS r "
                    f"WHERE hash({using}) IN (SELECT h FROM {into}_hash) GROUP BY {using} HAVING count(*) > 1", params)
        return con.execute(f"SELECT count(*) FROM {into}").fetchone()[0]
    finally:
        con.execute(f"DROP TABLE IF EXISTS {into}_hash")


class DatabaseLocked(Exception):
    pass


# --------------------------------------------------------------------------------------------------
# DuckDB's resources. DuckDB's own default takes 80 % of the machine's memory and every core, which a process
# given the whole machine (a scheduled ingest of 10M orders) would use; the project bounds it instead and lets
# DuckDB spill to disk, beside the database (DuckDB's temp_directory default, `<db>.tmp`, removed when the
# connection closes).
#   CRM_DUCKDB_MEMORY   DuckDB's memory_limit, e.g. '3GB' or '1.5GiB'; default 25 % of the machine's memory
#                       (or of its cgroup's limit), at least 512 MiB and at most 2.5 GiB: an ingest of 10M
#                       orders with validation and its first plan then stay under 4 GiB of peak RSS
#   CRM_DUCKDB_THREADS  DuckDB's threads; default: DuckDB's own (the cores)

MEMORY_CAP = int(2.5 * 2**30)
MEMORY_FLOOR = 512 * 2**20


def _machine_memory() -> int | None:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = None
    try:                                                        # a container's limit, when it has one
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total or int(limit), int(limit))
    except OSError:
        pass
    return total


def memory_limit() -> str:
    """DuckDB's memory_limit for every connection: CRM_DUCKDB_MEMORY, else a quarter of the machine's
    memory within [512 MiB, 2.5 GiB]."""
    configured = os.environ.get("CRM_DUCKDB_MEMORY", "").strip()
    if configured:
        return configured
    total = _machine_memory()
    limit = MEMORY_CAP if total is None else max(MEMORY_FLOOR, min(MEMORY_CAP, total // 4))
    return f"{limit // 2**20}MiB"


def _resources(con: duckdb.DuckDBPyConnection) -> None:
    """memory_limit and threads on a new connection (no progress bar); a bad CRM_DUCKDB_MEMORY / CRM_DUCKDB_THREADS is
    one line."""
    # no progress bar of DuckDB's own on stdout (a query of over 2 s prints one there): stdout is the commands'
    con.execute("SET enable_progress_bar = false")
    threads = os.environ.get("CRM_DUCKDB_THREADS", "").strip()
    for name, value in (("memory_limit", memory_limit()), ("threads", threads)):
        if not value:
            continue
        try:
            con.execute(f"SET {name} = {_lit(value)}")
        except duckdb.Error as e:
            from crm.config import ConfigError

            con.close()
            var = "CRM_DUCKDB_MEMORY" if name == "memory_limit" else "CRM_DUCKDB_THREADS"
            raise ConfigError(f"{var}={value!r}: not a DuckDB {name} ({str(e).splitlines()[0]})") from None


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
    _resources(con)
    if not setup:
        return con
    if not read_only:
        con.execute(sql_text("schema.sql"))
        _views(con)
    con.execute(sql_text("macros.sql"))
    return con


SHOP_COLUMNS = """
    shop_id VARCHAR NOT NULL, name VARCHAR, timezone VARCHAR NOT NULL, locale VARCHAR, team_email VARCHAR,
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
def session(db: str | Path, settings, *, lake: bool = False,
            partition: int | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A writing connection with the configured shops (ops.shops and the per-shop macros) in place,
    closed afterwards: what every flow task works in. On `[storage] kind = "ducklake"` the connection is the lake
    layout's (crm/storage/layout.py: the same table names, `db` unused) for a step that runs there (`lake`: every
    flow's but the demo's); any other step refuses it before a file is touched (a deployment's run gets here without
    `crm`). `partition`: on a partitioned lake, that partition's lake and shops (crm/storage/partitions.py)."""
    from crm.storage import partitions

    partition = partitions.current(partition)
    kind = settings.storage.kind
    if kind != "duckdb" and not lake:
        from crm.config import ConfigError

        raise ConfigError(f'[storage] kind = "{kind}": not yet supported by this flow; docs/rules.md §10 lists the '
                          'flows that run on the lake; this one runs on the embedded DuckDB file only (kind = "duckdb")')
    if kind == "ducklake":
        from crm.storage import connect_layout

        settings = partitions.of(settings, partition)
        con = connect_layout(settings.storage, partitions.check(settings.storage, partition))
    else:
        if partition is not None:
            partitions.check(settings.storage, partition)       # one line: the file has no partitions
        con = connect(db)
    try:
        sync_shops(con, settings)
        yield con
    finally:
        con.close()


def reader(db: str | Path, settings) -> duckdb.DuckDBPyConnection:
    """A connection to read the storage, with the shops' time-zone macros (the caller closes it): the DuckDB file
    read-only (FileNotFoundError when there is none yet), or on `[storage] kind = "ducklake"` the lake layout's
    connection (crm/storage/layout.py; `db` unused). A report and `crm effect` read through it."""
    from crm.storage import partitions

    con = connect_storage(db, settings, read_only=True)
    try:
        shops = partitions.of(settings, partitions.current()).shops      # on a partitioned lake, its own
        shop_macros(con, [(s.shop_id, s.timezone) for s in shops])
    except BaseException:
        con.close()
        raise
    return con


def connect_storage(db: str | Path, settings, *, read_only: bool = False, wait_seconds: float = 30.0,
                    setup: bool = True) -> duckdb.DuckDBPyConnection:
    """:func:`connect` on the DuckDB file, or the lake layout's connection on `[storage] kind = "ducklake"` (its
    tables in place, `db` and the file's options unused: the lake has no lock to wait for). Writes to an
    operational table name it as crm.storage.layout.ops_table says."""
    if settings.storage.kind == "ducklake":
        from crm.storage import connect_layout, partitions

        return connect_layout(settings.storage, partitions.check(settings.storage, partitions.current()))
    return connect(db, read_only=read_only, wait_seconds=wait_seconds, setup=setup)


def publish(con: duckdb.DuckDBPyConnection, db: str | Path, settings) -> None:
    """After a run: the analysts' copy of the DuckDB file (publish_snapshot), in the background from
    `[storage] analytics_copy_background_mb`. The lake needs none: every process reads it as it is, each query
    seeing one committed snapshot. A copy that fails (a full disk, say) leaves the previous copy and the run's
    committed work as they are: it is said in one warning, as a background copy's failure is written to
    `<copy>.log` only (`crm storage sql` reports both until a copy succeeds), not raised: the task's retries would
    redo the whole run for a copy, and the command would end in a traceback after its work was done."""
    if settings.storage.kind == "duckdb":
        try:
            publish_snapshot(con, db, background_from=settings.storage.analytics_copy_background_mb << 20)
        except OSError as e:
            log.warning("%s; the run's work is saved, the analysts' copy stays the previous one (crm storage sql "
                        "says so until a copy succeeds)", str(e).splitlines()[0] if str(e) else type(e).__name__)


def analytics_path(db: str | Path) -> Path:
    """The read-only copy analysts open: data/crm.duckdb -> data/crm.analytics.duckdb."""
    db = Path(db)
    return db.with_name(f"{db.stem}.analytics{db.suffix or '.duckdb'}")


_COPIER = Path(__file__).with_name("analytics_copy.py")


def publish_snapshot(con: duckdb.DuckDBPyConnection, db: str | Path, *, background_from: int | None = None) -> Path:
    """Copy the database for analysts after a run, after a CHECKPOINT (the file is complete without its WAL), by a
    process of its own (crm/analytics_copy.py: a copy made here would drop this process's DuckDB lock), swapped in
    by rename: an analyst who has the previous copy open keeps reading it undisturbed.

    A file under `background_from` bytes (None: any file) is copied now, while this process holds it. A bigger one
    is copied just after this process closes it, by a process that keeps writers out until the copy is made; this
    one does not wait for it. If such a copy is already waiting for the file, it will copy this run's state too."""
    target = analytics_path(db)
    con.execute("CHECKPOINT")
    command = [sys.executable, "-I", str(_COPIER)]
    if background_from is None or os.path.getsize(db) < background_from:
        done = subprocess.run([*command, "now", str(db), str(target)], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True)
        if done.returncode:
            raise OSError((done.stderr.strip().splitlines() or ["the analysts' copy failed"])[-1])
        return target
    with open(analytics_copy.pending_path(target), "a+") as pending:
        # a reader's probe holds it for microseconds; a copier waiting for this file holds it until this run ends
        if not _flock(pending, fcntl.LOCK_EX, 0.2, every=0.01):
            return target                     # a copy waits for this file already: it will copy this run's state
        subprocess.Popen([*command, "after", str(db), str(target), str(pending.fileno())], pass_fds=(pending.fileno(),),
                         start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    return target                             # the child holds the pending lock now (the same open file)


def analytics_failure(db: str | Path) -> tuple[str, str] | None:
    """(when, why) of the last failure of the analysts' copy (crm/analytics_copy.py writes each one to
    `<copy>.log`) when no copy was made after it: the copy analysts read is then older than the latest run. None
    when the newest copy came after the last failure (a copy's file time is when it was written; on equal times,
    the copy is taken to be newer)."""
    target = analytics_path(db)
    log = analytics_copy.log_path(target)
    try:
        failed_at = log.stat().st_mtime_ns
        if target.stat().st_mtime_ns >= failed_at:
            return None
    except FileNotFoundError:
        return None                 # no failure, or no copy at all (readers then read the file itself)
    lines = log.read_text(errors="replace").strip().splitlines()
    if not lines:
        return None
    when, _, what = lines[-1].partition(" ")
    return when, what.partition(" failed: ")[2] or what


def analytics_ready(db: str | Path, wait_seconds: float = 60.0) -> bool:
    """Wait while a copy of the file for analysts is on its way or being swapped in (publish_snapshot), up to
    `wait_seconds`; False if one still was."""
    target = analytics_path(db)
    deadline = time.monotonic() + wait_seconds
    for path in (analytics_copy.pending_path(target), analytics_copy.lock_path(target)):
        if not path.exists():
            continue
        with open(path, "a+") as fh:
            if not _flock(fh, fcntl.LOCK_SH, deadline - time.monotonic()):
                return False
            fcntl.flock(fh, fcntl.LOCK_UN)
    return True


def _flock(fh, op: int, wait_seconds: float, *, every: float = 0.05, on_wait=None) -> bool:
    """flock(fh, op) without blocking, tried every `every` s for up to `wait_seconds` (at least once); `on_wait`
    is called once, at the first refusal. False if it was never granted."""
    deadline = time.monotonic() + wait_seconds
    told = False
    while True:
        try:
            fcntl.flock(fh, op | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if not told and on_wait:
                on_wait()
                told = True
            if time.monotonic() >= deadline:
                return False
            time.sleep(every)


@contextmanager
def exclusive(lock_file: str | Path, *, wait_seconds: float, on_wait=None) -> Iterator[None]:
    """One holder at a time across processes (an flock on `lock_file`); a second one waits, saying so
    once through `on_wait`, and gives up after `wait_seconds` with DatabaseLocked."""
    path = Path(lock_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        if not _flock(fh, fcntl.LOCK_EX, wait_seconds, every=0.2, on_wait=on_wait):
            raise DatabaseLocked(f"{path}: still held by another run after {wait_seconds:.0f} s")
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# the marts that are views (after sql/schema.sql, which creates and alters the tables they read):
#   customer_segments  ops.segment_rows, each as of the one T in ops.segment_state
#   reminder_effect    one row per shop and local day: reminder_effect_segments' rows with segment and channel 'all'
#                      (the day's totals), without those two columns (`*`: a column added to the table shows here)
VIEWS = {
    "customer_segments": "SELECT state.as_of, r.shop_id, r.customer_id, r.paid_orders, r.lifetime_value, "
                         "r.last_paid_at, r.member_level, r.segment "
                         "FROM ops.segment_rows AS r CROSS JOIN ops.segment_state AS state",
    "reminder_effect": "SELECT * EXCLUDE (segment, channel) FROM marts.reminder_effect_segments "
                       "WHERE segment = 'all' AND channel = 'all'",
}


def _views(con: duckdb.DuckDBPyConnection) -> None:
    """Create the views of VIEWS that are missing. A file from before a view held a table under its name: its
    rows are derived, so it is dropped and the next plan rebuilds them (for reminder_effect: a new REPORTS_VERSION,
    transforms/plan.py)."""
    names = ", ".join(f"'{name}'" for name in VIEWS)
    kinds = dict(con.execute("SELECT table_name, table_type FROM information_schema.tables "
                             f"WHERE table_schema = 'marts' AND table_name IN ({names})").fetchall())
    for name, select in VIEWS.items():
        if kinds.get(name) == "BASE TABLE":
            con.execute(f"DROP TABLE marts.{name}")
        if kinds.get(name) != "VIEW":
            con.execute(f"CREATE VIEW marts.{name} AS {select}")


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
    # written again only when the configuration changed: binding 200 shops' values costs ~0.4 s a command
    fingerprint = hashlib.sha256(json.dumps([SHOP_COLUMNS, rows, list(settings.retired_shops)], ensure_ascii=False,
                                            default=str).encode()).hexdigest()
    unchanged = con.execute(inline("SELECT count(*) FROM ops.shops_fingerprint WHERE fingerprint = $f",
                                   {"f": fingerprint})).fetchone()[0] and \
        con.execute("SELECT count(*) FROM ops.shops").fetchone()[0] == len(rows)
    if not unchanged:
        con.execute(f"CREATE OR REPLACE TABLE ops.shops ({SHOP_COLUMNS})")
        # one statement for all shops (executemany costs ~8 ms a row: 1.5 s for 200 shops), as literals (`inline`)
        if rows:                      # none: a partition of a lake that no shop falls in (yet)
            con.execute("INSERT INTO ops.shops VALUES " + ", ".join(
                "(" + ", ".join(map(literal, row)) + ")" for row in rows))
        con.execute("CREATE OR REPLACE TABLE ops.retired_shops (shop_id VARCHAR NOT NULL)")
        if settings.retired_shops:
            con.execute("INSERT INTO ops.retired_shops VALUES " + ", ".join(
                f"({literal(s)})" for s in settings.retired_shops))
        con.execute("DELETE FROM ops.shops_fingerprint")
        con.execute(f"INSERT INTO ops.shops_fingerprint VALUES ({literal(fingerprint)})")
    shop_macros(con, [(s.shop_id, s.timezone) for s in settings.shops])
    # once per database, phones stored before E.164 are converted. The staging SQL's phone functions (crm_e164,
    # crm_phone_problem: Python UDFs) are made where they are used: by the ingest before it stages
    # (transforms/ingest.py) and by that conversion; making them imports numpy (~0.2 s), which a plan needs not
    if con.execute("SELECT current_database()").fetchone()[0] != "lake":   # a lake is E.164 from its start
        phones.convert_stored(con)


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _posix_fixed_offset(footer: str) -> int | None:
    """UTC offset in seconds of a POSIX TZ string without daylight saving time ('CST-8' -> 28800), else None."""
    m = re.fullmatch(r"(?:<[^>]+>|[A-Za-z]{3,})([+-]?)(\d{1,3})(?::(\d{2}))?(?::(\d{2}))?", footer)
    if not m:
        return None
    seconds = int(m[2]) * 3600 + int(m[3] or 0) * 60 + int(m[4] or 0)
    return seconds if m[1] == "-" else -seconds


@cache
def fixed_offset(zone: str) -> tuple[int, int] | None:
    """(since, offset): a zone whose UTC offset has not changed since the instant `since` (epoch seconds) and
    will not (its rule for the future has no daylight saving time), read from its compiled zone file, e.g.
    Asia/Shanghai: +8 h since 1991. None for zones with daylight saving time, or when the file cannot say."""
    data = phones._zoneinfo_file(zone)
    if not data or data[:4] != b"TZif" or data[4] < ord("2"):
        return None
    try:
        def counts(at: int) -> tuple[int, ...]:
            return struct.unpack(">6l", data[at + 20:at + 44])     # isut, isstd, leap, times, types, chars
        isut, isstd, leap, n_times, n_types, n_chars = counts(0)
        at = 44 + n_times * 5 + n_types * 6 + n_chars + leap * 8 + isstd + isut      # past the 32-bit block
        isut, isstd, leap, n_times, n_types, n_chars = counts(at)
        at += 44
        times = struct.unpack(f">{n_times}q", data[at:at + 8 * n_times])
        at += 8 * n_times + n_times + n_types * 6 + n_chars + leap * 12 + isstd + isut
        offset = _posix_fixed_offset(data[at:].strip(b"\n").decode("ascii"))
    except (struct.error, UnicodeDecodeError):
        return None
    if offset is None:
        return None
    return (max(times) if times else -(2**40)), offset


def _fixed_zones(con: duckdb.DuckDBPyConnection, zones: set[str]) -> dict[str, tuple[str, int]]:
    """The zones that get the fixed-offset fast path: {zone: (local wall-clock time it holds from, offset in
    µs)}. A zone qualifies when its zone file says its offset is fixed (fixed_offset) and DuckDB's own time
    zone data (ICU, what crm_utc uses) agrees at 240 times over the 60 years after that point."""
    out = {}
    for zone in sorted(zones):
        fixed = fixed_offset(zone)
        if fixed is None:
            continue
        since, offset = fixed
        start = max(since, -(2**31)) + 2 * 86400          # two days past the last change: no local time is ambiguous
        # the zone as a literal: DuckDB binds a zone given as a parameter slowly (~2 s the first time)
        agree = con.execute(
            f"SELECT bool_and(crm_utc(l, {_lit(zone)}) = u AND timezone({_lit(zone)}, u) = l) FROM (SELECT l, "
            f"make_timestamptz(epoch_us(l) - {int(offset) * 1_000_000}) AS u FROM (SELECT make_timestamp(({int(start)} "
            f"+ i * 7889400 + i * i * 61) * 1000000) AS l FROM range(240) t(i)))").fetchone()[0]
        if agree:
            out[zone] = (datetime.fromtimestamp(start, timezone.utc).strftime("%Y-%m-%d %H:%M:%S"), offset * 1_000_000)
    return out


# the years a zone with daylight saving time is converted in by arithmetic (dst_years): before and after them, ICU
DST_YEARS = (2000, 2040)


@cache
def dst_years(zone: str) -> tuple[tuple[int, int, int, int, int, int, int], ...] | None:
    """A zone's UTC offsets year by year over DST_YEARS, from its zone file (Python's zoneinfo): per year (offset at
    its start, first change, offset after it, second change, offset after that, and each change's wall-clock
    time: the instant plus the larger of the offsets around it, from which a local time takes the new offset),
    all in µs (a missing change: 2**62). A wall-clock time that the spring change skips takes the offset from
    before it, one that the autumn change repeats is the first: crm_utc's rule (Python's fold=0). None when a
    year has more than two changes or one within three days of New Year (the year's index would be ambiguous),
    or the zone is unknown: such a zone stays with ICU."""
    import zoneinfo
    from datetime import timedelta

    try:
        tz = zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None

    def off(t: int) -> int:
        return int(datetime.fromtimestamp(t, tz).utcoffset() // timedelta(seconds=1))

    first, last = DST_YEARS
    start = int(datetime(first, 1, 1, tzinfo=timezone.utc).timestamp()) - 4 * 86400
    end = int(datetime(last, 1, 1, tzinfo=timezone.utc).timestamp()) + 4 * 86400
    changes: list[tuple[int, int, int]] = []          # (instant, offset before, offset after), seconds
    t, o = start, off(start)
    while t < end:
        n = min(t + 3 * 86400, end)                   # no zone changes and changes back within three days
        if off(n) != o:
            lo, hi = t, n
            while hi - lo > 1:                        # to the second
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if off(mid) == o else (lo, mid)
            changes.append((hi, o, off(hi)))
            o = off(hi)
            t = hi
        else:
            t = n
    never, us = 2**62, 1_000_000
    years = []
    for year in range(first, last):
        y0 = int(datetime(year, 1, 1, tzinfo=timezone.utc).timestamp())
        y1 = int(datetime(year + 1, 1, 1, tzinfo=timezone.utc).timestamp())
        near = [c for c in changes if y0 - 3 * 86400 <= c[0] < y1 + 3 * 86400]
        inside = [c for c in near if y0 + 3 * 86400 <= c[0] < y1 - 3 * 86400]
        if near != inside or len(inside) > 2:
            return None
        o0 = off(y0)
        o1 = inside[0][2] if inside else o0
        o2 = inside[1][2] if len(inside) > 1 else o1
        t1, t2 = ([c[0] * us for c in inside] + [never, never])[:2]
        w1 = never if t1 == never else t1 + max(o0, o1) * us
        w2 = never if t2 == never else t2 + max(o1, o2) * us
        years.append((o0 * us, t1, o1 * us, t2, o2 * us, w1, w2))
    return tuple(years)


def _dst_sql(zone: str, years) -> str:
    """SQL template ('{l}') for a local wall-clock time in a zone with daylight saving time as an instant over
    DST_YEARS: the year's offsets picked from lists, plain arithmetic; outside the years, ICU (crm_utc)."""
    first, last = DST_YEARS
    col = dict(zip(("o0", "t1", "o1", "t2", "o2", "w1", "w2"), zip(*years)))
    lst = {name: "[" + ", ".join(map(str, col[name])) + "]" for name in ("o0", "o1", "o2", "w1", "w2")}
    li = f"(year({{l}}) - {first - 1})"
    le = "epoch_us({l})"
    return (f"CASE WHEN {{l}} >= TIMESTAMP '{first}-01-01' AND {{l}} < TIMESTAMP '{last}-01-01' THEN "
            f"make_timestamptz({le} - CASE WHEN {le} < {lst['w1']}[{li}] THEN {lst['o0']}[{li}] "
            f"WHEN {le} < {lst['w2']}[{li}] THEN {lst['o1']}[{li}] ELSE {lst['o2']}[{li}] END) "
            f"ELSE crm_utc({{l}}, {_lit(zone)}) END")


def _dst_zones(con: duckdb.DuckDBPyConnection, zones: set[str]) -> dict[str, str]:
    """The zones with daylight saving time whose local times become instants by arithmetic over DST_YEARS:
    {zone: SQL template}. A zone qualifies when its zone file gives at most two changes a year (dst_years) and
    DuckDB's own time zone data (ICU, what crm_utc uses) agrees around every change (17 times from 2 hours before
    to 2 hours after its wall-clock time, on both sides of each minute the offsets differ) and at noon on the 1st
    and 15th of every month: ~20 ms a zone. tests/test_ingest.py compares them every minute around every change."""
    out = {}
    first, last = DST_YEARS
    for zone in sorted(zones):
        years = dst_years(zone)
        if years is None or not any(y[1] != 2**62 for y in years):
            continue
        to_utc = _dst_sql(zone, years)
        near = sorted({w + m * 60_000_000 for y in years for w in (y[5], y[6]) if w != 2**62
                       for m in (-120, -61, -60, -59, -31, -30, -29, -1, 0, 1, 29, 30, 31, 59, 60, 61, 120)})
        agree = con.execute(
            f"SELECT bool_and({to_utc.format(l='l')} IS NOT DISTINCT FROM crm_utc(l, {_lit(zone)})) FROM ("
            f"SELECT make_timestamp(unnest(?::BIGINT[])) AS l UNION ALL SELECT make_timestamp(y, m, d, 12, 0, 0) "
            f"FROM range({first}, {last}) a(y), range(1, 13) b(m), (VALUES (1), (15)) c(d))", [near]).fetchone()[0]
        if agree:
            out[zone] = to_utc
    return out


def _to_utc(tz: str, l: str, fixed: dict[str, tuple[str, int]], dst: dict[str, str] | None = None) -> str:
    """SQL for the local wall-clock time `l` in zone `tz` as an instant: arithmetic for a fixed zone (after its
    last change) or a checked zone with daylight saving time (over DST_YEARS), else crm_utc (ICU)."""
    if dst and tz in dst:
        return dst[tz].format(l=l)
    if tz not in fixed:
        return f"crm_utc({l}, {_lit(tz)})"
    since, off = fixed[tz]
    return (f"CASE WHEN {l} >= TIMESTAMP '{since}' THEN make_timestamptz(epoch_us({l}) - {off}) "
            f"ELSE crm_utc({l}, {_lit(tz)}) END")


def _by_zone_name(zones, expr) -> str:
    """CASE zone WHEN '<zone>' THEN expr(zone) … END over `zones` (NULL for any other, or when there are none)."""
    if not zones:
        return "CAST(NULL AS TIMESTAMPTZ)"
    return "CASE zone " + " ".join(f"WHEN {_lit(tz)} THEN {expr(tz)}" for tz in zones) + " END"


def staging_zone_macros(con: duckdb.DuckDBPyConnection) -> None:
    """crm_zone_utc (and so crm_zone_ts, crm_landed_ts) again, with the configured zones that have daylight saving
    time converted by arithmetic too (_dst_zones): what the ingest's typing calls for millions of values (~15x
    faster than ICU's three calls in crm_utc). Only there: finding and checking a zone's years costs ~20 ms, and a
    plan, which converts few rows, binds the longer expressions more slowly than ICU converts them."""
    zones = sorted(r[0] for r in con.execute("SELECT DISTINCT timezone FROM ops.shops WHERE timezone IS NOT NULL").fetchall())
    fixed = _fixed_zones(con, set(zones))
    # a zone fixed only since DST_YEARS began (Asia/Tehran since 2022) is better by the year than fixed-then-ICU
    dst = _dst_zones(con, {z for z in zones if z not in fixed or fixed[z][0] >= str(DST_YEARS[0])})
    con.execute(f"CREATE OR REPLACE TEMP MACRO crm_zone_utc(zone, l) AS "
                f"{_by_zone_name(zones, lambda tz: _to_utc(tz, 'l', fixed, dst))}")


def shop_macros(con: duckdb.DuckDBPyConnection, zones: list[tuple[str, str]]) -> None:
    """Per-shop time-zone macros with each zone as a literal (DuckDB's timezone() is ~15x slower when the
    zone varies per row). An unknown shop gives NULL.
      crm_shop_local(shop, ts)       instant -> local wall-clock timestamp
      crm_shop_local_date(shop, ts)  instant -> local date
      crm_shop_utc(shop, local)      local wall-clock timestamp -> instant (fold=0, see crm_utc)
      crm_shop_ts(text, shop)        ISO text -> instant (naive text is the shop's local time)
    and the same by zone name, for SQL that has the zone at hand (staging joins ops.shops):
      crm_zone_utc(zone, local), crm_zone_ts(text, zone),
      crm_landed_ts(aware, wall, text, off, zone)   a landed timestamp (transforms/ingest.py: a Parquet
                                                TIMESTAMPTZ, a naive Parquet TIMESTAMP or text) -> instant, where
                                                off = crm_has_offset(text) and wall = the naive Parquet value, else
                                                crm_wall_clock(text, off): columns the staging model makes first
                                                (sql/macros.sql says why); the naive Parquet value is placed as its
                                                text would be, without printing and parsing it
    One CASE branch per zone (the shops of a zone in one IN list: a group of a few hundred shops has a few
    zones). A zone whose offset is fixed (Asia/Shanghai since 1991, Asia/Tokyo, …: _fixed_zones) is plain
    arithmetic after its last change, ~30x faster than DuckDB's ICU conversion, and exactly the same. The ingest
    makes crm_zone_utc again with the zones that have daylight saving time by arithmetic too (staging_zone_macros)."""
    by_zone: dict[str, list[str]] = {}
    for shop, tz in zones:
        by_zone.setdefault(tz, []).append(shop)
    fixed = _fixed_zones(con, set(by_zone))

    def to_utc(tz: str, l: str) -> str:
        return _to_utc(tz, l, fixed)

    def to_local(tz: str, ts: str) -> str:
        if tz not in fixed:
            return f"timezone({_lit(tz)}, {ts})"
        since, off = fixed[tz]
        return (f"CASE WHEN {ts} >= TIMESTAMPTZ '{since}+00' THEN make_timestamp(epoch_us({ts}) + {off}) "
                f"ELSE timezone({_lit(tz)}, {ts}) END")

    # no shops (a lake's partition that no shop falls in): the macros exist and answer NULL
    def by_shop(expr, null: str) -> str:
        branches = " ".join(f"WHEN shop IN ({', '.join(_lit(s) for s in shops)}) THEN {expr(tz)}"
                            for tz, shops in by_zone.items())
        return f"CASE {branches} END" if branches else f"CAST(NULL AS {null})"

    con.execute("CREATE OR REPLACE TEMP MACRO crm_shop_local(shop, ts) AS "
                f"{by_shop(lambda tz: to_local(tz, 'ts'), 'TIMESTAMP')}")
    con.execute("CREATE OR REPLACE TEMP MACRO crm_shop_local_date(shop, ts) AS CAST(crm_shop_local(shop, ts) AS DATE)")
    con.execute(f"CREATE OR REPLACE TEMP MACRO crm_shop_utc(shop, l) AS {by_shop(lambda tz: to_utc(tz, 'l'), 'TIMESTAMPTZ')}")
    con.execute("CREATE OR REPLACE TEMP MACRO crm_shop_ts(t, shop) AS CASE WHEN crm_has_offset(t) THEN crm_ts_aware(t) "
                "WHEN crm_is_wall_clock(t) THEN crm_shop_utc(shop, try_cast(t AS TIMESTAMP)) END")
    con.execute(f"CREATE OR REPLACE TEMP MACRO crm_zone_utc(zone, l) AS {_by_zone_name(by_zone, lambda tz: to_utc(tz, 'l'))}")
    con.execute("CREATE OR REPLACE TEMP MACRO crm_zone_ts(t, zone) AS CASE WHEN crm_has_offset(t) THEN crm_ts_aware(t) "
                "WHEN crm_is_wall_clock(t) THEN crm_zone_utc(zone, try_cast(t AS TIMESTAMP)) END")
    con.execute("CREATE OR REPLACE TEMP MACRO crm_landed_ts(aware, wall, t, off, zone) AS "
                "coalesce(aware, crm_zone_utc(zone, wall), CASE WHEN off THEN crm_ts_aware(t) END)")
