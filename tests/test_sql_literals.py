"""crm.db.literal / inline: the plan writes its few values (T, ids, counts) into its SQL as literals instead of
binding them as DuckDB parameters, because duckdb 1.5.5's parameter binding imports pandas (~0.45 s a command)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from crm.db import inline, literal

REPO = Path(__file__).resolve().parents[1]
VALUES = [
    None, True, False, 0, -7, 2**62, 1.5, -0.25, Decimal("12.30"), Decimal("-0.001"), "", "it's", "多 ' 引号",
    datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=timezone.utc),
    datetime(2026, 11, 23, 10, 0, tzinfo=timezone(timedelta(hours=8))),
    datetime(2026, 11, 23, 10, 0), date(2026, 1, 2), timedelta(days=1, seconds=5, microseconds=7),
    ["new.cute", "it's"], [1, 2, 3],
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_a_literal_reads_back_as_the_bound_parameter_does(value):
    con = duckdb.connect()
    con.execute("SET TimeZone = 'Asia/Shanghai'")          # an aware time keeps its instant, a naive one its text
    as_literal = con.execute(f"SELECT {literal(value)}").fetchone()[0]
    as_parameter = con.execute("SELECT $1", [value]).fetchone()[0]
    assert as_literal == as_parameter
    assert type(as_literal) is type(as_parameter)


def test_a_float_stays_a_double_and_nan_is_written_too():
    con = duckdb.connect()
    assert con.execute(f"SELECT typeof({literal(1.5)})").fetchone()[0] == "DOUBLE"
    assert con.execute(f"SELECT isnan({literal(float('nan'))})").fetchone()[0] is True


def test_an_unknown_type_is_refused():
    with pytest.raises(TypeError, match="no SQL literal for a object"):
        literal(object())


def test_inline_writes_only_the_names_it_is_given():
    sql = "SELECT $t, $t0, $missing, '$.path' FROM x WHERE a = $t"
    assert inline(sql, {"t": 1, "t0": "a'b"}) == "SELECT 1, 'a''b', $missing, '$.path' FROM x WHERE a = 1"


def test_a_plan_imports_no_pandas(tmp_path):
    """A plan (and so `crm plan` / `crm backfill`) runs without pandas: none of its statements binds a parameter."""
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / "tests")!r}]
        from datetime import datetime, timezone
        from crm.db import connect, literal
        from planning import DEFAULTS, configure, local
        from transforms.plan import plan
        con = connect({str(tmp_path / "crm.duckdb")!r})
        configure(con)

        def stage(table, row):                # planning.stage, with literals: its parameters would import pandas
            full = {{**DEFAULTS[table], **row}}
            con.execute(f"INSERT INTO staging.{{table}} ({{', '.join(full)}}) "
                        f"VALUES ({{', '.join(map(literal, full.values()))}})")

        stage("orders", {{"order_id": "o1", "created_at": local("2026-11-24 09:00"),
                         "updated_at": local("2026-11-24 09:00")}})
        stage("orders", {{"order_id": "o2", "created_at": local("2026-11-10 09:00"), "paid_at": local("2026-11-10 09:05"),
                         "delivered_at": local("2026-11-16 09:00"), "updated_at": local("2026-11-16 09:00")}})
        stage("customers", {{"customer_id": "c1"}})
        assert "pandas" not in sys.modules
        result = plan(con, datetime(2026, 11, 24, 4, 0, tzinfo=timezone.utc), variants=["new.cute"])
        print(result.unpaid_orders, result.visit_tasks, "pandas" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "1", "False"]
