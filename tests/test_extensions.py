"""DuckDB's ducklake, postgres and httpfs extensions from their PyPI wheels, offline (crm/storage/extensions.py,
docs/rules.md §10): the wheels are the installed duckdb's, they load in a fresh process that cannot reach any
network, and a wheel made for another duckdb is one line before DuckDB reads its binary."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import duckdb
import pytest

from crm.storage import extensions
from crm.storage.extensions import NAMES, ExtensionError, binary, distribution

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_the_wheels_are_made_for_the_installed_duckdb():
    pins = {}
    for line in tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]:
        name, _, version = line.partition("==")
        pins[name] = version
    assert pins["duckdb"] == duckdb.__version__
    for name in NAMES:
        dist = distribution(name)
        assert pins[dist] == duckdb.__version__, f"pyproject.toml pins {dist} to duckdb's version"
        assert importlib.metadata.version(dist) == duckdb.__version__
        path = binary(name)
        assert path.name == f"{name}.duckdb_extension" and path.parent.name == f"v{duckdb.__version__}"
        assert path.stat().st_size > 1_000_000, "the signed binary itself, not a stub"


def _no_network() -> list[str]:
    """A command prefix that runs a program in a network namespace of its own (only a loopback that is down),
    where any download fails at once; [] where the machine does not allow one."""
    if shutil.which("unshare"):
        probe = subprocess.run(["unshare", "--net", "true"], capture_output=True)
        if probe.returncode == 0:
            return ["unshare", "--net"]
    return []


LOAD_ALL = textwrap.dedent("""
    import json, sys
    import duckdb
    from crm.storage import extensions

    con = extensions.connect()
    rows = con.execute(
        "SELECT extension_name, loaded, installed, install_mode, installed_from FROM duckdb_extensions() "
        "WHERE extension_name IN ('ducklake', 'postgres_scanner', 'httpfs') ORDER BY 1").fetchall()
    lake = sys.argv[1]
    con.execute(f"ATTACH 'ducklake:{lake}/meta.ducklake' AS l (DATA_PATH '{lake}/data/', DATA_INLINING_ROW_LIMIT 0)")
    con.execute("CREATE TABLE l.t AS SELECT range AS n FROM range(100)")
    total = con.execute("SELECT sum(n) FROM l.t").fetchone()[0]
    scanner = con.execute("SELECT count(*) FROM duckdb_functions() WHERE function_name = 'postgres_scan'").fetchone()[0]
    s3 = con.execute("SELECT count(*) FROM duckdb_settings() WHERE name = 's3_region'").fetchone()[0]
    settings = dict(con.execute("SELECT name, value FROM duckdb_settings() WHERE name IN "
                                "('autoinstall_known_extensions', 'autoload_known_extensions', 'extension_directory')").fetchall())
    print(json.dumps({"rows": [list(r) for r in rows], "total": int(total), "scanner": scanner, "s3": s3,
                      "settings": settings}))
""")


def test_the_extensions_load_offline_in_a_fresh_process(tmp_path):
    prefix = _no_network()
    env = {**os.environ, "CRM_DUCKDB_EXTENSIONS": str(tmp_path / "ext"),
           # without a network namespace: any download would go to a port nothing listens on
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": ""}
    out = subprocess.run([*prefix, sys.executable, "-c", LOAD_ALL, str(tmp_path)], capture_output=True, text=True,
                         env=env, timeout=180, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout)
    rows = {r[0]: r for r in got["rows"]}
    assert set(rows) == {"ducklake", "postgres_scanner", "httpfs"}
    for name, (_n, loaded, installed, mode, source) in rows.items():
        wheel = binary("postgres" if name == "postgres_scanner" else name)
        assert loaded and installed and mode == "CUSTOM_PATH" and source == str(wheel), rows[name]
    assert got["total"] == sum(range(100)) and got["scanner"] == 1 and got["s3"] == 1
    assert got["settings"] == {"autoinstall_known_extensions": "false", "autoload_known_extensions": "false",
                               "extension_directory": str(tmp_path / "ext")}
    # the binaries were copied into the extension directory of our choosing, under duckdb's version
    copied = sorted(p.name for p in (tmp_path / "ext").rglob("*.duckdb_extension"))
    assert copied == ["ducklake.duckdb_extension", "httpfs.duckdb_extension", "postgres_scanner.duckdb_extension"] \
        or copied == ["ducklake.duckdb_extension", "httpfs.duckdb_extension", "postgres.duckdb_extension"], copied
    assert all(f"v{duckdb.__version__}" in p.parts for p in (tmp_path / "ext").rglob("*.duckdb_extension"))
    assert list((tmp_path / "data").rglob("*.parquet")), "the lake wrote its Parquet files"


def test_a_second_connection_loads_what_the_first_installed(tmp_path, monkeypatch):
    """The binaries are copied once per extension directory (postgres is listed as postgres_scanner)."""
    monkeypatch.setenv("CRM_DUCKDB_EXTENSIONS", str(tmp_path / "ext"))
    copies = []
    for _ in range(2):
        con = extensions.connect()
        loaded = con.execute("SELECT count(*) FROM duckdb_extensions() WHERE loaded AND "
                             "extension_name IN ('ducklake', 'postgres_scanner', 'httpfs')").fetchone()[0]
        con.close()
        assert loaded == 3
        copies.append({p: p.stat().st_mtime_ns for p in (tmp_path / "ext").rglob("*.duckdb_extension")})
    assert len(copies[0]) == 3 and copies[1] == copies[0], "the second connection installed nothing again"


TOGETHER = """
import sys, time
from crm.storage import extensions
start = float(sys.argv[1])
while time.time() < start:
    pass
try:
    extensions.connect().close()
    print("loaded")
except extensions.ExtensionError as e:
    print(e)
"""


def test_processes_that_start_together_on_a_new_environment_all_load_the_extensions(tmp_path):
    """A shop group's workers start together on a fresh install: each installs into the same, empty extension
    directory. Without the install lock, one process's INSTALL replaced the binary another was loading ("Extension …
    not found"): 17 of 80 such processes failed here. Four processes a round, started within 0.3 s of each other."""
    outcomes = []
    for round_ in range(4):
        env = {**os.environ, "CRM_DUCKDB_EXTENSIONS": str(tmp_path / f"ext{round_}")}
        start = time.time() + 2.0
        procs = [subprocess.Popen([sys.executable, "-c", TOGETHER, str(start + k * 0.1)], env=env, cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(4)]
        outcomes += [p.communicate(timeout=180)[0].strip() for p in procs]
    assert outcomes == ["loaded"] * 16, outcomes


def _fake_wheel(root: Path, name: str, version: str, folder: str) -> Path:
    """A stand-in package `duckdb_extension_<name>` of `version`, its binary (not a real one: it must never be
    loaded) under extensions/<folder>/, put before the real one on the path."""
    package = root / f"duckdb_extension_{name}"
    (package / "extensions" / folder).mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "extensions" / folder / f"{name}.duckdb_extension").write_bytes(b"not a DuckDB extension")
    info = root / f"duckdb_extension_{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: duckdb_extension_{name}\nVersion: {version}\n")
    return root


def test_a_wheel_of_another_duckdb_is_one_line():
    other = "1.5.4" if duckdb.__version__ != "1.5.4" else "1.5.3"
    with pytest.raises(ExtensionError) as info:
        binary("ducklake", duckdb_version=other)
    message = str(info.value)
    assert message == (f"duckdb-extension-ducklake {duckdb.__version__} does not match duckdb {other}: its "
                       f"extension would crash DuckDB; install duckdb-extension-ducklake=={other} (uv.lock pins both)")


@pytest.mark.parametrize("version,folder,words", [
    ("1.5.4", "v1.5.4", ["duckdb-extension-httpfs 1.5.4 does not match duckdb {v}", "install duckdb-extension-httpfs=={v}"]),
    ("{v}", "v1.5.4", ["duckdb-extension-httpfs {v} has no binary for duckdb v{v} (it holds v1.5.4)"]),
])
def test_a_mismatched_wheel_stops_the_command_in_one_line(tmp_path, version, folder, words):
    """A wheel installed beside another duckdb (here: a stand-in first on the path) is refused by name, before
    DuckDB reads the file, in one `error:` line of the command; nothing is loaded or crashes."""
    v = duckdb.__version__
    fake = _fake_wheel(tmp_path / "fake", "httpfs", version.format(v=v), folder)
    config = tmp_path / "shops.toml"
    config.write_text('[[shops]]\nshop_id = "s1"\n[storage]\nkind = "ducklake"\ncatalog = "postgres:dbname=x host=127.0.0.1 port=9"\n'
                      'data_path = "s3://b/lake/"\nops_dsn = "postgresql://crm@127.0.0.1:9/crm"\n'
                      '[storage.s3]\nendpoint = "127.0.0.1:9"\n', encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(fake), "CRM_DUCKDB_EXTENSIONS": str(tmp_path / "ext"), "COLUMNS": "300"}
    out = subprocess.run([str(BIN / "crm"), "--config", str(config), "storage", "check"], capture_output=True,
                         text=True, env=env, timeout=120)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith("error: ") and all(w.format(v=v) in lines[0] for w in words), lines[0]
    assert not (tmp_path / "ext").exists() or not list((tmp_path / "ext").rglob("*.duckdb_extension"))


def test_a_missing_wheel_is_one_line(monkeypatch):
    real = importlib.metadata.version

    def version(dist: str) -> str:
        if dist == "duckdb-extension-postgres":
            raise importlib.metadata.PackageNotFoundError(dist)
        return real(dist)

    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(ExtensionError, match=re.escape(
            f"the DuckDB extension 'postgres' is not installed: it comes from the Python package "
            f"duckdb-extension-postgres=={duckdb.__version__} (./run installs it from uv.lock)")):
        extensions.connect(names=["postgres"])
