"""bench/generate.py: the benchmark data's shape (many shops of Zipf sizes, a long tail of customers, a
realistic share of recent orders, Parquet + CSV + a stale CSV drop, naive and aware timestamps), read back
from a tiny generated set with DuckDB."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import duckdb
import pytest

from bench import generate as gen
from crm.config import load_settings

N = 6_000


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "set"
    summary = gen.generate(out, orders=N, shops=12, orders_per_file=2_500)
    return out, summary


def _sql(out, query: str, *params):
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con.execute(query.replace("{L}", str(out / "landing")), list(params)).fetchall()


def test_files_formats_and_drop_order(data):
    out, summary = data
    names = sorted(p.relative_to(out / "landing").as_posix() for p in (out / "landing").rglob("*.*"))
    orders = [n for n in names if n.startswith("orders/")]
    assert [n.split("_", 1)[1] for n in orders] == ["snapshot01.parquet", "snapshot02.parquet", "snapshot03.parquet",
                                                     "updates.csv", "stale_resend.csv"], "the stale drop sorts last"
    assert {n.rsplit(".", 1)[1] for n in names} == {"parquet", "csv"}
    assert summary.files == len(names)
    # every second Parquet file of orders has naive (shop-local) timestamps, the others aware ones
    types = [_sql(out, f"SELECT typeof(created_at) FROM read_parquet('{{L}}/{n}') LIMIT 1")[0][0] for n in orders[:3]]
    assert types == ["TIMESTAMP WITH TIME ZONE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE"]
    # CSV timestamps as text: with an offset, naive, or Z, by shop
    texts = [r[0] for r in _sql(out, "SELECT created_at FROM read_csv('{L}/orders/*updates.csv', all_varchar = true)")]
    assert any(t.endswith("Z") for t in texts) and any(t[-6] in "+-" for t in texts) \
        and any(t[-3] == ":" and t[10] == " " for t in texts)


def test_shops_are_many_and_of_zipf_sizes(data):
    out, summary = data
    sizes = [n for (n,) in _sql(out, "SELECT count(*) n FROM read_parquet('{L}/orders/*.parquet', union_by_name = true) "
                                     "GROUP BY shop_id ORDER BY n DESC")]
    assert summary.shops == 12 and len(sizes) == 12
    assert sizes[0] > 3 * sizes[len(sizes) // 2] and sizes[0] < N, "one large shop, a long tail of small ones"
    settings = load_settings(out / "shops.toml")
    assert len(settings.shops) == 12 and settings.shops[0].timezone == "Asia/Shanghai"
    assert len({s.timezone for s in settings.shops}) >= 3


def test_customers_have_a_long_tail_of_order_counts(data):
    out, _ = data
    counts = [n for (n,) in _sql(out, "SELECT count(*) FROM read_parquet('{L}/orders/*.parquet', union_by_name = true) "
                                      "GROUP BY customer_id")]
    once = sum(1 for n in counts if n == 1) / len(counts)
    assert 0.4 < once < 0.9 and max(counts) >= 20, (once, max(counts))


def test_a_realistic_share_of_orders_is_recent_and_unpaid(data):
    out, summary = data
    anchor = summary.anchor
    total, recent, unpaid_open = _sql(out, """
        SELECT count(*), count(*) FILTER (WHERE created_at::TIMESTAMPTZ > ?::TIMESTAMPTZ),
               count(*) FILTER (WHERE paid_at = '' IS NOT FALSE AND closed_at = '' IS NOT FALSE)
        FROM read_csv('{L}/orders/*updates.csv', all_varchar = true)""", anchor - timedelta(hours=48))[0]
    snapshot = _sql(out, "SELECT count(*) FROM read_parquet('{L}/orders/*snapshot*.parquet', union_by_name = true)")[0][0]
    assert 0.005 < recent / snapshot < 0.05, "1-2 % of the orders in the last 48 hours, not the demo's fifth"
    assert 0 < unpaid_open < recent


def test_the_stale_drop_repeats_orders_with_an_older_version(data):
    out, _ = data
    stale = _sql(out, "SELECT count(*) FROM read_csv('{L}/orders/*stale_resend.csv', all_varchar = true)")[0][0]
    # against the aware snapshot files, the stale rows whose text names its zone (Z or an offset)
    older, compared = _sql(out, """
        SELECT count(*) FILTER (WHERE s.updated_at::TIMESTAMPTZ < p.updated_at), count(*)
        FROM read_csv('{L}/orders/*stale_resend.csv', all_varchar = true) s
        JOIN read_parquet(['{L}/orders/2026-11-21T1400_snapshot01.parquet',
                           '{L}/orders/2026-11-21T1400_snapshot03.parquet']) p ON p.order_id = s.order_id
        WHERE s.updated_at LIKE '%Z' OR s.updated_at[-6] IN ('+', '-')""")[0]
    assert stale > 0.01 * N and compared > 0
    assert older == compared, "every repeated order is older than the snapshot's version"


def test_phones_come_in_many_shapes(data):
    out, _ = data
    phones = [p for (p,) in _sql(out, "SELECT phone FROM read_parquet('{L}/customers/*.parquet') WHERE phone IS NOT NULL")]
    cn = {"+86 ": 0, "0086-": 0, "86": 0, "+86": 0, "1": 0}
    for p in phones:
        for prefix in cn:
            cn[prefix] += p.startswith(prefix)
    assert all(cn.values()), cn
    assert any("-" in p and p[0] == "1" for p in phones) and any("１" in p or "８" in p for p in phones), "full width too"
    assert any(p.startswith(("+1", "(", "+49", "0", "+44", "+81")) for p in phones), "and other countries' shapes"


def test_deterministic_and_an_extra_drop(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    gen.generate(a, orders=1_000, shops=8)
    gen.generate(b, orders=1_000, shops=8)

    def digest(root):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted((root / "landing").rglob("*.*"))}

    assert digest(a) == digest(b)
    rows = gen.extra_drop(a, 0.05)
    assert rows["orders"] == 50 and rows["order_items"] >= 50 and 0 < rows["customers"] < 50
    new = {r[0] for r in _sql(a, "SELECT order_id FROM read_csv('{L}/orders/*extra*.csv', types = {'order_id': 'VARCHAR'})")}
    old = {r[0] for r in _sql(a, "SELECT order_id::VARCHAR FROM read_parquet('{L}/orders/*.parquet', union_by_name = true)")}
    assert len(new) == 50 and not new & old
