"""Great Expectations suites on the staged data (issue: validation of the ingest) and on a dispatch's outbox.

Each suite runs on the rows a run loaded (``_ingest_id``) where they are: in DuckDB, through GX's SQL
execution engine (SQLAlchemy, with the ``duckdb_engine`` dialect). GX is handed the caller's own DuckDB
connection, so it sees the rows the ingest staged inside its still open transaction, and it can neither
commit, roll back nor close that connection (transforms/gx_duckdb.py). Every expectation is one or two
aggregate queries (``sum(CASE WHEN <unexpected> …)``, ``count(*)``); no row leaves DuckDB, so memory
stays DuckDB's (bounded by its ``memory_limit``, spilling beyond it), whatever the size of the run. The two
uniqueness expectations give each row its value's count by a join to the values that repeat only, not to
every value's count (transforms/gx_duckdb.py ``count_repeats_by_join``: a 10M-order first load's four
uniqueness queries took 9.7 s, now 5.9 s).

The rows to check are first written once to a temporary table, with SQL-computed helper columns:
``_copies`` (how many rows of the whole staging table share the key: must be 1) and ``_known_*`` (does
the referenced order / customer exist), so every check reads one plain table (GX runs ~10 queries per
suite; against the suite's query itself each of them would compute the helper columns again). The
helper columns cost what the run's rows cost: rows of other runs are only looked up by the run's keys (a
hash table of the run's rows); the run's repeated keys are grouped by their 64-bit hash first
(crm.db.repeated_keys, as the merge's are), or, for the typed rows of a first load in which the ingest already
found no key twice, not counted again; a parent is read whole only for a run at least half its size
(a first load), else by the run's keys; and an entity the run did not load is not looked at.

A first load of an entity that the ingest types before its transaction (customers, products, orders, order
items: transforms/ingest.py ``TYPED_BEFORE``) is checked before that transaction, on the typed rows
(``validate_typed``): the merge inserts exactly those rows, so the results are the ones the suite gives on
the merged rows, but DuckDB reads committed rows about twice as fast as rows written inside an open
transaction. Those results are stored, and a critical one raised, inside the transaction with the others';
should the merge turn out not to be a first load after all, that suite runs again there.

*Critical* expectations (keys, ranges) fail the run: the caller rolls the load back. Orphans (an
item whose order, or an order whose customer, is not in staging) are *reported*: stored in
``ops.validation_results`` with their count and logged, but the rows stay (the parent may come in a
later drop).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import threading
import types
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timezone

import duckdb

from crm.db import repeated_keys


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


def _rows(table: str, key: tuple[str, ...], columns: str, known: tuple[str, str, str] | None = None) -> str:
    """The rows a run loaded of `table` (`columns`), with `_copies` and, for `known` = (name,
    parent, column), `_known_<name>`: does the row's `column` exist in staging.`parent`. The parent's keys are
    the `{parent_keys}` placeholder, which `_parent_keys` fills in by the run's size; where the run's rows are read
    is the `{mine}` placeholder (`_fill`: staging, or the typed rows of a first load before they are merged). The
    keys other runs staged too (`_gx_older`) and those this run has twice (`_gx_repeated`) are small tables that
    `_check` makes first, so that the run's rows are read once here (a CTE read twice is materialised: a copy more
    of every row)."""
    using = ", ".join(key)
    known_col = ""
    if known:
        name, parent, column = known
        known_col = (f",\n        coalesce(mine.{column} in ({{parent_keys}}), false) as _known_{name}"
                     f"   -- a NULL {column} is not known")
    return f"""
with mine as (          -- the rows this run loaded
    select {columns} from {{mine}}
),
final as (
    select
        mine.*,
        -- rows of the whole table with this row's key (must be 1; a key with a NULL matches none): this run's
        -- copies (_gx_repeated: keys it staged more than once) and other runs' (_gx_older): none, unless a merge
        -- went wrong
        case when {" or ".join(f"mine.{k} is null" for k in key)} then 0
             else coalesce(repeated.n, 1) + coalesce(older.n, 0)
        end as _copies{known_col}
    from mine
    left join _gx_older as older using ({using})
    left join _gx_repeated as repeated using ({using})
)
select * from final
"""


def _older(table: str, key: tuple[str, ...], mine: str) -> str:
    """_gx_older: the keys of the run's rows (`mine`) that other runs staged too, with how many rows (none, unless a
    merge went wrong): only the run's keys are looked up (a hash table of them)."""
    using = ", ".join(key)
    return (f"select {using}, count(*) as n from staging.{table} semi join (select {using} from {mine}) as m "
            f"using ({using}) where _ingest_id is distinct from $ingest_id group by all")


def _parent_keys(con: duckdb.DuckDBPyConnection, known: tuple[str, str, str], run_rows: int,
                 typed: frozenset[str] = frozenset()) -> str:
    """The parent's keys for `_known_*`, as the smaller hash table: a run at least half the parent's size (a first
    load) looks its rows up in the whole parent; a smaller run (a drop) reads only the parent's keys it names,
    by a hash table of its own rows. The same answer either way. Before the merge (`typed`: the entities whose
    typed rows, stg_<entity>, are not merged yet), a typed parent's good rows count as the parent's too: they
    are the keys the merge adds (it only adds keys or replaces a row by one of the same key)."""
    _, parent, column = known
    parent_rows = con.execute(f"SELECT count(*) FROM staging.{parent}").fetchone()[0]
    if parent_rows <= 2 * run_rows:
        keys = f"select {column} from staging.{parent}"
    else:
        keys = f"select {column} from staging.{parent} semi join mine using ({column})"
    if parent in typed:
        keys += f" union all select {column} from stg_{parent} where _reject_reason is null"
    return keys


def _fill(query: str, mine: str, parent_keys: str | None) -> str:
    query = query.replace("{mine}", mine)
    return query.replace("{parent_keys}", parent_keys) if parent_keys is not None else query


# the parent a suite's `_known_<name>` looks in: entity -> (name, parent table, column)
KNOWN = {
    "orders": ("customer", "customers", "customer_id"),
    "order_items": ("order", "orders", "order_id"),
    "reviews": ("order", "orders", "order_id"),
}

SUITES: dict[str, tuple[str, list[Check]]] = {
    "customers": (
        _rows("customers", ("customer_id",), "customer_id, shop_id, member_level, opt_out"),
        [
            Check("ExpectColumnValuesToNotBeNull", {"column": "customer_id"}),
            Check("ExpectColumnValuesToBeUnique", {"column": "customer_id"}),
            Check("ExpectColumnValuesToBeBetween", {"column": "_copies", "min_value": 1, "max_value": 1}),
            Check("ExpectColumnValuesToBeBetween", {"column": "member_level", "min_value": 0}),
            Check("ExpectColumnValuesToNotBeNull", {"column": "opt_out"}),
        ],
    ),
    "products": (
        _rows("products", ("product_id",), "product_id, followup_days"),
        [
            Check("ExpectColumnValuesToNotBeNull", {"column": "product_id"}),
            Check("ExpectColumnValuesToBeUnique", {"column": "product_id"}),
            Check("ExpectColumnValuesToBeBetween", {"column": "_copies", "min_value": 1, "max_value": 1}),
            Check("ExpectColumnValuesToBeBetween", {"column": "followup_days", "min_value": 0}),
        ],
    ),
    "orders": (
        _rows("orders", ("order_id",), "order_id, customer_id, total_amount, created_at, paid_at",
              KNOWN["orders"]),
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
        _rows("order_items", ("order_id", "line_no"), "order_id, line_no, quantity, unit_price",
              KNOWN["order_items"]),
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
        _rows("reviews", ("order_id", "created_at"), "order_id, created_at, rating",
              KNOWN["reviews"]),
        [
            Check("ExpectCompoundColumnsToBeUnique", {"column_list": ["order_id", "created_at"]}),
            Check("ExpectColumnValuesToBeBetween", {"column": "_copies", "min_value": 1, "max_value": 1}),
            Check("ExpectColumnValuesToBeBetween", {"column": "rating", "min_value": 1, "max_value": 5}),
            Check("ExpectColumnValuesToBeInSet", {"column": "_known_order", "value_set": [True]}, critical=False,
                  label="reviews whose order_id is not in orders"),
        ],
    ),
    "suppressions": (
        """
with final as (
    select channel, customer_id, phone, email from {mine}
)
select * from final
""",
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

# the outbox's columns the checks read; a call needs no recipient to be queued, automatic messages do
_OUTBOX_ROWS = """
with final as (
    select
        message_id, paid_at_t, in_quiet, over_cap, opted_out,
        case when channel = 'call' then coalesce(recipient, 'agent') else recipient end as recipient
    from _gx_outbox_frame
)
select * from final
"""

# counts only: no unexpected values are fetched (they could be phone numbers, and they are not used)
_RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": 0}


# --------------------------------------------------------------------------------------------------
# GX on the caller's DuckDB connection


# Modules GX imports for expectations the suites do not use, and uses only inside their functions: scipy.stats
# (the KL-divergence and KS-test ones) and altair (the KL-divergence one's charts). Their import is ~0.8 s of CPU
# of GX's ~2 s, which a small run waits for and a big one's DuckDB shares its cores with (a 1 % drop at 10M).
# Each is put in sys.modules as a stand-in before GX is imported; whatever reads anything from it (GX, if such
# an expectation ran) gets the real module, imported then.
DEFERRED_IMPORTS = ("scipy.stats", "altair")
_deferred_lock = threading.Lock()


class _Deferred(types.ModuleType):
    """A stand-in for a module not imported yet: its first use imports it (and drops the stand-in)."""

    def __getattr__(self, name: str):       # what the stand-in has not (a module's own attributes are set)
        return getattr(_real(self.__name__), name)


def _real(name: str) -> types.ModuleType:
    with _deferred_lock:
        if isinstance(sys.modules.get(name), _Deferred):
            del sys.modules[name]
        return importlib.import_module(name)


def _defer_unused_imports() -> None:
    for name in DEFERRED_IMPORTS:
        if name not in sys.modules and importlib.util.find_spec(name.partition(".")[0]) is not None:
            sys.modules[name] = _Deferred(name)


def _new_context():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    _defer_unused_imports()
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from transforms import gx_duckdb

    gx_duckdb.count_repeats_by_join()      # once GX is imported (on the warm-up thread, if there is one)

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return gx, context


_warm: list[Future] = []          # one context being made ahead of time (warm_up), for the next _context()
_warm_lock = threading.Lock()


def warm_up() -> None:
    """Start importing GX and making its context on a thread of its own (~3 s of Python), so that it is ready
    when the ingest's staging (DuckDB, which leaves the other core free) is done. Idempotent."""
    with _warm_lock:
        if not _warm:
            done: Future = Future()
            _warm.append(done)

            def make() -> None:
                try:
                    done.set_result(_new_context())
                except BaseException as e:        # raised again where the context is wanted
                    done.set_exception(e)

            threading.Thread(target=make, name="gx-warm-up", daemon=True).start()


def _context():
    """(gx, a fresh ephemeral context): the one warm_up made, if any, else a new one."""
    with _warm_lock:
        ready = _warm.pop() if _warm else None
    return ready.result() if ready is not None else _new_context()


def _source(context, con: duckdb.DuckDBPyConnection):
    """GX's SQL data source on `con` itself (transforms/gx_duckdb.py): it runs inside the caller's transaction, if
    one is open (the ingest's; validate_typed runs before it)."""
    from transforms import gx_duckdb

    return gx_duckdb.source(context, con)


@dataclass
class Early:
    """The suites already run before the ingest's transaction (`validate_typed`): their results by entity, and
    the GX context and data source they used (made once: the second use costs nothing)."""
    gx: object
    source: object
    results: dict[str, list[dict]]

    def only(self, entities: set[str]) -> "Early":
        return Early(self.gx, self.source, {e: r for e, r in self.results.items() if e in entities})


def validate_typed(con: duckdb.DuckDBPyConnection, entities: list[str], typed: frozenset[str],
                   unique: frozenset[str] = frozenset()) -> Early:
    """Before the ingest's transaction: the suites of `entities`, each a first load (its staging table is empty)
    whose typed rows are stg_<entity> (transforms/ingest.py, TYPED_BEFORE; `typed`: every entity typed so). The
    merge will insert exactly those rows (stg_<entity>'s good rows), so the suite checks the rows it would check
    after the merge, with the same results; but it reads committed tables, which DuckDB scans about twice as fast
    as rows written inside an open transaction. Nothing is stored or raised here: validate_ingest does both, in
    the transaction, with the other suites' results. `unique`: the entities whose typed good rows the ingest found
    no key twice in (its own count of repeated keys, on these very rows, transforms/ingest.py _type): their
    `_copies` does not count them again."""
    gx, context = _context()
    early = Early(gx, _source(context, con), {})
    for entity in entities:
        run_rows = con.execute(f"SELECT count(*) FROM stg_{entity} WHERE _reject_reason IS NULL").fetchone()[0]
        early.results[entity] = _check(con, early, entity, run_rows, f"stg_{entity} where _reject_reason is null",
                                       None, typed, entity in unique)
    return early


def validate_ingest(con: duckdb.DuckDBPyConnection, ingest_id: int, early: Early | None = None) -> list[dict]:
    """Run every suite on the rows of `ingest_id` (those in `early` were run before the merge: their results);
    store the results; raise on a critical failure."""
    if early is None:
        gx, context = _context()
        early = Early(gx, _source(context, con), {})
    results: list[dict] = []
    for entity in SUITES:
        if entity in early.results:
            results += early.results[entity]
            continue
        run_rows = con.execute(f"SELECT count(*) FROM staging.{entity} WHERE _ingest_id = ?", [int(ingest_id)]).fetchone()[0]
        results += _check(con, early, entity, run_rows, f"staging.{entity} where _ingest_id = $ingest_id",
                          int(ingest_id))
    store(con, "ingest", str(ingest_id), results)
    _raise_on_critical(results)
    return results


def _check(con, early: Early, entity: str, run_rows: int, mine: str, ingest_id: int | None,
           typed: frozenset[str] = frozenset(), unique: bool = False) -> list[dict]:
    """One suite on the run's rows of `entity` (`mine`: where they are read) through a helper table. `unique`: the
    ingest already found no key twice among exactly these rows (validate_typed)."""
    if not run_rows:
        return []                     # the run loaded none of these: nothing to check (and no helper columns to make)
    query, checks = SUITES[entity]
    table = f"_gx_rows_{entity}"
    keys = _parent_keys(con, KNOWN[entity], run_rows, typed) if entity in KNOWN else None
    query = _fill(query, mine, keys)
    from transforms.ingest import ENTITIES     # loaded already: only an ingest validates its entities

    def params(sql: str) -> dict:              # ingest_id NULL (before the merge): every staged row is another run's
        return {"ingest_id": ingest_id} if "$ingest_id" in sql else {}

    try:
        key = ENTITIES[entity].key
        if key:
            # the keys the run's rows have more than once (`_gx_repeated`): counted here, or known to be none; and
            # those other runs staged too (`_gx_older`)
            rows = f"(select {', '.join(key)} from {mine}{' limit 0' if unique else ''})"
            repeated_keys(con, rows, key, "_gx_repeated", params(rows))
            older = _older(entity, key, mine)
            con.execute(f"CREATE OR REPLACE TEMP TABLE _gx_older AS {older}", params(older))
        con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS {query}", params(query))
        return _run_suite(early.gx, early.source, f"staging.{entity}", table, checks)
    finally:
        con.execute(f"DROP TABLE IF EXISTS {table}; DROP TABLE IF EXISTS _gx_repeated; DROP TABLE IF EXISTS _gx_older")


validate_ingest.early = validate_typed    # transforms/ingest.py: the first loads of typed entities, before the merge
validate_ingest.warm_up = warm_up     # transforms/ingest.py starts it when there is something to validate


def validate_outbox(con: duckdb.DuckDBPyConnection, frame, as_of) -> list[dict]:
    """GX on the messages a dispatch is about to create; raise (nothing is written or sent) on a failure.
    DuckDB reads the Polars frame in place (Arrow); GX queries it like a table."""
    if frame.height == 0:
        return []
    gx, context = _context()
    source = _source(context, con)
    con.register("_gx_outbox_frame", frame.select(
        "message_id", "paid_at_t", "in_quiet", "over_cap", "opted_out", "recipient", "channel").to_arrow())
    try:
        con.execute(f"CREATE OR REPLACE TEMP VIEW _gx_rows_outbox AS {_OUTBOX_ROWS}")
        results = _run_suite(gx, source, "outbox", "_gx_rows_outbox", OUTBOX_CHECKS)
    finally:
        con.execute("DROP VIEW IF EXISTS _gx_rows_outbox")
        con.unregister("_gx_outbox_frame")
    store(con, "dispatch", as_of.isoformat(), results)
    _raise_on_critical(results)
    return results


validate_outbox.warm_up = warm_up     # transforms/dispatch.py starts it before its plan


def _run_suite(gx, source, name: str, table: str, checks: list[Check]) -> list[dict]:
    """One GX suite over the DuckDB table (or view) `table`; one result dict per check."""
    suite = gx.ExpectationSuite(name=name)
    for i, check in enumerate(checks):
        suite.add_expectation(getattr(gx.expectations, check.expectation)(**check.kwargs, meta={"check": i}))
    if name in source.get_asset_names():        # a suite run again on the same source (validate_ingest's `early`)
        source.delete_asset(name)
    batch = source.add_table_asset(name, table_name=table).add_batch_definition_whole_table("run").get_batch()
    results = []
    for r in batch.validate(suite, result_format=_RESULT_FORMAT).results:
        check = checks[int(r.expectation_config.meta["check"])]
        error = _error(r.exception_info)
        if error:
            raise ValidationFailed(f"{name}: {r.expectation_config.type}({_columns(check.kwargs)}) could not be "
                                   f"evaluated: {error}")
        results.append({
            "suite": name, "expectation": r.expectation_config.type, "column": _columns(check.kwargs),
            "critical": check.critical, "label": check.label, "success": bool(r.success),
            "element_count": int(r.result["element_count"]),
            "unexpected_count": int(r.result["unexpected_count"]),
        })
    return results


def _error(info: dict | None) -> str | None:
    """The first line of the exception an expectation met, if any (GX keeps one per expectation, or one
    per metric it could not compute)."""
    if not info:
        return None
    infos = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    for i in infos:
        if i.get("raised_exception"):
            return (str(i.get("exception_message") or "unknown error").strip().splitlines() or ["unknown error"])[0]
    return None


def _raise_on_critical(results: list[dict]) -> None:
    failed = [r for r in results if r["critical"] and not r["success"]]
    if failed:
        raise ValidationFailed("; ".join(describe(r) for r in failed))


def describe(r: dict) -> str:
    what = f" ({r['label']})" if r.get("label") else ""
    return (f"{r['suite']}: {r['expectation']}({r['column']}) failed for {r['unexpected_count']} of "
            f"{r['element_count']} rows{what}")


def store(con: duckdb.DuckDBPyConnection, run_kind: str, run_ref: str, results: list[dict]) -> None:
    if not results:         # nothing was checked (every new file of the run was quarantined)
        return
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
