"""An extracted batch as drop files in the landing format (docs/rules.md §1): one NDJSON file per entity under
``<landing>/<entity>/``, named ``<kind>-<shop>-<UTC time>-<n>.ndjson`` so that files sort in the order they were
written (a later drop wins a tie of updated_at) and never collide.

Each file is written under a hidden name (the ingest skips names starting with a dot), fsynced, renamed to its
name and its folder fsynced: the ingest sees a whole file or none, also after a crash."""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path

from crm.sources import ENTITIES

_SEQ = itertools.count(1)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text) or "_"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_batch(landing: str | Path, kind: str, shop_id: str, rows: dict[str, list[dict]]) -> list[Path]:
    """Write the batch's rows, entity by entity; returns the files written (none for an empty batch)."""
    written = []
    stamp = datetime.fromtimestamp(time.time_ns() / 1e9, timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    seq = next(_SEQ)
    for entity in ENTITIES:
        batch = rows.get(entity) or []
        if not batch:
            continue
        folder = Path(landing) / entity
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{_safe(kind)}-{_safe(shop_id)}-{stamp}-{os.getpid()}-{seq:05d}.ndjson"
        final, tmp = folder / name, folder / f".{name}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in batch:
                fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(folder)
        written.append(final)
    return written
