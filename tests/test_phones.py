"""Phone numbers (docs/rules.md §1, §3): stored in E.164 however they were written, so an opt-out by phone
matches; what cannot be parsed is quarantined with a reason that does not quote it; each shop's region."""

from __future__ import annotations

import json
from datetime import datetime

import duckdb
import pytest

from conftest import customer, order
from crm import phones
from crm.config import ConfigError, parse_settings
from crm.db import connect, sync_shops
from transforms.ingest import load
from transforms.plan import plan

T = datetime.fromisoformat("2026-11-20T10:30:00+08:00")

# the opted-out customers: the platform wrote the customer's number one way, the opt-out another
OPT_OUTS = [
    ("13757333573", "+86 137 5733 3573"),
    ("15840767025", "+86-15840767025"),
    ("18859289566", "008618859289566"),
    ("13845399640", "8613845399640"),
    ("13812345678", "13812345678"),
    ("１３９１２３４５６７８", "+86 (139) 1234-5678"),            # full-width digits in the customer file
    ("+86 150 0000 1111", "150.0000.1111"),
]


def quarantined(con, entity: str) -> list[tuple]:
    return con.execute("SELECT row_number, \"row\", reason FROM ops.quarantine WHERE entity = ? ORDER BY row_number",
                       [entity]).fetchall()


def test_an_opt_out_matches_however_the_number_was_written(con, landing):
    landing.csv("customers", "c.csv", [customer(f"c{i}", phone=mine, email=f"c{i}@example.com")
                                       for i, (mine, _theirs) in enumerate(OPT_OUTS)])
    landing.csv("orders", "o.csv", [order(f"o{i}", customer_id=f"c{i}") for i in range(len(OPT_OUTS))])
    landing.csv("suppressions", "s.csv", [{"phone": theirs, "channel": "all", "created_at": "2026-11-01 00:00:00"}
                                          for _mine, theirs in OPT_OUTS])
    result = load(con, landing.root)
    assert result.rows_quarantined == 0
    plan(con, T, variants=[])
    reasons = dict(con.execute("SELECT order_id, reason FROM marts.reminder_decisions").fetchall())
    assert reasons == {f"o{i}": "opted_out" for i in range(len(OPT_OUTS))}
    stored = con.execute("SELECT customer_id, phone FROM staging.customers ORDER BY customer_id").fetchall()
    assert stored[0] == ("c0", "+8613757333573") and stored[5] == ("c5", "+8613912345678"), "E.164, also from full width"
    assert {p for (p,) in con.execute("SELECT phone FROM staging.suppressions").fetchall()} == {p for _c, p in stored}


def test_messages_go_to_the_number_in_e164(con, landing):
    landing.csv("customers", "c.csv", [customer("c1", phone="138 0013 8000")])
    load(con, landing.root)
    assert con.execute("SELECT phone FROM staging.customers").fetchone()[0] == "+8613800138000"


@pytest.mark.parametrize("text,why", [
    ("12", "unparsable phone: too short for a +86 number (2 digits)"),
    ("n/a", "unparsable phone: not a phone number (0 digits)"),
    ("1380013800012345678", "unparsable phone: too long (19 digits)"),
    ("+999 1234 5678", "unparsable phone: unknown country code (11 digits)"),
])
def test_a_number_that_cannot_be_parsed_is_quarantined_without_quoting_it(con, landing, text, why):
    landing.csv("customers", "c.csv", [customer("good"), customer("bad", phone=text)])
    landing.csv("suppressions", "s.csv", [{"customer_id": "good", "phone": text, "channel": "sms",
                                           "created_at": "2026-11-01 00:00:00"}])
    result = load(con, landing.root)
    assert result.rows_quarantined == 2 and result.rows_loaded == 1
    [(row_number, row, reason)] = quarantined(con, "customers")
    assert (row_number, reason) == (2, why)
    assert json.loads(row)["phone"] == text, "the row itself is kept"
    [(_n, _row, reason)] = quarantined(con, "suppressions")
    assert reason == why
    digits = "".join(c for c in text if c.isdigit())
    if len(digits) > 2:
        assert digits not in reason


def test_a_bad_phone_is_one_of_the_reasons(con, landing):
    landing.csv("customers", "c.csv", [customer("c1", phone="0", member_level="x")])
    load(con, landing.root)
    [(_n, _row, reason)] = quarantined(con, "customers")
    assert reason == 'unparsable phone: not a phone number (1 digit); unparsable member_level "x"'


def test_each_shop_places_national_numbers_in_its_own_country(con, landing):
    """s1 is in Shanghai (CN), s2 in New York (US). A suppression's region is its customer's shop, else the
    first shop's."""
    landing.csv("customers", "c.csv", [customer("cn", phone="13800138000"),
                                       customer("us", shop_id="s2", phone="(212) 555-0123"),
                                       customer("us2", shop_id="s2", phone="+1 212-555-0199")])
    landing.csv("suppressions", "s.csv", [
        {"customer_id": "us", "phone": "212.555.0123", "channel": "sms", "created_at": "2026-11-01 00:00:00"},
        {"phone": "2125550199", "channel": "sms", "created_at": "2026-11-01 00:00:00"},   # no customer: CN
        {"phone": "+1 (212) 555-0199", "channel": "email", "created_at": "2026-11-01 00:00:00"},
    ])
    load(con, landing.root)
    assert dict(con.execute("SELECT customer_id, phone FROM staging.customers").fetchall()) == {
        "cn": "+8613800138000", "us": "+12125550123", "us2": "+12125550199"}
    assert sorted(con.execute("SELECT channel, phone FROM staging.suppressions").fetchall()) == [
        ("email", "+12125550199"), ("sms", "+12125550123"), ("sms", "+862125550199")]


@pytest.fixture
def con(con):
    """The shared connection with the staging SQL's phone functions: the ingest makes them before it stages (the
    tests below call them directly)."""
    phones.register(con)
    return con


def test_the_staging_functions_are_made_where_staging_runs(db_path, config_path, landing):
    """A plan's connection (connect + sync_shops) has no phone functions: making them imports numpy (~0.2 s). The
    ingest makes them before it stages, again on the same connection without an error."""
    from crm.config import load_settings

    c = connect(db_path)
    sync_shops(c, load_settings(config_path))     # a new file's first connection converts its (no) stored numbers
    c.close()
    c = connect(db_path)
    sync_shops(c, load_settings(config_path))
    with pytest.raises(duckdb.CatalogException, match="crm_phone_problem"):
        c.execute("SELECT crm_phone_problem('12', 'CN')")
    landing.csv("customers", "c.csv", [customer("cn", phone="+86 137 5733 3573")])
    load(c, landing.root)
    assert c.execute("SELECT phone FROM staging.customers").fetchone() == ("+8613757333573",)
    assert c.execute("SELECT crm_e164('+86 137 5733 3573', 'US'), crm_e164(NULL, 'CN'), crm_e164('x', NULL), "
                     "crm_phone_problem('13757333573', 'CN'), crm_phone_problem('12', 'CN')").fetchone() == (
        "+8613757333573", None, None, None, "unparsable phone: too short for a +86 number (2 digits)")
    landing.csv("customers", "c2.csv", [customer("cn2", phone="13812345678")])
    load(c, landing.root)                                     # again on the same connection: no error
    assert c.execute("SELECT count(*) FROM staging.customers").fetchone() == (2,)
    c.close()


def test_the_function_is_vectorised_over_many_chunks_and_regions(con):
    """More rows than one DuckDB vector (2,048), two regions mixed, NULLs kept in place."""
    rows = con.execute("""
        SELECT i, crm_e164(CASE WHEN i % 7 = 0 THEN NULL WHEN i % 2 = 0 THEN '138' || lpad(i::VARCHAR, 8, '0')
                                ELSE '(212) 555-' || lpad((i % 10000)::VARCHAR, 4, '0') END,
                           CASE WHEN i % 2 = 0 THEN 'CN' ELSE 'US' END)
        FROM range(10000) t(i) ORDER BY i""").fetchall()
    expected = [(i, None if i % 7 == 0 else f"+86138{i:08d}" if i % 2 == 0 else f"+1212555{i % 10000:04d}")
                for i in range(10000)]
    assert rows == expected


def test_results_stay_exact_under_coalesce_with_a_subquery_argument(con):
    """The shape of the conversion of stored numbers. With DuckDB's Arrow UDFs ~1 % of these rows came back as
    garbage (duckdb/duckdb#20606); the functions must return exactly what crm.phones does."""
    con.execute("CREATE TEMP TABLE region_of (customer_id VARCHAR, region VARCHAR)")
    con.execute("INSERT INTO region_of VALUES ('us', 'US'), ('cn', 'CN')")
    rows = con.execute("""
        SELECT customer_id, phone, coalesce(crm_e164(phone, coalesce(
            (SELECT region FROM region_of AS r WHERE r.customer_id = x.customer_id), 'CN')), phone)
        FROM (SELECT CASE WHEN i % 3 = 0 THEN NULL WHEN i % 3 = 1 THEN 'us' ELSE 'cn' END AS customer_id,
                     CASE WHEN i % 17 = 0 THEN 'bad' || i ELSE '139' || lpad(i::VARCHAR, 8, '0') END AS phone
              FROM range(60000) t(i)) AS x""").fetchall()
    wrong = [r for r in rows if r[2] != (phones.e164(r[1], "US" if r[0] == "us" else "CN") or r[1])]
    assert len(rows) == 60000 and wrong == []


def test_scalar_api():
    assert phones.e164("+86 137 5733 3573") == "+8613757333573"
    assert phones.e164("０１０-６５５２ ９９８８") == "+861065529988", "a Beijing landline in full width"
    assert phones.e164(" ") is None and phones.e164(None) is None and phones.problem("") is None
    assert phones.e164("(212) 555-0123", "US") == "+12125550123"
    assert phones.e164("2125550123", None) is None, "no region: only numbers with their country code"
    assert phones.problem("2125550123", None) == "unparsable phone: no country code, and no region to place it in (10 digits)"


# ------------------------------------------------------------------------------------ configuration

@pytest.mark.parametrize("zone,region", [
    ("Asia/Shanghai", "CN"), ("America/New_York", "US"), ("Europe/Berlin", "DE"), ("Asia/Hong_Kong", "HK"),
    ("US/Eastern", "US"), ("PRC", "CN"), ("Asia/Calcutta", "IN"),       # links: by their zone data
    ("UTC", "CN"), ("Etc/GMT-8", "CN"),                                 # no country: the default
])
def test_phone_region_defaults_to_the_country_of_the_time_zone(zone, region):
    shop = parse_settings({"shops": [{"shop_id": "s1", "timezone": zone}]}).shops[0]
    assert shop.phone_region == region


def test_phone_region_set_explicitly():
    shop = parse_settings({"shops": [{"shop_id": "s1", "timezone": "UTC", "phone_region": "GB"}]}).shops[0]
    assert shop.phone_region == "GB"


@pytest.mark.parametrize("value,message", [
    ("cn", "shop 's1': phone_region: 'cn' is not a region code in capitals: write 'CN'"),
    ("XX", "shop 's1': phone_region: 'XX' is not a region phone numbers know: an ISO 3166 alpha-2 code such as 'CN', 'US' or 'DE'"),
    ("China", "shop 's1': phone_region: 'China' is not a region phone numbers know: an ISO 3166 alpha-2 code such as 'CN', 'US' or 'DE'"),
    (86, "shop 's1': phone_region: Input should be a valid string (got 86)"),
])
def test_a_bad_phone_region_is_one_line(value, message):
    with pytest.raises(ConfigError) as info:
        parse_settings({"shops": [{"shop_id": "s1", "phone_region": value}]}, "shops.toml")
    assert str(info.value) == f"shops.toml: {message}"


def test_phones_stored_before_e164_are_converted_once(db_path, config_path):
    """A database from before phones were stored in E.164: its customers' and suppressions' numbers are
    converted when the shops are next synced (a suppression's by its customer's shop, else the first's)."""
    from crm.config import load_settings

    settings = load_settings(config_path)
    c = connect(db_path)
    sync_shops(c, settings)
    c.execute("COMMENT ON COLUMN staging.customers.phone IS NULL")      # as a file from before
    c.execute("INSERT INTO staging.customers (customer_id, shop_id, name, phone, member_level, registered_at, "
              "opt_out, updated_at) SELECT *, now(), false, now() FROM (VALUES ('a', 's1', 'A', '13757333573', 0), "
              "('b', 's2', 'B', '2125550123', 0), ('c', 's1', 'C', '12', 0))")
    c.execute("INSERT INTO staging.suppressions (customer_id, phone, channel, created_at) VALUES "
              "(NULL, '8613757333573', 'all', now()), ('b', '2125550123', 'sms', now())")
    sync_shops(c, settings)
    assert dict(c.execute("SELECT customer_id, phone FROM staging.customers").fetchall()) == {
        "a": "+8613757333573", "b": "+12125550123", "c": "12"}, "what cannot be parsed stays as it was"
    assert sorted(c.execute("SELECT phone FROM staging.suppressions").fetchall()) == [("+12125550123",), ("+8613757333573",)]
    c.execute("UPDATE staging.customers SET phone = '13800138000' WHERE customer_id = 'a'")
    sync_shops(c, settings)
    assert c.execute("SELECT phone FROM staging.customers WHERE customer_id = 'a'").fetchone()[0] == "13800138000", \
        "once only"
    c.close()


def test_repeated_numbers_are_parsed_once():
    numbers = [f"+86 139 {i:04d} {i * 7 % 10000:04d}" for i in range(500)]
    phones.parse.cache_clear()
    first = [phones.e164(n) for n in numbers]
    again = [phones.e164(n) for n in numbers]
    info = phones.parse.cache_info()
    assert first == again and (info.misses, info.hits) == (500, 500)


# ------------------------------------------------------------------------------------ the fast path
#
# crm_e164 answers the common shapes in plain SQL and asks libphonenumber only for the rest: it must give
# exactly what libphonenumber gives. Numbers of every shape are generated (a fixed seed), the fast path's
# answers compared with libphonenumber's one by one, and the common shapes must all be answered by the fast
# path itself (libphonenumber is not asked for them).

def _digits(rng, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _common(rng) -> tuple[str, str, str]:
    """(text, region, E.164) in a shape the fast path answers."""
    kind = rng.randrange(5)
    if kind == 3:                                                # a UK mobile
        n = "7" + rng.choice("123456789") + _digits(rng, 8)
        text, region = rng.choice([(f"0{n}", "GB"), (f"0{n[:4]} {n[4:]}", "GB"), (f"+44 {n[:4]} {n[4:]}", "GB"),
                                   (f"+44{n}", rng.choice(["CN", "US", "JP"])), (f"0044 {n}", "GB"), (f"0044{n}", "DE")])
        return text, region, "+44" + n
    if kind == 4:                                                # a Japanese mobile
        n = rng.choice("789") + "0" + _digits(rng, 8)
        text, region = rng.choice([(f"0{n}", "JP"), (f"0{n[:2]}-{n[2:6]}-{n[6:]}", "JP"), (f"+81 {n[:2]} {n[2:6]} {n[6:]}", "JP"),
                                   (f"+81{n}", rng.choice(["CN", "US", "GB"])), (f"0081{n}", "CN")])
        return text, region, "+81" + n
    if kind == 0:                                                # a Chinese mobile
        n = "1" + rng.choice("3456789") + _digits(rng, 9)
        while n.startswith("179"):
            n = "1" + rng.choice("3456789") + _digits(rng, 9)
        a, b, c = n[:3], n[3:7], n[7:]
        text, region = rng.choice([
            (n, "CN"), (f"{a} {b} {c}", "CN"), (f"{a}-{b}-{c}", "CN"), (f"86{n}", "CN"), (f"86 {n}", "CN"),
            (f"0086{n}", "CN"), (f"0086-{a}-{b}-{c}", "CN"), (f"+86{n}", rng.choice(["CN", "US", "DE"])),
            (f"+86 {a} {b} {c}", "US"), (f"+86 ({a}) {b}-{c}", "CN"), (f"{a}.{b}.{c}", "CN"), (f" {n} ", "CN"),
            (f"0086 {n}", "DE")])
        return text, region, "+86" + n
    if kind == 1:                                                # a NANP number
        n = rng.choice("23456789") + _digits(rng, 2) + rng.choice("23456789") + _digits(rng, 6)
        a, b, c = n[:3], n[3:6], n[6:]
        text, region = rng.choice([
            (n, "US"), (f"({a}) {b}-{c}", "US"), (f"{a}-{b}-{c}", "US"), (f"1{n}", "US"), (f"1 ({a}) {b}-{c}", "US"),
            (f"+1{n}", rng.choice(["US", "CN", "DE"])), (f"+1 {a} {b} {c}", "US"), (f"+1-{a}-{b}-{c}", "CN"),
            (f"{a}.{b}.{c}", "US"), (f"001{n}", "CN"), (f"001 {a} {b} {c}", "DE")])
        return text, region, "+1" + n
    n = rng.choice("123456789") + _digits(rng, rng.randrange(5, 13))   # German: 6 to 13 digits
    text, region = rng.choice([
        (f"0{n}", "DE"), (f"0{n[:3]} {n[3:]}", "DE"), (f"0{n[:3]}-{n[3:]}", "DE"), (f"(0{n[:2]}) {n[2:]}", "DE"),
        (f"+49{n}", rng.choice(["DE", "US", "CN"])), (f"+49 {n[:3]} {n[3:]}", "DE"), (f"0049{n}", "DE"),
        (f"0049 {n}", "CN")])
    return text, region, "+49" + n


def _other(rng) -> tuple[str, str | None]:
    """Text of any other shape, near misses of the fast path's shapes included (its answer must be NULL or
    libphonenumber's)."""
    region = rng.choice(["CN", "US", "DE", "GB", "JP", "FR", None])
    n = _digits(rng, rng.randrange(1, 16))
    mobile = "1" + rng.choice("0123456789") + _digits(rng, 9)
    return rng.choice([
        (n, region), ("+" + n, region), ("00" + n, region), ("0" + n, region), ("011" + n, region),
        ("179" + _digits(rng, 8), "CN"), ("86179" + _digits(rng, 8), "CN"), ("+86179" + _digits(rng, 8), region),
        (mobile, "CN"), ("86" + mobile, "CN"), ("+86" + mobile, region), ("+86 0" + mobile, region),
        ("1" + _digits(rng, 10), "US"), ("+1" + _digits(rng, 10), region), (_digits(rng, 10), "US"),
        ("+49 (0)" + _digits(rng, 9), region), ("+490" + _digits(rng, 9), "DE"), ("0" + _digits(rng, 10), "DE"),
        ("(+86) " + mobile, "CN"), ("+(86) " + mobile, "CN"), ("+" + mobile, region), ("++86" + mobile, "CN"),
        (mobile + ".", "CN"), (mobile + ")", "CN"), ("-" + mobile, "CN"), ("1-3-8" + _digits(rng, 8), "CN"),
        ("１３８" + _digits(rng, 8), "CN"), ("+86 138 " + _digits(rng, 4) + " ext. 12", "CN"),
        ("tel:+86" + mobile, "CN"), (mobile + "/" + mobile, "CN"), ("\u00a0" + mobile, "CN"), (mobile[:6] + "\t" + mobile[6:], "CN"),
        ("(212) 555-" + _digits(rng, 4), region), ("+44 7700 " + _digits(rng, 6), region), ("090-" + _digits(rng, 8), "JP"),
        ("07" + _digits(rng, rng.randrange(7, 11)), "GB"), ("+447" + _digits(rng, rng.randrange(7, 11)), region),
        ("0" + _digits(rng, 10), "GB"), ("0" + _digits(rng, 10), "JP"), ("0" + rng.choice("789") + "0" + _digits(rng, rng.randrange(6, 10)), "JP"),
        ("+81" + rng.choice("789") + _digits(rng, 9), region), ("01081" + _digits(rng, 10), "JP"), ("00" + _digits(rng, 12), "GB"),
        ("n/a", region), ("", region), ("+", region), ("()", region),
    ])


def _fast(con, rows: list[tuple[str, str | None]]) -> list[str | None]:
    con.execute("CREATE OR REPLACE TEMP TABLE numbers AS SELECT unnest(range(len($t))) AS i, unnest($t) AS t, "
                "unnest($r) AS region", {"t": [t for t, _ in rows], "r": [r for _, r in rows]})
    return [r[0] for r in con.execute("SELECT crm_e164_fast(t, region) FROM numbers ORDER BY i").fetchall()]


def test_the_fast_path_answers_the_common_shapes_exactly_as_libphonenumber():
    import random

    import phonenumbers

    con = duckdb.connect()
    phones.register(con)
    rng = random.Random(20261123)
    common = [_common(rng) for _ in range(30_000)]
    fast = _fast(con, [(t, r) for t, r, _ in common])
    lib = [phones.parse(t, r)[0] for t, r, _ in common]
    assert lib == [e for _, _, e in common], "the generator's expectation is libphonenumber's"
    assert [(t, r, f) for (t, r, _), f in zip(common, fast) if f is None] == [], "the fast path answers them all"
    assert fast == lib
    # through crm_e164, libphonenumber is not asked for any of them
    phones.parse.cache_clear()
    got = [r[0] for r in con.execute("SELECT crm_e164(t, region) FROM numbers ORDER BY i").fetchall()]
    assert got == lib and phones.parse.cache_info().misses == 0
    assert phonenumbers.__version__          # the library the comparison was made with


def test_the_fast_path_is_never_wrong_on_other_shapes():
    import random

    con = duckdb.connect()
    phones.register(con)
    rng = random.Random(7)
    other = [_other(rng) for _ in range(40_000)]
    fast = _fast(con, other)
    lib = [phones.e164(t, r) for t, r in other]
    wrong = [(t, r, f, e) for (t, r), f, e in zip(other, fast, lib) if f is not None and f != e]
    assert wrong == []
    answered = sum(f is not None for f in fast)
    assert 0 < answered < len(other), "some of them are the fast path's shapes, the rest are left to libphonenumber"
    # and crm_e164 as a whole is libphonenumber's answer for every one
    got = [r[0] for r in con.execute("SELECT crm_e164(t, region) FROM numbers ORDER BY i").fetchall()]
    assert got == lib
