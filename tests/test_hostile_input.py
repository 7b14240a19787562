"""Hostile and broken drop files (issue 12, items 1, 3 and 10): names that try to become SQL, files that
cannot be read, values that would be quietly wrong. Each test loads real files into a real DuckDB file."""

from __future__ import annotations

import codecs
import gzip
import json
import struct
from datetime import datetime, timezone

import polars as pl
import pytest

from conftest import customer, order
from transforms import ingest
from transforms.ingest import load

# the header field of issue 12.1: closes the generated identifier and appends statements of its own
INJECT_CSV = ('a" := 1))::VARCHAR AS _extra, NULL AS _raw, NULL AS s, 0 AS o, 0 AS r FROM _csv; '
              'UPDATE staging.customers SET opt_out = false; DELETE FROM staging.suppressions; --')
# the same for a Parquet column, and a single-quote variant for string literals (paths, keys)
INJECT_PARQUET = ('a" := 1))::VARCHAR AS _extra FROM range(1); UPDATE staging.customers SET opt_out = false; '
                  'DELETE FROM staging.suppressions; --')
INJECT_QUOTE = "x'); UPDATE staging.customers SET opt_out = false; DELETE FROM staging.suppressions; --"
HOSTILE_NAMES = [INJECT_CSV, INJECT_PARQUET, INJECT_QUOTE, 'we"ird', "it's", "a;b", "$1", "?", "#1", "é 中文"]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(timezone.utc)


def quarantine(con) -> list[tuple]:
    return con.execute(
        "SELECT entity, regexp_extract(source_file, '[^/]+$'), row_number, \"row\", reason "
        "FROM ops.quarantine ORDER BY entity, source_file, row_number NULLS FIRST").fetchall()


def reasons(con) -> dict[tuple, str]:
    return {(q[1], q[2]): q[4] for q in quarantine(con)}


def count(con, table: str) -> int:
    return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _tables(con) -> list[tuple]:
    return con.execute("SELECT schema_name, table_name FROM duckdb_tables() WHERE NOT temporary ORDER BY 1, 2").fetchall()


@pytest.fixture
def opted_out(con, landing):
    """A first drop: an opted-out customer, a suppression; returns what must not change."""
    landing.csv("customers", "c0.csv", [customer("c1"), customer("c2", opt_out="true", phone="13800000002")])
    landing.csv("suppressions", "s0.csv", [{"phone": "13800000009", "channel": "sms",
                                            "created_at": "2026-11-01T00:00:00Z"}])
    load(con, landing.root)
    before = {"opt_out": con.execute("SELECT customer_id, opt_out FROM staging.customers ORDER BY 1").fetchall(),
              "suppressions": count(con, "staging.suppressions"), "tables": _tables(con)}
    assert before["opt_out"] == [("c1", False), ("c2", True)] and before["suppressions"] == 1
    return before


def _unchanged(con, before: dict) -> None:
    opt_out = dict(con.execute("SELECT customer_id, opt_out FROM staging.customers").fetchall())
    assert {k: opt_out[k] for k, _ in before["opt_out"]} == dict(before["opt_out"]), "opt-outs are untouched"
    assert count(con, "staging.suppressions") == before["suppressions"], "suppressions are untouched"
    assert _tables(con) == before["tables"], "no table made or dropped"


# ------------------------------------------------------------------------------ 1. names are data

def test_hostile_csv_header_changes_nothing_but_data(con, landing, opted_out):
    header = list(customer("c3")) + HOSTILE_NAMES
    rows = [{**customer("c3"), **{n: f"v{i}" for i, n in enumerate(HOSTILE_NAMES)}},
            {**customer("c4", member_level="gold"), **{n: f"w{i}" for i, n in enumerate(HOSTILE_NAMES)}}]
    landing.csv("customers", "c1.csv", rows, header=header)
    landing.csv("orders", "o1.csv", [{**order("o1"), INJECT_CSV: "1"}])
    result = load(con, landing.root)
    _unchanged(con, opted_out)
    assert result.entities["customers"].rows_loaded == 1 and result.entities["orders"].rows_loaded == 1
    assert con.execute("SELECT opt_out FROM staging.customers WHERE customer_id = 'c3'").fetchone() == (False,)
    [(_, file, row_number, row, why)] = [q for q in quarantine(con) if q[0] == "customers"]
    assert (file, row_number, why) == ("c1.csv", 2, 'unparsable member_level "gold"')
    extra = json.loads(row)
    assert {n: extra[n] for n in HOSTILE_NAMES} == {n: f"w{i}" for i, n in enumerate(HOSTILE_NAMES)}, \
        "the extra columns keep their names and values in the quarantined row"
    assert extra["customer_id"] == "c4"


def test_hostile_parquet_column_names_change_nothing_but_data(con, landing, opted_out):
    frame = pl.DataFrame([{**customer("c3"), **{n: f"v{i}" for i, n in enumerate(HOSTILE_NAMES)}},
                          {**customer("c4", member_level="gold"), **{n: f"w{i}" for i, n in enumerate(HOSTILE_NAMES)}}])
    landing.parquet("customers", "c1.parquet", frame)
    # a known column under a hostile spelling still matches (case and surrounding spaces do not count)
    landing.parquet("orders", "o1.parquet", pl.DataFrame([{**order("o1"), INJECT_PARQUET: 1}])
                    .rename({"order_id": ' Order_ID '}))
    result = load(con, landing.root)
    _unchanged(con, opted_out)
    assert result.entities["customers"].rows_loaded == 1
    assert con.execute("SELECT order_id FROM staging.orders").fetchall() == [("o1",)]
    [row] = [json.loads(q[3]) for q in quarantine(con) if q[0] == "customers"]
    assert {n: row[n] for n in HOSTILE_NAMES} == {n: f"w{i}" for i, n in enumerate(HOSTILE_NAMES)}


def test_hostile_ndjson_keys_change_nothing_but_data(con, landing, opted_out):
    landing.ndjson("customers", "c1.ndjson", [{**customer("c3"), **{n: i for i, n in enumerate(HOSTILE_NAMES)}},
                                             {**customer("c4", member_level="gold"), INJECT_QUOTE: "x"}])
    result = load(con, landing.root)
    _unchanged(con, opted_out)
    assert result.entities["customers"].rows_loaded == 1
    [(_, _, row_number, row, why)] = [q for q in quarantine(con) if q[0] == "customers"]
    assert (row_number, why) == (2, 'unparsable member_level "gold"') and json.loads(row)[INJECT_QUOTE] == "x"


HOSTILE_FILES = ["o'; DELETE FROM staging.suppressions; --", 'o"; DELETE FROM staging.suppressions; --',
                 "o $1 ? #1 \\ é", "o\nnewline",
                 "p1", "p[1]", "p?", "p*", "p**"]             # glob patterns: each must read itself only


@pytest.mark.parametrize("fmt", ["csv", "ndjson", "parquet"])
def test_hostile_file_names(con, landing, opted_out, fmt):
    for i, stem in enumerate(HOSTILE_FILES):
        rows = [order(f"o{i}"), order(f"bad{i}", total_amount="-1")]
        getattr(landing, fmt)("orders", f"{stem}.{fmt}", rows)
    result = load(con, landing.root)
    _unchanged(con, opted_out)
    assert result.entities["orders"].rows_loaded == len(HOSTILE_FILES)
    got = dict(con.execute("SELECT order_id, regexp_extract(_source_file, '[^/]+$') FROM staging.orders").fetchall())
    assert got == {f"o{i}": f"{stem}.{fmt}" for i, stem in enumerate(HOSTILE_FILES)}
    assert sorted(f for _, f, *_ in quarantine(con)) == sorted(f"{stem}.{fmt}" for stem in HOSTILE_FILES)
    files = {r[0] for r in con.execute("SELECT regexp_extract(path, '[^/]+$') FROM ops.ingested_files "
                                       "WHERE status = 'loaded' AND entity = 'orders'").fetchall()}
    assert files == {f"{stem}.{fmt}" for stem in HOSTILE_FILES}


# ------------------------------------------------------------------ 3. a bad file blocks nothing else

def _corrupt_data_pages(path) -> None:
    """Scramble everything between the leading magic and the footer: the footer (schema, row count) stays intact."""
    data = bytearray(path.read_bytes())
    footer = struct.unpack("<I", data[-8:-4])[0]
    for i in range(8, len(data) - 8 - footer):
        data[i] = (data[i] * 7 + 13) % 256
    path.write_bytes(bytes(data))


def _good_drop(landing) -> None:
    landing.csv("orders", "a_good.csv", [order("o1")])
    landing.parquet("orders", "b_good.parquet", [order("o2")])
    landing.ndjson("customers", "c_good.ndjson", [customer("c1")])


def _whole_file(con, name: str) -> str:
    [(why,)] = con.execute("SELECT reason FROM ops.quarantine WHERE source_file LIKE '%/' || ? AND row_number IS NULL",
                           [name]).fetchall()
    return why


def test_parquet_with_corrupt_data_pages_is_quarantined_and_the_rest_loads(con, landing):
    _good_drop(landing)
    bad = landing.parquet("orders", "m_corrupt.parquet", [order(f"x{i}") for i in range(500)])
    _corrupt_data_pages(bad)
    result = load(con, landing.root)
    assert {r[0] for r in con.execute("SELECT order_id FROM staging.orders").fetchall()} == {"o1", "o2"}
    assert count(con, "staging.customers") == 1
    assert _whole_file(con, "m_corrupt.parquet").startswith("unreadable parquet file: ")
    assert result.files_quarantined == [str(bad.resolve())]
    assert load(con, landing.root).files_new == 0, "recorded as quarantined: a re-run does not try it again"


def test_quotes_in_csv_header_fields_and_parquet_column_names(con, landing):
    landing.raw("orders", "q1.csv", 'order_id,shop_id,customer_id,platform,created_at,total_amount,updated_at,we"ird,"b""c"\n'
                                    'o1,s1,c1,taobao,2026-11-20T10:00:00+08:00,10,2026-11-20T10:00:00+08:00,1,2\n'
                                    'o9,s1,c1,taobao,never,10,2026-11-20T10:00:00+08:00,3,4\n')
    landing.parquet("orders", "q2.parquet", pl.DataFrame([order("o2")]).with_columns(pl.lit(5).alias('we"ird')))
    load(con, landing.root)
    assert {r[0] for r in con.execute("SELECT order_id FROM staging.orders").fetchall()} == {"o1", "o2"}
    [(_, _, row_number, row, why)] = quarantine(con)
    assert (row_number, why) == (2, 'unparsable created_at "never"')
    assert {k: json.loads(row)[k] for k in ('we"ird', 'b"c')} == {'we"ird': "3", 'b"c': "4"}


def _text_csv(rows: list[dict], sep: str) -> str:
    header = list(dict.fromkeys(k for r in rows for k in r))
    return "\r\n".join([sep.join(header)] + [sep.join(str(r.get(k) or "") for k in header) for r in rows]) + "\r\n"


def test_utf16_tab_separated_csv_as_excel_saves_unicode_text(con, landing):
    rows = [customer("u1", name="张三", city="上海"), customer("u2", name="李四", member_level="金")]
    landing.raw("customers", "excel.csv", _text_csv(rows, "\t").encode("utf-16"))        # BOM + little-endian
    landing.raw("customers", "be.csv", _text_csv([customer("u3", name="王五")], ",").encode("utf-16-be"))   # no BOM
    _good_drop(landing)
    load(con, landing.root)
    got = dict(con.execute("SELECT customer_id, name || '/' || coalesce(city, '') FROM staging.customers "
                           "WHERE customer_id LIKE 'u%'").fetchall())
    assert got == {"u1": "张三/上海", "u3": "王五/"}
    assert count(con, "staging.orders") == 2, "the other files load"
    [(file, row_number, row, why)] = [q[1:] for q in quarantine(con)]
    assert (file, row_number, why) == ("excel.csv", 2, 'unparsable member_level "金"')
    assert json.loads(row)["name"] == "李四", "the quarantined row is the decoded text"


def test_gbk_csv_is_read_as_gbk(con, landing):
    rows = [order("o1", receiver_city="北京"), order("o2", receiver_city="广州", total_amount="-1")]
    landing.raw("orders", "gbk.csv", _text_csv(rows, ",").encode("gbk"))
    gz = _text_csv([order("o3", receiver_city="深圳")], ",").encode("gbk")
    landing.raw("orders", "gbk2.csv.gz", gzip.compress(gz))
    load(con, landing.root)
    got = dict(con.execute("SELECT order_id, receiver_city FROM staging.orders").fetchall())
    assert got == {"o1": "北京", "o3": "深圳"}
    [(file, row_number, row, why)] = [q[1:] for q in quarantine(con)]
    assert (file, row_number, why) == ("gbk.csv", 2, "negative total_amount -1.00")
    assert json.loads(row)["receiver_city"] == "广州"


def test_a_file_in_no_known_encoding_keeps_its_good_lines(con, landing):
    header = "order_id,shop_id,customer_id,platform,created_at,total_amount,updated_at\n"
    ok = "o{},s1,c1,taobao,2026-11-20T10:00:00+08:00,10,2026-11-20T10:00:00+08:00\n"
    # \xff\xfe inside a line is neither UTF-8 nor GBK: that line alone is malformed, and says why
    landing.raw("orders", "mixed.csv", (header + ok.format(1)).encode() + b"o2,s1,c1,\xff\xfe\xff,x,1,2\n" + ok.format(3).encode())
    load(con, landing.root)
    assert {r[0] for r in con.execute("SELECT order_id FROM staging.orders").fetchall()} == {"o1", "o3"}
    [(file, row_number, _row, why)] = [q[1:] for q in quarantine(con)]
    assert (file, row_number) == ("mixed.csv", 2) and why.startswith("malformed CSV line 3: INVALID ENCODING")


@pytest.mark.parametrize("content,reason", [
    (b"", "no header row"),
    (b"\n\n", "no header row"),
    (b'"order_id,shop_id\no1,s1\n', "malformed header row: UNQUOTED VALUE: Value with unterminated quote found."),
    (b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)), "this is a ZIP archive (an Excel .xlsx workbook?), not CSV text: save it as CSV"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100), "this is an Excel 97-2003 .xls workbook, not CSV text: save it as CSV"),
    (gzip.compress(b"order_id\no1\n"), "this file is gzip-compressed: name it .csv.gz"),
    (b"order_id,shop_id\x00\x01\x02\n", "binary data (NUL bytes), not CSV text"),
    (codecs.BOM_UTF16_LE + "order_id\n".encode("utf-16-le") + b"\x00\xd8", "looks like UTF-16 text but is not (unexpected end of data)"),
])
def test_a_csv_that_cannot_be_read_says_what_it_is(con, landing, content, reason):
    landing.raw("orders", "x.csv", content)
    _good_drop(landing)
    result = load(con, landing.root)
    assert count(con, "staging.orders") == 2 and count(con, "staging.customers") == 1, "the rest loads"
    assert _whole_file(con, "x.csv") == f"unreadable CSV file: {reason}"
    assert [q[1] for q in quarantine(con)] == ["x.csv"], "one line for the whole file"
    assert result.files_quarantined == [str((landing.root / "orders" / "x.csv").resolve())]


# -------------------------------------------------------------------------- 10. no quietly wrong value

@pytest.mark.parametrize("value,reason", [
    ("-0.001", "negative total_amount -0.001"),
    ("-0", None),
    ("12.345", "total_amount has more than 2 decimals: 12.345"),
    ("12.500", None),
    ("1_000", 'unparsable total_amount "1_000"'),
    ("1e2", 'unparsable total_amount "1e2"'),
    ("0x10", 'unparsable total_amount "0x10"'),
    ("+5.5", None),
    (".5", None),
])
def test_amounts_are_exact_and_not_negative(con, landing, value, reason):
    landing.csv("orders", "o.csv", [order("o1", total_amount=value)])
    landing.csv("order_items", "i.csv", [{"order_id": "o1", "line_no": 1, "product_id": "p", "quantity": 1,
                                          "unit_price": value}])
    load(con, landing.root)
    got = reasons(con)
    if reason is None:
        assert got == {}
        assert count(con, "staging.orders") == 1 and count(con, "staging.order_items") == 1
    else:
        assert got == {("o.csv", 1): reason, ("i.csv", 1): reason.replace("total_amount", "unit_price")}


def test_float_noise_in_a_parquet_amount_is_the_cent_it_means(con, landing):
    landing.parquet("orders", "o.parquet", pl.DataFrame([order("o1"), order("o2")]).with_columns(
        total_amount=pl.Series([0.1 + 0.2, 19.99 * 3])))
    load(con, landing.root)
    assert quarantine(con) == []
    assert dict(con.execute("SELECT order_id, total_amount::VARCHAR FROM staging.orders").fetchall()) == \
        {"o1": "0.30", "o2": "59.97"}


ZONE_TEXTS = [
    ("2026-12-01 10:00:00 UTC", "2026-12-01T10:00:00+00:00"),
    ("2026-12-01T10:00:00 utc", "2026-12-01T10:00:00+00:00"),
    ("2026-12-01T10:00:00GMT", "2026-12-01T10:00:00+00:00"),
    ("2026-12-01T10:00:00z", "2026-12-01T10:00:00+00:00"),
    ("2026-12-01T10:00:00+14:00", "2026-11-30T20:00:00+00:00"),
    ("2026-12-01T10:00:00-12:00", "2026-12-01T22:00:00+00:00"),
    ("2026-12-01T10:00:00+05:30", "2026-12-01T04:30:00+00:00"),
    ("2026-12-01 10:00:00", "2026-12-01T02:00:00+00:00"),            # naive: Shanghai
    ("2026-12-01 10:00:00 CST", None),                              # an abbreviation is ambiguous: never local
    ("2026-12-01 10:00:00 PST", None),
    ("2026-12-01 10:00:00 Asia/Tokyo", None),
    ("2026-12-01T10:00:00 UTC+8", None),
    ("2026-12-01T10:00:00+25:00", None),
    ("2026-12-01T10:00:00+14:30", None),
    ("2026-12-01T10:00:00+08:60", None),
]


@pytest.mark.parametrize("text,expected", ZONE_TEXTS)
def test_zone_suffixes_and_offsets(con, text, expected):
    got = con.execute("SELECT crm_shop_ts(crm_text(?), 's1')", [text]).fetchone()[0]
    assert got == (utc(expected) if expected else None)


def test_the_ingest_types_every_timestamp_shape_as_the_one_expression_macro_does(con, landing):
    """The staging models type a timestamp in steps, each a column (whether its text has an offset, its
    wall-clock time, the instant: crm_wall_clock in sql/macros.sql says why): the same instants and the same
    refusals as crm_shop_ts's single expression, for every shape, in a fixed zone (s1, Shanghai) and in one with
    daylight saving time (s2, New York: a time the spring change skips, one the autumn change repeats)."""
    texts = [t for t, _ in ZONE_TEXTS] + ["2026-03-08 02:30:00", "2026-11-01 01:30:00", "2026-07-01 12:00:00.25",
                                          "2026-07-01T12:00:00-0300", "2026-07-01T12:00", "  2026-07-01 12:00:00 "]
    shops = ("s1", "s2")
    landing.csv("orders", "shapes.csv", [order(f"{shop}-{i}", shop_id=shop, paid_at=text, created_at="2020-01-01T00:00:00Z")
                                         for shop in shops for i, text in enumerate(texts)])
    load(con, landing.root)
    got = dict(con.execute("SELECT order_id, paid_at FROM staging.orders").fetchall())
    want = {f"{shop}-{i}": con.execute("SELECT crm_shop_ts(crm_text(?), ?)", [text, shop]).fetchone()[0]
            for shop in shops for i, text in enumerate(texts)}
    assert got == {k: v for k, v in want.items() if v is not None}
    refused = {k for k, v in want.items() if v is None}
    assert len(refused) == 2 * 7 and len(got) == 2 * (len(texts) - 7)
    assert {row for row, reason in reasons(con).items() if reason.startswith("unparsable paid_at")} == \
        {("shapes.csv", 1 + shops.index(k[:2]) * len(texts) + int(k[3:])) for k in refused}   # data rows from 1


def test_a_zone_name_is_quarantined_never_read_as_local(con, landing):
    landing.csv("orders", "o.csv", [order("o1", created_at="2026-12-01 10:00:00 UTC", updated_at="2026-12-01 10:00:00 UTC"),
                                    order("o2", paid_at="2026-12-01 10:00:00 CST"),
                                    order("o3", paid_at="2026-12-01T10:00:00+25:00")])
    load(con, landing.root)
    assert con.execute("SELECT order_id, created_at FROM staging.orders").fetchall() == [("o1", utc("2026-12-01T10:00:00+00:00"))]
    assert reasons(con) == {("o.csv", 2): 'unparsable paid_at "2026-12-01 10:00:00 CST"',
                            ("o.csv", 3): 'unparsable paid_at "2026-12-01T10:00:00+25:00"'}


@pytest.mark.parametrize("text", ["0x5", "0b101", "1_000", "1e0", "١", "５", "2.5", "1.0e1"])
def test_integers_are_plain_decimal_digits(con, text):
    assert con.execute("SELECT crm_int(crm_text(?))", [text]).fetchone()[0] is None


@pytest.mark.parametrize("text,expected", [("2", 2), ("+3", 3), ("-4", -4), ("2.0", 2), ("2.", 2), ("007", 7),
                                           ("2147483647", 2147483647), ("2147483648", None)])
def test_integers_that_parse(con, text, expected):
    assert con.execute("SELECT crm_int(crm_text(?))", [text]).fetchone()[0] == expected


def test_hex_and_exponent_quantities_are_quarantined(con, landing):
    landing.csv("order_items", "i.csv", [{"order_id": "o1", "line_no": n, "product_id": "p", "quantity": q, "unit_price": 1}
                                         for n, q in enumerate(["0x5", "0b101", "1_000", "1e0", "3"], 1)])
    load(con, landing.root)
    assert con.execute("SELECT line_no, quantity FROM staging.order_items").fetchall() == [(5, 3)]
    assert sorted(reasons(con).values()) == sorted(f'unparsable quantity "{q}"' for q in ["0x5", "0b101", "1_000", "1e0"])


def test_an_order_id_of_another_shop_is_quarantined_not_moved(con, landing):
    landing.csv("orders", "d1.csv", [order("o1", total_amount="10.00")])
    landing.csv("orders", "d2.csv", [order("o1", shop_id="s2", total_amount="20.00", updated_at="2026-11-21T00:00:00Z"),
                                     order("o2", shop_id="s2"), order("o2", shop_id="s1", updated_at="2026-11-21T00:00:00Z"),
                                     # a row of o2 that is bad on its own: it is told both
                                     order("o2", shop_id="s1", paid_at="soon"),
                                     # o3 comes twice from one shop and once, bad, from another: one good shop, no conflict
                                     order("o3"), order("o3", updated_at="2026-11-21T00:00:00Z"),
                                     order("o3", shop_id="s2", paid_at="soon")])
    load(con, landing.root)
    assert con.execute("SELECT order_id, shop_id, total_amount::VARCHAR, updated_at FROM staging.orders ORDER BY 1").fetchall() == \
        [("o1", "s1", "10.00", datetime(2026, 11, 20, 2, tzinfo=timezone.utc)),
         ("o2", "s2", "99.00", datetime(2026, 11, 20, 2, tzinfo=timezone.utc)),
         ("o3", "s1", "99.00", datetime(2026, 11, 21, tzinfo=timezone.utc))]
    assert reasons(con) == {
        ("d2.csv", 1): 'order_id "o1" belongs to shop s1, this row says s2',
        ("d2.csv", 3): 'order_id "o2" belongs to shop s2, this row says s1',
        ("d2.csv", 4): 'unparsable paid_at "soon"; order_id "o2" belongs to shop s2, this row says s1',
        ("d2.csv", 7): 'unparsable paid_at "soon"',
    }
    # a later run: the same conflict, against what is loaded
    landing.csv("orders", "d3.csv", [order("o2", shop_id="s1", updated_at="2026-11-22T00:00:00Z"),
                                     order("o2", shop_id="s2", total_amount="25.00", updated_at="2026-11-22T00:00:00Z")])
    load(con, landing.root)
    assert con.execute("SELECT shop_id, total_amount::VARCHAR FROM staging.orders WHERE order_id = 'o2'").fetchall() == \
        [("s2", "25.00")]
    assert reasons(con)[("d3.csv", 1)] == 'order_id "o2" belongs to shop s2, this row says s1'


def _lines(n: int, start: int = 0) -> str:
    return "".join(f"o{i},s1,c1,taobao,2026-11-20T10:00:00+08:00,10,2026-11-20T10:00:00+08:00\n" for i in range(start, start + n))


HEADER = "order_id,shop_id,customer_id,platform,created_at,total_amount,updated_at\n"


@pytest.mark.parametrize("bad,kind", [
    ('ox,"s1,c1,taobao,x,1,2\n', "UNQUOTED VALUE"),                 # an opening quote never closed
    ('ox,"s1"x,c1,taobao,x,1,2\n', "UNQUOTED VALUE"),               # junk after a closing quote
    ("ox,s1\n", "MISSING COLUMNS"),
    ("ox,s1,c1,taobao,x,1,2,3\n", "TOO MANY COLUMNS"),
])
def test_one_malformed_line_leaves_every_good_row_loaded(con, landing, bad, kind):
    landing.raw("orders", "ten.csv", HEADER + _lines(5) + bad + _lines(5, 5) + "oz,s1,c1,taobao,never,1,2026-11-20T10:00:00+08:00\n")
    result = load(con, landing.root)
    assert sorted(r[0] for r in con.execute("SELECT order_id FROM staging.orders").fetchall()) == sorted(f"o{i}" for i in range(10))
    got = quarantine(con)
    assert [(q[2], q[4].split(":")[0]) for q in got] == [(6, "malformed CSV line 7"), (12, "unparsable created_at \"never\"")]
    assert got[0][4].startswith(f"malformed CSV line 7: {kind}") and got[0][3] == bad.rstrip("\n")
    assert result.entities["orders"].rows_read == 12 and result.entities["orders"].rows_quarantined == 2


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("gz", [False, True])
def test_an_unclosed_quote_in_a_big_file_loses_no_later_row(con, landing, newline, gz):
    text = HEADER + _lines(3) + 'ox,"s1,c1\n' + _lines(20000, 3) + 'oy,"s1\n' + _lines(2, 20003) + 'oz,"s1\n'
    data = text.replace("\n", newline).encode()
    landing.raw("orders", "big.csv.gz" if gz else "big.csv", gzip.compress(data) if gz else data)
    result = load(con, landing.root)
    assert count(con, "staging.orders") == 20005
    assert [(q[2], q[3]) for q in quarantine(con)] == [(4, 'ox,"s1,c1'), (20005, 'oy,"s1'), (20008, 'oz,"s1')]
    assert reasons(con)[("big.csv.gz" if gz else "big.csv", 20005)].startswith("malformed CSV line 20006: UNQUOTED VALUE")
    assert result.entities["orders"].rows_read == 20008


def test_a_file_of_unclosed_quotes_is_read_around_a_bounded_number_of_times(con, landing, monkeypatch):
    monkeypatch.setattr(ingest, "_MAX_REREADS", 2)
    landing.raw("orders", "q.csv", HEADER + _lines(1) + 'oa,"s1\n' + _lines(1, 1) + 'ob,"s1\n' + _lines(1, 2)
                + 'oc,"s1\n' + _lines(2, 3))
    load(con, landing.root)
    assert count(con, "staging.orders") == 3, "the rows before the third unclosed quote"
    got = [(q[2], q[3], q[4]) for q in quarantine(con)]
    assert [g[:2] for g in got[:2]] == [(2, 'oa,"s1'), (4, 'ob,"s1')]
    assert got[2][0] == 6 and got[2][1].startswith('oc,"s1\no3,') and got[2][2].endswith("(the rest of the file is not read)")


def test_reasons_do_not_echo_personal_values(con, landing):
    landing.csv("customers", "c.csv", [customer("c1", registered_at="13715275764"),
                                       customer("c2", updated_at="someone@example.com"),
                                       customer("c3", opt_out="137-1527-5764 / +86 137 1527 5764")])
    load(con, landing.root)
    text = " ".join(reasons(con).values())
    assert "1527" not in text and "@" not in text
    assert sorted(reasons(con).values()) == ["unparsable opt_out", "unparsable registered_at", "unparsable updated_at"]


def test_parquet_lists_and_typed_extras(con, landing):
    landing.parquet("products", "p.parquet", pl.DataFrame({
        "product_id": ["p1", "p2"], "shop_id": ["s1", "s1"], "title": ["t", ""], "category": ["c", "c"],
        "Style_Tags": [["Cute", " gift"], ["x"]], 'we"ird': [[1, 2], [3]], "n": [1.5, 2.5]}))
    load(con, landing.root)
    assert con.execute("SELECT product_id, style_tags FROM staging.products").fetchall() == [("p1", ["cute", "gift"])]
    [(_, _, row_number, row, why)] = quarantine(con)
    assert (row_number, why) == (2, "missing title")
    assert {k: json.loads(row)[k] for k in ('we"ird', "n", "style_tags")} == {'we"ird': [3], "n": 2.5, "style_tags": "x"}
