"""Prefect set-up for the command line, kept apart so that `crm --help` never imports prefect.

Without ``PREFECT_API_URL`` Prefect starts a throw-away server in every process (~15-20 s here).
``crm server start`` runs one local Prefect server in the background instead; every later ``crm``
command finds it (through a small state file beside the database) and records its flow runs there,
paying only ~2-5 s. An explicit ``PREFECT_API_URL`` always wins.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",     # no internet on these machines
    "DO_NOT_TRACK": "1",
    "GX_ANALYTICS_ENABLED": "False",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}


def state_file(db: Path) -> Path:
    return Path(db).resolve().parent / "prefect-server.json"


def _healthy(url: str, timeout: float = 1.0) -> bool:
    try:
        return httpx.get(url.rstrip("/") + "/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def running_server(db: Path) -> dict | None:
    f = state_file(db)
    if not f.is_file():
        return None
    try:
        info = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    return info if _healthy(info.get("api_url", "")) else None


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


def start_server(db: Path, port: int = 4200, wait: float = 180.0) -> dict:
    info = running_server(db)
    if info:
        return {**info, "already": True}
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
            raise RuntimeError(f"prefect server exited with {proc.returncode}; see {home / 'server.log'}")
        if _healthy(url):
            info = {"pid": proc.pid, "api_url": url, "home": str(home)}
            state_file(db).write_text(json.dumps(info))
            return info
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"prefect server did not answer on {url} within {wait:.0f} s; see {home / 'server.log'}")


def stop_server(db: Path) -> bool:
    f = state_file(db)
    if not f.is_file():
        return False
    info = json.loads(f.read_text())
    try:
        os.killpg(info["pid"], signal.SIGTERM)
    except ProcessLookupError:
        pass
    for _ in range(50):
        try:
            os.kill(info["pid"], 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    f.unlink(missing_ok=True)
    return True
