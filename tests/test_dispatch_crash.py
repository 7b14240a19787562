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




def _recorded_sent(db) -> set[str] | None:
    """The messages the database records as sent now (None while the dispatch has the file for a write)."""
    try:
        con = duckdb.connect(str(db), read_only=True)
    except duckdb.IOException:
        return None
    try:
        return {m for (m,) in con.execute("SELECT message_id FROM ops.messages WHERE status = 'sent'").fetchall()}
    finally:
        con.close()


def test_sigkill_mid_send_then_rerun_delivers_everything_once(local_server, tmp_path):
    gw = Gateway(delay=0.25).start()          # 4 at a time, ~16 a second: the first record (2 s in) comes mid-run
    try:
        db = local_server.parent / "crash.duckdb"
        config = tmp_path / "shops.toml"
        sms_crowd(db, config, gw.url, N)
        config.write_text(config.read_text().replace("timeout_seconds = 2", "timeout_seconds = 120"))

        args = [str(BIN), "--db", str(db), "--config", str(config), "dispatch", "--as-of", T.isoformat()]
        env = {**os.environ, "PREFECT_API_URL": "", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        # killed once some outcomes are recorded and others are not: the gateway stops answering, so the run is
        # mid-send when it dies, however slowly this test looked
        deadline = time.monotonic() + 120
        while not _recorded_sent(db) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        gw.hold()
        assert proc.poll() is None, "the dispatch finished before it could be killed: " + proc.stderr.read().decode()[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        gw.release()
        while gw.in_progress and time.monotonic() < deadline:        # what was on the wire is answered
            time.sleep(0.02)
        recorded, delivered_before_rerun = _recorded_sent(db), set(gw.accepted)
        assert recorded and recorded <= delivered_before_rerun and len(delivered_before_rerun) < N, (
            len(recorded or ()), len(delivered_before_rerun))

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
        # sent again: exactly those the gateway took before the kill whose outcome was not recorded yet (in
        # flight, or awaiting the next record), once each; none recorded as sent
        again = {key for key, n in accepted_per_key.items() if n > 1}
        assert not again & recorded, "a message recorded as sent was not sent again"
        assert again == delivered_before_rerun - recorded and gw.repeats == len(again)

        third = crm("--db", str(db), "--config", str(config), "dispatch", "--as-of", T.isoformat(),
                    env={"PREFECT_API_URL": ""})
        assert third.returncode == 0 and "sent 0" in third.stdout
        assert "1390000" not in rerun.stdout + rerun.stderr + third.stdout + third.stderr, "no phone in the output"
    finally:
        gw.stop()
