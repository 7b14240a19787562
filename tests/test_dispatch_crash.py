"""`crm dispatch` killed with SIGKILL in the middle of sending, then run again: every message is
delivered and none is accepted twice. A real Prefect server, a real gateway, a real DuckDB file."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import duckdb

from conftest import BIN, crm
from dispatching import T, sms_crowd
from gateway import Gateway

N = 150




def test_sigkill_mid_send_then_rerun_delivers_everything_once(local_server, tmp_path):
    gw = Gateway(delay=0.1).start()           # slow enough to kill the run half-way
    try:
        db = local_server.parent / "crash.duckdb"
        config = tmp_path / "shops.toml"
        sms_crowd(db, config, gw.url, N)

        args = [str(BIN), "--db", str(db), "--config", str(config), "dispatch", "--as-of", T.isoformat()]
        env = {**os.environ, "PREFECT_API_URL": "", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 120
        while len(gw.accepted) < 30 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the dispatch finished before it could be killed: " + proc.stderr.read().decode()[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        delivered_before_rerun = len(gw.accepted)
        assert 30 <= delivered_before_rerun < N

        rerun = crm("--db", str(db), "--config", str(config), "dispatch", "--as-of", T.isoformat(),
                    env={"PREFECT_API_URL": ""})
        assert rerun.returncode == 0, rerun.stderr[-3000:]

        con = duckdb.connect(str(db), read_only=True)
        statuses = dict(con.execute("SELECT status, count(*) FROM ops.messages GROUP BY 1").fetchall())
        ids = {r[0] for r in con.execute("SELECT message_id FROM ops.messages").fetchall()}
        con.close()
        assert statuses == {"sent": N}, "every message delivered and recorded"
        assert set(gw.accepted) == ids and len(ids) == N
        # re-sends after the crash carried the same Idempotency-Key, so the gateway accepted each message once
        accepted_per_key = {}
        for _, key, status in gw.requests:
            accepted_per_key[key] = accepted_per_key.get(key, 0) + (status == 200)
        assert gw.repeats == sum(n - 1 for n in accepted_per_key.values())
        # re-sent at most: the 4 in flight plus those finished since the last record flush (every 0.5 s at
        # 4 / 0.1 s = 40 msg/s), with one more flush window of slack
        assert gw.repeats <= 4 + 40 * 0.5 * 2, "only messages in flight or awaiting their record were sent again"

        third = crm("--db", str(db), "--config", str(config), "dispatch", "--as-of", T.isoformat(),
                    env={"PREFECT_API_URL": ""})
        assert third.returncode == 0 and "sent 0" in third.stdout
        assert "1390000" not in rerun.stdout + rerun.stderr + third.stdout + third.stderr, "no phone in the output"
    finally:
        gw.stop()
