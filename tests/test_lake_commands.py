"""Visits import, report, effect, extract and the agents' page on the lake layout (`[storage] kind = "ducklake"`,
docs/rules.md §10): the same rows on both storages give the same outcomes recorded, the same report (its numbers
and its HTML), the same effect tables, the same extraction and the same page, and each runs through the real `crm`
command on the lake. The rows: tests/workspace.py's file (staged rows, then a dispatch at T that queued the agents'
calls), and a lake holding a copy of every one of its tables (`mirror`). Each test takes its own databases in the
session's PostgreSQL cluster (tests/postgres.py)."""

from __future__ import annotations

import html
import json
import re
import time
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

import workspace
from conftest import crm
from crm import orchestration
from crm.config import Storage, load_settings
from crm.db import session
from crm.sources import Batch, extract
from crm.storage import connect_layout, layout
from dispatching import start_smtp
from postgres import postgres  # noqa: F401  (the session's fixture)
from test_extract import FakeSource
from test_extract_shopify import TOKEN, VAR, clock, iso, many, server, write_config  # noqa: F401  (fixtures)
from test_lake_pipeline import lake_of
from transforms.outcomes import import_file
from transforms.plan import plan
from transforms.report import effect_summary, gather, render

T = workspace.T
NOW = T + timedelta(hours=1)           # the import's clock and the report's T
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

# a call-centre export: two outcomes saved (a reached one with a gift, a not-reached attempt with a call-back),
# a second gift over the shop's ratio, an order without a visit, a line without `reached`
EXPORT = """order_id,reached,quality,logistics,packaging,service,suggestion,gift,compensation,recorded_at,callback_at,agent
o-high,true,good,issue,good,good,包装可以更好,true,coupon,2026-11-24T11:40:00+08:00,,小李
o-bad,false,,,,,,false,none,2026-11-24T11:45:00+08:00,2026-11-25T10:00:00+08:00,小李
o-mid,true,good,good,good,good,,true,none,2026-11-24T11:50:00+08:00,,小王
o-nope,true,good,good,good,good,,false,none,,,小王
o-praise,,good,good,good,good,,false,none,,,小王
"""


@pytest.fixture(autouse=True)
def _own_extension_directory(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CRM_DUCKDB_EXTENSIONS", str(tmp_path_factory.getbasetemp() / "duckdb-extensions"))


def with_storage(config: Path, storage: Storage, name: str = "lake.toml", *, text: str | None = None) -> Path:
    """The shops file `config` (or `text`) with a [storage] table for `storage`, beside it as `name`."""
    text = (config.read_text(encoding="utf-8") if text is None else text)
    text += ('\n[storage]\nkind = "ducklake"\n'
             f'catalog = {json.dumps(storage.catalog)}\ndata_path = {json.dumps(storage.data_path)}\n'
             f'ops_dsn = {json.dumps(storage.ops_dsn)}\n')
    path = config.with_name(name)
    path.write_text(text, encoding="utf-8")
    return path


def mirror(db: Path, storage: Storage) -> None:
    """Every table of the DuckDB file `db` copied where the lake layout keeps it: the operational ones into
    PostgreSQL, the rest into the lake (one transaction each: one database each)."""
    con = connect_layout(storage)
    try:
        con.execute(f"ATTACH '{db}' AS src (READ_ONLY)")
        tables = con.execute("SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = 'src' "
                             "AND schema_name IN ('staging', 'marts', 'ops') ORDER BY 1, 2").fetchall()
        existing = {tuple(r) for r in con.execute("SELECT schema_name, table_name FROM duckdb_tables() "
                                                  "WHERE database_name = 'lake'").fetchall()}
        for lake in (True, False):
            con.execute("BEGIN")
            for schema, name in tables:
                operational = schema == "ops" and name in layout.OPERATIONAL
                if operational == lake:
                    continue
                source = f"src.{schema}.{name}"
                if operational:
                    con.execute(f"INSERT INTO opsdb.{name} BY NAME SELECT * FROM {source}")
                elif (schema, name) in existing:
                    con.execute(f"DELETE FROM lake.{schema}.{name}")
                    con.execute(f"INSERT INTO lake.{schema}.{name} BY NAME SELECT * FROM {source}")
                else:
                    con.execute(f"CREATE TABLE lake.{schema}.{name} AS SELECT * FROM {source}")
            con.execute("COMMIT")
    finally:
        con.close()


@pytest.fixture
def both(postgres, tmp_path):  # noqa: F811
    """(file db, its shops file, the lake's shops file): the workspace's calls queued at T, on both storages."""
    db, config = workspace.make(tmp_path)
    with session(db, load_settings(config)) as con:
        # phones as ingest stages them (E.164, docs/rules.md §1): a reply's sender is matched by phone
        con.execute("UPDATE staging.customers SET phone = '+86' || phone WHERE phone NOT LIKE '+%'")
    storage = lake_of(postgres, tmp_path / "lake")
    mirror(db, storage)
    return db, config, with_storage(config, storage)


def rows_of(db: Path, config: Path, sql: str) -> list[tuple]:
    with session(db, load_settings(config), lake=True) as con:
        return con.execute(sql).fetchall()


OUTCOMES = ("SELECT order_id, reached, quality, logistics, packaging, service, suggestion, gift, compensation, "
            "recorded_at, shop_id, callback_at, agent, message_id FROM ops.visit_outcomes ORDER BY order_id, recorded_at")
CALLS = "SELECT message_id, status FROM ops.messages WHERE channel = 'call' ORDER BY message_id"


def test_a_visits_import_records_the_same_outcomes_on_both_storages(both, tmp_path):
    db, config, lake = both
    export = tmp_path / "export.csv"
    export.write_text(EXPORT, encoding="utf-8")
    got = {}
    for name, shops in (("file", config), ("lake", lake)):
        settings = load_settings(shops)
        with session(db, settings, lake=True) as con:
            result = import_file(con, settings, export, NOW)
        got[name] = (result.saved, result.errors, rows_of(db, shops, OUTCOMES), rows_of(db, shops, CALLS))
    assert got["file"] == got["lake"]
    saved, errors, outcomes, calls = got["lake"]
    assert saved == 2 and [line for line, _ in errors] == [4, 5, 6], errors
    assert [o[:2] for o in outcomes] == [("o-bad", False), ("o-high", True)]
    assert ("followup:o-high", "done") in calls and ("followup:o-bad", "queued") in calls
    assert rows_of(db, lake, "SELECT count(*) FROM opsdb.visit_outcomes") == [(2,)]


def test_crm_visits_import_runs_on_the_lake(both, tmp_path, local_server):
    db, config, lake = both
    export = tmp_path / "export.csv"
    export.write_text(EXPORT, encoding="utf-8")
    common = ("--db", str(local_server), "--config", str(lake))
    copy = Path(local_server).with_name("crm.analytics.duckdb")      # other tests' runs on the file may make it
    before = copy.stat().st_mtime_ns if copy.exists() else None
    first = crm(*common, "visits", "import", str(export), "--as-of", NOW.isoformat())
    assert first.returncode == 1, first.stderr[-3000:]                  # some lines refused: exit 1
    assert "2 outcomes saved, 3 refused" in first.stdout, first.stdout
    again = crm(*common, "visits", "import", str(export), "--as-of", NOW.isoformat())
    assert "0 outcomes saved, 5 refused" in again.stdout, again.stdout   # a re-imported file adds nothing
    assert rows_of(db, lake, "SELECT order_id, reached FROM opsdb.visit_outcomes ORDER BY 1") == \
        [("o-bad", False), ("o-high", True)]
    assert ("followup:o-high", "done") in rows_of(db, lake, CALLS)
    assert (copy.stat().st_mtime_ns if copy.exists() else None) == before, "no analysts' copy made on the lake"


def _imported(db: Path, shops: Path, tmp_path: Path) -> None:
    export = tmp_path / "export.csv"
    export.write_text(EXPORT, encoding="utf-8")
    settings = load_settings(shops)
    with session(db, settings, lake=True) as con:
        import_file(con, settings, export, NOW)


def test_the_report_and_the_effect_are_the_same_on_both_storages(both, tmp_path):
    db, config, lake = both
    got = {}
    for name, shops in (("file", config), ("lake", lake)):
        _imported(db, shops, tmp_path)
        settings = load_settings(shops)
        report = gather(db, settings, "s1", "day", "2026-11-24", NOW)
        numbers = {k: v for k, v in asdict(report).items() if k != "seconds"}
        got[name] = (numbers, render(report, svg="<svg/>"), effect_summary(db, settings))
    assert got["file"][0] == got["lake"][0]
    assert got["file"][1] == got["lake"][1]
    assert got["file"][2] == got["lake"][2]
    numbers = got["lake"][0]
    assert (numbers["calls_planned"], numbers["calls_attempted"], numbers["reached"], numbers["gifts"]) == (4, 2, 1, 1)
    assert numbers["issues"]["logistics"] == 1 and numbers["suggestions"][0]["text"] == "包装可以更好"
    assert got["lake"][2]["as_of"] is not None and got["lake"][2]["shops"] == ["s1"]


def _mail_config(config: Path, smtp_port: int) -> Path:
    text = config.read_text(encoding="utf-8").replace('name = "萌宠小铺"\n', 'name = "萌宠小铺"\nteam_email = "team@petshop.example"\n')
    path = config.with_name("mail.toml")
    path.write_text(text + f'\n[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\n', encoding="utf-8")
    return path


def test_crm_report_send_and_effect_run_on_the_lake(both, tmp_path, local_server):
    """`crm report --send` on each storage writes the same HTML and sends it once (its message in ops.messages, on
    the lake in PostgreSQL); `crm effect` prints the same tables."""
    db, config, lake = both
    controller, box = start_smtp()
    try:
        mail = _mail_config(config, controller.port)
        storage = load_settings(lake).storage
        lake_mail = with_storage(mail, storage, "lake-mail.toml")
        out = {}
        for name, shops, where in (("file", mail, db), ("lake", lake_mail, local_server)):
            _imported(db, shops, tmp_path)
            common = ("--db", str(where), "--config", str(shops))
            page = tmp_path / f"{name}.html"
            args = ("report", "--shop", "s1", "--period", "day", "--date", "2026-11-24",
                    "--as-of", NOW.isoformat(), "--out", str(page), "--send")
            sent = crm(*common, *args)
            assert sent.returncode == 0, sent.stderr[-3000:]
            assert "sent to t***@petshop.example" in sent.stdout or "sent to " in sent.stdout, sent.stdout
            again = crm(*common, *args)
            assert again.returncode == 0 and "already sent" in again.stdout, again.stdout + again.stderr[-2000:]
            effect = crm(*common, "effect", env={"COLUMNS": "200"})
            assert effect.returncode == 0, effect.stderr[-3000:]
            out[name] = (page.read_text(encoding="utf-8"), effect.stdout,
                         rows_of(db, shops, "SELECT message_id, status, attempts FROM ops.messages "
                                            "WHERE purpose = 'feedback_summary'"))
    finally:
        controller.stop()
    assert out["file"] == out["lake"]
    assert out["lake"][2] == [("feedback_summary:s1:day:2026-11-24", "sent", 1)]
    assert len(box.messages) == 2                              # once from each storage, not again
    assert "s1: reminder planned against held out" in out["lake"][1]
    assert rows_of(db, lake, "SELECT count(*) FROM opsdb.messages WHERE purpose = 'feedback_summary'") == [(1,)]


def test_an_extract_records_the_same_watermark_and_rejects_on_both_storages(both, tmp_path, monkeypatch):
    db, config, lake = both
    text = config.read_text(encoding="utf-8").replace(
        '[shops.reminders]', '[shops.source]\nkind = "taobao"\napp_key = "23456789"\napp_secret_env = "S"\n'
        'session_env = "K"\n\n[shops.reminders]')
    plain = config.with_name("source.toml")
    plain.write_text(text, encoding="utf-8")
    on_lake = with_storage(plain, load_settings(lake).storage, "source-lake.toml")
    reject = {"entity": "orders", "ref": "id 42", "reason": "no created time", "raw": '{"id": 42}'}
    customer = {"customer_id": "c2", "shop_id": "s1", "name": None, "phone": None, "city": None,
                "updated_at": "2026-11-24T10:00:00+08:00"}
    got = {}
    for name, shops in (("file", plain), ("lake", on_lake)):
        for hours in (1, 2):                     # the second run moves the watermark on, the reject is kept once
            batch = Batch({"customers": [dict(customer)]}, [reject], T - timedelta(hours=2 - hours), 1)
            monkeypatch.setattr("crm.sources.open_source", lambda shop, cfg, env, sleep=None, b=batch: FakeSource([b]))
            summary = extract(db, load_settings(shops), "s1", tmp_path / f"landing-{name}", as_of=T, env={})
        files = sorted(p.read_text(encoding="utf-8") for p in (tmp_path / f"landing-{name}").rglob("*.*"))
        got[name] = (summary["watermark"], summary["started_from"], files,
                     rows_of(db, shops, "SELECT shop_id, source, watermark FROM ops.source_watermarks"),
                     rows_of(db, shops, "SELECT entity, source_file, \"row\", reason FROM ops.quarantine "
                                        "WHERE row_number IS NULL"))
    assert got["file"] == got["lake"]
    assert got["lake"][3] == [("s1", "taobao", T)] and len(got["lake"][4]) == 1
    assert "杭州" in "".join(got["lake"][2])            # the city the platform did not say, kept from staging


@pytest.fixture
def cli_env(local_server, server):  # noqa: F811
    api = orchestration.running_server(local_server)["api_url"]
    server.use_real_time()
    return {"PREFECT_API_URL": api, VAR: TOKEN, "DO_NOT_TRACK": "1"}


def test_crm_extract_runs_on_the_lake(postgres, tmp_path, server, clock, cli_env, local_server):  # noqa: F811
    """`crm extract` against a loopback Shopify, once into a DuckDB file and once into the lake: the same orders
    staged and the same watermark (on the lake in PostgreSQL); a second run starts from it."""
    config = write_config(tmp_path, server)
    lake = with_storage(config, lake_of(postgres, tmp_path / "lake"))
    expected = many(server, 15)
    t1 = iso(clock.now)
    got = {}
    for name, shops, db in (("file", config, tmp_path / "crm.duckdb"), ("lake", lake, local_server)):
        args = ("--db", str(db), "--config", str(shops), "extract", "--shop", "s1", "--as-of", t1,
                "--landing", str(tmp_path / f"landing-{name}"))
        first = crm(*args, env=cli_env)
        assert first.returncode == 0, first.stderr[-3000:]
        again = crm(*args, env=cli_env)
        assert again.returncode == 0 and "from the watermark" in again.stdout, again.stdout + again.stderr[-2000:]
        got[name] = (rows_of(db, shops, "SELECT order_id, count(*) FROM staging.orders GROUP BY 1 ORDER BY 1"),
                     rows_of(db, shops, "SELECT shop_id, source, watermark FROM ops.source_watermarks"))
    assert got["file"] == got["lake"]
    assert got["lake"][0] == [(i, 1) for i in expected]
    assert rows_of(tmp_path / "x.duckdb", lake, "SELECT count(*) FROM opsdb.source_watermarks") == [(1,)]


# --------------------------------------------------------------------------------------------------
# the agents' page and the gateways' hooks


def _page_text(text: str) -> str:
    """A page without what differs between two servers of the same rows: the CSRF token of its forms."""
    return re.sub(r'(name="csrf[-_]token" (?:value|content)=)"[^"]*"', r"\1", text)


def _signed(body: dict, msg_id: str) -> tuple[bytes, dict]:
    """A webhook request signed as the gateway signs it (Standard Webhooks), now (the signature must be fresh)."""
    data, at = json.dumps(body), datetime.now(timezone.utc)
    return data.encode(), {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
                           "webhook-signature": Webhook(SECRET).sign(msg_id, at, data), "content-type": "application/json"}


def _settle(db: Path, shops: Path, sql: str, want, seconds: float = 15):
    deadline = time.monotonic() + seconds
    while True:
        got = rows_of(db, shops, sql)
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_crm_serve_on_the_lake_lists_records_and_takes_the_gateways_word_as_on_the_file(both):
    """The same page on both storages (the list of calls, a call's page); an outcome saved and a reminder call marked
    on the lake land in PostgreSQL; a receipt folds into its message; an opt-out reply becomes a suppression that the
    next plan honours (the unpaid order's SMS reminder is `unreachable`), on both storages alike."""
    db, config, lake = both
    signed = config.read_text(encoding="utf-8") + f'\n[gateway]\nsigning_secret = "{SECRET}"\n'
    config.write_text(signed, encoding="utf-8")
    lake = with_storage(config, load_settings(lake).storage)
    seen = {}
    for name, shops, where in (("file", config, db), ("lake", lake, db.with_name("unused.duckdb"))):
        with session(db, load_settings(shops), lake=True) as con:       # a sent SMS for the receipt to fold into
            con.execute(f"INSERT INTO {layout.ops_table(con, 'messages')} (message_id, purpose, shop_id, order_id, "
                        "customer_id, channel, status, attempts, created_at, sent_at) VALUES ('payment_reminder:x1', "
                        "'payment_reminder', 's1', 'x1', 'c1', 'sms', 'sent', 1, ?, ?)", [T, T])
        server = workspace.Served(where, shops)
        try:
            agent = workspace.Agent(server.url)
            listed = _page_text(agent.get("/shops/s1").text)
            call = _page_text(agent.get("/shops/s1/calls/o-bad").text)
            saved = agent.post("/shops/s1/calls/o-high", data={"reached": "true", "quality": "good", "logistics": "issue",
                                                               "packaging": "good", "service": "good",
                                                               "compensation": "none", "agent": "小李"})
            assert saved.status_code == 303, saved.text[-2000:]
            called = agent.post("/shops/s1/reminders/u1", data={})
            assert called.status_code == 303, called.text[-2000:]
            after = _page_text(agent.get("/shops/s1").text)
            body, headers = _signed({"message_id": "payment_reminder:x1", "status": "delivered",
                                     "at": "2026-11-24T11:00:00+08:00"}, "msg_1")
            assert httpx.post(f"{server.url}/hooks/receipts", content=body, headers=headers).status_code == 200
            body, headers = _signed({"from": "+8613900000009", "to": "10690", "text": "退订",
                                     "at": "2026-11-24T11:20:00+08:00"}, "msg_2")
            assert httpx.post(f"{server.url}/hooks/replies", content=body, headers=headers).status_code == 200
            delivery = _settle(db, shops, "SELECT delivery FROM ops.messages WHERE message_id = 'payment_reminder:x1'",
                               [("delivered",)])
            suppressed = _settle(db, shops, "SELECT phone, channel FROM ops.suppressions", [("+8613900000009", "sms")])
        finally:
            server.stop()
        # the next plan, a few minutes before T (the call queued at T is not made yet), with SMS for new customers
        with session(db, load_settings(_sms(shops)), lake=True) as con:
            plan(con, T - timedelta(minutes=5))
            decision = con.execute("SELECT decision, reason FROM marts.reminder_decisions WHERE order_id = 'u1' "
                                   "AND as_of = ?", [T - timedelta(minutes=5)]).fetchone()
        seen[name] = (listed, call, after, delivery, suppressed, decision,
                      rows_of(db, shops, "SELECT order_id, reached, logistics, agent FROM ops.visit_outcomes"),
                      rows_of(db, shops, "SELECT message_id, status FROM ops.messages WHERE message_id IN "
                                         "('followup:o-high', 'payment_reminder:u1') ORDER BY 1"))
    for i, (a, b) in enumerate(zip(seen["file"], seen["lake"])):
        assert a == b, f"item {i}: the file {a!r:.3000} the lake {b!r:.3000}"
    listed, call, after, delivery, suppressed, decision, outcomes, messages = seen["lake"]
    orders = re.findall(r'data-order="([^"]+)"', html.unescape(listed))
    assert orders[:4] == ["o-high", "o-bad", "o-mid", "o-praise"], orders
    assert "质量太差了" in call
    assert delivery == [("delivered",)] and suppressed == [("+8613900000009", "sms")]
    assert decision[1] == "unreachable", decision
    assert outcomes == [("o-high", True, "issue", "小李")]
    assert messages == [("followup:o-high", "done"), ("payment_reminder:u1", "done")]
    assert rows_of(db, lake, "SELECT count(*) FROM opsdb.suppressions") == [(1,)]
    assert not db.with_name("unused.duckdb").exists()


def _sms(shops: Path) -> Path:
    """The shops file with new customers' reminders by SMS (the workspace's go by call)."""
    path = shops.with_name(f"sms-{shops.name}")
    text = shops.read_text(encoding="utf-8")
    assert 'channels = { new = "call" }' in text
    path.write_text(text.replace('channels = { new = "call" }', 'channels = { new = "sms" }'), encoding="utf-8")
    return path
