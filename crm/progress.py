"""A progress hook the command line sets and the tasks call; a no-op under a Prefect worker."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

Reporter = Callable[[str, int], None]
_current: ContextVar[Reporter | None] = ContextVar("crm_progress", default=None)


def step(what: str, units: int = 1) -> None:
    reporter = _current.get()
    if reporter is not None:
        reporter(what, units)


@contextmanager
def reporting(reporter: Reporter) -> Iterator[None]:
    token = _current.set(reporter)
    try:
        yield
    finally:
        _current.reset(token)
