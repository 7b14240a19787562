"""DuckDB connections and the SQL files of the project.

One DuckDB file holds everything. Writers open it through :func:`connect`, which creates the schema
and the parsing macros; readers can use ``read_only=True``. DuckDB allows one writing process at a
time, so a writer that meets a lock waits and retries for a while before giving up with a clear error.
"""

from __future__ import annotations

import json
import time
from functools import cache
from pathlib import Path

import duckdb

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


def connect(path: str | Path, *, read_only: bool = False, wait_seconds: float = 30.0) -> duckdb.DuckDBPyConnection:
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
    if not read_only:
        con.execute(sql_text("schema.sql"))
    con.execute(sql_text("macros.sql"))
    return con


def sync_shops(con: duckdb.DuckDBPyConnection, settings) -> None:
    """Mirror the configured shops into ops.shops (the SQL models join it for time zones)."""
    rows = [
        (s.shop_id, s.display_name, s.timezone, s.locale, i, json.dumps(s.model_dump(), ensure_ascii=False))
        for i, s in enumerate(settings.shops)
    ]
    con.execute("DELETE FROM ops.shops")
    con.executemany("INSERT INTO ops.shops VALUES (?, ?, ?, ?, ?, ?)", rows)
