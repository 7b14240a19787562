"""Benchmark: does a plan's cost grow with the work at T, or with history? The same recent volume over more
and more history (bench/generate.py with the orders spread over proportionally more weeks, the same shops),
then plans at new T through the `crm plan` command, as a scheduled run makes them.

    .venv/bin/python bench/bench_history.py --sizes 1000000:26 10000000:260 30000000:780

For each `orders:weeks`: the data (once, under --work), an ingest and a first plan at T (in one process,
without the validation suites: what is measured here is the plan), then `crm plan --as-of` T + 1 h, T + 2 h
and T + 3 h (a local Prefect server running, as after the first command). Printed: the work at T (unpaid
orders, visit tasks), each plan's wall time, when the analysts' copy was in place (a big file's is made just after
the command, `[storage] analytics_copy_background_mb`; the next plan starts after it), and the time the plan itself
took (its own line "planned in").

`--against DIR` (a checkout of older code, e.g. `git worktree add /tmp/old HEAD~1`): each plan at a new T is
also made by that code, on a copy of the same file after the first plan, one after the other with this code's,
so both see the same machine.

    .venv/bin/python bench/bench_history.py --sizes 1000000:26 10000000:260 --against /tmp/old
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CRM = Path(sys.executable).parent / "crm"

from crm.db import analytics_ready  # noqa: E402

FIRST = """
import sys, time, json
sys.path.insert(0, {root!r})
from datetime import datetime
from crm.config import load_settings
from crm.db import connect, sync_shops
from transforms.ingest import load
from transforms.plan import plan
landing, db, config, anchor = sys.argv[1:5]
con = connect(db)
sync_shops(con, load_settings(config))
t = time.perf_counter()
r = load(con, landing)
i = time.perf_counter() - t
p = plan(con, datetime.fromisoformat(anchor))
print(json.dumps({{"ingest_seconds": i, "first_plan_seconds": time.perf_counter() - t - i,
                  "rows_loaded": r.rows_loaded}}))
"""


def plan_at(db: Path, config: Path, at, env: dict) -> dict:
    """`crm plan --as-of at` on `db` (with `env`: PYTHONPATH for the older code); its wall time and what it printed."""
    t = time.perf_counter()
    done = subprocess.run([str(CRM), "--db", str(db), "--config", str(config), "plan", "--as-of", at.isoformat()],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "200", **env})
    wall = time.perf_counter() - t
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    analytics_ready(db, wait_seconds=300)     # a big file's copy for analysts is made after the command returns
    copied = time.perf_counter() - t
    own = re.search(r"planned in ([\d.]+) s", done.stdout)
    unpaid = re.search(r"([\d,]+) unpaid orders", done.stdout)
    visits = re.search(r"([\d,]+) follow-up visits due", done.stdout)
    return {"wall_seconds": wall, "copy_ready_seconds": copied, "plan_seconds": float(own[1]) if own else None,
            "unpaid": unpaid[1] if unpaid else None, "visits": visits[1] if visits else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["1000000:26", "10000000:260", "30000000:780"])
    parser.add_argument("--shops", type=int, default=200)
    parser.add_argument("--work", type=Path, default=Path("/tmp/crm-bench"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--against", type=Path, default=None, metavar="DIR",
                        help="a checkout of older code: its plans at the same new T, on a copy of the file")
    args = parser.parse_args()
    from bench import generate

    results = []
    for size in args.sizes:
        orders, weeks = (int(x) for x in size.split(":"))
        data = args.work / f"history-{orders}-{weeks}w"
        if not (data / "generated.json").exists():
            shutil.rmtree(data, ignore_errors=True)
            generate.generate(data, orders=orders, shops=args.shops, weeks=weeks)
        db = data / "crm.duckdb"
        for p in (db, Path(f"{db}.wal"), data / "crm.analytics.duckdb"):
            p.unlink(missing_ok=True)
        config, anchor = data / "shops.toml", generate.ANCHOR
        out = subprocess.run([sys.executable, "-c", FIRST.format(root=str(ROOT)), str(data / "landing"), str(db),
                              str(config), anchor.isoformat()], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        row = {"orders": orders, "weeks": weeks, **json.loads(out.stdout.strip().splitlines()[-1]), "plans": []}
        codes = {"plans": (db, {})}
        if args.against:
            old_db = data / "crm-against.duckdb"
            for p in (old_db, Path(f"{old_db}.wal"), data / "crm-against.analytics.duckdb"):
                p.unlink(missing_ok=True)
            shutil.copyfile(db, old_db)
            codes["plans_against"] = (old_db, {"PYTHONPATH": str(args.against.resolve())})
            row["against"] = str(args.against)
        for key, (path, env) in codes.items():
            row[key] = []
            subprocess.run([str(CRM), "--db", str(path), "server", "start"], check=True, capture_output=True,
                           env={**os.environ, **env})
        try:
            for h in (1, 2, 3):
                for key, (path, env) in codes.items():
                    row[key].append(plan_at(path, config, anchor + timedelta(hours=h), env))
        finally:
            for key, (path, env) in codes.items():
                subprocess.run([str(CRM), "--db", str(path), "server", "stop"], capture_output=True, env={**os.environ, **env})
        results.append(row)
        for key in codes:
            best = min(row[key], key=lambda p: p["wall_seconds"])
            print(f"{orders:>11,} orders over {weeks:>3} weeks{' (--against)' if key != 'plans' else ''}: first plan "
                  f"{row['first_plan_seconds']:.1f} s; plan at a new T {best['wall_seconds']:.2f} s (the analysts' copy "
                  f"ready at {best['copy_ready_seconds']:.2f} s; the plan itself "
                  f"{best['plan_seconds']} s; unpaid at T {best['unpaid']}, visits {best['visits']})", flush=True)
    (args.out or args.work / "history.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
