"""Benchmark: messages per second from the PostgreSQL outbox (crm/storage/outbox.py) with 1, 2 and 3 dispatch workers
(transforms/dispatch_pg.py's send_claimed, each in its own process) to one loopback gateway.

    .venv/bin/python bench/bench_outbox_pg.py --messages 20000 --rounds 2 --out /tmp/bench-outbox.json

A throwaway PostgreSQL cluster (tests/postgres.py: initdb + pg_ctl on 127.0.0.1, fsync off) and the gateway of
bench_dispatch.py (tests/gateway.py in its own process, honouring Idempotency-Key). Each run: a new database,
`--messages` SMS queued with one enqueue, then the workers start together (each imports and connects first,
then waits for a go file) and send until nothing is left to claim; the time is from the go to the last
worker's exit. Runs are interleaved (1, 2, 3 workers, then again) so that a shared machine's noise falls on
all of them alike. Every run checks that the gateway accepted each message once and saw no repeat, and that
every row ends sent. Both ends, PostgreSQL and the workers share the machine's cores: compare the ratios; the
gateway's share of one core while the workers ran says when the gateway (one process) is the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench.bench_dispatch import BODY, Gateway  # noqa: E402
from crm.storage.outbox import PgOutbox  # noqa: E402
from postgres import Postgres, pg_bin  # noqa: E402

T = datetime(2026, 11, 24, 2, 30, tzinfo=timezone.utc)

WORKER = textwrap.dedent("""
    import json, os, sys, time
    from datetime import datetime
    from crm.config import load_settings
    from crm.storage.outbox import PgOutbox
    from transforms.dispatch_pg import send_claimed

    dsn, config, worker, go = sys.argv[1:5]
    settings = load_settings(config)
    with PgOutbox(dsn) as outbox:
        outbox.counts()
        open(go + "." + worker, "w").close()           # ready
        while not os.path.exists(go):
            time.sleep(0.002)
        began = time.perf_counter()
        r = send_claimed(outbox, settings, datetime.fromisoformat(sys.argv[5]), worker=worker)
    print(json.dumps({"sent": r.sent, "kept": r.kept, "failed": r.failed, "seconds": time.perf_counter() - began}))
""")


def config_file(folder: Path, url: str, concurrency: int) -> Path:
    path = folder / "shops.toml"
    path.write_text(f'[[shops]]\nshop_id = "s1"\n\n[gateway]\nwebhook_url = "{url}"\nconcurrency = {concurrency}\n'
                    'timeout_seconds = 10\nmax_attempts = 4\nbackoff_seconds = 0.01\n', encoding="utf-8")
    return path


def messages(n: int, tag: str) -> list[dict]:
    """`n` SMS; `tag` makes the ids new to the gateway, which keeps what it accepted across runs."""
    return [{"message_id": f"payment_reminder:{tag}o{i:07d}", "purpose": "payment_reminder", "shop_id": "s1",
             "order_id": f"o{i:07d}", "customer_id": f"c{i}", "channel": "sms", "recipient": f"139{i:08d}",
             "body": BODY, "created_at": T - timedelta(hours=1) + timedelta(milliseconds=i), "segments": 2}
            for i in range(n)]


def run(cluster: Postgres, gateway: Gateway, config: Path, folder: Path, n: int, workers: int) -> dict:
    dsn = cluster.uri(cluster.database("bench"))
    with PgOutbox(dsn) as outbox:
        outbox.ensure()
        queued_at = time.perf_counter()
        assert outbox.enqueue(messages(n, tag=f"r{time.monotonic_ns()}-")) == n
        enqueue_seconds = time.perf_counter() - queued_at
        accepted_before, repeats_before = gateway.stats()
        go = folder / f"go-{time.monotonic_ns()}"
        procs = [subprocess.Popen([sys.executable, "-c", WORKER, dsn, str(config), f"w{i}", str(go), T.isoformat()],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(workers)]
        while not all(Path(f"{go}.w{i}").exists() for i in range(workers)):
            if any(p.poll() is not None for p in procs):
                raise SystemExit("a worker stopped: " + next(p for p in procs if p.poll() is not None).stderr.read())
            time.sleep(0.01)
        began, gateway_cpu = time.perf_counter(), gateway.cpu()
        go.touch()
        reports = []
        for p in procs:
            out, err = p.communicate(timeout=1800)
            if p.returncode != 0:
                raise SystemExit(err[-3000:])
            reports.append(json.loads(out.strip().splitlines()[-1]))
        wall = time.perf_counter() - began
        gateway_cpu = gateway.cpu() - gateway_cpu
        accepted, repeats = gateway.stats()
        counts = outbox.counts()
    if counts != {"sent": n} or accepted - accepted_before != n or repeats != repeats_before:
        raise SystemExit(f"not exactly once: {counts}, accepted {accepted - accepted_before} of {n}, "
                         f"repeats {repeats - repeats_before}")
    return {"workers": workers, "messages": n, "seconds": round(wall, 3), "msg_per_s": round(n / wall),
            "enqueue_seconds": round(enqueue_seconds, 3), "gateway_cpu_share": round(gateway_cpu / wall, 2),
            "per_worker": [{"sent": r["sent"], "seconds": round(r["seconds"], 3)} for r in reports]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", default="1,2,3")
    parser.add_argument("--concurrency", type=int, default=16, help="requests at once per worker")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bench-outbox-pg.json")
    args = parser.parse_args()
    bindir = pg_bin()
    if bindir is None:
        raise SystemExit("no PostgreSQL server programs under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    cluster = Postgres(bindir).start()
    gateway = Gateway()
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-outbox-") as tmp:
            folder = Path(tmp)
            config = config_file(folder, gateway.url, args.concurrency)
            for round_ in range(args.rounds):
                for workers in (int(w) for w in args.workers.split(",")):
                    r = run(cluster, gateway, config, folder, args.messages, workers) | {"round": round_ + 1}
                    results.append(r)
                    print(f"round {r['round']}: {workers} worker(s): {r['msg_per_s']:,} msg/s "
                          f"({r['seconds']:.2f} s, the gateway's process busy {r['gateway_cpu_share']:.0%}; per worker " +
                          ", ".join(f"{w['sent']:,} in {w['seconds']:.2f} s" for w in r["per_worker"]) + ")",
                          flush=True)
    finally:
        gateway.stop()
        cluster.stop()
    summary = {str(w): statistics.median(r["msg_per_s"] for r in results if r["workers"] == w)
               for w in sorted({r["workers"] for r in results})}
    print("median msg/s by workers:", summary)
    args.out.write_text(json.dumps({"runs": results, "median_msg_per_s": summary,
                                    "measured_at": datetime.now(timezone.utc).isoformat(),
                                    "cpus": os.cpu_count()}, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
