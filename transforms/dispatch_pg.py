"""Sending from the outbox in PostgreSQL (crm/storage/outbox.py): any number of workers at once, each message once.

:func:`send_claimed` is one worker's send: settle what dead workers left, claim a batch (``FOR UPDATE SKIP
LOCKED``), check it (`check`: the caller's send_queue check at T; every row goes without one), send it through
the same senders as transforms/dispatch.py (webhook gateway, Kannel, SMTP; retries, breakers), record the
outcomes, claim the next batch, until nothing is left to claim. A thread extends the worker's leases while it
runs, so a slow but live worker is not taken over; one that dies leaves its claims to run out, and the next
round of any worker takes its messages back (docs/rules.md §7's rules after a crash: a webhook message goes
again under the same Idempotency-Key; an e-mail or SMS to Kannel that was being handed over is in doubt and
failed, never sent again automatically).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import datetime

import uvloop

from crm.channels import Outcome
from crm.redact import redact
from crm.storage.outbox import PgOutbox
from transforms.dispatch import (AUTOMATIC, FIRST_BATCH, ClaimLost, SendResult, _batch_size, _sender,
                                 _Senders)

log = logging.getLogger("crm.dispatch")

LEASE_SECONDS = 60.0


class _ClaimJournal:
    """crm/journal.py's interface over the outbox's rows, for the at-most-once senders (SMTP, Kannel): a message
    may go only while this worker's claim on it holds (else ClaimLost: nothing goes out)."""

    def __init__(self, outbox: PgOutbox, worker: str):
        self.outbox, self.worker = outbox, worker

    def begin(self, message_id: str) -> None:
        if not self.outbox.mark_sending(self.worker, message_id):
            raise ClaimLost(message_id)

    def accepted(self, message_id: str) -> None:
        self.outbox.mark_accepted(self.worker, message_id)

    def not_sent(self, message_id: str) -> None:
        self.outbox.mark_not_sent(self.worker, message_id)


class _ClaimRecorder:
    """The outcomes of a batch, kept until the batch is done and then recorded in one statement (the senders
    call add(); the send loop calls flush() between batches)."""

    def __init__(self, outbox: PgOutbox, worker: str):
        self.outbox, self.worker = outbox, worker
        self.pending: list[Outcome] = []
        self.sent = self.failed = self.kept = 0
        self.failures: list[str] = []

    def add(self, outcome: Outcome) -> None:
        self.pending.append(outcome)
        if outcome.status == "sent":
            self.sent += 1
        elif outcome.transient:
            self.kept += 1
        else:
            self.failed += 1
            self.failures.append(f"{outcome.message_id}: {redact(outcome.error or '')}")

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        if batch:
            self.outbox.record(self.worker, batch)


class _Renewer(threading.Thread):
    """Extends the worker's leases every third of a lease, on its own thread, while the worker runs."""

    def __init__(self, outbox: PgOutbox, worker: str, lease_seconds: float):
        super().__init__(name=f"crm-lease-{worker}", daemon=True)
        self.outbox, self.worker, self.lease = outbox, worker, lease_seconds
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        while not self.stopping.wait(self.lease / 3):
            try:
                self.outbox.renew(self.worker, self.lease)
            except Exception as e:            # the send loop's next statement meets the same problem
                self.error = e
                log.warning("worker %s could not extend its claims: %s", self.worker, e)

    def stop(self) -> None:
        self.stopping.set()
        self.join()


def send_claimed(outbox: PgOutbox, settings, as_of: datetime, *, worker: str, check=None, channels=AUTOMATIC,
                 shops=None, buckets=None, batch: int | None = None, lease_seconds: float = LEASE_SECONDS,
                 step=None) -> SendResult:
    """One worker's send from the PostgreSQL outbox at T (`as_of`, for `check`), until nothing is left to claim.

    `worker` names this worker: unique among the workers running at once (e.g. host, process and run).
    `check(rows)` returns the claimed rows each with ``fail_reason`` and ``wait_reason`` as
    sql/dispatch/send_queue.sql gives them (None: every row goes): a row with a fail_reason is recorded failed
    with it, unsent; one with a wait_reason stays queued, untouched (held until the end, then released). A
    batch is `batch` messages, or about a second's sending at the last batch's rate (transforms/dispatch.py).
    A transient failure stays queued (attempts, last_error) and is not tried again in this run; when every
    sender the remaining channels need looks down, the worker stops claiming and the rest stays queued.
    `channels`, `shops` and `buckets` limit what the worker claims. Ends with :meth:`PgOutbox.release`."""
    result = SendResult()
    wanted = [c for c in channels if c in AUTOMATIC]
    recorder = _ClaimRecorder(outbox, worker)
    journal = _ClaimJournal(outbox, worker)
    renewer = _Renewer(outbox, worker, lease_seconds)
    renewer.start()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            senders = _Senders(settings, recorder, result, journal, step)
            try:
                size = batch or FIRST_BATCH
                while True:
                    # a sender that looks down (breaker open): its channels are not claimed any more
                    live = [c for c in wanted if not senders.breakers[_sender({"channel": c})].open]
                    if not live:
                        break
                    settled = outbox.settle(live, shops, buckets)
                    result.sent += settled.sent
                    result.in_doubt += settled.in_doubt
                    if settled.sent or settled.in_doubt:
                        log.warning("worker %s: messages of a worker that stopped while handing them over: %d "
                                    "recorded as sent (a receipt came), %d in doubt (failed, not sent again)",
                                    worker, settled.sent, settled.in_doubt)
                    rows = outbox.claim(worker, size, lease_seconds, live, shops, buckets)
                    if not rows:
                        break
                    checked = check(rows) if check is not None else rows
                    go = []
                    for msg in checked:
                        if msg.get("fail_reason"):
                            recorder.add(Outcome(msg["message_id"], "failed", 0, msg["fail_reason"]))
                            result.withdrawn += 1
                        elif msg.get("wait_reason"):
                            result.waiting += 1
                        else:
                            go.append(msg)
                    if go:
                        went = time.monotonic()
                        runner.run(senders.batch(go))
                        if batch is None:
                            size = _batch_size(len(go), time.monotonic() - went)
                    recorder.flush()
                    result.checks += 1
                    log.debug("worker %s at %s: batch of %d claimed, %d sent so far", worker, as_of.isoformat(),
                              len(rows), recorder.sent)
            finally:
                runner.run(senders.aclose())
    finally:
        renewer.stop()
        try:
            recorder.flush()                  # what a failure left unrecorded: the claims still protect it
        finally:
            outbox.release(worker)
    result.sent += recorder.sent
    result.failed = recorder.failed + result.in_doubt
    result.failures = recorder.failures
    result.kept = recorder.kept
    return result
