"""Benchmark: crm.redact on the lines a dispatch logs (every failure line goes through it), per line.

    .venv/bin/python bench/bench_redact.py

Three kinds of line, 20,000 each, best of 5 rounds: a typical gateway failure with a phone number, a line
with a Prefect "View at" link (a UUID, which holds digit runs that are not phone numbers), and a line of
plain words (nothing to mask). This was a timed unit test (< 1 ms a line); speed is measured here instead.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crm.redact import redact  # noqa: E402

N = 20_000
KINDS = {
    "gateway failure": [f"message payment_reminder:s1-o{i:06d}: 400 invalid number 137-1527-{i % 10000:04d}"
                        for i in range(N)],
    "Prefect link": [f"View at http://127.0.0.1:4200/runs/flow-run/{uuid.UUID(int=i * 7919 + 1)}" for i in range(N)],
    "plain words": [f"plan at 2026-11-23T02:00:00+00:00: {i} unpaid orders" for i in range(N)],
}


def main() -> None:
    for kind, lines in KINDS.items():
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for line in lines:
                redact(line)
            best = min(best, time.perf_counter() - start)
        print(f"{kind:16} {best / N * 1e6:7.2f} µs a line ({N:,} lines, best of 5)")


if __name__ == "__main__":
    main()
