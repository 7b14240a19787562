"""Ingest a landing folder into DuckDB (docs/rules.md §1).

The steps, all set-based in DuckDB (Python only loops over entities and files, never rows):

1. *discover*: every file under ``<landing>/<entity>/``, hashed (a file whose path, size, mtime, ctime and
   inode are unchanged since it was last hashed keeps that hash, ``ops.file_hashes``: it is not read again);
   files whose content is already in the manifest ``ops.ingested_files`` are skipped (a renamed copy is the
   same content).
2. *land*: each new file is read by DuckDB with every column as text into ``land_<entity>`` (a Parquet
   column that already has its column's type passes typed beside it, and a naive Parquet timestamp as
   such: ``TYPED_KIND``).
   A file that cannot be read at all (a corrupt Parquet page, a CSV that is not text) is quarantined
   whole and the others load; a malformed CSV or JSON line is quarantined on its own. No column name,
   key or path read from the input ever becomes SQL text (see "2. land" below).
3. *stage*: ``sql/staging/stg_<entity>.sql`` types every landed row and names what is wrong with
   it. Bad rows go to ``ops.quarantine`` with file, row and reason; good rows are merged into
   ``staging.<entity>``, the newest version of each key winning (``updated_at``, then the later drop).
4. *validate*: Great Expectations on the rows this run loaded; a failed critical expectation rolls
   the whole run back (nothing is half-loaded, and the files stay new for the next try).

The whole run's writes are one transaction. What only writes temporary tables comes before it: landing,
typing the entities whose models read only committed tables (``TYPED_BEFORE``), and, for those of them that
are loaded for the first time, their suites (the merge will insert their typed rows as they are; the results
are stored, and a critical failure raised, inside the transaction with the other suites').
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import itertools
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import duckdb

from crm import phones
from crm.db import repeated_keys, sql_text, staging_zone_macros, transaction
from crm.storage import layout

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


# Parquet columns that already have the entity column's type are passed on typed, beside the text (which is
# then NULL): parsing text is most of staging's cost, and a Parquet TIMESTAMPTZ, a DECIMAL to the cent or an
# INTEGER needs no parsing (every other type is read as text, as CSV is). The staging models take
# `<column>__typed` when it is set. A naive Parquet TIMESTAMP is the shop's local time: it passes as
# `<column>__naive` (finite values; an infinite one stays text, and is refused as text is), which the
# staging models place in the shop's zone exactly as they would its text (crm_landed_ts, crm/db.py).
TYPED_KIND = {
    "created_at": "ts", "paid_at": "ts", "shipped_at": "ts", "delivered_at": "ts", "closed_at": "ts",
    "refunded_at": "ts", "updated_at": "ts", "registered_at": "ts",
    "total_amount": "money", "unit_price": "money",
    "line_no": "int", "quantity": "int", "member_level": "int", "rating": "int", "followup_days": "int",
    "opt_out": "bool",
}
_TYPED_SQL = {"ts": "TIMESTAMPTZ", "money": "DECIMAL(18, 2)", "int": "INTEGER", "bool": "BOOLEAN"}
# naive timestamp types whose values are exact in TIMESTAMP's microseconds (TIMESTAMP_NS is not: it stays text)
_NAIVE_TYPES = frozenset({"TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS"})
_INT_TYPES = frozenset({"TINYINT", "SMALLINT", "INTEGER", "UTINYINT", "USMALLINT"})


def typed_columns(entity: "Entity") -> list[str]:
    """The entity's columns that can come typed from Parquet, in column order."""
    return [c for c in entity.columns if c in TYPED_KIND]


def naive_columns(entity: "Entity") -> list[str]:
    """The entity's timestamp columns, which can also come as naive Parquet timestamps, in column order."""
    return [c for c in entity.columns if TYPED_KIND.get(c) == "ts"]


def _land_tail(entity: "Entity", typed: Callable[[str], str | None] = lambda c: None,
               naive: Callable[[str], str | None] = lambda c: None) -> str:
    """The land relation's typed columns, after the text and lineage: `<column>__typed` for every column that
    can come typed, then `<column>__naive` for every timestamp column; `typed(c)` / `naive(c)` give a file's
    SQL for one (None: NULL). Every file's part of land_<entity> lists them in this order."""
    parts = [f'{typed(c) or "NULL"}::{_TYPED_SQL[TYPED_KIND[c]]} AS "{c}__typed"' for c in typed_columns(entity)]
    parts += [f'{naive(c) or "NULL"}::TIMESTAMP AS "{c}__naive"' for c in naive_columns(entity)]
    return ", ".join(parts)


def _takes_typed(kind: str, parquet_type: str) -> bool:
    """Whether a Parquet column of DuckDB type `parquet_type` is exactly what a column of `kind` holds."""
    if kind == "ts":
        return parquet_type == "TIMESTAMP WITH TIME ZONE"
    if kind == "money":
        m = re.fullmatch(r"DECIMAL\((\d+),(\d+)\)", parquet_type.replace(" ", ""))
        return bool(m) and int(m[1]) <= 18 and int(m[2]) <= 2
    if kind == "int":
        return parquet_type in _INT_TYPES
    return parquet_type == "BOOLEAN"


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
    read_path: Path | None = None     # the path DuckDB opens: `path`, or a link to it without glob characters


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


def _identity(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def _insert_rows(con, insert: str, rows: list[tuple], types: tuple[str, ...], tail: str = "") -> None:
    """`insert` SELECT the rows, one list per column (executemany costs ~8 ms a row)."""
    cols = ", ".join(f"unnest(${i + 1}::{t}[])" for i, t in enumerate(types))
    con.execute(f"{insert} SELECT {cols}{tail}", [list(c) for c in zip(*rows)])


def _remember_shared_hashes(con: duckdb.DuckDBPyConnection, hashed: list[tuple], types: tuple[str, ...]) -> None:
    """The hashes into ops.file_hashes in PostgreSQL, which the other partitions' runs share and may be writing for
    the same paths this moment: the stale rows out, then the new ones in unless another run has just put them there
    (the rows are a cache of the same file's hash, whoever wrote it). Another run's commit between the extension's
    conflict check and its COPY fails the COPY: the write is made again (crm/storage/layout.py)."""
    table = f"{layout.OPS}.file_hashes"
    con.execute(f"DELETE FROM {table} WHERE path IN (SELECT unnest(?::VARCHAR[]))", [[h[0] for h in hashed]])
    layout.skip_what_others_wrote(
        lambda: _insert_rows(con, f"INSERT INTO {table}", hashed, types, " ON CONFLICT DO NOTHING"))


def select_new(con: duckdb.DuckDBPyConnection, files: list[LandingFile], step: Step | None = None) -> list[LandingFile]:
    """The files whose content the manifest has not seen (each content once, at its first path).

    Only files not seen before are read to hash them: a path whose size, mtime, ctime and inode are those
    recorded in ops.file_hashes keeps its hash (writing a file changes its mtime and ctime, and no tool can
    set a ctime back), so a landing folder of many GB costs a stat per file, not a read."""
    cached = {r[0]: (tuple(r[1:5]), r[5]) for r in con.execute(
        "SELECT path, size_bytes, mtime_ns, ctime_ns, inode, file_hash FROM ops.file_hashes "
        "WHERE path IN (SELECT unnest(?::VARCHAR[]))", [[str(f.path) for f in files]]).fetchall()}
    hashed = []
    for f in files:
        ident = _identity(f.path)
        hit = cached.get(str(f.path))
        if hit is not None and hit[0] == ident:
            f.sha256 = hit[1]
            continue
        f.sha256 = _sha256(f.path)
        if _identity(f.path) == ident:                  # not being written meanwhile: worth remembering
            hashed.append((str(f.path), *ident, f.sha256))
        if step:
            step("hash", f.size)
    if hashed:
        types = ("VARCHAR", "BIGINT", "BIGINT", "BIGINT", "BIGINT", "VARCHAR")
        if layout.on_lake(con):
            _remember_shared_hashes(con, hashed, types)
        else:
            _insert_rows(con, "INSERT OR REPLACE INTO ops.file_hashes", hashed, types)
    # on a partitioned lake, what this partition loaded: the manifest is shared by the partitions
    known = {r[0] for r in con.execute(
        "SELECT file_hash FROM ops.ingested_files WHERE lake_partition IS NOT DISTINCT FROM getvariable('crm_partition')"
    ).fetchall()}
    fresh, seen = [], set()
    for f in files:
        if f.sha256 in known or f.sha256 in seen:
            continue
        seen.add(f.sha256)
        fresh.append(f)
    return fresh


# --------------------------------------------------------------------------------------------------
# 2. land: every column as text, plus lineage
#
# No name or value read from a file ever becomes SQL text. Columns are addressed by position (CSV: c0, c1, …
# of an explicit schema; Parquet: #1, #2, …); the file's own names are compared in Python and reach SQL only
# as bound values (the keys of the JSON `_extra`), and file paths only as bound parameters or, where a view
# reads a Parquet file in place, through a session variable (getvariable) set with a bound parameter.


class _Unreadable(Exception):
    """The file as a whole cannot be read; the message says why (it becomes the quarantine reason)."""


def _land_table(con: duckdb.DuckDBPyConnection, entity: Entity) -> str:
    table = f"land_{entity.name}_text"
    cols = ", ".join(f'"{c}" VARCHAR' for c in entity.columns)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} ({cols}, _extra VARCHAR, _raw VARCHAR, "
                f"_source_file VARCHAR, _file_ord INTEGER, _row_number BIGINT)")
    return table


def _match_columns(entity: Entity, names: list[str]) -> tuple[dict[str, int], list[tuple[str, int]]]:
    """A file's column names matched to the entity's, without regard to case or surrounding spaces (of two
    that match one column, the first). Returns {entity column: position} and the other columns as
    (JSON key, position), their keys made unique."""
    known: dict[str, int] = {}
    rest: list[tuple[str, int]] = []
    for i, name in enumerate(names):
        col = name.strip().lower()
        if col in entity.columns and col not in known:
            known[col] = i
        else:
            rest.append((name, i))
    taken, extras = set(entity.columns), []
    for name, i in rest:
        key, n = name, 1
        while key in taken:
            n += 1
            key = f"{name}_{n}"
        taken.add(key)
        extras.append((key, i))
    return known, extras


def _projection(entity: Entity, known: dict[str, int], extras: list[tuple[str, int]],
                ref: Callable[[int], str], key: Callable[[int], str], list_columns: frozenset[int] = frozenset(),
                typed: dict[int, str] | None = None, naive: dict[int, str] | None = None) -> str:
    """The SELECT list turning a file's columns (`ref(position)`) into the land table's; `key(k)` is the SQL of
    the k-th extra column's name (a bound value, never the name itself). Columns in `typed` (positions) go
    typed, in `<column>__typed` (see land_view): their text is NULL. Columns in `naive` (positions of naive
    timestamps) go in `<column>__naive` when finite: their text is NULL then (an infinite one stays text)."""
    parts = []
    for col in entity.columns:
        i = known.get(col)
        if i is None or i in (typed or {}):
            parts.append(f'NULL::VARCHAR AS "{col}"')
        elif i in (naive or {}):
            parts.append(f'CASE WHEN NOT isfinite({ref(i)}) THEN CAST({ref(i)} AS VARCHAR) END AS "{col}"')
        elif i in list_columns:
            parts.append(f"array_to_string(CAST({ref(i)} AS VARCHAR[]), ';') AS \"{col}\"")
        else:
            parts.append(f'CAST({ref(i)} AS VARCHAR) AS "{col}"')
    if extras:
        pairs = ", ".join(f"{key(k)}, {ref(i)}" for k, (_, i) in enumerate(extras))
        parts.append(f"json_object({pairs})::VARCHAR AS _extra")
    else:
        parts.append("NULL::VARCHAR AS _extra")
    return ", ".join(parts)


_PENDING = "_land_quarantine"     # what landing rejected, moved to ops.quarantine inside the transaction
_KIND = {"parquet": "parquet", "csv": "CSV", "ndjson": "NDJSON"}


def _quarantine_file(con, entity: str, f: LandingFile, reason: str) -> None:
    con.execute(f"INSERT INTO {_PENDING} VALUES (?, ?, NULL, NULL, ?)", [entity, str(f.path), reason])


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _land_file(con, entity: Entity, table: str, f: LandingFile, outcome: dict) -> None:
    """Land one file; when it cannot be read as a whole, take back whatever of it was landed, quarantine it
    whole with the reason, and go on with the next file."""
    readers = {"parquet": _land_parquet, "csv": _land_csv, "ndjson": _land_ndjson}
    try:
        readers[f.format](con, entity, table, f, outcome)
    except (duckdb.Error, OSError, UnicodeError, csv.Error, _Unreadable) as e:
        f.select = None
        con.execute(f"DELETE FROM {table} WHERE _file_ord = ?", [f.order])
        con.execute(f"DELETE FROM {_PENDING} WHERE source_file = ?", [str(f.path)])
        why = str(e) if isinstance(e, _Unreadable) else _first_line(e)
        _quarantine_file(con, entity.name, f, f"unreadable {_KIND[f.format]} file: {why}")
        outcome[f.sha256] = ("quarantined", 0)


# Parquet ------------------------------------------------------------------------------------------

def _parquet_var(f: LandingFile) -> str:
    return f"crm_land_{f.order}"


def _land_parquet(con, entity: Entity, table: str, f: LandingFile, outcome: dict) -> None:
    """Parquet is not copied: the staging model reads the file in place (see land_view). Here its schema is
    matched and every page is read once (a corrupt page fails this file now, not the run's transaction later;
    ~0.4 s for the 1M-order benchmark's files). One file at a time: a union of files would give a naive and an
    aware timestamp column one type."""
    var = _parquet_var(f)
    con.execute(f"SET VARIABLE {var} = ?", [str(f.read_path)])
    con.execute(f"SET VARIABLE {var}_name = ?", [str(f.path)])
    described = con.execute(f"DESCRIBE SELECT * FROM read_parquet(getvariable('{var}'))").fetchall()
    names = [d[0] for d in described]
    lists = frozenset(i for i, d in enumerate(described) if str(d[1]).endswith("[]"))
    known, extras = _match_columns(entity, names)
    con.execute(f"SET VARIABLE {var}_keys = ?", [[k for k, _ in extras] or [""]])
    con.execute(f"SELECT min(hash(s)) FROM read_parquet(getvariable('{var}')) s").fetchall()
    typed = {known[c]: c for c in typed_columns(entity)
             if c in known and _takes_typed(TYPED_KIND[c], str(described[known[c]][1]))}
    naive = {known[c]: c for c in naive_columns(entity)
             if c in known and str(described[known[c]][1]) in _NAIVE_TYPES}
    columns = _projection(entity, known, extras, ref=lambda i: f"#{i + 1}",
                          key=lambda k: f"getvariable('{var}_keys')[{k + 1}]", list_columns=lists, typed=typed,
                          naive=naive)
    tail = _land_tail(entity, typed=lambda c: f"#{known[c] + 1}" if known.get(c) in typed else None,
                      naive=lambda c: (f"CASE WHEN isfinite(#{known[c] + 1}) THEN #{known[c] + 1} END"
                                       if known.get(c) in naive else None))
    select = (f"SELECT {columns}, NULL AS _raw, getvariable('{var}_name') AS _source_file, {f.order} AS _file_ord, "
              f"file_row_number + 1 AS _row_number{', ' + tail if tail else ''} "
              f"FROM read_parquet(getvariable('{var}'), file_row_number = true)")
    con.execute(select + " LIMIT 0").fetchall()           # it binds: the staging view will too
    rows = con.execute("SELECT sum(num_rows) FROM parquet_file_metadata(?)", [str(f.read_path)]).fetchone()[0]
    f.select = select
    outcome[f.sha256] = ("loaded", int(rows or 0))


def land_view(con, entity: Entity, files: list[LandingFile], name: str | None = None) -> str:
    """land_<entity>: the text rows of CSV/NDJSON files and every readable Parquet file, as one relation: the
    entity's columns as text, lineage, then `<column>__typed` for the columns that can come typed from Parquet
    and `<column>__naive` for its naive timestamps (_land_tail; NULL for every other file)."""
    name = name or f"land_{entity.name}"
    tail = _land_tail(entity)
    parts = [f"SELECT *{', ' + tail if tail else ''} FROM land_{entity.name}_text"]
    parts += [f.select for f in files if f.format == "parquet" and getattr(f, "select", None)]
    con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS " + " UNION ALL ".join(parts))
    return name


# CSV ----------------------------------------------------------------------------------------------
#
# DuckDB reads every CSV with an explicit schema (c0 … cN-1, all text, N from the header row), the header
# row being the first record: no sniffing, so a malformed line cannot make the whole file unreadable, and
# the header's names are data. Bad records are DuckDB's rejects, one quarantine row per line. A quote that
# opens a field and never closes takes the rest of the file into one reject: that line alone is
# quarantined and the rest is read again after it. UTF-16 (a byte-order mark, or the NUL bytes of an ASCII
# header) and GBK (not UTF-8 but GB18030 from start to end) are transcoded to UTF-8 first.

_DELIMITERS = (",", "\t", ";")        # tried on the header row: the one that names most columns wins
_MAX_REREADS = 20                     # unclosed quotes per file read around before the rest is given up
_RAW = "trim(csv_line, chr(13) || chr(10))"   # a reject's line(s) as read (with CRLF, DuckDB's starts with a LF)


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


_NOT_TEXT = (                          # what a file that is not CSV text often is, by its first bytes
    (b"PK\x03\x04", "this is a ZIP archive (an Excel .xlsx workbook?), not CSV text: save it as CSV"),
    (b"\xd0\xcf\x11\xe0", "this is an Excel 97-2003 .xls workbook, not CSV text: save it as CSV"),
    (b"PAR1", "this is a Parquet file, not CSV text: name it .parquet"),
    (b"\x1f\x8b", "this file is gzip-compressed: name it .csv.gz"),
)


def _text_encoding(path: Path) -> str | None:
    """'utf-16' for UTF-16 text, told by its byte-order mark or by the NUL byte beside every character of an
    ASCII header; None for anything else (read as UTF-8). A file that is not text at all is unreadable."""
    with _open_bytes(path) as fh:
        head = fh.read(4096)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if len(head) >= 16:
        if not any(head[1:16:2]) and all(head[0:16:2]):
            return "utf-16-le"
        if not any(head[0:16:2]) and all(head[1:16:2]):
            return "utf-16-be"
    for magic, what in _NOT_TEXT:
        if head.startswith(magic):
            raise _Unreadable(what)
    if b"\x00" in head:
        raise _Unreadable("binary data (NUL bytes), not CSV text")
    return None


def _is_gb18030(path: Path) -> bool:
    """Does the whole file decode as GB18030 (a superset of GBK, what Chinese Excel saves as CSV)?"""
    decoder = codecs.getincrementaldecoder("gb18030")()
    try:
        with _open_bytes(path) as fh:
            while chunk := fh.read(1 << 20):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _transcode(path: Path, encoding: str, folder: Path) -> Path:
    """The file as UTF-8, in `folder` (line breaks kept, so line numbers stay the file's)."""
    out = folder / "utf8.csv"
    try:
        with _open_bytes(path) as raw, open(out, "w", encoding="utf-8", newline="") as dst:
            shutil.copyfileobj(io.TextIOWrapper(raw, encoding=encoding, newline=""), dst, 1 << 20)
    except UnicodeDecodeError as e:
        name = "UTF-16" if encoding.startswith("utf-16") else "GBK"
        raise _Unreadable(f"looks like {name} text but is not ({e.reason})") from None
    return out


def _header_shape(entity: Entity, src: Path) -> tuple[str, int]:
    """The delimiter and number of fields of the header row (the first record), parsed by Python's csv from
    the file's first MiB."""
    with _open_bytes(src) as fh:
        text = fh.read(1 << 20).decode("utf-8-sig", errors="replace")
    best: tuple[int, str, int] | None = None
    for delimiter in _DELIMITERS:
        header = next((r for r in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter) if r), None)
        if header is None:
            raise _Unreadable("no header row")
        named = sum(1 for h in header if h.strip().lower() in entity.columns)
        if best is None or named > best[0]:
            best = (named, delimiter, len(header))
    return best[1], best[2]


def _read_records(con, src: Path, width: int, delimiter: str) -> None:
    """_csv_raw: the records of src as c0 … c{width-1}; _csv_rej: DuckDB's rejects (one or more per line)."""
    con.execute("DROP TABLE IF EXISTS _csv_rej; DROP TABLE IF EXISTS _csv_scan")
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _csv_raw AS SELECT * FROM read_csv(?, columns = ?, header = false, "
        "auto_detect = false, delim = ?, quote = '\"', escape = '\"', store_rejects = true, "
        "rejects_table = '_csv_rej', rejects_scan = '_csv_scan')",
        [str(src), {f"c{i}": "VARCHAR" for i in range(width)}, delimiter])


def _number_records(con, base: int) -> None:
    """_csv_pos (a view): the records of _csv_raw with `_line`, their line number in the whole file (base:
    lines before this read). The rejected lines are the gaps between the records DuckDB kept: a record that
    has k rejects before it is at position (its index + k)."""
    first = "(SELECT min(rowid) FROM _csv_raw)"
    if not con.execute("SELECT count(*) FROM _csv_rej").fetchone()[0]:
        con.execute(f"CREATE OR REPLACE TEMP VIEW _csv_pos AS SELECT *, {base} + rowid - {first} + 1 AS _line FROM _csv_raw")
        return
    con.execute(f"""
        CREATE OR REPLACE TEMP VIEW _csv_pos AS
        WITH gaps AS (SELECT line, row_number() OVER (ORDER BY line) AS j FROM (SELECT DISTINCT line FROM _csv_rej)),
             steps AS (SELECT line - j AS kept_before, max(j) AS rejected FROM gaps GROUP BY 1),
             kept AS (SELECT *, rowid - {first} + 1 AS _i FROM _csv_raw)
        SELECT kept.* EXCLUDE (_i), {base} + _i + coalesce(steps.rejected, 0) AS _line
        FROM kept ASOF LEFT JOIN steps ON kept._i > steps.kept_before
    """)


def _line_end(src: Path, near: int, line: str) -> int | None:
    """The byte offset just after the physical line `line` that starts near byte `near` of src."""
    needle = line.encode("utf-8")
    start = max(0, near - 64)
    with _open_bytes(src) as fh:
        fh.seek(start)
        window = fh.read(len(needle) + 130)
    best = None
    at = window.find(needle)
    while at != -1:
        after = window[at + len(needle):at + len(needle) + 2]
        if (start + at == 0 or window[at - 1:at] == b"\n") and after[:1] in (b"\n", b"\r"):
            end = start + at + len(needle) + (2 if after == b"\r\n" else 1)
            if best is None or abs(start + at - near) < abs(best[0] - near):
                best = (start + at, end)
        at = window.find(needle, at + 1)
    return best[1] if best else None


def _header(con, entity: Entity) -> tuple[str, list[str], int]:
    """From the first record of _csv_pos: the SELECT list that maps the file's columns, its bound values (the
    extra columns' names) and the header's line. A header DuckDB rejected makes the file unreadable."""
    head = con.execute("SELECT * EXCLUDE (_line), _line FROM _csv_pos ORDER BY _line LIMIT 1").fetchone()
    bad = con.execute("SELECT min(error_type || ': ' || error_message) FROM _csv_rej WHERE line <= ?",
                      [head[-1] if head else 1 << 62]).fetchone()[0]
    if head is None or bad:
        raise _Unreadable(f"malformed header row: {bad}" if bad else "no header row")
    names = [h if h is not None else f"column{i + 1}" for i, h in enumerate(head[:-1])]
    known, extras = _match_columns(entity, names)
    project = _projection(entity, known, extras, ref=lambda i: f"c{i}", key=lambda k: "?")
    return project, [k for k, _ in extras], head[-1]


def _unclosed_quote(con) -> tuple | None:
    """The first reject that runs over several lines: a quote opened a field and never closed (to the end
    of the file, or to a later quote). (line, its byte position, its text, DuckDB's error)."""
    return con.execute(
        f"SELECT line, line_byte_position, min({_RAW}), min(error_type || ': ' || error_message) FROM _csv_rej "
        f"WHERE error_type = 'UNQUOTED VALUE' AND contains({_RAW}, chr(10)) GROUP BY ALL ORDER BY line LIMIT 1").fetchone()


def _land_csv(con, entity: Entity, table: str, f: LandingFile, outcome: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="crm-ingest-") as tmp:
        folder = Path(tmp)
        encoding = _text_encoding(f.path)
        src = _transcode(f.path, encoding, folder) if encoding else f.read_path
        delimiter, width = _header_shape(entity, src)
        _read_records(con, src, width, delimiter)
        if encoding is None and con.execute(
                "SELECT count(*) FROM _csv_rej WHERE error_type = 'INVALID ENCODING'").fetchone()[0] \
                and _is_gb18030(f.path):
            src = _transcode(f.path, "gb18030", folder)
            delimiter, width = _header_shape(entity, src)
            _read_records(con, src, width, delimiter)
        _number_records(con, 0)
        project, params, header_line = _header(con, entity)
        rows = rejected = base = 0
        for part in itertools.count():
            if part:                                      # the rest of the file after an unclosed quote
                _read_records(con, src, width, delimiter)
                _number_records(con, base)
            quote = _unclosed_quote(con)
            until = base + quote[0] if quote else 1 << 62      # this read is good up to that line
            rows += con.execute(
                f"INSERT INTO {table} SELECT {project}, NULL, ?, {f.order}, _line - 1 FROM _csv_pos "
                "WHERE _line > ? AND _line < ?", params + [str(f.path), header_line, until]).fetchone()[0]
            # malformed lines (wrong number of fields, bad encoding, stray quotes): one quarantine row per line
            rejected += _reject_lines(con, entity, f, base, header_line, until)
            if quote is None:
                break
            # that line alone is malformed; the lines after it are read again, unless it cannot be found
            line = quote[2].split("\n", 1)[0].rstrip("\r")
            offset = _line_end(src, quote[1], line) if part < _MAX_REREADS else None
            lost = "" if offset is not None else " (the rest of the file is not read)"
            con.execute(f"INSERT INTO {_PENDING} VALUES (?, ?, ?, ?, ?)",
                        [entity.name, str(f.path), until - 1, line if offset is not None else quote[2],
                         f"malformed CSV line {until}: {quote[3]}{lost}"])
            rejected += 1
            if offset is None:
                break
            tail = folder / f"tail{part}.csv"
            with _open_bytes(src) as fh, open(tail, "wb") as out:
                fh.seek(offset)
                shutil.copyfileobj(fh, out, 1 << 20)
            src, base = tail, until
        outcome[f.sha256] = ("loaded", rows + rejected)
        con.execute("DROP VIEW IF EXISTS _csv_pos; DROP TABLE IF EXISTS _csv_raw")


def _reject_lines(con, entity: Entity, f: LandingFile, base: int, header_line: int, until: int) -> int:
    """DuckDB's rejects of this read between the header and line `until` into the pending quarantine, one
    row per line (a line short of fields has one reject per missing field); returns how many lines."""
    return con.execute(
        f"INSERT INTO {_PENDING} SELECT $entity, $file, $base + line - 1, min({_RAW}), "
        "'malformed CSV line ' || ($base + line) || ': ' || min(error_type || ': ' || error_message) "
        "FROM _csv_rej WHERE $base + line > $header AND $base + line < $until GROUP BY line",
        {"entity": entity.name, "file": str(f.path), "base": base, "header": header_line, "until": until},
    ).fetchone()[0]


# NDJSON -------------------------------------------------------------------------------------------

def _land_ndjson(con, entity: Entity, table: str, f: LandingFile, outcome: dict) -> None:
    # one text column per physical line: a malformed line stays a row of its own; the entity's fields are
    # looked up by their (constant) names, the file's keys stay data in the raw line
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _lines AS SELECT line FROM read_csv(?, columns = {'line': 'VARCHAR'}, "
        "header = false, auto_detect = false, delim = chr(31), quote = '', escape = '', "
        "strict_mode = false, null_padding = true)", [str(f.read_path)])
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
        f"INSERT INTO {table} SELECT {fields}, NULL, line, ?, {f.order}, n FROM _json WHERE json_type(j) = 'OBJECT'",
        [str(f.path)],
    )
    outcome[f.sha256] = ("loaded", con.execute("SELECT count(*) FROM _json").fetchone()[0])
    con.execute("DROP TABLE _json; DROP TABLE _lines")


# --------------------------------------------------------------------------------------------------
# 3. stage: type, quarantine the bad, merge the good (newest wins)


# the entities whose staging model reads only what earlier runs committed (ops.shops, their own staging table):
# they are typed before the run's transaction opens. reviews and suppressions are typed inside it, after this
# run's orders and customers are merged (a review's naive time is in its order's shop zone, a suppression's in
# its customer's). DuckDB reads rows written inside an open transaction about half as fast as committed ones:
# typed inside, 10M orders take 30 s to merge instead of 12 s.
TYPED_BEFORE = ("customers", "products", "orders", "order_items")


def _type(con, entity: Entity, files: list[LandingFile], unique: set[str] | None = None) -> int:
    """stg_<entity>: the landed rows typed, each with its reason to be refused (NULL: good), and of a key that
    more than one good row of this run has, only the winner left good (the newest: updated_at, then the later
    drop and row). Only temporary tables are written. Returns the good rows before that (what the run loaded).
    `unique` gets the entity's name when no key came twice among the good rows (they are then left as they are:
    the suite's `_copies` need not count this run's repeats again, transforms/validate.py validate_typed)."""
    land_view(con, entity, files)
    # the typed rows without their file's path (the same for all rows of a file, ~70 bytes a row): _merge
    # takes it from _files by _file_ord
    con.execute(f"CREATE OR REPLACE TEMP TABLE stg_{entity.name} AS SELECT * EXCLUDE (_source_file) FROM ("
                + sql_text(f"staging/stg_{entity.name}.sql") + ")")
    repeats = _repeated_keys(con, entity)
    if unique is not None and entity.key and not repeats:
        unique.add(entity.name)
    if entity.name == "orders":
        # an order_id this run gives two shops belongs to the first good row's (sql/staging/stg_orders_owners.sql)
        if repeats:
            con.execute("UPDATE stg_orders AS s SET _reject_reason = o._reject_reason FROM ("
                        + sql_text("staging/stg_orders_owners.sql") + ") AS o "
                        "WHERE s._file_ord = o._file_ord AND s._row_number = o._row_number")
        con.execute("ALTER TABLE stg_orders DROP COLUMN _loaded_shop_id")
    good = con.execute(f"SELECT count(*) FROM stg_{entity.name} WHERE _reject_reason IS NULL").fetchone()[0]
    if repeats:
        # this run's winner per key: the other good rows of a repeated key (_dup) leave this run's rows, so that
        # one scan of them, without a join, is what is merged
        newest = "updated_at DESC, " if entity.versioned else ""
        con.execute(
            f"DELETE FROM stg_{entity.name} WHERE rowid IN (SELECT s.rowid FROM stg_{entity.name} s SEMI JOIN _dup d "
            f"ON {_on(entity, 'd', 's')} WHERE s._reject_reason IS NULL QUALIFY row_number() OVER "
            f"(PARTITION BY {', '.join('s.' + c for c in entity.key)} ORDER BY {newest}_file_ord DESC, _row_number DESC) > 1)")
    con.execute("DROP TABLE IF EXISTS _dup")
    return good


def _stage(con, entity: Entity, ingest_id: int, files: list[LandingFile], ops: layout.Deferred,
           good: int | None = None, first_loads: set[str] | None = None) -> int:
    """Quarantine the bad rows of stg_<entity>, merge the good ones; returns the good count. `good`: stg_<entity>
    was made before the transaction (_type's count), else it is made here. `first_loads` gets the entity's name
    if the merge was a first load (all of stg_<entity>'s good rows inserted as they are)."""
    if good is None:
        good = _type(con, entity, files)
    bad_files = {r[0] for r in con.execute(
        f"SELECT DISTINCT _file_ord FROM stg_{entity.name} WHERE _reject_reason IS NOT NULL").fetchall()}
    if bad_files:
        # the rows themselves, read again only from the files that have bad rows
        source = land_view(con, entity, [f for f in files if f.order in bad_files], f"land_{entity.name}_bad")
        as_json = ", ".join(f"'{c}', coalesce(l.\"{c}\", l.\"{c}__typed\"::VARCHAR, l.\"{c}__naive\"::VARCHAR)"
                            if TYPED_KIND.get(c) == "ts" else
                            f"'{c}', coalesce(l.\"{c}\", l.\"{c}__typed\"::VARCHAR)" if c in TYPED_KIND
                            else f"'{c}', l.\"{c}\"" for c in entity.columns)
        con.execute(
            f"""
            INSERT INTO {ops('quarantine')}
            SELECT ?, l._source_file, s._row_number,
                   coalesce(l._raw, json_merge_patch(json_object({as_json}), coalesce(l._extra, '{{}}'))::VARCHAR),
                   s._reject_reason, ?, now()
            FROM stg_{entity.name} s
            JOIN {source} l USING (_file_ord, _row_number)
            WHERE s._reject_reason IS NOT NULL
            """,
            [entity.name, ingest_id],
        )
    if _merge(con, entity, ingest_id) and first_loads is not None:
        first_loads.add(entity.name)
    con.execute(f"DROP TABLE stg_{entity.name}")
    return good


def _repeated_keys(con, entity: Entity) -> int:
    """_dup: the keys that more than one good row of this run has (most keys come once); returns how many."""
    if not entity.key:
        return 0
    good = f"(SELECT {', '.join(entity.key)} FROM stg_{entity.name} WHERE _reject_reason IS NULL)"
    return repeated_keys(con, good, entity.key, "_dup")


def _merge(con, entity: Entity, ingest_id: int) -> bool:
    """Merge this run's good rows (stg_<entity>: one per key, _type) into staging.<entity>: per key the newest
    version wins (updated_at, then the later drop). Costs grow with this run's rows, not with what is loaded: the
    loaded rows are read once, by a join on this run's keys (_old), and replaced by their row ids. Returns whether
    it was a first load (`_first_load`: every good row inserted as it is)."""
    name = entity.name
    target = f"staging.{name}"
    if not entity.key:
        # no key: a row is its own key; an exact repeat is kept once
        cols = ", ".join(entity.columns)
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _win AS SELECT s.* EXCLUDE (_reject_reason), f._source_file, "
            f"{ingest_id} AS _ingest_id FROM stg_{name} s JOIN _files f USING (_file_ord) WHERE _reject_reason IS NULL "
            f"QUALIFY row_number() OVER (PARTITION BY {cols} ORDER BY _file_ord, _row_number) = 1"
        )
        same = " AND ".join(f"t.{c} IS NOT DISTINCT FROM w.{c}" for c in entity.columns)
        con.execute(f"INSERT INTO {target} BY NAME SELECT w.* FROM _win w WHERE NOT EXISTS "
                    f"(SELECT 1 FROM {target} t WHERE {same})")
        con.execute("DROP TABLE _win")
        return False
    winners = (f"SELECT s.* EXCLUDE (_reject_reason), f._source_file, {ingest_id} AS _ingest_id FROM stg_{name} s "
               f"JOIN _files f USING (_file_ord) WHERE _reject_reason IS NULL")
    if _first_load(con, entity):
        # first load: nothing to replace
        con.execute(f"INSERT INTO {target} BY NAME {winners}")
        return True
    con.execute(f"CREATE OR REPLACE TEMP TABLE _win AS {winners}")
    extra = ", t.customer_id, t.shop_id" if name == "orders" else ""
    stamp = ", t.updated_at" if entity.versioned else ""
    con.execute(f"CREATE OR REPLACE TEMP TABLE _old AS SELECT t.rowid AS _rowid, {', '.join('t.' + c for c in entity.key)}"
                f"{stamp}{extra} FROM {target} t SEMI JOIN _win w ON {_on(entity, 't', 'w')}")
    on = _on(entity, "o", "w")
    # this run is a later drop than anything loaded: on equal updated_at, it wins
    newer = " AND w.updated_at >= o.updated_at" if entity.versioned else ""
    if name == "orders":
        # an order that moves to another customer changes the old one's segment too (one that names
        # another shop is refused by stg_orders; the shop_id test stays as a guard)
        con.execute(f"INSERT INTO ops.segment_dirty SELECT o.shop_id, o.customer_id FROM _old o JOIN _win w "
                    f"ON {on}{newer} WHERE o.customer_id <> w.customer_id OR o.shop_id <> w.shop_id")
    con.execute(f"DELETE FROM {target} WHERE rowid IN (SELECT o._rowid FROM _old o JOIN _win w ON {on}{newer})")
    kept = f"SELECT 1 FROM _old o WHERE {on} AND w.updated_at < o.updated_at" if entity.versioned else "SELECT 1 WHERE false"
    con.execute(f"INSERT INTO {target} BY NAME SELECT w.* FROM _win w WHERE NOT EXISTS ({kept})")
    con.execute("DROP TABLE _win; DROP TABLE _old")
    return False


def _first_load(con, entity: Entity) -> bool:
    """Nothing is staged in staging.<entity> yet (a keyed entity's merge then inserts its good rows as they are)."""
    return bool(entity.key) and con.execute(f"SELECT NOT EXISTS (SELECT 1 FROM staging.{entity.name})").fetchone()[0]


def _on(entity: Entity, a: str, b: str) -> str:
    return " AND ".join(f"{a}.{c} = {b}.{c}" for c in entity.key)


# --------------------------------------------------------------------------------------------------
# the run


_GLOB = frozenset("*?[")               # DuckDB reads a path holding one of these as a pattern of many files


def _read_path(f: LandingFile, scratch: Path) -> Path:
    """The path DuckDB is given for f: its own, or a link to it in `scratch` when the path holds glob
    characters (`x[1].csv` would read `x1.csv`, `*.csv` every file beside it)."""
    if not _GLOB.intersection(str(f.path)):
        return f.path
    suffix = next((x for x in sorted(FORMATS, key=len, reverse=True) if f.path.name.lower().endswith(x)), "")
    link = scratch / f"file{f.order}{suffix}"
    try:
        link.symlink_to(f.path)
    except OSError:                   # no symbolic links here: a copy
        shutil.copyfile(f.path, link)
    return link


def land(con: duckdb.DuckDBPyConnection, new: list[LandingFile], step: Step | None = None,
         scratch: Path | None = None) -> dict[str, tuple[str, int]]:
    """Read every new file into land_<entity> temp tables (outside any transaction: a file that fails
    to parse must not abort the run). `scratch`: a folder that lives until staging is done (links to
    files whose paths DuckDB would read as patterns). Returns {sha256: (status, rows read)}."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE {_PENDING} (entity VARCHAR, source_file VARCHAR, "
                "row_number BIGINT, \"row\" VARCHAR, reason VARCHAR)")
    for f in new:
        f.read_path = _read_path(f, scratch) if scratch is not None else f.path
    outcome: dict[str, tuple[str, int]] = {}
    for entity in ENTITIES.values():
        mine = [f for f in new if f.entity == entity.name]
        table = _land_table(con, entity)
        for f in mine:
            if f.format is None:
                _quarantine_file(con, entity.name, f, "unsupported file type (expected .parquet, .csv or .ndjson)")
                outcome[f.sha256] = ("quarantined", 0)
        for f in mine:
            if f.format is not None:
                _land_file(con, entity, table, f, outcome)
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
    phones.register(con)            # the staging SQL's crm_e164 and crm_phone_problem (again: a no-op)
    if validate is not None and hasattr(validate, "warm_up"):
        validate.warm_up()          # GX's import and context, on a thread, while DuckDB lands and stages
    scratch = tempfile.TemporaryDirectory(prefix="crm-ingest-")
    try:
        outcome = land(con, new, step, Path(scratch.name))
        # landing numbers a file's lines by the order DuckDB read them in (rowid); from here on every order
        # is an explicit column (_file_ord, _row_number, updated_at), so DuckDB need not keep insertion order
        # while it types, merges and writes: it writes in parallel and holds less (1M orders: ~20 % faster)
        con.execute("SET preserve_insertion_order = false")
        staging_zone_macros(con)      # the zones with daylight saving time by arithmetic, for millions of values
        typed = {}                    # entity -> its good rows, typed before the transaction (TYPED_BEFORE)
        unique: set[str] = set()      # those of them whose good rows have no key twice
        for name in TYPED_BEFORE:
            mine = [f for f in new if f.entity == name]
            if mine:
                typed[name] = _type(con, ENTITIES[name], mine, unique)
                if step:
                    step(f"type {name}", 0)
        # the suites of those first loaded can run now, on the typed rows the merge will insert as they are
        # (transforms/validate.py, validate_typed): DuckDB reads them there twice as fast as once merged
        first = [name for name in typed if _first_load(con, ENTITIES[name])]
        early = None
        if first and validate is not None and hasattr(validate, "early"):
            early = validate.early(con, first, frozenset(typed), frozenset(unique))
            if step:
                step("validate " + ", ".join(first), 0)
        # on the lake, the manifest and quarantine are written to PostgreSQL once the staged rows are committed
        # (layout.Deferred): a run that dies between the two leaves its files unrecorded, and the next run
        # loads them again, to the same rows (newest wins; an exact repeat is kept once)
        ops = layout.Deferred(con, ("ingest_runs", "quarantine", "ingested_files"))
        try:
            with transaction(con):
                _stage_all(con, landing_dir, new, outcome, result, started, validate, step, ops, typed, early)
            ops.flush()
        finally:
            ops.drop()
    finally:
        con.execute("RESET preserve_insertion_order")
        scratch.cleanup()
        for entity in ENTITIES:
            con.execute(f"DROP VIEW IF EXISTS land_{entity}; DROP VIEW IF EXISTS land_{entity}_bad; "
                        f"DROP TABLE IF EXISTS land_{entity}_text; DROP TABLE IF EXISTS stg_{entity}")
        con.execute("DROP TABLE IF EXISTS _dup")
        con.execute("DROP TABLE IF EXISTS _files")
        for f in new:
            if f.format == "parquet":
                var = _parquet_var(f)
                con.execute(f"RESET VARIABLE {var}; RESET VARIABLE {var}_name; RESET VARIABLE {var}_keys")
    return result


def _stage_all(con, landing_dir, new: list[LandingFile], outcome: dict, result: IngestResult, started,
               validate, step, ops: layout.Deferred, typed: dict[str, int], early=None) -> None:
    """Inside the run's transaction: stage every entity (`typed`: those typed before it, with their good rows),
    record the manifest, validate (`early`: the suites `validate.early` ran before the transaction)."""
    ingest_id = layout.next_ingest_id(con)
    result.ingest_id = ingest_id
    con.execute(f"INSERT INTO {ops('ingest_runs')} (ingest_id, landing_dir, started_at, lake_partition) "
                "VALUES (?, ?, ?, getvariable('crm_partition'))",
                [ingest_id, str(Path(landing_dir).resolve()), started])
    con.execute(f"INSERT INTO {ops('quarantine')} SELECT *, ?, now() FROM {_PENDING}", [ingest_id])
    con.execute("CREATE OR REPLACE TEMP TABLE _files AS SELECT unnest(?::INTEGER[]) AS _file_ord, "
                "unnest(?::VARCHAR[]) AS _source_file", [[f.order for f in new], [str(f.path) for f in new]])
    first_loads: set[str] = set()
    for entity in ENTITIES.values():
        mine = [f for f in new if f.entity == entity.name]
        counts = result.entities.setdefault(entity.name, EntityCounts(files=len(mine)))
        counts.rows_loaded = _stage(con, entity, ingest_id, mine, ops, typed.get(entity.name), first_loads)
        counts.rows_read = sum(outcome[f.sha256][1] for f in mine)
        counts.rows_quarantined = con.execute(
            f"SELECT count(*) FROM {ops('quarantine')} WHERE ingest_id = ? AND entity = ? AND row_number IS NOT NULL",
            [ingest_id, entity.name]).fetchone()[0]
        result.files_quarantined += [str(f.path) for f in mine if outcome[f.sha256][0] == "quarantined"]
        if step and mine:
            step(f"stage {entity.name}", 0)
    _record_manifest(con, new, outcome, ingest_id, ops)
    if validate is not None and early is not None:
        # an early suite stands only for a merge that was a first load indeed; any other is run here again
        result.validation = validate(con, ingest_id, early.only(first_loads))
    elif validate is not None:
        result.validation = validate(con, ingest_id)
    con.execute(
        f"UPDATE {ops('ingest_runs')} SET finished_at = now(), files_seen = ?, files_new = ?, rows_loaded = ?, "
        "rows_quarantined = ?, status = 'ok' WHERE ingest_id = ?",
        [result.files_seen, result.files_new, result.rows_loaded, result.rows_quarantined, ingest_id],
    )


def _record_manifest(con, new: list[LandingFile], outcome: dict, ingest_id: int, ops: layout.Deferred) -> None:
    rows = [(f.sha256, f.entity, str(f.path), f.size, f.format or "unknown", outcome[f.sha256][1], 0,
             outcome[f.sha256][0], ingest_id) for f in new]
    _insert_rows(con, f"INSERT INTO {ops('ingested_files')}", rows, ("VARCHAR", "VARCHAR", "VARCHAR", "BIGINT", "VARCHAR",
                                                              "BIGINT", "BIGINT", "VARCHAR", "INTEGER"),
                 ", now(), getvariable('crm_partition')::INTEGER")
    con.execute(
        f"UPDATE {ops('ingested_files')} m SET rows_quarantined = q.n FROM (SELECT source_file, count(*) AS n "
        f"FROM {ops('quarantine')} WHERE ingest_id = ? AND row_number IS NOT NULL GROUP BY source_file) q "
        "WHERE m.path = q.source_file AND m.ingest_id = ?",
        [ingest_id, ingest_id],
    )
