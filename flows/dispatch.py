"""Dispatch flow: plan at T, validate, render, write the outbox, send (docs/rules.md §6-§7)."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from crm import progress
from crm.config import DEFAULT_CONFIG, DEFAULT_DB, load_settings
from crm.db import exclusive
from crm.redact import mask_email, mask_phone
from flows.retry import only_transient
from flows.partition import serial
from transforms.dispatch import GatewayDown, dispatch_db, dispatch_lake
from transforms.plan import parse_as_of
from transforms.validate import validate_outbox


@task(retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=only_transient)
def dispatch_at(as_of, db: str, config: str, dry_run: bool, wait_seconds: float = 900,
                channels: list[str] | None = None, retry_failed: bool = False, partition: int | None = None) -> dict:
    settings = load_settings(config)
    logger = get_run_logger()
    if settings.storage.kind == "ducklake":
        # any number of workers at once: the outbox's claims in PostgreSQL keep each message to one of them; the
        # plan part holds the partition's slot (its lake has one writer at a time)
        r = dispatch_lake(db, settings, as_of, worker=_worker(), partition=partition, dry_run=dry_run,
                          validate=validate_outbox, step=progress.step, channels=channels,
                          retry_failed=retry_failed, hold=lambda: serial(partition))
    else:
        # two dispatches never run at once (whoever starts them: a schedule, a person, a retry)
        with exclusive(f"{db}.dispatch.lock", wait_seconds=wait_seconds,
                       on_wait=lambda: logger.warning("another dispatch is running on %s: waiting for it to finish", db)):
            # the database file is held only while the run writes, not while it sends: others (the agents'
            # page) get in between
            r = dispatch_db(db, settings, as_of, dry_run=dry_run, validate=validate_outbox, step=progress.step,
                            channels=channels, retry_failed=retry_failed)
    logger.info("the database was held %.2f s of the run's %.2f s", r.db_seconds, r.seconds)
    for m in r.preview:
        m["recipient"] = mask_email(m["recipient"]) if m["channel"] == "email" else mask_phone(m["recipient"])
    return {"as_of": r.as_of.isoformat(), "dry_run": r.dry_run, "created": r.created, "sent": r.sent,
            "failed": r.failed, "calls_queued": r.calls_queued, "long_sms": r.long_sms, "preview": r.preview,
            "failures": r.failures[:20], "kept": r.kept, "skipped": r.skipped, "withdrawn": r.withdrawn,
            "waiting": r.waiting, "in_doubt": r.in_doubt, "requeued": r.requeued,
            "problem": r.problem, "retired_shops": r.retired_shops, "seconds": round(r.seconds, 3), "db_seconds": round(r.db_seconds, 3)}


def _worker() -> str:
    """This worker's name among those sending at once: host, process, and the flow run."""
    import os
    import socket

    from prefect.runtime import flow_run

    return f"{socket.gethostname()}:{os.getpid()}:{flow_run.id or 'local'}"


@flow(name="dispatch")
def dispatch_flow(as_of: str | None = None, db: str = DEFAULT_DB, config: str = DEFAULT_CONFIG,
                  dry_run: bool = False, channels: list[str] | None = None, retry_failed: bool = False,
                  partition: int | None = None) -> dict:
    """Plan at T (default now), validate the messages it creates, then send them and any left queued.
    `channels` (e.g. ["call"]) limits the run to those channels; the others wait for a later run.
    `retry_failed` queues the failed messages again first, under the same id.
    Messages a gateway could not take (down, slow, busy) stay queued for the next run, and then this flow
    run fails with one line saying so (GatewayDown), after everything else was recorded."""
    logger = get_run_logger()
    summary = dispatch_at(parse_as_of(as_of), db, config, dry_run, channels=channels, retry_failed=retry_failed,
                          partition=partition)
    if channels:
        logger.info("only channels %s this time: the others' messages are left for a later run", ", ".join(channels))
    logger.info("dispatch at %s%s: new %s; sent %d, failed %d, kept queued %d; %d calls queued for agents; "
                "%d SMS over one segment", summary["as_of"], " (dry run)" if dry_run else "", summary["created"],
                summary["sent"], summary["failed"], summary["kept"] + summary["skipped"], summary["calls_queued"],
                summary["long_sms"])
    if summary["withdrawn"]:
        logger.warning("%d queued messages may no longer go at %s (paid, closed, opted out, past their time …): "
                       "failed unsent, each with its reason", summary["withdrawn"], summary["as_of"])
    if summary["waiting"]:
        logger.info("%d queued messages wait (quiet hours or the daily cap at %s)", summary["waiting"], summary["as_of"])
    if summary["in_doubt"]:
        logger.warning("%d e-mails of a run that stopped mid-send are in doubt: failed, not sent again",
                       summary["in_doubt"])
    for line in summary["failures"]:
        logger.warning("failed: %s", line)
    if summary["problem"]:
        raise GatewayDown(summary["problem"], summary)
    return summary
