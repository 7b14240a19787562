"""Benchmark: messages per second to a loopback gateway, with the outbox bookkeeping.

    .venv/bin/python bench/bench_dispatch.py --messages 20000 --concurrency 16 --rounds 3
    .venv/bin/python bench/bench_dispatch.py --clients 4000 --rounds 4      # the HTTP clients alone

The gateway (tests/gateway.py: uvicorn + Starlette + httptools, honouring Idempotency-Key) runs in its own
process on 127.0.0.1. The measured part is what a dispatch does after rendering: write the messages to
ops.messages as queued in one transaction, close that connection, then send_queued as a flow does
(transforms.dispatch.dispatch_db): POST each one (Idempotency-Key, retries armed), check each batch again
before it goes and record sent/attempts/sent_at, both through short connections on the database thread.
Each round runs it twice, interleaved: as a dispatch does (`checked`), and with the whole queue as one batch,
so that nothing is checked again after the first listing (`unchecked`): the difference is what the checks
before each batch cost. Results: bench/results/dispatch-<messages>.json (or --out), with how long the file
was held open while sending (`held_while_sending_seconds`).

`--clients N` instead sends N bare POSTs (the same JSON and headers, no database) per client and round,
interleaved, to the same gateway: httpx (keep-alive, several small pools, TCP_NODELAY: as good as it gets),
aiohttp (when installed: it is not a dependency) and the project's WebhookClient (crm/channels.py), with
each one's CPU per request. Both ends share the machine's cores; on a shared machine compare the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
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
BODY = "【萌宠小铺】您好,您拍下的猫咪抱枕还未付款,订单将于明天10:00关闭。回T退订"


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Gateway:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", GATEWAY.format(tests=str(ROOT / "tests"))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()

    def stats(self) -> tuple[int, int]:
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        accepted, repeats = map(int, self.proc.stdout.readline().split())
        return accepted, repeats

    def cpu(self) -> float:
        return cpu_of(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


# --------------------------------------------------------------------------------------------------
# the dispatch


def dispatch_once(gw: Gateway, n: int, concurrency: int, tag: str, checked: bool) -> dict:
    import polars as pl

    from crm.config import parse_settings
    from crm.db import connect, sync_shops
    from transforms.dispatch import send_queued, write_outbox

    settings = parse_settings({"shops": [{"shop_id": "s1"}],
                               "gateway": {"webhook_url": gw.url, "concurrency": concurrency}})
    now = datetime(2026, 11, 24, 2, 30, tzinfo=timezone.utc)
    ids = [f"{tag}{i:07d}" for i in range(n)]
    frame = pl.DataFrame({
        "message_id": [f"payment_reminder:{i}" for i in ids], "purpose": ["payment_reminder"] * n,
        "shop_id": ["s1"] * n, "order_id": ids, "customer_id": [f"c{i}" for i in range(n)],
        "channel": ["sms"] * n, "recipient": [f"+86139{i:08d}" for i in range(n)], "body": [BODY] * n,
        "template": ["payment_reminder/new"] * n, "created_at": [now] * n, "segments": [1] * n,
    })
    accepted_before, _ = gw.stats()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        con = connect(db)
        sync_shops(con, settings)
        cpu0, gw0, started = cpu_self(), gw.cpu(), time.perf_counter()
        write_outbox(con, frame, now)
        con.close()
        written = time.perf_counter()
        r = send_queued(db, settings, now) if checked else send_queued(db, settings, now, batch=n)
        done = time.perf_counter()
        cpu, gateway_cpu = cpu_self() - cpu0, gw.cpu() - gw0
        con = connect(db, read_only=True)
        recorded = con.execute("SELECT count(*) FROM ops.messages WHERE status = 'sent'").fetchone()[0]
        con.close()
    accepted, repeats = gw.stats()
    total = done - started
    return {"messages_per_second": n / total, "send_messages_per_second": n / (done - written),
            "outbox_write_seconds": written - started, "send_and_record_seconds": done - written,
            "total_seconds": total, "sent": r.sent, "failed": r.failed, "recorded_sent": recorded,
            "gateway_accepted": accepted - accepted_before, "gateway_repeats": repeats,
            "checks": r.checks, "record_writes": r.writes, "held_while_sending_seconds": r.held_seconds,
            # both ends share the machine's cores: the gateway's CPU is not available to the client
            "client_cpu_seconds": cpu, "client_cpu_ms_per_message": cpu / n * 1e3,
            "gateway_cpu_seconds": gateway_cpu}


def dispatch_bench(args) -> None:
    gw = Gateway()
    runs: dict[str, list[dict]] = {"checked": [], "unchecked": []}
    try:
        for rnd in range(args.rounds):
            for kind in (("checked", "unchecked") if rnd % 2 == 0 else ("unchecked", "checked")):
                res = dispatch_once(gw, args.messages, args.concurrency, f"r{rnd}{kind[0]}", kind == "checked")
                runs[kind].append(res)
                print(f"round {rnd + 1} {kind:9s}: {res['messages_per_second']:,.0f} msg/s (outbox write "
                      f"{res['outbox_write_seconds']:.2f} s, send + record {res['send_and_record_seconds']:.2f} s); "
                      f"sent {res['sent']:,}, recorded {res['recorded_sent']:,}, gateway accepted "
                      f"{res['gateway_accepted']:,}; {res['checks']} checks + {res['record_writes']} writes held the "
                      f"file {res['held_while_sending_seconds']:.2f} s; CPU: client {res['client_cpu_seconds']:.1f} s "
                      f"({res['client_cpu_ms_per_message']:.3f} ms/message), gateway {res['gateway_cpu_seconds']:.1f} s",
                      flush=True)
    finally:
        gw.stop()
    median = {kind: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for kind, rs in runs.items()}
    out = {"messages": args.messages, "concurrency": args.concurrency, "rounds": args.rounds, "median": median,
           "runs": runs, "checks_cost": 1 - median["checked"]["messages_per_second"]
                                         / median["unchecked"]["messages_per_second"]}
    path = args.out or ROOT / "bench" / "results" / f"dispatch-{args.messages}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    c, u = median["checked"], median["unchecked"]
    print(f"median of {args.rounds}: {c['messages_per_second']:,.0f} msg/s as a dispatch sends, "
          f"{u['messages_per_second']:,.0f} msg/s without the checks before each batch "
          f"(the checks cost {out['checks_cost']:.0%}); client CPU {c['client_cpu_ms_per_message']:.3f} ms/message; "
          f"{path}")


# --------------------------------------------------------------------------------------------------
# the clients alone


def _message(i: int, tag: str) -> dict:
    return {"message_id": f"payment_reminder:{tag}{i:07d}", "channel": "sms", "shop_id": "s1",
            "purpose": "payment_reminder", "recipient": f"+86139{i:08d}", "body": BODY}


def _payload(m: dict) -> dict:
    return {"message_id": m["message_id"], "channel": m["channel"], "shop_id": m["shop_id"],
            "purpose": m["purpose"], "to": m["recipient"], "body": m["body"]}


async def _crew(messages: list[dict], concurrency: int, send) -> int:
    pending, ok = iter(messages), 0

    async def worker() -> None:
        nonlocal ok
        for m in pending:
            if await send(m):
                ok += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


async def client_httpx(url: str, messages: list[dict], concurrency: int) -> int:
    import httpx

    per_pool = 4
    clients = [httpx.AsyncClient(timeout=httpx.Timeout(10), transport=httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool),
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])) for _ in range(-(-concurrency // per_pool))]
    turn = 0

    async def send(m: dict) -> bool:
        nonlocal turn
        turn += 1
        async with clients[turn % len(clients)].stream("POST", url, json=_payload(m),
                                                       headers={"Idempotency-Key": m["message_id"]}) as r:
            async for _ in r.aiter_raw():      # read to the end: the connection is kept
                pass
            return 200 <= r.status_code < 300

    try:
        return await _crew(messages, concurrency, send)
    finally:
        for c in clients:
            await c.aclose()


async def client_aiohttp(url: str, messages: list[dict], concurrency: int) -> int:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                    timeout=aiohttp.ClientTimeout(total=10), cookie_jar=aiohttp.DummyCookieJar())

    async def send(m: dict) -> bool:
        async with session.post(url, json=_payload(m), headers={"Idempotency-Key": m["message_id"]},
                                allow_redirects=False) as r:
            await r.read()
            return 200 <= r.status < 300

    try:
        return await _crew(messages, concurrency, send)
    finally:
        await session.close()


async def client_crm(url: str, messages: list[dict], concurrency: int) -> int:
    from crm.channels import WebhookClient, send_webhook

    async with WebhookClient(url, timeout=10) as client:
        async def send(m: dict) -> bool:
            return (await send_webhook(client, m, max_attempts=5, base_delay=0.5)).status == "sent"

        return await _crew(messages, concurrency, send)


def clients_bench(args) -> None:
    import uvloop

    clients = {"httpx": client_httpx, "aiohttp": client_aiohttp, "crm WebhookClient": client_crm}
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        print("aiohttp is not installed: it is left out")
        del clients["aiohttp"]
    gw = Gateway()
    runs: dict[str, list[dict]] = {name: [] for name in clients}
    n = args.clients
    try:
        for rnd in range(args.rounds):
            for name in (list(clients) if rnd % 2 == 0 else list(clients)[::-1]):
                messages = [_message(i, f"{name[:3]}{rnd}") for i in range(n)]
                cpu0, gw0, started = cpu_self(), gw.cpu(), time.perf_counter()
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    ok = runner.run(clients[name](gw.url, messages, args.concurrency))
                wall = time.perf_counter() - started
                res = {"messages_per_second": n / wall, "client_cpu_ms_per_request": (cpu_self() - cpu0) / n * 1e3,
                       "gateway_cpu_ms_per_request": (gw.cpu() - gw0) / n * 1e3, "accepted": ok}
                runs[name].append(res)
                print(f"round {rnd + 1} {name:18s} {res['messages_per_second']:7,.0f} msg/s  client "
                      f"{res['client_cpu_ms_per_request']:.3f} ms/request  gateway "
                      f"{res['gateway_cpu_ms_per_request']:.3f} ms/request  ({ok:,} accepted)", flush=True)
    finally:
        gw.stop()
    median = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    path = args.out or ROOT / "bench" / "results" / f"dispatch-clients-{n}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"requests": n, "concurrency": args.concurrency, "rounds": args.rounds,
                                "median": median, "runs": runs}, indent=2))
    print(f"median of {args.rounds} rounds, {n:,} requests each, concurrency {args.concurrency}:")
    for name, m in median.items():
        print(f"  {name:18s} {m['messages_per_second']:7,.0f} msg/s  client {m['client_cpu_ms_per_request']:.3f} "
              f"ms/request  gateway {m['gateway_cpu_ms_per_request']:.3f} ms/request")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--clients", type=int, default=0, metavar="N",
                        help="compare the HTTP clients alone, N requests each per round")
    parser.add_argument("--out", type=Path, default=None, help="where the JSON goes (default: bench/results/)")
    args = parser.parse_args()
    (clients_bench if args.clients else dispatch_bench)(args)


if __name__ == "__main__":
    main()
