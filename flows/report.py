"""Feedback report flow: one HTML report per shop for a local day or ISO week, written to a file and
optionally e-mailed to the shop's team (docs/rules.md §8). Thin: the logic is in transforms/report.py."""

from __future__ import annotations

from datetime import datetime

from prefect import flow, get_run_logger, task

from crm import progress
from crm.config import DEFAULT_CONFIG, DEFAULT_DB, load_settings
from crm.storage import partitions
from crm.redact import redact
from flows.retry import only_transient
from transforms.report import check_request, gather, output_path, parse_time, render, send_report, write


@task(retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=only_transient)
def shop_report(shop_id: str, period: str, date: str | None, as_of: datetime, db: str, config: str,
                out: str | None, several: bool, send: bool) -> dict:
    """Gather, render and write one shop's report; send it when asked and the shop has a team_email.
    A retry is safe: the file is replaced whole and a report already sent is not sent again."""
    settings = partitions.scoped(load_settings(config))
    report = gather(db, settings, shop_id, period, date, as_of)
    html = render(report)
    path = write(html, output_path(out, db, report, several=several))
    summary = {"shop_id": shop_id, "period": period, "start": report.start.isoformat(), "end": report.end.isoformat(),
               "path": str(path), "visits_planned": report.visits_planned, "reached": report.reached,
               "calls_planned": report.calls_planned, "calls_attempted": report.calls_attempted,
               "suggestions": report.suggestion_count, "reminded": report.reminded,
               "reminded_known": report.reminded_known,
               "seconds": {k: round(v, 3) for k, v in report.seconds.items()}, "sent": "not_asked",
               "recipient": None, "error": None}
    if send:
        if not settings.shop(shop_id).team_email.strip():
            summary["sent"] = "no_team_email"
        else:
            s = send_report(db, settings, report, html, source=config)
            summary.update(sent=s.status, recipient=s.recipient, error=redact(s.error) if s.error else None,
                           message_id=s.message_id,
                           sent_at=s.sent_at.isoformat() if s.sent_at else None)
    return summary


@flow(name="feedback-report")
def report_flow(shop: str | None = None, period: str = "week", date: str | None = None, as_of: str | None = None,
                out: str | None = None, send: bool = False, db: str = DEFAULT_DB, config: str = DEFAULT_CONFIG,
                timezone: str | None = None) -> dict:
    """The feedback report of `shop` (None: every configured shop, or those in `timezone`, which each
    schedule of the deployment passes) for the `period` ('day' or 'week') containing the local `date`
    (default: the last complete one at T), as of T (default now). Written to `out` (a file for one shop,
    or a folder; default <db folder>/reports/); with `send`, e-mailed to each shop's team_email."""
    logger = get_run_logger()
    settings = partitions.scoped(load_settings(config))
    shops = check_request(settings, shop=shop, period=period, day=date, as_of=as_of, send=send, out=out,
                          tz=timezone, source=config)
    t = parse_time(as_of)
    if not shops:
        logger.warning("no configured shop has the time zone %s: nothing to report", timezone)
    reports = []
    for i, s in enumerate(shops):
        r = shop_report(s.shop_id, period, date, t, db, config, out, len(shops) > 1, send)
        reports.append(r)
        progress.step(f"{i + 1}/{len(shops)} shops")
        logger.info("feedback report %s %s %s..%s: %d visits planned, %d reached of %d calls made (%d planned), "
                    "%d suggestions, %d reminded (%d with a known outcome); written to %s "
                    "(%.2f s gather, %.2f s chart, %.3f s render)", r["shop_id"], period, r["start"], r["end"],
                    r["visits_planned"], r["reached"], r["calls_attempted"], r["calls_planned"], r["suggestions"],
                    r["reminded"], r["reminded_known"], r["path"], r["seconds"].get("gather", 0),
                    r["seconds"].get("chart", 0), r["seconds"].get("render", 0))
        if r["sent"] == "no_team_email":
            logger.warning("feedback report %s not sent: the shop has no team_email", r["shop_id"])
        elif r["sent"] == "failed":
            logger.warning("feedback report %s to %s failed: %s", r["shop_id"], r["recipient"], r["error"])
        elif r["sent"] == "queued":
            logger.warning("feedback report %s to %s not sent yet (the SMTP server could not be reached), it stays "
                           "queued: %s", r["shop_id"], r["recipient"], r["error"])
        elif r["sent"] != "not_asked":
            logger.info("feedback report %s to %s: %s", r["shop_id"], r["recipient"], r["sent"].replace("_", " "))
    return {"period": period, "as_of": t.isoformat(), "reports": reports}
