"""The local Prefect server: a command without one starts it in the background and says so, later commands
(and commands started at once) share it, `crm server stop` ends it; `crm server start|status|stop` when
another process holds the port: a stranger that answers /api/health like a Prefect server is never taken
for ours."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil
import pytest

from conftest import BIN, crm, free_port

NO_API = {"PREFECT_API_URL": ""}


class Stranger:
    """Another process's HTTP server on 127.0.0.1 that answers 200 to everything (so /api/health too)."""

    def __init__(self, port: int | None = None):
        hits = self.hits = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"true")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port or free_port()), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answers(self) -> bool:
        hits = len(self.hits)
        ok = httpx.get(f"http://127.0.0.1:{self.port}/api/health", timeout=5).status_code == 200
        del self.hits[hits:]                # our own look is not a request of crm's
        return ok

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stranger():
    s = Stranger()
    assert s.answers()
    yield s
    s.stop()


def _errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.fixture
def stop_after(tmp_path):
    """Stops whatever server a failing test did start for tmp_path/crm.duckdb."""
    yield tmp_path / "crm.duckdb"
    crm("--db", str(tmp_path / "crm.duckdb"), "server", "stop", env=NO_API)


def test_start_on_a_taken_port_given_with_port_fails_in_one_line(tmp_path, stranger, stop_after):
    db = stop_after
    result = crm("--db", str(db), "server", "start", "--port", str(stranger.port), env=NO_API, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = _errors(result)
    assert line.startswith(f"error: port {stranger.port} is in use by another process;"), line
    assert "started" not in result.stdout
    assert not (tmp_path / "prefect-server.json").exists(), "no state file points to the stranger"
    assert crm("--db", str(db), "server", "status", env=NO_API).stdout.strip() == "not running"
    assert stranger.answers()


def test_start_with_the_default_port_taken_picks_a_free_one_and_says_so(tmp_path, stranger):
    db = tmp_path / "crm.duckdb"
    env = {**NO_API, "CRM_PREFECT_PORT": str(stranger.port)}        # the stranger holds "the default"
    started = crm("--db", str(db), "server", "start", env=env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        [note] = _errors(started)
        assert note.startswith(f"note: port {stranger.port} is in use by another process;"), note
        info = json.loads((tmp_path / "prefect-server.json").read_text())
        assert info["port"] != stranger.port and f"listens on {info['port']} instead" in note
        assert f"started at {info['api_url']} (pid {info['pid']})" in started.stdout
        status = crm("--db", str(db), "server", "status", env=env).stdout.strip()
        assert status == f"running at http://127.0.0.1:{info['port']}/api (pid {info['pid']})"
        version = httpx.get(f"{info['api_url']}/admin/version", timeout=10)
        assert version.status_code == 200 and version.json().startswith("3."), "a real Prefect server answers"
        again = crm("--db", str(db), "server", "start", env=env)
        assert again.returncode == 0 and f"already running at {info['api_url']}" in again.stdout
    finally:
        stopped = crm("--db", str(db), "server", "stop", env=env)
    assert stopped.stdout.strip() == "stopped"
    assert crm("--db", str(db), "server", "status", env=env).stdout.strip() == "not running"
    assert stranger.answers(), "stopping ours left the stranger alone"


def test_a_server_that_dies_on_a_port_a_stranger_answers_is_not_reported_started(tmp_path, stranger, monkeypatch):
    # the port was free when checked, then another process took it before Prefect could bind it: Prefect
    # exits, while /api/health on that port answers 200. The first free-port check is made to say "free".
    from crm import orchestration

    real, first = orchestration.port_free, iter([True])
    monkeypatch.setattr(orchestration, "port_free", lambda port: next(first, None) or real(port))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    db = tmp_path / "crm.duckdb"
    with pytest.raises(RuntimeError, match=f"did not start: port {stranger.port} is in use by another process"):
        orchestration.start_server(db, stranger.port, wait=120)
    assert not orchestration.state_file(db).exists()
    assert orchestration.running_server(db) is None


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_status_does_not_take_a_strangers_server_for_ours(tmp_path, stranger, monkeypatch):
    """State left by a server that died: its pid is gone and a stranger now answers its port; or its pid is
    alive but another process holds the port. Either way: not running, and stop signals nobody."""
    from crm import orchestration

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    for key, value in orchestration.DEFAULTS.items():      # prepare() sets them: undone after the test
        monkeypatch.setenv(key, os.environ.get(key, value))
    db = tmp_path / "crm.duckdb"
    state = tmp_path / "prefect-server.json"
    url = f"http://127.0.0.1:{stranger.port}/api"

    state.write_text(json.dumps({"pid": _dead_pid(), "api_url": url, "port": stranger.port, "home": str(tmp_path)}))
    assert crm("--db", str(db), "server", "status", env=NO_API).stdout.strip() == "not running"
    assert orchestration.running_server(db) is None, "commands don't use it (one that runs a flow starts its own)"

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        state.write_text(json.dumps({"pid": alive.pid, "api_url": url, "port": stranger.port, "home": str(tmp_path)}))
        assert crm("--db", str(db), "server", "status", env=NO_API).stdout.strip() == "not running"
        stop = crm("--db", str(db), "server", "stop", env=NO_API)
        assert stop.stdout.strip() == "no local server was running"
        assert alive.poll() is None, "a process that is not our server was not signalled"
        assert not state.exists(), "the stale state file is gone"
    finally:
        alive.kill()
        alive.wait()
    assert stranger.answers()


def test_a_bad_default_port_is_one_line(stop_after):
    result = crm("--db", str(stop_after), "server", "start", env={**NO_API, "CRM_PREFECT_PORT": "42OO"})
    assert result.returncode == 2
    assert _errors(result) == ["error: CRM_PREFECT_PORT='42OO' is not a TCP port number (1-65535)"]


# --- the server a command starts by itself ----------------------------------------------------------------

STARTING = "note: starting a local Prefect server for "


def _plan(db: Path, config: Path, as_of: str) -> list[str]:
    return [str(BIN), "--db", str(db), "--config", str(config), "plan", "--as-of", as_of]


def _plan_runs(api_url: str) -> dict[str, str]:
    """{as_of: state} of the server's completed `plan` flow runs."""
    runs = httpx.post(f"{api_url}/flow_runs/filter", json={"flows": {"name": {"any_": ["plan"]}}}, timeout=30).json()
    return {r["parameters"]["as_of"]: r["state_type"] for r in runs}


@pytest.fixture
def fresh(tmp_path, config_path):
    """An empty database in a folder no server has seen, a free default port; stops what a test started."""
    from crm.db import connect

    db = tmp_path / "crm.duckdb"
    connect(db).close()
    env = {**os.environ, **NO_API, "CRM_PREFECT_PORT": str(free_port()), "COLUMNS": "200",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    yield db, config_path, env
    crm("--db", str(db), "server", "stop", env=env)


def _state(db: Path) -> dict:
    return json.loads((db.parent / "prefect-server.json").read_text())


def test_commands_started_at_once_start_one_server_that_later_commands_reuse_until_stop(fresh):
    db, config, env = fresh
    times = ["2026-11-24T02:00:00Z", "2026-11-24T03:00:00Z"]
    both = [subprocess.Popen(_plan(db, config, t), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for t in times]
    results = [(*p.communicate(timeout=300), p.returncode) for p in both]
    results = [(code, out, e) for out, e, code in results]
    assert [code for code, _, _ in results] == [0, 0], [e[-3000:] for _, _, e in results]
    notes = [line for _, _, e in results for line in e.splitlines() if line.startswith("note:")]
    [started] = [line for line in notes if line.startswith(STARTING)]      # one server, said in one line
    info = _state(db)
    assert f"UI at http://127.0.0.1:{info['port']}, pid {info['pid']})" in started and "`crm server stop`" in started
    assert info["port"] == int(env["CRM_PREFECT_PORT"])
    assert all("waiting for the Prefect server another command is starting" in line
               for line in notes if line != started), notes
    assert all("Starting temporary server" not in e for _, _, e in results), "no throw-away server"

    later = crm("--db", str(db), "--config", str(config), "plan", "--as-of", "2026-11-24T04:00:00Z", env=env)
    assert later.returncode == 0, later.stderr[-3000:]
    assert "note:" not in later.stderr, "the running server was found: nothing to say"
    assert _state(db)["pid"] == info["pid"]
    status = crm("--db", str(db), "server", "status", env=env).stdout.strip()
    assert status == f"running at {info['api_url']} (pid {info['pid']})"
    assert _plan_runs(info["api_url"]) == {t: "COMPLETED" for t in [*times, "2026-11-24T04:00:00Z"]}

    assert crm("--db", str(db), "server", "stop", env=env).stdout.strip() == "stopped"
    assert not psutil.pid_exists(info["pid"]) or psutil.Process(info["pid"]).status() == psutil.STATUS_ZOMBIE
    assert crm("--db", str(db), "server", "status", env=env).stdout.strip() == "not running"
    assert not (db.parent / "prefect-server.json").exists()


def test_a_stale_state_file_is_replaced_and_the_server_a_killed_command_left_starting_is_reused(fresh, stranger):
    """The state file names a server that is gone, and a stranger answers its port (the default port too):
    the next command starts its own server elsewhere and is killed while that one starts; the command after
    it finds that server and uses it. Nothing is ever asked of the stranger."""
    db, config, env = fresh
    env["CRM_PREFECT_PORT"] = str(stranger.port)
    state = db.parent / "prefect-server.json"
    stale = _dead_pid()
    state.write_text(json.dumps({"pid": stale, "api_url": f"http://127.0.0.1:{stranger.port}/api",
                                 "port": stranger.port}))
    first = subprocess.Popen(_plan(db, config, "2026-11-24T02:00:00Z"), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while _state(db)["pid"] == stale:
        assert first.poll() is None and time.monotonic() < deadline, "the command started no server"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)                 # killed while its server starts
    first.wait()
    left = _state(db)
    assert left["port"] != stranger.port
    assert psutil.Process(left["pid"]).is_running(), "the server outlives the command that started it"

    after = crm("--db", str(db), "--config", str(config), "plan", "--as-of", "2026-11-24T03:00:00Z", env=env)
    assert after.returncode == 0, after.stderr[-3000:]
    assert STARTING not in after.stderr, "no second server"
    assert _state(db)["pid"] == left["pid"]
    assert _plan_runs(left["api_url"]) == {"2026-11-24T03:00:00Z": "COMPLETED"}
    assert stranger.hits == [], "nothing was asked of the stranger"
