"""The lake's daily upkeep (docs/rules.md §10): DuckLake's own functions, one by one, each timed, in the order DuckLake's
CHECKPOINT runs them:

1. ``ducklake_flush_inlined_data``: the rows of small inserts, kept in the catalog, written out as Parquet;
2. ``ducklake_merge_adjacent_files``: a table's many small files (one per commit) merged into fewer;
3. ``ducklake_expire_snapshots``: snapshots older than `keep` forgotten (time travel reaches back `keep`);
4. ``ducklake_cleanup_old_files``: the files no snapshot still needs, older than `keep`, deleted.

A reader of an older snapshot keeps reading: a file is deleted only once no snapshot younger than `keep` names it.
On the DuckDB file there is nothing of this to do (DuckDB reuses the file's free blocks itself)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import duckdb

from crm.storage.layout import LAKE


@dataclass
class Upkeep:
    files_before: int = 0
    files_after: int = 0
    snapshots_before: int = 0
    snapshots_after: int = 0
    steps: dict[str, tuple[int, float]] = field(default_factory=dict)    # step -> (rows it returned, seconds)


def _files(con) -> int:
    """The Parquet data files the lake's tables are made of now."""
    tables = con.execute("SELECT table_schema, table_name FROM information_schema.tables WHERE table_catalog = ? "
                         "AND table_type = 'BASE TABLE'", [LAKE]).fetchall()
    return sum(con.execute(f"SELECT count(*) FROM ducklake_list_files('{LAKE}', ?, schema => ?)", [t, s]).fetchone()[0]
               for s, t in tables)


def _snapshots(con) -> int:
    return con.execute(f"SELECT count(*) FROM ducklake_snapshots('{LAKE}')").fetchone()[0]


def maintain(con: duckdb.DuckDBPyConnection, now: datetime, keep: timedelta) -> Upkeep:
    """The four steps on the lake of `con` (a lake connection), as of `now`."""
    up = Upkeep(files_before=_files(con), snapshots_before=_snapshots(con))
    horizon = now - keep
    for name, sql, params in (
        ("flush inlined data", f"CALL ducklake_flush_inlined_data('{LAKE}')", []),
        ("merge adjacent files", f"CALL ducklake_merge_adjacent_files('{LAKE}')", []),
        ("expire snapshots", f"CALL ducklake_expire_snapshots('{LAKE}', older_than => ?::TIMESTAMPTZ)", [horizon]),
        ("clean up old files", f"CALL ducklake_cleanup_old_files('{LAKE}', older_than => ?::TIMESTAMPTZ)", [horizon]),
    ):
        began = time.perf_counter()
        rows = con.execute(sql, params).fetchall()
        up.steps[name] = (len(rows), time.perf_counter() - began)
    up.files_after, up.snapshots_after = _files(con), _snapshots(con)
    return up
