"""The tables on the lake layout (docs/rules.md §10): the same names as in the DuckDB file, placed so that the SQL
models run unchanged.

On a lake connection the current database is the DuckLake (`USE lake`): `staging.x`, `marts.x` and `ops.x` name its
tables. The operational tables that rows must be unique in, claimed from or updated one by one (OPERATIONAL:
the outbox, delivery receipts, replies, opt-outs, visit outcomes, the manifest, the file hashes, the quarantine,
the sources' watermarks) live in PostgreSQL (`opsdb.public.x`, `[storage] ops_dsn`); `lake.ops.x` is a view on
each, so every read in sql/ finds them where it always did. The rest of `ops.*` is the plan's own derived state
(segments as of T, the report's buckets, the effect's rows, the shops as configured): it is written in the same
lake transaction as the marts it belongs to, so a plan is still all or nothing.

One DuckDB transaction writes one database: a step that writes both (an ingest: staging in the lake, the
manifest and quarantine in PostgreSQL) writes the lake first and PostgreSQL after its commit, each write
idempotent (transforms/ingest.py). DuckLake has no PRIMARY KEY, UNIQUE or sequences: keys are dropped from the
lake's copy of sql/schema.sql (uniqueness is where it matters, in PostgreSQL), and the one sequence
(ops.ingest_run_seq) is a PostgreSQL sequence.
"""

from __future__ import annotations

import hashlib
import re
import time

import duckdb

from crm.db import sql_text

LAKE, OPS = "lake", "opsdb"

# ops.* tables that live in PostgreSQL (the rest of ops.* lives in the lake)
OPERATIONAL = ("ingest_runs", "ingested_files", "file_hashes", "source_watermarks", "quarantine", "messages",
               "delivery_receipts", "replies", "suppressions", "visit_outcomes")

_TABLE = re.compile(r"^(?:CREATE TABLE IF NOT EXISTS|ALTER TABLE)\s+(\w+)\.(\w+)", re.I)
_KEY = re.compile(r"\s+PRIMARY KEY(?=[\s,)])", re.I)
_TABLE_KEY = re.compile(r",\s*PRIMARY KEY\s*\([^)]*\)", re.I)


def on_lake(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether `con` is a lake connection (its current database is the DuckLake)."""
    return con.execute("SELECT current_database()").fetchone()[0] == LAKE


def lake_ddl(sql: str) -> str:
    """A CREATE TABLE without its keys (DuckLake refuses PRIMARY KEY and UNIQUE)."""
    return _TABLE_KEY.sub("", _KEY.sub("", sql))


def statements(sql: str) -> list[str]:
    """sql/schema.sql's statements, comments removed (none of them holds a ';' or '--' in a literal)."""
    text = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [s.strip() for s in text.split(";") if s.strip()]


def create(con: duckdb.DuckDBPyConnection) -> None:
    """sql/schema.sql on the lake layout: each statement where its table lives, then a view in lake.ops on each
    operational table. Idempotent, like the file itself; skipped whole (~0.3 s of DDL round trips to PostgreSQL)
    when the lake records that this very schema was made there (lake.ops.layout_made)."""
    text = sql_text("schema.sql")
    made = hashlib.sha256((text + "\n".join(OPERATIONAL)).encode()).hexdigest()
    try:
        done = con.execute(f"SELECT count(*) FROM {LAKE}.ops.layout_made WHERE schema_hash = ?", [made]).fetchone()[0]
    except duckdb.CatalogException:
        done = 0                                              # a new lake
    if not done:
        _tables(con, text)
    _views(con)
    if not done:
        con.execute(f"CREATE OR REPLACE TABLE {LAKE}.ops.layout_made AS SELECT ? AS schema_hash, now() AS made_at",
                    [made])


def _tables(con: duckdb.DuckDBPyConnection, text: str) -> None:
    """Every statement of sql/schema.sql where its table lives: an operational one in PostgreSQL, the rest in the
    lake without keys."""
    for schema in ("staging", "marts", "ops"):
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {LAKE}.{schema}")
    for stmt in statements(text):
        head = stmt.split(None, 3)
        if head[0].upper() == "CREATE" and head[1].upper() == "SCHEMA":
            continue
        if head[0].upper() == "CREATE" and head[1].upper() == "SEQUENCE":
            # the one sequence: ops.ingest_run_seq, in PostgreSQL (next_ingest_id)
            _shared_ddl(con, f"CALL postgres_execute('{OPS}', 'CREATE SEQUENCE IF NOT EXISTS ingest_run_seq')")
            continue
        m = _TABLE.match(stmt)
        if m and m.group(1).lower() == "ops" and m.group(2).lower() in OPERATIONAL:
            stmt = stmt[:m.start(1)] + f"{OPS}." + stmt[m.start(2):]
            # the manifest is shared by a lake's partitions: each loads a content once (the unique index below)
            _shared_ddl(con, lake_ddl(stmt) if m.group(2).lower() == "ingested_files" else stmt)
        else:
            con.execute(lake_ddl(stmt))
    _shared_ddl(con, f"CALL postgres_execute('{OPS}', 'CREATE UNIQUE INDEX IF NOT EXISTS ingested_files_once "
                     "ON ingested_files (file_hash, coalesce(lake_partition, -1))')")


def _shared_ddl(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """A CREATE … IF NOT EXISTS in PostgreSQL, which the partitions' first runs may all send at once: PostgreSQL
    lets two such creations of one table race (one fails on its catalog's unique index although the table is
    there a moment later), so that failure is tried again, after which IF NOT EXISTS finds the table."""
    for attempt in range(5):
        try:
            con.execute(sql)
            return
        except duckdb.Error as e:
            if attempt == 4 or not ("already exists" in str(e) or "pg_type_typname_nsp_index" in str(e)
                                    or "pg_class_relname_nsp_index" in str(e)):
                raise
            time.sleep(0.2 * (attempt + 1))


def _views(con: duckdb.DuckDBPyConnection) -> None:
    """A view in lake.ops on each operational table, made again only when missing or when its table gained a
    column (the outbox's claim columns: crm/storage/outbox.py; each view made is a commit of the lake)."""
    widths = {(db, t): n for db, t, n in con.execute(
        "SELECT database_name, table_name, count(*) FROM duckdb_columns() WHERE (database_name = ? AND schema_name = "
        "'ops') OR (database_name = ? AND schema_name = 'public') GROUP BY ALL", [LAKE, OPS]).fetchall()}
    for name in OPERATIONAL:
        if widths.get((LAKE, name)) != widths.get((OPS, name)):
            con.execute(f"CREATE OR REPLACE VIEW {LAKE}.ops.{name} AS SELECT * FROM {OPS}.{name}")


def next_ingest_id(con: duckdb.DuckDBPyConnection) -> int:
    """The next ingest's id: from ops.ingest_run_seq (DuckDB) or its PostgreSQL twin (lake)."""
    if on_lake(con):
        return con.execute(f"SELECT n FROM postgres_query('{OPS}', 'SELECT nextval(''ingest_run_seq'') AS n')"
                           ).fetchone()[0]
    return con.execute("SELECT nextval('ops.ingest_run_seq')").fetchone()[0]


class Deferred:
    """A step's writes to operational tables (`names`) while a lake transaction is open: on the lake they go to
    temporary tables (`self("quarantine")` names the one to write), written to PostgreSQL in one transaction of
    its own by :meth:`flush` after the lake's commit; on the DuckDB file they go to `ops.<name>` in the step's one
    transaction, and flush does nothing."""

    def __init__(self, con: duckdb.DuckDBPyConnection, names: tuple[str, ...]):
        self.con, self.names, self.lake = con, names, on_lake(con)
        for name in names if self.lake else ():
            con.execute(f"CREATE OR REPLACE TEMP TABLE _ops_{name} AS SELECT * FROM {OPS}.{name} LIMIT 0")

    def __call__(self, name: str) -> str:
        return f"_ops_{name}" if self.lake and name in self.names else f"ops.{name}"

    def flush(self) -> None:
        if not self.lake:
            return
        from crm.db import transaction

        with transaction(self.con):
            for name in self.names:
                self.con.execute(f"INSERT INTO {OPS}.{name} BY NAME SELECT * FROM _ops_{name}")
        self.drop()

    def drop(self) -> None:
        for name in self.names if self.lake else ():
            self.con.execute(f"DROP TABLE IF EXISTS _ops_{name}")


# DuckDB's own words when the postgres extension's COPY into a PostgreSQL table fails (PostgreSQL's reason, in the
# server's language, follows them)
_COPY_FAILED = "Failed to copy data"


def skip_what_others_wrote(write, attempts: int = 4):
    """`write()`, an INSERT … ON CONFLICT DO NOTHING into a PostgreSQL table through the lake connection, again
    if another session's commit made it fail.

    DuckDB's postgres extension looks for the conflicts first and then writes the rows with COPY, which knows no
    ON CONFLICT: a row with the same key that another session commits in between fails the whole COPY with a
    duplicate key. Run again, the statement finds that row and skips it. A failure that is not a COPY's is raised
    at once; a COPY that still fails after `attempts` (another reason: a NOT NULL, a lost connection) is raised."""
    for attempt in range(attempts):
        try:
            return write()
        except duckdb.Error as e:
            if _COPY_FAILED not in str(e) or attempt == attempts - 1:
                raise


def ops_table(con: duckdb.DuckDBPyConnection, name: str) -> str:
    """Where to write ops.<name> outside a transaction: the PostgreSQL table on the lake for an operational one."""
    return f"{OPS}.{name}" if name in OPERATIONAL and on_lake(con) else f"ops.{name}"
