"""Shared fixtures: a small landing folder builder, a config file and a real DuckDB file."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import duckdb
import polars as pl
import pytest

from crm.config import load_settings
from crm.db import connect, sync_shops

TWO_SHOPS = """
[[shops]]
shop_id = "s1"
timezone = "Asia/Shanghai"

[[shops]]
shop_id = "s2"
timezone = "America/New_York"
"""


class Landing:
    """Writes drop files into <root>/<entity>/ in any of the three formats."""

    def __init__(self, root: Path):
        self.root = root

    def _path(self, entity: str, name: str) -> Path:
        folder = self.root / entity
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    def csv(self, entity: str, name: str, rows: list[dict], header: list[str] | None = None) -> Path:
        path = self._path(entity, name)
        header = header or list(dict.fromkeys(k for r in rows for k in r))
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=header)
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if v is None else v) for k, v in r.items()})
        return path

    def ndjson(self, entity: str, name: str, rows: list[dict]) -> Path:
        path = self._path(entity, name)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return path

    def parquet(self, entity: str, name: str, rows: list[dict] | pl.DataFrame) -> Path:
        path = self._path(entity, name)
        frame = rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(rows)
        frame.write_parquet(path)
        return path

    def raw(self, entity: str, name: str, content: bytes | str) -> Path:
        path = self._path(entity, name)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path


def order(order_id: str, /, **kw) -> dict:
    """An order row with sensible defaults (shop s1, created 2026-11-20 10:00 Shanghai)."""
    row = {"order_id": order_id, "shop_id": "s1", "customer_id": "c1", "platform": "taobao",
           "created_at": "2026-11-20T10:00:00+08:00", "paid_at": None, "total_amount": "99.00",
           "updated_at": "2026-11-20T10:00:00+08:00"}
    row.update(kw)
    return row


def customer(customer_id: str, /, **kw) -> dict:
    row = {"customer_id": customer_id, "shop_id": "s1", "name": "张三", "phone": "13800000001",
           "email": "a@example.com", "member_level": "1", "registered_at": "2026-01-01T00:00:00+08:00",
           "opt_out": "false", "updated_at": "2026-01-01T00:00:00+08:00"}
    row.update(kw)
    return row


@pytest.fixture
def landing(tmp_path: Path) -> Landing:
    return Landing(tmp_path / "landing")


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "shops.toml"
    path.write_text(TWO_SHOPS, encoding="utf-8")
    return path


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "crm.duckdb"


@pytest.fixture
def con(db_path: Path, config_path: Path):
    c = connect(db_path)
    sync_shops(c, load_settings(config_path))
    yield c
    c.close()


BIN = Path(sys.executable).parent / "crm"


def crm(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run the `crm` command as a user would."""
    full_env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "200", **(env or {})}
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, env=full_env, timeout=timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def prefect_server(home: Path, **settings: str):
    """`crm server start` as a user would: a real Prefect server on 127.0.0.1 (with these Prefect settings in
    its environment); yields the database path beside which its state file lies."""
    db = home / "crm.duckdb"
    env = {"PREFECT_API_URL": "", **settings}
    started = crm("--db", str(db), "server", "start", "--port", str(free_port()), env=env)
    assert started.returncode == 0, started.stderr + started.stdout
    try:
        yield db
    finally:
        crm("--db", str(db), "server", "stop", env=env)


@pytest.fixture(scope="session")
def local_server(tmp_path_factory):
    """One real Prefect server for the session's CLI tests. Its scheduler is off: no test on it waits for a schedule
    (tests/test_schedules.py has a server of its own), and each `prefect deploy --all` would otherwise make up to
    100 upcoming runs per schedule in its SQLite file while the other tests use it (API calls then timed out)."""
    with prefect_server(tmp_path_factory.mktemp("srv"), PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false") as db:
        yield db


@pytest.fixture(scope="session", autouse=True)
def no_server_outlives_the_session(tmp_path_factory):
    """A command that runs a flow with no server beside its database starts one there, which keeps running
    (`./run demo` in the clean-clone test, a test stopped half-way): stop every one left under this session's
    temporary folder, so that no Prefect server outlives the suite."""
    yield
    from crm import orchestration

    root = tmp_path_factory.getbasetemp()
    for pattern in ("*/prefect-server.json", "*/*/prefect-server.json", "*/*/*/prefect-server.json"):
        for state in root.glob(pattern):
            orchestration.stop_server(state.parent / "crm.duckdb")




def rows(db, sql: str, params=None, wait_seconds: float = 10) -> list[tuple]:
    """`sql` on the database file `db`, read-only; while another process (a dispatch, the page's hooks
    writer) holds the file, tried again for up to `wait_seconds`."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            con = duckdb.connect(str(db), read_only=True)
            try:
                return con.execute(sql, params or []).fetchall()
            finally:
                con.close()
        except duckdb.IOException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def settle(db, sql: str, expected, timeout: float = 10) -> list[tuple]:
    """rows(db, sql), read again until they are `expected` or `timeout` seconds pass (rows another process
    writes a moment later: receipts, replies); the last rows read."""
    deadline = time.monotonic() + timeout
    while True:
        got = rows(db, sql)
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.1)
