"""Benchmark: the project's ingest (+ the first plan) against DuckDB's bare load of the same files, and a
later drop of 1 % more orders.

    .venv/bin/python bench/bench_ingest.py --orders 1000000 --repeat 2
    .venv/bin/python bench/bench_ingest.py --orders 10000000 --work /tmp/bench-10m
    .venv/bin/python bench/bench_ingest.py --orders 1000000 --data demo      # the demo generator's shape

1. the data: bench/generate.py (default: many shops of Zipf sizes, a long tail of customers, a realistic
   share of recent orders; Parquet, CSV and a stale CSV drop, naive and aware timestamps), or
   crm/demo.py in bench mode (``--data demo``: three shops, Parquet only, a fifth of the orders in the
   last 48 hours), once per size, under ``--work``;
2. *bare*: a fresh DuckDB file, one ``CREATE TABLE … AS SELECT * FROM read_parquet(…)`` /
   ``read_csv(…)`` per entity and format (DuckDB's defaults: it sniffs the CSV and types every column
   itself, uses every core and up to 80 % of the memory) — the floor for getting these files into DuckDB;
3. *ingest*: a fresh DuckDB file, the project's load (hash, land, type and check every row, quarantine,
   newest-wins merge, manifest) with the validation suites (``--no-validate``: without), then the
   first plan at the data's anchor; each in its own process, with the project's DuckDB settings
   (crm/db.py: memory_limit, threads);
4. *drop*: ``--extra`` (default 1 %) more orders with their items and new customers, written beside the
   landing folder's files (links to them) and ingested into the file of step 3, in a new process;
5. *one order*: then a drop of a single new order, the same way: what any ingest costs whatever its size
   (the process, Prefect's flow run, the suites' context, a scan of the big tables' keys). The drop's
   share of the full ingest is printed both whole and above this fixed cost.

bare and ingest alternate, ``--repeat`` times, so both see the same machine; the best of each is compared.
Peak memory is each process's max RSS. Results: ``--out`` (default ``<work>/ingest-<orders>.json``: the
committed bench/results/ files are re-measured on a quiet machine, not overwritten by a working run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CRM = Path(sys.executable).parent / "crm"
ENTITIES = ["customers", "products", "orders", "order_items", "reviews", "suppressions"]
DEMO_ANCHOR = datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc)

BARE = """
import duckdb, resource, sys, time, glob, json
landing, db = sys.argv[1], sys.argv[2]
t = time.perf_counter()
con = duckdb.connect(db)
for e in {entities}:
    for fmt, reader in (("parquet", "read_parquet"), ("csv", "read_csv")):
        files = sorted(glob.glob(f"{{landing}}/{{e}}/*.{{fmt}}"))
        if files:
            con.execute(f"CREATE TABLE {{e}}_{{fmt}} AS SELECT * FROM {{reader}}(?, union_by_name = true)", [files])
con.close()
print(json.dumps({{"seconds": time.perf_counter() - t,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""

INGEST = """
import resource, sys, time, json
from datetime import datetime
sys.path.insert(0, {root!r})
from crm.config import load_settings
from crm.db import connect, sync_shops
from transforms.ingest import load
landing, db, config, validate, anchor = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1", sys.argv[5]
validator = None
if validate:
    from transforms.validate import validate_ingest
    validator = validate_ingest
out = {{}}
t = time.perf_counter()
con = connect(db)
sync_shops(con, load_settings(config))
r = load(con, landing, validate=validator)
out["ingest_seconds"] = time.perf_counter() - t
out.update(rows_loaded=r.rows_loaded, rows_quarantined=r.rows_quarantined, files_new=r.files_new,
           files_seen=r.files_seen)
if anchor != "-":
    from transforms.plan import plan
    s = time.perf_counter()
    p = plan(con, datetime.fromisoformat(anchor))
    out["plan_seconds"] = time.perf_counter() - s
    out["unpaid_orders"], out["visit_tasks"] = p.unpaid_orders, p.visit_tasks
con.close()
out["seconds"] = time.perf_counter() - t
out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


# the same through the `crm` command, as a user runs it (a local Prefect server started once before, as the
# first command does): each step its own process; peak memory is the largest step's max RSS
CLI = """
import json, resource, subprocess, sys, time
crm, db, config, landing, anchor, later = sys.argv[1:7]
def step(*args):
    t = time.perf_counter()
    r = subprocess.run([crm, "--db", db, "--config", config, *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(" ".join(args) + ": " + r.stderr[-3000:])
    return time.perf_counter() - t
out = {{}}
t = time.perf_counter()
out["ingest_seconds"] = step("ingest", landing)
if anchor != "-":
    out["plan_seconds"] = step("plan", "--as-of", anchor)
out["seconds"] = time.perf_counter() - t
out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
if later != "-":
    out["new_t_plan_seconds"] = step("plan", "--as-of", later)
print(json.dumps(out))
"""


def run(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-4000:])
    return json.loads(next(line for line in reversed(out.stdout.splitlines()) if line.startswith('{"')))


def fresh(path: Path) -> Path:
    for p in (path, Path(f"{path}.wal")):
        p.unlink(missing_ok=True)
    shutil.rmtree(f"{path}.tmp", ignore_errors=True)
    return path


def make_data(kind: str, orders: int, work: Path) -> tuple[Path, Path, datetime]:
    """(landing folder, shops.toml, anchor), generated once per kind and size."""
    data = work / f"{kind}-{orders}"
    if kind == "demo":
        if not (data / "shops.toml").exists():
            from crm.demo import generate

            generate(data, orders=orders, bench=True, anchor=DEMO_ANCHOR)
        return data / "landing", data / "shops.toml", DEMO_ANCHOR
    from bench import generate

    if not (data / "generated.json").exists():
        shutil.rmtree(data, ignore_errors=True)
        t = time.perf_counter()
        generate.generate(data, orders=orders)
        print(f"generated {orders:,} orders in {time.perf_counter() - t:.0f} s", flush=True)
    return data / "landing", data / "shops.toml", generate.ANCHOR


def _link_files(landing: Path, dest: Path) -> None:
    """`dest` holds a link to every file under `landing`, at the same place (to the file itself, so that a folder
    of links can be linked again)."""
    for f in landing.rglob("*"):
        if f.is_file():
            (dest / f.relative_to(landing)).parent.mkdir(parents=True, exist_ok=True)
            (dest / f.relative_to(landing)).symlink_to(f.resolve())


def with_extra(kind: str, data: Path, landing: Path, fraction: float) -> Path:
    """A landing folder holding (links to) every file of `landing` plus a later drop of `fraction` more
    orders: the next scheduled ingest of a shop group."""
    plus = data / f"landing-plus-{fraction:g}"
    if not plus.exists():
        _link_files(landing, plus)
        if kind == "demo":
            raise SystemExit("--extra needs the bench generator's data (not --data demo)")
        from bench import generate

        generate.extra_drop(data, fraction, landing=plus)
    return plus


def with_one_order(landing: Path) -> Path:
    """`landing`'s files (links) plus a CSV drop of one new order: the first row of the newest CSV orders file
    there, with an order_id no generator makes (its first digit 9)."""
    import duckdb

    one = landing.parent / f"{landing.name}-one"
    if not one.exists():
        _link_files(landing, one)
        newest = max((landing / "orders").glob("*.csv"), key=lambda f: f.name)
        target = one / "orders" / f"{newest.stem}_one_more.csv"
        duckdb.sql(f"COPY (SELECT * REPLACE ('9' || order_id[2:] AS order_id) FROM read_csv('{newest}', all_varchar = true) "
                   f"LIMIT 1) TO '{target}' (HEADER)")
    return one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/crm-bench"))
    parser.add_argument("--data", choices=("bench", "demo"), default="bench")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-validate", action="store_true", help="ingest without the validation suites")
    parser.add_argument("--no-plan", action="store_true", help="ingest only, no first plan")
    parser.add_argument("--extra", type=float, default=0.01, help="the later drop's share (0: none)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--via", choices=("crm", "functions"), default="crm",
                        help="crm: the `crm` commands as a user runs them (default); functions: in one process")
    parser.add_argument("--backfill", type=int, default=0, metavar="N",
                        help="also an hourly backfill of N T after the first plan (through crm)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    landing, config, anchor = make_data(args.data, args.orders, args.work)
    size = sum(f.stat().st_size for f in landing.rglob("*") if f.is_file())
    validate = "0" if args.no_validate else "1"
    at = "-" if args.no_plan else anchor.isoformat()
    res: dict = {"orders": args.orders, "data": args.data, "landing_bytes": size, "validate": not args.no_validate,
                 "plan": not args.no_plan, "bare": [], "ingest": [], "cpus": os.cpu_count(),
                 "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    bare_code, ingest_code = BARE.format(entities=ENTITIES), INGEST.format(root=str(ROOT))
    db = args.work / f"ingest-{args.data}-{args.orders}.duckdb"
    res["via"] = args.via
    if args.via == "crm":
        if args.no_validate:
            raise SystemExit("--no-validate needs --via functions (crm ingest always validates)")
        subprocess.run([str(CRM), "--db", str(db), "server", "start"], check=True, capture_output=True)
    for i in range(args.repeat):
        bare_db = fresh(args.work / f"bare-{args.orders}.duckdb")
        res["bare"].append(run(bare_code, str(landing), str(bare_db)))
        fresh(bare_db)
        print(f"[{i + 1}] bare load {res['bare'][-1]['seconds']:.1f} s", flush=True)
        if args.via == "crm":
            later = "-" if args.no_plan else (anchor + timedelta(hours=1)).isoformat()
            res["ingest"].append(run(CLI.format(), str(CRM), str(fresh(db)), str(config), str(landing), at, later))
        else:
            res["ingest"].append(run(ingest_code, str(landing), str(fresh(db)), str(config), validate, at))
        r = res["ingest"][-1]
        print(f"[{i + 1}] ingest {r['ingest_seconds']:.1f} s + plan {r.get('plan_seconds', 0):.1f} s, "
              f"peak {r['peak_rss_mib']:.0f} MiB", flush=True)
    if args.backfill and args.via == "crm" and not args.no_plan:
        first, last = anchor + timedelta(hours=2), anchor + timedelta(hours=1 + args.backfill)
        t = time.perf_counter()
        done = subprocess.run([str(CRM), "--db", str(db), "--config", str(config), "backfill", "--from",
                               first.isoformat(), "--to", last.isoformat(), "--every", "1h"], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        res["backfill"] = {"times": args.backfill, "seconds": time.perf_counter() - t}
        res["backfill"]["seconds_per_t"] = res["backfill"]["seconds"] / args.backfill
        print(f"backfill of {args.backfill} T: {res['backfill']['seconds']:.1f} s "
              f"({res['backfill']['seconds_per_t']:.2f} s per T)", flush=True)
    if args.extra:
        plus = with_extra(args.data, landing.parent, landing, args.extra)
        if args.via == "crm":
            res["drop"] = run(CLI.format(), str(CRM), str(db), str(config), str(plus), "-", "-")
        else:
            res["drop"] = run(ingest_code, str(plus), str(db), str(config), validate, "-")
        res["drop_fraction"] = args.extra
        print(f"drop of {args.extra:.0%} more orders: {res['drop']['ingest_seconds']:.2f} s "
              f"({res['drop'].get('files_new', '?')} new of {res['drop'].get('files_seen', '?')} files)", flush=True)
        one = with_one_order(plus)
        if args.via == "crm":
            res["one_order_drop"] = run(CLI.format(), str(CRM), str(db), str(config), str(one), "-", "-")
        else:
            res["one_order_drop"] = run(ingest_code, str(one), str(db), str(config), validate, "-")
        print(f"drop of one order: {res['one_order_drop']['ingest_seconds']:.2f} s", flush=True)
    fresh(db)
    if args.via == "crm":
        subprocess.run([str(CRM), "--db", str(db), "server", "stop"], capture_output=True)

    bare = min(res["bare"], key=lambda r: r["seconds"])
    ing = min(res["ingest"], key=lambda r: r["seconds"])
    res["ratio_to_bare"] = ing["seconds"] / bare["seconds"]
    res["ratio_ingest_only_to_bare"] = ing["ingest_seconds"] / bare["seconds"]
    if "drop" in res:
        res["drop_share_of_full_ingest"] = res["drop"]["ingest_seconds"] / ing["ingest_seconds"]
        fixed = res["one_order_drop"]["ingest_seconds"]
        res["drop_share_above_one_order"] = (res["drop"]["ingest_seconds"] - fixed) / (ing["ingest_seconds"] - fixed)
    out = args.out or args.work / f"ingest-{args.data}-{args.orders}.json"
    out.write_text(json.dumps(res, indent=2))

    what = "ingest + validation" if not args.no_validate else "ingest"
    what += " + first plan" if not args.no_plan else ""
    print(f"\n{args.orders:,} orders ({args.data} data, {size / 2**20:.0f} MiB), best of {args.repeat}:")
    print(f"  DuckDB bare load     {bare['seconds']:8.2f} s   peak {bare['peak_rss_mib']:6.0f} MiB")
    print(f"  {what:<20} {ing['seconds']:8.2f} s   peak {ing['peak_rss_mib']:6.0f} MiB   (ingest "
          f"{ing['ingest_seconds']:.2f} s, plan {ing.get('plan_seconds', 0):.2f} s)")
    print(f"  ratio {res['ratio_to_bare']:.2f}x bare (ingest alone {res['ratio_ingest_only_to_bare']:.2f}x)")
    if "new_t_plan_seconds" in ing:
        print(f"  plan at a new T (T + 1 h): {ing['new_t_plan_seconds']:.2f} s")
    if "drop" in res:
        print(f"  a drop of {args.extra:.0%} more orders: {res['drop']['ingest_seconds']:.2f} s = "
              f"{res['drop_share_of_full_ingest']:.1%} of the full ingest, peak {res['drop']['peak_rss_mib']:.0f} MiB")
        print(f"  a drop of one order: {res['one_order_drop']['ingest_seconds']:.2f} s; above that, the drop of "
              f"{args.extra:.0%} is {res['drop_share_above_one_order']:.1%} of the full ingest's")
    print(f"  results: {out}")


if __name__ == "__main__":
    main()
