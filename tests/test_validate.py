"""The Great Expectations suites (transforms/validate.py), evaluated by GX's SQL engine inside DuckDB.

Every critical and every reported check of every suite, each broken on its own among good rows; the
ingest's open transaction (GX sees its uncommitted rows and cannot end it); a bad row among many rolls
the whole ingest back with a message naming the expectation and the row count; no row is pulled into
pandas; the dispatch's outbox checks.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pytest

from conftest import customer, order
from transforms.ingest import load
from transforms.validate import SUITES, Check, ValidationFailed, validate_ingest, validate_outbox

RUN = 7            # the ingest the suites check
CREATED = datetime(2026, 11, 20, 2, 0, tzinfo=timezone.utc)
T = datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)

# NOT NULL columns of each staging table, with a valid value
REQUIRED = {
    "customers": {"shop_id": "s1", "name": "n", "member_level": 1, "registered_at": CREATED, "opt_out": False,
                  "updated_at": CREATED},
    "products": {"shop_id": "s1", "title": "t", "category": "c", "followup_days": 7},
    "orders": {"shop_id": "s1", "platform": "taobao", "created_at": CREATED, "total_amount": 99,
               "currency": "CNY", "updated_at": CREATED},
    "order_items": {"product_id": "p0", "quantity": 1, "unit_price": 10},
    "reviews": {"created_at": CREATED, "rating": 5},
    "suppressions": {"created_at": CREATED},
}


def stage(con, table: str, rows: list[dict], ingest_id: int = RUN) -> None:
    """Rows straight into staging.`table` (as if staging had let them through), for run `ingest_id`."""
    for row in rows:
        values = {**REQUIRED[table], **row, "_ingest_id": ingest_id}
        con.execute(f"INSERT INTO staging.{table} ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                    list(values.values()))


@pytest.fixture
def good(con):
    """A clean run: 20 customers (c15-c19 without orders), 5 products, 40 orders (o30-o39 without items or
    reviews), 2 items for each of o0-o29, a review for each of o0-o9, 3 suppressions."""
    stage(con, "customers", [{"customer_id": f"c{i}"} for i in range(20)])
    stage(con, "products", [{"product_id": f"p{i}"} for i in range(5)])
    stage(con, "orders", [{"order_id": f"o{i}", "customer_id": f"c{i % 15}"} for i in range(40)])
    stage(con, "order_items", [{"order_id": f"o{i}", "line_no": n} for i in range(30) for n in (1, 2)])
    stage(con, "reviews", [{"order_id": f"o{i}"} for i in range(10)])
    stage(con, "suppressions", [{"channel": c, "phone": "+8613800000009"} for c in ("sms", "email", "all")])
    return con


def failures(results: list[dict]) -> dict:
    return {(r["suite"].removeprefix("staging."), r["expectation"], r["column"]): (r["unexpected_count"], r["element_count"])
            for r in results if not r["success"]}


def stored_failures(con) -> dict:
    rows = con.execute("SELECT suite, expectation, column_name, unexpected_count, element_count FROM ops.validation_results "
                       "WHERE run_kind = 'ingest' AND run_ref = ? AND NOT success", [str(RUN)]).fetchall()
    return {(s.removeprefix("staging."), e, c): (u, n) for s, e, c, u, n in rows}


def drop_not_null(con, table: str, column: str) -> None:
    """A schema that no longer forbids NULL: the suites must still catch it."""
    con.execute(f"ALTER TABLE staging.{table} ALTER COLUMN {column} DROP NOT NULL")


NOT_NULL = "expect_column_values_to_not_be_null"
UNIQUE = "expect_column_values_to_be_unique"
COMPOUND = "expect_compound_columns_to_be_unique"
BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"
PAIR = "expect_column_pair_values_a_to_be_greater_than_b"

# each case breaks one rule among the good rows: (what it does, then the failures it must give: (unexpected, rows))
CRITICAL = {
    "customer without id": (
        lambda c: (drop_not_null(c, "customers", "customer_id"),
                   c.execute("UPDATE staging.customers SET customer_id = NULL WHERE customer_id = 'c15'")),
        {("customers", NOT_NULL, "customer_id"): (1, 20), ("customers", BETWEEN, "_copies"): (1, 20)}),
    "customer twice in the run": (
        lambda c: stage(c, "customers", [{"customer_id": "c16", "member_level": 2}]),
        {("customers", UNIQUE, "customer_id"): (2, 21), ("customers", BETWEEN, "_copies"): (2, 21)}),
    "customer also staged by an earlier run": (
        lambda c: stage(c, "customers", [{"customer_id": "c17"}], ingest_id=RUN - 1),
        {("customers", BETWEEN, "_copies"): (1, 20)}),
    "negative member level": (
        lambda c: c.execute("UPDATE staging.customers SET member_level = -1 WHERE customer_id = 'c3'"),
        {("customers", BETWEEN, "member_level"): (1, 20)}),
    "opt_out unknown": (
        lambda c: (drop_not_null(c, "customers", "opt_out"),
                   c.execute("UPDATE staging.customers SET opt_out = NULL WHERE customer_id IN ('c1', 'c2')")),
        {("customers", NOT_NULL, "opt_out"): (2, 20)}),
    "product without id": (
        lambda c: (drop_not_null(c, "products", "product_id"),
                   c.execute("UPDATE staging.products SET product_id = NULL WHERE product_id = 'p4'")),
        {("products", NOT_NULL, "product_id"): (1, 5), ("products", BETWEEN, "_copies"): (1, 5)}),
    "product twice in the run": (
        lambda c: stage(c, "products", [{"product_id": "p1"}]),
        {("products", UNIQUE, "product_id"): (2, 6), ("products", BETWEEN, "_copies"): (2, 6)}),
    "product also staged by an earlier run": (
        lambda c: stage(c, "products", [{"product_id": "p2"}], ingest_id=RUN - 1),
        {("products", BETWEEN, "_copies"): (1, 5)}),
    "negative follow-up days": (
        lambda c: c.execute("UPDATE staging.products SET followup_days = -3 WHERE product_id = 'p0'"),
        {("products", BETWEEN, "followup_days"): (1, 5)}),
    "order without id": (
        lambda c: (drop_not_null(c, "orders", "order_id"),
                   c.execute("UPDATE staging.orders SET order_id = NULL WHERE order_id = 'o35'")),
        {("orders", NOT_NULL, "order_id"): (1, 40), ("orders", BETWEEN, "_copies"): (1, 40)}),
    "order twice in the run": (
        lambda c: stage(c, "orders", [{"order_id": "o36", "customer_id": "c1"}]),
        {("orders", UNIQUE, "order_id"): (2, 41), ("orders", BETWEEN, "_copies"): (2, 41)}),
    "order also staged by an earlier run": (
        lambda c: stage(c, "orders", [{"order_id": "o37", "customer_id": "c1"}], ingest_id=RUN - 1),
        {("orders", BETWEEN, "_copies"): (1, 40)}),
    "negative total": (
        lambda c: c.execute("UPDATE staging.orders SET total_amount = -0.01 WHERE order_id = 'o5'"),
        {("orders", BETWEEN, "total_amount"): (1, 40)}),
    "order without created_at": (
        lambda c: (drop_not_null(c, "orders", "created_at"),
                   c.execute("UPDATE staging.orders SET created_at = NULL WHERE order_id = 'o6'")),
        {("orders", NOT_NULL, "created_at"): (1, 40)}),
    "paid before it was created": (
        lambda c: c.execute("UPDATE staging.orders SET paid_at = created_at - INTERVAL 1 SECOND "
                            "WHERE order_id IN ('o7', 'o8')"),
        {("orders", PAIR, "paid_at,created_at"): (2, 40)}),
    "item without order id": (
        lambda c: (drop_not_null(c, "order_items", "order_id"),
                   c.execute("UPDATE staging.order_items SET order_id = NULL WHERE order_id = 'o3' AND line_no = 2")),
        {("order_items", NOT_NULL, "order_id"): (1, 60), ("order_items", BETWEEN, "_copies"): (1, 60),
         ("order_items", IN_SET, "_known_order"): (1, 60)}),
    "item line twice in the run": (
        lambda c: stage(c, "order_items", [{"order_id": "o4", "line_no": 1}]),
        {("order_items", COMPOUND, "order_id,line_no"): (2, 61), ("order_items", BETWEEN, "_copies"): (2, 61)}),
    "item line also staged by an earlier run": (
        lambda c: stage(c, "order_items", [{"order_id": "o4", "line_no": 2}], ingest_id=RUN - 1),
        {("order_items", BETWEEN, "_copies"): (1, 60)}),
    "zero quantity": (
        lambda c: c.execute("UPDATE staging.order_items SET quantity = 0 WHERE order_id = 'o9'"),
        {("order_items", BETWEEN, "quantity"): (2, 60)}),
    "negative unit price": (
        lambda c: c.execute("UPDATE staging.order_items SET unit_price = -1 WHERE order_id = 'o9' AND line_no = 1"),
        {("order_items", BETWEEN, "unit_price"): (1, 60)}),
    "review twice in the run": (
        lambda c: stage(c, "reviews", [{"order_id": "o2", "rating": 4}]),
        {("reviews", COMPOUND, "order_id,created_at"): (2, 11), ("reviews", BETWEEN, "_copies"): (2, 11)}),
    "review also staged by an earlier run": (
        lambda c: stage(c, "reviews", [{"order_id": "o3"}], ingest_id=RUN - 1),
        {("reviews", BETWEEN, "_copies"): (1, 10)}),
    "rating 6": (
        lambda c: c.execute("UPDATE staging.reviews SET rating = 6 WHERE order_id = 'o1'"),
        {("reviews", BETWEEN, "rating"): (1, 10)}),
    "rating 0": (
        lambda c: c.execute("UPDATE staging.reviews SET rating = 0 WHERE order_id = 'o1'"),
        {("reviews", BETWEEN, "rating"): (1, 10)}),
    "unknown suppression channel": (
        lambda c: c.execute("UPDATE staging.suppressions SET channel = 'fax' WHERE channel = 'email'"),
        {("suppressions", IN_SET, "channel"): (1, 3)}),
}

REPORTED = {
    "order of an unknown customer": (
        lambda c: c.execute("UPDATE staging.orders SET customer_id = 'ghost' WHERE order_id IN ('o1', 'o2', 'o3')"),
        {("orders", IN_SET, "_known_customer"): (3, 40)}),
    "item of an unknown order": (
        lambda c: stage(c, "order_items", [{"order_id": "o404", "line_no": 1}]),
        {("order_items", IN_SET, "_known_order"): (1, 61)}),
    "review of an unknown order": (
        lambda c: stage(c, "reviews", [{"order_id": "o404"}, {"order_id": "o405"}]),
        {("reviews", IN_SET, "_known_order"): (2, 12)}),
}


def test_the_good_rows_pass_every_check(good):
    results = validate_ingest(good, RUN)
    assert failures(results) == {}
    checked = {r["suite"] for r in results}
    assert checked == {f"staging.{e}" for e in SUITES}
    assert len(results) == sum(len(checks) for _, checks in SUITES.values()), "one result per check"
    counts = {r["suite"]: r["element_count"] for r in results}
    assert counts == {"staging.customers": 20, "staging.products": 5, "staging.orders": 40,
                      "staging.order_items": 60, "staging.reviews": 10, "staging.suppressions": 3}
    assert good.execute("SELECT count(*) FROM ops.validation_results WHERE success").fetchone()[0] == len(results)


@pytest.mark.parametrize("case", list(CRITICAL))
def test_each_critical_check_fails_the_run_naming_itself_and_its_count(good, case):
    breaks, expected = CRITICAL[case]
    breaks(good)
    with pytest.raises(ValidationFailed) as info:
        validate_ingest(good, RUN)
    assert stored_failures(good) == expected, "stored with their counts"
    critical = {k: v for k, v in expected.items() if not k[2].startswith("_known_")}   # orphans are reported
    message = str(info.value)
    for (suite, expectation, column), (bad, rows) in critical.items():
        assert f"staging.{suite}: {expectation}({column}) failed for {bad} of {rows} rows" in message
    assert message.count(" failed for ") == len(critical), message


@pytest.mark.parametrize("case", list(REPORTED))
def test_each_reported_check_is_stored_but_does_not_fail_the_run(good, case):
    breaks, expected = REPORTED[case]
    breaks(good)
    results = validate_ingest(good, RUN)
    assert failures(results) == expected
    assert stored_failures(good) == expected
    [failed] = [r for r in results if not r["success"]]
    assert failed["critical"] is False and " is not in " in failed["label"]


def test_orphans_are_found_alike_whether_the_parent_is_read_whole_or_by_the_runs_keys(good):
    """A run at least half its parent's size reads the whole parent for `_known_*`; a smaller one (a drop) only
    the parent's keys it names. Both count the same orphans."""
    from transforms.validate import KNOWN, _parent_keys

    assert "semi join" not in _parent_keys(good, KNOWN["orders"], 40)            # 20 customers: the whole parent
    stage(good, "orders", [{"order_id": "d1", "customer_id": "c1"}, {"order_id": "d2", "customer_id": "ghost"},
                           {"order_id": "d3", "customer_id": "ghost2"}], ingest_id=RUN + 1)
    assert "semi join" in _parent_keys(good, KNOWN["orders"], 3)                 # a drop: by its own keys
    whole = failures(validate_ingest(good, RUN))
    drop = failures(validate_ingest(good, RUN + 1))
    assert whole == {} and drop == {("orders", IN_SET, "_known_customer"): (2, 3)}


def test_an_empty_run_checks_nothing(good):
    assert validate_ingest(good, RUN + 1) == []


def test_a_run_whose_every_file_is_quarantined_is_recorded(con, landing):
    """Nothing to check is not an error (it was: an empty insert into ops.validation_results)."""
    landing.raw("orders", "export.xlsx", b"PK\x03\x04 a workbook")
    result = load(con, landing.root, validate=validate_ingest)
    assert result.validation == [] and len(result.files_quarantined) == 1
    assert con.execute("SELECT count(*) FROM ops.quarantine").fetchone()[0] == 1
    assert con.execute("SELECT status FROM ops.ingest_runs").fetchall() == [("ok",)]


def test_the_checks_see_the_open_transaction_and_leave_it_open(con):
    """GX queries through the caller's own connection: it sees the uncommitted rows and cannot commit or
    roll back the transaction they belong to."""
    con.execute("BEGIN TRANSACTION")
    stage(con, "orders", [{"order_id": f"o{i}", "customer_id": "ghost"} for i in range(30)])
    results = validate_ingest(con, RUN)
    assert failures(results) == {("orders", IN_SET, "_known_customer"): (30, 30)}
    with pytest.raises(duckdb.TransactionException):
        con.execute("BEGIN TRANSACTION")          # still inside the caller's transaction
    con.execute("ROLLBACK")
    assert con.execute("SELECT count(*) FROM staging.orders").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM ops.validation_results").fetchone()[0] == 0, "rolled back with it"
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary").fetchone()[0] == 0


def test_a_bad_row_among_many_rolls_the_whole_ingest_back_naming_the_expectation_and_the_count(con, landing):
    n = 5_000
    landing.csv("customers", "c.csv", [customer("c1")])
    landing.parquet("orders", "big.parquet", [order(f"o{i:05}", total_amount=f"{i % 500}.25") for i in range(n)])

    def staging_let_one_through(c, ingest_id):
        # a bad value that the staging rules missed, inside the ingest's transaction
        c.execute("UPDATE staging.orders SET total_amount = -3 WHERE order_id = 'o04242'")
        return validate_ingest(c, ingest_id)

    with pytest.raises(ValidationFailed) as info:
        load(con, landing.root, validate=staging_let_one_through)
    assert str(info.value) == (f"staging.orders: expect_column_values_to_be_between(total_amount) failed for 1 of "
                               f"{n} rows")
    for table in ("staging.orders", "staging.customers", "ops.ingest_runs", "ops.ingested_files",
                  "ops.validation_results"):
        assert con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table
    # the rows typed before the transaction (transforms/ingest.py TYPED_BEFORE) leave no scratch table behind
    assert con.execute("SELECT table_name FROM duckdb_tables() WHERE temporary AND (table_name LIKE 'stg%' "
                       "OR table_name LIKE 'land%' OR table_name = '_dup')").fetchall() == []
    again = load(con, landing.root, validate=validate_ingest)
    assert (again.files_new, again.rows_loaded) == (2, n + 1), "the files are still new, and load when good"
    assert failures(again.validation) == {}


def first_load(landing) -> None:
    """A first load with orphans of every kind: 3 of 12 orders name no known customer, 2 items and 1 review no
    known order; and two orders the run gives twice (the newer version wins)."""
    landing.csv("customers", "c.csv", [customer(f"c{i}") for i in range(9)])
    landing.csv("products", "p.csv", [{"product_id": "p1", "shop_id": "s1", "title": "t", "category": "c"}])
    landing.csv("orders", "o.csv", [order(f"o{i}", customer_id=f"c{i}" if i < 9 else "ghost") for i in range(12)]
                + [order("o1", total_amount="5.00", updated_at="2026-11-21T10:00:00+08:00")])
    landing.parquet("orders", "o2.parquet", [order("o2", total_amount="6.00", updated_at="2026-11-22T10:00:00+08:00")])
    landing.csv("order_items", "i.csv", [{"order_id": f"o{i}", "line_no": 1, "product_id": "p1", "quantity": 1,
                                          "unit_price": 1} for i in (*range(12), 404, 405)])
    landing.csv("reviews", "r.csv", [{"order_id": o, "created_at": "2026-11-23T10:00:00+08:00", "rating": 5}
                                     for o in ("o1", "o404")])


def test_a_first_loads_suites_run_before_the_merge_and_give_what_they_give_after_it(tmp_path, config_path):
    """The first load of a typed entity is checked on its typed rows before the ingest's transaction
    (validate_typed: committed rows, which DuckDB reads faster); the results and stored rows are the same as the
    suites give on the merged rows inside it."""
    from conftest import Landing
    from crm.config import load_settings
    from crm.db import connect, sync_shops

    def ingest(name, validate):
        landing = Landing(tmp_path / f"landing-{name}")
        first_load(landing)
        con = connect(tmp_path / f"{name}.duckdb")
        sync_shops(con, load_settings(config_path))
        steps = []
        result = load(con, landing.root, validate=validate, step=lambda what, n: steps.append(what))
        stored = con.execute("SELECT suite, expectation, column_name, critical, success, element_count, "
                             "unexpected_count FROM ops.validation_results ORDER BY ALL").fetchall()
        con.close()
        return result.validation, stored, steps

    early, early_stored, early_steps = ingest("early", validate_ingest)
    inside, inside_stored, inside_steps = ingest("inside", lambda c, ingest_id: validate_ingest(c, ingest_id))
    assert "validate customers, products, orders, order_items" in early_steps
    assert not any(s.startswith("validate") for s in inside_steps)
    assert early == inside and early_stored == inside_stored
    assert failures(early) == {("orders", IN_SET, "_known_customer"): (3, 12),
                               ("order_items", IN_SET, "_known_order"): (2, 14),
                               ("reviews", IN_SET, "_known_order"): (1, 2)}
    assert {r["suite"]: r["element_count"] for r in early}["staging.orders"] == 12


def test_an_early_suite_whose_merge_was_no_first_load_runs_again_inside(con, landing):
    """Should the staging table get rows between the early suites and the merge, the merge is no first load and
    may keep fewer rows than were typed: that entity's suite is run again on what was merged."""
    first_load(landing)

    def early_then_someone_else(c, entities, typed, unique=frozenset()):
        done = validate_ingest.early(c, entities, typed, unique)
        # a newer o3 staged by someone else: the run's o3 loses to it
        stage(c, "orders", [{"order_id": "o3", "customer_id": "c3", "updated_at": datetime(2027, 1, 1, tzinfo=timezone.utc)}],
              ingest_id=RUN + 100)
        return done

    def validate(c, ingest_id, early=None):
        return validate_ingest(c, ingest_id, early)

    validate.early = early_then_someone_else
    result = load(con, landing.root, validate=validate)
    counts = {r["suite"]: r["element_count"] for r in result.validation}
    assert counts["staging.orders"] == 11, "checked on the 11 orders merged, not the 12 typed"
    assert counts["staging.customers"] == 9 and counts["staging.order_items"] == 14
    assert failures(result.validation)[("orders", IN_SET, "_known_customer")] == (3, 11)


def test_no_row_is_pulled_into_pandas(good, monkeypatch):
    """The checks run where the rows are: no pandas frame is built of them (the old way built one per suite)."""
    sizes = []
    init = pd.DataFrame.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        sizes.append(len(self))

    monkeypatch.setattr(pd.DataFrame, "__init__", spy)
    stage(good, "orders", [{"order_id": f"x{i}", "customer_id": "c1"} for i in range(200)])
    results = validate_ingest(good, RUN)
    assert {r["suite"]: r["element_count"] for r in results}["staging.orders"] == 240
    assert max(sizes, default=0) < 20, sizes


def test_a_check_that_cannot_be_evaluated_fails_the_run_saying_so(good, monkeypatch):
    query, checks = SUITES["products"]
    monkeypatch.setitem(SUITES, "products", (query, [*checks, Check("ExpectColumnValuesToNotBeNull", {"column": "gone"})]))
    with pytest.raises(ValidationFailed, match=r"staging\.products: expect_column_values_to_not_be_null\(gone\) "
                                               r"could not be evaluated"):
        validate_ingest(good, RUN)


# ---------------------------------------------------------------------------------------------- outbox

def outbox(n: int, **bad: dict[int, object]) -> pl.DataFrame:
    """n good messages (SMS, recipient set); `bad` sets column values by row: recipient={3: None}."""
    columns = {"message_id": [f"payment_reminder:o{i}" for i in range(n)], "paid_at_t": [False] * n,
               "in_quiet": [False] * n, "over_cap": [False] * n, "opted_out": [False] * n,
               "recipient": [f"+86138{i:08}" for i in range(n)], "channel": ["sms"] * n}
    for column, rows in bad.items():
        for i, value in rows.items():
            columns[column][i] = value
    return pl.DataFrame(columns, schema_overrides={"recipient": pl.String})


@pytest.mark.parametrize("bad,failed", [
    ({"paid_at_t": {1: True}}, "paid_at_t) failed for 1 of 50 rows (a payment reminder for an order paid at T)"),
    ({"in_quiet": {1: True, 2: True}}, "in_quiet) failed for 2 of 50 rows (a payment reminder inside the shop's quiet hours)"),
    ({"over_cap": {9: True}}, "over_cap) failed for 1 of 50 rows (more payment reminders to a customer today than daily_cap)"),
    ({"opted_out": {0: True}}, "opted_out) failed for 1 of 50 rows (a message to an opted-out customer)"),
    ({"recipient": {4: None}}, "recipient) failed for 1 of 50 rows (an automatic message without a recipient)"),
    ({"message_id": {5: "payment_reminder:o6"}}, "message_id) failed for 2 of 50 rows (a message created twice)"),
])
def test_each_outbox_check_stops_the_dispatch(con, bad, failed):
    with pytest.raises(ValidationFailed) as info:
        validate_outbox(con, outbox(50, **bad), T)
    assert str(info.value).startswith("outbox: expect_column_") and str(info.value).endswith(failed)
    assert con.execute("SELECT count(*) FROM ops.validation_results WHERE run_kind = 'dispatch' AND NOT success "
                       "AND run_ref = ?", [T.isoformat()]).fetchone()[0] == 1


def test_a_call_needs_no_recipient_and_the_frame_is_left_alone(con):
    frame = outbox(50, recipient={3: None, 4: None}, channel={3: "call", 4: "call"})
    results = validate_outbox(con, frame, T)
    assert [r for r in results if not r["success"]] == [] and len(results) == 6
    assert {r["element_count"] for r in results} == {50}
    assert frame["recipient"].null_count() == 2, "the dispatch's frame is not changed"
    assert con.execute("SELECT count(*) FROM duckdb_views() WHERE temporary AND view_name LIKE '_gx%'").fetchone()[0] == 0


def test_repeated_keys_counts_exactly_the_keys_that_come_more_than_once():
    """crm.db.repeated_keys, which the merge's and the suites' `_copies` rely on: by hash first, then exactly; with
    no repeat it leaves an empty table of the key's columns."""
    from crm.db import repeated_keys

    c = duckdb.connect()
    c.execute("CREATE TABLE r AS SELECT * FROM (VALUES ('a', 1, 0), ('a', 1, 0), ('a', 2, 0), ('b', 1, 0), "
              "('b', 1, 0), ('b', 1, 0), ('c', 1, 1)) t(k, line, run)")
    assert repeated_keys(c, "(SELECT k, line FROM r WHERE run = $run)", ("k", "line"), "_rep", {"run": 0}) == 2
    assert c.execute("SELECT * FROM _rep ORDER BY ALL").fetchall() == [("a", 1, 2), ("b", 1, 3)]
    assert repeated_keys(c, "(SELECT k FROM r WHERE run = $run)", ("k",), "_rep", {"run": 1}) == 0
    assert c.execute("SELECT column_name FROM (DESCRIBE _rep)").fetchall() == [("k",), ("n",)]
    assert c.execute("SELECT count(*) FROM _rep").fetchone()[0] == 0
    assert not c.execute("SELECT * FROM duckdb_tables() WHERE table_name = '_rep_hash'").fetchall()


def test_uniqueness_is_counted_by_a_join_to_the_repeated_values_and_agrees_with_a_window_count():
    """GX's two uniqueness metrics are computed by a join to the values that repeat (transforms/gx_duckdb.py):
    they are the registered providers, and GX's expectations give, through them, the count of rows whose value
    (or non-NULL key pair) other rows share, as a window count over every row says. NULLs: outside the domain."""
    from great_expectations.execution_engine import SqlAlchemyExecutionEngine
    from great_expectations.expectations.registry import get_metric_provider

    from transforms import gx_duckdb
    from transforms.validate import _context, _run_suite, _source

    c = duckdb.connect()
    # k: 'a' ×3, 'b' ×2, 'x' ×2, 'c' and 'y' once, NULL ×2;
    # (k, line): ('a', 1) ×2, ('b', 2) ×2, ('x', NULL) ×2 (not counted: a NULL)
    c.execute("CREATE TABLE t AS SELECT * FROM (VALUES ('a', 1), ('a', 1), ('a', 3), ('b', 2), ('b', 2), ('c', 1), "
              "(NULL, 5), (NULL, 5), ('x', NULL), ('x', NULL), ('y', 7)) v(k, line)")
    gx, context = _context()
    source = _source(context, c)
    for metric in ("column_values.count_per_value.map", "compound_columns.count.map"):
        provider, _ = get_metric_provider(metric, SqlAlchemyExecutionEngine(create_temp_table=False,
                                                                            engine=source.get_engine()))
        assert provider.__name__.endswith("UniqueByJoin"), (metric, provider)
    window = c.execute("SELECT count(*) FILTER (WHERE k IS NOT NULL AND n1 > 1), "
                       "count(*) FILTER (WHERE k IS NOT NULL AND line IS NOT NULL AND n2 > 1) FROM "
                       "(SELECT *, count(*) OVER (PARTITION BY k) n1, count(*) OVER (PARTITION BY k, line) n2 FROM t)"
                       ).fetchone()
    assert window == (7, 4)
    checks = [Check("ExpectColumnValuesToBeUnique", {"column": "k"}),
              Check("ExpectCompoundColumnsToBeUnique", {"column_list": ["k", "line"]})]
    one, pair = _run_suite(gx, source, "t", "t", checks)
    assert (one["unexpected_count"], pair["unexpected_count"]) == window
    assert (one["success"], pair["success"], one["element_count"]) == (False, False, 11)
    c.execute("DELETE FROM t WHERE k IN ('a', 'b', 'x')")
    one, pair = _run_suite(gx, source, "t", "t", checks)
    assert (one["success"], one["unexpected_count"], pair["success"], pair["unexpected_count"]) == (True, 0, True, 0)
    gx_duckdb.count_repeats_by_join()            # again: a no-op


def test_gx_is_imported_without_the_modules_only_unused_expectations_need_and_they_still_load_when_used():
    """scipy.stats and altair (transforms/validate.py DEFERRED_IMPORTS) are stand-ins while GX is made and the suites
    run: they are not imported. Reading anything from one imports the real module, for GX and for anyone else."""
    code = """
import sys
sys.path.insert(0, sys.argv[1])
import duckdb
from transforms.validate import Check, _context, _run_suite, _source
gx, context = _context()
c = duckdb.connect()
c.execute("CREATE TABLE t AS SELECT range AS k FROM range(5)")
r = _run_suite(gx, _source(context, c), "t", "t", [Check("ExpectColumnValuesToBeUnique", {"column": "k"})])
print(r[0]["success"], sorted(type(sys.modules[m]).__name__ for m in ("scipy.stats", "altair")))
from scipy import stats
print(stats.entropy([0.5, 0.5], [0.5, 0.5]), type(sys.modules["scipy.stats"]).__name__)
from great_expectations.expectations.core import expect_column_kl_divergence_to_be_less_than as kl
print(kl.alt.Chart.__name__, type(sys.modules["altair"]).__name__)
"""
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parent.parent)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:3] == ["True ['_Deferred', '_Deferred']", "0.0 module", "Chart module"], out.stdout
