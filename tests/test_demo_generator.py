"""The demo landing-folder generator (crm/demo.py): formats, columns, determinism and the seed
articles' situations, checked by reading the files back with duckdb and polars."""

from __future__ import annotations

import hashlib
import tomllib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest

from crm.demo import ENTITY_COLUMNS, generate

ANCHOR = datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc)
T = ANCHOR
TZ = {"s1": "Asia/Shanghai", "s2": "America/New_York", "s3": "Europe/Berlin"}
DIST = {"s1": {"fenxiao"}, "s2": {"fenxiao"}, "s3": {"fenxiao", "dropship"}}
KEYWORDS = ["慢", "破", "差", "没想到", "一般", "slow", "broken", "damaged", "disappoint"]
TS_COLS = {
    "orders": ["created_at", "paid_at", "shipped_at", "delivered_at", "closed_at", "refunded_at",
               "updated_at"],
    "customers": ["registered_at", "updated_at"],
    "reviews": ["created_at"],
    "suppressions": ["created_at"],
    "order_items": [], "products": [],
}
N = 2_000


# ------------------------------------------------------------------------------------------
# a small independent reader of the landing folder (contract §1)
# ------------------------------------------------------------------------------------------

def _parse_ts(col: str, shop: pl.Expr) -> pl.Expr:
    s = pl.col(col).cast(pl.String)
    has_off = s.str.contains(r"(Z|[+-]\d{2}:\d{2})$")
    absolute = s.str.replace(r"Z$", "+00:00").str.to_datetime(
        "%Y-%m-%dT%H:%M:%S%z", time_zone="UTC", strict=False)
    naive = s.str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False)
    local = None
    for sid, tz in TZ.items():
        v = naive.dt.replace_time_zone(tz, ambiguous="earliest").dt.convert_time_zone("UTC")
        local = pl.when(shop == sid).then(v) if local is None else local.when(shop == sid).then(v)
    return pl.when(has_off).then(absolute).otherwise(local).alias(col)


def _read_file(path: Path, entity: str) -> pl.DataFrame:
    if path.suffix == ".parquet":
        df = pl.read_parquet(path)
        df = df.with_columns(pl.col(pl.Decimal).cast(pl.Float64))
    elif path.suffix == ".csv":
        df = pl.read_csv(path, infer_schema=False)
    else:
        df = pl.read_ndjson(path, infer_schema_length=None)
    shop = pl.col("shop_id") if "shop_id" in df.columns else (
        pl.col("order_id").str.extract(r"^([^-]+)-") if "order_id" in df.columns else
        pl.lit("s1"))
    exprs = []
    for c in TS_COLS[entity]:
        if df.schema[c] in (pl.String, pl.Null):
            exprs.append(_parse_ts(c, shop))
    df = df.with_columns(exprs)
    casts = {"total_amount": pl.Float64, "unit_price": pl.Float64, "quantity": pl.Int64,
             "line_no": pl.Int64, "rating": pl.Int64, "member_level": pl.Int64,
             "followup_days": pl.Int64}
    df = df.with_columns(pl.col(c).cast(t) for c, t in casts.items() if c in df.columns)
    if "opt_out" in df.columns and df.schema["opt_out"] == pl.String:
        df = df.with_columns(pl.col("opt_out").str.to_lowercase() == "true")
    for c in TS_COLS[entity]:
        df = df.with_columns(pl.col(c).cast(pl.Datetime("us", "UTC")))
    return df.with_columns(pl.lit(path.name).alias("_file"))


def _nrows(path: Path) -> int:
    if path.suffix == ".parquet":
        return pl.read_parquet(path).height
    if path.suffix == ".csv":
        return pl.read_csv(path, infer_schema=False).height
    return pl.read_ndjson(path).height


def load(landing: Path, entity: str) -> pl.DataFrame:
    files = sorted(p for p in (landing / entity).iterdir()
                   if "_bad" not in p.name and "_corrupt" not in p.name)
    return pl.concat([_read_file(p, entity) for p in files], how="vertical_relaxed")


def latest(df: pl.DataFrame, key: list[str]) -> pl.DataFrame:
    return df.sort("updated_at").group_by(key, maintain_order=True).last()


def local_date(col: str) -> pl.Expr:
    e = None
    for sid, tz in TZ.items():
        v = pl.col(col).dt.convert_time_zone(tz).dt.date()
        e = pl.when(pl.col("shop_id") == sid).then(v) if e is None else e.when(pl.col("shop_id") == sid).then(v)
    return e


def unpaid_at(t: datetime) -> pl.Expr:
    return ((pl.col("created_at") <= t)
            & (pl.col("paid_at").is_null() | (pl.col("paid_at") > t))
            & (pl.col("closed_at").is_null() | (pl.col("closed_at") > t)))


def is_dist() -> pl.Expr:
    return (((pl.col("shop_id") != "s3") & (pl.col("platform") == "fenxiao"))
            | ((pl.col("shop_id") == "s3") & pl.col("platform").is_in(["fenxiao", "dropship"])))


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("demo"), orders=N, seed=11, anchor=ANCHOR)


@pytest.fixture(scope="module")
def orders(demo):
    return load(demo.landing_dir, "orders")


@pytest.fixture(scope="module")
def cur(orders):
    """The orders as the pipeline sees them: the newest updated_at of each order wins."""
    return latest(orders, ["order_id"])


# ------------------------------------------------------------------------------------------
# layout, columns, config
# ------------------------------------------------------------------------------------------

def test_layout_and_summary(demo):
    assert demo.anchor == ANCHOR
    for entity in ENTITY_COLUMNS:
        files = list((demo.landing_dir / entity).iterdir())
        assert files, entity
        assert all(f.suffix in (".parquet", ".csv", ".ndjson") for f in files)
        names = [f.name for f in files]
        assert all(n[:16].count("-") == 2 and n[10] == "T" and "_drop" in n for n in names)
    all_files = [p for p in demo.landing_dir.rglob("*") if p.is_file()]
    assert demo.files == len(all_files)
    suffixes = {p.suffix for p in (demo.landing_dir / "orders").iterdir()}
    assert suffixes == {".parquet", ".csv", ".ndjson"}
    assert demo.bad_rows == 8
    rows = {e: sum(_nrows(p) for p in (demo.landing_dir / e).iterdir() if "_corrupt" not in p.name)
            for e in ENTITY_COLUMNS}
    assert rows == demo.counts


def test_columns_exactly_per_contract(demo):
    con = duckdb.connect()
    for entity, cols in ENTITY_COLUMNS.items():
        for p in sorted((demo.landing_dir / entity).iterdir()):
            if "_corrupt" in p.name:
                continue
            reader = {".parquet": "read_parquet('{}')", ".csv": "read_csv('{}', all_varchar=true)",
                      ".ndjson": "read_json('{}', format='newline_delimited')"}[p.suffix]
            got = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {reader.format(p)}").fetchall()]
            assert got == cols, (p.name, got)


def test_parquet_initial_drop_types_and_unique_ids(demo):
    first = sorted((demo.landing_dir / "orders").glob("*_drop001.parquet"))
    assert len(first) == 1
    df = pl.read_parquet(first[0])
    assert df["order_id"].n_unique() == df.height > N // 2
    assert df.schema["created_at"] == pl.Datetime("us", "UTC")
    assert df.schema["total_amount"] == pl.Decimal(12, 2)
    items = pl.read_parquet(next((demo.landing_dir / "order_items").glob("*_drop001.parquet")))
    assert items.select(pl.struct("order_id", "line_no").n_unique()).item() == items.height


def test_shops_toml(demo):
    cfg = tomllib.loads(demo.config_path.read_text(encoding="utf-8"))
    shops = {s["shop_id"]: s for s in cfg["shops"]}
    assert {k: v["timezone"] for k, v in shops.items()} == TZ
    assert shops["s1"]["name"] == "萌宠小铺" and shops["s1"]["locale"] == "zh-CN"
    assert shops["s2"]["reminders"]["strategy"] == "delay"
    assert shops["s3"]["distribution_platforms"] == ["fenxiao", "dropship"]
    assert cfg["gateway"]["webhook_url"] == "http://127.0.0.1:8080/send"
    assert cfg["smtp"] == {"host": "127.0.0.1", "port": 1025, "sender": "crm@example.com"}


def test_deterministic(tmp_path):
    a = generate(tmp_path / "a", orders=N, seed=5, anchor=ANCHOR)
    b = generate(tmp_path / "b", orders=N, seed=5, anchor=ANCHOR)
    c = generate(tmp_path / "c", orders=N, seed=6, anchor=ANCHOR)
    da, db, dc = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert da == db
    assert a.counts == b.counts
    assert da != dc
    # a re-run into the same folder replaces its drops
    generate(tmp_path / "a", orders=N, seed=5, anchor=ANCHOR)
    assert digest(tmp_path / "a") == da


# ------------------------------------------------------------------------------------------
# data sanity
# ------------------------------------------------------------------------------------------

def test_orders_consistent(demo, cur):
    assert cur["order_id"].n_unique() == cur.height
    assert cur.filter(pl.col("created_at").is_null() | pl.col("updated_at").is_null()).height == 0
    assert cur.filter(pl.col("paid_at") < pl.col("created_at")).height == 0
    assert cur.filter(pl.col("shipped_at") < pl.col("paid_at")).height == 0
    assert cur.filter(pl.col("delivered_at") < pl.col("shipped_at")).height == 0
    assert cur.filter(pl.col("total_amount") < 0).height == 0
    assert cur.filter(pl.col("updated_at") > T).height == 0
    closed = cur.filter(pl.col("closed_at").is_not_null())
    assert closed.height > 0
    assert (closed["closed_at"] - closed["created_at"] == timedelta(hours=24)).all()
    assert closed["paid_at"].is_null().all()
    assert set(cur["shop_id"]) == {"s1", "s2", "s3"}
    assert cur.height == N
    # the platform auto-closes unpaid orders after 24 h: nothing older is still open, except
    # distribution-platform orders whose payment status lags
    stale_open = cur.filter(unpaid_at(T) & (pl.col("created_at") < T - timedelta(hours=24)))
    assert stale_open.filter(~is_dist()).height == 0


def test_amounts_match_items(demo, cur):
    items = latest(load(demo.landing_dir, "order_items").with_columns(pl.lit(0).alias("updated_at")),
                   ["order_id", "line_no"])
    assert items.filter(pl.col("quantity") <= 0).height == 0
    sums = items.group_by("order_id").agg(
        (pl.col("quantity") * pl.col("unit_price")).sum().round(2).alias("s"))
    j = cur.join(sums, on="order_id", how="left")
    assert j["s"].null_count() == 0
    assert (j["s"] - j["total_amount"]).abs().max() < 0.005
    products = load(demo.landing_dir, "products")
    assert products["product_id"].n_unique() == products.height
    assert items.join(products, on="product_id", how="anti").height == 0
    assert products.filter(pl.col("followup_days").is_not_null()).height > 0
    assert products["followup_days"].null_count() > products.height / 2
    s1 = products.filter(pl.col("shop_id") == "s1")
    assert s1.filter(pl.col("style_tags").is_in(["cute", "cute;gift"])).height > s1.height / 2


def test_customers(demo, cur):
    cust = latest(load(demo.landing_dir, "customers"), ["customer_id"])
    assert cust["customer_id"].n_unique() == cust.height
    assert cur.join(cust, on="customer_id", how="anti").height == 0
    assert cust["phone"].null_count() > 0 and cust["email"].null_count() > 0
    assert cust["opt_out"].sum() > 0
    assert cust["member_level"].min() >= 0 and cust["member_level"].max() <= 5
    assert cust.filter(pl.col("shop_id") == "s1")["phone"].drop_nulls().str.contains(r"^1\d{10}$").all()
    assert cust["email"].drop_nulls().str.contains(r"^[a-z.]+\d+@example\.com$").all()
    assert cust.filter(pl.col("shop_id") == "s1")["name"].str.contains(r"^[\p{Han}]+$").all()
    assert cust.filter(pl.col("shop_id") == "s2")["name"].str.contains(r"^[A-Za-z' ]+$").all()
    # customers with 0, 1, 2 and 3+ orders: all segments can occur
    n = cust.join(cur.group_by("customer_id").len(), on="customer_id", how="left").fill_null(0)
    for k in (0, 1, 2):
        assert n.filter(pl.col("len") == k).height > 0, k
    assert n.filter(pl.col("len") >= 3).height > 0
    assert n.filter(pl.col("len") == 1).height > n.filter(pl.col("len") == 2).height
    # a later customer drop repeats customers with a newer updated_at (e.g. now opted out)
    allc = load(demo.landing_dir, "customers")
    rep = allc.group_by("customer_id").agg(pl.col("opt_out").n_unique().alias("k"), pl.len())
    assert rep.filter((pl.col("len") > 1) & (pl.col("k") > 1)).height > 0


# ------------------------------------------------------------------------------------------
# the seed articles' situations
# ------------------------------------------------------------------------------------------

def test_unpaid_inside_auto_close_horizon(cur):
    recent = cur.filter(unpaid_at(T) & (pl.col("created_at") > T - timedelta(hours=24)))
    assert recent.height >= 40
    for sid in TZ:
        assert recent.filter(pl.col("shop_id") == sid).height >= 10, sid


def test_several_unpaid_orders_same_local_day(cur):
    g = (cur.filter(unpaid_at(T) & ~is_dist() & (pl.col("created_at") > T - timedelta(hours=24)))
         .with_columns(local_date("created_at").alias("d"))
         .group_by("shop_id", "customer_id", "d").len().filter(pl.col("len") >= 2))
    assert g.height >= 10
    assert set(g["shop_id"]) == {"s1", "s2", "s3"}
    assert g["len"].max() >= 3


def test_wrong_first_order_replaced_and_paid(cur):
    d = cur.with_columns(local_date("created_at").alias("d"))
    a = d.filter(unpaid_at(T) & ~is_dist() & (pl.col("created_at") > T - timedelta(hours=24)))
    b = d.filter(pl.col("paid_at") <= T)
    pairs = a.join(b, on=["shop_id", "customer_id", "d"], suffix="_b").filter(
        (pl.col("created_at_b") > pl.col("created_at"))
        & (pl.col("created_at_b") - pl.col("created_at") <= timedelta(minutes=45)))
    assert pairs["customer_id"].n_unique() >= 5
    # and older ones, already auto-closed
    old = d.filter(pl.col("closed_at").is_not_null()).join(b, on=["shop_id", "customer_id", "d"],
                                                           suffix="_b").filter(
        (pl.col("created_at_b") > pl.col("created_at"))
        & (pl.col("created_at_b") - pl.col("created_at") <= timedelta(minutes=45)))
    assert old.height >= 3


def test_distribution_platform_orders_unpaid_in_drop(orders, cur):
    lag = cur.filter(is_dist() & unpaid_at(T))
    assert lag.height >= 5
    assert set(lag["shop_id"]) == {"s1", "s3"}
    assert set(lag.filter(pl.col("shop_id") == "s3")["platform"]) == {"fenxiao", "dropship"}
    # ... and some whose payment only shows up in a later drop (status caught up)
    seen = orders.filter(is_dist()).group_by("order_id").agg(
        pl.col("paid_at").is_null().any().alias("was_unpaid"),
        pl.col("paid_at").is_not_null().any().alias("now_paid"),
        pl.col("closed_at").is_null().all().alias("never_closed"))
    assert seen.filter("was_unpaid", "now_paid", "never_closed").height >= 3


def test_stale_and_newer_repeats(orders):
    o = orders.with_columns(pl.col("_file").rank("dense").alias("k"))
    pairs = o.join(o, on="order_id", suffix="_later").filter(pl.col("k_later") > pl.col("k"))
    stale = pairs.filter(pl.col("updated_at_later") < pl.col("updated_at"))
    newer = pairs.filter(pl.col("updated_at_later") > pl.col("updated_at"))
    assert stale.height >= 10
    assert stale.filter(pl.col("paid_at").is_not_null() & pl.col("paid_at_later").is_null()).height > 0 \
        or stale.filter(pl.col("refunded_at").is_not_null() & pl.col("refunded_at_later").is_null()).height > 0 \
        or stale.filter(pl.col("delivered_at").is_not_null() & pl.col("delivered_at_later").is_null()).height > 0
    assert newer.filter(pl.col("paid_at").is_null() & pl.col("paid_at_later").is_not_null()).height > 0
    assert newer.filter(pl.col("delivered_at").is_null()
                        & pl.col("delivered_at_later").is_not_null()).height > 0
    assert any(f.endswith("_stale.csv") for f in stale["_file_later"])


def test_segments_of_unpaid_orders(cur):
    unpaid = cur.filter(unpaid_at(T) & (pl.col("created_at") > T - timedelta(hours=24)))
    paid = cur.filter((pl.col("paid_at") <= T)
                      & (pl.col("refunded_at").is_null() | (pl.col("refunded_at") > T)))
    prior = (unpaid.join(paid.select("shop_id", "customer_id", pl.col("paid_at").alias("p")),
                         on=["shop_id", "customer_id"], how="left")
             .group_by("order_id")
             .agg((pl.col("p") < pl.col("created_at")).sum().alias("prior")))
    seg = prior.select(pl.when(pl.col("prior") == 0).then(pl.lit("new"))
                       .when(pl.col("prior") == 1).then(pl.lit("second"))
                       .otherwise(pl.lit("repeat")).alias("s"))["s"].value_counts()
    counts = dict(zip(seg["s"], seg["count"]))
    assert counts.get("new", 0) >= 5 and counts.get("second", 0) >= 5 and counts.get("repeat", 0) >= 5


def test_opt_outs_and_suppressions(demo, cur):
    cust = latest(load(demo.landing_dir, "customers"), ["customer_id"])
    out = cust.filter(pl.col("opt_out"))
    recent = cur.filter(unpaid_at(T) & (pl.col("created_at") > T - timedelta(hours=24)))
    assert recent.join(out, on="customer_id", how="semi").height > 0
    sup = load(demo.landing_dir, "suppressions")
    assert set(sup["channel"]) == {"sms", "email", "call", "all"}
    assert (sup["created_at"] <= T).all()
    by_id = sup.filter(pl.col("customer_id").is_not_null())
    phone_only = sup.filter(pl.col("customer_id").is_null() & pl.col("email").is_null()
                            & pl.col("phone").is_not_null())
    email_only = sup.filter(pl.col("customer_id").is_null() & pl.col("phone").is_null()
                            & pl.col("email").is_not_null())
    assert by_id.height and phone_only.height and email_only.height
    assert set(by_id["channel"]) == {"sms", "email", "call", "all"}
    assert phone_only.join(cust, on="phone", how="anti").height == 0
    assert email_only.join(cust, on="email", how="anti").height == 0
    # some suppressions (channel all) hit customers with an open unpaid order
    hit = (recent.join(cust.select("customer_id", "phone", "email"), on="customer_id")
           .join(sup.filter(pl.col("channel") == "all").select("phone"), on="phone", how="semi"))
    hit_id = recent.join(sup.filter(pl.col("channel") == "all").select("customer_id"),
                         on="customer_id", how="semi")
    assert hit.height + hit_id.height > 0


def test_followups_due_on_anchor_date(cur):
    d = cur.with_columns(local_date("delivered_at").alias("dd"),
                         pl.lit(T).alias("t")).with_columns(local_date("t").alias("today"))
    due = d.filter(pl.col("delivered_at").is_not_null()
                   & ((pl.col("today") - pl.col("dd")).dt.total_days().is_between(7, 9)))
    assert due.height >= 60
    for sid in TZ:
        assert due.filter(pl.col("shop_id") == sid).height >= 10, sid


def test_reviews(demo, cur):
    rv = load(demo.landing_dir, "reviews")
    assert rv.select(pl.struct("order_id", "created_at").n_unique()).item() == rv.height
    assert rv["rating"].is_between(1, 5).all()
    assert rv.filter(pl.col("rating") == 5).height > rv.height / 2
    assert rv.filter(pl.col("rating") <= 3).height > 0
    j = rv.join(cur.select("order_id", "delivered_at", "shop_id"), on="order_id")
    assert j.height == rv.height
    assert (j["created_at"] >= j["delivered_at"]).all() and (j["created_at"] <= T).all()
    pattern = "(?i)" + "|".join(KEYWORDS)
    hidden = j.filter((pl.col("rating") >= 4) & pl.col("text").str.contains(pattern))
    assert set(hidden["shop_id"]) == {"s1", "s2", "s3"}
    # plain praise never contains a complaint keyword by accident
    assert j.filter(pl.col("rating") >= 4).height > 3 * hidden.height
    assert j.filter(pl.col("shop_id") == "s1")["text"].drop_nulls().str.contains(r"\p{Han}").all()
    assert not j.filter(pl.col("shop_id") == "s2")["text"].drop_nulls().str.contains(r"\p{Han}").any()
    # follow-up reviews: an order with two reviews
    assert rv.group_by("order_id").len()["len"].max() >= 2


# ------------------------------------------------------------------------------------------
# bad rows, corrupt file
# ------------------------------------------------------------------------------------------

def test_bad_rows_and_corrupt_file(demo):
    bad = {e: pl.concat([pl.read_csv(p, infer_schema=False)
                         for p in (demo.landing_dir / e).glob("*_bad.csv")])
           for e in ("orders", "order_items", "reviews", "customers")}
    assert sum(df.height for df in bad.values()) == demo.bad_rows == 8
    o = bad["orders"]
    assert o.filter(pl.col("total_amount").cast(pl.Float64) < 0).height == 1
    assert o.filter(pl.col("created_at") == "yesterday").height == 1
    assert o.filter(pl.col("shop_id") == "s9").height == 1
    assert o.filter(pl.col("order_id").fill_null("") == "").height == 1
    parsed = _read_file(next((demo.landing_dir / "orders").glob("*_bad.csv")), "orders")
    assert parsed.filter(pl.col("paid_at") < pl.col("created_at")).height == 1
    assert bad["order_items"]["quantity"].to_list() == ["0"]
    assert bad["reviews"]["rating"].to_list() == ["7"]
    assert bad["customers"]["member_level"].to_list() == ["gold"]
    corrupt = list((demo.landing_dir / "orders").glob("*_corrupt.parquet"))
    assert len(corrupt) == 1
    with pytest.raises(Exception):
        pq.read_table(corrupt[0])
    with pytest.raises(Exception):
        duckdb.sql(f"SELECT * FROM read_parquet('{corrupt[0]}')").fetchall()


def test_dst_fall_back_anchor(tmp_path):
    """Naive local strings must never be ambiguous: around a DST fall-back the generator writes
    such rows with offsets, so a reader taking the earliest reading gets consistent data."""
    anchor = datetime(2026, 11, 1, 14, 0, tzinfo=timezone.utc)   # New York fell back at 06:00 UTC
    s = generate(tmp_path, orders=N, seed=3, anchor=anchor)
    cur = latest(load(s.landing_dir, "orders"), ["order_id"])
    assert cur.height == N
    assert cur.filter(pl.col("paid_at") < pl.col("created_at")).height == 0
    assert cur.filter(pl.col("updated_at") > anchor).height == 0
    orig = pl.read_parquet(next((s.landing_dir / "orders").glob("*_drop001.parquet")))
    j = orig.join(cur, on="order_id", suffix="_c")
    assert (j["created_at"] == j["created_at_c"]).all()


# ------------------------------------------------------------------------------------------
# bench mode
# ------------------------------------------------------------------------------------------

def test_bench_mode(tmp_path):
    s = generate(tmp_path, orders=5_000, seed=1, anchor=ANCHOR, bench=True)
    files = [p for p in s.landing_dir.rglob("*") if p.is_file()]
    assert files and all(p.suffix == ".parquet" for p in files)
    assert s.bad_rows == 0 and s.files == len(files)
    assert not any(tag in p.name for p in files for tag in ("_bad", "_stale", "_corrupt"))
    assert len(list((s.landing_dir / "orders").iterdir())) == 4
    con = duckdb.connect()
    glob = str(s.landing_dir / "orders" / "*.parquet")
    n, ids, tmax = con.execute(
        f"SELECT count(*), count(DISTINCT order_id), max(updated_at) FROM read_parquet('{glob}')").fetchone()
    assert n == ids == s.counts["orders"] == 5_000
    assert tmax <= ANCHOR
    for entity, cols in ENTITY_COLUMNS.items():
        for p in (s.landing_dir / entity).iterdir():
            df = pl.read_parquet(p)
            assert df.columns == cols
            for c in TS_COLS[entity]:
                assert df.schema[c] == pl.Datetime("us", "UTC")
    items = con.execute(f"SELECT count(*) FROM read_parquet('{s.landing_dir}/order_items/*.parquet')").fetchone()[0]
    assert items == s.counts["order_items"] > 5_000
