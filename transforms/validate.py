"""Great Expectations suites on the staged data (issue: validation of the ingest).

Each suite runs on the rows a run loaded (``_ingest_id``), pulled from DuckDB into a pandas frame
with a few SQL-computed helper columns: ``_copies`` (how many rows of the whole staging table
share the key: must be 1) and ``_known_*`` (does the referenced order / customer exist).

*Critical* expectations (keys, ranges) fail the run: the caller rolls the load back. Orphans (an
item whose order, or an order whose customer, is not in staging) are *reported*: stored in
``ops.validation_results`` with their count and logged, but the rows stay (the parent may come in a
later drop).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone

import duckdb


class ValidationFailed(Exception):
    """A critical expectation failed; the message names it and how many rows."""


@dataclass(frozen=True)
class Check:
    expectation: str        # GX class name in great_expectations.expectations
    kwargs: dict
    critical: bool = True
    label: str = ""         # what a failure means, in words


# --------------------------------------------------------------------------------------------------
# the suites: SQL that selects the rows to check, and the expectations on them

_COPIES = """(SELECT count(*) FROM staging.{table} x WHERE {match})"""


def _copies(table: str, key: tuple[str, ...]) -> str:
    return _COPIES.format(table=table, match=" AND ".join(f"x.{k} = t.{k}" for k in key))


SUITES: dict[str, tuple[str, list[Check]]] = {
    "customers": (
        f"SELECT customer_id, shop_id, member_level, opt_out, {_copies('customers', ('customer_id',))} AS _copies "
        "FROM staging.customers t WHERE _ingest_id = $ingest_id",
        [
            Check("ExpectColumnValuesToNotBeNull", {"column": "customer_id"}),
            Check("ExpectColumnValuesToBeUnique", {"column": "customer_id"}),
            Check("ExpectColumnValuesToBeBetween", {"column": "_copies", "min_value": 1, "max_value": 1}),
            Check("ExpectColumnValuesToBeBetween", {"column": "member_level", "min_value": 0}),
            Check("ExpectColumnValuesToNotBeNull", {"column": "opt_out"}),
        ],
    ),
    "products": (
        f"SELECT product_id, followup_days, {_copies('products', ('product_id',))} AS _copies "
        "FROM staging.products t WHERE _ingest_id = $ingest_id",
        [
            Check("ExpectColumnValuesToNotBeNull", {"column": "product_id"}),
            Check("ExpectColumnValuesToBeUnique", {"column": "product_id"}),
            Check("ExpectColumnValuesToBeBetween", {"column": "_copies", "min_value": 1, "max_value": 1}),
            Check("ExpectColumnValuesToBeBetween", {"column": "followup_days", "min_value": 0}),
        ],
    ),
    "orders": (
        f"SELECT order_id, total_amount::DOUBLE AS total_amount, epoch(created_at) AS created_at, "
        f"epoch(paid_at) AS paid_at, {_copies('orders', ('order_id',))} AS _copies, "
        "EXISTS (SELECT 1 FROM staging.customers c WHERE c.customer_id = t.customer_id) AS _known_customer "
        "FROM staging.orders t WHERE _ingest_id = $ingest_id",
        [
            Check("ExpectColumnValuesToNotBeNull", {"column": "order_id"}),
            Check("ExpectColumnValuesToBeUnique", {"column": "order_id"}),
            Check("ExpectColumnValuesToBeBetween", {"column": "_copies", "min_value": 1, "max_value": 1}),
            Check("ExpectColumnValuesToBeBetween", {"column": "total_amount", "min_value": 0}),
            Check("ExpectColumnValuesToNotBeNull", {"column": "created_at"}),
            Check("ExpectColumnPairValuesAToBeGreaterThanB",
                  {"column_A": "paid_at", "column_B": "created_at", "or_equal": True, "ignore_row_if": "either_value_is_missing"}),
            Check("ExpectColumnValuesToBeInSet", {"column": "_known_customer", "value_set": [True]}, critical=False,
                  label="orders whose customer_id is not in customers"),
        ],
    ),
    "order_items": (
        f"SELECT order_id, line_no, quantity, unit_price::DOUBLE AS unit_price, "
        f"{_copies('order_items', ('order_id', 'line_no'))} AS _copies, "
        "EXISTS (SELECT 1 FROM staging.orders o WHERE o.order_id = t.order_id) AS _known_order "
        "FROM staging.order_items t WHERE _ingest_id = $ingest_id",
        [
            Check("ExpectColumnValuesToNotBeNull", {"column": "order_id"}),
            Check("ExpectCompoundColumnsToBeUnique", {"column_list": ["order_id", "line_no"]}),
            Check("ExpectColumnValuesToBeBetween", {"column": "_copies", "min_value": 1, "max_value": 1}),
            Check("ExpectColumnValuesToBeBetween", {"column": "quantity", "min_value": 1}),
            Check("ExpectColumnValuesToBeBetween", {"column": "unit_price", "min_value": 0}),
            Check("ExpectColumnValuesToBeInSet", {"column": "_known_order", "value_set": [True]}, critical=False,
                  label="order_items whose order_id is not in orders"),
        ],
    ),
    "reviews": (
        f"SELECT order_id, epoch(created_at) AS created_at, rating, "
        f"{_copies('reviews', ('order_id', 'created_at'))} AS _copies, "
        "EXISTS (SELECT 1 FROM staging.orders o WHERE o.order_id = t.order_id) AS _known_order "
        "FROM staging.reviews t WHERE _ingest_id = $ingest_id",
        [
            Check("ExpectCompoundColumnsToBeUnique", {"column_list": ["order_id", "created_at"]}),
            Check("ExpectColumnValuesToBeBetween", {"column": "_copies", "min_value": 1, "max_value": 1}),
            Check("ExpectColumnValuesToBeBetween", {"column": "rating", "min_value": 1, "max_value": 5}),
            Check("ExpectColumnValuesToBeInSet", {"column": "_known_order", "value_set": [True]}, critical=False,
                  label="reviews whose order_id is not in orders"),
        ],
    ),
    "suppressions": (
        "SELECT channel, customer_id, phone, email FROM staging.suppressions WHERE _ingest_id = $ingest_id",
        [
            Check("ExpectColumnValuesToBeInSet", {"column": "channel", "value_set": ["sms", "email", "call", "all"]}),
        ],
    ),
}


# the dispatch's checks on the messages it is about to create (docs/rules.md §4, §6): each column must be false
OUTBOX_CHECKS = [
    Check("ExpectColumnValuesToBeInSet", {"column": "paid_at_t", "value_set": [False]},
          label="a payment reminder for an order paid at T"),
    Check("ExpectColumnValuesToBeInSet", {"column": "in_quiet", "value_set": [False]},
          label="a payment reminder inside the shop's quiet hours"),
    Check("ExpectColumnValuesToBeInSet", {"column": "over_cap", "value_set": [False]},
          label="more payment reminders to a customer today than daily_cap"),
    Check("ExpectColumnValuesToBeInSet", {"column": "opted_out", "value_set": [False]},
          label="a message to an opted-out customer"),
    Check("ExpectColumnValuesToNotBeNull", {"column": "recipient"},
          label="an automatic message without a recipient"),
    Check("ExpectColumnValuesToBeUnique", {"column": "message_id"}, label="a message created twice"),
]


def _context():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return gx, context


def validate_ingest(con: duckdb.DuckDBPyConnection, ingest_id: int) -> list[dict]:
    """Run every suite on the rows of `ingest_id`; store the results; raise on a critical failure."""
    gx, context = _context()
    results: list[dict] = []
    for entity, (query, checks) in SUITES.items():
        frame = con.execute(query.replace("$ingest_id", str(int(ingest_id)))).df()
        if not frame.empty:
            results += _run_suite(gx, context, f"staging.{entity}", frame, checks)
    store(con, "ingest", str(ingest_id), results)
    _raise_on_critical(results)
    return results


def _raise_on_critical(results: list[dict]) -> None:
    failed = [r for r in results if r["critical"] and not r["success"]]
    if failed:
        raise ValidationFailed("; ".join(describe(r) for r in failed))


def describe(r: dict) -> str:
    what = f" ({r['label']})" if r.get("label") else ""
    return (f"{r['suite']}: {r['expectation']}({r['column']}) failed for {r['unexpected_count']} of "
            f"{r['element_count']} rows{what}")


def store(con: duckdb.DuckDBPyConnection, run_kind: str, run_ref: str, results: list[dict]) -> None:
    now = datetime.now(timezone.utc)
    con.executemany(
        "INSERT INTO ops.validation_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(run_kind, run_ref, r["suite"], r["expectation"], r["column"], r["critical"], r["success"],
          r["element_count"], r["unexpected_count"], now) for r in results],
    )


def _columns(kwargs: dict) -> str:
    """What an expectation looks at: 'order_id', 'order_id,line_no' or 'paid_at,created_at'."""
    return kwargs.get("column") or ",".join(kwargs.get("column_list") or [kwargs.get("column_A", ""),
                                                                           kwargs.get("column_B", "")]).strip(",")


def _run_suite(gx, context, name: str, frame, checks: list[Check]) -> list[dict]:
    """One GX suite over a pandas frame; one result dict per check."""
    source = context.data_sources.add_pandas(f"src_{name}")
    suite = gx.ExpectationSuite(name=name)
    for i, check in enumerate(checks):
        suite.add_expectation(getattr(gx.expectations, check.expectation)(**check.kwargs, meta={"check": i}))
    batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("run").get_batch(
        batch_parameters={"dataframe": frame})
    results = []
    for r in batch.validate(suite).results:
        check = checks[int(r.expectation_config.meta["check"])]
        results.append({
            "suite": name, "expectation": r.expectation_config.type, "column": _columns(check.kwargs),
            "critical": check.critical, "label": check.label, "success": bool(r.success),
            "element_count": int(r.result.get("element_count") or len(frame)),
            "unexpected_count": int(r.result.get("unexpected_count") or 0),
        })
    return results


def validate_outbox(con: duckdb.DuckDBPyConnection, frame, as_of) -> list[dict]:
    """GX on the messages a dispatch is about to create; raise (nothing is written or sent) on a failure."""
    if frame.height == 0:
        return []
    gx, context = _context()
    pdf = frame.select("message_id", "paid_at_t", "in_quiet", "over_cap", "opted_out", "recipient", "channel").to_pandas()
    # a call needs no recipient to be queued; automatic messages do
    pdf.loc[pdf["channel"] == "call", "recipient"] = pdf.loc[pdf["channel"] == "call", "recipient"].fillna("agent")
    results = _run_suite(gx, context, "outbox", pdf, OUTBOX_CHECKS)
    store(con, "dispatch", as_of.isoformat(), results)
    _raise_on_critical(results)
    return results
