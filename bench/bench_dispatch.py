"""Benchmark: messages per second to a loopback gateway, with the outbox bookkeeping.

    .venv/bin/python bench/bench_dispatch.py --messages 20000 --concurrency 64

The gateway (tests/gateway.py: uvicorn + Starlette, honouring Idempotency-Key) runs in its own process
on 127.0.0.1. The measured part is what a dispatch does after rendering: write the messages to
ops.messages as queued in one transaction, close that connection, POST each one (Idempotency-Key,
retries armed), and record sent/attempts/sent_at back in batches, each through its own short connection,
as a flow does (transforms.dispatch.dispatch_db). Results: bench/results/dispatch-<messages>.json, with
how long the file was held open while sending (`held_while_sending_seconds`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

GATEWAY = """
import sys, time
sys.path.insert(0, {tests!r})
from gateway import Gateway
g = Gateway().start()
print(g.url, flush=True)
for line in sys.stdin:
    if line.strip() == "stats":
        print(len(g.accepted), g.repeats, flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()

    import polars as pl

    from crm.config import parse_settings
    from crm.db import connect, sync_shops
    from transforms.dispatch import send_queued, write_outbox

    gw = subprocess.Popen([sys.executable, "-c", GATEWAY.format(tests=str(ROOT / "tests"))],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    url = gw.stdout.readline().strip()
    settings = parse_settings({"shops": [{"shop_id": "s1"}],
                               "gateway": {"webhook_url": url, "concurrency": args.concurrency}})
    now = datetime(2026, 11, 24, 2, 30, tzinfo=timezone.utc)
    n = args.messages
    frame = pl.DataFrame({
        "message_id": [f"payment_reminder:b{i:07d}" for i in range(n)], "purpose": ["payment_reminder"] * n,
        "shop_id": ["s1"] * n, "order_id": [f"b{i:07d}" for i in range(n)], "customer_id": [f"c{i}" for i in range(n)],
        "channel": ["sms"] * n, "recipient": [f"139{i:08d}" for i in range(n)],
        "body": ["【萌宠小铺】您好,您拍下的猫咪抱枕还未付款,订单将于明天10:00关闭。回T退订"] * n,
        "template": ["payment_reminder/new"] * n, "created_at": [now] * n, "segments": [1] * n,
    })
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        con = connect(db)
        sync_shops(con, settings)
        started = time.perf_counter()
        write_outbox(con, frame, now)
        con.close()
        written = time.perf_counter()
        r = send_queued(db, settings, now)
        sent, failed, stats = r.sent, r.failed, {"writes": r.writes, "held_seconds": r.held_seconds}
        done = time.perf_counter()
        con = connect(db, read_only=True)
        recorded = con.execute("SELECT count(*) FROM ops.messages WHERE status = 'sent'").fetchone()[0]
        con.close()
    gw.stdin.write("stats\n")
    gw.stdin.flush()
    accepted, repeats = map(int, gw.stdout.readline().split())
    gw.terminate()
    gw.wait()
    import resource

    gateway_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = resource.getrusage(resource.RUSAGE_SELF)

    total = done - started
    res = {"messages": n, "concurrency": args.concurrency, "outbox_write_seconds": written - started,
           "send_and_record_seconds": done - written, "total_seconds": total, "messages_per_second": n / total,
           "sent": sent, "failed": failed, "recorded_sent": recorded, "gateway_accepted": accepted,
           "gateway_repeats": repeats, "record_writes": stats["writes"],
           "held_while_sending_seconds": stats["held_seconds"],
           # both ends share the machine's 2 cores: the gateway's CPU is not available to the client
           "gateway_cpu_seconds": gateway_cpu.ru_utime + gateway_cpu.ru_stime,
           "client_cpu_seconds": client_cpu.ru_utime + client_cpu.ru_stime}
    out = ROOT / "bench" / "results" / f"dispatch-{n}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"{n:,} messages, concurrency {args.concurrency}: {res['messages_per_second']:,.0f} msg/s "
          f"(outbox write {res['outbox_write_seconds']:.2f} s, send + record {res['send_and_record_seconds']:.2f} s); "
          f"sent {sent:,}, recorded {recorded:,} in {stats['writes']} writes holding the file "
          f"{stats['held_seconds']:.2f} s, gateway accepted {accepted:,}, repeats {repeats}; "
          f"CPU: client {res['client_cpu_seconds']:.1f} s, gateway {res['gateway_cpu_seconds']:.1f} s")


if __name__ == "__main__":
    main()
