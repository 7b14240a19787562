"""Prefect set-up for the command line, kept apart so that `crm --help` never imports prefect.

Without ``PREFECT_API_URL`` Prefect starts a throw-away server in every process (~15-20 s here).
``crm server start`` runs one local Prefect server in the background instead; every later ``crm``
command finds it (through a small state file beside the database) and records its flow runs there,
paying only ~2-5 s. An explicit ``PREFECT_API_URL`` always wins. A recorded server counts only while the
process `crm server start` started is the one listening on its port: never another process's server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",     # no internet on these machines
    "DO_NOT_TRACK": "1",
    "GX_ANALYTICS_ENABLED": "False",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}


DEFAULT_PORT = 4200          # Prefect's own; CRM_PREFECT_PORT changes it


class PortError(ValueError):
    """A port the user chose cannot be used (one line for the CLI)."""


def state_file(db: Path) -> Path:
    return Path(db).resolve().parent / "prefect-server.json"


def _healthy(url: str, timeout: float = 1.0) -> bool:
    try:
        return httpx.get(url.rstrip("/") + "/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def default_port() -> int:
    text = os.environ.get("CRM_PREFECT_PORT", "").strip()
    if not text:
        return DEFAULT_PORT
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise PortError(f"CRM_PREFECT_PORT={text!r} is not a TCP port number (1-65535)")
    return int(text)


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:port now (the same bind test `prefect server start` makes)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_near(port: int) -> int:
    for candidate in range(port + 1, min(port + 21, 65536)):
        if port_free(candidate):
            return candidate
    with socket.socket() as s:           # none of the next 20: any free port the system picks
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Is the server on a port ours? `crm server start` starts it in a new session, so it and anything it
# forks have the process group id of the pid we recorded. On Linux the listening socket's inode
# (/proc/net/tcp) must be an open file of a process in that group; elsewhere (no /proc) we can only
# check that the recorded process is alive and leads its own group.

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):      # gone, or another user's: not ours
        return False
    return True


def _listening_inodes(port: int) -> set[int]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()   # sl local_address rem_address st … inode
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:   # 0A: LISTEN
                inodes.add(int(fields[9]))
    return inodes


def _group(pgid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()   # after "pid (comm)": state ppid pgrp …
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            pids.append(int(stat.parent.name))
    return pids


def _listens(pid: int, port: int) -> bool:
    """Whether the process `pid` (or its process group) holds the socket listening on `port`."""
    if not _alive(pid):
        return False
    if not Path("/proc/net/tcp").exists():
        try:
            return os.getpgid(pid) == pid
        except OSError:
            return False
    inodes = _listening_inodes(port)
    for member in _group(pid) if inodes else []:
        try:
            fds = list(Path(f"/proc/{member}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                return True
    return False


def _read_state(db: Path) -> dict | None:
    try:
        info = json.loads(state_file(db).read_text())
        return info if isinstance(info.get("pid"), int) and info.get("api_url") else None
    except (OSError, ValueError, AttributeError):
        return None


def _port_of(info: dict) -> int:
    try:
        return int(info.get("port") or urlsplit(info["api_url"]).port or 0)
    except (TypeError, ValueError):
        return 0


def running_server(db: Path) -> dict | None:
    """The server `crm server start` left for this database, if that very process still serves its port."""
    info = _read_state(db)
    if not info or not _listens(info["pid"], _port_of(info)):
        return None
    return info if _healthy(info["api_url"]) else None


def prepare(db: Path) -> str:
    """Set Prefect's environment before it is imported; returns where flow runs are recorded."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    info = running_server(db)
    if info:
        os.environ["PREFECT_API_URL"] = info["api_url"]
        return info["api_url"]
    return "ephemeral"


def start_server(db: Path, port: int | None = None, wait: float = 180.0) -> dict:
    """Start a Prefect server for this database. `port` None: the default port, or a free one near it when
    that is taken (the result's "note" says so); a `port` given that is taken raises PortError."""
    info = running_server(db)
    if info:
        return {**info, "already": True}
    note = None
    if port is None:
        wanted = default_port()
        port = wanted if port_free(wanted) else _free_port_near(wanted)
        if port != wanted:
            note = f"port {wanted} is in use by another process; the Prefect server listens on {port} instead"
    elif not port_free(port):
        raise PortError(f"port {port} is in use by another process; choose a free one with --port "
                        "(or leave --port out and crm picks one)")
    home = Path(db).resolve().parent / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in DEFAULTS.items()}, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            why = (f"port {port} is in use by another process" if not port_free(port)
                   else f"it exited with {proc.returncode}")
            raise RuntimeError(f"the Prefect server did not start: {why}; see {home / 'server.log'}")
        # a server answering on the port is not enough: it must be the one just started
        if _listens(proc.pid, port) and _healthy(url):
            info = {"pid": proc.pid, "api_url": url, "port": port, "home": str(home)}
            state_file(db).write_text(json.dumps(info))
            return {**info, "note": note} if note else info
        time.sleep(0.5)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    raise RuntimeError(f"the Prefect server did not answer on {url} within {wait:.0f} s; see {home / 'server.log'}")


def stop_server(db: Path) -> bool:
    """Stop the server `crm server start` left for this database; False if none of ours was running. A state
    file whose process is gone (or is no longer that server) is removed, and nothing is signalled."""
    f = state_file(db)
    info = _read_state(db)
    if info is None:
        f.unlink(missing_ok=True)
        return False
    pid = info["pid"]
    ours = _listens(pid, _port_of(info)) or _is_server_process(pid)
    if ours:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        for _ in range(50):
            if not _alive(pid):
                break
            time.sleep(0.1)
    f.unlink(missing_ok=True)
    return ours


def _is_server_process(pid: int) -> bool:
    """A live `python -m prefect server start` leading its own process group (one still starting, or hung)."""
    if not _alive(pid):
        return False
    try:
        if os.getpgid(pid) != pid:
            return False
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ProcessLookupError):
        return not Path("/proc").is_dir()     # no /proc: the group test is all there is
    return b"prefect" in args and b"server" in args and b"start" in args
