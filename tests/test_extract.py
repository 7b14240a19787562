"""The extraction frame (crm/sources, docs/rules.md §11), whatever the platform: where a run starts, drop files
written whole and in order, the watermark moving only after a batch is written (never back), columns the
platform does not know kept as staged, and `crm extract`'s one-line refusals before anything runs."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import Landing, crm, customer, rows
from crm.config import load_settings
from crm.sources import Batch, SourceUnavailable, extract, start_of
from crm.sources.landing import write_batch
from transforms.ingest import discover

T = datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)

CONFIG = """
[[shops]]
shop_id = "s1"
[shops.source]
kind = "taobao"
app_key = "23456789"
app_secret_env = "CRM_S1_TOP_SECRET"
session_env = "CRM_S1_TOP_SESSION"
backfill_days = 7
overlap_minutes = 15

[[shops]]
shop_id = "s2"
"""
ENV = {"CRM_S1_TOP_SECRET": "x", "CRM_S1_TOP_SESSION": "y"}


def order(order_id: str, updated: datetime, **kw) -> dict:
    return {"order_id": order_id, "shop_id": "s1", "customer_id": "b1", "platform": "taobao",
            "created_at": "2026-11-20T10:00:00+08:00", "total_amount": "10.00", "updated_at": updated.isoformat(), **kw}


class FakeSource:
    """A provider that yields the given batches, then raises what it is given (a platform going down)."""

    def __init__(self, batches: list[Batch], then: Exception | None = None):
        self.given, self.then, self.asked = batches, then, []

    def batches(self, since, until):
        self.asked.append((since, until))
        yield from self.given
        if self.then:
            raise self.then


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "shops.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


@pytest.fixture
def fake(monkeypatch):
    holder = {}

    def use(source: FakeSource) -> FakeSource:
        monkeypatch.setattr("crm.sources.open_source", lambda shop, cfg, env, sleep=None: source)
        holder["source"] = source
        return source
    return use


def test_a_run_starts_at_since_else_the_watermark_less_the_overlap_else_the_backfill(config):
    cfg = load_settings(config).shops[0].source
    assert start_of(cfg, None, T, None) == T - timedelta(days=7)
    assert start_of(cfg, T - timedelta(hours=1), T, None) == T - timedelta(hours=1, minutes=15)
    assert start_of(cfg, T - timedelta(hours=1), T, T - timedelta(days=30)) == T - timedelta(days=30)


def test_drop_files_are_written_whole_in_order_and_never_collide(tmp_path):
    landing = tmp_path / "landing"
    first = write_batch(landing, "taobao", "s1/x", {"orders": [order("o1", T)], "customers": []})
    second = write_batch(landing, "taobao", "s1/x", {"orders": [order("o1", T)]})
    assert [p.parent.name for p in first + second] == ["orders", "orders"]
    assert first[0].name < second[0].name and first[0].name.startswith("taobao-s1_x-"), "they sort as written"
    assert first[0].read_text() == second[0].read_text() and first[0] != second[0]
    (landing / "orders" / f".{first[0].name}.tmp").write_text('{"order_id": "half')   # a write cut short
    found, ignored = discover(landing)
    assert [f.path.name for f in found] == [first[0].name, second[0].name] and ignored == []
    assert write_batch(landing, "taobao", "s1", {"orders": []}) == []


def test_the_watermark_moves_after_each_written_batch_and_a_failure_keeps_it(tmp_path, config, fake):
    db, landing = tmp_path / "crm.duckdb", tmp_path / "landing"
    source = fake(FakeSource([Batch({"orders": [order("o1", T - timedelta(days=6))]}, [], T - timedelta(days=5), 3),
                              Batch({"orders": [order("o2", T - timedelta(days=5))]}, [], None, 2)],
                             then=SourceUnavailable("shop 's1': the platform did not answer")))
    with pytest.raises(SourceUnavailable):
        extract(db, load_settings(config), "s1", landing, as_of=T, env=ENV)
    assert source.asked == [(T - timedelta(days=7), T)], "a first run backfills backfill_days"
    assert len(list((landing / "orders").glob("*.ndjson"))) == 2, "both batches written before the failure"
    assert rows(db, "SELECT shop_id, source, watermark FROM ops.source_watermarks") == [
        ("s1", "taobao", T - timedelta(days=5))], "moved by the first batch only (the second said None)"

    again = fake(FakeSource([Batch({"orders": [order("o3", T)]}, [], T - timedelta(days=6), 1),
                             Batch({}, [], T, 1)]))
    steps = []
    summary = extract(db, load_settings(config), "s1", landing, as_of=T, env=ENV, step=lambda what, n: steps.append(what))
    assert again.asked == [(T - timedelta(days=5, minutes=15), T)], "from the watermark less overlap_minutes"
    assert steps == ["s1: 1 pages, 1 orders", "s1: 2 pages, 1 orders"], "the progress counts pages and orders"
    assert summary["started_from"] == "watermark" and summary["pages"] == 2 and summary["orders"] == 1
    assert rows(db, "SELECT watermark FROM ops.source_watermarks") == [(T,)], "never back, then forward to T"


def test_a_column_the_platform_does_not_know_keeps_what_is_staged(tmp_path, config, fake):
    from flows.ingest import load_landing

    db, landing = tmp_path / "crm.duckdb", Landing(tmp_path / "landing")
    landing.csv("customers", "crm.csv", [customer("b1", opt_out="true", member_level="3",
                                                  registered_at="2025-01-01T00:00:00+08:00")])
    landing.csv("products", "p.csv", [{"product_id": "p1", "shop_id": "s1", "title": "枕头", "category": "home",
                                       "style_tags": "cute;gift", "followup_days": "10"}])
    load_landing.fn(str(landing.root), str(db), str(config))
    extracted = {"customers": [
        {"customer_id": "b1", "shop_id": "s1", "name": "张三", "phone": None, "email": None, "city": "杭州市",
         "member_level": None, "registered_at": "2026-11-20T10:00:00+08:00", "opt_out": None,
         "updated_at": "2026-11-21T10:00:00+08:00"},
        {"customer_id": "b2", "shop_id": "s1", "name": "李四", "phone": None, "email": None, "city": None,
         "member_level": None, "registered_at": "2026-11-20T10:00:00+08:00", "opt_out": None,
         "updated_at": "2026-11-21T10:00:00+08:00"}],
        "products": [{"product_id": "p1", "shop_id": "s1", "title": "枕头 2", "category": None, "style_tags": None,
                      "followup_days": None},
                     {"product_id": "p2", "shop_id": "s1", "title": "杯子", "category": None, "style_tags": None,
                      "followup_days": None}]}
    fake(FakeSource([Batch(extracted, [], T, 1)]))
    extract(db, load_settings(config), "s1", landing.root, as_of=T, env=ENV)
    load_landing.fn(str(landing.root), str(db), str(config))
    assert rows(db, "SELECT customer_id, name, phone, email, city, member_level, opt_out, registered_at "
                    "FROM staging.customers ORDER BY 1") == [
        ("b1", "张三", "+8613800000001", "a@example.com", "杭州市", 3, True,
         datetime(2024, 12, 31, 16, 0, tzinfo=timezone.utc)),
        ("b2", "李四", None, None, None, 0, False, datetime(2026, 11, 20, 2, 0, tzinfo=timezone.utc))]
    assert rows(db, "SELECT product_id, title, category, style_tags, followup_days FROM staging.products ORDER BY 1") == [
        ("p1", "枕头 2", "home", ["cute", "gift"], 10), ("p2", "杯子", "unknown", None, None)]


def test_rejects_are_quarantined_with_their_source_once(tmp_path, config, fake):
    db, landing = tmp_path / "crm.duckdb", tmp_path / "landing"
    reject = {"entity": "orders", "ref": "id 42", "reason": "no created time", "raw": '{"id": 42}'}
    for _ in range(2):                                        # the overlap reads the bad record again
        fake(FakeSource([Batch({}, [reject], T, 1)]))
        summary = extract(db, load_settings(config), "s1", landing, as_of=T, env=ENV)
        assert summary["rejects"] == 1
    assert rows(db, "SELECT entity, source_file, row_number, \"row\", reason, ingest_id FROM ops.quarantine") == [
        ("orders", "taobao:s1 id 42", None, '{"id": 42}', "no created time", None)]
    # `crm quarantine` names the record's source, not a file
    shown = crm("--db", str(db), "--config", str(config), "quarantine", env={"COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    line = next(line for line in shown.stdout.splitlines() if "taobao:s1 id 42" in line)
    assert "record" in line and "whole file" not in line


# --------------------------------------------------------------------------------------------------
# the command's refusals: one line, before any flow runs (nothing written)


def one_error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("args, words", [
    (["--shop", "s2"], "shops.toml: shop 's2' has no [shops.source]: nothing to extract from"),
    (["--shop", "nope"], "shops.toml: --shop 'nope': no such shop in the configuration"),
    (["--since", "2026-11-20T10:00:00"], "--since: '2026-11-20T10:00:00' has no offset"),
    (["--since", "2026-11-25T00:00:00Z", "--as-of", "2026-11-24T00:00:00Z"], "--since 2026-11-25T00:00:00Z: must be "
                                                                             "before T (2026-11-24T00:00:00Z)"),
])
def test_crm_extract_refuses_bad_options_in_one_line(tmp_path, config, args, words):
    db = tmp_path / "crm.duckdb"
    line = one_error(crm("--db", str(db), "--config", str(config), "extract", *args, env=ENV))
    assert words in line
    assert not db.exists(), "nothing ran"


def test_crm_extract_without_any_source_says_so(tmp_path):
    plain = tmp_path / "plain.toml"
    plain.write_text('[[shops]]\nshop_id = "s1"\n', encoding="utf-8")
    line = one_error(crm("--db", str(tmp_path / "crm.duckdb"), "--config", str(plain), "extract"))
    assert "no shop has a [shops.source]" in line and str(plain) in line


# --------------------------------------------------------------------------------------------------
# what the extract task retries: not a platform the provider already retried until it gave up


class _Failed:
    """A task run's final state, as Prefect hands it to a retry condition: its result raises the error."""

    def __init__(self, error: Exception):
        self.error = error

    def result(self):
        raise self.error


def test_the_extract_task_retries_a_locked_file_but_not_a_platform_that_stayed_down():
    from crm.db import DatabaseLocked
    from crm.sources import SourceError
    from flows.extract import extract_shop, retry_extract

    assert extract_shop.retry_condition_fn is retry_extract
    assert retry_extract(None, None, _Failed(DatabaseLocked("crm.duckdb: held by another run"))) is True
    assert retry_extract(None, None, _Failed(ConnectionResetError("reset while writing"))) is True
    assert retry_extract(None, None, _Failed(SourceUnavailable("shop 's1': Shopify gave 503, 6 times"))) is False
    assert retry_extract(None, None, _Failed(SourceError("shop 's1': the session key was refused"))) is False
