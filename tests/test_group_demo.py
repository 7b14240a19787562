"""`./run group-demo` (crm/groupdemo.py) end to end, small: its own PostgreSQL cluster, Prefect server, workers, gateway
and SMTP server; group-ingest then group-dispatch over two partitions; a summary in which every run completed and
every message went once; and afterwards nothing it started is still running. Interrupted (SIGINT, as Ctrl-C) once its
workers run, it tears everything down too."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from crm.storage.localpg import pg_bin

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(pg_bin() is None, reason="no PostgreSQL server programs (apt-get install postgresql)")


def demo(folder: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    return subprocess.Popen([sys.executable, "-m", "crm.groupdemo", "--shops", "12", "--orders", "2000",
                             "--partitions", "2", "--workers", "2", "--folder", str(folder), *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def leftovers(out: str, folder: Path) -> list[str]:
    """Processes the demo said it started (its Prefect server, workers, PostgreSQL cluster) or that work in its folder,
    still alive."""
    pids = {int(p) for p in re.findall(r"\(pid (\d+)\)", out)}
    for group in re.findall(r"\(pids ([\d ]+)\)", out):
        pids |= {int(p) for p in group.split()}
    roots = re.findall(r"^postgresql: \S+ \((.+)\)$", out, re.M)
    assert pids and roots, out                                    # it said what it started
    marks = [str(folder), *roots]
    alive = []
    for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
        try:
            text = " ".join(proc.info["cmdline"] or []) + " " + " ".join(
                f"{k}={v}" for k, v in (proc.info["environ"] or {}).items() if k.startswith(("CRM_", "PREFECT_HOME")))
        except psutil.Error:
            continue
        if proc.pid == os.getpid():
            continue
        if proc.pid in pids or any(m in text for m in marks):
            alive.append(f"{proc.pid}: {text[:200]}")
    return alive


def test_the_group_demo_runs_end_to_end_and_leaves_nothing_running(tmp_path):
    folder = tmp_path / "demo"
    proc = demo(folder, "--keep")
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["group_runs"] == {"group-ingest": "COMPLETED", "group-dispatch": "COMPLETED"}, out[-3000:]
    runs = {r["name"]: r["state"] for r in summary["runs"]}
    assert runs == {n: "COMPLETED" for n in ("group-ingest", "ingest-p0", "ingest-p1", "group-dispatch",
                                              "dispatch-p0", "dispatch-p1")}, runs
    assert set(summary["partitions"]) == {"0", "1"} and sum(summary["partitions"].values()) == 12
    sent = {m["channel"]: m["count"] for m in summary["messages"] if m["status"] == "sent"}
    gateway, smtp = summary["gateway"], summary["smtp"]
    # every SMS went to the gateway once, every e-mail to the SMTP server once, and both kinds were sent
    assert sent.get("sms", 0) == gateway["keys"] == gateway["requests"] > 5, (sent, gateway)
    assert sent.get("email", 0) == smtp["message_ids"] == smtp["mails"] > 0, (sent, smtp)
    assert gateway["requested_not_sent"] == gateway["sent_not_requested"] == 0
    assert "each message sent once: yes" in out and "runs: 6 (6 completed)" in out, out[-3000:]
    assert leftovers(out, folder) == []
    assert not list(folder.glob("prefect-server.json"))        # the server's state went with it


def test_an_interrupted_group_demo_tears_everything_down(tmp_path):
    folder = tmp_path / "demo"
    proc = demo(folder)
    lines = []
    deadline = time.monotonic() + 600
    for line in proc.stdout:                                   # until its workers run, then Ctrl-C
        lines.append(line)
        if line.startswith("workers:") or time.monotonic() > deadline:
            break
    assert lines and lines[-1].startswith("workers:"), "".join(lines)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=300)
    out = "".join(lines) + rest
    assert proc.returncode == 1 and "interrupted: tearing down" in out, out[-3000:]
    assert leftovers(out, folder) == []
    assert not folder.exists()                                 # no --keep: the folder is gone
