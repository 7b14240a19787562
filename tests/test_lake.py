"""The lake layout at the SQL level (crm/storage/__init__.py, docs/rules.md §10), on a real PostgreSQL cluster and a
real S3 server of the test session (tests/postgres.py): DuckLake tables whose catalog is in PostgreSQL and whose
Parquet files are in a folder or on S3, read back by another process; the ops database attached beside them,
where uniqueness is PostgreSQL's (INSERT … ON CONFLICT DO NOTHING); one line for what cannot be reached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

from crm.config import S3 as S3Settings
from crm.config import Storage
from crm.storage import LAKE, OPS, StorageError, connect_lake, mask
from postgres import free_port, postgres, s3  # noqa: F401  (the session's fixtures)

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _own_extension_directory(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CRM_DUCKDB_EXTENSIONS", str(tmp_path_factory.getbasetemp() / "duckdb-extensions"))


def lake_storage(postgres, data_path: str, **s3) -> Storage:  # noqa: F811
    """A new lake: a catalog database and an ops database of their own in the session's cluster."""
    return Storage(kind="ducklake", catalog="postgres:" + postgres.keywords(postgres.database("lake")),
                   data_path=data_path, ops_dsn=postgres.uri(postgres.database("ops")),
                   s3=S3Settings(**s3) if s3 else S3Settings())


READ_BACK = textwrap.dedent("""
    import json, sys
    from crm.config import Storage
    from crm.storage import connect_lake

    con = connect_lake(Storage.model_validate_json(sys.argv[1]))
    n, total, shops = con.execute("SELECT count(*), sum(amount), count(DISTINCT shop_id) FROM lake.staging.orders").fetchone()
    print(json.dumps({"n": n, "total": float(total), "shops": shops}))
""")


def _read_back(storage: Storage) -> dict:
    """The table as another process sees it, through a connection of its own."""
    out = subprocess.run([sys.executable, "-c", READ_BACK, storage.model_dump_json()], capture_output=True,
                         text=True, timeout=180, cwd=REPO, env=os.environ)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def _write_orders(storage: Storage, n: int = 5000) -> None:
    con = connect_lake(storage)
    try:
        assert {s for (s,) in con.execute("SELECT schema_name FROM duckdb_schemas() WHERE database_name = ?",
                                          [LAKE]).fetchall()} >= {"staging", "marts"}
        con.execute("CREATE TABLE lake.staging.orders (order_id VARCHAR, shop_id VARCHAR, amount DECIMAL(18, 2))")
        con.execute("INSERT INTO lake.staging.orders SELECT 'o' || range, 's' || (range % 7), range % 100 "
                    f"FROM range({n})")
    finally:
        con.close()


def test_a_lake_table_is_parquet_in_the_data_folder_with_its_catalog_in_postgres(postgres, tmp_path):  # noqa: F811
    storage = lake_storage(postgres, str(tmp_path / "lake"))
    _write_orders(storage)
    files = sorted((tmp_path / "lake").rglob("*.parquet"))
    assert files, "the rows are in Parquet files under data_path"
    assert all("staging" in f.parts and "orders" in f.parts for f in files), files
    # the files are plain Parquet, whatever reads them; the catalog is tables of PostgreSQL's
    plain = duckdb.connect()
    assert plain.execute(f"SELECT count(*) FROM read_parquet({[str(f) for f in files]})").fetchone() == (5000,)
    catalog_db = storage.catalog.split("dbname=")[1].split()[0]
    assert postgres.psql("SELECT table_name FROM ducklake_table", catalog_db) == "orders"
    assert set(postgres.psql("SELECT schema_name FROM ducklake_schema", catalog_db).split()) >= {"staging", "marts"}
    assert _read_back(storage) == {"n": 5000, "total": float(sum(i % 100 for i in range(5000))), "shops": 7}


def test_a_lake_on_s3(postgres, s3, tmp_path):  # noqa: F811
    bucket = s3.bucket()
    storage = lake_storage(postgres, f"s3://{bucket}/lake/", endpoint=s3.endpoint, key_id="test", secret="test-secret",
                           region="us-east-1", url_style="path", use_ssl=False)
    _write_orders(storage)
    keys = s3.keys(bucket, "lake/")
    assert keys and all(k.startswith("lake/staging/orders/") and k.endswith(".parquet") for k in keys), keys
    assert not list(tmp_path.rglob("*.parquet")), "nothing written to the local disk"
    got = _read_back(storage)
    assert (got["n"], got["shops"]) == (5000, 7)


def test_the_lake_keeps_its_tables_across_connections(postgres, tmp_path):  # noqa: F811
    """A second connect_lake on an existing lake finds its schemas and tables, and adds to them."""
    storage = lake_storage(postgres, str(tmp_path / "lake"))
    _write_orders(storage, 1000)
    con = connect_lake(storage)
    con.execute("INSERT INTO lake.staging.orders SELECT 'p' || range, 's1', 1 FROM range(500)")
    con.close()
    assert _read_back(storage)["n"] == 1500


def test_insert_on_conflict_do_nothing_into_the_ops_database(postgres, tmp_path):  # noqa: F811
    """The ops tables' uniqueness is PostgreSQL's: a message id inserted twice, from the lake's connection, is
    one row, and the first body stays."""
    storage = lake_storage(postgres, str(tmp_path / "lake"))
    con = connect_lake(storage)
    try:
        con.execute(f"CALL postgres_execute('{OPS}', 'CREATE TABLE outbox (message_id text PRIMARY KEY, body text NOT NULL)')")
        con.execute(f"INSERT INTO {OPS}.public.outbox VALUES ('m1', 'first') ON CONFLICT DO NOTHING")
        con.execute(f"INSERT INTO {OPS}.public.outbox VALUES ('m1', 'again'), ('m2', 'second') ON CONFLICT DO NOTHING")
        rows = con.execute(f"SELECT message_id, body FROM {OPS}.public.outbox ORDER BY 1").fetchall()
        # the same through the lake: its rows joined to the ops table in one query
        con.execute("CREATE TABLE lake.marts.due (message_id VARCHAR)")
        con.execute("INSERT INTO lake.marts.due VALUES ('m1'), ('m2'), ('m3')")
        con.execute(f"INSERT INTO {OPS}.public.outbox SELECT message_id, 'from the lake' FROM lake.marts.due "
                    "ON CONFLICT DO NOTHING")
    finally:
        con.close()
    assert rows == [("m1", "first"), ("m2", "second")]
    ops_db = storage.ops_dsn.rsplit("/", 1)[1]
    assert postgres.psql("SELECT message_id || '=' || body FROM outbox ORDER BY 1", ops_db).splitlines() == \
        ["m1=first", "m2=second", "m3=from the lake"]


def test_an_unreachable_catalog_is_one_line_without_its_password(postgres, tmp_path):  # noqa: F811
    closed = free_port()
    storage = Storage(kind="ducklake", catalog=f"postgres:dbname=lake host=127.0.0.1 port={closed} user=crm password=hunter2",
                      data_path=str(tmp_path / "lake"), ops_dsn=postgres.uri(postgres.database("ops")))
    with pytest.raises(StorageError) as info:
        connect_lake(storage)
    message = str(info.value)
    assert "\n" not in message and message.startswith("[storage] catalog: cannot open DuckLake's catalog: "), message
    assert str(closed) in message and "hunter2" not in message


def test_an_unreachable_ops_database_is_one_line_without_its_password(postgres, tmp_path):  # noqa: F811
    closed = free_port()
    storage = Storage(kind="ducklake", catalog="postgres:" + postgres.keywords(postgres.database("lake")),
                      data_path=str(tmp_path / "lake"), ops_dsn=f"postgresql://crm:hunter2@127.0.0.1:{closed}/crm")
    with pytest.raises(StorageError) as info:
        connect_lake(storage)
    message = str(info.value)
    assert "\n" not in message and message.startswith("[storage] ops_dsn: cannot reach the ops database: "), message
    assert str(closed) in message and "hunter2" not in message


def test_a_database_that_does_not_exist_is_one_line(postgres, tmp_path):  # noqa: F811
    storage = Storage(kind="ducklake", catalog="postgres:" + postgres.keywords("no_such_lake"),
                      data_path=str(tmp_path / "lake"), ops_dsn=postgres.uri(postgres.database("ops")))
    with pytest.raises(StorageError, match=r'^\[storage\] catalog: .*"no_such_lake" does not exist'):
        connect_lake(storage)


def test_mask_hides_passwords_and_secrets():
    assert mask("dbname=x password=hunter2 host=h") == "dbname=x password=*** host=h"
    assert mask("postgresql://crm:hunter2@db:5432/crm") == "postgresql://crm:***@db:5432/crm"
    assert mask("key AKIA-1 and s3cr3t", ("s3cr3t", "")) == "key AKIA-1 and ***"


def _shops(tmp_path: Path, storage: Storage) -> Path:
    s = storage
    text = ('[[shops]]\nshop_id = "s1"\n[storage]\nkind = "ducklake"\n'
            f'catalog = {json.dumps(s.catalog)}\ndata_path = {json.dumps(s.data_path)}\nops_dsn = {json.dumps(s.ops_dsn)}\n')
    path = tmp_path / "shops.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_crm_storage_check_opens_the_lake(postgres, tmp_path):  # noqa: F811
    storage = lake_storage(postgres, str(tmp_path / "lake"))
    out = subprocess.run([str(BIN / "crm"), "--config", str(_shops(tmp_path, storage)), "storage", "check"],
                         capture_output=True, text=True, timeout=180, env={**os.environ, "COLUMNS": "300"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'kind = "ducklake": extensions ducklake' in out.stdout and f"data in {tmp_path / 'lake'}/" in out.stdout
    assert "ops database: reached; 0 tables in its schema public" in out.stdout
    assert "schemas staging and marts; 0 tables" in out.stdout


def test_crm_storage_check_says_in_one_line_what_cannot_be_reached(postgres, tmp_path):  # noqa: F811
    storage = lake_storage(postgres, str(tmp_path / "lake"))
    storage = storage.model_copy(update={"ops_dsn": f"postgresql://crm:hunter2@127.0.0.1:{free_port()}/crm"})
    out = subprocess.run([str(BIN / "crm"), "--config", str(_shops(tmp_path, storage)), "storage", "check"],
                         capture_output=True, text=True, timeout=180, env={**os.environ, "COLUMNS": "300"})
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 1 and len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith("error: [storage] ops_dsn: cannot reach the ops database: ") and "hunter2" not in lines[0]


def test_small_inserts_stay_in_the_catalog_until_flushed(postgres, tmp_path):  # noqa: F811
    """DuckLake keeps a small insert's rows in its catalog (no Parquet file per tiny commit) until
    ducklake_flush_inlined_data writes them out, the maintenance step that turns them into files;
    `data_inlining_row_limit=0` writes every insert as Parquet at once."""
    storage = lake_storage(postgres, str(tmp_path / "lake"))
    con = connect_lake(storage)
    try:
        con.execute("CREATE TABLE lake.marts.small (n INTEGER)")
        con.execute("INSERT INTO lake.marts.small SELECT range FROM range(5)")
        assert not list((tmp_path / "lake").rglob("*.parquet")), "5 rows stay in the catalog"
        con.execute("CALL ducklake_flush_inlined_data('lake')")
        assert list((tmp_path / "lake" / "marts" / "small").rglob("*.parquet")), "flushed into a Parquet file"
        assert con.execute("SELECT sum(n) FROM lake.marts.small").fetchone() == (10,)
    finally:
        con.close()
    other = lake_storage(postgres, str(tmp_path / "other"))
    con = connect_lake(other, data_inlining_row_limit=0)
    try:
        con.execute("CREATE TABLE lake.marts.small AS SELECT range AS n FROM range(5)")
        assert list((tmp_path / "other" / "marts" / "small").rglob("*.parquet"))
    finally:
        con.close()


WRITER = textwrap.dedent("""
    import sys
    from crm.config import Storage
    from crm.storage import connect_lake

    storage, writer, batches = Storage.model_validate_json(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    con = connect_lake(storage)
    for b in range(batches):
        con.execute("INSERT INTO lake.staging.events SELECT ?, ?, range FROM range(1000)", [writer, b])
    con.close()
""")


def test_concurrent_insert_only_writers_lose_and_double_nothing(postgres, tmp_path):  # noqa: F811
    """Three processes inserting into the same lake table at once (insert-only, as docs/scale-out.md plans every
    write): every batch is there once."""
    storage = lake_storage(postgres, str(tmp_path / "lake"))
    con = connect_lake(storage)
    con.execute("CREATE TABLE lake.staging.events (writer INTEGER, batch INTEGER, n INTEGER)")
    con.close()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, storage.model_dump_json(), str(w), "5"], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(3)]
    for w in writers:
        _out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-3000:]
    con = connect_lake(storage)
    try:
        rows = con.execute("SELECT writer, batch, count(*), count(DISTINCT n) FROM lake.staging.events "
                           "GROUP BY ALL ORDER BY ALL").fetchall()
    finally:
        con.close()
    assert rows == [(w, b, 1000, 1000) for w in range(3) for b in range(5)]
