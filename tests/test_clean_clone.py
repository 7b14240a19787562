"""The README's demo command in a fresh clone, as a new user runs it (the test command is CI itself:
.ci/run runs `./run test` in a fresh clone)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
def test_readme_demo_command_in_a_clean_clone(tmp_path):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "./run demo" in readme and "./run test" in readme, "the README names the two commands"
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PREFECT_API", "CRM_", "UV_PROJECT"))}
    result = subprocess.run(["./run", "demo", "--orders", "2000"], cwd=clone, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ingest #1" in result.stdout
    con = duckdb.connect(str(clone / "data" / "crm.duckdb"), read_only=True)
    orders = con.execute("SELECT count(*) FROM staging.orders").fetchone()[0]
    shops = con.execute("SELECT count(DISTINCT shop_id) FROM staging.orders").fetchone()[0]
    bad = con.execute("SELECT count(*) FROM ops.quarantine").fetchone()[0]
    con.close()
    assert orders == 2000 and shops == 3 and bad >= 8
