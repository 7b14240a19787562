"""Which failures Prefect retries: only the transient ones (a locked database file, a network
blip, a lake commit another writer got in before), never bad input or a failed validation, which would fail the
same way again."""

from __future__ import annotations


def only_transient(task, task_run, state) -> bool:
    from crm.db import DatabaseLocked

    try:
        state.result()
    except DatabaseLocked:
        return True
    except Exception as e:
        # the lake: another writer committed to the same table meanwhile (DuckLake refuses the later commit;
        # the run, run again, sees its rows), or PostgreSQL's connection dropped
        if type(e).__name__ == "TransactionException" and "transaction conflict" in str(e).lower():
            return True
        if type(e).__module__.startswith("psycopg") and type(e).__name__ == "OperationalError":
            return True
        if isinstance(e, (OSError, TimeoutError)):
            return not isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError))
        return False
    return False
