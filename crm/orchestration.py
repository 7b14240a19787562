"""The Prefect server the command line records its flow runs on, kept apart so that `crm --help` never
imports prefect.

An explicit ``PREFECT_API_URL`` always wins. Without it, the first command that runs a flow starts one
local Prefect server in the background for its database (what ``crm server start`` does by hand), says so
in one line, and runs its flow there; every later command finds it through a state file beside the
database (``prefect-server.json``) and pays no start-up. It runs until ``crm server stop``: no idle stop,
so that its start-up (~6 s, ~15 s the first time, when it creates its database) is paid once.

Two commands started at once start one server: the check-and-start is done under a lock file
(``prefect-server.lock``) and the state file is written as soon as the process exists, so the second
command finds it and waits for that server. A server left by a command that was killed while it started
is found the same way. A recorded server counts only while that very process (pid and start time) is
alive and listens on its port: never another process's server on that port.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psutil

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",     # no internet on these machines
    "DO_NOT_TRACK": "1",
    "GX_ANALYTICS_ENABLED": "False",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}

DEFAULT_PORT = 4200          # Prefect's own; CRM_PREFECT_PORT changes it
START_TIMEOUT = 180.0        # seconds a server may take to answer (a busy machine, its first migrations)


class PortError(ValueError):
    """A port the user chose cannot be used (one line for the CLI)."""


def state_file(db: Path) -> Path:
    return Path(db).resolve().parent / "prefect-server.json"


def lock_file(db: Path) -> Path:
    return Path(db).resolve().parent / "prefect-server.lock"


def _healthy(url: str, timeout: float = 1.0) -> bool:
    from urllib.error import URLError
    from urllib.request import urlopen

    try:
        with urlopen(url.rstrip("/") + "/health", timeout=timeout) as answer:
            return answer.status == 200
    except (URLError, OSError, ValueError):
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


# --- is it ours? -------------------------------------------------------------------------------------

def _read_state(db: Path) -> dict | None:
    try:
        info = json.loads(state_file(db).read_text())
        return info if isinstance(info.get("pid"), int) and info.get("api_url") else None
    except (OSError, ValueError, AttributeError):
        return None


def _write_state(db: Path, info: dict) -> None:
    f = state_file(db)
    part = f.with_name(f"{f.name}.{os.getpid()}.part")
    part.write_text(json.dumps(info))
    os.replace(part, f)                  # readers see the old file or the new one, never half of it


def _forget(db: Path, info: dict) -> None:
    """Remove the state file if it still records `info`'s process (not one another command wrote since)."""
    now = _read_state(db)
    if now is not None and now.get("pid") == info.get("pid"):
        state_file(db).unlink(missing_ok=True)


def _port_of(info: dict) -> int:
    try:
        return int(info.get("port") or urlsplit(info["api_url"]).port or 0)
    except (TypeError, ValueError):
        return 0


def _process(info: dict) -> psutil.Process | None:
    """The process the state records, if it still exists and is that very process (same start time)."""
    try:
        proc = psutil.Process(info["pid"])
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        started = info.get("started")
        if isinstance(started, (int, float)) and abs(proc.create_time() - started) > 0.05:
            return None                  # the pid was reused by another process
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):   # gone, or another user's
        return None


def _listens(proc: psutil.Process, port: int) -> bool:
    """Whether `proc` (or a process it started) holds the socket listening on `port`."""
    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return False
    for member in family:
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                   for c in member.net_connections(kind="inet")):
                return True
        except psutil.Error:
            continue
    return False


def _is_server_process(proc: psutil.Process) -> bool:
    """A `python -m prefect server start` (one still starting, or hung)."""
    try:
        args = proc.cmdline()
    except psutil.Error:
        return False
    return "prefect" in args and "server" in args and "start" in args


def _ours(info: dict) -> psutil.Process | None:
    """The recorded process, if it is the server we started: its start time matches (or, in a state file
    without one, it is a `prefect server start`)."""
    proc = _process(info)
    if proc is None:
        return None
    return proc if isinstance(info.get("started"), (int, float)) or _is_server_process(proc) else None


def running_server(db: Path) -> dict | None:
    """The server left for this database, if that very process serves its port now."""
    info = _read_state(db)
    proc = _process(info) if info else None
    if proc is None or not _listens(proc, _port_of(info)):
        return None
    return info if _healthy(info["api_url"]) else None


def server_status(db: Path) -> tuple[str, dict | None]:
    """("running" | "starting" | "not running", the state)."""
    info = running_server(db)
    if info:
        return "running", info
    info = _read_state(db)
    if info and _ours(info) is not None:
        return "starting", info
    return "not running", None


# --- start, wait, stop -------------------------------------------------------------------------------

@contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` for this process; the system releases it if the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        if os.name == "nt":
            import msvcrt

            fh.seek(0)
            while True:
                try:
                    msvcrt.locking(fh.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError:          # LK_LOCK gives up after 10 s: try again
                    continue
        else:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if os.name == "nt":
                fh.seek(0)
                msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
            else:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@dataclass
class Server:
    """A server for a database: found (running, or being started by another command) or just started."""

    db: Path
    info: dict
    started: bool = False                # by this call
    note: str | None = None              # the default port was taken: it listens on another
    _child: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return self.info["api_url"]

    @property
    def pid(self) -> int:
        return self.info["pid"]

    def wait(self, timeout: float = START_TIMEOUT) -> dict:
        """Until the server answers; RuntimeError (one line) when it exits or does not answer in time."""
        port, url = _port_of(self.info), self.api_url
        log = Path(self.info.get("home") or state_file(self.db).parent) / "server.log"
        deadline = time.monotonic() + timeout
        while True:
            if self._child is not None:
                self._child.poll()       # reap it if it exited
            proc = _process(self.info)
            if proc is None:
                _forget(self.db, self.info)
                why = (f"port {port} is in use by another process" if not port_free(port)
                       else "it exited" if self._child is None else f"it exited with {self._child.returncode}")
                raise RuntimeError(f"the Prefect server did not start: {why}; see {log}")
            # a server answering on the port is not enough: it must be the one recorded
            if _listens(proc, port) and _healthy(url):
                return self.info
            if time.monotonic() > deadline:
                _stop(proc)
                _forget(self.db, self.info)
                raise RuntimeError(f"the Prefect server did not answer on {url} within {timeout:.0f} s; see {log}")
            time.sleep(0.2)


def find_or_start(db: Path, port: int | None = None) -> Server:
    """The server for this database: the one running (or starting) or, when there is none, a new one
    started in the background. `port` None: the default port, or a free one near it when that is taken
    (the result's note says so); a `port` given that is taken raises PortError. Call `.wait()` on it."""
    info = _read_state(db)
    if info and _ours(info) is not None:
        return Server(Path(db), info)
    with _locked(lock_file(db)):
        info = _read_state(db)           # another command may have started one meanwhile
        if info and _ours(info) is not None:
            return Server(Path(db), info)
        return _spawn(Path(db), port)


def _spawn(db: Path, port: int | None) -> Server:
    note = None
    if port is None:
        wanted = default_port()
        port = wanted if port_free(wanted) else _free_port_near(wanted)
        if port != wanted:
            note = f"port {wanted} is in use by another process; the Prefect server listens on {port} instead"
    elif not port_free(port):
        raise PortError(f"port {port} is in use by another process; choose a free one with --port "
                        "(or leave --port out and crm picks one)")
    home = db.resolve().parent / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in DEFAULTS.items()}, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    with open(home / "server.log", "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )
    try:
        started = psutil.Process(child.pid).create_time()
    except psutil.Error:                 # it is gone already: wait() says why
        started = None
    info = {"pid": child.pid, "started": started, "api_url": f"http://127.0.0.1:{port}/api", "port": port,
            "home": str(home)}
    _write_state(db, info)
    return Server(db, info, started=True, note=note, _child=child)


def start_server(db: Path, port: int | None = None, wait: float = START_TIMEOUT) -> dict:
    """`crm server start`: the server's state, with "already": True when it was running (or starting)."""
    server = find_or_start(db, port)
    info = server.wait(wait)
    if not server.started:
        return {**info, "already": True}
    return {**info, "note": server.note} if server.note else info


def prepare(db: Path) -> Server | None:
    """Set Prefect's environment before it is imported: the server this command records its runs on (None:
    the one PREFECT_API_URL names). A server it had to start is still starting: `.wait()` before a flow."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    if os.environ.get("PREFECT_API_URL"):
        return None
    server = find_or_start(db)
    os.environ["PREFECT_API_URL"] = server.api_url
    return server


def _stop(proc: psutil.Process) -> None:
    """End the server and any process it started: SIGTERM, then SIGKILL what is left after 10 s."""
    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return
    for member in family:
        try:
            member.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(family, timeout=10)
    for member in alive:
        try:
            member.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


def stop_server(db: Path) -> bool:
    """Stop the server left for this database; False if none of ours was there. A state file whose process
    is gone (or is no longer that server) is removed, and nothing is signalled."""
    info = _read_state(db)
    proc = _ours(info) if info else None
    if proc is None and info:
        candidate = _process(info)       # a state file without a start time: ours if it serves the port
        proc = candidate if candidate is not None and _listens(candidate, _port_of(info)) else None
    if proc is not None:
        _stop(proc)
    state_file(db).unlink(missing_ok=True)
    return proc is not None
