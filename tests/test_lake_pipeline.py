"""Ingest, plan and backfill on the lake layout (`[storage] kind = "ducklake"`, docs/rules.md §10): the same landing and
the same T give the same `marts.*` rows as on the embedded DuckDB file, row for row, on the demo's data and on a
DST night; the manifest, the quarantine and the file hashes are in PostgreSQL, where a second ingest finds them; the
`crm` commands run there as a user runs them. Each test takes its own databases in the session's PostgreSQL cluster
(tests/postgres.py) and its own data folder."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import crm
from crm.config import Storage, load_settings, parse_settings
from crm.db import session
from crm.demo import generate
from crm.storage import layout
from postgres import postgres  # noqa: F401  (the session's fixture)
from test_plan_reference import CASES, VARIANTS, write_landing
from test_plan_reference import generate as reference_data
from transforms.ingest import ENTITIES, load
from transforms.plan import plan
from transforms.validate import validate_ingest

UTC = timezone.utc
T = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _own_extension_directory(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CRM_DUCKDB_EXTENSIONS", str(tmp_path_factory.getbasetemp() / "duckdb-extensions"))


def lake_of(postgres, folder: Path) -> Storage:  # noqa: F811
    return Storage(kind="ducklake", catalog="postgres:" + postgres.keywords(postgres.database("lake")),
                   data_path=str(folder), ops_dsn=postgres.uri(postgres.database("ops")))


def marts(con) -> dict[str, list[str]]:
    """Every marts table and view, its rows as sorted text (the same rows in any order compare equal)."""
    names = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'marts' "
                                       "AND table_catalog = current_database() ORDER BY 1").fetchall()]
    return {name: sorted(repr(r) for r in con.execute(f"SELECT * FROM marts.{name}").fetchall()) for name in names}


def differences(a: dict, b: dict) -> list[str]:
    out = [f"{name}: only on one storage" for name in sorted(set(a) ^ set(b))]
    for name in sorted(set(a) & set(b)):
        if a[name] != b[name]:
            only_a = [r for r in a[name] if r not in set(b[name])][:3]
            only_b = [r for r in b[name] if r not in set(a[name])][:3]
            out.append(f"{name}: {len(a[name])} rows vs {len(b[name])}; file only {only_a}; lake only {only_b}")
    return out


def test_demo_data_gives_the_same_marts_on_both_storages(postgres, tmp_path):  # noqa: F811
    generate(tmp_path, orders=2000, anchor=T)
    settings = load_settings(tmp_path / "shops.toml")
    lake = settings.model_copy(update={"storage": lake_of(postgres, tmp_path / "lake")})
    got = {}
    for name, s in (("file", settings), ("lake", lake)):
        with session(tmp_path / "crm.duckdb", s, lake=True) as con:
            loaded = load(con, tmp_path / "landing", validate=validate_ingest)
            plan(con, T - timedelta(hours=30))
            plan(con, T)
            got[name] = (loaded.rows_loaded, loaded.rows_quarantined, marts(con))
    assert got["file"][:2] == got["lake"][:2] and got["file"][0] > 5000 and got["file"][1] > 0
    assert sum(map(len, got["file"][2].values())) > 1000        # decisions, tasks and segments were made
    problems = differences(got["file"][2], got["lake"][2])
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("seed,when,overrides", [c for c in CASES if c[0] in (2, 6)],
                         ids=["new-york-fall-back", "berlin-fall-back"])
def test_a_dst_night_gives_the_same_marts_on_both_storages(postgres, tmp_path, seed, when, overrides):  # noqa: F811
    """The reference cases on the night the clocks go back (an hour that happens twice), with messages already
    sent before T, planned at T, at T - 26 h, and at T again."""
    data = reference_data(seed, when, overrides)
    write_landing(data, tmp_path / "landing")
    settings = parse_settings({"shops": data["raw_shops"]})
    lake = settings.model_copy(update={"storage": lake_of(postgres, tmp_path / "lake")})
    got = {}
    for name, s in (("file", settings), ("lake", lake)):
        with session(tmp_path / "crm.duckdb", s, lake=True) as con:
            load(con, tmp_path / "landing")
            con.executemany(
                f"INSERT INTO {layout.ops_table(con, 'messages')} (message_id, purpose, shop_id, order_id, customer_id, "
                "channel, status, attempts, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
                [[m["message_id"], m["purpose"], m["shop_id"], m["order_id"], m["customer_id"], m["channel"],
                  m["status"], m["created_at"]] for m in data["messages"]])
            for t in (when, when - timedelta(hours=26), when):
                plan(con, t, variants=list(VARIANTS))
            got[name] = marts(con)
    assert len(got["file"]["reminder_decisions"]) > 20 and len(got["file"]["visit_tasks"]) > 5
    problems = differences(got["file"], got["lake"])
    assert not problems, "\n".join(problems)


def _lake_shops(tmp_path: Path, storage: Storage) -> Path:
    """The demo's shops file with a [storage] table for `storage`."""
    text = (tmp_path / "shops.toml").read_text(encoding="utf-8")
    text += ('\n[storage]\nkind = "ducklake"\n'
             f'catalog = {json.dumps(storage.catalog)}\ndata_path = {json.dumps(storage.data_path)}\n'
             f'ops_dsn = {json.dumps(storage.ops_dsn)}\n')
    path = tmp_path / "lake.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_crm_ingest_plan_and_backfill_run_on_the_lake(postgres, tmp_path, local_server):  # noqa: F811
    """As a user runs them: `crm ingest` twice (the second finds every file in the manifest, in PostgreSQL), then
    `crm plan` and `crm backfill`, their flow runs on the local Prefect server; the lake's rows are the marts."""
    generate(tmp_path, orders=800, anchor=T)
    storage = lake_of(postgres, tmp_path / "lake")
    config = _lake_shops(tmp_path, storage)
    common = ("--db", str(local_server), "--config", str(config))
    first = crm(*common, "ingest", str(tmp_path / "landing"))
    assert first.returncode == 0, first.stderr[-3000:]
    again = crm(*common, "ingest", str(tmp_path / "landing"))
    assert again.returncode == 0 and "nothing new: all" in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]
    planned = crm(*common, "plan", "--as-of", T.isoformat())
    assert planned.returncode == 0, planned.stderr[-3000:]
    filled = crm(*common, "backfill", "--from", (T - timedelta(hours=2)).isoformat(), "--to", T.isoformat(), "--every", "1h")
    assert filled.returncode == 0, filled.stderr[-3000:]
    assert "backfill planned 3 times" in filled.stdout, filled.stdout[-2000:]
    settings = load_settings(config)
    with session(tmp_path / "unused.duckdb", settings, lake=True) as con:
        runs = con.execute("SELECT count(*), sum(files_new) FROM opsdb.ingest_runs").fetchone()
        files = con.execute("SELECT count(*) FROM opsdb.ingested_files").fetchone()[0]
        hashes = con.execute("SELECT count(*) FROM opsdb.file_hashes").fetchone()[0]
        quarantined = con.execute("SELECT entity, count(*) FROM opsdb.quarantine GROUP BY 1 ORDER BY 1").fetchall()
        times = {r[0] for r in con.execute("SELECT DISTINCT as_of FROM marts.reminder_decisions").fetchall()}
        decisions = con.execute("SELECT count(*) FROM marts.reminder_decisions WHERE as_of = ?", [T]).fetchone()[0]
    assert runs[0] == 1 and runs[1] == files == hashes > 5        # the second ingest found nothing new
    status = crm(*common, "status")
    assert status.returncode == 0 and "the lake" in status.stdout and "ops.messages" in status.stdout, status.stderr
    assert "ingest #" in status.stdout and "staging.orders" in status.stdout
    shown = crm(*common, "quarantine", "--limit", "3")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.splitlines()[0] == ", ".join(f"{e}: {n:,}" for e, n in quarantined), shown.stdout
    assert times == {T - timedelta(hours=2), T - timedelta(hours=1), T} and decisions > 0
    assert not (tmp_path / "unused.duckdb").exists()


def test_a_failed_validation_leaves_neither_the_lake_nor_postgresql_changed(postgres, tmp_path):  # noqa: F811
    """The run's validation raising (as a critical failure does) rolls the lake's transaction back, and the manifest,
    quarantine and run record never reach PostgreSQL: the next ingest loads every file, once."""
    generate(tmp_path, orders=500, anchor=T)
    settings = load_settings(tmp_path / "shops.toml")
    lake = settings.model_copy(update={"storage": lake_of(postgres, tmp_path / "lake")})

    def failing(con, ingest_id):
        validate_ingest(con, ingest_id)
        raise RuntimeError("a critical expectation failed")

    with session(tmp_path / "unused.duckdb", lake, lake=True) as con:
        with pytest.raises(RuntimeError, match="critical"):
            load(con, tmp_path / "landing", validate=failing)
        left = [con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in
                ("staging.orders", "staging.customers", "opsdb.ingest_runs", "opsdb.ingested_files", "opsdb.quarantine")]
        assert left == [0, 0, 0, 0, 0]
        assert not con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary AND table_name LIKE '_ops_%'").fetchone()[0]
        loaded = load(con, tmp_path / "landing", validate=validate_ingest)
        assert con.execute("SELECT count(*) FROM opsdb.quarantine WHERE row_number IS NOT NULL").fetchone()[0] \
            == loaded.rows_quarantined > 0
        assert load(con, tmp_path / "landing", validate=validate_ingest).files_new == 0
        staged = [con.execute(f"SELECT count(*) FROM staging.{t}").fetchone()[0] for t in ENTITIES]
    with session(tmp_path / "crm.duckdb", settings) as con:                 # the same files, once, into the file
        load(con, tmp_path / "landing", validate=validate_ingest)
        assert staged == [con.execute(f"SELECT count(*) FROM staging.{t}").fetchone()[0] for t in ENTITIES]
    assert sum(staged) > 1000


def test_crm_storage_maintain_merges_files_and_expires_snapshots_keeping_the_rows(postgres, tmp_path, local_server):  # noqa: F811
    """The daily upkeep as a user runs it: after an ingest and several plans (each a commit and small files), `crm
    storage maintain` leaves one snapshot, deletes the files merged away, and every mart keeps its rows; on the DuckDB
    file it says it has nothing to do."""
    generate(tmp_path, orders=600, anchor=T)
    storage = lake_of(postgres, tmp_path / "lake")
    config = _lake_shops(tmp_path, storage)
    common = ("--db", str(local_server), "--config", str(config))
    settings = load_settings(config)
    with session(tmp_path / "unused.duckdb", settings, lake=True) as con:
        load(con, tmp_path / "landing")
        for hours in (3, 2, 1, 0):
            plan(con, T - timedelta(hours=hours))
        before = marts(con)
    done = crm(*common, "storage", "maintain", "--keep-days", "0", "--now", (T + timedelta(days=30)).isoformat())
    assert done.returncode == 0, done.stderr[-3000:]
    snapshots = [int(n.replace(",", "")) for n in done.stdout.split("lake: ")[1].split(" snapshots")[0].split(" → ")]
    deleted = int(done.stdout.split("clean up old files: ")[1].split(" ")[0].replace(",", ""))
    assert snapshots[1] == 1 < snapshots[0], done.stdout                # nothing is kept older than --now - 0 days
    assert deleted > 0, done.stdout                                    # the files the merge replaced
    assert "merge adjacent files: " in done.stdout and "flush inlined data: " in done.stdout
    with session(tmp_path / "unused.duckdb", settings, lake=True) as con:
        assert marts(con) == before
    on_file = crm("--db", str(local_server), "--config", str(tmp_path / "shops.toml"), "storage", "maintain")
    assert on_file.returncode == 0 and 'kind = "duckdb": nothing to maintain' in on_file.stdout, on_file.stderr[-2000:]


def _commit_once_a_write_waits(dsn: str, other):
    """A thread that commits `other` (a psycopg connection holding rows not committed yet) once a session of its
    database waits on a lock: this run's COPY, which read no conflict, now waits on those rows in the unique index."""
    import threading
    import time

    import psycopg

    def commit() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as watch:
                deadline = time.monotonic() + 60
                while not watch.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                        "AND datname = current_database()").fetchone()[0]:
                    if time.monotonic() > deadline:
                        return                              # the test's assertions say what went wrong
                    time.sleep(0.02)
            other.commit()
        finally:
            other.close()

    thread = threading.Thread(target=commit)
    thread.start()
    return thread


def test_hashes_another_partitions_run_wrote_a_moment_before_are_kept_and_the_ingest_goes_on(postgres, tmp_path,  # noqa: F811
                                                                                               monkeypatch):
    """Partitions share ops.file_hashes in PostgreSQL and hash the same landing files at once. CI met the race: the
    other run's rows went in between this run's DELETE and its write, and DuckDB's postgres extension (an INSERT is a
    COPY there; ON CONFLICT does not reach PostgreSQL) failed the ingest on a duplicate key. Here the other run
    writes two of the paths at exactly that moment."""
    import duckdb
    import psycopg

    import transforms.ingest as ingest

    generate(tmp_path, orders=200, anchor=T)
    lake = load_settings(tmp_path / "shops.toml")
    lake = lake.model_copy(update={"storage": lake_of(postgres, tmp_path / "lake")})
    files, _ = ingest.discover(tmp_path / "landing")
    real, raced = ingest._insert_rows, []

    def the_other_run_first(con, insert, rows, types, tail=""):
        # the other run has written two of the paths, not committed yet: this write reads no conflict, then waits
        # on them in PostgreSQL's unique index; the other run commits once this one waits there
        if "file_hashes" not in insert or raced:
            return real(con, insert, rows, types, tail)
        raced.append(len(rows))
        other = psycopg.connect(lake.storage.ops_dsn)
        other.cursor().executemany("INSERT INTO public.file_hashes VALUES (%s, %s, %s, %s, %s, %s)", rows[:2])
        committer = _commit_once_a_write_waits(lake.storage.ops_dsn, other)
        try:
            return real(con, insert, rows, types, tail)
        finally:
            committer.join()

    monkeypatch.setattr(ingest, "_insert_rows", the_other_run_first)
    with session(tmp_path / "crm.duckdb", lake, lake=True) as con:
        new = ingest.select_new(con, files)
        hashes = dict(con.execute("SELECT path, file_hash FROM opsdb.file_hashes").fetchall())
    assert raced == [len(files)] and len(files) > 2
    assert {f.sha256 for f in new} == {f.sha256 for f in files}, "every file is new to this partition"
    assert hashes == {str(f.path): f.sha256 for f in files}, "one row a path, the right hash"

    def broken(con, insert, rows, types, tail=""):
        raise duckdb.IOException("connection to PostgreSQL lost")

    monkeypatch.setattr(ingest, "_insert_rows", broken)
    for f in files:
        f.path.touch()                                  # new identities: each is hashed and written again
    with session(tmp_path / "crm.duckdb", lake, lake=True) as con, pytest.raises(duckdb.IOException, match="lost"):
        ingest.select_new(con, files)                  # any other failure is raised at once


def test_a_message_another_worker_wrote_a_moment_before_is_one_row_and_the_outbox_write_goes_on(postgres, tmp_path):  # noqa: F811
    """Two dispatch workers of one unpartitioned lake plan the same messages and write them at once: the other
    worker's row, committed while this write's COPY waits on it, stays the one row; this worker's others go in."""
    import polars as pl
    import psycopg

    from transforms.dispatch import write_outbox

    generate(tmp_path, orders=100, anchor=T)
    lake = load_settings(tmp_path / "shops.toml")
    lake = lake.model_copy(update={"storage": lake_of(postgres, tmp_path / "lake")})
    ids = [f"payment_reminder:o{i}" for i in range(3)]
    frame = pl.DataFrame({
        "message_id": ids, "purpose": ["payment_reminder"] * 3, "shop_id": ["s1"] * 3,
        "order_id": [f"o{i}" for i in range(3)], "customer_id": [f"c{i}" for i in range(3)], "channel": ["sms"] * 3,
        "recipient": ["13900000000"] * 3, "body": ["您好"] * 3, "template": ["payment_reminder/new"] * 3,
        "created_at": [T] * 3, "segments": [1] * 3})
    with session(tmp_path / "crm.duckdb", lake, lake=True) as con:
        other = psycopg.connect(lake.storage.ops_dsn)
        other.execute("INSERT INTO public.messages (message_id, purpose, shop_id, channel, body, status, attempts, "
                      "created_at) VALUES (%s, 'payment_reminder', 's1', 'sms', 'the other worker', 'queued', 0, %s)",
                      [ids[1], T])
        committer = _commit_once_a_write_waits(lake.storage.ops_dsn, other)
        try:
            write_outbox(con, frame, T)
        finally:
            committer.join()
        rows = con.execute("SELECT message_id, body FROM opsdb.messages ORDER BY 1").fetchall()
    assert rows == [(ids[0], "您好"), (ids[1], "the other worker"), (ids[2], "您好")]


def test_two_partitions_at_once_give_together_the_marts_of_one_file(postgres, tmp_path, local_server):  # noqa: F811
    """[storage] partitions = 4 puts the demo's s1 in partition 2 and s2, s3 in partition 3 (crm/storage/partitions.py).
    Both partitions ingest the same landing folder and plan, as two `crm` processes at the same time: neither refuses
    the other (each is a lake of its own), each keeps only its shops' rows (another partition's shop is quarantined
    as not configured there), and their marts together are, row for row, the marts of the one DuckDB file."""
    import subprocess
    import sys

    from crm.storage import partitions

    generate(tmp_path, orders=1500, anchor=T)
    settings = load_settings(tmp_path / "shops.toml")
    assert [partitions.bucket(s.shop_id, 4) for s in settings.shops] == [2, 3, 3]
    storage = lake_of(postgres, tmp_path / "lake").model_copy(update={"partitions": 4})
    config = _lake_shops(tmp_path, storage)
    config.write_text(config.read_text(encoding="utf-8") + "partitions = 4\n", encoding="utf-8")
    script = ("import subprocess, sys\n"
              "for args in (['ingest', sys.argv[2]], ['plan', '--as-of', sys.argv[3]]):\n"
              "    r = subprocess.run([sys.argv[1], *sys.argv[4:], *args], capture_output=True, text=True)\n"
              "    if r.returncode: sys.exit(r.stderr[-3000:])\n")
    env = {**__import__("os").environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "200"}
    runs = [subprocess.Popen([sys.executable, "-c", script, str(Path(sys.executable).parent / "crm"),
                              str(tmp_path / "landing"), T.isoformat(), "--db", str(local_server), "--config",
                              str(config), "--partition", str(k)], env=env, stderr=subprocess.PIPE, text=True)
            for k in (2, 3)]
    for run in runs:
        assert run.wait(timeout=600) == 0, run.stderr.read()
    lake = load_settings(config)
    together: dict[str, list[str]] = {}
    for k in (2, 3):
        with session(tmp_path / "unused.duckdb", lake, lake=True, partition=k) as con:
            shops = {r[0] for r in con.execute("SELECT DISTINCT shop_id FROM staging.orders").fetchall()}
            assert shops == {s.shop_id for s in settings.shops if partitions.bucket(s.shop_id, 4) == k}
            for name, rows in marts(con).items():
                together[name] = sorted(together.get(name, []) + rows)
    with session(tmp_path / "unused.duckdb", lake, lake=True, partition=0) as con:      # no shop falls in it
        (tmp_path / "empty").mkdir()
        assert load(con, tmp_path / "empty").files_new == 0
        result = plan(con, T)
        assert (result.unpaid_orders, result.visit_tasks) == (0, 0)
    with session(tmp_path / "crm.duckdb", settings) as con:
        load(con, tmp_path / "landing")
        plan(con, T)
        one = marts(con)
    problems = differences(one, together)
    assert not problems, "\n".join(problems)
    assert len(one["reminder_decisions"]) > 20
    # the analysts' read path: the partitions as one set of tables, read-only
    query = "SELECT shop_id, decision, count(*) AS n FROM marts.reminder_decisions GROUP BY ALL ORDER BY ALL"
    read = crm("--db", str(local_server), "--config", str(config), "storage", "sql", "--csv", query)
    assert read.returncode == 0, read.stderr[-2000:]
    with session(tmp_path / "crm.duckdb", settings) as con:
        expected = con.execute(query).fetchall()
    assert read.stdout.splitlines() == ["shop_id,decision,n"] + [f"{a},{b},{n}" for a, b, n in expected]
    refused = crm("--db", str(local_server), "--config", str(config), "storage", "sql", "DELETE FROM marts.visit_tasks")
    assert refused.returncode == 2 and refused.stderr.startswith("error: the query: "), refused.stderr[-2000:]
    with session(tmp_path / "unused.duckdb", lake, lake=True, partition=3) as con:
        assert con.execute("SELECT count(*) FROM marts.visit_tasks").fetchone()[0] > 0


def test_a_partitioned_lake_needs_the_partition_named_in_one_line(postgres, tmp_path):  # noqa: F811
    generate(tmp_path, orders=200, anchor=T)
    storage = lake_of(postgres, tmp_path / "lake")
    config = _lake_shops(tmp_path, storage)
    config.write_text(config.read_text(encoding="utf-8") + "partitions = 4\n", encoding="utf-8")
    for extra, words in (([], "[storage] partitions = 4: name the partition this command works on (--partition 0…3"),
                         (["--partition", "4"], "--partition 4: [storage] partitions = 4 has partitions 0…3")):
        out = crm("--config", str(config), *extra, "plan", "--as-of", T.isoformat(), env={"PREFECT_API_URL": ""})
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode == 2 and len(lines) == 1 and words in lines[0], out.stderr[-2000:]
    out = crm("--config", str(tmp_path / "shops.toml"), "--partition", "1", "plan", env={"PREFECT_API_URL": ""})
    assert out.returncode == 2 and "--partition 1: [storage] has no partitions" in out.stderr, out.stderr[-2000:]


def test_a_lake_commit_refused_for_another_writers_is_retried(postgres, tmp_path):  # noqa: F811
    """Two writers of one lake table at once: DuckLake refuses the later commit; that failure is one the flows' tasks
    retry (flows/retry.py), a failure of bad input is not."""
    from prefect.states import Failed

    from crm.storage import connect_lake
    from flows.retry import only_transient

    storage = lake_of(postgres, tmp_path / "lake")
    a, b = connect_lake(storage), connect_lake(storage)
    try:
        a.execute("CREATE TABLE lake.staging.t (x INTEGER); INSERT INTO lake.staging.t VALUES (1)")
        for con, x in ((a, 2), (b, 3)):
            con.execute(f"BEGIN; DELETE FROM lake.staging.t WHERE x = 1; INSERT INTO lake.staging.t VALUES ({x})")
        a.execute("COMMIT")
        with pytest.raises(Exception) as refused:
            b.execute("COMMIT")
    finally:
        a.close()
        b.close()
    assert "conflict" in str(refused.value).lower()
    assert only_transient(None, None, Failed(data=refused.value)) is True
    assert only_transient(None, None, Failed(data=ValueError("a bad row"))) is False
