"""Where the tables live (docs/rules.md §10): the embedded DuckDB file (`[storage] kind = "duckdb"`, the default:
crm/db.py), or DuckLake (`kind = "ducklake"`): the same schemas `staging` and `marts` as DuckLake tables, whose
catalog is a PostgreSQL database and whose data are Parquet files under `data_path` (a folder or S3), and the
operational tables in a PostgreSQL database of their own (`ops_dsn`).

:func:`connect_lake` opens that layout on one DuckDB connection: the extensions loaded offline from their wheels
(crm/storage/extensions.py), the S3 secret for an s3:// data path, the lake attached as `lake` (its schemas
created when missing) and the ops database as `opsdb`. :func:`connect_layout` is what the pipeline works in: that
connection with the lake as its current database and every table of sql/schema.sql where crm/storage/layout.py
places it, so that the same SQL runs on both storages.

Every failure is one line naming the key it comes from (StorageError; ExtensionError for an extension wheel that
does not match the installed duckdb); a password or secret never appears in it.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb

from crm.config import Storage
from crm.storage.extensions import ExtensionError

__all__ = ["LAKE", "OPS", "LAKE_SCHEMAS", "StorageError", "ExtensionError", "connect_group", "connect_lake",
           "connect_layout", "mask"]

LAKE = "lake"                          # the DuckLake's name on the connection: lake.staging.…, lake.marts.…
OPS = "opsdb"                          # the ops database's: opsdb.public.…
LAKE_SCHEMAS = ("staging", "marts")


class StorageError(Exception):
    """The storage cannot be opened, phrased as one line for the user."""


def mask(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with every password of a connection string and each of `secrets` replaced by ***."""
    text = re.sub(r"(password\s*=\s*)('[^']*'|[^\s'\"]+)", r"\1***", text, flags=re.I)
    text = re.sub(r"(postgres(?:ql)?://[^:/@\s]*):[^@\s]*@", r"\1:***@", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(e).__name__


def data_path_of(storage: Storage, partition: int | None = None) -> str:
    """The data path as DuckLake is given it: s3:// as written, a folder made absolute (every process then names
    the same one, whatever its working directory), both ending in /; a partition's is `p<k>/` under it."""
    path = storage.data_path if storage.on_s3 else str(Path(storage.data_path).expanduser().resolve())
    path = path if path.endswith("/") else path + "/"
    return path if partition is None else f"{path}p{partition}/"


def connect_lake(storage: Storage, *, data_inlining_row_limit: int | None = None,
                 partition: int | None = None) -> duckdb.DuckDBPyConnection:
    """One DuckDB connection on the lake layout: `lake` (DuckLake, schemas staging and marts) and `opsdb`
    (PostgreSQL). `data_inlining_row_limit` is DuckLake's: inserts of at most that many rows stay in the catalog
    until flushed (None: DuckLake's default; 0: every insert writes Parquet). `partition`: that partition's lake
    (crm/storage/partitions.py: its catalog in the schema p<k>, its files under p<k>/). StorageError on any
    failure."""
    con = _open(storage)
    try:
        _attach_lake(con, storage, LAKE, partition, data_inlining_row_limit=data_inlining_row_limit)
        for schema in LAKE_SCHEMAS:
            _step(con, f"CREATE SCHEMA IF NOT EXISTS {LAKE}.{schema}", "[storage] data_path",
                  f"cannot create the lake's schema {schema}", _secrets(storage))
        _step(con, f"ATTACH {_lit(storage.ops_dsn)} AS {OPS} (TYPE postgres)", "[storage] ops_dsn",
              "cannot reach the ops database", _secrets(storage))
    except BaseException:
        con.close()
        raise
    return con


def _secrets(storage: Storage) -> tuple[str, ...]:
    return (storage.s3.secret, storage.s3.key_id)


def _open(storage: Storage) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the lake's extensions loaded and, for an s3:// data path, its secret."""
    from crm.db import _resources
    from crm.storage import extensions

    if storage.kind != "ducklake":
        raise StorageError(f'[storage] kind = "{storage.kind}": connect_lake opens kind = "ducklake" only')
    names = ("ducklake", "postgres") + (("httpfs",) if storage.on_s3 else ())
    con = extensions.connect(names=names)              # ExtensionError: a wheel that does not match duckdb
    try:
        _resources(con)
        if storage.on_s3:
            s3 = storage.s3
            con.execute(f"CREATE OR REPLACE SECRET crm_lake_s3 (TYPE s3, KEY_ID {_lit(s3.key_id)}, "
                        f"SECRET {_lit(s3.secret)}, ENDPOINT {_lit(s3.endpoint)}, REGION {_lit(s3.region)}, "
                        f"URL_STYLE {_lit(s3.url_style)}, USE_SSL {'true' if s3.use_ssl else 'false'}, "
                        f"SCOPE {_lit(storage.data_path)})")
    except BaseException:
        con.close()
        raise
    return con


def _attach_lake(con, storage: Storage, name: str, partition: int | None, *, read_only: bool = False,
                 data_inlining_row_limit: int | None = None) -> None:
    if not storage.on_s3 and not read_only:
        Path(data_path_of(storage, partition)).mkdir(parents=True, exist_ok=True)
    options = [f"DATA_PATH {_lit(data_path_of(storage, partition))}"]
    if partition is not None:
        options.append(f"METADATA_SCHEMA 'p{int(partition)}'")
    if data_inlining_row_limit is not None:
        options.append(f"DATA_INLINING_ROW_LIMIT {int(data_inlining_row_limit)}")
    if read_only:
        options.append("READ_ONLY")
    _step(con, f"ATTACH {_lit('ducklake:' + storage.catalog)} AS {name} ({', '.join(options)})",
          "[storage] catalog", "cannot open DuckLake's catalog", _secrets(storage))


def connect_group(storage: Storage, partition: int | None = None) -> duckdb.DuckDBPyConnection:
    """The analysts' reading of the lake: every partition's lake (or only `partition`'s; an unpartitioned lake: the
    one) attached read-only (`lake_p<k>`) and, in an in-memory database made the current one, views `staging.x`,
    `marts.x`, `ops.x` with the rows of every partition (UNION ALL BY NAME of the partitions that have the table)
    and the operational tables of PostgreSQL. Nothing can be written through it."""
    from crm.db import sql_text
    from crm.storage import layout

    parts = ([None] if storage.partitions == 1 else [partition] if partition is not None
             else list(range(storage.partitions)))
    con = _open(storage)
    with _or_close(con, "cannot read the partitions together"):
        for k in parts:
            try:
                _attach_lake(con, storage, f"{LAKE}_p{0 if k is None else k}", k, read_only=True)
            except StorageError as e:
                if k is None or "does not exist" not in str(e):
                    raise                  # a partition no run has written yet has no lake: nothing to read there
        _step(con, f"ATTACH {_lit(storage.ops_dsn)} AS {OPS} (TYPE postgres, READ_ONLY)", "[storage] ops_dsn",
              "cannot reach the ops database", _secrets(storage))
        con.execute("ATTACH ':memory:' AS grp; USE grp; SET TimeZone = 'UTC'")
        found: dict[tuple[str, str], list[str]] = {}
        for db, schema, table in con.execute(
                "SELECT table_catalog, table_schema, table_name FROM information_schema.tables WHERE table_catalog "
                "LIKE ? AND table_schema IN ('staging', 'marts', 'ops') ORDER BY 1", [f"{LAKE}_p%"]).fetchall():
            found.setdefault((schema, table), []).append(db)
        for schema in ("staging", "marts", "ops"):
            con.execute(f"CREATE SCHEMA IF NOT EXISTS grp.{schema}")
        for (schema, table), dbs in sorted(found.items()):
            if schema == "ops" and table in layout.OPERATIONAL:
                select = f"SELECT * FROM {OPS}.{table}"
            else:
                select = " UNION ALL BY NAME ".join(f'SELECT * FROM {db}.{schema}."{table}"' for db in dbs)
            con.execute(f'CREATE VIEW grp.{schema}."{table}" AS {select}')
        con.execute(sql_text("macros.sql"))
    return con


def connect_layout(storage: Storage, partition: int | None = None) -> duckdb.DuckDBPyConnection:
    """connect_lake, then the pipeline's tables (crm/storage/layout.py) and macros, with the lake as the current
    database: `staging.x`, `marts.x` and `ops.x` mean what they mean in the DuckDB file. `partition`: that
    partition's lake; the variable crm_partition holds it (NULL: no partitions) for the SQL that scopes the shared
    operational tables to it (the manifest)."""
    from crm.db import _views, sql_text
    from crm.storage import layout

    con = connect_lake(storage, partition=partition)
    with _or_close(con, "cannot set up the lake's tables"):
        con.execute(f"USE {LAKE}")
        con.execute("SET VARIABLE crm_partition = ?::INTEGER", [partition])
        con.execute("SET TimeZone = 'UTC'")
        layout.create(con)
        _views(con)
        con.execute(sql_text("macros.sql"))
    return con


@contextmanager
def _or_close(con: duckdb.DuckDBPyConnection, what: str) -> Iterator[None]:
    """Set-up steps on `con`: on any failure it is closed; a DuckDB error becomes one StorageError line."""
    try:
        yield
    except duckdb.Error as e:
        con.close()
        raise StorageError(f"[storage]: {what}: {mask(_first_line(e))}") from None
    except BaseException:
        con.close()
        raise


def _step(con: duckdb.DuckDBPyConnection, sql: str, key: str, what: str, secrets: tuple[str, ...]) -> None:
    try:
        con.execute(sql)
    except duckdb.Error as e:
        raise StorageError(f"{key}: {what}: {mask(_first_line(e), secrets)}") from None
