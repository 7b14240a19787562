"""The multi-worker demo of a shop group on a partitioned lake, on one machine: `./run group-demo` (docs/rules.md §10).

    ./run group-demo [--shops 16] [--orders 4000] [--partitions 4] [--workers 2] [--s3] [--folder DIR] [--keep]

It starts, each on a free 127.0.0.1 port and all of its own: a throwaway PostgreSQL cluster (crm/storage/localpg.py:
DuckLake's catalog and the ops database), a loopback webhook gateway that answers 200 and counts the requests per
Idempotency-Key, an SMTP sink (aiosmtpd, one of the dev dependencies `./run` installs) that counts the mails per
message id, and a local Prefect server (crm/orchestration.py, as `crm server start` does; its scheduler off, so only
the demo's runs run); with `--s3`, moto's S3 server for an s3:// data path (default: a folder, `<folder>/lake/`). It
makes the work pools crm-process and crm-parent, deploys prefect.yaml (`prefect deploy --all` of this checkout),
starts `--workers` process workers in crm-process (each one flow run at a time) and one in crm-parent.

The data: bench/generate.py's long tail of shops (Zipf sizes, six time zones), `--shops` shops and about `--orders`
orders, with every follow-up sent automatically (no call capacity; every third shop's by e-mail), split into one
landing folder per partition (`landings/p<k>/`): a row of orders, customers or products goes to its shop's
partition (crm/storage/partitions.py), a row of order_items or reviews to its order's shop's, and the suppressions,
which match across all shops, to every partition. Then group-ingest (landing_root = landings/), then group-dispatch
at the fixed T = the data's anchor + 6 h, each waited for; a summary: partitions and their shops, the runs and
their states, the messages per channel and status, and whether each was sent once (the gateway's requests per key,
the mails per message id). Everything is torn down at the end, also on an error or Ctrl-C (SIGINT or SIGTERM),
and nothing it started is left running; the folder (default: a new one under the system's temporary folder) is
removed unless `--keep`. Exit 0 when every run completed and every message went once, else 1; 2 for bad options
or a missing PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
ENTITIES = ("products", "customers", "orders", "order_items", "reviews", "suppressions")


def say(text: str) -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------------------------------------------
# the gateway and the SMTP sink


class Gateway:
    """A webhook gateway on a free 127.0.0.1 port (uvicorn in a thread): answers every POST /send 200 and counts
    the requests per Idempotency-Key (`requests`), as a real gateway that deduplicates on it would see them."""

    def __init__(self):
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        from crm.loopback import Loopback

        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.delay = 0.0                                # seconds before each answer (the benchmark's slow gateway)

        async def send(request):
            from urllib.parse import unquote

            key = unquote(request.headers.get("idempotency-key") or "")
            await request.body()
            if self.delay:
                import asyncio

                await asyncio.sleep(self.delay)
            with self.lock:
                self.requests[key] += 1
            return JSONResponse({"id": key, "status": "accepted"})

        self._server = Loopback(Starlette(routes=[Route("/send", send, methods=["POST"])]))
        self.url = f"http://127.0.0.1:{self._server.port}/send"

    def stop(self) -> None:
        self._server.stop()


class SmtpSink:
    """aiosmtpd's SMTP server on a free 127.0.0.1 port, keeping nothing but a count of the mails per message id (the
    X-CRM-Message-Id header every e-mail of the dispatch carries)."""

    def __init__(self):
        try:
            from aiosmtpd.controller import Controller
        except ImportError:
            raise SystemExit("error: the group demo's SMTP server needs aiosmtpd (a dev dependency: ./run installs it)")
        from email.parser import BytesHeaderParser

        from crm.storage.localpg import free_port

        self.mails: Counter[str] = Counter()
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                headers = BytesHeaderParser().parsebytes(envelope.content)
                sink.mails[headers.get("X-CRM-Message-Id", "")] += 1
                return "250 OK"

        self.port = free_port()
        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()


# --------------------------------------------------------------------------------------------------------------
# the data


def generate(folder: Path, shops: int, orders: int):
    """bench/generate.py's data set in `folder/data` (its landing folder and shops.toml)."""
    sys.path.insert(0, str(REPO))
    from bench.generate import generate as make

    return make(folder / "data", orders=orders, shops=shops)


def split_landing(landing: Path, root: Path, partitions: int) -> dict[int, Counter]:
    """One landing folder per partition, `root/p<k>/<entity>/<the file's name>`, each file written again in its own
    format with the rows of that partition's shops: orders, customers and products by their shop_id, order_items and
    reviews by their order's shop, suppressions (matched across all shops) in every partition. Rows per partition."""
    import polars as pl

    from crm.storage.partitions import bucket

    def read(path: Path) -> pl.DataFrame:
        # CSV as text, exactly as written (the ingest types it); Parquet with its own types
        return pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path, infer_schema=False)

    def write(df: pl.DataFrame, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        df.write_parquet(path, compression="zstd") if path.suffix == ".parquet" else df.write_csv(path)

    files = {e: sorted(p for p in (landing / e).glob("*") if p.is_file()) for e in ENTITIES}
    shop_ids = set()
    for e in ("orders", "customers", "products"):
        for path in files[e]:
            shop_ids |= set(read(path)["shop_id"].drop_nulls().unique().to_list())
    of_shop = {s: bucket(s, partitions) for s in shop_ids}
    order_shop = pl.concat([read(p).select("order_id", "shop_id").with_columns(pl.col("order_id").cast(pl.String))
                            for p in files["orders"]]).unique("order_id")
    order_part = order_shop.with_columns(
        pl.col("shop_id").replace_strict(of_shop, default=None, return_dtype=pl.Int64).alias("_p")).select("order_id", "_p")
    rows: dict[int, Counter] = {k: Counter() for k in range(partitions)}
    for entity, paths in files.items():
        for path in paths:
            df = read(path)
            if entity == "suppressions":
                parts = {k: df for k in range(partitions)}
            else:
                if entity in ("order_items", "reviews"):
                    df = df.with_columns(pl.col("order_id").cast(pl.String).alias("_o")).join(
                        order_part.rename({"order_id": "_o"}), on="_o", how="left", maintain_order="left").drop("_o")
                else:
                    df = df.with_columns(pl.col("shop_id").replace_strict(of_shop, default=None,
                                                                          return_dtype=pl.Int64).alias("_p"))
                # a row whose shop or order is unknown goes to partition 0, whose ingest quarantines it
                df = df.with_columns(pl.col("_p").fill_null(0))
                parts = {k: df.filter(pl.col("_p") == k).drop("_p") for k in range(partitions)}
            for k, part in parts.items():
                write(part, root / f"p{k}" / entity / path.name)
                rows[k][entity] += part.height
    return rows


def group_config(generated: Path, out: Path, *, gateway_url: str, smtp_port: int, storage: dict,
                 email_every: int = 3) -> Path:
    """The generated shops.toml with every follow-up sent automatically (no call capacity; every `email_every`-th
    shop's by e-mail), the gateway and SMTP server, and the [storage] table `storage` (with its [storage.s3])."""
    head, *shops = generated.read_text(encoding="utf-8").split("[[shops]]")
    text = head + "".join(f"[[shops]]{s.rstrip()}\n[shops.visits]\nmanual_capacity = 0\n"
                          + ('auto_channel = "email"\n' if i % email_every == 1 else "") + "\n"
                          for i, s in enumerate(shops))
    text += (f'[gateway]\nwebhook_url = "{gateway_url}"\ntimeout_seconds = 5\nmax_attempts = 4\n'
             f'backoff_seconds = 0.05\n\n[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\n\n[storage]\n')
    s3 = storage.pop("s3", None)
    text += "".join(f"{k} = {json.dumps(v)}\n" for k, v in storage.items())
    if s3:
        text += "\n[storage.s3]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in s3.items())
    out.write_text(text, encoding="utf-8")
    return out


def lake_storage(cluster, folder: Path, partitions: int, s3=None) -> dict:
    """[storage] for a lake whose catalog and ops database are new databases of `cluster`, its data in `folder/lake`
    or, with `s3` (a localpg.S3), in a new bucket there."""
    storage = {"kind": "ducklake", "catalog": "postgres:" + cluster.keywords(cluster.database("lake")),
               "data_path": str(folder / "lake") + "/", "ops_dsn": cluster.uri(cluster.database("ops")),
               "partitions": partitions}
    if s3 is not None:
        storage["data_path"] = f"s3://{s3.bucket('lake')}/lake/"
        storage["s3"] = {"endpoint": s3.endpoint, "key_id": "demo", "secret": "demo-secret", "url_style": "path",
                         "use_ssl": False}
    return storage


# --------------------------------------------------------------------------------------------------------------
# processes


def _end(proc: subprocess.Popen) -> None:
    """End a process started in a session of its own and every process under it: SIGTERM, SIGKILL after 10 s."""
    import psutil

    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:
        family = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        for member in family:
            try:
                member.send_signal(sig)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(family, timeout=10)
        if not alive:
            break
        family = alive
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


@contextmanager
def started(args: list[str], env: dict, log: Path, cwd: Path):
    """A process in a session of its own (Ctrl-C reaches the demo, which ends it), ended on exit."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        _end(proc)


def prefect_bin() -> str:
    return str(Path(sys.executable).with_name("prefect"))


def deploy(env: dict, folder: Path) -> None:
    """The two work pools and `prefect deploy --all` of this checkout."""
    for pool in ("crm-process", "crm-parent"):
        _checked([prefect_bin(), "work-pool", "create", pool, "--type", "process", "--overwrite"], env, folder)
    _checked([prefect_bin(), "--no-prompt", "deploy", "--all"], env, folder, timeout=600)


def _checked(args: list[str], env: dict, folder: Path, timeout: float = 120) -> None:
    done = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    with open(folder / "prefect-cli.log", "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(args[1:])}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(Path(a).name for a in args[:3])} failed: "
                           f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}; see {folder / 'prefect-cli.log'}")


def call(client, method: str, url: str, **kwargs):
    """A request to the Prefect API, tried again while the server answers 503 or not in time (its SQLite file busy
    under load), as Prefect's own client does; any other error raises. (Every request here may be sent twice: the
    reads, and the run's creation, which carries an idempotency key.)"""
    import httpx

    for attempt in range(6):
        try:
            answer = client.request(method, url, **kwargs)
        except httpx.TimeoutException:
            if attempt == 5:
                raise
            time.sleep(1 + attempt)
            continue
        if answer.status_code != 503:
            break
        time.sleep(1 + attempt)
    return answer.raise_for_status()


def run_deployment(client, name: str, parameters: dict, timeout: float) -> tuple[str, str]:
    """Start deployment `name` (e.g. group-ingest) with `parameters` and wait for it: (run id, final state type)."""
    found = {d["name"]: d for d in call(client, "POST", "/deployments/filter", json={}).json()}
    run = call(client, "POST", f"/deployments/{found[name]['id']}/create_flow_run",
               json={"parameters": parameters, "name": name, "idempotency_key": f"{name}-{uuid.uuid4()}"})
    run_id = run.json()["id"]
    deadline = time.monotonic() + timeout
    while True:
        state = call(client, "GET", f"/flow_runs/{run_id}").json()["state"]["type"]
        if state in FINAL or time.monotonic() > deadline:
            return run_id, state
        time.sleep(1)


# --------------------------------------------------------------------------------------------------------------
# the demo


def summary_of(client, pg_dsn: str, gateway: Gateway, smtp: SmtpSink, parts: dict[int, list[str]]) -> dict:
    """What ran and what went out: the runs by name and state, the outbox by channel and status, the requests per key."""
    import psycopg

    runs = call(client, "POST", "/flow_runs/filter", json={"limit": 200, "sort": "START_TIME_ASC"}).json()
    with psycopg.connect(pg_dsn) as con:
        outbox = con.execute("SELECT channel, status, count(*) FROM messages GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
        sent = {r[0]: r[1] for r in con.execute(
            "SELECT channel, array_agg(message_id) FROM messages WHERE status = 'sent' GROUP BY 1").fetchall()}
    webhook_sent = {m for ch, ids in sent.items() if ch != "email" for m in ids}
    email_sent = set(sent.get("email", []))
    return {
        "partitions": {k: len(v) for k, v in parts.items()},
        "runs": [{"name": r["name"], "state": r["state"]["type"] if r.get("state") else "UNKNOWN",
                  "seconds": round(r.get("total_run_time") or 0, 1)} for r in runs],
        "messages": [{"channel": c, "status": s, "count": n} for c, s, n in outbox],
        "gateway": {"requests": sum(gateway.requests.values()), "keys": len(gateway.requests),
                    "keys_requested_more_than_once": sum(1 for n in gateway.requests.values() if n > 1),
                    "sent_not_requested": len(webhook_sent - set(gateway.requests)),
                    "requested_not_sent": len(set(gateway.requests) - webhook_sent)},
        "smtp": {"mails": sum(smtp.mails.values()), "message_ids": len(smtp.mails),
                 "ids_mailed_more_than_once": sum(1 for n in smtp.mails.values() if n > 1),
                 "sent_not_mailed": len(email_sent - set(smtp.mails)),
                 "mailed_not_sent": len(set(smtp.mails) - email_sent)},
    }


def exactly_once(s: dict) -> bool:
    g, m = s["gateway"], s["smtp"]
    return (g["keys_requested_more_than_once"] == g["sent_not_requested"] == g["requested_not_sent"] == 0
            and m["ids_mailed_more_than_once"] == m["sent_not_mailed"] == m["mailed_not_sent"] == 0)


def print_summary(s: dict) -> None:
    say("summary:")
    say("  partitions: " + ", ".join(f"p{k} {n} shops" for k, n in s["partitions"].items()))
    states = Counter(r["state"] for r in s["runs"])
    say(f"  runs: {len(s['runs'])} ({', '.join(f'{n} {st.lower()}' for st, n in sorted(states.items()))})")
    for r in s["runs"]:
        say(f"    {r['name']:<28} {r['state'].lower():<10} {r['seconds']:>6.1f} s")
    say("  messages (channel, status, count):")
    for m in s["messages"]:
        say(f"    {m['channel']:<8} {m['status']:<8} {m['count']}")
    g, m = s["gateway"], s["smtp"]
    say(f"  gateway: {g['requests']} requests for {g['keys']} keys, {g['keys_requested_more_than_once']} keys more "
        f"than once; sent but never requested {g['sent_not_requested']}, requested but not sent {g['requested_not_sent']}")
    say(f"  smtp: {m['mails']} mails for {m['message_ids']} message ids, {m['ids_mailed_more_than_once']} more than "
        f"once; sent but never mailed {m['sent_not_mailed']}, mailed but not sent {m['mailed_not_sent']}")
    say(f"  each message sent once: {'yes' if exactly_once(s) else 'NO'}")


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    import httpx

    from crm import orchestration
    from crm.config import load_settings
    from crm.storage import partitions as partitioning
    from crm.storage.localpg import S3, Postgres, pg_bin

    bindir = pg_bin()
    if bindir is None:
        say("error: no PostgreSQL server programs under /usr/lib/postgresql/*/bin (apt-get install postgresql; "
            "./run group-demo installs it as root)")
        return 2
    folder = Path(args.folder).resolve() if args.folder else Path(tempfile.mkdtemp(prefix="crm-group-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        say(f"error: {folder}: not empty (the demo makes its own files there)")
        return 2
    db = folder / "crm.duckdb"                       # not a lake table: where the local Prefect server's state is kept
    for key, value in orchestration.DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ["PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED"] = "false"   # only the demo's own runs
    os.environ.pop("PREFECT_API_URL", None)
    T = None
    ok = False
    began = time.monotonic()
    with ExitStack() as stack:
        try:
            say(f"folder: {folder}")
            cluster = Postgres(bindir, prefix="crm-group-demo-pg-")
            stack.callback(cluster.stop)
            cluster.start()
            say(f"postgresql: 127.0.0.1:{cluster.port} ({cluster.root})")
            s3 = None
            if args.s3:
                s3 = S3(folder)
                stack.callback(s3.stop)
                say(f"s3 (moto): {s3.endpoint}")
            gateway = Gateway()
            stack.callback(gateway.stop)
            smtp = SmtpSink()
            stack.callback(smtp.stop)
            say(f"gateway: {gateway.url}; smtp: 127.0.0.1:{smtp.port}")

            made = generate(folder, args.shops, args.orders)
            T = made.anchor + timedelta(hours=6)
            rows = split_landing(made.landing_dir, folder / "landings", args.partitions)
            storage = lake_storage(cluster, folder, args.partitions, s3)
            config = group_config(made.config_path, folder / "shops.toml", gateway_url=gateway.url,
                                  smtp_port=smtp.port, storage=storage)
            settings = load_settings(config)
            parts = {k: [s.shop_id for s in settings.shops if partitioning.bucket(s.shop_id, args.partitions) == k]
                     for k in range(args.partitions)}
            say(f"data: {made.shops} shops, {made.rows['orders']} order rows, T = {T.isoformat()}; landings/p0…"
                f"p{args.partitions - 1}: " + ", ".join(f"p{k} {len(parts[k])} shops {rows[k]['orders']} order rows"
                                                        for k in parts))

            stack.callback(orchestration.stop_server, db)
            server = orchestration.start_server(db)
            api = server["api_url"]
            say(f"prefect server: {api} (pid {server['pid']})")
            env = {**os.environ, "PREFECT_API_URL": api, "CRM_HOME": str(REPO), "CRM_DB": str(db),
                   "CRM_CONFIG": str(config), "PREFECT_WORKER_QUERY_SECONDS": "1",
                   "PREFECT_HOME": str(folder / "prefect-cli")}
            deploy(env, folder)
            say("deployed: prefect.yaml (prefect deploy --all), pools crm-process and crm-parent")
            pids = []
            for i in range(args.workers):
                w = stack.enter_context(started([prefect_bin(), "worker", "start", "--pool", "crm-process", "--limit",
                                                 "1", "--name", f"demo-process-{i + 1}"], env,
                                                folder / f"worker-process-{i + 1}.log", folder))
                pids.append(w.pid)
            w = stack.enter_context(started([prefect_bin(), "worker", "start", "--pool", "crm-parent", "--name",
                                             "demo-parent"], env, folder / "worker-parent.log", folder))
            pids.append(w.pid)
            say(f"workers: {args.workers} in crm-process (one run at a time each), 1 in crm-parent "
                f"(pids {' '.join(map(str, pids))})")

            with httpx.Client(base_url=api, timeout=60) as client:
                states = {}
                for name, parameters in (("group-ingest", {"landing_root": str(folder / "landings")}),
                                         ("group-dispatch", {"as_of": T.isoformat()})):
                    step = time.monotonic()
                    _, states[name] = run_deployment(client, name, parameters, args.timeout)
                    say(f"{name}: {states[name].lower()} in {time.monotonic() - step:.0f} s")
                    if states[name] != "COMPLETED":
                        break
                summary = summary_of(client, storage["ops_dsn"], gateway, smtp, parts)
            summary |= {"T": T.isoformat(), "shops": made.shops, "workers": args.workers, "group_runs": states,
                        "seconds": round(time.monotonic() - began, 1)}
            (folder / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
            print_summary(summary)
            ok = all(s == "COMPLETED" for s in states.values()) and len(states) == 2 and exactly_once(summary)
        except KeyboardInterrupt:
            say("interrupted: tearing down")
        except Exception as e:                                         # one line, then the teardown
            say(f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        finally:
            say("tearing down: workers, prefect server, smtp, gateway" + (", s3" if args.s3 else "") + ", postgresql")
    if not args.keep:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    else:
        say(f"kept: {folder}")
    say(f"done in {time.monotonic() - began:.0f} s")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./run group-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shops", type=int, default=16, help="shops in the group (default 16)")
    parser.add_argument("--orders", type=int, default=4000, help="orders, about (default 4000)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of shops, each a lake (default 4)")
    parser.add_argument("--workers", type=int, default=2, help="process workers in crm-process (default 2)")
    parser.add_argument("--s3", action="store_true", help="the lake's files on moto's S3 server, not in a folder")
    parser.add_argument("--folder", help="where the demo's files go (must be empty or new; default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the folder (data, config, logs, the lake's files)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds each group run may take (default 900)")
    args = parser.parse_args(argv)
    for name in ("shops", "orders", "partitions", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: at least 1")
    signal.signal(signal.SIGTERM, _interrupt)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
