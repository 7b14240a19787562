"""The `crm` command as a user runs it: a real process, a real DuckDB file, a real Prefect server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import timezone
from pathlib import Path

import duckdb
import httpx
import pytest

from conftest import Landing, crm, customer, order

def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


HEAVY = {"prefect", "duckdb", "great_expectations", "polars", "pandas", "phonenumbers", "psutil", "markdown_it",
         "pygments"}


@pytest.mark.parametrize("args, heavy", [
    (["--help"], HEAVY | {"pydantic"}),
    # below the top level, typer (0.29) coerces the group's --db / --config with pydantic before any help
    (["plan", "--help"], HEAVY),
    (["server"], HEAVY),
])
def test_help_is_instant_because_it_imports_nothing_heavy(args, heavy):
    """The help, typer's rich one (panels), without prefect, duckdb, crm.config (pydantic) or what typer's rich
    help would import only for markdown text and tracebacks (markdown-it, pygments)."""
    # printed by an exit handler: main() ends the process itself, after the exit handlers (crm.cli._end)
    code = ("import atexit, sys; sys.argv = ['crm', *sys.argv[1:]]\n"
            f"atexit.register(lambda: print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(heavy)!r})), "
            "file=sys.stderr))\n"
            "from crm.cli import main\n"
            "main()\n")
    probe = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                           env={**os.environ, "COLUMNS": "100"})
    assert probe.stderr.strip() == "[]", probe.stderr
    assert "╭─ Options" in probe.stdout, probe.stdout
    result = crm(*args, env={"COLUMNS": "100"})
    assert result.returncode in (0, 2) and result.stdout == probe.stdout
    if args == ["--help"]:
        assert "ingest" in result.stdout and "CRM_DB" in result.stdout and "data/crm.duckdb" in result.stdout


def test_missing_landing_folder(tmp_path, config_path):
    line = one_error_line(crm("--db", str(tmp_path / "x.duckdb"), "--config", str(config_path), "ingest", str(tmp_path / "nope")))
    assert "nope: landing folder not found" in line
    assert not (tmp_path / "x.duckdb").exists(), "nothing was written"


def test_bad_configuration_names_file_shop_and_key(tmp_path, landing):
    landing.csv("orders", "o.csv", [order("o1")])
    bad = tmp_path / "bad.toml"
    bad.write_text('[[shops]]\nshop_id = "s1"\n[shops.visits]\nwindows = ["11:00-10:00"]\n')
    line = one_error_line(crm("--config", str(bad), "--db", str(tmp_path / "x.duckdb"), "ingest", str(landing.root)))
    assert str(bad) in line and "shop 's1'" in line and "visits.windows[0]" in line


def test_missing_configuration_via_environment(tmp_path, landing):
    landing.csv("orders", "o.csv", [order("o1")])
    line = one_error_line(crm("ingest", str(landing.root), env={"CRM_CONFIG": str(tmp_path / "none.toml"),
                                                                  "CRM_DB": str(tmp_path / "x.duckdb")}))
    assert "none.toml: configuration file not found" in line


def test_ingest_runs_as_a_prefect_flow_on_the_local_server(local_server, tmp_path, config_path):
    db = local_server
    landing = Landing(tmp_path / "landing")
    landing.csv("customers", "c.csv", [customer("c1")])
    landing.csv("orders", "o.csv", [order("o1"), order("o2", total_amount="-5")])
    env = {"PREFECT_API_URL": ""}          # found through the state file beside the database
    result = crm("--db", str(db), "--config", str(config_path), "ingest", str(landing.root), env=env)
    assert result.returncode == 0, result.stderr
    assert "ingest #1" in result.stdout and "crm quarantine" in result.stdout
    assert "Starting temporary server" not in result.stderr, "the local server was used, not an ephemeral one"

    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM staging.orders").fetchone()[0] == 1
    assert con.execute("SELECT reason FROM ops.quarantine").fetchall() == [("negative total_amount -5.00",)]
    con.close()

    status = crm("--db", str(db), "server", "status", env=env)
    api = status.stdout.split("running at ")[1].split()[0]
    runs = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}).json()
    assert any(r["parameters"].get("landing_dir") == str(landing.root) for r in runs)

    again = crm("--db", str(db), "--config", str(config_path), "ingest", str(landing.root), env=env)
    assert again.returncode == 0 and "nothing new" in again.stdout

    shown = crm("--db", str(db), "quarantine", env=env)
    assert shown.returncode == 0 and "negative total_amount" in shown.stdout and "13800000001" not in shown.stdout


def test_plan_and_backfill_commands(local_server, tmp_path, config_path):
    db = local_server.parent / "plans.duckdb"        # its own file, beside the server's state file
    landing = Landing(tmp_path / "landing")
    landing.csv("customers", "c.csv", [customer("c1"), customer("c2", phone="13800000002")])
    landing.csv("orders", "o.csv", [order("u1", created_at="2026-11-24T10:00:00+08:00"),
                                    order("u2", customer_id="c2", created_at="2026-11-24T10:05:00+08:00")])
    env = {"PREFECT_API_URL": ""}
    assert crm("--db", str(db), "--config", str(config_path), "ingest", str(landing.root), env=env).returncode == 0

    planned = crm("--db", str(db), "--config", str(config_path), "plan", "--as-of", "2026-11-24T02:30:00Z", env=env)
    assert planned.returncode == 0, planned.stderr
    assert "2 unpaid orders" in planned.stdout and "remind" in planned.stdout

    args = ["--db", str(db), "--config", str(config_path), "backfill", "--from", "2026-11-24T01:00:00Z",
            "--to", "2026-11-24T03:00:00Z", "--every", "1h"]
    first = crm(*args, env=env)
    assert first.returncode == 0, first.stderr
    assert "planned 3 times, skipped 0" in first.stdout
    again = crm(*args, env=env)
    assert again.returncode == 0 and "planned 0 times, skipped 3" in again.stdout

    con = duckdb.connect(str(db), read_only=True)
    per_t = con.execute("SELECT as_of, count(*), count(*) FILTER (WHERE decision = 'remind') "
                        "FROM marts.reminder_decisions GROUP BY 1 ORDER BY 1").fetchall()
    con.close()
    # 01:00Z: no order exists yet; 02:00Z: u1 waits for e = 10:15 local; 02:30Z and 03:00Z: both reminded
    assert [(t.astimezone(timezone.utc).strftime("%H:%M"), n, r) for t, n, r in per_t] == [
        ("02:00", 1, 0), ("02:30", 2, 2), ("03:00", 2, 2)]


def test_plan_rejects_a_time_without_offset(tmp_path, config_path):
    line = one_error_line(crm("--db", str(tmp_path / "x.duckdb"), "--config", str(config_path), "plan",
                              "--as-of", "2026-11-24 10:00"))
    assert "--as-of" in line and "has no offset" in line
