"""DuckDB's ducklake, postgres and httpfs extensions, installed offline from their PyPI wheels (docs/rules.md §10).

DuckDB's own `INSTALL ducklake` downloads from DuckDB's extension site, which a machine without internet cannot
reach. The wheels `duckdb-extension-<name>` (pinned in pyproject.toml beside duckdb itself) each hold DuckDB's
signed binary under `<package>/extensions/v<duckdb version>/<name>.duckdb_extension`. A connection made by
:func:`connect` installs those files (`INSTALL '<path>'`) into an extension directory of the environment's own
and loads them, with DuckDB's automatic install and load switched off, so that nothing is ever fetched.

A binary built for another DuckDB crashes the process that loads it, so the versions are compared first: a
wheel that does not match `duckdb.__version__` (its installed version, or the folder its binary is in) is
one line (ExtensionError), before DuckDB sees the file.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import duckdb

# the extensions the lake needs: DuckLake itself, its PostgreSQL catalog and the ops tables, and S3 data paths
NAMES = ("ducklake", "postgres", "httpfs")
# the name DuckDB lists an extension under, where it is not the one it is loaded by
LISTED_AS = {"postgres": "postgres_scanner"}


class ExtensionError(Exception):
    """An extension that cannot be loaded offline, phrased as one line for the user."""


def distribution(name: str) -> str:
    """The PyPI name of the wheel that holds extension `name`: 'duckdb-extension-ducklake'."""
    return f"duckdb-extension-{name}"


def extension_directory() -> Path:
    """Where INSTALL copies the binaries: CRM_DUCKDB_EXTENSIONS, else `duckdb_extensions/` inside the Python
    environment that holds the wheels (the checkout's .venv), so that it never mixes with another
    environment's DuckDB and goes away with it."""
    configured = os.environ.get("CRM_DUCKDB_EXTENSIONS", "").strip()
    return Path(configured) if configured else Path(sys.prefix) / "duckdb_extensions"


def binary(name: str, duckdb_version: str | None = None) -> Path:
    """The signed binary of extension `name` in its wheel, after checking that the wheel was made for this
    DuckDB; ExtensionError (one line) when it is missing or made for another version."""
    if name not in NAMES:
        raise ExtensionError(f"{name!r} is not one of the extensions the project installs ({', '.join(NAMES)})")
    want = duckdb_version or duckdb.__version__
    dist = distribution(name)
    pin = f"{dist}=={want}"
    try:
        have = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        raise ExtensionError(f"the DuckDB extension {name!r} is not installed: it comes from the Python package "
                             f"{pin} (./run installs it from uv.lock)") from None
    if have != want:
        raise ExtensionError(f"{dist} {have} does not match duckdb {want}: its extension would crash DuckDB; "
                             f"install {pin} (uv.lock pins both)")
    spec = importlib.util.find_spec(dist.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ExtensionError(f"{dist} {have} is installed but its package cannot be found: reinstall {pin}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "extensions"
    path = folder / f"v{want}" / f"{name}.duckdb_extension"
    if not path.is_file():
        found = sorted(p.parent.name for p in folder.glob(f"*/{name}.duckdb_extension"))
        holds = f"it holds {', '.join(found)}" if found else f"it holds no {name}.duckdb_extension"
        raise ExtensionError(f"{dist} {have} has no binary for duckdb v{want} ({holds}): install {pin}")
    return path


def config() -> dict[str, str | bool]:
    """The DuckDB settings of a connection that loads extensions only from the wheels: its own extension
    directory, nothing installed or loaded behind our back."""
    return {"extension_directory": str(extension_directory()),
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False}


def load(con: duckdb.DuckDBPyConnection, names: tuple[str, ...] | list[str] = NAMES) -> None:
    """Install (from the wheel, once per extension directory) and load each extension on `con`; every path
    is checked before DuckDB reads it. `con` should have been made with :func:`config`'s settings."""
    paths = {name: binary(name) for name in names}     # all checked before any is loaded
    folder = extension_directory()
    folder.mkdir(parents=True, exist_ok=True)
    with _installing(folder):
        installed = {n for (n,) in con.execute(
            "SELECT extension_name FROM duckdb_extensions() WHERE installed AND install_path <> ''").fetchall()}
        for name, path in paths.items():
            try:
                if name not in installed and LISTED_AS.get(name) not in installed:
                    con.execute(f"INSTALL '{_quote(str(path))}'")
                con.execute(f"LOAD {name}")
            except duckdb.Error as e:
                raise ExtensionError(f"the DuckDB extension {name!r} ({path}) could not be loaded: "
                                     f"{str(e).splitlines()[0]}") from None


@contextmanager
def _installing(folder: Path):
    """One process at a time installs into and loads from `folder`. DuckDB's INSTALL replaces a binary that is
    there, so without this, processes that start together on a new environment (a shop group's workers) saw
    another's INSTALL remove the file they were loading ("Extension … not found"). Held for milliseconds once the
    binaries are installed; the lock goes with the process."""
    with open(folder / ".install.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def connect(database: str = ":memory:", names: tuple[str, ...] | list[str] = NAMES,
            **settings: str | bool | int) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the extensions loaded from their wheels (and any further settings)."""
    for name in names:                                   # before DuckDB starts: a mismatch is one line
        binary(name)
    con = duckdb.connect(database, config={**config(), **settings})
    try:
        load(con, names)
    except BaseException:
        con.close()
        raise
    return con


def _quote(text: str) -> str:
    return text.replace("'", "''")
