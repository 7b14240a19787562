"""Extracting orders from the shop platforms (docs/rules.md §11): the interface every provider implements, and
the frame that runs one: watermark, drop files, rejects.

A provider is a module ``crm/sources/<kind>.py`` with ``open(shop, cfg, env, *, sleep) -> Source``; its
``batches(since, until)`` yields :class:`Batch` es in order. The frame (:func:`extract`) turns each batch into
drop files in the landing format (§1) — written to a hidden temporary name, fsynced, renamed — and only then,
in one small transaction, records the batch's rejects in ``ops.quarantine`` and moves the shop's watermark
(``ops.source_watermarks``) to the batch's ``high_water``. The landing folder is then ingested as any drop
(flows/extract.py), so a run killed at any point loses nothing: files already written are ingested by the next
run, the overlap re-reads what the watermark had not yet covered, and newest-wins makes the repeats harmless.

The database is opened only for short moments (the watermark at the start, then per batch), never while a
provider waits on the network. Nothing here logs a buyer's phone or address: rows go to files, rejects to the
database, and the progress and summary carry counts.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from contextlib import AbstractContextManager, closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator, Mapping, Protocol

ENTITIES = ("customers", "products", "orders", "order_items")


@dataclass
class Batch:
    rows: dict[str, list[dict]]       # §1 entity -> rows with the landing columns as plain values; timestamps as
                                      # ISO 8601 text with an offset
    rejects: list[dict] = field(default_factory=list)   # {"entity", "ref", "reason", "raw"}: quarantined
    high_water: datetime | None = None   # tz-aware: everything modified before it is in this batch or an earlier
                                         # one; the watermark moves here once the batch is written (None: stays)
    pages: int = 0                    # API pages this batch took (progress)
    notes: list[str] = field(default_factory=list)      # one-line remarks for the user (e.g. a clamped start)


class Source(Protocol):
    def batches(self, since: datetime, until: datetime) -> Iterator[Batch]: ...


class SourceError(Exception):
    """A problem the user must fix (bad session, token, signature, endpoint, an unset variable): one line,
    naming the shop, never a secret or a buyer's contact."""


class SourceUnavailable(SourceError, ConnectionError):
    """The platform did not answer usably after every retry (5xx, timeouts, rate limits that last): the run
    fails, the watermark stays where the last written batch put it, the next run continues from there. A
    ConnectionError, so that the flow's task retries it (flows/retry.py)."""


def open_source(shop, cfg, env: Mapping[str, str], *, sleep: Callable[[float], None] = time.sleep) -> Source:
    """The provider of `cfg.kind` for `shop` (a crm.config.Shop; cfg is its [shops.source])."""
    check_env(shop, env)
    module = importlib.import_module(f"crm.sources.{cfg.kind}")
    return module.open(shop, cfg, env, sleep=sleep)


def secret_vars(cfg) -> list[tuple[str, str]]:
    """(key, variable name) of the secrets a source of this kind reads from the environment."""
    keys = ("app_secret_env", "session_env") if cfg.kind == "taobao" else ("token_env",)
    return [(k, getattr(cfg, k)) for k in keys]


def check_env(shop, env: Mapping[str, str]) -> None:
    """One line naming the shop and the variable (never its value) when a secret's variable is unset or empty."""
    for key, var in secret_vars(shop.source):
        if not env.get(var):
            raise SourceError(f"shop {shop.shop_id!r}: the environment variable {var} is not set (source.{key} "
                              f"names it; it holds the {_WHAT[key]})")


_WHAT = {"app_secret_env": "TOP app secret", "session_env": "seller's TOP session key",
         "token_env": "Shopify Admin API access token"}


def selected(settings, shop_id: str | None) -> list:
    """The shops to extract: the one named (which must have a [shops.source]), else every shop with one."""
    if shop_id is not None:
        shop = next((s for s in settings.shops if s.shop_id == shop_id), None)
        if shop is None:
            raise SourceError(f"--shop {shop_id!r}: no such shop in the configuration")
        if shop.source is None:
            raise SourceError(f"shop {shop_id!r} has no [shops.source]: nothing to extract from")
        return [shop]
    shops = [s for s in settings.shops if s.source is not None]
    if not shops:
        raise SourceError("no shop has a [shops.source]: nothing to extract from (shops.example.toml shows one)")
    return shops


# --------------------------------------------------------------------------------------------------
# the watermark


def watermark(con, shop_id: str, kind: str) -> datetime | None:
    row = con.execute("SELECT watermark FROM ops.source_watermarks WHERE shop_id = ? AND source = ?",
                      [shop_id, kind]).fetchone()
    return row[0] if row else None


def start_of(cfg, stored: datetime | None, as_of: datetime, since: datetime | None) -> datetime:
    """Where a run starts: --since, else the watermark less the overlap, else T less backfill_days."""
    if since is not None:
        return since
    if stored is not None:
        return stored - timedelta(minutes=cfg.overlap_minutes)
    return as_of - timedelta(days=cfg.backfill_days)


def _commit(con, shop_id: str, kind: str, batch: Batch) -> None:
    """In one transaction: the batch's rejects into ops.quarantine (a reject already there, same source and
    record, is not added again: the overlap re-reads it), and the watermark forward to batch.high_water."""
    from crm.db import transaction
    from crm.storage.layout import ops_table

    # both operational: on the lake, PostgreSQL's tables (one transaction, one database)
    quarantine, watermarks = ops_table(con, "quarantine"), ops_table(con, "source_watermarks")
    with transaction(con):
        if batch.rejects:
            entity = [r.get("entity") or "orders" for r in batch.rejects]
            source = [f"{kind}:{shop_id} {r.get('ref') or '?'}" for r in batch.rejects]
            raw = [r.get("raw") if isinstance(r.get("raw"), str) else json.dumps(r.get("raw"), ensure_ascii=False,
                                                                                    default=str)
                   for r in batch.rejects]
            reason = [str(r.get("reason") or "could not be mapped") for r in batch.rejects]
            con.execute(
                f"INSERT INTO {quarantine} (entity, source_file, row_number, \"row\", reason, ingest_id, loaded_at) "
                "SELECT e, f, NULL, r, why, NULL, now() FROM (SELECT unnest(?::VARCHAR[]) AS e, "
                "unnest(?::VARCHAR[]) AS f, unnest(?::VARCHAR[]) AS r, unnest(?::VARCHAR[]) AS why) AS new "
                "WHERE NOT EXISTS (SELECT 1 FROM ops.quarantine q WHERE q.entity = new.e AND q.source_file = new.f "
                "AND q.\"row\" IS NOT DISTINCT FROM new.r)", [entity, source, raw, reason])
        if batch.high_water is not None:
            con.execute(
                f"INSERT INTO {watermarks} VALUES (?, ?, ?, now()) ON CONFLICT (shop_id, source) DO UPDATE "
                f"SET watermark = greatest({watermarks}.watermark, excluded.watermark), "
                "updated_at = excluded.updated_at", [shop_id, kind, batch.high_water])


# --------------------------------------------------------------------------------------------------
# what is already staged: a column the platform does not know stays as it is


def _landing_value(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)                                   # Decimal


def keep_staged(con, rows: dict[str, list[dict]]) -> None:
    """Customers and products an extract writes may already be staged with what the platform does not say (a
    member level, an opt-out, style tags, follow-up days from another drop): a None in the extract's row keeps
    the staged value, an opt-out stays once either side says so, and registered_at keeps the earlier time;
    what is still missing gets DEFAULTS. Changes `rows` in place."""
    for entity, key in (("customers", "customer_id"), ("products", "product_id")):
        mine = rows.get(entity) or []
        if not mine:
            continue
        ids = sorted({str(r[key]) for r in mine if r.get(key) is not None})
        cur = con.execute(f"SELECT * EXCLUDE (_source_file, _ingest_id, _file_ord, _row_number) FROM staging.{entity} "
                          f"WHERE {key} IN (SELECT unnest(?::VARCHAR[]))", [ids])
        names = [d[0] for d in cur.description]
        staged = {str(r[names.index(key)]): dict(zip(names, r)) for r in cur.fetchall()}
        for row in mine:
            old = staged.get(str(row.get(key)))
            if old is None or old.get("shop_id") != row.get("shop_id"):
                continue
            for col, value in old.items():
                if row.get(col) is None and value is not None:
                    row[col] = _landing_value(value)
            if entity == "customers":
                if old.get("opt_out"):
                    row["opt_out"] = True
                if old.get("registered_at") is not None and row.get("registered_at"):
                    new = datetime.fromisoformat(str(row["registered_at"]))
                    if new.tzinfo is not None and old["registered_at"] < new:
                        row["registered_at"] = old["registered_at"].isoformat()
    for entity, defaults in DEFAULTS.items():
        for row in rows.get(entity) or []:
            for col, value in defaults.items():
                if row.get(col) is None:
                    row[col] = value


# what a required column is when neither the platform nor an earlier drop says (§1's defaults)
DEFAULTS = {"customers": {"member_level": 0, "opt_out": False}, "products": {"category": "unknown"}}


# --------------------------------------------------------------------------------------------------
# the run


def _utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc)


def extract(db: str | Path, settings, shop_id: str, landing: str | Path, *, as_of: datetime,
            since: datetime | None = None, env: Mapping[str, str] | None = None,
            sleep: Callable[[float], None] = time.sleep, step: Callable[[str, int], None] | None = None,
            log: Callable[[str], None] | None = None) -> dict:
    """Fetch what shop `shop_id` changed on its platform between its start (start_of) and T = `as_of`, write it
    under `landing` batch by batch, moving its watermark after each; returns a summary (counts only)."""
    shop = settings.shop(shop_id)
    cfg = shop.source
    source = open_source(shop, cfg, os.environ if env is None else env, sleep=sleep)
    until = _utc(as_of)
    with _storage(db, settings) as opened:
        return _run(opened, shop_id, cfg, source, landing, until, since, step, log)


@contextmanager
def _storage(db, settings) -> Iterator[Callable[[], AbstractContextManager]]:
    """How the run opens its storage for a moment: the DuckDB file anew each time (it is never held while a
    provider waits on the network, so that a flow or the page can write meanwhile), or on the lake one connection
    for the whole run (nothing to hold there: each moment is its own transaction; opening the lake costs ~1 s)."""
    if settings.storage.kind == "ducklake":
        from crm.storage import connect_layout

        con = connect_layout(settings.storage)
        try:
            yield lambda: nullcontext(con)
        finally:
            con.close()
    else:
        from crm.db import connect

        yield lambda: closing(connect(db))


def _run(opened, shop_id: str, cfg, source: Source, landing, until: datetime, since: datetime | None, step,
         log) -> dict:
    from crm.sources.landing import write_batch

    with opened() as con:
        stored = watermark(con, shop_id, cfg.kind)
    start = _utc(start_of(cfg, stored, until, since))
    summary = {"shop_id": shop_id, "kind": cfg.kind, "since": start.isoformat(), "until": until.isoformat(),
               "started_from": "--since" if since is not None else ("watermark" if stored else "backfill"),
               "batches": 0, "pages": 0, "orders": 0, "rows": {e: 0 for e in ENTITIES}, "rejects": 0,
               "files": [], "watermark": stored.isoformat() if stored else None, "notes": []}
    if start >= until:
        summary["notes"].append(f"shop {shop_id!r}: nothing to fetch: the start {start.isoformat()} is not before "
                                f"T {until.isoformat()}")
        return summary
    for batch in source.batches(start, until):
        with opened() as con:
            keep_staged(con, batch.rows)
            files = write_batch(landing, cfg.kind, shop_id, batch.rows)
            _commit(con, shop_id, cfg.kind, batch)
            if batch.high_water is not None:
                stored = max(stored, _utc(batch.high_water)) if stored else _utc(batch.high_water)
        summary["batches"] += 1
        summary["pages"] += batch.pages
        summary["orders"] += len(batch.rows.get("orders") or [])
        for entity in ENTITIES:
            summary["rows"][entity] += len(batch.rows.get(entity) or [])
        summary["rejects"] += len(batch.rejects)
        summary["files"] += [str(f) for f in files]
        summary["watermark"] = stored.isoformat() if stored else None
        summary["notes"] += batch.notes
        for note in batch.notes:
            if log:
                log(note)
        if step:
            step(f"{shop_id}: {summary['pages']:,} pages, {summary['orders']:,} orders", batch.pages)
        if log and (batch.rows.get("orders") or batch.rejects):
            log(f"extract {shop_id} ({cfg.kind}): batch {summary['batches']}: {batch.pages} pages, "
                f"{len(batch.rows.get('orders') or [])} orders, {len(batch.rejects)} rejected; watermark "
                f"{summary['watermark']}")
    return summary
