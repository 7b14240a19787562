"""Side by side on the same data: DuckDB's bare load, the project, and the row-by-row planner of
tests/reference.py (what a shop would script by hand), as ratios.

    .venv/bin/python bench/bench_compare.py --orders 100000
    .venv/bin/python bench/bench_compare.py --orders 100000 --data demo     # the demo generator's shape

The data comes from bench/generate.py (or crm/demo.py in bench mode, ``--data demo``), see
bench/bench_ingest.py. Each measurement is its own process:

* *bare*: DuckDB's ``CREATE TABLE … AS SELECT * FROM read_parquet / read_csv`` per entity and format;
* *project*: ingest with the validation suites (``--no-validate``: without) + the first plan at the data's
  anchor T, into a fresh file (crm/db.py's DuckDB settings);
* *reference*: tests/reference.py's reminder decisions, visit tasks and customer segments at the same T, on
  the rows the project staged (read from its file into Python lists of dicts: the time to read them is
  shown apart). The reference scans lists (every order's items, every customer's orders), so it is given
  each shop's own orders, items, products and customers in turn (all its rules are within one shop; every
  shop and suppression is passed each time): otherwise it is quadratic in the whole group's size.
  Its rows are compared with the project's marts at T; the counts of rows that differ are printed.

bare and project alternate ``--repeat`` times; the reference runs once (``--reference-timeout``).
Results: ``--out`` (default ``<work>/compare-<data>-<orders>.json``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_ingest import BARE, ENTITIES, INGEST, fresh, make_data, run  # noqa: E402

REFERENCE = """
import resource, sys, time, json
from collections import defaultdict
from datetime import datetime
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
import duckdb
import reference as ref
from crm.config import load_settings
from transforms.plan import template_variants
db, config, T = sys.argv[1], sys.argv[2], datetime.fromisoformat(sys.argv[3])
out = {{}}
t = time.perf_counter()
con = duckdb.connect(db, read_only=True)
con.execute("SET TimeZone = 'UTC'")
def rows(sql):
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]
orders = rows("SELECT * EXCLUDE (_source_file, _ingest_id, _file_ord, _row_number) FROM staging.orders")
items = rows("SELECT order_id, line_no, product_id, quantity, unit_price FROM staging.order_items")
products = rows("SELECT product_id, shop_id, title, category, style_tags, followup_days FROM staging.products")
customers = rows("SELECT * EXCLUDE (_source_file, _ingest_id, _file_ord, _row_number) FROM staging.customers")
reviews = rows("SELECT order_id, created_at, rating, text FROM staging.reviews")
suppressions = rows("SELECT customer_id, phone, email, channel, created_at, reason FROM staging.suppressions")
project = {{
    "decisions": {{r[0]: r[1:] for r in con.execute(
        "SELECT order_id, decision, reason, channel FROM marts.reminder_decisions WHERE as_of = ?", [T]).fetchall()}},
    "visits": {{r[0]: r[1:] for r in con.execute(
        "SELECT order_id, tier, rank, channel FROM marts.visit_tasks WHERE as_of = ?", [T]).fetchall()}},
    "segments": {{(r[0], r[1]): r[2:] for r in con.execute(
        "SELECT shop_id, customer_id, paid_orders, segment FROM marts.customer_segments").fetchall()}},
}}
con.close()
out["read_seconds"] = time.perf_counter() - t
shops = [s.model_dump() for s in load_settings(config).shops]
variants = template_variants()
shop_of_order = {{o["order_id"]: o["shop_id"] for o in orders}}
by = defaultdict(lambda: defaultdict(list))
for o in orders:
    by[o["shop_id"]]["orders"].append(o)
for i in items:
    by[shop_of_order.get(i["order_id"])]["items"].append(i)
for p in products:
    by[p["shop_id"]]["products"].append(p)
for c in customers:
    by[c["shop_id"]]["customers"].append(c)
for r in reviews:
    by[shop_of_order.get(r["order_id"])]["reviews"].append(r)
t = time.perf_counter()
decisions, visits, segments = [], [], []
for shop in shops:
    d = by[shop["shop_id"]]
    decisions += ref.reminder_decisions(T, shops, d["orders"], d["items"], d["products"], d["customers"],
                                        suppressions, [], variants)
    visits += ref.visit_tasks(T, shops, d["orders"], d["items"], d["products"], d["customers"], suppressions,
                              d["reviews"], [])
    segments += ref.customer_segments(T, d["orders"], d["customers"])
out["plan_seconds"] = time.perf_counter() - t
out["seconds"] = out["read_seconds"] + out["plan_seconds"]
def differ(mine, theirs):
    keys = set(mine) | set(theirs)
    return sum(1 for k in keys if mine.get(k) != theirs.get(k)), len(keys)
out["decisions_differ"], out["decisions"] = differ(
    {{r["order_id"]: (r["decision"], r["reason"], r["channel"]) for r in decisions}}, project["decisions"])
out["visits_differ"], out["visits"] = differ(
    {{r["order_id"]: (r["tier"], r["rank"], r["channel"]) for r in visits}}, project["visits"])
out["segments_differ"], out["segments"] = differ(
    {{(r["shop_id"], r["customer_id"]): (r["paid_orders"], r["segment"]) for r in segments}}, project["segments"])
out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/crm-bench"))
    parser.add_argument("--data", choices=("bench", "demo"), default="bench")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--no-validate", action="store_true")
    parser.add_argument("--reference-timeout", type=float, default=3600)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    landing, config, anchor = make_data(args.data, args.orders, args.work)
    res: dict = {"orders": args.orders, "data": args.data, "anchor": anchor.isoformat(), "bare": [], "project": [],
                 "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    db = args.work / f"compare-{args.data}-{args.orders}.duckdb"
    code = INGEST.format(root=str(ROOT))
    for i in range(args.repeat):
        bare_db = fresh(args.work / f"bare-{args.orders}.duckdb")
        res["bare"].append(run(BARE.format(entities=ENTITIES), str(landing), str(bare_db)))
        fresh(bare_db)
        res["project"].append(run(code, str(landing), str(fresh(db)), str(config),
                                  "0" if args.no_validate else "1", anchor.isoformat()))
        print(f"[{i + 1}] bare {res['bare'][-1]['seconds']:.2f} s, project {res['project'][-1]['seconds']:.2f} s",
              flush=True)
    try:
        out = subprocess.run([sys.executable, "-c", REFERENCE.format(root=str(ROOT), tests=str(ROOT / "tests")),
                              str(db), str(config), anchor.isoformat()], capture_output=True, text=True,
                             timeout=args.reference_timeout)
        if out.returncode != 0:
            raise SystemExit(out.stderr[-4000:])
        res["reference"] = json.loads(next(line for line in reversed(out.stdout.splitlines())
                                           if line.startswith('{"')))
    except subprocess.TimeoutExpired:
        res["reference"] = {"seconds": None, "timed_out_after": args.reference_timeout}
    fresh(db)

    bare = min(res["bare"], key=lambda r: r["seconds"])
    proj = min(res["project"], key=lambda r: r["seconds"])
    ref = res["reference"]
    res["project_to_bare"] = proj["seconds"] / bare["seconds"]
    if ref.get("seconds"):
        res["reference_to_bare"] = ref["seconds"] / bare["seconds"]
        res["reference_to_project"] = ref["seconds"] / proj["seconds"]
        res["reference_plan_to_project_plan"] = ref["plan_seconds"] / proj["plan_seconds"]
    out_path = args.out or args.work / f"compare-{args.data}-{args.orders}.json"
    out_path.write_text(json.dumps(res, indent=2))

    print(f"\n{args.orders:,} orders ({args.data} data), T = {anchor:%Y-%m-%dT%H:%MZ}; best of {args.repeat} for "
          f"bare and project:")
    print(f"  {'':<34}{'seconds':>9}  {'× bare':>7}  {'peak MiB':>8}")
    print(f"  {'DuckDB bare load':<34}{bare['seconds']:9.2f}  {1:7.2f}  {bare['peak_rss_mib']:8.0f}")
    label = "project: ingest" + ("" if args.no_validate else " + validation") + " + plan"
    print(f"  {label:<34}{proj['seconds']:9.2f}  {res['project_to_bare']:7.2f}  {proj['peak_rss_mib']:8.0f}"
          f"   (ingest {proj['ingest_seconds']:.2f}, plan {proj['plan_seconds']:.2f})")
    if ref.get("seconds"):
        print(f"  {'reference (row by row): read + plan':<34}{ref['seconds']:9.2f}  {res['reference_to_bare']:7.2f}"
              f"  {ref['peak_rss_mib']:8.0f}   (read {ref['read_seconds']:.2f}, plan {ref['plan_seconds']:.2f})")
        print(f"  reference / project: {res['reference_to_project']:.1f}x overall, "
              f"{res['reference_plan_to_project_plan']:.0f}x planning alone")
        print(f"  rows that differ (reference vs project): decisions {ref['decisions_differ']} of {ref['decisions']}, "
              f"visit tasks {ref['visits_differ']} of {ref['visits']}, segments {ref['segments_differ']} of "
              f"{ref['segments']}")
    else:
        print(f"  reference: not finished within {args.reference_timeout:.0f} s")
    print(f"  results: {out_path}")


if __name__ == "__main__":
    main()
