"""A dispatch holds the DuckDB file only while it writes: while it is sending to a slow gateway, another
process (the agents' page) opens the database for writing and for reading within a couple of seconds.
A real `crm dispatch` on a real Prefect server, a real gateway, real processes and a real DuckDB file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import duckdb

from conftest import BIN
from dispatching import T, sms_crowd
from gateway import Gateway

N = 60          # 4 at a time, 0.2 s each: about 3 s of sending (and the gateway held while the other process works)

# another process, as the agents' page will: short connections that wait on the lock (crm.db.connect),
# a row written and the writing connection held a moment (so a flush of the dispatch meets the lock), then a read
PROBE = """
import json, sys, time
from crm.db import connect
db = sys.argv[1]
t0 = time.monotonic()
con = connect(db, wait_seconds=5)
opened_for_writing = time.monotonic() - t0
con.execute("CREATE TABLE IF NOT EXISTS main.page_probe (written_at TIMESTAMPTZ)")
con.execute("INSERT INTO main.page_probe VALUES (now())")
time.sleep(1.0)
con.close()
t1 = time.monotonic()
con = connect(db, read_only=True, wait_seconds=5)
opened_for_reading = time.monotonic() - t1
queued = con.execute("SELECT count(*) FROM ops.messages WHERE status = 'queued'").fetchone()[0]
con.close()
print(json.dumps({"write": opened_for_writing, "read": opened_for_reading, "queued": queued}))
"""


def test_the_database_stays_open_to_others_while_a_dispatch_sends(local_server, tmp_path):
    gw = Gateway(delay=0.2).start()
    try:
        db = local_server.parent / "lock.duckdb"
        config = tmp_path / "shops.toml"
        sms_crowd(db, config, gw.url, N)
        config.write_text(config.read_text().replace("timeout_seconds = 2", "timeout_seconds = 120"))

        args = [str(BIN), "--db", str(db), "--config", str(config), "dispatch", "--as-of", T.isoformat()]
        env = {**os.environ, "PREFECT_API_URL": "", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "200"}
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while len(gw.accepted) < 4 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.02)
            assert proc.poll() is None and len(gw.accepted) < N, "the dispatch was not sending: " + proc.stderr.read()[-2000:]

            gw.hold()            # the dispatch is mid-send for as long as the other process takes, however slow
            probe = subprocess.run([sys.executable, "-c", PROBE, str(db)], capture_output=True, text=True, timeout=60)
            still_sending = proc.poll() is None and len(gw.accepted) < N
            gw.release()
            assert probe.returncode == 0, "the database stayed locked while the dispatch was sending: " + probe.stderr[-1500:]
            opened = json.loads(probe.stdout)
            assert opened["write"] < 2 and opened["read"] < 2, opened
            assert still_sending, "the other process got in while the dispatch was still sending"
            assert 0 < opened["queued"] <= N, "it saw the outbox written, its messages not all recorded yet"

            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
        assert proc.returncode == 0, err[-3000:]
        assert f"sent {N}, failed 0" in out

        con = duckdb.connect(str(db), read_only=True)
        statuses = dict(con.execute("SELECT status, count(*) FROM ops.messages GROUP BY 1").fetchall())
        ids = {r[0] for r in con.execute("SELECT message_id FROM ops.messages").fetchall()}
        attempts = con.execute("SELECT min(attempts), max(attempts) FROM ops.messages").fetchone()
        probes = con.execute("SELECT count(*) FROM main.page_probe").fetchone()[0]
        con.close()
        assert statuses == {"sent": N}, "every message sent and recorded, none lost while the page held the lock"
        assert attempts == (1, 1)
        assert set(gw.accepted) == ids and len(ids) == N and gw.repeats == 0, "each message sent once"
        assert probes == 1, "the other process's row is kept"
    finally:
        gw.stop()


HOLDER = """
import sys, time, duckdb
deadline = time.monotonic() + 30
while True:                        # the sender's own record of a batch may hold the file a moment
    try:
        con = duckdb.connect(sys.argv[1])
        break
    except duckdb.IOException:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.02)
print("holding", flush=True)
sys.stdin.readline()               # until the test says
con.close()
"""


def test_sending_goes_on_while_another_process_holds_the_file_and_no_outcome_is_lost(tmp_path):
    """Recording a batch meets another process's lock: it waits beside the sending, which goes on, and
    records every outcome once the file is free."""
    import threading
    from datetime import datetime, timezone

    import polars as pl

    from crm.config import parse_settings
    from crm.db import connect, sync_shops
    from transforms.dispatch import send_queued, write_outbox

    n = 240                                # 4 at a time, 0.05 s each: about 3 s of sending
    gw = Gateway(delay=0.05).start()
    try:
        db = tmp_path / "held.duckdb"
        now = datetime(2026, 11, 24, 2, 30, tzinfo=timezone.utc)
        con = connect(db)
        write_outbox(con, pl.DataFrame({
            "message_id": [f"payment_reminder:o{i:04d}" for i in range(n)], "purpose": ["payment_reminder"] * n,
            "shop_id": ["s1"] * n, "order_id": [f"o{i:04d}" for i in range(n)], "customer_id": [f"c{i}" for i in range(n)],
            "channel": ["sms"] * n, "recipient": [f"139{i:08d}" for i in range(n)], "body": ["您好"] * n,
            "template": ["payment_reminder/new"] * n, "created_at": [now] * n, "segments": [1] * n,
        }), now)
        settings = parse_settings({"shops": [{"shop_id": "s1"}], "gateway": {
            "webhook_url": gw.url, "concurrency": 4, "backoff_seconds": 0.01, "timeout_seconds": 120}})
        sync_shops(con, settings)             # as every dispatch does before it sends
        con.close()

        result = {}
        sender = threading.Thread(target=lambda: result.update(r=send_queued(db, settings, now)))
        sender.start()
        deadline = time.monotonic() + 30
        while len(gw.accepted) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        # the gateway waits while the other process starts (however slow), so the sending is not over before it
        # holds the file; then sending goes on for 41 more messages, and the gateway waits again while it lets go
        gw.hold()
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "holding"
        held_from, accepted_at_hold = time.monotonic(), len(gw.accepted)
        gw.release()
        while len(gw.accepted) <= accepted_at_hold + 40 and time.monotonic() < deadline + 30:
            time.sleep(0.01)
        gw.hold()
        holder.communicate("\n", timeout=30)
        held_until, accepted_by_then = time.monotonic(), len(gw.accepted)
        gw.release()
        sender.join(timeout=60)
        assert not sender.is_alive()

        during = [t for t, _, status in gw.requests if held_from <= t <= held_until and status == 200]
        assert len(during) > 40, "sending went on while the file was held"
        assert accepted_by_then < n, "… and was not over before the file was free again"
        r = result["r"]
        assert (r.sent, r.failed, r.kept, r.skipped, r.failures) == (n, 0, 0, 0, [])
        con = duckdb.connect(str(db), read_only=True)
        assert con.execute("SELECT status, min(attempts), max(attempts), count(*) FROM ops.messages "
                           "GROUP BY 1").fetchall() == [("sent", 1, 1, n)]
        con.close()
        assert len(gw.accepted) == n and gw.repeats == 0
        assert r.writes < n / 10, "outcomes recorded in batches"
    finally:
        gw.stop()
