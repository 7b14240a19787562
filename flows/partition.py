"""One run at a time per partition of a partitioned lake (crm/storage/partitions.py): a partition's flows take a slot of
the Prefect global concurrency limit `crm-partition-<k>` (limit 1) before they open its lake, so its ingest, plans
and upkeep never write it at once, wherever their workers run. The group flow (flows/group.py) creates the limits; a
run without them (a `crm` command on a server where the group flow never ran) goes ahead unlimited."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext


def limit_name(partition: int) -> str:
    return f"crm-partition-{partition}"


@contextmanager
def serial(partition: int | None):
    """Hold partition's slot (nothing for the file or an unpartitioned lake)."""
    if partition is None:
        with nullcontext():
            yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(limit_name(partition), occupy=1, strict=False):
        yield
