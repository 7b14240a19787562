"""Which failures Prefect retries: only the transient ones (a locked database file, a network
blip), never bad input or a failed validation, which would fail the same way again."""

from __future__ import annotations


def only_transient(task, task_run, state) -> bool:
    from crm.db import DatabaseLocked

    try:
        state.result()
    except DatabaseLocked:
        return True
    except (OSError, TimeoutError) as e:
        return not isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError))
    except Exception:
        return False
    return False
