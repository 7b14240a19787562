"""Partitions of shops on the lake (docs/rules.md §10): `[storage] partitions = P` splits a group's shops into P
partitions, each a DuckLake of its own: its catalog tables in the schema `p<k>` of the one catalog database, its
Parquet files under `<data_path>/p<k>/`. The operational tables stay one set in PostgreSQL for every partition (a
message id, a file's manifest row, an opt-out are unique there whatever the partition).

Why a lake per partition and not one lake with a partition column: DuckLake checks write conflicts per table, so
two partitions replacing their rows of the same table at once refuse each other's commits (measured with the issue:
49 % of such commits refused with four writers). Separate lakes cannot conflict; one partition is written by one
run at a time (its flows take the partition's concurrency slot), exactly as one DuckDB file is.

A shop's partition is `floor(hash01(shop_id) * P)`, hash01 being sql/macros.sql's (the first 8 hex digits of the
MD5 of the id, over 2^32): it depends on the id alone, so every machine agrees, and it never changes while P does
not. Changing P moves shops between partitions: reload them (`crm ingest` of each partition's landing folder)."""

from __future__ import annotations

import hashlib
import os

from crm.config import ConfigError


def bucket(shop_id: str, partitions: int) -> int:
    """The partition of `shop_id` among `partitions` (sql/macros.sql hash01, times P, rounded down)."""
    return int(hashlib.md5(shop_id.encode("utf-8")).hexdigest()[:8], 16) * partitions // 2**32


def current(partition: int | None = None) -> int | None:
    """`partition`, else CRM_PARTITION's (what `--partition` sets for the process), else None."""
    if partition is not None:
        return partition
    text = os.environ.get("CRM_PARTITION", "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"CRM_PARTITION={text!r}: not a partition number (0, 1, …)") from None


def check(storage, partition: int | None) -> int | None:
    """The partition a command works on: None on an unpartitioned lake (or the file); else 0 … P-1, required."""
    if storage.kind != "ducklake" or storage.partitions == 1:
        if partition not in (None, 0):
            raise ConfigError(f"--partition {partition}: [storage] has no partitions (partitions = 1)")
        return None
    if partition is None:
        raise ConfigError(f"[storage] partitions = {storage.partitions}: name the partition this command works on "
                          f"(--partition 0…{storage.partitions - 1}, or CRM_PARTITION)")
    if not 0 <= partition < storage.partitions:
        raise ConfigError(f"--partition {partition}: [storage] partitions = {storage.partitions} has partitions "
                          f"0…{storage.partitions - 1}")
    return partition


def of(settings, partition: int | None):
    """The settings a command on `partition` works with: that partition's shops (and retired shops) only."""
    partition = check(settings.storage, partition)
    if partition is None:
        return settings
    p = settings.storage.partitions
    shops = [s for s in settings.shops if bucket(s.shop_id, p) == partition]
    retired = [s for s in settings.retired_shops if bucket(s, p) == partition]
    return settings.model_copy(update={"shops": shops, "retired_shops": retired})


def scoped(settings):
    """`settings` for this process's partition (CRM_PARTITION, which `--partition` sets): its shops only."""
    return of(settings, current())
