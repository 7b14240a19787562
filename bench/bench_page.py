"""Benchmark: the agents' page (`crm serve`) on a large database, and what it costs a flow beside it.

    .venv/bin/python bench/bench_page.py --orders 1000000

Data: the demo generator in bench mode (Parquet), ingested and planned at a fixed T, then a dispatch of
the call channel only (the calls the page lists). `crm serve` runs in its own process, as agents use it.
Measured with one client on 127.0.0.1 (times per request, p50 / p95 / max):
1. the shop's call list, a call's page, and saving an outcome (each save marks its call done);
2. a plan at T + 1 h in another process while the client keeps loading the list: the plan's time against
   the same plan with no page running, and the list's latency meanwhile (it reads the analytics copy
   while the plan holds the file).
Results: bench/results/page-<orders>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

ANCHOR = datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc)

PLAN = """
import sys, time, json
from datetime import datetime
sys.path.insert(0, {root!r})
from crm.config import load_settings
from crm.db import session
t = time.perf_counter()
from transforms.plan import plan
with session(sys.argv[1], load_settings(sys.argv[2])) as con:
    plan(con, datetime.fromisoformat(sys.argv[3]))
print(json.dumps({{"plan_seconds": time.perf_counter() - t}}))
"""


def stats(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 1), "max_ms": round(ordered[-1] * 1000, 1)}


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def plan_in_process(db: Path, config: Path, at: datetime) -> float:
    out = subprocess.run([sys.executable, "-c", PLAN.format(root=str(ROOT)), str(db), str(config), at.isoformat()],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["plan_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()

    from crm.config import load_settings
    from crm.db import publish_snapshot, session
    from crm.demo import generate
    from transforms.dispatch import dispatch
    from transforms.ingest import load
    from workspace import Agent, Served

    work = Path(tempfile.mkdtemp(prefix="bench-page-"))
    summary = generate(work / "demo", orders=args.orders, seed=7, anchor=ANCHOR, bench=True)
    db, config = work / "crm.duckdb", summary.config_path
    settings = load_settings(config)
    with session(db, settings) as con:
        load(con, summary.landing_dir, validate=None)
        r = dispatch(con, settings, ANCHOR, channels=["call"])
        publish_snapshot(con, db)
    result = {"orders": args.orders, "calls_queued": r.calls_queued, "db_mib": round(db.stat().st_size / 2**20)}
    shop = settings.shops[0].shop_id

    server = Served(db, config)
    try:
        with Agent(server.url, timeout=60) as client:                     # an agent: cookie and CSRF token
            client.get(f"/shops/{shop}")                                   # first request: imports, caches
            lists = [timed(lambda: client.get(f"/shops/{shop}"))[0] for _ in range(args.requests)]
            page = client.get(f"/shops/{shop}").text
            orders = [chunk.split('"')[0] for chunk in page.split('data-order="')[1:]]
            tasks = [timed(lambda o=o: client.get(f"/shops/{shop}/calls/{o}"))[0] for o in orders[:args.requests]]
            form = {"reached": "true", "quality": "good", "logistics": "issue", "packaging": "n/a", "service": "good",
                    "suggestion": "bench", "compensation": "none"}
            saves = []
            for o in orders[: min(len(orders), args.requests) // 2]:
                seconds, answer = timed(lambda o=o: client.post(f"/shops/{shop}/calls/{o}", data=form))
                assert answer.status_code == 303, answer.text[:300]
                saves.append(seconds)
            result.update(list=stats(lists), task=stats(tasks), save=stats(saves), listed_calls=len(orders))

            alone = plan_in_process(db, config, ANCHOR + timedelta(hours=1))
            during, stop = [], threading.Event()

            def agent():
                while not stop.is_set():
                    during.append(timed(lambda: client.get(f"/shops/{shop}"))[0])
                    time.sleep(0.05)

            thread = threading.Thread(target=agent)
            thread.start()
            try:
                beside = plan_in_process(db, config, ANCHOR + timedelta(hours=2))
            finally:
                stop.set()
                thread.join()
            result.update(plan_alone_seconds=round(alone, 2), plan_beside_page_seconds=round(beside, 2),
                          list_during_plan=stats(during))
    finally:
        server.stop()
    out = ROOT / "bench" / "results" / f"page-{args.orders}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
