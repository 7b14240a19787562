"""The analysts' copy of the DuckDB file (crm/analytics_copy.py): the run that publishes it keeps its lock on the
file, and a big file's copy is made after the run, once, before any writer can change the file again."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest

from conftest import crm
from deploying import shop_with_orders
from dispatching import T
from planning import local

from crm.db import analytics_path, analytics_ready, publish, publish_snapshot


def second_writer(db: Path) -> str:
    """What another process gets when it opens `db` for writing."""
    done = subprocess.run([sys.executable, "-c", f"import duckdb; duckdb.connect({str(db)!r}); print('opened')"],
                          capture_output=True, text=True)
    return done.stdout.strip() or done.stderr.strip().splitlines()[-1]


def copiers(db: Path) -> int:
    """Copy processes (crm/analytics_copy.py) running for `db`."""
    n = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        n += any(a.endswith(b"analytics_copy.py") for a in args) and str(db).encode() in args
    return n


def table(db: Path, rows: int) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(db))
    con.execute(f"CREATE TABLE t AS SELECT range AS i, repeat('x', 200) || range AS s FROM range({rows})")
    return con


@pytest.mark.parametrize("background_from", [None, 0], ids=["copied now", "copied after the run"])
def test_the_run_that_publishes_the_copy_keeps_its_lock_on_the_file(tmp_path, background_from):
    # POSIX drops a process's DuckDB lock when it closes any descriptor of the file: a copy made in the writer's
    # own process would let a second writer in while the run still has the file open
    db = tmp_path / "shop.duckdb"
    con = table(db, 1000)
    publish_snapshot(con, db, background_from=background_from)
    assert "Could not set lock" in second_writer(db)
    con.execute("INSERT INTO t VALUES (-1, 'after the copy')")
    con.close()
    assert analytics_ready(db, wait_seconds=30)
    assert second_writer(db) == "opened"


def test_a_big_files_copy_is_made_once_after_the_run_closes_the_file(tmp_path):
    db = tmp_path / "shop.duckdb"
    con = table(db, 300000)
    publish_snapshot(con, db)
    copy = analytics_path(db)
    con.execute("INSERT INTO t SELECT range, 'later' FROM range(1000)")
    publish_snapshot(con, db, background_from=0)
    con.execute("INSERT INTO t SELECT range, 'later still' FROM range(10)")
    publish_snapshot(con, db, background_from=0)
    assert copiers(db) == 1, "a copy already waits for the file: the second publish starts none"
    assert not analytics_ready(db, wait_seconds=0.3), "readers are told a copy is on its way"
    with duckdb.connect(str(copy), read_only=True) as analyst:
        assert analyst.execute("SELECT count(*) FROM t").fetchone()[0] == 300000, "not before the run ends"
    con.close()
    assert analytics_ready(db, wait_seconds=30)
    assert copy.read_bytes() == db.read_bytes()
    with duckdb.connect(str(copy), read_only=True) as analyst:
        assert analyst.execute("SELECT count(*) FILTER (s = 'later'), count(*) FILTER (s = 'later still') "
                               "FROM t").fetchone() == (1000, 10), "the last publish's state is in the copy"
    assert copiers(db) == 0
    assert not list(tmp_path.glob("*.tmp*"))


@contextmanager
def copy_cannot_be_replaced(db: Path):
    """While inside, a copy fails for real: what it would replace is a folder, so its rename cannot happen; the
    previous copy is put back after."""
    copy = analytics_path(db)
    aside = db.with_name("aside.duckdb")
    copy.rename(aside)
    copy.mkdir()
    try:
        yield
    finally:
        copy.rmdir()
        aside.rename(copy)


def publish_failing(con: duckdb.DuckDBPyConnection, db: Path) -> None:
    with copy_cannot_be_replaced(db), pytest.raises(OSError, match="analysts' copy"):
        publish_snapshot(con, db)


def test_a_failed_copy_says_why_and_leaves_the_previous_one(tmp_path):
    db = tmp_path / "shop.duckdb"
    con = table(db, 1000)
    copy = publish_snapshot(con, db)
    before = copy.read_bytes()
    con.execute("INSERT INTO t VALUES (-1, 'x')")
    publish_failing(con, db)
    assert copy.read_bytes() == before
    assert "failed" in copy.with_name(copy.name + ".log").read_text()
    con.close()


def test_crm_storage_sql_waits_for_a_copy_made_after_the_run(local_server, tmp_path):
    db, config = local_server.parent / "background.duckdb", tmp_path / "shops.toml"
    shop_with_orders(db, config, "http://127.0.0.1:9/send", 3)
    config.write_text(config.read_text() + "\n[storage]\nanalytics_copy_background_mb = 0\n")
    query = "SELECT count(DISTINCT as_of) AS times, count(*) AS decisions FROM marts.reminder_decisions"
    for n, at in enumerate([T, local("2026-11-24 11:30")], start=1):
        planned = crm("--db", str(db), "--config", str(config), "plan", "--as-of", at.isoformat(),
                      env={"PREFECT_API_URL": ""})
        assert planned.returncode == 0, planned.stderr
        read = crm("--db", str(db), "--config", str(config), "storage", "sql", "--csv", query)
        assert read.returncode == 0, read.stderr
        assert read.stdout.splitlines() == ["times,decisions", f"{n},{3 * n}"], read.stdout


def test_a_copy_left_half_written_by_a_killed_copier_is_removed_by_the_next(tmp_path):
    db = tmp_path / "shop.duckdb"
    con = table(db, 1000)
    copy = publish_snapshot(con, db)
    left = copy.with_name(copy.name + ".tmp-999999")
    left.write_bytes(b"half a copy")
    con.execute("INSERT INTO t VALUES (-1, 'x')")
    publish_snapshot(con, db)
    assert not left.exists() and copy.read_bytes() == db.read_bytes()
    con.close()


def test_crm_storage_sql_says_when_the_copy_it_reads_is_older_than_a_failed_one(tmp_path):
    """A copy that failed after a run (in the background, nobody waits for it) leaves the previous copy, which
    `crm storage sql` still reads: it says so, with when and why, until a later copy succeeds."""
    db, none = tmp_path / "shop.duckdb", tmp_path / "no-shops.toml"
    con = table(db, 1000)
    publish_snapshot(con, db)
    con.execute("INSERT INTO t VALUES (-1, 'x')")
    publish_failing(con, db)                # the copy of this state is not made
    con.close()
    query = ("--db", str(db), "--config", str(none), "storage", "sql", "--csv", "SELECT count(*) AS n FROM t")
    read = crm(*query)
    assert read.returncode == 0, read.stderr
    assert read.stdout.splitlines() == ["n", "1000"], "the previous copy is what is read"
    warning = [line for line in read.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "reading the analysts' copy of" in warning[0], read.stderr
    assert "Is a directory" in warning[0] and "shop.analytics.duckdb.log" in warning[0], warning
    with duckdb.connect(str(db)) as again:
        publish_snapshot(again, db)
    read = crm(*query)
    assert read.returncode == 0 and read.stdout.splitlines() == ["n", "1001"], read.stderr
    assert "warning" not in read.stderr, read.stderr


def test_a_runs_failed_copy_is_one_warning_and_the_run_stands(tmp_path, caplog):
    """After a run (crm.db.publish, which every flow calls once its work is committed) a failed copy is not raised:
    the task's retries would redo the run, and the command would end in a traceback. It is one warning."""
    from types import SimpleNamespace

    settings = SimpleNamespace(storage=SimpleNamespace(kind="duckdb", analytics_copy_background_mb=256))
    db = tmp_path / "shop.duckdb"
    con = table(db, 1000)
    publish(con, db, settings)
    con.execute("INSERT INTO t VALUES (-1, 'x')")
    with copy_cannot_be_replaced(db), caplog.at_level("WARNING", logger="crm.db"):
        publish(con, db, settings)
    warned = [r.getMessage() for r in caplog.records if r.name == "crm.db"]
    assert len(warned) == 1 and "Is a directory" in warned[0] and "stays the previous one" in warned[0], warned
    assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 1001, "the run's work stands"
    with duckdb.connect(str(analytics_path(db)), read_only=True) as analyst:
        assert analyst.execute("SELECT count(*) FROM t").fetchone()[0] == 1000, "the previous copy stays"
    con.close()


def test_crm_storage_sql_says_in_one_line_when_the_copy_cannot_be_read(tmp_path):
    """An analysts' copy that is no database (here a folder where the file should be; a truncated file alike) is one
    line naming it and what to do, exit 1, not a traceback."""
    db, none = tmp_path / "shop.duckdb", tmp_path / "no-shops.toml"
    con = table(db, 10)
    publish_snapshot(con, db)
    con.close()
    query = ("--db", str(db), "--config", str(none), "storage", "sql", "--csv", "SELECT count(*) AS n FROM t")
    with copy_cannot_be_replaced(db):
        read = crm(*query)
    assert read.returncode == 1, read.stderr
    assert "Traceback" not in read.stderr, read.stderr
    lines = read.stderr.strip().splitlines()
    assert len(lines) == 1 and "shop.analytics.duckdb" in lines[0] and "move it aside" in lines[0], lines
    analytics_path(db).write_bytes(b"not a database")
    read = crm(*query)
    assert read.returncode == 1 and "Traceback" not in read.stderr and "move it aside" in read.stderr, read.stderr
