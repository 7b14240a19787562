"""The Shopify source against a loopback GraphQL Admin API (tests/shopify_server.py): real HTTP on 127.0.0.1,
an injected sleep that records each wait and moves the shared clock, so nothing really waits."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from datetime import datetime, timedelta, timezone

import duckdb
import pytest

from conftest import BIN, crm
from crm import orchestration
from crm.config import load_settings, parse_settings
from crm.sources import SourceError, SourceUnavailable, extract, shopify
from flows.ingest import load_landing
from shopify_server import TOKEN, Clock, ShopifyServer, customer, iso, line, order, product, tx

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc)       # the first order's time
NOW = T0 + timedelta(days=1)                                 # the run's clock
VAR = "CRM_S1_SHOPIFY_TOKEN"
OVERLAP = timedelta(minutes=10)


@pytest.fixture
def clock():
    return Clock(NOW)


@pytest.fixture
def server(clock):
    s = ShopifyServer(clock).start()
    yield s
    s.stop()


def settings(server, **source):
    raw = {"shops": [{"shop_id": "s1", "timezone": "America/New_York",
                      "source": {"kind": "shopify", "endpoint": server.url, "token_env": VAR,
                                 "api_version": "2025-10", **source}}]}
    return parse_settings(raw)


def open_source(server, clock, token=TOKEN, **kw):
    shop = settings(server).shops[0]
    kw.setdefault("timeout", 2.0)
    return shopify.open(shop, shop.source, {VAR: token}, sleep=clock.sleep, monotonic=clock.monotonic, **kw)


def run(source, since, until):
    return list(source.batches(since, until))


def ids(batches, entity="orders"):
    return [r["order_id"] for b in batches for r in b.rows[entity]]


def mug():
    return product(7001, title="Cat mug", product_type="Kitchen", tags=["cute", "gift"])


def simple(oid, updated, **kw):
    cust = kw.pop("cust", None) or customer(900 + oid % 7, created=T0 - timedelta(days=30))
    return order(oid, created=kw.pop("created", T0), updated=updated, cust=cust,
                 lines=kw.pop("lines", None) or [line(oid * 10, mug())], **kw)


def many(server, n, start=T0, step=timedelta(minutes=1)):
    server.put(*(simple(1000 + i, start + i * step) for i in range(n)))
    return [str(1000 + i) for i in range(n)]


# ------------------------------------------------------------------------------------------------ access


def test_every_request_carries_the_token_and_a_wrong_one_is_one_line_without_it(server, clock):
    many(server, 3)
    assert ids(run(open_source(server, clock), T0, NOW)) == ["1000", "1001", "1002"]
    assert server.requests and all(r["token_ok"] for r in server.requests)

    wrong = "shpat_wrong_secret_value"
    with pytest.raises(SourceError) as err:
        run(open_source(server, clock, token=wrong), T0, NOW)
    text = str(err.value)
    assert "\n" not in text and "'s1'" in text and VAR in text and "401" in text
    assert wrong not in text and TOKEN not in text
    assert server.requests[-1]["status"] == 401 and not server.requests[-1]["token_ok"]
    assert clock.waits == []                    # refused at once, no retries


def test_an_unset_token_variable_is_named(server, clock):
    shop = settings(server).shops[0]
    with pytest.raises(SourceError, match=rf"shop 's1': the environment variable {VAR} \(source.token_env\)"):
        shopify.open(shop, shop.source, {}, sleep=clock.sleep)


def test_a_wrong_api_version_is_one_line(server, clock):
    shop = settings(server, api_version="2019-04").shops[0]
    source = shopify.open(shop, shop.source, {VAR: TOKEN}, sleep=clock.sleep, monotonic=clock.monotonic)
    with pytest.raises(SourceError) as err:
        run(source, T0, NOW)
    assert "404" in str(err.value) and "api_version" in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------ paging


def test_cursors_walk_every_page_once_oldest_change_first(server, clock):
    expected = many(server, 25)
    batches = run(open_source(server, clock, page_orders=10), T0, NOW)
    assert [len(b.rows["orders"]) for b in batches] == [10, 10, 5]
    assert ids(batches) == expected
    # each request after the first continues from the previous page's endCursor
    afters = [r["variables"]["after"] for r in server.requests]
    assert afters[0] is None and all(afters[1:]) and len(set(afters)) == 3
    # high water: the newest change of a page (orders sharing it may follow), the last page: until
    assert batches[0].high_water == T0 + timedelta(minutes=9)
    assert batches[1].high_water == T0 + timedelta(minutes=19)
    assert batches[2].high_water == NOW
    assert all(b.high_water.tzinfo is not None for b in batches)
    assert [b.pages for b in batches] == [1, 1, 1]


def test_the_updated_at_filter_reaches_the_server_and_bounds_the_orders(server, clock):
    since, until = T0 + timedelta(minutes=5), T0 + timedelta(minutes=9, seconds=30, microseconds=5)
    many(server, 15)
    batches = run(open_source(server, clock), since, until)
    assert ids(batches) == [str(1000 + i) for i in range(5, 10)]      # since inclusive, until inclusive
    sent = server.requests[0]["variables"]["query"]
    assert sent == f"updated_at:>='{iso(since)}' AND updated_at:<='{iso(until.replace(microsecond=0))}'"
    assert "sortKey: UPDATED_AT" in shopify.ORDERS_QUERY


def test_an_order_modified_while_paging_is_not_lost(server, clock):
    expected = set(many(server, 25))
    moved = {}

    def edit(n, variables):
        if n == 2:        # after page 1 was read: an order of page 2 is paid, so its updatedAt moves on
            clock.advance(1)
            moved["record"] = server.modify(1012, transactions=[tx("SALE", clock.now)], financial="PAID")
        if n == 3:        # an order already read changes again, after the run's until
            clock.advance(5)
            server.modify(1003, financial="PAID", transactions=[tx("SALE", clock.now)])

    server.on_request = edit
    until = NOW + timedelta(seconds=2)
    first = run(open_source(server, clock, page_orders=10), T0, until)
    seen = ids(first)
    assert set(seen) == expected and len(seen) == 25          # nothing skipped although 1012 moved
    assert seen[-1] == "1012"                                  # read once, in its new place, paid
    last_1012 = [r for b in first for r in b.rows["orders"] if r["order_id"] == "1012"][-1]
    assert last_1012["paid_at"] == moved["record"]["updatedAt"]

    # the next run starts at the watermark less the overlap and picks up 1003's change past until
    server.on_request = None
    watermark = first[-1].high_water
    second = run(open_source(server, clock), watermark - OVERLAP, clock.now)
    again = [r for b in second for r in b.rows["orders"] if r["order_id"] == "1003"]
    assert again and again[-1]["paid_at"] is not None


def test_an_order_with_more_lines_than_a_page_holds_reads_the_rest(server, clock):
    lines = [line(50_000 + i, product(8000 + i, title=f"Item {i}"), quantity=1 + i % 3) for i in range(23)]
    server.put(simple(1, T0, lines=lines), simple(2, T0 + timedelta(minutes=1)))
    batches = run(open_source(server, clock, page_lines=10), T0, NOW)
    items = [r for r in batches[0].rows["order_items"] if r["order_id"] == "1"]
    assert [r["line_no"] for r in items] == list(range(1, 24))
    assert [r["product_id"] for r in items] == [str(8000 + i) for i in range(23)]
    assert batches[0].pages == 1 + 1            # one orders page, one order(id:) page of up to 100 lines
    assert [r["variables"].get("after") is not None for r in server.requests[1:]] == [True]


def test_a_page_over_the_cost_limit_is_halved(server, clock):
    many(server, 30)
    batches = run(open_source(server, clock, page_orders=50), T0, NOW)
    assert ids(batches) == [str(1000 + i) for i in range(30)]
    firsts = [r["variables"]["first"] for r in server.requests]
    assert firsts[:3] == [50, 25, 12] and [r["code"] for r in server.requests[:2]] == ["MAX_COST_EXCEEDED"] * 2


# ------------------------------------------------------------------------------------------------ limits


def test_throttled_waits_for_the_restore_rate_then_succeeds(server, clock):
    many(server, 3)
    server.drain(server.bucket_max)                   # another client emptied the bucket just now
    batches = run(open_source(server, clock), T0, NOW)
    assert ids(batches) == ["1000", "1001", "1002"]
    assert [r["code"] for r in server.requests] == ["THROTTLED", None]
    requested = 3 + shopify.PAGE_ORDERS * ShopifyServer._order_cost(shopify.ORDERS_QUERY, shopify.PAGE_LINES)
    assert clock.waits == [pytest.approx(requested / server.restore_rate)]


def test_a_low_bucket_is_waited_for_before_the_next_page(server, clock):
    many(server, 15)
    server.drain(200)          # another client used some: the first page still fits, the next would not
    batches = run(open_source(server, clock, page_orders=10), T0, NOW)
    assert len(ids(batches)) == 15
    assert server.throttled == 0                     # waited before asking, never throttled
    requested = 3 + 10 * ShopifyServer._order_cost(shopify.ORDERS_QUERY, shopify.PAGE_LINES)
    reported = server.requests[0]["available"]       # what the first answer said the bucket held
    assert reported < requested
    assert clock.waits == [pytest.approx((requested - reported) / server.restore_rate)]


def test_429_waits_its_retry_after(server, clock):
    many(server, 2)
    server.script = [("retry_after", 429, 3)]
    assert ids(run(open_source(server, clock), T0, NOW)) == ["1000", "1001"]
    assert clock.waits == [3.0]


def test_5xx_is_retried_with_backoff_then_succeeds(server, clock):
    many(server, 2)
    server.script = [("status", 503), ("status", 502), ("graphql_error", "INTERNAL_SERVER_ERROR")]
    assert ids(run(open_source(server, clock), T0, NOW)) == ["1000", "1001"]
    assert clock.waits == [1, 2, 4]


def test_5xx_without_end_is_one_line_after_bounded_attempts(server, clock):
    many(server, 2)
    server.script = [("status", 503)] * 20
    with pytest.raises(SourceUnavailable) as err:
        run(open_source(server, clock), T0, NOW)
    assert len(server.requests) == shopify.MAX_ATTEMPTS
    assert clock.waits == [1, 2, 4, 8, 16]
    assert "\n" not in str(err.value) and "503" in str(err.value) and "'s1'" in str(err.value)


def test_a_timeout_is_retried(server, clock):
    many(server, 2)
    server.script = [("slow", 1.5)]
    assert ids(run(open_source(server, clock, timeout=0.3), T0, NOW)) == ["1000", "1001"]
    assert clock.waits == [1]


def test_a_refused_connection_is_retried_then_one_line(server, clock):
    server.stop()
    with pytest.raises(SourceUnavailable) as err:
        run(open_source(server, clock), T0, NOW)
    assert "could not be reached" in str(err.value) and clock.waits == [1, 2, 4, 8, 16]


# ------------------------------------------------------------------------------------------------ mapping


def test_unpaid_then_paid_then_refunded_across_runs(server, clock):
    paid_at, refund_at = T0 + timedelta(hours=2), T0 + timedelta(hours=30)
    clock.now = T0 + timedelta(hours=1)              # this test's runs start an hour after the order
    server.put(simple(1, T0, financial="PENDING"))

    def once(since):
        batches = run(open_source(server, clock), since, clock.now)
        rows = [r for b in batches for r in b.rows["orders"] if r["order_id"] == "1"]
        return rows[-1], batches[-1].high_water

    row, watermark = once(T0 - timedelta(days=1))
    assert (row["paid_at"], row["refunded_at"], row["closed_at"]) == (None, None, None)

    clock.set(paid_at)
    server.modify(1, financial="PAID", transactions=[tx("AUTHORIZATION", paid_at - timedelta(minutes=1), "FAILURE"),
                                                     tx("SALE", paid_at)])
    clock.advance(60)
    row, watermark = once(watermark - OVERLAP)
    assert row["paid_at"] == iso(paid_at) and row["refunded_at"] is None

    clock.set(refund_at - timedelta(hours=1))
    server.modify(1, financial="PARTIALLY_REFUNDED", refunds=[{"createdAt": iso(clock.now)}])
    clock.advance(60)
    row, watermark = once(watermark - OVERLAP)
    assert row["refunded_at"] is None                   # a partial refund does not undo the purchase

    clock.set(refund_at)
    server.modify(1, financial="REFUNDED",
                  refunds=[{"createdAt": iso(refund_at - timedelta(hours=1))}, {"createdAt": iso(refund_at)}])
    clock.advance(60)
    row, _ = once(watermark - OVERLAP)
    assert row["paid_at"] == iso(paid_at) and row["refunded_at"] == iso(refund_at)
    assert row["updated_at"] == iso(refund_at)


def test_a_malformed_order_is_rejected_while_the_others_map(server, clock):
    good = [simple(1, T0), simple(4, T0 + timedelta(minutes=4))]
    negative = simple(2, T0 + timedelta(minutes=2), total="-5.00",
                      cust=customer(77, email="wang.fang@example.com", phone="+8613912345678", created=T0))
    no_id = simple(3, T0 + timedelta(minutes=3))
    no_id["legacyResourceId"] = None
    bad_time = simple(5, T0 + timedelta(minutes=5), created=T0)
    bad_time["cancelledAt"] = "yesterday"
    zero_qty = simple(6, T0 + timedelta(minutes=6), lines=[line(60, mug(), quantity=0)])
    server.put(*good, negative, bad_time, zero_qty)
    server.orders[3] = no_id
    batches = run(open_source(server, clock), T0, NOW)
    assert ids(batches) == ["1", "4"]
    assert sorted(i["order_id"] for b in batches for i in b.rows["order_items"]) == ["1", "4"]
    rejects = {r["ref"]: r for b in batches for r in b.rejects}
    assert set(rejects) == {"order 2", "order #3", "order 5", "order 6"}
    assert "negative totalPriceSet.shopMoney.amount -5.00" in rejects["order 2"]["reason"]
    assert "missing legacyResourceId" in rejects["order #3"]["reason"]
    assert "unparsable cancelledAt 'yesterday'" in rejects["order 5"]["reason"]
    assert "quantity 0" in rejects["order 6"]["reason"]
    assert all(r["entity"] == "orders" and "\n" not in r["reason"] for r in rejects.values())
    raw = rejects["order 2"]["raw"]
    assert json.loads(raw)["legacyResourceId"] == "2"
    assert "wang.fang@example.com" not in raw and "13912345678" not in raw


def test_one_order_maps_to_the_landing_entities(server, clock):
    created = T0
    paid, shipped, delivered = (created + timedelta(hours=h) for h in (1, 5, 20))
    buyer = customer(555, first="Mei", last="Lin", email="mei@example.com", phone="+8613800138000",
                     created=T0 - timedelta(days=90), updated=T0 - timedelta(days=1),
                     email_state="UNSUBSCRIBED", city="Suzhou")
    record = order(42, created=created, updated=delivered, cust=buyer, total="58.80", currency="USD",
                   city="Hangzhou", financial="PAID", fulfillment="FULFILLED",
                   lines=[line(1, mug(), quantity=2, price="19.90"),
                          line(2, product(7002, title="Gift card", product_type="", tags=[])),
                          line(3, None, price="19.00", title="Engraving")],
                   transactions=[tx("AUTHORIZATION", paid - timedelta(minutes=2)), tx("CAPTURE", paid)],
                   fulfillments=[{"createdAt": iso(shipped), "status": "SUCCESS", "deliveredAt": iso(delivered),
                                  "inTransitAt": iso(shipped), "displayStatus": "DELIVERED"},
                                 {"createdAt": iso(created), "status": "CANCELLED", "deliveredAt": None,
                                  "inTransitAt": None, "displayStatus": "CANCELED"}])
    guest = order(43, created=created, updated=created + timedelta(hours=1), cust=None,
                  lines=[line(4, mug())], cancelled=created + timedelta(hours=1))
    server.put(record, guest)
    (batch,) = run(open_source(server, clock), T0, NOW)
    orders = {r["order_id"]: r for r in batch.rows["orders"]}
    assert orders["42"] == {
        "order_id": "42", "shop_id": "s1", "customer_id": "555", "platform": "shopify",
        "created_at": iso(created), "paid_at": iso(paid - timedelta(minutes=2)), "shipped_at": iso(shipped),
        "delivered_at": iso(delivered), "closed_at": None, "refunded_at": None, "total_amount": "58.80",
        "currency": "USD", "receiver_city": "Hangzhou", "updated_at": iso(delivered)}
    assert orders["43"]["customer_id"] == "guest:43" and orders["43"]["closed_at"] == iso(created + timedelta(hours=1))
    assert orders["43"]["paid_at"] is None
    items = [r for r in batch.rows["order_items"] if r["order_id"] == "42"]
    assert [(i["line_no"], i["product_id"], i["quantity"], i["unit_price"]) for i in items] == [
        (1, "7001", 2, "19.90"), (2, "7002", 1, "19.90"), (3, "custom:3", 1, "19.00")]
    products = {p["product_id"]: p for p in batch.rows["products"]}
    assert products["7001"] == {"product_id": "7001", "shop_id": "s1", "title": "Cat mug", "category": "Kitchen",
                                "style_tags": "cute;gift", "followup_days": None}
    assert (products["7002"]["category"], products["7002"]["style_tags"]) == (None, None)   # the frame fills in
    assert products["custom:3"]["title"] == "Engraving"
    (cust,) = batch.rows["customers"]
    assert cust == {"customer_id": "555", "shop_id": "s1", "name": "Mei Lin", "phone": "+8613800138000",
                    "email": "mei@example.com", "city": "Suzhou", "member_level": None,
                    "registered_at": iso(T0 - timedelta(days=90)), "opt_out": True,
                    "updated_at": iso(T0 - timedelta(days=1))}


def test_logs_carry_no_contact_or_token(server, clock, caplog):
    server.put(simple(1, T0, cust=customer(1, email="li.lei@example.com", phone="+8613711112222", created=T0),
                      total="-1"))
    server.script = [("status", 503), ("retry_after", 429, 1)]
    with caplog.at_level(logging.DEBUG, logger="crm.sources.shopify"):
        batches = run(open_source(server, clock), T0, NOW)
    assert batches[0].rejects and caplog.records
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in ("li.lei@example.com", "13711112222", TOKEN):
        assert secret not in text


# ------------------------------------------------------------------------------------------------ into the database
# the extract frame (crm.sources.extract: drop files, watermark) and the ingest, then `crm extract` as a user runs it


def write_config(tmp_path, server):
    path = tmp_path / "shops.toml"
    path.write_text(f'''
[[shops]]
shop_id = "s1"
timezone = "America/New_York"

[shops.source]
kind = "shopify"
endpoint = "{server.url}"
api_version = "2025-10"
token_env = "{VAR}"
''', encoding="utf-8")
    return path


def extract_and_ingest(tmp_path, server, clock):
    config = write_config(tmp_path, server)
    db, landing = tmp_path / "crm.duckdb", tmp_path / "landing"
    summary = extract(db, load_settings(config), "s1", landing, as_of=clock.now, env={VAR: TOKEN}, sleep=clock.sleep)
    load_landing.fn(str(landing), str(db), str(config))
    return summary


def staged(db, sql):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def utc(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_unpaid_paid_refunded_reach_staging_run_by_run(tmp_path, server, clock):
    db = tmp_path / "crm.duckdb"
    paid_at, refund_at = T0 + timedelta(hours=2), T0 + timedelta(hours=30)
    clock.now = T0 + timedelta(hours=1)
    server.put(simple(1, T0, financial="PENDING"), simple(2, T0 + timedelta(minutes=5), total="-3"))
    query = "SELECT order_id, platform, paid_at, refunded_at FROM staging.orders ORDER BY order_id"

    first = extract_and_ingest(tmp_path, server, clock)
    assert (first["started_from"], first["orders"], first["rejects"]) == ("backfill", 1, 1)
    assert staged(db, query) == [("1", "shopify", None, None)]
    (reason,) = staged(db, "SELECT reason FROM ops.quarantine WHERE source_file = 'shopify:s1 order 2'")
    assert "negative" in reason[0]

    clock.set(paid_at)
    server.modify(1, financial="PAID", transactions=[tx("SALE", paid_at)])
    clock.advance(60)
    assert extract_and_ingest(tmp_path, server, clock)["started_from"] == "watermark"
    assert staged(db, query) == [("1", "shopify", paid_at, None)]

    clock.set(refund_at)
    server.modify(1, financial="REFUNDED", refunds=[{"createdAt": iso(refund_at)}])
    clock.advance(60)
    extract_and_ingest(tmp_path, server, clock)
    assert staged(db, query) == [("1", "shopify", paid_at, refund_at)]
    assert staged(db, "SELECT watermark FROM ops.source_watermarks WHERE shop_id = 's1' AND source = 'shopify'") \
        == [(clock.now.replace(microsecond=0),)]
    # the overlap re-read the reject each time; it is quarantined once
    assert staged(db, "SELECT count(*) FROM ops.quarantine WHERE source_file = 'shopify:s1 order 2'") == [(1,)]


def test_a_failed_extract_keeps_what_it_wrote_and_the_rerun_finishes(tmp_path, server, clock):
    db = tmp_path / "crm.duckdb"
    expected = many(server, 25)
    server.script = [None] + [("status", 503)] * shopify.MAX_ATTEMPTS       # page 2 never answers this run
    with pytest.raises(SourceUnavailable):
        extract_and_ingest(tmp_path, server, clock)
    (mark,) = staged(db, "SELECT watermark FROM ops.source_watermarks")
    assert mark[0] == T0 + timedelta(minutes=9)                    # moved past page 1 only
    assert len(list((tmp_path / "landing" / "orders").glob("*.ndjson"))) == 1
    extract_and_ingest(tmp_path, server, clock)
    assert staged(db, "SELECT order_id FROM staging.orders ORDER BY order_id") == [(i,) for i in expected]
    # the last page's high water is T, to the second (Shopify's times have no fraction)
    assert staged(db, "SELECT watermark FROM ops.source_watermarks") == [(clock.now.replace(microsecond=0),)]


@pytest.fixture
def cli_env(local_server, server):
    api = orchestration.running_server(local_server)["api_url"]
    server.use_real_time()                 # `crm` really sleeps: the bucket refills by the wall clock
    return {"PREFECT_API_URL": api, VAR: TOKEN, "DO_NOT_TRACK": "1"}


def test_crm_extract_lands_a_shopify_shop_and_a_killed_run_loses_nothing(tmp_path, server, clock, cli_env):
    db, config = tmp_path / "crm.duckdb", write_config(tmp_path, server)
    expected = many(server, 35)                       # four pages of ten
    t1 = iso(clock.now)
    args = ["--db", str(db), "--config", str(config), "extract", "--shop", "s1", "--as-of", t1]

    # a run killed while it waits for page 3: pages 1 and 2 are written, their watermark recorded
    server.script = [None, None, ("hold",)]
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "200", **cli_env}
    proc = subprocess.Popen([str(BIN), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        for _ in range(1200):
            if len(server.requests) >= 3 or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert len(server.requests) >= 3, proc.communicate(timeout=5)
        for _ in range(100):                          # batch 2 is committed before page 3 is asked for
            if staged(db, "SELECT count(*) FROM ops.source_watermarks") == [(1,)]:
                break
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    server.release.set()
    assert staged(db, "SELECT watermark FROM ops.source_watermarks") == [(T0 + timedelta(minutes=19),)]

    # the rerun starts from that watermark (less the overlap) and ingests the killed run's files too
    again = crm(*args, env=cli_env)
    assert again.returncode == 0, again.stderr
    assert "s1 (shopify)" in again.stdout and "from the watermark" in again.stdout
    assert staged(db, "SELECT order_id, count(*) FROM staging.orders GROUP BY order_id ORDER BY order_id") == \
        [(i, 1) for i in expected]
    assert staged(db, "SELECT DISTINCT platform FROM staging.orders") == [("shopify",)]
    assert staged(db, "SELECT watermark FROM ops.source_watermarks") == [(utc(t1),)]

    # a change on the platform arrives with the next run; nothing is duplicated
    clock.advance(120)
    server.modify(1007, financial="PAID", transactions=[tx("SALE", clock.now)])
    later = crm("--db", str(db), "--config", str(config), "extract", "--shop", "s1", "--as-of", iso(clock.now),
                env=cli_env)
    assert later.returncode == 0, later.stderr
    assert staged(db, "SELECT paid_at FROM staging.orders WHERE order_id = '1007'") == [(clock.now.replace(microsecond=0),)]
    assert staged(db, "SELECT count(*) FROM staging.orders") == [(35,)]


def test_crm_extract_with_a_wrong_token_is_one_error_line(tmp_path, server, cli_env):
    db, config = tmp_path / "crm.duckdb", write_config(tmp_path, server)
    many(server, 2)
    result = crm("--db", str(db), "--config", str(config), "extract", "--shop", "s1",
                 env={**cli_env, VAR: "shpat_not_the_right_one"})
    assert result.returncode == 2, result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "'s1'" in errors[0] and "401" in errors[0] and VAR in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert "shpat_not_the_right_one" not in result.stderr + result.stdout
