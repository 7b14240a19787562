"""Ingest a landing folder into DuckDB (docs/rules.md §1).

The steps, all set-based in DuckDB (Python only loops over entities and files, never rows):

1. *discover*: every file under ``<landing>/<entity>/``, hashed; files whose content is already in
   the manifest ``ops.ingested_files`` are skipped (a renamed copy is the same content).
2. *land*: each new file is read by DuckDB with every column as text into ``land_<entity>``.
   A file that cannot be read at all is quarantined whole; a malformed CSV or JSON line is
   quarantined on its own.
3. *stage*: ``sql/staging/stg_<entity>.sql`` types every landed row and names what is wrong with
   it. Bad rows go to ``ops.quarantine`` with file, row and reason; good rows are merged into
   ``staging.<entity>``, the newest version of each key winning (``updated_at``, then the later drop).
4. *validate*: Great Expectations on the rows this run loaded; a failed critical expectation rolls
   the whole run back (nothing is half-loaded, and the files stay new for the next try).

The whole run is one transaction.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import duckdb

from crm.db import sql_text, transaction

# --------------------------------------------------------------------------------------------------
# the entities of docs/rules.md §1, in load order (reviews and suppressions look up orders and customers)


@dataclass(frozen=True)
class Entity:
    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]              # empty: the whole row is the key (suppressions)
    versioned: bool                   # True: the newest updated_at wins; else the later drop wins


ENTITIES: dict[str, Entity] = {
    e.name: e
    for e in (
        Entity("customers", ("customer_id", "shop_id", "name", "phone", "email", "city", "member_level",
                             "registered_at", "opt_out", "updated_at"), ("customer_id",), True),
        Entity("products", ("product_id", "shop_id", "title", "category", "style_tags", "followup_days"),
               ("product_id",), False),
        Entity("orders", ("order_id", "shop_id", "customer_id", "platform", "created_at", "paid_at", "shipped_at",
                          "delivered_at", "closed_at", "refunded_at", "total_amount", "currency", "receiver_city",
                          "updated_at"), ("order_id",), True),
        Entity("order_items", ("order_id", "line_no", "product_id", "quantity", "unit_price"),
               ("order_id", "line_no"), False),
        Entity("reviews", ("order_id", "created_at", "rating", "text"), ("order_id", "created_at"), False),
        Entity("suppressions", ("customer_id", "phone", "email", "channel", "created_at", "reason"), (), False),
    )
}

FORMATS = {
    ".parquet": "parquet", ".pq": "parquet",
    ".csv": "csv", ".csv.gz": "csv",
    ".ndjson": "ndjson", ".jsonl": "ndjson", ".json": "ndjson", ".ndjson.gz": "ndjson", ".jsonl.gz": "ndjson",
}


class IngestError(Exception):
    """Bad input for the run as a whole (e.g. no such folder): one line for the user."""


@dataclass
class LandingFile:
    path: Path
    entity: str
    format: str | None                # None: not a format we read
    size: int
    sha256: str = ""
    order: int = 0                    # position in this run's drop order (sorted by path)
    select: str | None = None         # Parquet: the SELECT that reads it in place


@dataclass
class EntityCounts:
    files: int = 0
    rows_read: int = 0
    rows_loaded: int = 0              # good rows (new keys, newer versions, or repeats)
    rows_quarantined: int = 0


@dataclass
class IngestResult:
    ingest_id: int | None
    landing_dir: Path
    files_seen: int
    files_new: int
    entities: dict[str, EntityCounts] = field(default_factory=dict)
    files_quarantined: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)

    @property
    def rows_loaded(self) -> int:
        return sum(c.rows_loaded for c in self.entities.values())

    @property
    def rows_quarantined(self) -> int:
        return sum(c.rows_quarantined for c in self.entities.values())


Step = Callable[[str, int], None]     # (what, how many units done) for progress bars

# --------------------------------------------------------------------------------------------------
# 1. discover


def _format_of(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return FORMATS[suffix]
    return None


def discover(landing_dir: str | Path) -> tuple[list[LandingFile], list[str]]:
    """Every file of the landing folder, in drop order; plus what was ignored (unknown folders)."""
    root = Path(landing_dir)
    if not root.is_dir():
        raise IngestError(f"{root}: landing folder not found")
    files: list[LandingFile] = []
    ignored: list[str] = []
    for child in sorted(root.iterdir()):
        if child.name.startswith("."):
            continue
        if not child.is_dir() or child.name not in ENTITIES:
            ignored.append(str(child))
            continue
        for path in sorted(p for p in child.rglob("*") if p.is_file() and not p.name.startswith(".")):
            files.append(LandingFile(path.resolve(), child.name, _format_of(path), path.stat().st_size))
    for i, f in enumerate(files):
        f.order = i
    return files, ignored


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def select_new(con: duckdb.DuckDBPyConnection, files: list[LandingFile], step: Step | None = None) -> list[LandingFile]:
    """The files whose content the manifest has not seen (each content once, at its first path)."""
    for f in files:
        f.sha256 = _sha256(f.path)
        if step:
            step("hash", f.size)
    known = {r[0] for r in con.execute("SELECT file_hash FROM ops.ingested_files").fetchall()}
    fresh, seen = [], set()
    for f in files:
        if f.sha256 in known or f.sha256 in seen:
            continue
        seen.add(f.sha256)
        fresh.append(f)
    return fresh


# --------------------------------------------------------------------------------------------------
# 2. land: every column as text, plus lineage


def _land_table(con: duckdb.DuckDBPyConnection, entity: Entity) -> str:
    table = f"land_{entity.name}_text"
    cols = ", ".join(f'"{c}" VARCHAR' for c in entity.columns)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} ({cols}, _extra VARCHAR, _raw VARCHAR, "
                f"_source_file VARCHAR, _file_ord INTEGER, _row_number BIGINT)")
    return table


def _as_text(name: str, dtype: str) -> str:
    if dtype.endswith("[]"):
        return f"array_to_string(\"{name}\", ';')"
    return f'CAST("{name}" AS VARCHAR)'


def _project(con: duckdb.DuckDBPyConnection, entity: Entity, source: str, meta: str) -> str:
    """SELECT list turning the temp table `source` into the land table's columns."""
    described = con.execute(f"DESCRIBE {source}").fetchall()
    present = {name: dtype for name, dtype, *_ in described}
    lowered = {name.strip().lower(): name for name in present}
    parts, used = [], set()
    for col in entity.columns:
        actual = lowered.get(col)
        if actual is None:
            parts.append(f'NULL::VARCHAR AS "{col}"')
        else:
            used.add(actual)
            parts.append(f'{_as_text(actual, present[actual])} AS "{col}"')
    extras = [n for n in present if n not in used and n not in {"filename", "file_row_number", "_lineno"}]
    if extras:
        packed = ", ".join(f'"{n}" := "{n}"' for n in extras)
        parts.append(f"to_json(struct_pack({packed}))::VARCHAR AS _extra")
    else:
        parts.append("NULL::VARCHAR AS _extra")
    return ", ".join(parts) + ", " + meta


_PENDING = "_land_quarantine"     # what landing rejected, moved to ops.quarantine inside the transaction


def _quarantine_file(con, entity: str, f: LandingFile, reason: str) -> None:
    con.execute(f"INSERT INTO {_PENDING} VALUES (?, ?, NULL, NULL, ?)", [entity, str(f.path), reason])


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _readable(con, entity: Entity, f: LandingFile, kind: str, outcome: dict, read: Callable[[], None]) -> bool:
    """Run `read`; when DuckDB cannot read the file at all, quarantine it whole and say so."""
    try:
        read()
        return True
    except duckdb.Error as e:
        _quarantine_file(con, entity.name, f, f"unreadable {kind} file: {_first_line(e)}")
        outcome[f.sha256] = ("quarantined", 0)
        return False


def _parquet_select(con, entity: Entity, f: LandingFile) -> str:
    """A SELECT that reads one Parquet file in place as the land table's columns."""
    scan = f"read_parquet({_sql_str(str(f.path))}, file_row_number = true)"
    meta = f"NULL AS _raw, {_sql_str(str(f.path))} AS _source_file, {f.order} AS _file_ord, file_row_number + 1 AS _row_number"
    return f"SELECT {_project(con, entity, f'(SELECT * FROM {scan})', meta)} FROM {scan}"


def _land_parquet(con, entity: Entity, table: str, f: LandingFile, outcome: dict) -> None:
    """Parquet is not copied: its schema and row count are checked here (footer only) and the staging
    model reads the file in place (see land_view). One file at a time: a union of files would give a
    naive and an aware timestamp column one type."""
    def read() -> None:
        f.select = _parquet_select(con, entity, f)
        rows = con.execute("SELECT sum(num_rows) FROM parquet_file_metadata(?)", [str(f.path)]).fetchone()[0]
        outcome[f.sha256] = ("loaded", int(rows or 0))

    _readable(con, entity, f, "parquet", outcome, read)


def land_view(con, entity: Entity, files: list[LandingFile], name: str | None = None) -> str:
    """land_<entity>: the text rows of CSV/NDJSON files and every readable Parquet file, as one relation."""
    name = name or f"land_{entity.name}"
    parts = [f"SELECT * FROM land_{entity.name}_text"]
    parts += [f.select for f in files if f.format == "parquet" and getattr(f, "select", None)]
    con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS " + " UNION ALL ".join(parts))
    return name


def _land_csv(con, entity: Entity, table: str, f: LandingFile, outcome: dict) -> None:
    con.execute("DROP TABLE IF EXISTS _csv_rej; DROP TABLE IF EXISTS _csv_scan")
    if not _readable(con, entity, f, "CSV", outcome, lambda: con.execute(
        "CREATE OR REPLACE TEMP TABLE _csv AS SELECT * FROM read_csv(?, header = true, all_varchar = true, "
        "delim = ',', quote = '\"', escape = '\"', store_rejects = true, rejects_table = '_csv_rej', "
        "rejects_scan = '_csv_scan')", [str(f.path)])):
        return
    meta = f"NULL AS _raw, {_sql_str(str(f.path))} AS _source_file, {f.order} AS _file_ord, rowid + 1 AS _row_number"
    con.execute(f"INSERT INTO {table} SELECT {_project(con, entity, '_csv', meta)} FROM _csv")
    # malformed lines (wrong number of fields, bad encoding): each is quarantined on its own
    rejected = con.execute(
        f"INSERT INTO {_PENDING} SELECT ?, ?, line - 1, csv_line, "
        "'malformed CSV line ' || line || ': ' || error_type || ': ' || error_message FROM _csv_rej",
        [entity.name, str(f.path)],
    ).fetchone()[0]
    rows = con.execute("SELECT count(*) FROM _csv").fetchone()[0]
    outcome[f.sha256] = ("loaded", rows + rejected)
    con.execute("DROP TABLE _csv")


def _land_ndjson(con, entity: Entity, table: str, f: LandingFile, outcome: dict) -> None:
    # one text column per physical line: a malformed line stays a row of its own
    if not _readable(con, entity, f, "NDJSON", outcome, lambda: con.execute(
        "CREATE OR REPLACE TEMP TABLE _lines AS SELECT line FROM read_csv(?, columns = {'line': 'VARCHAR'}, "
        "header = false, auto_detect = false, delim = chr(31), quote = '', escape = '', "
        "strict_mode = false, null_padding = true)", [str(f.path)])):
        return
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _json AS SELECT rowid + 1 AS n, line, "
        "CASE WHEN json_valid(line) THEN line::JSON END AS j FROM _lines WHERE nullif(trim(line), '') IS NOT NULL"
    )
    con.execute(
        f"INSERT INTO {_PENDING} SELECT ?, ?, n, line, "
        "CASE WHEN j IS NULL THEN 'malformed JSON line' ELSE 'line is not a JSON object' END "
        "FROM _json WHERE j IS NULL OR json_type(j) <> 'OBJECT'",
        [entity.name, str(f.path)],
    )
    fields = ", ".join(f"j->>'{c}'" for c in entity.columns)
    con.execute(
        f"INSERT INTO {table} SELECT {fields}, NULL, line, {_sql_str(str(f.path))}, {f.order}, n "
        f"FROM _json WHERE json_type(j) = 'OBJECT'"
    )
    outcome[f.sha256] = ("loaded", con.execute("SELECT count(*) FROM _json").fetchone()[0])
    con.execute("DROP TABLE _json; DROP TABLE _lines")


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


# --------------------------------------------------------------------------------------------------
# 3. stage: type, quarantine the bad, merge the good (newest wins)


def _stage(con, entity: Entity, ingest_id: int, files: list[LandingFile]) -> int:
    """Type the landed rows, quarantine the bad ones, merge the good ones; returns the good count."""
    land_view(con, entity, files)
    con.execute(f"CREATE OR REPLACE TEMP TABLE stg_{entity.name} AS " + sql_text(f"staging/stg_{entity.name}.sql"))
    bad_files = {r[0] for r in con.execute(
        f"SELECT DISTINCT _file_ord FROM stg_{entity.name} WHERE _reject_reason IS NOT NULL").fetchall()}
    if bad_files:
        # the rows themselves, read again only from the files that have bad rows
        source = land_view(con, entity, [f for f in files if f.order in bad_files], f"land_{entity.name}_bad")
        as_json = ", ".join(f"'{c}', l.\"{c}\"" for c in entity.columns)
        con.execute(
            f"""
            INSERT INTO ops.quarantine
            SELECT ?, s._source_file, s._row_number,
                   coalesce(l._raw, json_merge_patch(json_object({as_json}), coalesce(l._extra, '{{}}'))::VARCHAR),
                   s._reject_reason, ?, now()
            FROM stg_{entity.name} s
            JOIN {source} l USING (_file_ord, _row_number)
            WHERE s._reject_reason IS NOT NULL
            """,
            [entity.name, ingest_id],
        )
    good = _merge(con, entity, ingest_id)
    con.execute(f"DROP TABLE stg_{entity.name}")
    return good


def _merge(con, entity: Entity, ingest_id: int) -> int:
    name = entity.name
    target = f"staging.{name}"
    good = con.execute(f"SELECT count(*) FROM stg_{name} WHERE _reject_reason IS NULL").fetchone()[0]
    if not entity.key:
        # no key: a row is its own key; an exact repeat is kept once
        cols = ", ".join(entity.columns)
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _win AS SELECT * EXCLUDE (_reject_reason), {ingest_id} AS _ingest_id "
            f"FROM stg_{name} WHERE _reject_reason IS NULL "
            f"QUALIFY row_number() OVER (PARTITION BY {cols} ORDER BY _file_ord, _row_number) = 1"
        )
        same = " AND ".join(f"t.{c} IS NOT DISTINCT FROM w.{c}" for c in entity.columns)
        con.execute(f"INSERT INTO {target} BY NAME SELECT w.* FROM _win w WHERE NOT EXISTS "
                    f"(SELECT 1 FROM {target} t WHERE {same})")
    else:
        key = ", ".join(entity.key)
        newest = "updated_at DESC, " if entity.versioned else ""
        winners = (f"SELECT * EXCLUDE (_reject_reason), {ingest_id} AS _ingest_id "
                   f"FROM stg_{name} WHERE _reject_reason IS NULL "
                   f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {newest}_file_ord DESC, _row_number DESC) = 1")
        if con.execute(f"SELECT NOT EXISTS (SELECT 1 FROM {target})").fetchone()[0]:
            # first load: nothing to replace
            con.execute(f"INSERT INTO {target} BY NAME {winners}")
            return good
        con.execute(f"CREATE OR REPLACE TEMP TABLE _win AS {winners}")
        on = " AND ".join(f"t.{c} = w.{c}" for c in entity.key)
        # this run is a later drop than anything loaded: on equal updated_at, it wins
        newer = " AND w.updated_at >= t.updated_at" if entity.versioned else ""
        if name == "orders":
            # an order that moves to another customer or shop changes the old one's segment too
            con.execute(f"INSERT INTO ops.segment_dirty SELECT t.shop_id, t.customer_id FROM {target} t JOIN _win w "
                        f"ON {on}{newer} WHERE t.customer_id <> w.customer_id OR t.shop_id <> w.shop_id")
        con.execute(f"DELETE FROM {target} t USING _win w WHERE {on}{newer}")
        con.execute(f"INSERT INTO {target} BY NAME SELECT w.* FROM _win w "
                    f"WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE {on})")
    con.execute("DROP TABLE _win")
    return good


# --------------------------------------------------------------------------------------------------
# the run


def land(con: duckdb.DuckDBPyConnection, new: list[LandingFile], step: Step | None = None) -> dict[str, tuple[str, int]]:
    """Read every new file into land_<entity> temp tables (outside any transaction: a file that fails
    to parse must not abort the run). Returns {sha256: (status, rows read)}."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE {_PENDING} (entity VARCHAR, source_file VARCHAR, "
                "row_number BIGINT, \"row\" VARCHAR, reason VARCHAR)")
    outcome: dict[str, tuple[str, int]] = {}
    for entity in ENTITIES.values():
        mine = [f for f in new if f.entity == entity.name]
        table = _land_table(con, entity)
        for f in mine:
            if f.format is None:
                _quarantine_file(con, entity.name, f, "unsupported file type (expected .parquet, .csv or .ndjson)")
                outcome[f.sha256] = ("quarantined", 0)
        readers = {"parquet": _land_parquet, "csv": _land_csv, "ndjson": _land_ndjson}
        for f in mine:
            if f.format in readers:
                readers[f.format](con, entity, table, f, outcome)
        if step and mine:
            step(f"read {entity.name}", sum(f.size for f in mine))
    return outcome


def load(
    con: duckdb.DuckDBPyConnection,
    landing_dir: str | Path,
    *,
    validate: Callable[[duckdb.DuckDBPyConnection, int], list[dict]] | None = None,
    step: Step | None = None,
) -> IngestResult:
    """Load the landing folder's new files. `validate(con, ingest_id)` returns expectation results
    and raises to roll the whole run back."""
    all_files, ignored = discover(landing_dir)
    started = datetime.now(timezone.utc)
    new = select_new(con, all_files, step)
    result = IngestResult(None, Path(landing_dir), len(all_files), len(new), ignored=ignored)
    if not new:
        return result
    outcome = land(con, new, step)
    try:
        with transaction(con):
            _stage_all(con, landing_dir, new, outcome, result, started, validate, step)
    finally:
        for entity in ENTITIES:
            con.execute(f"DROP VIEW IF EXISTS land_{entity}; DROP VIEW IF EXISTS land_{entity}_bad; "
                        f"DROP TABLE IF EXISTS land_{entity}_text")
    return result


def _stage_all(con, landing_dir, new: list[LandingFile], outcome: dict, result: IngestResult, started,
               validate, step) -> None:
    """Inside the run's transaction: stage every entity, record the manifest, validate."""
    ingest_id = con.execute("SELECT nextval('ops.ingest_run_seq')").fetchone()[0]
    result.ingest_id = ingest_id
    con.execute("INSERT INTO ops.ingest_runs (ingest_id, landing_dir, started_at) VALUES (?, ?, ?)",
                [ingest_id, str(Path(landing_dir).resolve()), started])
    con.execute(f"INSERT INTO ops.quarantine SELECT *, ?, now() FROM {_PENDING}", [ingest_id])
    for entity in ENTITIES.values():
        mine = [f for f in new if f.entity == entity.name]
        counts = result.entities.setdefault(entity.name, EntityCounts(files=len(mine)))
        counts.rows_loaded = _stage(con, entity, ingest_id, mine)
        counts.rows_read = sum(outcome[f.sha256][1] for f in mine)
        counts.rows_quarantined = con.execute(
            "SELECT count(*) FROM ops.quarantine WHERE ingest_id = ? AND entity = ? AND row_number IS NOT NULL",
            [ingest_id, entity.name]).fetchone()[0]
        result.files_quarantined += [str(f.path) for f in mine if outcome[f.sha256][0] == "quarantined"]
        if step and mine:
            step(f"stage {entity.name}", 0)
    _record_manifest(con, new, outcome, ingest_id)
    if validate is not None:
        result.validation = validate(con, ingest_id)
    con.execute(
        "UPDATE ops.ingest_runs SET finished_at = now(), files_seen = ?, files_new = ?, rows_loaded = ?, "
        "rows_quarantined = ?, status = 'ok' WHERE ingest_id = ?",
        [result.files_seen, result.files_new, result.rows_loaded, result.rows_quarantined, ingest_id],
    )


def _record_manifest(con, new: list[LandingFile], outcome: dict, ingest_id: int) -> None:
    rows = [(f.sha256, f.entity, str(f.path), f.size, f.format or "unknown", outcome[f.sha256][1], 0,
             outcome[f.sha256][0], ingest_id) for f in new]
    con.executemany("INSERT INTO ops.ingested_files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, now())", rows)
    con.execute(
        "UPDATE ops.ingested_files m SET rows_quarantined = q.n FROM (SELECT source_file, count(*) AS n "
        "FROM ops.quarantine WHERE ingest_id = ? AND row_number IS NOT NULL GROUP BY source_file) q "
        "WHERE m.path = q.source_file AND m.ingest_id = ?",
        [ingest_id, ingest_id],
    )
