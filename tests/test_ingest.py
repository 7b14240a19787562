"""Ingest (docs/rules.md §1): bad rows to quarantine, newest wins, idempotent re-ingest, DST-correct local times."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone

import duckdb
import polars as pl
import pytest

from conftest import customer, order
from transforms.ingest import IngestError, load
from transforms.validate import ValidationFailed, validate_ingest


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(timezone.utc)


def quarantined(con) -> list[tuple]:
    return con.execute(
        "SELECT entity, regexp_extract(source_file, '[^/]+$'), row_number, \"row\", reason "
        "FROM ops.quarantine ORDER BY entity, source_file, row_number"
    ).fetchall()


def staged(con, table: str, key: str) -> list[tuple]:
    return con.execute(f"SELECT * EXCLUDE (_source_file, _ingest_id, _file_ord, _row_number) "
                       f"FROM staging.{table} ORDER BY {key}").fetchall()


# ---------------------------------------------------------------------------------------- bad rows

@pytest.mark.parametrize("bad,reason", [
    ({"order_id": ""}, "missing order_id"),
    ({"created_at": "yesterday"}, 'unparsable created_at "yesterday"'),
    ({"created_at": ""}, "missing created_at"),
    ({"paid_at": "2026-13-45 10:00"}, 'unparsable paid_at "2026-13-45 10:00"'),
    ({"total_amount": "12,50元"}, 'unparsable total_amount "12,50元"'),
    ({"total_amount": "-0.01"}, "negative total_amount -0.01"),
    ({"paid_at": "2026-11-20T09:59:00+08:00"}, "paid_at before created_at"),
    ({"shop_id": "s9"}, 'unknown shop_id "s9"'),
    ({"customer_id": None}, "missing customer_id"),
    ({"updated_at": "soon"}, 'unparsable updated_at "soon"'),
])
def test_each_bad_order_row_is_quarantined_with_its_reason(con, landing, bad, reason):
    good = order("o1")
    wrong = order("o2", **bad)
    landing.csv("orders", "d1.csv", [good, wrong], header=list(good))
    result = load(con, landing.root)
    assert staged(con, "orders", "order_id")[0][0] == "o1"
    assert con.execute("SELECT count(*) FROM staging.orders").fetchone()[0] == 1, "the good row still loads"
    [(entity, file, row_number, row, why)] = quarantined(con)
    assert (entity, file, row_number) == ("orders", "d1.csv", 2)
    assert why == reason
    assert json.loads(row)["total_amount"] == wrong["total_amount"], "the row itself is kept"
    assert result.entities["orders"].rows_quarantined == 1 and result.entities["orders"].rows_loaded == 1


@pytest.mark.parametrize("entity,rows,reason", [
    ("order_items", [{"order_id": "o1", "line_no": "1", "product_id": "p1", "quantity": "0", "unit_price": "5"}],
     "quantity must be > 0, got 0"),
    ("order_items", [{"order_id": "o1", "line_no": "1", "product_id": "p1", "quantity": "1.5", "unit_price": "5"}],
     'unparsable quantity "1.5"'),
    ("order_items", [{"order_id": "o1", "line_no": "x", "product_id": "p1", "quantity": "1", "unit_price": "5"}],
     'unparsable line_no "x"'),
    ("order_items", [{"order_id": "o1", "line_no": "1", "product_id": "p1", "quantity": "1", "unit_price": "-5"}],
     "negative unit_price -5.00"),
    ("reviews", [{"order_id": "o1", "created_at": "2026-11-21T10:00:00+08:00", "rating": "7", "text": "好"}],
     "rating must be 1-5, got 7"),
    ("reviews", [{"order_id": "o1", "created_at": "2026-11-21T10:00:00+08:00", "rating": "0", "text": "好"}],
     "rating must be 1-5, got 0"),
    ("reviews", [{"order_id": "o404", "created_at": "2026-11-21 10:00:00", "rating": "5", "text": "好"}],
     'unknown order_id "o404": cannot place a created_at without offset'),
    ("customers", [customer("c9", member_level="gold")], 'unparsable member_level "gold"'),
    ("customers", [customer("c9", member_level="-1")], "negative member_level -1"),
    ("customers", [customer("c9", shop_id="nowhere")], 'unknown shop_id "nowhere"'),
    ("customers", [customer("c9", opt_out="maybe")], 'unparsable opt_out "maybe"'),
    ("products", [{"product_id": "p1", "shop_id": "s1", "title": "", "category": "toys"}], "missing title"),
    ("products", [{"product_id": "p1", "shop_id": "s1", "title": "t", "category": "toys", "followup_days": "-3"}],
     "negative followup_days -3"),
    ("suppressions", [{"customer_id": "c1", "channel": "fax", "created_at": "2026-11-01T00:00:00Z"}],
     'channel must be sms, email, call or all, got "fax"'),
    ("suppressions", [{"channel": "sms", "created_at": "2026-11-01T00:00:00Z"}], "names no customer_id, phone or email"),
])
def test_each_bad_row_of_other_entities(con, landing, entity, rows, reason):
    landing.csv("orders", "o.csv", [order("o1")])
    landing.csv(entity, "x.csv", rows)
    load(con, landing.root)
    [(got_entity, file, row_number, _row, why)] = quarantined(con)
    assert (got_entity, file, row_number, why) == (entity, "x.csv", 1, reason)
    assert con.execute("SELECT count(*) FROM staging.orders").fetchone()[0] == 1


def test_several_reasons_are_all_named(con, landing):
    landing.csv("orders", "d1.csv", [order("o1", created_at="never", total_amount="-3")])
    load(con, landing.root)
    assert quarantined(con)[0][4] == 'unparsable created_at "never"; negative total_amount -3.00'


def test_malformed_lines_and_unreadable_files(con, landing):
    header = "order_id,shop_id,customer_id,platform,created_at,total_amount,updated_at\n"
    ok = "o1,s1,c1,taobao,2026-11-20T10:00:00+08:00,10,2026-11-20T10:00:00+08:00\n"
    landing.raw("orders", "a.csv", header + ok + "o2,s1,c1,taobao,2026-11-20T10:00:00+08:00,10,x,EXTRA\n")
    landing.raw("orders", "b.ndjson", json.dumps(order("o3")) + "\n{not json\n[1, 2]\n\n")
    landing.raw("orders", "c.parquet", b"PAR1 this is not parquet at all")
    landing.raw("orders", "d.xlsx", b"binary")
    load(con, landing.root)
    assert {r[0] for r in staged(con, "orders", "order_id")} == {"o1", "o3"}
    rows = {(r[1], r[2]): r for r in quarantined(con)}
    assert rows[("a.csv", 2)][4].startswith("malformed CSV line 3: TOO MANY COLUMNS")
    assert rows[("a.csv", 2)][3].endswith("x,EXTRA"), "the raw line is kept"
    assert rows[("b.ndjson", 2)][3:] == ("{not json", "malformed JSON line")
    assert rows[("b.ndjson", 3)][4] == "line is not a JSON object"
    assert rows[("c.parquet", None)][4].startswith("unreadable parquet file")
    assert rows[("d.xlsx", None)][4].startswith("unsupported file type")
    assert len(rows) == 5, "the blank line is not a row"
    status = dict(con.execute("SELECT regexp_extract(path, '[^/]+$'), status FROM ops.ingested_files").fetchall())
    assert status == {"a.csv": "loaded", "b.ndjson": "loaded", "c.parquet": "quarantined", "d.xlsx": "quarantined"}


def test_missing_landing_folder(con, tmp_path):
    with pytest.raises(IngestError, match="landing folder not found"):
        load(con, tmp_path / "nope")


# ------------------------------------------------------------------------------------- newest wins

def test_newest_updated_at_wins_across_formats_and_drops(con, landing):
    landing.parquet("orders", "2026-11-20_d1.parquet", [order("o1", total_amount="10.00", updated_at="2026-11-20T10:00:00+08:00"),
                                                         order("o2", total_amount="20.00", updated_at="2026-11-20T10:00:00+08:00")])
    landing.csv("orders", "2026-11-21_d2.csv", [order("o1", total_amount="11.00", paid_at="2026-11-20T10:05:00+08:00",
                                                      updated_at="2026-11-20T10:05:00+08:00")])
    # a later drop that is stale for o1 (older updated_at) but newer for o2
    landing.ndjson("orders", "2026-11-22_d3.ndjson", [order("o1", total_amount="9.00", updated_at="2026-11-20T09:00:00+08:00"),
                                                      order("o2", total_amount="22.00", updated_at="2026-11-20 11:00:00")])
    load(con, landing.root)
    got = dict(con.execute("SELECT order_id, total_amount::VARCHAR FROM staging.orders").fetchall())
    assert got == {"o1": "11.00", "o2": "22.00"}
    assert con.execute("SELECT paid_at FROM staging.orders WHERE order_id = 'o1'").fetchone()[0] == utc("2026-11-20T10:05:00+08:00")


def test_newest_wins_across_separate_ingests_and_ties_go_to_the_later_drop(con, landing):
    landing.csv("orders", "d1.csv", [order("o1", total_amount="10.00")])
    load(con, landing.root)
    landing.csv("orders", "d2.csv", [order("o1", total_amount="12.00")])            # same updated_at
    landing.csv("orders", "d0_late_but_old.csv", [order("o1", total_amount="1.00", updated_at="2026-11-01T00:00:00Z")])
    load(con, landing.root)
    assert con.execute("SELECT total_amount::VARCHAR FROM staging.orders").fetchall() == [("12.00",)]


def test_unversioned_entities_take_the_later_drop(con, landing):
    landing.csv("products", "p1.csv", [{"product_id": "p1", "shop_id": "s1", "title": "old", "category": "c"}])
    landing.ndjson("products", "p2.ndjson", [{"product_id": "p1", "shop_id": "s1", "title": "new", "category": "c",
                                             "style_tags": "Cute; gift;", "followup_days": 14}])
    load(con, landing.root)
    assert con.execute("SELECT title, style_tags, followup_days FROM staging.products").fetchall() == [("new", ["cute", "gift"], 14)]


def test_bad_newer_version_keeps_the_good_older_one(con, landing):
    landing.csv("orders", "d1.csv", [order("o1", total_amount="10.00")])
    landing.csv("orders", "d2.csv", [order("o1", total_amount="-1", updated_at="2026-11-21T00:00:00Z")])
    load(con, landing.root)
    assert con.execute("SELECT total_amount::VARCHAR FROM staging.orders").fetchall() == [("10.00",)]
    assert len(quarantined(con)) == 1


# --------------------------------------------------------------------------------- re-ingest, drops

def _snapshot(con) -> dict:
    tables = ["orders", "order_items", "products", "customers", "reviews", "suppressions"]
    snap = {t: staged(con, t, "ALL") for t in tables}
    snap["quarantine"] = con.execute("SELECT count(*) FROM ops.quarantine").fetchone()[0]
    snap["manifest"] = con.execute("SELECT count(*) FROM ops.ingested_files").fetchone()[0]
    return snap


def _some_drop(landing):
    landing.csv("customers", "c.csv", [customer("c1"), customer("c2", phone="", opt_out="true")])
    landing.parquet("orders", "d1.parquet", [order("o1"), order("o2", customer_id="c2", total_amount="-1")])
    landing.csv("order_items", "i.csv", [{"order_id": "o1", "line_no": 1, "product_id": "p1", "quantity": 2, "unit_price": "49.50"}])
    landing.csv("reviews", "r.csv", [{"order_id": "o1", "created_at": "2026-11-25 20:00:00", "rating": 5, "text": "很好,就是有点慢"}])
    landing.csv("suppressions", "s.csv", [{"phone": "13800000009", "channel": "sms", "created_at": "2026-11-01 00:00:00"}] * 2)


def test_reingest_changes_nothing(con, landing):
    _some_drop(landing)
    first = load(con, landing.root)
    before = _snapshot(con)
    again = load(con, landing.root)
    assert (first.files_new, again.files_new, again.ingest_id) == (5, 0, None)
    assert _snapshot(con) == before
    assert con.execute("SELECT count(*) FROM staging.suppressions").fetchone()[0] == 1, "an exact repeat is kept once"


def test_a_renamed_copy_is_not_read_again(con, landing):
    _some_drop(landing)
    load(con, landing.root)
    before = _snapshot(con)
    shutil.copy(landing.root / "orders" / "d1.parquet", landing.root / "orders" / "d1_copy.parquet")
    result = load(con, landing.root)
    assert result.files_new == 0 and _snapshot(con) == before


def test_second_drop_is_the_only_file_read(con, landing):
    _some_drop(landing)
    load(con, landing.root)
    landing.csv("orders", "d2.csv", [order("o1", paid_at="2026-11-20T10:30:00+08:00", updated_at="2026-11-20T10:30:00+08:00"),
                                     order("o3")])
    result = load(con, landing.root)
    assert (result.files_seen, result.files_new) == (6, 1)
    assert result.entities["orders"].rows_read == 2 and result.entities["customers"].rows_read == 0
    manifest = con.execute("SELECT regexp_extract(path, '[^/]+$'), ingest_id FROM ops.ingested_files ORDER BY 2, 1").fetchall()
    assert manifest[-1] == ("d2.csv", result.ingest_id) and len(manifest) == 6
    assert {r[0] for r in staged(con, "orders", "order_id")} == {"o1", "o3"}
    assert con.execute("SELECT paid_at IS NOT NULL FROM staging.orders WHERE order_id = 'o1'").fetchone()[0]


# -------------------------------------------------------------------------------- time zones, DST

def test_naive_local_times_in_a_dst_zone(con, landing):
    ny = dict(shop_id="s2", customer_id="c2")
    landing.csv("orders", "d1.csv", [
        order("before", created_at="2026-03-08 01:30:00", updated_at="2026-03-08 01:30:00", **ny),   # EST, UTC-5
        order("after", created_at="2026-03-08 03:30:00", updated_at="2026-03-08 03:30:00", **ny),    # EDT, UTC-4
        order("summer", created_at="2026-07-01T12:00:00", updated_at="2026-07-01T12:00:00", **ny),
        order("autumn", created_at="2026-11-01 12:00:00", updated_at="2026-11-01 12:00:00", **ny),   # EST again
        order("zulu", created_at="2026-03-08T01:30:00Z", updated_at="2026-03-08T01:30:00Z", **ny),
        order("offset", created_at="2026-03-08T01:30:00-0300", updated_at="2026-03-08T01:30:00-03:00", **ny),
        order("shanghai", created_at="2026-03-08 01:30:00", updated_at="2026-03-08 01:30:00"),        # UTC+8, no DST
    ])
    load(con, landing.root)
    got = dict(con.execute("SELECT order_id, created_at FROM staging.orders").fetchall())
    assert got == {
        "before": utc("2026-03-08T06:30:00+00:00"), "after": utc("2026-03-08T07:30:00+00:00"),
        "summer": utc("2026-07-01T16:00:00+00:00"), "autumn": utc("2026-11-01T17:00:00+00:00"),
        "zulu": utc("2026-03-08T01:30:00+00:00"), "offset": utc("2026-03-08T04:30:00+00:00"),
        "shanghai": utc("2026-03-07T17:30:00+00:00"),
    }


def test_review_naive_time_is_in_its_orders_shop_zone(con, landing):
    landing.csv("orders", "o.csv", [order("o1", shop_id="s2", created_at="2026-07-01T12:00:00Z", updated_at="2026-07-01T12:00:00Z")])
    landing.csv("reviews", "r.csv", [{"order_id": "o1", "created_at": "2026-07-03 09:00:00", "rating": 2, "text": "broken"}])
    load(con, landing.root)
    assert con.execute("SELECT created_at FROM staging.reviews").fetchone()[0] == utc("2026-07-03T13:00:00+00:00")


def test_parquet_typed_timestamps(con, landing):
    frame = pl.DataFrame({
        "order_id": ["aware", "naive"], "shop_id": ["s2", "s2"], "customer_id": ["c", "c"], "platform": ["jd", "jd"],
        "created_at": [datetime(2026, 3, 8, 7, 30), datetime(2026, 3, 8, 3, 30)],
        "total_amount": [1.5, 2.0], "updated_at": [datetime(2026, 3, 8, 7, 30), datetime(2026, 3, 8, 3, 30)],
    }).with_columns(
        pl.when(pl.col("order_id") == "aware").then(pl.col("created_at")).otherwise(None).alias("paid_at"))
    aware = frame.filter(pl.col("order_id") == "aware").with_columns(
        pl.col("created_at", "updated_at", "paid_at").dt.replace_time_zone("UTC"))
    landing.parquet("orders", "aware.parquet", aware)
    landing.parquet("orders", "naive.parquet", frame.filter(pl.col("order_id") == "naive"))
    load(con, landing.root)
    got = dict(con.execute("SELECT order_id, created_at FROM staging.orders").fetchall())
    assert got == {"aware": utc("2026-03-08T07:30:00+00:00"), "naive": utc("2026-03-08T07:30:00+00:00")}
    assert con.execute("SELECT total_amount::VARCHAR, currency FROM staging.orders WHERE order_id = 'aware'").fetchone() == ("1.50", "CNY")


def test_naive_parquet_timestamps_are_placed_as_their_text_would_be(con, landing):
    """A naive Parquet TIMESTAMP is the shop's local time, as naive text is, and is placed the same way without
    being printed and parsed: the same instants across a DST change (a time that does not exist, one that
    happens twice), in a fixed zone, and in quarantine the same reason for an infinite one."""
    times = {"gap": "2026-03-08 02:30:00", "twice": "2026-11-01 01:30:00", "summer": "2026-07-01 12:00:00.25",
             "winter": "2026-01-15 23:59:59", "inf": "infinity"}
    shops = {"ny": ("s2", "c2"), "sh": ("s1", "c1")}
    rows = [order(f"csv-{s}-{k}", shop_id=shop, customer_id=cust, created_at=v, updated_at="2026-07-01 12:00:00")
            for s, (shop, cust) in shops.items() for k, v in times.items()]
    landing.csv("orders", "text.csv", rows)
    (landing.root / "orders").mkdir(exist_ok=True)
    values = ", ".join(f"('pq-{s}-{k}', '{shop}', '{cust}', '{v}'::TIMESTAMP)"
                       for s, (shop, cust) in shops.items() for k, v in times.items())
    duckdb.sql(f"COPY (SELECT id AS order_id, shop AS shop_id, cust AS customer_id, 'jd' AS platform, ts AS created_at, "
               f"99.5 AS total_amount, TIMESTAMP '2026-07-01 12:00:00' AS updated_at FROM (VALUES {values}) v(id, shop, cust, ts)) "
               f"TO '{landing.root / 'orders' / 'naive.parquet'}' (FORMAT parquet)")
    assert duckdb.sql(f"DESCRIBE SELECT created_at FROM '{landing.root / 'orders' / 'naive.parquet'}'").fetchone()[1] == "TIMESTAMP"
    load(con, landing.root)
    got = dict(con.execute("SELECT order_id, created_at FROM staging.orders").fetchall())
    assert len(got) == 16
    for s in shops:
        for k in times:
            if k != "inf":
                assert got[f"pq-{s}-{k}"] == got[f"csv-{s}-{k}"], (s, k)
    # New York: a time the spring change skips takes the offset from before it; one the autumn change repeats is the first
    assert got["pq-ny-gap"] == utc("2026-03-08T07:30:00+00:00") and got["pq-ny-twice"] == utc("2026-11-01T05:30:00+00:00")
    assert got["pq-sh-summer"] == utc("2026-07-01T04:00:00.250000+00:00")
    by_file = {(r[1], json.loads(r[3])["order_id"]): r[4] for r in quarantined(con)}
    assert set(by_file) == {(f, f"{p}-{s}-inf") for f, p in (("text.csv", "csv"), ("naive.parquet", "pq")) for s in shops}
    assert set(by_file.values()) == {'unparsable created_at "infinity"'}, by_file


# ------------------------------------------------------------------------------------- validation

def test_orphans_are_reported_not_fatal(con, landing):
    landing.csv("orders", "o.csv", [order("o1", customer_id="ghost")])
    landing.csv("order_items", "i.csv", [{"order_id": "o404", "line_no": 1, "product_id": "p", "quantity": 1, "unit_price": 1}])
    result = load(con, landing.root, validate=validate_ingest)
    failed = {(r["suite"], r["column"]): r["unexpected_count"] for r in result.validation if not r["success"]}
    assert failed == {("staging.orders", "_known_customer"): 1, ("staging.order_items", "_known_order"): 1}
    stored = con.execute("SELECT count(*) FROM ops.validation_results WHERE NOT success AND NOT critical").fetchone()[0]
    assert stored == 2
    assert con.execute("SELECT count(*) FROM staging.order_items").fetchone()[0] == 1, "reported, still loaded"


def test_critical_expectation_names_itself_and_the_row_count(con):
    con.execute("""INSERT INTO staging.order_items VALUES
        ('o1', 1, 'p', 1, 1, 'f', 7, 0, 1), ('o1', 1, 'p', 1, 1, 'f', 7, 0, 2), ('o2', 1, 'p', -4, 1, 'f', 7, 0, 3)""")
    with pytest.raises(ValidationFailed) as info:
        validate_ingest(con, 7)
    message = str(info.value)
    assert "staging.order_items: expect_compound_columns_to_be_unique(order_id,line_no) failed for 2 of 3 rows" in message
    assert "expect_column_values_to_be_between(quantity) failed for 1 of 3 rows" in message


def test_failed_validation_rolls_the_whole_run_back(con, landing):
    _some_drop(landing)

    def refuse(c, ingest_id):
        assert c.execute("SELECT count(*) FROM staging.orders").fetchone()[0] == 1   # loaded so far
        raise ValidationFailed("staging.orders: made up")

    with pytest.raises(ValidationFailed):
        load(con, landing.root, validate=refuse)
    empty = {"orders": 0, "customers": 0, "quarantine": 0, "manifest": 0}
    assert {k: v if isinstance(v, int) else len(v) for k, v in _snapshot(con).items() if k in empty} == empty
    assert load(con, landing.root).files_new == 5, "the files are still new for the next try"


def test_database_file_holds_the_result(db_path, con, landing):
    _some_drop(landing)
    load(con, landing.root)
    con.close()
    again = duckdb.connect(str(db_path), read_only=True)
    assert again.execute("SELECT count(*) FROM staging.orders").fetchone()[0] == 1
    again.close()


# ---------------------------------------------------------------------------------- parsing macros

@pytest.mark.parametrize("text,expected", [
    ("2026-11-20T10:00:00+08:00", "2026-11-20T02:00:00+00:00"),
    ("2026-11-20T10:00:00+0800", "2026-11-20T02:00:00+00:00"),
    ("2026-11-20 10:00:00+08", "2026-11-20T02:00:00+00:00"),
    ("2026-11-20T10:00:00Z", "2026-11-20T10:00:00+00:00"),
    ("2026-11-20T10:00:00.250-05:00", "2026-11-20T15:00:00.250000+00:00"),
    ("2026-11-20T10:00:00", "2026-11-20T02:00:00+00:00"),        # naive: Shanghai
    ("2026-11-20", "2026-11-19T16:00:00+00:00"),                 # a date alone is local midnight, not '-20' offset
    ("20/11/2026 10:00", None),
])
def test_timestamp_forms(con, text, expected):
    got = con.execute("SELECT crm_shop_ts(crm_text(?), 's1')", [text]).fetchone()[0]
    assert got == (utc(expected) if expected else None)


@pytest.mark.parametrize("text,expected", [("2", 2), ("2.0", 2), (" 7 ", 7), ("2.5", None), ("two", None), ("", None)])
def test_whole_numbers(con, text, expected):
    assert con.execute("SELECT crm_int(crm_text(?))", [text]).fetchone()[0] == expected


# ------------------------------------------------------------------------------------- scale (issue 13)

def _everything_staged(con) -> dict[str, list[tuple]]:
    out = {}
    for table, key in (("orders", "order_id"), ("order_items", "order_id, line_no"), ("customers", "customer_id"),
                       ("reviews", "order_id"), ("products", "product_id")):
        out[table] = con.execute(f"SELECT * EXCLUDE (_source_file, _ingest_id, _file_ord, _row_number) "
                                 f"FROM staging.{table} ORDER BY {key}").fetchall()
    out["quarantine"] = con.execute("SELECT entity, row_number, reason, \"row\" FROM ops.quarantine "
                                    "ORDER BY entity, row_number").fetchall()
    return out


def test_typed_parquet_columns_stage_as_their_text_does(tmp_path, config_path):
    """Parquet columns that already have the entity's type (TIMESTAMPTZ, DECIMAL to the cent, INTEGER,
    BOOLEAN) skip the text round trip: the same rows written as CSV text give the same staged rows, the same
    bad rows and reasons, and the same quarantined row (JSON)."""
    from crm.config import load_settings
    from crm.db import connect, sync_shops

    ts = [datetime(2026, 11, 20, 2, 0, tzinfo=timezone.utc), datetime(2026, 11, 20, 3, 30, tzinfo=timezone.utc), None]
    orders = pl.DataFrame({
        "order_id": ["o1", "o2", "neg"], "shop_id": ["s1", "s2", "s1"], "customer_id": ["c1", "c2", "c1"],
        "platform": ["jd", "amazon", "jd"], "created_at": [ts[0], ts[1], ts[0]], "paid_at": [ts[1], None, None],
        "total_amount": [12.5, 0.0, -3.0], "updated_at": [ts[1], ts[1], None],
    }).with_columns(pl.col("total_amount").cast(pl.Decimal(12, 2)))
    items = pl.DataFrame({"order_id": ["o1", "o1", "o2"], "line_no": [1, 2, 1], "product_id": ["p1", "p2", "p1"],
                          "quantity": [2, 0, 1], "unit_price": [6.25, 1.0, -0.01]}).with_columns(
        pl.col("line_no", "quantity").cast(pl.Int32), pl.col("unit_price").cast(pl.Decimal(10, 2)))
    thousandths = pl.DataFrame({"order_id": ["o3"], "line_no": [1], "product_id": ["p1"], "quantity": [1],
                                "unit_price": [1.005]}).with_columns(pl.col("unit_price").cast(pl.Decimal(10, 3)))
    customers = pl.DataFrame({
        "customer_id": ["c1", "c2"], "shop_id": ["s1", "s2"], "name": ["张三", "Ann"], "phone": ["13800000001", None],
        "email": [None, "ann@example.com"], "member_level": [3, -1], "registered_at": [ts[0], ts[0]],
        "opt_out": [True, False], "updated_at": [ts[0], ts[1]],
    }).with_columns(pl.col("member_level").cast(pl.Int16))
    reviews = pl.DataFrame({"order_id": ["o1", "o2"], "created_at": [ts[1], ts[1]], "rating": [5, 9],
                            "text": ["好", None]}).with_columns(pl.col("rating").cast(pl.Int8))

    def as_text(frame: pl.DataFrame) -> pl.DataFrame:          # what DuckDB's text cast of each value gives
        return frame.with_columns(
            [pl.col(c).dt.strftime("%Y-%m-%d %H:%M:%S+00") for c, t in frame.schema.items() if isinstance(t, pl.Datetime)]
            + [pl.col(c).cast(pl.String) for c, t in frame.schema.items() if not isinstance(t, pl.Datetime)])

    results = []
    for kind in ("parquet", "csv"):
        folder = tmp_path / kind
        for entity, frame, name in (("orders", orders, "o"), ("order_items", items, "i"), ("order_items", thousandths, "j"),
                                    ("customers", customers, "c"), ("reviews", reviews, "r")):
            (folder / entity).mkdir(parents=True, exist_ok=True)
            if kind == "parquet":
                frame.write_parquet(folder / entity / f"{name}.parquet")
            else:
                as_text(frame).with_columns(pl.col(pl.String).fill_null("")).write_csv(folder / entity / f"{name}.csv")
        c = connect(tmp_path / f"{kind}.duckdb")
        sync_shops(c, load_settings(config_path))
        load(c, folder)
        results.append(_everything_staged(c))
        c.close()
    parquet, text = results
    assert sorted(r[2] for r in parquet["quarantine"]) == [
        "missing updated_at; negative total_amount -3.00", "negative member_level -1", "negative unit_price -0.01",
        "quantity must be > 0, got 0", "rating must be 1-5, got 9", "unit_price has more than 2 decimals: 1.005"]
    assert parquet["orders"] and parquet["customers"][0][8] is True
    for table in parquet:
        if table == "quarantine":       # the raw row: JSON from Parquet, the line as written from CSV
            assert [r[:3] for r in parquet[table]] == [r[:3] for r in text[table]]
            row = next(r[3] for r in parquet[table] if r[2] == "negative unit_price -0.01")
            assert json.loads(row) == {"order_id": "o2", "line_no": "1", "product_id": "p1", "quantity": "1",
                                       "unit_price": "-0.01"}, "the row as it was, typed values as text"
        else:
            assert parquet[table] == text[table], table


def test_unchanged_files_are_not_read_again_to_hash_them(con, landing, monkeypatch):
    import os

    import transforms.ingest as ingest

    landing.csv("orders", "a.csv", [order("o1")])
    big = landing.csv("orders", "b.csv", [order("o2")])
    reads = []
    real = ingest._sha256
    monkeypatch.setattr(ingest, "_sha256", lambda path: reads.append(path.name) or real(path))
    assert load(con, landing.root).files_new == 2 and sorted(reads) == ["a.csv", "b.csv"]
    reads.clear()
    assert load(con, landing.root).files_new == 0 and reads == [], "same path, size, mtime, ctime, inode: not read"
    landing.csv("orders", "c.csv", [order("o3")])
    assert load(con, landing.root).files_new == 1 and reads == ["c.csv"], "only the new file is read"
    # the same size and mtime, other bytes (mtime set back): its ctime changed, so it is read again and loaded
    reads.clear()
    stat = big.stat()
    big.write_bytes(big.read_bytes().replace(b"o2", b"o9"))
    os.utime(big, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert big.stat().st_size == stat.st_size and big.stat().st_mtime_ns == stat.st_mtime_ns
    assert load(con, landing.root).files_new == 1 and reads == ["b.csv"]
    assert sorted(r[0] for r in con.execute("SELECT order_id FROM staging.orders").fetchall()) == ["o1", "o2", "o3", "o9"]


def test_a_later_drop_merges_into_loaded_rows(con, landing):
    """The incremental merge (loaded rows found by this run's keys, replaced by row id): newer versions
    replace, older ones are ignored, new keys are added, and a customer an order moved away from is marked
    for the next plan."""
    landing.csv("orders", "1.csv", [order(f"o{i}", customer_id="c1", updated_at="2026-11-20T10:00:00+08:00")
                                    for i in range(5)])
    load(con, landing.root)
    landing.csv("orders", "2.csv", [
        order("o1", customer_id="c2", updated_at="2026-11-20T11:00:00+08:00"),     # newer: replaces, moves
        order("o2", customer_id="c3", updated_at="2026-11-20T09:00:00+08:00"),     # older: ignored
        order("o3", customer_id="c1", total_amount="5.00", updated_at="2026-11-20T10:00:00+08:00"),  # tie: later drop
        order("o9", customer_id="c4")])
    load(con, landing.root)
    got = dict(con.execute("SELECT order_id, customer_id || ' ' || total_amount FROM staging.orders").fetchall())
    assert got == {"o0": "c1 99.00", "o1": "c2 99.00", "o2": "c1 99.00", "o3": "c1 5.00", "o4": "c1 99.00", "o9": "c4 99.00"}
    assert con.execute("SELECT count(*), count(DISTINCT order_id) FROM staging.orders").fetchone() == (6, 6)
    assert con.execute("SELECT shop_id, customer_id FROM ops.segment_dirty").fetchall() == [("s1", "c1")]


def test_duckdb_memory_and_threads_are_bounded_and_configurable(db_path, monkeypatch):
    from crm import db
    from crm.config import ConfigError

    c = db.connect(db_path)
    limit = c.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    c.close()
    assert db.memory_limit().endswith("MiB") and int(db.memory_limit()[:-3]) * 2**20 <= db.MEMORY_CAP
    assert limit.endswith("GiB") or limit.endswith("MiB")
    monkeypatch.setenv("CRM_DUCKDB_MEMORY", "1GB")
    monkeypatch.setenv("CRM_DUCKDB_THREADS", "1")
    c = db.connect(db_path)
    assert c.execute("SELECT current_setting('memory_limit'), current_setting('threads')").fetchone() == ("953.6 MiB", 1)
    c.close()
    monkeypatch.setenv("CRM_DUCKDB_MEMORY", "lots")
    with pytest.raises(ConfigError) as info:
        db.connect(db_path)
    assert str(info.value).startswith("CRM_DUCKDB_MEMORY='lots': not a DuckDB memory_limit")


@pytest.mark.parametrize("zone, arithmetic", [
    ("America/New_York", True), ("Europe/Berlin", True), ("Europe/London", True), ("Australia/Sydney", True),
    ("America/Santiago", True), ("Europe/Dublin", True), ("Asia/Tehran", True), ("America/Sao_Paulo", True),
    ("Africa/Casablanca", False), ("Australia/Lord_Howe", False)])
def test_a_zone_with_daylight_saving_time_converts_exactly_as_duckdb_does(zone, arithmetic):
    """For the ingest's typing, a zone with daylight saving time turns local times into instants by arithmetic over
    DST_YEARS (crm.db.staging_zone_macros): the same instants as DuckDB's ICU conversion, every minute around each
    change (a time the spring change skips, one the autumn change repeats), across the years and outside them.
    Southern zones, a negative DST (Dublin's winter time), zones that dropped DST. A zone with more than two
    changes a year (Casablanca's Ramadan) or a 30-minute change (Lord Howe, where crm_utc's hour-long step does
    not hold) stays with ICU."""
    from crm.db import DST_YEARS, _dst_zones, dst_years, shop_macros, sql_text, staging_zone_macros

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(sql_text("macros.sql"))
    assert (zone in _dst_zones(con, {zone})) is arithmetic
    shop_macros(con, [("a", zone), ("b", "Asia/Shanghai")])
    con.execute("CREATE SCHEMA ops; CREATE TABLE ops.shops AS SELECT * FROM (VALUES ('a', ?), ('b', 'Asia/Shanghai')) "
                "v(shop_id, timezone)", [zone])
    staging_zone_macros(con)
    made = con.execute("SELECT macro_definition FROM duckdb_functions() WHERE function_name = 'crm_zone_utc'").fetchone()[0]
    assert (f"'{DST_YEARS[0]}-01-01'" in made) is arithmetic, "the zone's years are in the macro: the arithmetic is tested"
    changes = [w for y in (dst_years(zone) or ()) for w in (y[5], y[6]) if w != 2**62]
    assert bool(changes) is (zone != "Africa/Casablanca")
    wrong = con.execute(f"""
        SELECT count(*) FILTER (WHERE crm_zone_utc('{zone}', l) IS DISTINCT FROM crm_utc(l, '{zone}')
                                   OR crm_zone_ts(strftime(l, '%Y-%m-%d %H:%M:%S'), '{zone}') IS DISTINCT FROM crm_utc(l, '{zone}')
                                   OR crm_shop_utc('a', l) IS DISTINCT FROM crm_utc(l, '{zone}')),
               count(*)
        FROM (SELECT TIMESTAMP '{DST_YEARS[0] - 3}-01-01' + to_minutes(i * 1013) AS l FROM range(30000) t(i)
              UNION ALL
              SELECT make_timestamp(w + m * 60000000) FROM unnest(?::BIGINT[]) a(w), range(-150, 151) b(m))""",
                        [changes]).fetchone()
    assert wrong == (0, 30000 + 301 * len(changes))


@pytest.mark.parametrize("zone", ["Asia/Shanghai", "Asia/Tokyo", "Asia/Kolkata", "America/New_York", "UTC"])
def test_a_fixed_offset_zone_converts_exactly_as_duckdb_does(zone):
    """A zone whose offset is fixed since some date gets plain arithmetic after it (crm.db.shop_macros):
    the same instants and wall-clock times as DuckDB's ICU conversion, also around that date (Shanghai had
    daylight saving time until 1991) and far in the future."""
    from crm.db import shop_macros, sql_text

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(sql_text("macros.sql"))
    shop_macros(con, [("a", zone), ("b", "Europe/Berlin")])
    wrong = con.execute(f"""
        SELECT count(*) FILTER (WHERE crm_shop_utc('a', l) IS DISTINCT FROM crm_utc(l, '{zone}')
                                   OR crm_zone_utc('{zone}', l) IS DISTINCT FROM crm_utc(l, '{zone}')
                                   OR crm_shop_local('a', u) IS DISTINCT FROM timezone('{zone}', u)),
               count(*)
        FROM (SELECT l, timezone('UTC', l) AS u
              FROM (SELECT TIMESTAMP '1985-01-01' + to_minutes(i * 7919) AS l FROM range(40000) t(i)))""").fetchone()
    assert wrong == (0, 40000)
