"""`crm dispatch` on the lake layout (docs/rules.md §10): the plan in the lake, the outbox in PostgreSQL, sending by
claims (transforms/dispatch_pg.py). The same landing and T send the same messages, with the same bodies, as the
DuckDB file; two dispatch processes at once against one outbox send every message once. A real webhook gateway and
a real SMTP server on 127.0.0.1, the session's PostgreSQL cluster (tests/postgres.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import crm
from crm.config import load_settings
from crm.db import session
from crm.demo import generate
from dispatching import start_smtp
from gateway import Gateway
from postgres import postgres  # noqa: F401  (the session's fixture)
from test_lake_pipeline import _lake_shops, lake_of
from transforms.dispatch import dispatch_db, dispatch_lake
from transforms.ingest import load

T = datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)
AT = T + timedelta(hours=6)            # the demo's data, then: follow-ups by SMS (s1, s3) and e-mail (s2) due
SENT = ("SELECT message_id, purpose, shop_id, order_id, channel, recipient, body, template, status, segments "
        "FROM ops.messages ORDER BY message_id")


@pytest.fixture(autouse=True)
def _own_extension_directory(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CRM_DUCKDB_EXTENSIONS", str(tmp_path_factory.getbasetemp() / "duckdb-extensions"))


@pytest.fixture
def servers():
    gateway = Gateway().start()
    smtp, box = start_smtp()
    yield gateway, box, smtp.port
    gateway.stop()
    smtp.stop()


def demo(tmp_path: Path, gateway_url: str, smtp_port: int, orders: int = 1500) -> Path:
    generate(tmp_path, orders=orders, anchor=T)
    config = tmp_path / "shops.toml"
    text = config.read_text(encoding="utf-8").replace("http://127.0.0.1:8080/send", gateway_url)
    text = text.replace("port = 1025", f"port = {smtp_port}")
    # no calls: every follow-up goes by SMS or e-mail, so the dispatch has many automatic messages to send
    head, *shops = text.split("[[shops]]")
    # (the second shop's by e-mail)
    by_email = ['', 'auto_channel = "email"\n'] + [""] * (len(shops) - 2)
    text = head + "".join(f"[[shops]]{s.rstrip()}\n[shops.visits]\nmanual_capacity = 0\n{e}\n"
                          for s, e in zip(shops, by_email))
    config.write_text(text, encoding="utf-8")
    return config


def test_the_lake_sends_what_the_file_sends(postgres, tmp_path, servers):  # noqa: F811
    gateway, box, smtp_port = servers
    config = demo(tmp_path, gateway.url, smtp_port)
    settings = load_settings(config)
    lake = settings.model_copy(update={"storage": lake_of(postgres, tmp_path / "lake")})
    got = {}
    for name, s in (("file", settings), ("lake", lake)):
        with session(tmp_path / "crm.duckdb", s, lake=True) as con:
            load(con, tmp_path / "landing")
        before = (len(gateway.accepted), len(box.messages))
        if name == "file":
            r = dispatch_db(tmp_path / "crm.duckdb", s, AT)
        else:
            r = dispatch_lake(tmp_path / "crm.duckdb", s, AT, worker="w1")
        with session(tmp_path / "crm.duckdb", s, lake=True) as con:
            rows = con.execute(SENT).fetchall()
        got[name] = (rows, len(gateway.accepted) - before[0], len(box.messages) - before[1], r.sent, r.failed)
        gateway.accepted.clear()
    assert got["file"] == got["lake"]
    rows, webhook, mails, sent, _ = got["lake"]
    assert sent == webhook + mails and webhook > 10 and mails > 10, got["lake"][1:]
    assert {r[8] for r in rows} >= {"sent"}
    assert gateway.repeats == 0


def test_two_dispatch_processes_at_once_send_every_message_once(postgres, tmp_path, servers, local_server):  # noqa: F811
    """Two `crm dispatch` at the same T at the same moment, on one lake and one outbox: both plan (one writes the
    messages, the other finds them there), both send, and each message reaches the gateway or the SMTP server once."""
    gateway, box, smtp_port = servers
    gateway.delay = 0.002                                       # long enough for the two to overlap
    config = demo(tmp_path, gateway.url, smtp_port, orders=3000)
    storage = lake_of(postgres, tmp_path / "lake")
    lake_config = _lake_shops(tmp_path, storage)
    common = ["--db", str(local_server), "--config", str(lake_config)]
    ingested = crm(*common, "ingest", str(tmp_path / "landing"))
    assert ingested.returncode == 0, ingested.stderr[-3000:]
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "200"}
    runs = [subprocess.Popen([str(Path(sys.executable).parent / "crm"), *common, "dispatch", "--as-of", AT.isoformat()],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [run.communicate(timeout=600) for run in runs]
    for run, (out, err) in zip(runs, outs):
        assert run.returncode == 0, err[-3000:]
    keys = [key for _, key, status in gateway.requests if status == 200]
    assert len(keys) == len(set(keys)) > 10 and gateway.repeats == 0          # no message requested twice
    mails = [m.mail_from + str(m.rcpt_tos) + m.content.decode(errors="replace") for m in box.messages]
    assert len(mails) == len(set(mails)) > 10
    with session(tmp_path / "unused.duckdb", load_settings(lake_config), lake=True) as con:
        statuses = dict(con.execute("SELECT status, count(*) FROM ops.messages GROUP BY 1").fetchall())
        claimed = con.execute("SELECT count(*) FROM ops.messages WHERE claimed_by IS NOT NULL").fetchone()[0]
        sent_ids = {r[0] for r in con.execute("SELECT message_id FROM ops.messages WHERE status = 'sent' "
                                              "AND channel <> 'email'").fetchall()}
    assert sent_ids == set(keys) and statuses.get("sent", 0) == len(keys) + len(mails) and claimed == 0
    assert config.exists()
