"""Benchmark: a shop group on a partitioned lake (DuckLake, catalog in PostgreSQL, Parquet on moto's S3) worked by 1, 2
and 3 worker processes side by side in one run: ingest and dispatch per partition, then a worker SIGKILLed mid-send.

    .venv/bin/python bench/bench_group.py --shops 200 --orders 50000 --partitions 4,8 --workers 1,2,3 \
        --out /tmp/bench-group.json

The pieces are the group demo's (crm/groupdemo.py: bench/generate.py's long tail of shops split into one landing
folder per partition, the loopback gateway counting requests per Idempotency-Key, the SMTP sink counting mails per
message id) and crm/storage/localpg.py's PostgreSQL cluster and S3 server. Each configuration (P partitions, W
workers) gets new databases (catalog, ops) and a new bucket. A worker is a process that does what a Prefect worker's
partition runs do, without Prefect's per-run start cost (10-15 s here, docs/scale-out.md): it claims the next
partition task from a queue in PostgreSQL (FOR UPDATE SKIP LOCKED), runs it (an ingest: transforms/ingest.py's load
of `landings/p<k>` with the validation, as flows/ingest.py; a dispatch: transforms/dispatch.py's dispatch_lake of
partition k at T: plan, outbox, send by claims), and claims the next. A lake commit DuckLake refuses ("Transaction
conflict") is counted and the task tried again, up to 4 times, as flows/retry.py's tasks are. Phases: every
partition's ingest, then every partition's dispatch; throughput = orders (or messages sent) / the phase's wall time.
Checks: every sent webhook message requested once at the gateway and every e-mail mailed once (0 duplicates), every
message ending sent/failed/done (0 lost: none left queued or sending).

The kill: P = the first of --partitions, 2 workers, the gateway answering after --kill-delay s, so that the send
lasts; once worker w1 holds claims, it is SIGKILLed; its task goes back to the queue (as a re-run would), and the
dispatch task of any partition with messages still queued or sending is queued again every 5 s (as a schedule
would) until none is left. Reported: the seconds until every message was final, and the messages requested again
under the same key. The machine's cores are shared by the workers, PostgreSQL, moto and the gateway: compare ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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

from crm import groupdemo  # noqa: E402
from crm.storage.localpg import S3, Postgres, pg_bin  # noqa: E402

WORKER = textwrap.dedent("""
    import json, os, sys, time
    from datetime import datetime
    import psycopg
    from crm.config import load_settings
    from crm.db import session
    from transforms.dispatch import dispatch_lake
    from transforms.ingest import load
    from transforms.validate import validate_ingest

    config, queue, tag, worker, as_of, landings, stop = sys.argv[1:8]
    settings, T = load_settings(config), datetime.fromisoformat(as_of)
    db = os.path.join(os.path.dirname(config), worker + ".duckdb")       # unused on the lake

    def conflict(e):
        return type(e).__name__ == "TransactionException" and "transaction conflict" in str(e).lower()

    def setup_race(e):
        # two first runs making the ops database's tables at once: PostgreSQL's CREATE TABLE IF NOT EXISTS is not
        # safe against a concurrent one (pg_type's unique index); the second, tried again, finds the table
        return type(e).__name__ == "StorageError" and "already exists" in str(e)

    with psycopg.connect(queue, autocommit=True) as q:
        while True:
            row = q.execute("UPDATE tasks SET claimed_by = %s, started = clock_timestamp() WHERE id = (SELECT id FROM "
                            "tasks WHERE run = %s AND claimed_by IS NULL ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) "
                            "RETURNING id, step, part", (worker, tag)).fetchone()
            if row is None:
                if os.path.exists(stop):
                    break
                time.sleep(0.1)
                continue
            task, step, k = row
            info, conflicts, races = {}, 0, 0
            for attempt in range(4):
                try:
                    if step == "ingest":
                        with session(db, settings, lake=True, partition=k) as con:
                            r = load(con, os.path.join(landings, f"p{k}"), validate=validate_ingest)
                        info = {"rows_loaded": r.rows_loaded, "quarantined": r.rows_quarantined}
                    else:
                        r = dispatch_lake(db, settings, T, worker=f"{worker}-{task}", partition=k)
                        info = {"sent": r.sent, "failed": r.failed, "created": sum(r.created.values())}
                    break
                except Exception as e:
                    if not (conflict(e) or setup_race(e)) or attempt == 3:
                        raise
                    conflicts += conflict(e)
                    races += setup_race(e)
                    time.sleep(0.5 * (attempt + 1))
            q.execute("UPDATE tasks SET done = clock_timestamp(), info = %s WHERE id = %s AND claimed_by = %s",
                      (json.dumps(info | {"conflicts": conflicts, "setup_races": races, "attempts": attempt + 1}),
                       task, worker))
""")


class Bench:
    """The cluster, S3 server, gateway and SMTP sink of the whole run, and the split data sets."""

    def __init__(self, folder: Path, shops: int, orders: int, partitions: list[int]):
        self.folder = folder
        self.cluster = Postgres(pg_bin(), prefix="crm-bench-group-pg-").start()
        self.s3 = S3(folder)
        self.gateway = groupdemo.Gateway()
        self.smtp = groupdemo.SmtpSink()
        self.queue = self.cluster.uri(self.cluster.database("queue"))
        import psycopg

        with psycopg.connect(self.queue, autocommit=True) as q:
            q.execute("CREATE TABLE tasks (id serial PRIMARY KEY, run text, step text, part int, claimed_by text, "
                      "started timestamptz, done timestamptz, info jsonb)")
        made = groupdemo.generate(folder, shops, orders)
        self.made, self.T = made, made.anchor + timedelta(hours=6)
        self.orders = made.rows["orders"]
        self.landings = {p: folder / f"landings-{p}" for p in partitions}
        for p, root in self.landings.items():
            groupdemo.split_landing(made.landing_dir, root, p)

    def stop(self) -> None:
        for part in (self.smtp, self.gateway, self.s3, self.cluster):
            try:
                part.stop()
            except Exception:
                pass

    def config(self, tag: str, partitions: int) -> Path:
        storage = groupdemo.lake_storage(self.cluster, self.folder, partitions, self.s3)
        (self.folder / tag).mkdir()
        return groupdemo.group_config(self.made.config_path, self.folder / tag / "shops.toml",
                                      gateway_url=self.gateway.url, smtp_port=self.smtp.port, storage=storage)

    def tasks(self, tag: str, step: str, parts) -> None:
        import psycopg

        with psycopg.connect(self.queue, autocommit=True) as q:
            for k in parts:
                q.execute("INSERT INTO tasks (run, step, part) VALUES (%s, %s, %s)", (tag, step, k))

    def pending(self, tag: str) -> int:
        import psycopg

        with psycopg.connect(self.queue, autocommit=True) as q:
            return q.execute("SELECT count(*) FROM tasks WHERE run = %s AND done IS NULL", (tag,)).fetchone()[0]

    def done_tasks(self, tag: str) -> list[dict]:
        import psycopg

        with psycopg.connect(self.queue, autocommit=True) as q:
            return [{"step": s, "part": k, "worker": w, "seconds": round(sec, 2), **(info or {})} for s, k, w, sec, info in
                    q.execute("SELECT step, part, claimed_by, extract(epoch FROM done - started)::float, info FROM tasks "
                              "WHERE run = %s AND done IS NOT NULL ORDER BY id", (tag,)).fetchall()]

    def workers(self, tag: str, config: Path, n: int, stop: Path) -> list[subprocess.Popen]:
        env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
        env.pop("PREFECT_API_URL", None)
        return [subprocess.Popen([sys.executable, "-c", WORKER, str(config), self.queue, tag, f"w{i + 1}",
                                  self.T.isoformat(), str(self.landings[self._p(config)]), str(stop)],
                                 cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(config.parent / f"w{i + 1}.log", "w"))
                for i in range(n)]

    @staticmethod
    def stop_workers(procs: list[subprocess.Popen], stop: Path) -> None:
        """Ask the workers to stop (the `stop` file), waiting up to 120 s for each before killing it."""
        stop.touch()
        for p in procs:
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                p.kill()

    def _p(self, config: Path) -> int:
        from crm.config import load_settings

        return load_settings(config).storage.partitions

    def wait(self, tag: str, procs, timeout: float = 3600) -> float:
        began = time.perf_counter()
        while self.pending(tag):
            if any(p.poll() is not None for p in procs):
                raise SystemExit(f"{tag}: a worker stopped; see its log")
            if time.perf_counter() - began > timeout:
                raise SystemExit(f"{tag}: not done in {timeout} s")
            time.sleep(0.1)
        return time.perf_counter() - began

    def outbox(self, config: Path) -> dict:
        import psycopg

        from crm.config import load_settings

        with psycopg.connect(load_settings(config).storage.ops_dsn) as con:
            by = dict(con.execute("SELECT status, count(*) FROM messages GROUP BY 1").fetchall())
            # calls stay queued for the agents: every other message must end sent or failed
            open_ = con.execute("SELECT count(*) FROM messages WHERE status IN ('queued', 'sending') "
                                "AND channel <> 'call'").fetchone()[0]
            sent = con.execute("SELECT channel, message_id FROM messages WHERE status = 'sent'").fetchall()
        return {"by_status": by, "not_final": open_, "webhook_sent": {m for c, m in sent if c != "email"},
                "email_sent": {m for c, m in sent if c == "email"}}

    def marks(self) -> tuple[dict, dict]:
        return dict(self.gateway.requests), dict(self.smtp.mails)

    def checks(self, config: Path, before: tuple[dict, dict]) -> dict:
        o = self.outbox(config)
        g0, m0 = before
        g = {k: n - g0.get(k, 0) for k, n in self.gateway.requests.items() if n - g0.get(k, 0)}
        m = {k: n - m0.get(k, 0) for k, n in self.smtp.mails.items() if n - m0.get(k, 0)}
        return {"messages": o["by_status"],
                "lost_not_final": o["not_final"],
                "webhook_requests": sum(g.values()), "webhook_keys_twice": sum(1 for n in g.values() if n > 1),
                "webhook_sent_not_requested": len(o["webhook_sent"] - set(g)),
                "mails": sum(m.values()), "mails_twice": sum(1 for n in m.values() if n > 1),
                "email_sent_not_mailed": len(o["email_sent"] - set(m))}


def one(bench: Bench, partitions: int, workers: int) -> dict:
    tag = f"p{partitions}-w{workers}-{time.monotonic_ns()}"
    config = bench.config(tag, partitions)
    stop = config.parent / "stop"
    before = bench.marks()
    procs = bench.workers(tag, config, workers, stop)
    try:
        bench.tasks(tag, "ingest", range(partitions))
        ingest_s = bench.wait(tag, procs)
        bench.tasks(tag, "dispatch", range(partitions))
        dispatch_s = bench.wait(tag, procs)
    finally:
        bench.stop_workers(procs, stop)
    done = bench.done_tasks(tag)
    sent = sum(t.get("sent", 0) for t in done if t["step"] == "dispatch")
    r = {"partitions": partitions, "workers": workers, "orders": bench.orders,
         "ingest_seconds": round(ingest_s, 2), "orders_per_s": round(bench.orders / ingest_s),
         "dispatch_seconds": round(dispatch_s, 2), "messages_sent": sent, "messages_per_s": round(sent / dispatch_s, 1),
         "conflicts_retried": sum(t.get("conflicts", 0) for t in done),
         "setup_races_retried": sum(t.get("setup_races", 0) for t in done), **bench.checks(config, before), "tasks": done}
    return r


def kill(bench: Bench, partitions: int, delay: float) -> dict:
    """2 workers; w1 SIGKILLed once it holds claims; until every message is final."""
    import psycopg

    tag = f"kill-p{partitions}-{time.monotonic_ns()}"
    config = bench.config(tag, partitions)
    stop = config.parent / "stop"
    procs = bench.workers(tag, config, 2, stop)
    from crm.config import load_settings

    ops = load_settings(config).storage.ops_dsn
    try:
        bench.tasks(tag, "ingest", range(partitions))
        bench.wait(tag, procs)
        before = bench.marks()
        bench.gateway.delay = delay
        bench.tasks(tag, "dispatch", range(partitions))
        deadline = time.monotonic() + 400
        killed_at, held = None, 0
        with psycopg.connect(ops, autocommit=True) as con:
            while killed_at is None and time.monotonic() < deadline:
                try:
                    held = con.execute("SELECT count(*) FROM messages WHERE claimed_by LIKE 'w1-%' AND status IN "
                                       "('queued', 'sending')").fetchone()[0]
                except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedTable):
                    held = 0                          # the first dispatch has not made the claim columns yet
                if held:
                    procs[0].send_signal(signal.SIGKILL)
                    procs[0].wait()
                    killed_at = time.perf_counter()
                    break
                time.sleep(0.05)
            if killed_at is None:
                raise SystemExit("kill: w1 never held a claim")
            with psycopg.connect(bench.queue, autocommit=True) as q:       # its task back in the queue (a re-run)
                q.execute("UPDATE tasks SET claimed_by = NULL, started = NULL WHERE run = %s AND claimed_by = 'w1' "
                          "AND done IS NULL", (tag,))
            shops = {s.shop_id: s for s in load_settings(config).shops}
            from crm.storage.partitions import bucket

            reruns = 0
            while time.monotonic() < deadline:
                left = con.execute("SELECT shop_id, count(*) FROM messages WHERE status IN ('queued', 'sending') "
                                   "AND channel <> 'call' GROUP BY 1").fetchall()
                if not left and not bench.pending(tag):
                    break
                if not bench.pending(tag):                                  # a later scheduled run of each
                    bench.tasks(tag, "dispatch", sorted({bucket(s, partitions) for s, _ in left if s in shops}))
                    reruns += 1
                time.sleep(5 if bench.pending(tag) == 0 else 0.2)
            recovered = time.perf_counter() - killed_at
    finally:
        bench.gateway.delay = 0.0
        bench.stop_workers(procs, stop)
    c = bench.checks(config, before)
    return {"partitions": partitions, "workers": 2, "gateway_delay_s": delay, "claims_held_by_killed": held,
            "seconds_kill_to_all_final": round(recovered, 1), "dispatch_reruns": reruns,
            "resent_same_key": c["webhook_keys_twice"], **c, "tasks": bench.done_tasks(tag)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shops", type=int, default=200)
    parser.add_argument("--orders", type=int, default=50000)
    parser.add_argument("--partitions", default="4,8")
    parser.add_argument("--workers", default="1,2,3")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--kill-delay", type=float, default=0.05, help="the gateway's answer time in the kill run")
    parser.add_argument("--no-kill", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bench-group.json")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if pg_bin() is None:
        raise SystemExit("no PostgreSQL server programs under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    parts = [int(p) for p in args.partitions.split(",")]
    results, killed = [], None
    with tempfile.TemporaryDirectory(prefix="bench-group-") as tmp:
        bench = Bench(Path(tmp), args.shops, args.orders, parts)
        try:
            print(f"{args.shops} shops, {bench.orders} order rows, T = {bench.T.isoformat()}", flush=True)
            for round_ in range(args.rounds):
                for p in parts:
                    for w in (int(x) for x in args.workers.split(",")):
                        r = one(bench, p, w) | {"round": round_ + 1}
                        results.append(r)
                        print(f"P={p} W={w}: ingest {r['ingest_seconds']:.1f} s ({r['orders_per_s']:,} orders/s), "
                              f"dispatch {r['dispatch_seconds']:.1f} s ({r['messages_sent']} sent, "
                              f"{r['messages_per_s']} msg/s), conflicts retried {r['conflicts_retried']} "
                              f"(setup races {r['setup_races_retried']}), "
                              f"twice {r['webhook_keys_twice'] + r['mails_twice']}, not final {r['lost_not_final']}",
                              flush=True)
            if not args.no_kill:
                killed = kill(bench, parts[0], args.kill_delay)
                print(f"kill: w1 SIGKILLed holding {killed['claims_held_by_killed']} claims; all final "
                      f"{killed['seconds_kill_to_all_final']} s later, re-sent under the same key "
                      f"{killed['resent_same_key']}, not final {killed['lost_not_final']}", flush=True)
        finally:
            bench.stop()
    summary = {f"P={p} W={w}": {k: statistics.median(r[k] for r in results if r["partitions"] == p and r["workers"] == w)
                                for k in ("orders_per_s", "messages_per_s", "ingest_seconds", "dispatch_seconds")}
               for p in parts for w in sorted({r["workers"] for r in results})}
    args.out.write_text(json.dumps({"runs": results, "kill": killed, "median": summary, "shops": args.shops,
                                    "measured_at": datetime.now(timezone.utc).isoformat(), "cpus": os.cpu_count()},
                                   indent=2, default=str))
    print(json.dumps(summary, indent=1))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
