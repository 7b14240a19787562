"""Benchmark: planning at a new T, a 24-hour hourly backfill, and ingest + first plan vs DuckDB's bare load.

    .venv/bin/python bench/bench_plan.py --orders 1000000
    .venv/bin/python bench/bench_plan.py --orders 10000000

Data: the demo generator in bench mode (Parquet only), anchored at a fixed T. Each step runs in its own
process (peak memory = that process's max RSS); times are measured around the call, after imports.
1. bare:      CREATE TABLE AS SELECT * FROM read_parquet(...) per entity into a fresh file;
2. first:     ingest (no GX, then with the GX suites, each into a fresh file) + the first plan at T;
3. new T:     a plan at T + 1 h on the loaded file (a new process: cold caches, as a scheduled run);
4. backfill:  24 hourly plans over the day before T (customer_segments once, at the last T).
Results: bench/results/plan-<orders>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_ingest import BARE, ENTITIES, run  # noqa: E402

ANCHOR = datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc)

PRELUDE = """
import resource, sys, time, json
from datetime import datetime, timedelta
sys.path.insert(0, {root!r})
from crm.config import load_settings
from crm.db import connect, sync_shops
from transforms.plan import plan, template_variants
db, config, anchor = sys.argv[1], sys.argv[2], datetime.fromisoformat(sys.argv[3])
out = {{}}
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""

FIRST = PRELUDE + """
from transforms.ingest import load
landing, validate = sys.argv[4], sys.argv[5] == "1"
validator = None
if validate:
    from transforms.validate import validate_ingest, _context
    _context()
    validator = validate_ingest
t = time.perf_counter()
con = connect(db)
sync_shops(con, load_settings(config))
r = load(con, landing, validate=validator)
out["ingest_seconds"] = time.perf_counter() - t
t = time.perf_counter()
p = plan(con, anchor)
out["first_plan_seconds"] = time.perf_counter() - t
con.close()
out["total_seconds"] = time.perf_counter() - t + out["ingest_seconds"]
out["unpaid_orders"], out["visit_tasks"], out["peak_rss_mib"] = p.unpaid_orders, p.visit_tasks, peak()
print(json.dumps(out))
"""

NEW_T = PRELUDE + """
t = time.perf_counter()
con = connect(db)
sync_shops(con, load_settings(config))
out["connect_seconds"] = time.perf_counter() - t
t = time.perf_counter()
p = plan(con, anchor + timedelta(hours=1))
out["plan_seconds"] = time.perf_counter() - t
out["decisions"], out["visit_tasks"], out["peak_rss_mib"] = p.decisions, p.visit_tasks, peak()
con.close()
print(json.dumps(out))
"""

BACKFILL = PRELUDE + """
con = connect(db)
sync_shops(con, load_settings(config))
times = [anchor - timedelta(hours=23 - i) for i in range(24)]
t = time.perf_counter()
per = []
for i, at in enumerate(times):
    s = time.perf_counter()
    plan(con, at, segments=(i == len(times) - 1), backfill_key="bench")
    per.append(time.perf_counter() - s)
out["backfill_seconds"], out["per_t_max"], out["per_t_median"] = time.perf_counter() - t, max(per), sorted(per)[12]
out["peak_rss_mib"] = peak()
con.close()
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--skip-gx", action="store_true", help="do not measure ingest with the GX suites")
    parser.add_argument("--weeks", type=int, default=6, help="history the orders are spread over")
    args = parser.parse_args()

    data = args.work / (f"data-{args.orders}" if args.weeks == 6 else f"data-{args.orders}-w{args.weeks}")
    if not (data / "shops.toml").exists():
        from crm.demo import generate

        t = time.perf_counter()
        generate(data, orders=args.orders, bench=True, anchor=ANCHOR, weeks=args.weeks)
        print(f"generated {args.orders:,} orders in {time.perf_counter() - t:.1f} s", flush=True)
    landing, config = data / "landing", data / "shops.toml"
    size = sum(f.stat().st_size for f in landing.rglob("*") if f.is_file())
    res: dict = {"orders": args.orders, "weeks": args.weeks, "landing_bytes": size, "anchor": ANCHOR.isoformat()}

    def fresh(name: str) -> Path:
        db = args.work / f"{name}-{args.orders}.duckdb"
        db.unlink(missing_ok=True)
        Path(str(db) + ".wal").unlink(missing_ok=True)
        return db

    bare_db = fresh("bare")
    res["bare"] = run(BARE.format(entities=ENTITIES), str(landing), str(bare_db))
    bare_db.unlink(missing_ok=True)
    print(f"bare load {res['bare']['seconds']:.2f} s", flush=True)
    code = {k: v.format(root=str(ROOT)) for k, v in {"first": FIRST, "new": NEW_T, "backfill": BACKFILL}.items()}
    if not args.skip_gx:
        gx_db = fresh("gx")
        res["first_with_gx"] = run(code["first"], str(gx_db), str(config), ANCHOR.isoformat(), str(landing), "1")
        gx_db.unlink(missing_ok=True)
        print(f"ingest+GX+plan {res['first_with_gx']['total_seconds']:.2f} s", flush=True)
    db = fresh("plan")
    res["first"] = run(code["first"], str(db), str(config), ANCHOR.isoformat(), str(landing), "0")
    print(f"ingest+plan {res['first']['total_seconds']:.2f} s", flush=True)
    res["new_t"] = run(code["new"], str(db), str(config), ANCHOR.isoformat())
    print(f"plan at new T {res['new_t']['plan_seconds']:.2f} s", flush=True)
    res["backfill"] = run(code["backfill"], str(db), str(config), ANCHOR.isoformat())
    res["ratio_first_to_bare"] = res["first"]["total_seconds"] / res["bare"]["seconds"]
    if "first_with_gx" in res:
        res["ratio_first_with_gx_to_bare"] = res["first_with_gx"]["total_seconds"] / res["bare"]["seconds"]
    db.unlink(missing_ok=True)

    out = ROOT / "bench" / "results" / (f"plan-{args.orders}.json" if args.weeks == 6 else f"plan-{args.orders}-w{args.weeks}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    f, n, b = res["first"], res["new_t"], res["backfill"]
    print(f"\n{args.orders:,} orders over {args.weeks} weeks ({size / 2**20:.0f} MiB Parquet):")
    print(f"  bare load                 {res['bare']['seconds']:7.2f} s  peak {res['bare']['peak_rss_mib']:6.0f} MiB")
    print(f"  ingest + first plan       {f['total_seconds']:7.2f} s  (ingest {f['ingest_seconds']:.2f}, plan "
          f"{f['first_plan_seconds']:.2f})  peak {f['peak_rss_mib']:6.0f} MiB  = {res['ratio_first_to_bare']:.2f}x bare")
    if "first_with_gx" in res:
        g = res["first_with_gx"]
        print(f"  same with GX suites       {g['total_seconds']:7.2f} s  peak {g['peak_rss_mib']:6.0f} MiB  "
              f"= {res['ratio_first_with_gx_to_bare']:.2f}x bare")
    print(f"  plan at a new T           {n['plan_seconds']:7.2f} s  (+{n['connect_seconds']:.2f} s connect)  "
          f"peak {n['peak_rss_mib']:6.0f} MiB")
    print(f"  24 h hourly backfill      {b['backfill_seconds']:7.2f} s  (median {b['per_t_median']:.2f} s/T, "
          f"max {b['per_t_max']:.2f})  peak {b['peak_rss_mib']:6.0f} MiB")


if __name__ == "__main__":
    main()
