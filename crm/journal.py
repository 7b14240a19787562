"""The send journal: what an at-most-once sender (SMTP and Kannel, which have no idempotency key) did with each message,
written to a small file beside the database *before* the database knows.

A dispatch records outcomes in the database in batches (the file is shared with the agents' page), so a
process killed mid-run can leave a message `queued` although the SMTP server already took it. The journal
closes that gap: just before a message's request goes out its id is appended as ``? <id>``, and when the
answer is known ``+ <id>`` (accepted) or ``- <id>`` (not accepted: safe to send again), one JSON array a
line. Each line is flushed
to the operating system at once, so it survives the process being killed (not a power cut: no fsync per
message). The next run reads it first (:func:`settle`): a message last seen ``+`` is recorded as sent, one
last seen ``?`` is in doubt and fails (``last_error`` says so; never sent again automatically), ``-`` changes
nothing. The journal is emptied once every outcome of a run is recorded. Two dispatches never write one
journal at the same time: they hold ``<db>.dispatch.lock``.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

IN_DOUBT = ("in doubt: a run stopped while this e-mail was being handed to the SMTP server, so it may have gone "
            "out; it is not sent again automatically (crm dispatch --retry-failed re-queues it)")
IN_DOUBT_SMS = ("in doubt: a run stopped while this SMS was being handed to Kannel, so it may have gone out; it is "
                "not sent again automatically (a delivery report settles it as sent; crm dispatch --retry-failed "
                "re-queues it)")


def in_doubt(channel: str) -> str:
    """`last_error` of a message a run that stopped left in doubt."""
    return IN_DOUBT if channel == "email" else IN_DOUBT_SMS


def journal_path(db: str | Path) -> Path:
    db = Path(db)
    return db.with_name(db.name + ".send-journal")


class SendJournal:
    def __init__(self, db: str | Path):
        self.path = journal_path(db)
        self._fh = None
        self._lock = threading.Lock()     # e-mails are written from SMTP's thread, SMS to Kannel from the loop's

    # ---------------------------------------------------------------------------------------- writing
    def _write(self, mark: str, message_id: str) -> None:
        # one JSON array a line: an id with a newline or quote in it (a hostile order id) stays one record
        line = json.dumps([mark, message_id], ensure_ascii=False) + "\n"
        with self._lock:
            if self._fh is None:
                self._fh = open(self.path, "a", encoding="utf-8")
            self._fh.write(line)
            self._fh.flush()

    def begin(self, message_id: str) -> None:
        """About to hand `message_id` to the server."""
        self._write("?", message_id)

    def accepted(self, message_id: str) -> None:
        self._write("+", message_id)

    def not_sent(self, message_id: str) -> None:
        """The server refused it (or was never reached): nothing went out."""
        self._write("-", message_id)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    # ---------------------------------------------------------------------------------------- reading
    def last_marks(self) -> dict[str, str]:
        """{message_id: '?' | '+' | '-'} as the journal last saw each; empty without a journal."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return {}
        marks: dict[str, str] = {}
        for line in lines:
            try:
                mark, message_id = json.loads(line)
            except (ValueError, TypeError):
                continue                      # a line cut short by a crash: its message was never begun
            if mark in ("?", "+", "-") and isinstance(message_id, str):
                marks[message_id] = mark
        return marks

    def clear(self) -> None:
        """Every outcome is recorded in the database: start afresh."""
        self.close()
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
