"""Taobao / Tmall through the TOP API (docs/rules.md §11) against a loopback TOP router (tests/top_server.py):
signatures, the one-day window, the three months, App Call Limited, 5xx and timeouts, paging from the last page
while orders change, the mapping, a malformed record, runs that follow an order from unpaid to refunded, and
`crm extract` as a user runs it (a bad session, an unset variable, a kill mid-extract)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import BIN, crm, rows
from crm.config import load_settings
from crm.sources import SourceError, SourceUnavailable, extract
from crm.sources import taobao
from top_server import TopRouter

CST = timezone(timedelta(hours=8))
T = datetime(2026, 11, 24, 10, 0, tzinfo=CST)            # the runs' T (10:00 China time)
PHONE = "13800138000"


def at(hours: float, base: datetime = T) -> str:
    """A TOP time `hours` after `base` (negative: before)."""
    return (base + timedelta(hours=hours)).astimezone(CST).strftime("%Y-%m-%d %H:%M:%S")


def trade(tid: int, created: str, modified: str | None = None, *, status: str = "WAIT_BUYER_PAY",
          buyer: str = "AAbuyer-1", payment: str = "99.00", items: int = 1, type: str = "fixed", **kw) -> dict:
    subs = [{"oid": tid * 10 + i, "num_iid": 600000 + i, "title": f"枕头 {i}", "num": 1, "price": "99.00",
             "seller_type": "C", "status": status, "cid": 50010850} for i in range(1, items + 1)]
    return {"tid": tid, "type": type, "status": status, "created": created, "modified": modified or created,
            "payment": payment, "buyer_open_uid": buyer, "buyer_nick": "t**1", "receiver_name": "张三",
            "receiver_mobile": PHONE, "receiver_city": "杭州市", "orders": subs, **kw}


CONFIG = """
[[shops]]
shop_id = "s1"
timezone = "Asia/Shanghai"
[shops.source]
kind = "taobao"
endpoint = "{url}"
app_key = "23456789"
app_secret_env = "CRM_S1_TOP_SECRET"
session_env = "CRM_S1_TOP_SESSION"
sign_method = "{sign_method}"
backfill_days = {backfill_days}
"""


@pytest.fixture
def router():
    r = TopRouter(now=T).start()
    yield r
    r.stop()


class Shop:
    """The test's shop s1 on the router: config file, database, landing folder, the waits it was told to make."""

    def __init__(self, tmp_path: Path, router: TopRouter, sign_method: str = "md5", backfill_days: int = 2):
        self.router, self.db, self.landing = router, tmp_path / "crm.duckdb", tmp_path / "landing"
        self.config = tmp_path / "shops.toml"
        self.config.write_text(CONFIG.format(url=router.url, sign_method=sign_method, backfill_days=backfill_days))
        self.env = {"CRM_S1_TOP_SECRET": router.secret, "CRM_S1_TOP_SESSION": router.session}
        self.sleeps: list[float] = []

    def run(self, as_of: datetime = T, since: datetime | None = None) -> tuple[dict, dict]:
        from flows.ingest import load_landing

        summary = extract(self.db, load_settings(self.config), "s1", self.landing, as_of=as_of, since=since,
                          env=self.env, sleep=self.sleeps.append)
        self.landing.mkdir(exist_ok=True)
        return summary, load_landing.fn(str(self.landing), str(self.db), str(self.config))

    def source(self, **kw):
        settings = load_settings(self.config)
        return taobao.open(settings.shops[0], settings.shops[0].source, self.env, sleep=self.sleeps.append, **kw)

    def orders(self) -> dict[str, tuple]:
        return {r[0]: r[1:] for r in rows(self.db, "SELECT order_id, paid_at, shipped_at, delivered_at, closed_at, "
                                                   "refunded_at, platform, total_amount, updated_at FROM staging.orders")}


@pytest.fixture
def shop(tmp_path, router):
    return Shop(tmp_path, router)


# --------------------------------------------------------------------------------------------------
# the protocol


@pytest.mark.parametrize("method", ["md5", "hmac-sha256"])
def test_calls_are_signed_with_md5_or_hmac_sha256_and_a_wrong_secret_is_refused(tmp_path, router, method):
    shop = Shop(tmp_path, router, sign_method=method)
    router.put(trade(1001, at(-5)))
    summary, ingest = shop.run()
    assert summary["orders"] == 1 and ingest["rows_loaded"] >= 1
    assert router.refused == [] and {c["sign_method"] for c in router.calls} == {method}
    assert all(len(c["sign"]) == 64 if method == "hmac-sha256" else len(c["sign"]) == 32 for c in router.calls)

    shop.env["CRM_S1_TOP_SECRET"] = "not-the-secret"
    with pytest.raises(SourceError) as info:
        shop.run(as_of=T + timedelta(hours=1))
    assert router.refused[-1] == (25, "Invalid Signature")
    message = str(info.value)
    assert "\n" not in message and "CRM_S1_TOP_SECRET" in message and "not-the-secret" not in message


def test_every_request_spans_at_most_one_day_and_a_wider_one_gets_tops_error(shop, router):
    shop.config.write_text(shop.config.read_text().replace("backfill_days = 2", "backfill_days = 3"))
    router.put(trade(1001, at(-70)))
    router.put(trade(1002, at(-30)))
    router.put(trade(1003, at(-1)))
    summary, _ = shop.run()
    spans = [(datetime.strptime(c["end_modified"], "%Y-%m-%d %H:%M:%S"),
              datetime.strptime(c["start_modified"], "%Y-%m-%d %H:%M:%S")) for c in router.increments()]
    assert all(timedelta(0) < end - start <= timedelta(days=1) for end, start in spans)
    assert sorted({(s, e) for e, s in spans}) == [
        (datetime(2026, 11, 21, 10), datetime(2026, 11, 22, 10)), (datetime(2026, 11, 22, 10), datetime(2026, 11, 23, 10)),
        (datetime(2026, 11, 23, 10), datetime(2026, 11, 24, 10))], "three one-day windows from T - 3 days to T"
    assert summary["orders"] == 3 and router.refused == []

    client = shop.source().client
    with pytest.raises(SourceError) as info:
        client.call(taobao.INCREMENT, fields="tid", start_modified=at(-48), end_modified=at(0))
    assert "Invalid Arguments" in str(info.value) and "one day" in str(info.value)
    assert router.refused == [(41, "Invalid Arguments")]


def test_only_the_last_three_months_are_read_and_the_run_says_so(shop, router):
    shop.config.write_text(shop.config.read_text().replace("backfill_days = 2", "backfill_days = 120"))
    router.put(trade(1001, at(-24 * 89 + 1)))          # not on a window's edge (edges are read by both windows)
    summary, _ = shop.run()
    assert router.refused == [], "no request reached back beyond three months"
    assert [n for n in summary["notes"] if "three months" in n] == [
        "shop 's1': TOP reads only the last three months of trades: starting at 2026-08-26 10:00 (China time) "
        "instead of 2026-07-27 10:00"]
    assert summary["orders"] == 1 and len(router.increments()) == 90


def test_app_call_limited_and_isp_errors_wait_and_retry(shop, router):
    router.put(trade(1001, at(-3)))
    router.script = [("limited", 7), ("isp",), ("limited", 2)]
    summary, _ = shop.run()
    assert summary["orders"] == 1 and list(shop.orders()) == ["1001"]
    assert router.refused[:3] == [(7, "App Call Limited"), (15, "Remote service error"), (7, "App Call Limited")]
    assert shop.sleeps[0] == 8.0 and shop.sleeps[2] == 3.0, "the ban's seconds (and one more) are waited"
    assert 0 < shop.sleeps[1] <= 0.5, "an isp error backs off"


def test_a_ban_too_long_to_wait_ends_the_run_and_the_watermark_stays(shop, router):
    router.put(trade(1001, at(-3)))
    router.script = [("limited", 3600)]
    with pytest.raises(SourceUnavailable) as info:
        shop.run()
    assert "limits this app's calls" in str(info.value) and shop.sleeps == []
    assert rows(shop.db, "SELECT * FROM ops.source_watermarks") == []


def test_5xx_answers_and_timeouts_are_retried(shop, router):
    router.put(trade(1001, at(-3)))
    router.script = [("status", 502), ("slow", 1.5), ("status", 503)]
    source = shop.source(timeout=0.5)
    batches = list(source.batches(T - timedelta(hours=12), T))
    assert [o["order_id"] for b in batches for o in b.rows["orders"]] == ["1001"]
    assert len(shop.sleeps) == 3 and len(router.calls) >= 4

    router.script = [("status", 502)] * taobao.MAX_ATTEMPTS
    with pytest.raises(SourceUnavailable) as info:
        list(shop.source(timeout=0.5).batches(T - timedelta(hours=12), T))
    assert "HTTP 502" in str(info.value) and "next run continues" in str(info.value)


# --------------------------------------------------------------------------------------------------
# paging


def test_an_order_modified_while_its_window_is_paged_is_not_missed(shop, router):
    # 25 orders in one window, 10 a page: pages 1-3, newest first. Right after page 2 has been read, two orders of
    # page 2 are modified: they leave the window and the orders after them move up a place, from page 3 onto page
    # 2. Read from the last page back, page 3 was read already; a reader going on from page 2 to page 3 would miss
    # the two that moved
    for i in range(25):
        router.put(trade(2000 + i, at(-20), at(-10 + i * 0.1)))
    newest = sorted(router.trades.values(), key=lambda t: t["modified"], reverse=True)
    moved = [str(newest[12]["tid"]), str(newest[15]["tid"])]

    def modify(n, params):
        if n > 1 and router.calls[n - 2].get("page_no") == "2":      # the call after page 2's
            for tid in moved:
                router.modify(tid, at(0.5), status="WAIT_SELLER_SEND_GOODS", pay_time=at(0.5))
    router.before = modify
    source = shop.source(page_size=10)
    batches = list(source.batches(T - timedelta(hours=12), T))
    pages = [c["page_no"] for c in router.increments()]
    assert pages == ["1", "3", "2", "1"], "page 1 for the count, then from the last page back, then page 1 again"
    got = [o["order_id"] for b in batches for o in b.rows["orders"]]
    assert sorted(got) == sorted(str(2000 + i) for i in range(25)), "the two as they were, and every other"
    assert len(got) == len(set(got)), "each order once in its window"

    # the next run reads the two from their new modification time
    router.before = None
    shop.run(as_of=T + timedelta(hours=1))
    staged = shop.orders()
    assert sorted(staged) == sorted(str(2000 + i) for i in range(25))
    assert all(staged[tid][0] is not None for tid in moved), "paid, as modified"


# --------------------------------------------------------------------------------------------------
# mapping


def test_a_trade_maps_to_the_four_entities_with_china_time_offsets():
    t = trade(3001, "2026-11-20 10:00:00", "2026-11-27 09:30:00", status="TRADE_FINISHED", items=2,
              pay_time="2026-11-20 10:05:00", consign_time="2026-11-21 08:00:00", end_time="2026-11-27 09:30:00",
              payment="188.50")
    rows_, rejects = taobao.map_trade("s1", t)
    assert rejects == []
    [order] = rows_["orders"]
    assert order == {"order_id": "3001", "shop_id": "s1", "customer_id": "AAbuyer-1", "platform": "taobao",
                     "created_at": "2026-11-20T10:00:00+08:00", "paid_at": "2026-11-20T10:05:00+08:00",
                     "shipped_at": "2026-11-21T08:00:00+08:00", "delivered_at": "2026-11-27T09:30:00+08:00",
                     "closed_at": None, "refunded_at": None, "total_amount": "188.50", "currency": "CNY",
                     "receiver_city": "杭州市", "updated_at": "2026-11-27T09:30:00+08:00"}
    assert [(i["line_no"], i["product_id"], i["quantity"]) for i in rows_["order_items"]] == [(1, "600001", 1),
                                                                                              (2, "600002", 1)]
    [customer] = rows_["customers"]
    assert (customer["name"], customer["phone"], customer["registered_at"]) == ("张三", PHONE, order["created_at"])

    masked = taobao.map_trade("s1", trade(3002, "2026-11-20 10:00:00", receiver_mobile="138****0000"))[0]
    assert masked["customers"][0]["phone"] is None, "a masked number is no number, not a bad one"
    fenxiao = taobao.map_trade("s1", trade(3003, "2026-11-20 10:00:00", type="fenxiao"))[0]
    daixiao = trade(3004, "2026-11-20 10:00:00")
    daixiao["orders"][0]["is_daixiao"] = True
    tmall = trade(3005, "2026-11-20 10:00:00")
    tmall["orders"][0]["seller_type"] = "B"
    assert [fenxiao["orders"][0]["platform"], taobao.map_trade("s1", daixiao)[0]["orders"][0]["platform"],
            taobao.map_trade("s1", tmall)[0]["orders"][0]["platform"]] == ["fenxiao", "fenxiao", "tmall"]
    closed = taobao.map_trade("s1", trade(3006, "2026-11-20 10:00:00", "2026-11-21 10:00:00",
                                          status="TRADE_CLOSED_BY_TAOBAO", end_time="2026-11-21 10:00:00"))[0]
    assert (closed["orders"][0]["closed_at"], closed["orders"][0]["refunded_at"]) == ("2026-11-21T10:00:00+08:00", None)


def test_distribution_and_tmall_orders_are_fetched_and_a_distribution_order_is_never_reminded(shop, router):
    from transforms.plan import plan

    router.put(trade(4001, at(-1), type="fenxiao", buyer="AAbuyer-4"))
    tmall = trade(4002, at(-1), buyer="AAbuyer-5")
    tmall["orders"][0]["seller_type"] = "B"
    router.put(tmall)
    shop.run()
    assert "fenxiao" in router.increments()[0]["type"], "asked for every trade type, fenxiao included"
    assert {k: v[5] for k, v in shop.orders().items()} == {"4001": "fenxiao", "4002": "tmall"}
    from crm.db import session

    with session(shop.db, load_settings(shop.config)) as con:
        plan(con, T.astimezone(timezone.utc))
        decided = dict(con.execute("SELECT order_id, reason FROM marts.reminder_decisions").fetchall())
    assert decided["4001"] == "distribution_platform" and decided["4002"] != "distribution_platform"


def test_receiver_fields_come_from_fullinfo_and_no_phone_reaches_the_summary(shop, router):
    router.put(trade(5001, at(-2)))
    summary, ingest = shop.run()
    full = [c for c in router.calls if c["method"] == "taobao.trade.fullinfo.get"]
    assert [c["tid"] for c in full] == ["5001"] and "receiver_mobile" in full[0]["fields"]
    assert rows(shop.db, "SELECT name, phone, city FROM staging.customers") == [("张三", "+86" + PHONE, "杭州市")]
    assert PHONE not in json.dumps(summary, ensure_ascii=False) + json.dumps(ingest, ensure_ascii=False, default=str)


def test_a_malformed_record_is_quarantined_with_its_source_and_the_run_goes_on(shop, router):
    router.put(trade(6001, at(-3)))
    router.put(trade(6002, "yesterday", at(-2)))                  # the mapper cannot read its created
    router.put(trade(6003, at(-2), payment="-5.00"))              # staging refuses its amount
    router.put(trade(6004, at(-1), buyer=""))                     # no buyer
    summary, ingest = shop.run()
    assert sorted(shop.orders()) == ["6001"]
    quarantined = rows(shop.db, "SELECT entity, source_file, reason FROM ops.quarantine ORDER BY reason")
    assert [(e, r) for e, f, r in quarantined if f.startswith("taobao:s1 ")] == [
        ("orders", "created 'yesterday' is not a TOP time (yyyy-MM-dd HH:mm:ss)"), ("orders", "no buyer_open_uid")]
    assert sorted(f for e, f, r in quarantined if f.startswith("taobao:s1 ")) == ["taobao:s1 tid 6002",
                                                                                 "taobao:s1 tid 6004"]
    [(entity, file, reason)] = [q for q in quarantined if not q[1].startswith("taobao:")]
    assert entity == "orders" and Path(file).parent.name == "orders" and "negative total_amount" in reason
    assert summary["rejects"] == 2 and rows(shop.db, "SELECT count(*) FROM ops.source_watermarks") == [(1,)]

    again, _ = shop.run(as_of=T + timedelta(minutes=30), since=T - timedelta(hours=4))   # read them again
    assert again["rejects"] == 2
    assert rows(shop.db, "SELECT count(*) FROM ops.quarantine WHERE source_file LIKE 'taobao:%'") == [(2,)], \
        "a reject read again is not quarantined twice"


# --------------------------------------------------------------------------------------------------
# runs


def test_an_order_from_unpaid_to_paid_to_refunded_across_three_runs(shop, router):
    from crm.db import session
    from transforms.plan import plan

    def planned(as_of):
        with session(shop.db, load_settings(shop.config)) as con:
            plan(con, as_of.astimezone(timezone.utc))
            decision = con.execute("SELECT decision FROM marts.reminder_decisions WHERE order_id = '7001' AND "
                                   "as_of = ?", [as_of]).fetchall()
            paid = con.execute("SELECT paid_orders FROM marts.customer_segments WHERE customer_id = 'AAbuyer-7'"
                               ).fetchall()
        return decision, paid

    router.put(trade(7001, at(-1), buyer="AAbuyer-7"))
    first, _ = shop.run(as_of=T)
    assert first["started_from"] == "backfill" and first["since"] == "2026-11-22T02:00:00+00:00"
    assert shop.orders()["7001"][:5] == (None, None, None, None, None)
    assert planned(T) == ([("remind",)], [(0,)])

    t2 = T + timedelta(hours=2)
    router.modify(7001, at(1), status="WAIT_SELLER_SEND_GOODS", pay_time=at(1))
    second, _ = shop.run(as_of=t2)
    assert second["started_from"] == "watermark" and second["since"] == "2026-11-24T01:50:00+00:00", \
        "from the watermark (T) less the overlap of 10 minutes"
    assert shop.orders()["7001"][0] == datetime(2026, 11, 24, 3, 0, tzinfo=timezone.utc)
    assert planned(t2) == ([], [(1,)]), "paid: no longer a reminder's order; one paid order"

    t3 = T + timedelta(days=3)
    router.modify(7001, at(60), status="TRADE_CLOSED", end_time=at(60),
                  orders=[{**router.trades["7001"]["orders"][0], "refund_status": "SUCCESS", "end_time": at(59)}])
    shop.run(as_of=t3)
    paid_at, shipped, delivered, closed, refunded = shop.orders()["7001"][:5]
    assert refunded == datetime(2026, 11, 26, 13, 0, tzinfo=timezone.utc), "the refunded sub-order's end"
    assert closed == datetime(2026, 11, 26, 14, 0, tzinfo=timezone.utc) and shipped is None
    assert planned(t3) == ([], [(0,)]), "refunded: not a paid order any more"
    assert rows(shop.db, "SELECT count(*) FROM staging.orders") == [(1,)]


# --------------------------------------------------------------------------------------------------
# the command


CLI_ENV = {"PREFECT_API_URL": ""}


def _cli_shop(local_server, tmp_path, router, name: str) -> Shop:
    shop = Shop(tmp_path, router)
    shop.db = local_server.parent / f"{name}.duckdb"          # beside the session's Prefect server
    return shop


def _extract(shop: Shop, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return crm("--db", str(shop.db), "--config", str(shop.config), "extract", *args,
               env={**CLI_ENV, **shop.env, **(env or {})})


def test_crm_extract_end_to_end(local_server, tmp_path, router):
    shop = _cli_shop(local_server, tmp_path, router, "extract-e2e")
    for i in range(3):
        router.put(trade(8001 + i, at(-5 + i), buyer=f"AAbuyer-8{i}"))
    done = _extract(shop, "--shop", "s1", "--landing", str(shop.landing), "--as-of", T.isoformat())
    assert done.returncode == 0, done.stderr
    assert "s1 (taobao)" in done.stdout and "3 orders" in done.stdout and "ingest #1" in done.stdout
    assert PHONE not in done.stdout + done.stderr
    assert sorted(shop.orders()) == ["8001", "8002", "8003"]
    assert rows(shop.db, "SELECT watermark FROM ops.source_watermarks") == [(T.astimezone(timezone.utc),)]

    again = _extract(shop, "--landing", str(shop.landing), "--as-of", (T + timedelta(minutes=5)).isoformat())
    assert again.returncode == 0, again.stderr
    assert "from the watermark" in again.stdout
    assert rows(shop.db, "SELECT count(*), count(DISTINCT order_id) FROM staging.orders") == [(3, 3)]


def test_a_bad_session_is_one_error_line(local_server, tmp_path, router):
    shop = _cli_shop(local_server, tmp_path, router, "extract-session")
    router.put(trade(9001, at(-1)))
    result = _extract(shop, "--as-of", T.isoformat(), env={"CRM_S1_TOP_SESSION": "expired-session"})
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "CRM_S1_TOP_SESSION" in lines[0] and "Invalid session" in lines[0]
    assert "expired-session" not in result.stdout + result.stderr and router.session not in result.stderr


def test_an_unset_secret_is_one_line_naming_the_variable(tmp_path, router):
    shop = Shop(tmp_path, router)
    result = crm("--db", str(shop.db), "--config", str(shop.config), "extract",
                 env={"CRM_S1_TOP_SESSION": router.session, "CRM_S1_TOP_SECRET": ""})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0] == ("error: shop 's1': the environment variable CRM_S1_TOP_SECRET is not set "
                        "(source.app_secret_env names it; it holds the TOP app secret)")
    assert router.calls == [] and not shop.db.exists()


def test_a_run_killed_mid_extract_then_run_again_loses_nothing_and_doubles_nothing(local_server, tmp_path, router):
    shop = _cli_shop(local_server, tmp_path, router, "extract-kill")
    shop.config.write_text(shop.config.read_text().replace("backfill_days = 2", "backfill_days = 3"))
    for day in range(3):                                      # three one-day windows, orders in each
        for i in range(4):
            router.put(trade(10000 + day * 10 + i, at(-70 + day * 24 + i), buyer=f"AAbuyer-k{day}{i}"))
    first_window_end = T - timedelta(days=2)
    router.delay = lambda p: 0.0 if datetime.strptime(p.get("end_modified", "2000-01-01 00:00:00"), "%Y-%m-%d %H:%M:%S"
                                                      ).replace(tzinfo=CST) <= first_window_end else 30.0
    args = [str(BIN), "--db", str(shop.db), "--config", str(shop.config), "extract", "--landing", str(shop.landing),
            "--as-of", T.isoformat()]
    proc = subprocess.Popen(args, env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **CLI_ENV,
                                       **shop.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((shop.landing / "orders").glob("*.ndjson")):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.3)                                           # the first batch's commit, or not: either is fine
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    written = list((shop.landing / "orders").glob("*.ndjson"))
    assert len(written) == 1 and not list(shop.landing.rglob(".*.tmp")), "a whole first batch, no partial file"
    assert not rows(shop.db, "SELECT count(*) FROM staging.orders")[0][0], "killed before its ingest"
    assert rows(shop.db, "SELECT watermark FROM ops.source_watermarks") in ([], [(first_window_end,)]), \
        "the watermark is at most where the written batch ends"

    router.delay = None
    again = _extract(shop, "--landing", str(shop.landing), "--as-of", T.isoformat())
    assert again.returncode == 0, again.stderr
    staged = rows(shop.db, "SELECT order_id, count(*) FROM staging.orders GROUP BY 1")
    assert sorted(o for o, _ in staged) == sorted(str(t) for t in router.trades) and {n for _, n in staged} == {1}
    assert rows(shop.db, "SELECT count(*), count(DISTINCT (order_id, line_no)) FROM staging.order_items") == [(12, 12)]
    assert rows(shop.db, "SELECT count(*) FROM ops.quarantine") == [(0,)]
    loaded = {r[0] for r in rows(shop.db, "SELECT path FROM ops.ingested_files WHERE entity = 'orders'")}
    assert str(written[0].resolve()) in loaded, "the killed run's file was ingested by the next run"
