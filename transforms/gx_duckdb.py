"""Great Expectations' SQL engine on a DuckDB connection the caller already has open (transforms/validate.py).

GX 1.x has no DuckDB data source of its own; its generic SQL data source works through SQLAlchemy with the
``duckdb_engine`` dialect. Two things are added here:

* :class:`Borrowed` hands GX the caller's connection — and with it the caller's open transaction, whose
  uncommitted rows GX must check — without letting GX end it: SQLAlchemy's BEGIN, COMMIT, ROLLBACK (also
  the one a pool issues when a connection is returned) and close do nothing.
* :class:`Dialect` reads a table's columns with DuckDB's ``DESCRIBE`` (GX asks once per suite) instead of
  the PostgreSQL dialect's queries on DuckDB's ``pg_catalog`` emulation, which scan the whole catalog
  (~0.1-0.3 s a table on the project's database, most of a small run's validation).
"""

from __future__ import annotations

import duckdb
import sqlalchemy as sa
from duckdb_engine import ConnectionWrapper
from duckdb_engine import Dialect as DuckDBDialect
from sqlalchemy.dialects import registry
from sqlalchemy.pool import StaticPool

URL = "duckdb+borrowed:///:memory:"     # the database is never opened: the engine's one connection is lent


class Borrowed(ConnectionWrapper):
    """`con` for SQLAlchemy: queries run on it, inside whatever transaction it has open; nothing ends it."""

    def begin(self) -> None:
        pass

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass


# DuckDB type names that the PostgreSQL names duckdb_engine knows do not cover
_TYPES = {"decimal": sa.Numeric, "double": sa.Float, "float": sa.Float, "real": sa.Float}


class Dialect(DuckDBDialect):
    supports_statement_cache = False    # as duckdb_engine's

    def get_columns(self, connection, table_name, schema=None, **kw):
        name = self.identifier_preparer.quote(table_name)
        if schema:
            name = f"{self.identifier_preparer.format_schema(schema)}.{name}"
        rows = connection.exec_driver_sql(f"DESCRIBE {name}").fetchall()
        if not rows:
            raise sa.exc.NoSuchTableError(table_name)
        return [{"name": column, "type": self._type(kind), "nullable": null == "YES", "default": None,
                 "autoincrement": False} for column, kind, null, *_ in rows]

    def get_pk_constraint(self, connection, table_name, schema=None, **kw):
        return {"constrained_columns": [], "name": None}     # the checked tables are temporary, without keys

    def _type(self, kind: str):
        base = kind.split("(")[0].strip().lower()
        return (_TYPES.get(base) or self.ischema_names.get(base) or sa.types.NullType)()


registry.register("duckdb.borrowed", __name__, "Dialect")


def source(context, con: duckdb.DuckDBPyConnection, name: str = "duckdb"):
    """A GX SQL data source in `context` whose one connection is `con`."""
    return context.data_sources.add_sql(name, connection_string=URL,
                                        kwargs={"creator": lambda: Borrowed(con), "poolclass": StaticPool})
