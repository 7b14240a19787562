"""Benchmark: `crm ingest`'s load against DuckDB's bare load of the same files.

    .venv/bin/python bench/bench_ingest.py --orders 1000000

1. makes the data with the demo generator (bench mode: Parquet only), once per size;
2. *bare*: a fresh DuckDB file, ``CREATE TABLE e AS SELECT * FROM read_parquet('<e>/*.parquet')``
   for each entity — the floor for reading these files into DuckDB;
3. *ingest*: a fresh DuckDB file, the project's load (hash, land as text, type, quarantine check,
   newest-wins merge, manifest) without validation, then the same with the Great Expectations suites.

Each measurement runs in its own process; peak memory is that process's max RSS.
Results go to bench/results/ingest-<orders>.json and are printed as a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ENTITIES = ["customers", "products", "orders", "order_items", "reviews", "suppressions"]

BARE = """
import duckdb, resource, sys, time, glob, json
landing, db = sys.argv[1], sys.argv[2]
t = time.perf_counter()
con = duckdb.connect(db)
for e in {entities}:
    files = sorted(glob.glob(f"{{landing}}/{{e}}/*.parquet"))
    if files:
        con.execute(f"CREATE TABLE {{e}} AS SELECT * FROM read_parquet(?)", [files])
con.close()
print(json.dumps({{"seconds": time.perf_counter() - t,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""

INGEST = """
import resource, sys, time, json
sys.path.insert(0, {root!r})
from crm.config import load_settings
from crm.db import connect, sync_shops
from transforms.ingest import load
landing, db, config, validate = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
validator = None
if validate:
    from transforms.validate import validate_ingest, _context
    _context()          # GX's import is a one-off cost of the process, not of the load
    validator = validate_ingest
t = time.perf_counter()
con = connect(db)
sync_shops(con, load_settings(config))
r = load(con, landing, validate=validator)
con.close()
print(json.dumps({{"seconds": time.perf_counter() - t, "rows_loaded": r.rows_loaded,
                  "rows_quarantined": r.rows_quarantined,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def run(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    data = args.work / f"data-{args.orders}"
    if not (data / "shops.toml").exists():
        from crm.demo import generate

        t = time.perf_counter()
        generate(data, orders=args.orders, bench=True)
        print(f"generated {args.orders:,} orders in {time.perf_counter() - t:.1f} s")
    landing, config = data / "landing", data / "shops.toml"
    size = sum(f.stat().st_size for f in landing.rglob("*") if f.is_file())

    results = {"orders": args.orders, "landing_bytes": size, "bare": [], "ingest": [], "ingest_validated": []}
    for i in range(args.repeat):
        for kind, code, extra in (("bare", BARE.format(entities=ENTITIES), []),
                                  ("ingest", INGEST.format(root=str(ROOT)), [str(config), "0"]),
                                  ("ingest_validated", INGEST.format(root=str(ROOT)), [str(config), "1"])):
            db = args.work / f"{kind}-{args.orders}.duckdb"
            db.unlink(missing_ok=True)
            Path(str(db) + ".wal").unlink(missing_ok=True)
            results[kind].append(run(code, str(landing), str(db), *extra))
            db.unlink(missing_ok=True)

    best = {k: min(results[k], key=lambda r: r["seconds"]) for k in ("bare", "ingest", "ingest_validated")}
    results["ratio_ingest_to_bare"] = best["ingest"]["seconds"] / best["bare"]["seconds"]
    results["ratio_validated_to_bare"] = best["ingest_validated"]["seconds"] / best["bare"]["seconds"]
    out = ROOT / "bench" / "results" / f"ingest-{args.orders}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))

    print(f"{args.orders:,} orders, {size / 2**20:.0f} MiB of Parquet, best of {args.repeat}:")
    for k, label in (("bare", "DuckDB bare load"), ("ingest", "crm ingest (no GX)"), ("ingest_validated", "crm ingest + GX")):
        r = best[k]
        print(f"  {label:<20} {r['seconds']:7.2f} s   peak {r['peak_rss_mib']:7.0f} MiB")
    print(f"  ratio ingest/bare {results['ratio_ingest_to_bare']:.2f}x, with validation {results['ratio_validated_to_bare']:.2f}x")


if __name__ == "__main__":
    main()
