"""flows/__init__.py: a flow run's parameters are sent to the server as Prefect would send them, and a command
whose parameters are plain JSON values does not import FastAPI to encode them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


class Kind(str, Enum):
    A = "a"


CASES = [
    {"as_of": "2026-11-24T10:00:00+08:00", "db": "data/crm.duckdb", "config": "shops.toml", "partition": None},
    {"start": "2026-11-23", "every": "1h", "force": True, "max_times": 10_000, "ratio": 0.5},
    {"shops": ["s1", "s2"], "options": {"dry_run": False, "limit": [1, 2.5, None]}},
    {"when": datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)},          # not plain: Prefect's own encoding
    {"pair": ("s1", 2), "kind": Kind.A, "keys": {1: "x"}},                   # converted by FastAPI's encoder
]


@pytest.mark.parametrize("parameters", CASES)
def test_parameters_are_encoded_as_prefect_encodes_them(parameters):
    from fastapi.encoders import jsonable_encoder

    import flows  # noqa: F401  (installs the encoding)
    from flows.plan import plan_flow

    assert plan_flow.serialize_parameters(parameters) == {k: jsonable_encoder(v) for k, v in parameters.items()}


def test_plain_parameters_do_not_import_fastapi():
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from flows.plan import plan_flow
        out = plan_flow.serialize_parameters({{"as_of": None, "db": "x.duckdb", "partition": 2}})
        print(out == {{"as_of": None, "db": "x.duckdb", "partition": 2}}, "fastapi" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "False"]
