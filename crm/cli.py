"""The `crm` command (docs/rules.md §9).

Imports are lazy: `crm --help` must not pay for prefect, duckdb or great_expectations.
Every failure the user can fix prints one line starting with ``error:`` and exits non-zero
(2: bad input or configuration, 1: the run failed, e.g. a failed validation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from crm import DEFAULT_CONFIG, DEFAULT_DB


def _light_rich_help() -> None:
    """typer's rich help (typer.rich_utils) imports rich.markdown (markdown-it) and rich.traceback (pygments) at
    its top, ~120 ms, for markdown help text and pretty tracebacks, neither of which this app uses. A process
    that is printing its help (and then exits) gets empty stand-ins for the two, so the help stays rich."""
    import sys
    import types

    if "typer.rich_utils" in sys.modules:
        return
    for name, attr in (("rich.markdown", "Markdown"), ("rich.traceback", "Traceback")):
        if name not in sys.modules:
            stand_in = types.ModuleType(name, "a stand-in while crm prints its help (crm/cli.py)")
            setattr(stand_in, attr, type(attr, (), {}))
            sys.modules[name] = stand_in


class _Group(typer.core.TyperGroup):
    def format_help(self, ctx, formatter) -> None:
        _light_rich_help()
        super().format_help(ctx, formatter)


class _Command(typer.core.TyperCommand):
    def format_help(self, ctx, formatter) -> None:
        _light_rich_help()
        super().format_help(ctx, formatter)

    def invoke(self, ctx):
        STATE.command = " ".join(["crm", *ctx.command_path.split()[1:]])    # "crm visits import", for messages
        return super().invoke(ctx)


app = typer.Typer(
    cls=_Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Payment reminders (催付) and follow-up visits (回访) for online shops. The rules each command follows "
         "are in docs/rules.md; every configuration key is explained in shops.example.toml.",
)
visits_app = typer.Typer(cls=_Group, no_args_is_help=True, help="Follow-up visit outcomes recorded by the call centre.")
server_app = typer.Typer(cls=_Group, no_args_is_help=True, help="The local Prefect server the commands record their flow runs on: "
                         "the first command that runs a flow starts it, later ones reuse it, `crm server stop` ends it.")
storage_app = typer.Typer(cls=_Group, no_args_is_help=True, help="Where the tables live: \\[storage] in the shops file "
                          "(the embedded DuckDB file, or DuckLake with PostgreSQL).")
app.add_typer(server_app, name="server")
app.add_typer(visits_app, name="visits")
app.add_typer(storage_app, name="storage")

console = Console(stderr=False)
err = Console(stderr=True)


class Ctx:
    db: Path
    config: Path
    config_given: bool = False      # --config or CRM_CONFIG, not the default
    command: str = "crm"            # the command running, e.g. "crm plan"
    partition: Optional[int] = None  # --partition / CRM_PARTITION: a partitioned lake's partition


STATE = Ctx()


def fail(message: str, code: int = 2) -> None:
    from crm.redact import redact

    from rich.markup import escape

    # the message is text, not markup: "[[shops]]" or a file name with brackets must print as it is
    err.print(f"[bold red]error:[/] {escape(redact(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.callback()
def main_options(
    ctx: typer.Context,
    db: Path = typer.Option(DEFAULT_DB, "--db", envvar="CRM_DB", help="The DuckDB file.", show_default=True),
    config: Path = typer.Option(DEFAULT_CONFIG, "--config", envvar="CRM_CONFIG", help="The shops configuration file."),
    partition: Optional[int] = typer.Option(None, "--partition", envvar="CRM_PARTITION", metavar="K",
                                            help="On a lake with [storage] partitions = P: the partition (0…P-1) to work on."),
) -> None:
    STATE.db, STATE.config, STATE.partition = db, config, partition
    if partition is not None:
        import os

        os.environ["CRM_PARTITION"] = str(partition)      # the flows this process runs read it (partitions.current)
    STATE.config_given = ctx.get_parameter_source("config").name != "DEFAULT"


def _settings(*, lake: bool = False, all_partitions: bool = False):
    """The shops file's settings, or one `error:` line. A `[storage] kind` other than "duckdb" is refused unless
    the command works on it (`lake`); on a partitioned lake such a command needs --partition unless it reads them
    all (`all_partitions`)."""
    from crm.config import ConfigError, load_settings

    try:
        settings = load_settings(STATE.config)
    except ConfigError as e:
        demo = Path("demo/shops.toml")
        if not STATE.config_given and not STATE.config.exists() and demo.is_file():
            fail(f"{e}; `crm demo` wrote {demo}: crm --config {demo} …")
        fail(str(e))
    if settings.storage.kind != "duckdb" and not lake:
        # the lake's connection exists (crm/storage), the commands do not run on it yet: refuse rather than
        # half-work on the DuckDB file
        fail(f'{STATE.config}: [storage] kind = "{settings.storage.kind}": not yet supported by {STATE.command}; '
             'docs/rules.md §10 lists the commands that run on the lake; this one runs on the embedded DuckDB file '
             'only (kind = "duckdb", the file --db names)')
    if lake and not (all_partitions and STATE.partition is None):
        from crm.storage import partitions

        try:
            partitions.check(settings.storage, STATE.partition)
        except ConfigError as e:
            fail(f"{STATE.config}: {e}")
    return settings


def _require_db(settings=None) -> None:
    if settings is not None and settings.storage.kind == "ducklake":
        return                          # the lake is opened (and made, the first time) by the flow
    if not STATE.db.exists():
        fail(f"{STATE.db}: no database yet (run `crm ingest` or `crm demo` first)")


# The failures a command answers in one line: (module, exception class, how). They are looked up only in the
# modules the flow did import (an exception of a module never imported cannot have been raised), so that no
# command imports the others' modules just for their exception classes.
_KNOWN_FAILURES = (
    ("crm.config", "ConfigError", "input"),
    ("transforms.ingest", "IngestError", "input"),
    ("transforms.plan", "PlanError", "input"),
    ("crm.render", "RenderError", "input"),
    ("transforms.outcomes", "OutcomeError", "input"),
    ("transforms.report", "ReportError", "input"),
    ("crm.db", "DatabaseLocked", "locked"),
    ("transforms.validate", "ValidationFailed", "validation"),
    ("transforms.dispatch", "GatewayDown", "gateway"),
    ("crm.sources", "SourceUnavailable", "locked"),       # the platform did not answer: the run failed (exit 1)
    ("crm.sources", "SourceError", "input"),
    ("crm.storage.extensions", "ExtensionError", "input"),  # an extension wheel that does not match duckdb
    ("crm.storage", "StorageError", "locked"),              # the lake or the ops database cannot be opened
)


def _known_failure(e: BaseException | None) -> str | None:
    import sys

    for module, name, how in _KNOWN_FAILURES:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(e, cls):
            return how
    return None


def _run_flow(label: str, target: str, /, partial=None, **params):
    """Run the flow `module:function` in this process with a progress bar; known failures become one line.
    Its run is recorded on the Prefect server PREFECT_API_URL names or else on the database's local one,
    which the first command starts (crm/orchestration.py). Prefect reads its settings when imported, so
    the flow is imported only after `prepare`, while a server just started gets ready. `partial` prints
    the summary of a run that did its work but ended with messages left queued (GatewayDown)."""
    import importlib

    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from crm import orchestration, progress

    try:
        server = orchestration.prepare(STATE.db)
    except orchestration.PortError as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot start a local Prefect server beside {STATE.db}: {e}", 1)
    if server is not None and server.started:
        err.print(f"note: starting a local Prefect server for {STATE.db} in the background, once (UI at "
                  f"{server.api_url.removesuffix('/api')}, pid {server.pid}{'; ' + server.note if server.note else ''}); "
                  "this and later commands record their flow runs there until `crm server stop`",
                  highlight=False, soft_wrap=True, markup=False)
    elif server is not None and orchestration.running_server(STATE.db) is None:
        err.print(f"note: waiting for the Prefect server another command is starting at "
                  f"{server.api_url.removesuffix('/api')} (pid {server.pid})", highlight=False, soft_wrap=True, markup=False)
    module, _, name = target.partition(":")
    fn = getattr(importlib.import_module(module), name)
    _no_tracebacks_on_console()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task(label, total=None)
        if server is not None:
            bar.update(task, description=f"{label}: waiting for the Prefect server")
            try:
                server.wait()
            except RuntimeError as e:
                bar.stop()
                fail(str(e), 1)
            bar.update(task, description=label)

        def report(what: str, units: int) -> None:
            bar.update(task, description=f"{label}: {what}")

        # no flow-run heartbeats for a command run in this process: Prefect's heartbeat thread sleeps in 1 s
        # steps and the run's end waits for it (up to 1 s on every command). Heartbeats only let a server
        # automation mark a killed run Crashed; a killed command's run stays Running either way unless such an
        # automation exists, and deployments run by workers keep their heartbeats
        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        try:
            with progress.reporting(report), temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                return fn(**params)
        except Exception as e:
            how = _known_failure(e)
            if how is None:
                raise
            if how == "input":
                fail(str(e))
            if how == "locked":
                fail(str(e), 1)
            if how == "validation":
                fail(f"validation failed, nothing was written or sent: {e}", 1)
            bar.stop()                   # a gateway down: the summary of what was done, then one line
            if partial and e.summary:
                partial(e.summary)
            fail(str(e), 1)


def _no_tracebacks_on_console() -> None:
    """Prefect logs a failed run's traceback to the console; for the failures this command answers in one
    `error:` line, keep the traceback off the terminal (the Prefect server still records it)."""
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    def keep(record: logging.LogRecord) -> bool:
        return not (record.exc_info and _known_failure(record.exc_info[1]))

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(keep)


def _print_ingest(summary: dict) -> None:
    from rich.table import Table

    if not summary["files_new"]:
        console.print(f"nothing new: all {summary['files_seen']} files were loaded before")
        return
    table = Table(title=f"ingest #{summary['ingest_id']}: {summary['files_new']} new of {summary['files_seen']} files")
    for col in ("entity", "files", "rows read", "loaded", "quarantined"):
        table.add_column(col, justify="left" if col == "entity" else "right")
    for name, c in summary["entities"].items():
        table.add_row(name, str(c["files"]), f"{c['rows_read']:,}", f"{c['rows_loaded']:,}", f"{c['rows_quarantined']:,}")
    console.print(table)
    for f in summary["files_quarantined"]:
        console.print(f"[yellow]quarantined whole file:[/] {f}")
    for path in summary["ignored"]:
        console.print(f"[yellow]ignored (not an entity folder):[/] {path}")
    for w in summary["warnings"]:
        console.print(f"[yellow]reported:[/] {w}")
    if summary["rows_quarantined"] or summary["files_quarantined"]:
        console.print("see the reasons with: crm quarantine")


@app.command()
def ingest(landing_dir: Path = typer.Argument(..., help="Folder with one subfolder per entity (orders/, customers/, …).")) -> None:
    """Load the landing folder's new files (rules: docs/rules.md §1)."""
    if not landing_dir.is_dir():
        fail(f"{landing_dir}: landing folder not found")
    _settings(lake=True)
    summary = _run_flow("ingest", "flows.ingest:ingest_flow", landing_dir=str(landing_dir), db=str(STATE.db), config=str(STATE.config),
                        partition=STATE.partition)
    _print_ingest(summary)


@app.command()
def extract(
    shop: Optional[str] = typer.Option(None, "--shop", help="Only this shop; default: every shop with a \\[shops.source]."),
    since: Optional[str] = typer.Option(None, "--since", help="Fetch what changed since T (ISO 8601 with an offset "
                                        "or Z) instead of since the shop's watermark."),
    landing: Optional[Path] = typer.Option(None, "--landing", help="Where the drop files go; default: landing/ "
                                           "beside the database."),
    as_of: Optional[str] = typer.Option(None, "--as-of", help="T, the end of what is fetched; default now."),
) -> None:
    """Fetch what changed on the shops' platforms (Taobao/Tmall, Shopify) since each shop's watermark, write it
    as drop files and ingest them (rules: docs/rules.md §11). Secrets come from the environment variables the
    shop's \\[shops.source] names."""
    import os

    from crm.sources import SourceError, check_env, selected
    from transforms.plan import parse_as_of

    _check_time(since, "--since")
    _check_time(as_of, "--as-of")
    if since and parse_as_of(since) >= parse_as_of(as_of):
        fail(f"--since {since}: must be before T ({as_of or 'now'})")
    if landing is not None and landing.exists() and not landing.is_dir():
        fail(f"--landing {landing}: exists and is not a folder")
    settings = _settings(lake=True)
    try:
        shops = selected(settings, shop)
    except SourceError as e:
        fail(f"{STATE.config}: {e}")
    try:
        for one in shops:
            check_env(one, os.environ)
    except SourceError as e:
        fail(str(e))
    s = _run_flow("extract", "flows.extract:extract_flow", db=str(STATE.db), config=str(STATE.config), shop=shop,
                  landing_dir=str(landing) if landing else None, since=since, as_of=as_of)
    for r in s["shops"]:
        console.print(f"{r['shop_id']} ({r['kind']}): {r['since'][:19]}Z to {r['until'][:19]}Z (from the "
                      f"{r['started_from']}): {r['pages']:,} pages, {r['orders']:,} orders, {r['rows']['customers']:,} "
                      f"customers, {r['rows']['products']:,} products in {len(r['files'])} files; watermark "
                      f"{r['watermark'][:19] + 'Z' if r['watermark'] else 'none'}", highlight=False)
        if r["rejects"]:
            console.print(f"  [yellow]{r['rejects']:,} record{'s' if r['rejects'] != 1 else ''} could not be mapped: "
                          "quarantined (crm quarantine)[/]", highlight=False)
        for note in r["notes"]:
            console.print(f"  note: {note}", highlight=False, markup=False)
    _print_ingest(s["ingest"])


def _check_time(text: str | None, option: str) -> None:
    from transforms.plan import PlanError, parse_as_of

    try:
        parse_as_of(text)
    except PlanError as e:
        fail(f"{option}: {e}")


def _print_plan(summary: dict) -> None:
    from rich.table import Table

    console.print(f"plan at {summary['as_of']}: {summary['unpaid_orders']:,} unpaid orders")
    table = Table()
    table.add_column("decision / reason")
    table.add_column("orders", justify="right")
    for reason, n in summary["decisions"].items():
        table.add_row(reason, f"{n:,}")
    console.print(table)
    channels = ", ".join(f"{c}: {n:,}" for c, n in summary["visit_channels"].items())
    console.print(f"{summary['visit_tasks']:,} follow-up visits due ({channels or 'none'}); "
                  f"planned in {summary['seconds']:.2f} s")
    _print_retired(summary)


def _print_retired(summary: dict) -> None:
    from transforms.plan import retired_line

    if summary.get("retired_shops"):
        console.print(f"[yellow]not planned:[/] {retired_line(summary['retired_shops'])}", highlight=False)


@app.command()
def plan(as_of: Optional[str] = typer.Option(None, "--as-of", help="T, ISO 8601 with an offset or Z; default now.")) -> None:
    """Write the marts for T: reminder decisions, visit tasks, customer segments (rules: docs/rules.md §2-5)."""
    _check_time(as_of, "--as-of")
    _require_db(_settings(lake=True))
    summary = _run_flow("plan", "flows.plan:plan_flow", as_of=as_of, db=str(STATE.db), config=str(STATE.config),
                        partition=STATE.partition)
    _print_plan(summary)


@app.command()
def backfill(
    start: str = typer.Option(..., "--from", help="First T (ISO 8601 with an offset or Z)."),
    end: str = typer.Option(..., "--to", help="Last T (included)."),
    every: str = typer.Option("1h", "--every", help="Step: 1h, 30m, 1d, 2h30m …"),
    force: bool = typer.Option(False, "--force", help="Plan again the T this backfill already planned."),
    max_times: Optional[int] = typer.Option(None, "--max-times", metavar="N",
                                            help="Plan at most N times (default 10,000); more are refused."),
) -> None:
    """Plan at every T in [--from, --to]; an interrupted backfill re-run finishes the rest."""
    from transforms.plan import MAX_BACKFILL_TIMES, PlanError, backfill_times, parse_as_of, parse_duration

    _check_time(start, "--from")
    _check_time(end, "--to")
    limit = MAX_BACKFILL_TIMES if max_times is None else max_times
    try:
        backfill_times(parse_as_of(start), parse_as_of(end), parse_duration(every), limit)
    except PlanError as e:
        fail(str(e))
    _require_db(_settings(lake=True))
    summary = _run_flow("backfill", "flows.plan:backfill_flow", start=start, end=end, every=every,
                        db=str(STATE.db), config=str(STATE.config), force=force, max_times=limit,
                        partition=STATE.partition)
    console.print(f"backfill planned {summary['planned']} times, skipped {summary['skipped']} already planned")
    for t in summary["times"][-3:]:
        console.print(f"  {t['as_of']}: {t['unpaid_orders']:,} unpaid, {t['decisions'].get('remind', 0):,} to remind, "
                      f"{t['visit_tasks']:,} visits ({t['seconds']:.2f} s)")


@app.command()
def dispatch(
    as_of: Optional[str] = typer.Option(None, "--as-of", help="T, ISO 8601 with an offset or Z; default now."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Render and show what would go out; write nothing."),
    show: int = typer.Option(5, "--show", help="With --dry-run: how many messages to print."),
    only: Optional[list[str]] = typer.Option(None, "--only", help="Only this channel (sms, chat, email, call; "
                                             "repeatable), e.g. --only call to queue the agents' calls; the "
                                             "others are left for a later run."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="First queue the failed messages again under "
                                      "the same id (e.g. e-mails in doubt after a crash, once you know they did not "
                                      "go out); each is checked again before it goes."),
) -> None:
    """Plan at T, validate, then render and send what is due: SMS/chat by webhook, email by SMTP,
    calls queued for the agents. Each message goes out once, whatever is re-run."""
    _check_time(as_of, "--as-of")
    for channel in only or []:
        if channel not in ("sms", "chat", "email", "call"):
            fail(f"--only {channel!r}: the channels are sms, chat, email and call")
    _require_db(_settings(lake=True))
    s = _run_flow("dispatch", "flows.dispatch:dispatch_flow", partial=lambda s: _print_dispatch(s, show),
                  as_of=as_of, db=str(STATE.db), config=str(STATE.config), dry_run=dry_run,
                  channels=list(only) if only else None, retry_failed=retry_failed, partition=STATE.partition)
    _print_dispatch(s, show)


def _print_dispatch(s: dict, show: int) -> None:
    created = ", ".join(f"{k}: {n:,}" for k, n in s["created"].items()) or "none"
    console.print(f"dispatch at {s['as_of']}{' (dry run: nothing written or sent)' if s['dry_run'] else ''}")
    console.print(f"  new messages: {created}")
    if s.get("requeued"):
        console.print(f"  failed messages queued again: {s['requeued']:,}{' (would be)' if s['dry_run'] else ''}")
    _print_retired(s)
    if s["long_sms"]:
        console.print(f"  [yellow]{s['long_sms']:,} SMS longer than one segment (70 Chinese / 160 GSM characters)[/]")
    if not s["dry_run"]:
        kept = s.get("kept", 0) + s.get("skipped", 0)
        console.print(f"  sent {s['sent']:,}, failed {s['failed']:,}"
                      + (f", kept queued for the next run {kept:,}" if kept else "")
                      + f"; {s['calls_queued']:,} calls queued for agents ({s['seconds']:.1f} s)")
        if s.get("withdrawn"):
            console.print(f"  [yellow]{s['withdrawn']:,} queued messages may no longer go (paid, closed, opted out, past "
                          f"their time …): failed unsent, each with its reason in ops.messages.last_error[/]")
        if s.get("waiting"):
            console.print(f"  {s['waiting']:,} queued messages wait: quiet hours or the daily cap now")
        if s.get("in_doubt"):
            console.print(f"  [yellow]{s['in_doubt']:,} e-mails of a run that stopped mid-send are in doubt: failed, "
                          f"not sent again (crm dispatch --retry-failed re-queues them)[/]")
        for line in s["failures"][:10]:
            console.print(f"  [red]failed[/] {line}", highlight=False)
    for m in s["preview"][:show]:
        console.print(f"\n[bold]{m['message_id']}[/] {m['channel']} to {m['recipient']} ({m['template']}"
                      f"{', %d SMS parts' % m['segments'] if (m['segments'] or 1) > 1 else ''})", highlight=False)
        console.print(m["body"], highlight=False)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo"), "--out", help="Where the demo landing folder and its shops.toml go."),
    orders: int = typer.Option(30_000, "--orders", min=100, help="How many orders to generate."),
    seed: int = typer.Option(7, "--seed"),
) -> None:
    """Make demo data (three shops, weeks of history, the seeds' situations) and run the pipeline on it."""
    from crm.demo import generate

    if out.exists() and not out.is_dir():
        fail(f"--out {out}: exists and is not a folder")
    console.print(f"generating {orders:,} orders into {out}/ …")
    summary = generate(out, orders=orders, seed=seed)
    # the demo's own shops file, unless the user named one
    if not STATE.config_given:
        STATE.config = summary.config_path
    _settings()
    result = _run_flow("demo", "flows.demo:demo_flow", landing_dir=str(summary.landing_dir), as_of=summary.anchor.isoformat(),
                       db=str(STATE.db), config=str(STATE.config))
    _print_ingest(result["ingest"])
    _print_plan(result["plan"])
    _print_dispatch(result["dispatch"], 3)
    console.print(f"demo data as of {summary.anchor:%Y-%m-%d %H:%M} UTC is in {STATE.db} (config {STATE.config})")
    console.print(f"{result['calls']['calls_queued']} calls queued for the agents (nothing else sent); their page:",
                  highlight=False)
    # one unbroken line, so it can be copied
    console.print(f"  ./run crm --db {STATE.db} --config {STATE.config} serve --as-of {summary.anchor.isoformat()}",
                  highlight=False, soft_wrap=True)
    console.print("then open http://127.0.0.1:8000/", highlight=False)


@app.command()
def report(
    shop: Optional[str] = typer.Option(None, "--shop", help="The shop's id; default: every configured shop."),
    period: str = typer.Option("week", "--period", help="day or week (ISO week, Monday to Sunday)."),
    date: Optional[str] = typer.Option(None, "--date", help="Any local date in the period (YYYY-MM-DD); "
                                                           "default: the last complete day or week."),
    as_of: Optional[str] = typer.Option(None, "--as-of", help="T, ISO 8601 with an offset or Z; default now."),
    out: Optional[Path] = typer.Option(None, "--out", help="A file (.html, one shop) or a folder; "
                                                          "default: reports/ beside the database."),
    send: bool = typer.Option(False, "--send", help="Also e-mail it to the shop's team_email (once per period)."),
) -> None:
    """The feedback report (docs/rules.md §8) as one HTML file: visits, issue rates with a chart, the
    suggestions, gifts and compensations, the payment reminders' effect."""
    from transforms.report import ReportError, check_request

    _check_time(as_of, "--as-of")
    settings = _settings(lake=True)
    try:
        check_request(settings, shop=shop, period=period, day=date, as_of=as_of, send=send,
                      out=str(out) if out else None, source=str(STATE.config))
    except ReportError as e:
        fail(str(e))
    _require_db(settings)
    s = _run_flow("report", "flows.report:report_flow", shop=shop, period=period, date=date, as_of=as_of,
                  out=str(out) if out else None, send=send, db=str(STATE.db), config=str(STATE.config))
    failed = False
    for r in s["reports"]:
        console.print(f"{r['shop_id']} {r['period']} {r['start']}" + (f" to {r['end']}" if r["end"] != r["start"] else "")
                      + f": {r['visits_planned']:,} visits planned, {r['reached']:,} reached; written to {r['path']}",
                      highlight=False)
        if r["sent"] == "sent":
            console.print(f"  sent to {r['recipient']} ({r['message_id']})", highlight=False)
        elif r["sent"] == "already_sent":
            console.print(f"  already sent to {r['recipient']} at {r['sent_at']}: not sent again", highlight=False)
        elif r["sent"] == "no_team_email":
            console.print("  [yellow]not sent: the shop has no team_email[/]", highlight=False)
        elif r["sent"] == "failed":
            failed = True
            console.print(f"  [red]sending to {r['recipient']} failed:[/] {r['error']}", highlight=False)
        elif r["sent"] == "queued":
            failed = True
            console.print(f"  [red]not sent yet to {r['recipient']}, the SMTP server could not be reached:[/] "
                          f"{r['error']}; it stays queued (the next dispatch or report --send sends it)",
                          highlight=False)
    if failed:
        raise typer.Exit(1)


@app.command()
def effect(
    shop: Optional[str] = typer.Option(None, "--shop", help="The shop's id; default: every configured shop."),
    start: Optional[str] = typer.Option(None, "--from", help="The first local date (YYYY-MM-DD); default: the first."),
    end: Optional[str] = typer.Option(None, "--to", help="The last local date (YYYY-MM-DD), included; default: the last."),
) -> None:
    """The payment reminders' effect (docs/rules.md §8) as the newest plan counted it: per shop, segment and
    channel the lift against the held-out orders with its 95% interval and the revenue it implies, and the
    template experiments' variants compared; "not enough data yet" where a group is too small."""
    from rich.table import Table

    from transforms.report import ReportError, effect_summary

    from crm.storage import ExtensionError, StorageError

    settings = _settings(lake=True)
    _require_db(settings)
    try:
        s = effect_summary(STATE.db, settings, shop=shop, start=start, end=end)
    except (ReportError, ExtensionError) as e:
        fail(str(e))
    except StorageError as e:
        fail(str(e), 1)

    def pct(v) -> str:
        return "–" if v is None else f"{v * 100:.1f}%"

    def pts(v) -> str:
        return "–" if v is None else f"{v * 100:+.1f}"

    span = f"{s['start'] or 'the first day'} to {s['end'] or 'the last'}"
    as_of = f"{s['as_of']:%Y-%m-%d %H:%M} UTC" if s["as_of"] else "no plan yet"
    console.print(f"payment reminders' effect, local days {span}, as of {as_of}: orders whose outcome is known; "
                  f"a lift needs {s['min_known']} of them in each group", highlight=False)
    for shop_id in s["shops"]:
        rows = [r for r in s["effect"] if r["shop_id"] == shop_id]
        table = Table(title=f"{shop_id}: reminder planned against held out", title_justify="left")
        for col in ("segment", "channel", "planned", "paid", "held out", "paid", "lift (points)", "95% CI",
                    "revenue implied (95% CI)"):
            table.add_column(col, justify="left" if col in ("segment", "channel") else "right")
        for r in rows:
            ok = r["effect_status"] == "ok"
            table.add_row(
                r["segment"], r["channel"], f"{r['orders_assigned_known']:,}", pct(r["assigned_paid_rate"]),
                f"{r['orders_held_out_known']:,}", pct(r["held_out_paid_rate"]),
                pts(r["lift"]) if ok else "not enough data yet",
                f"{pts(r['lift_low'])} to {pts(r['lift_high'])}" if ok else "",
                f"{r['implied_recovered_amount']:,.2f} ({r['implied_recovered_low']:,.2f} to "
                f"{r['implied_recovered_high']:,.2f})" if ok else "")
        if not rows:
            table.add_row("all", "all", "0", "–", "0", "–", "not enough data yet", "", "")
        console.print(table)
        variants = [v for v in s["variants"] if v["shop_id"] == shop_id]
        if variants:
            table = Table(title=f"{shop_id}: template experiments", title_justify="left")
            for col in ("segment", "variant", "counted", "paid", "95% CI", "vs first (points)", "95% CI"):
                table.add_column(col, justify="left" if col in ("segment", "variant") else "right")
            for v in variants:
                ok = v["status"] == "ok"
                table.add_row(
                    v["segment"], v["variant"], f"{v['orders_known']:,}", pct(v["paid_rate"]),
                    f"{pct(v['paid_rate_low'])} to {pct(v['paid_rate_high'])}" if v["paid_rate"] is not None else "",
                    "reference" if v["status"] == "reference" else pts(v["difference"]) if ok else "not enough data yet",
                    f"{pts(v['difference_low'])} to {pts(v['difference_high'])}" if ok else "")
            console.print(table)


def _read_storage():
    """(a read connection, its name): the DuckDB file read-only, or, when the shops file says `[storage] kind =
    "ducklake"`, the lake (its partition's, --partition) with the operational tables in PostgreSQL. A command
    that only reads needs no shops file on the embedded file: one that is missing or wrong means the file."""
    from crm.db import connect

    settings = None
    if STATE.config.exists():
        from crm.config import ConfigError, load_settings

        try:
            settings = load_settings(STATE.config)
        except ConfigError:
            settings = None
    if settings is not None and settings.storage.kind == "ducklake":
        from crm.db import connect_storage

        _settings(lake=True)                                   # the partition, checked in one line
        name = "the lake" + (f", partition {STATE.partition}" if STATE.partition is not None else "")
        return connect_storage(STATE.db, settings, read_only=True), name
    try:
        return connect(STATE.db, read_only=True), str(STATE.db)
    except FileNotFoundError as e:
        fail(str(e))


@app.command()
def status() -> None:
    """What the database holds: staged rows, quarantine, recent ingests."""
    from rich.table import Table

    con, name = _read_storage()
    table = Table(title=name)
    table.add_column("table")
    table.add_column("rows", justify="right")
    # the current database's tables (on the lake: its tables, and the views of the operational tables in PostgreSQL)
    for (schema, name) in con.execute(
        "SELECT table_schema, table_name FROM information_schema.tables WHERE table_catalog = current_database() "
        "AND table_schema IN ('staging', 'marts', 'ops') AND (table_type = 'BASE TABLE' OR table_schema = 'ops') "
        "ORDER BY table_schema, table_name"
    ).fetchall():
        n = con.execute(f'SELECT count(*) FROM {schema}."{name}"').fetchone()[0]
        table.add_row(f"{schema}.{name}", f"{n:,}")
    console.print(table)
    runs = con.execute("SELECT ingest_id, started_at, files_new, rows_loaded, rows_quarantined, status "
                       "FROM ops.ingest_runs ORDER BY ingest_id DESC LIMIT 5").fetchall()
    for r in runs:
        console.print(f"ingest #{r[0]} at {r[1]:%Y-%m-%d %H:%M:%S}: {r[2]} files, {r[3]:,} rows loaded, {r[4]:,} quarantined ({r[5]})")
    _print_gateway_news(con)


def _print_gateway_news(con) -> None:
    """What the gateways told us back (docs/rules.md §7): receipts by status, replies, opt-outs."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'ops' "
                                        "AND table_catalog = current_database()").fetchall()}
    if not {"delivery_receipts", "replies"} <= tables:
        return                                  # a database from before the hooks existed
    receipts = con.execute("SELECT status, count(*) FROM ops.delivery_receipts GROUP BY 1 ORDER BY 2 DESC").fetchall()
    delivery = dict(con.execute("SELECT coalesce(delivery, 'no final receipt'), count(*) FROM ops.messages "
                                "WHERE status = 'sent' AND channel IN ('sms', 'chat', 'email') GROUP BY 1").fetchall())
    replies, opt_outs = con.execute("SELECT count(*), count(*) FILTER (WHERE opt_out) FROM ops.replies").fetchone()
    console.print(f"receipts: {', '.join(f'{s} {n:,}' for s, n in receipts) or 'none'}; messages sent: "
                  + (", ".join(f"{k} {n:,}" for k, n in sorted(delivery.items())) or "none"))
    console.print(f"replies: {replies:,}, of them opt-outs {opt_outs:,} (suppressed for SMS)")


@app.command()
def quarantine(
    entity: Optional[str] = typer.Option(None, "--entity", help="Only this entity."),
    limit: int = typer.Option(20, "--limit", help="How many rows to show."),
) -> None:
    """The rejected input rows with their reasons (ops.quarantine)."""
    from rich.table import Table

    from crm.redact import redact

    con, _ = _read_storage()
    where, params = ("WHERE entity = ?", [entity]) if entity else ("", [])
    summary = con.execute(f"SELECT entity, count(*) FROM ops.quarantine {where} GROUP BY 1 ORDER BY 1", params).fetchall()
    console.print(", ".join(f"{e}: {n:,}" for e, n in summary) or "the quarantine is empty")
    rows = con.execute(
        f"SELECT entity, source_file, row_number, reason, \"row\" FROM ops.quarantine {where} "
        "ORDER BY loaded_at DESC, source_file, row_number LIMIT ?", params + [limit]).fetchall()
    if rows:
        table = Table()
        for col in ("entity", "file", "row", "reason", "content (phones and emails masked)"):
            table.add_column(col, overflow="fold")
        import re

        extracted = re.compile(r"^[a-z]+:\S+ ")    # a record `crm extract` could not map: 'taobao:s1 tid 123'
        for e, f, n, reason, row in rows:
            record = n is None and extracted.match(f or "") is not None
            where = "record" if record else "whole file" if n is None else str(n)
            table.add_row(e, f if record else Path(f).name, where, redact(reason or ""),
                          redact(row or "")[:160])
        console.print(table)


@visits_app.command("import")
def visits_import(file: Path = typer.Argument(..., help="CSV: order_id, reached, quality, logistics, packaging, "
                                                         "service, suggestion, gift, compensation[, recorded_at, callback_at, agent]"),
                  as_of: Optional[str] = typer.Option(None, "--as-of", help="The import's now, ISO 8601 with an offset "
                                                      "or Z: the time of rows without recorded_at, and the latest a "
                                                      "row may give. Default: the real time.")) -> None:
    """Record a call-centre export: good rows are saved, bad ones reported with their line numbers
    (exit 1 when any row was refused)."""
    _check_time(as_of, "--as-of")
    if not file.is_file():
        fail(f"{file}: file not found")
    _require_db(_settings(lake=True))
    s = _run_flow("visits import", "flows.visits:visits_import_flow", path=str(file), db=str(STATE.db),
                  config=str(STATE.config), as_of=as_of)
    console.print(f"{s['saved']:,} outcomes saved, {len(s['errors']):,} refused")
    from crm.redact import redact

    for line, reason in s["errors"]:
        console.print(f"  line {line}: {redact(reason)}", highlight=False)
    if s["errors"]:
        raise typer.Exit(1)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port"),
    as_of: Optional[str] = typer.Option(None, "--as-of", help="The page's now, ISO 8601 with an offset or Z; its clock "
                                        "starts there and runs on (for demos and tests). Default: the real time."),
) -> None:
    """The agents' page: today's follow-up calls per shop, the script, and the outcome form.
    Beyond this machine (a --host other than 127.0.0.1/localhost) it needs CRM_WEB_PASSWORD: the page
    shows customers' phone numbers."""
    import os

    _check_time(as_of, "--as-of")
    settings = _settings(lake=True)
    from crm.storage import partitions

    settings = partitions.scoped(settings)      # on a partitioned lake: its shops
    _require_db(settings)
    password = os.environ.get("CRM_WEB_PASSWORD") or None
    if host not in ("127.0.0.1", "localhost", "::1") and not password:
        fail(f"--host {host}: the page shows customers' phone numbers; set CRM_WEB_PASSWORD to serve it beyond "
             "this machine (agents then log in with any name and that password)")
    import uvicorn

    from crm.web import clock_from, create_app
    from transforms.plan import parse_as_of

    clock = clock_from(parse_as_of(as_of)) if as_of else None
    where = "the lake" if settings.storage.kind == "ducklake" else STATE.db
    console.print(f"agents' page on http://{host}:{port}/ ({where}){' with a password' if password else ''}"
                  f"{f', its clock set to {as_of}' if as_of else ''}; Ctrl-C stops it", highlight=False)
    missing = [key for key in ("signing_secret", "hook_key") if not getattr(settings.gateway, key)]
    if missing:
        # the hooks still work (a test gateway on one machine), but whoever reaches the port could post receipts
        # and opt-outs
        where = {"signing_secret": "/hooks/receipts and /hooks/replies", "hook_key": "/hooks/kannel/"}
        err.print(f"note: {' and '.join(where[k] for k in missing)} accept unsigned requests; set [gateway] "
                  f"{' and '.join(missing)} to refuse what a gateway did not send", highlight=False, soft_wrap=True,
                  markup=False)
    uvicorn.run(create_app(STATE.db, settings, password=password, clock=clock), host=host, port=port,
                log_level="warning")


@server_app.command("start")
def server_start(port: Optional[int] = typer.Option(
        None, "--port", help="Listen on this port, or fail if it is taken. Default: 4200 (CRM_PREFECT_PORT), "
                             "or a free port near it when that one is taken.")) -> None:
    """Start the local Prefect server now, in the background (UI at http://127.0.0.1:PORT)."""
    from crm import orchestration

    try:
        info = orchestration.start_server(STATE.db, port)
    except orchestration.PortError as e:
        fail(str(e))
    except (RuntimeError, OSError) as e:
        fail(str(e), 1)
    if info.get("note"):
        err.print(f"note: {info['note']}", highlight=False, soft_wrap=True)
    verb = "already running" if info.get("already") else "started"
    console.print(f"Prefect server {verb} at {info['api_url']} (pid {info['pid']}); crm commands now record their runs there")


@server_app.command("stop")
def server_stop() -> None:
    """Stop the local Prefect server of this database (started by a command or by `crm server start`)."""
    from crm import orchestration

    console.print("stopped" if orchestration.stop_server(STATE.db) else "no local server was running")


@server_app.command("status")
def server_status() -> None:
    """Whether the local Prefect server of this database is running (that very process, on its port)."""
    from crm import orchestration

    state, info = orchestration.server_status(STATE.db)
    console.print(f"{state} at {info['api_url']} (pid {info['pid']})" if info else state)


@storage_app.command("check")
def storage_check() -> None:
    """Open the storage the shops file names and say what is there. For kind = "ducklake": the extensions
    (installed offline from their Python packages), the lake (its catalog is set up in PostgreSQL and the
    schemas staging and marts made when missing) and the ops database; one line if any cannot be opened."""
    settings = _settings(lake=True)
    s = settings.storage
    if s.kind == "duckdb":
        state = "" if STATE.db.exists() else " (not made yet: crm ingest or crm demo makes it)"
        console.print(f'kind = "duckdb": every table in the DuckDB file {STATE.db}{state}', highlight=False)
        return
    from crm.storage import LAKE, OPS, ExtensionError, StorageError, connect_lake, data_path_of

    try:
        con = connect_lake(s)
    except ExtensionError as e:
        fail(str(e))
    except StorageError as e:
        fail(str(e), 1)
    try:
        loaded = con.execute("SELECT extension_name, extension_version FROM duckdb_extensions() WHERE loaded AND "
                             "extension_name IN ('ducklake', 'postgres_scanner', 'httpfs') ORDER BY 1").fetchall()
        tables = dict(con.execute("SELECT database_name, count(*) FROM duckdb_tables() WHERE database_name = ? "
                                  "OR (database_name = ? AND schema_name = 'public') GROUP BY 1", [LAKE, OPS]).fetchall())
    finally:
        con.close()
    console.print(f'kind = "ducklake": extensions {", ".join(f"{n} {v}" for n, v in loaded)} (from their Python packages)',
                  highlight=False)
    console.print(f"  lake: catalog in PostgreSQL, data in {data_path_of(s)}; schemas staging and marts; "
                  f"{tables.get(LAKE, 0):,} tables", highlight=False)
    console.print(f"  ops database: reached; {tables.get(OPS, 0):,} tables in its schema public", highlight=False)
    console.print('  crm ingest, extract, plan, backfill, visits import, report, effect and serve run on this storage; '
                  'the other commands do not yet (docs/rules.md §10)',
                  highlight=False)


@storage_app.command("sql")
def storage_sql(
    query: str = typer.Argument(..., help="One SQL query, e.g. \"SELECT shop_id, count(*) FROM marts.visit_tasks GROUP BY 1\"."),
    csv_out: bool = typer.Option(False, "--csv", help="Print CSV (a header, then the rows) instead of a table."),
    limit: int = typer.Option(1000, "--limit", help="At most this many rows printed."),
) -> None:
    """The analysts' read path: a read-only query on the tables where they live (docs/rules.md §10). The DuckDB
    file: its analysts' copy (or the file itself before the first run made one). The lake: its tables and the
    operational ones in PostgreSQL under the same names; a partitioned lake's partitions all together, as one
    set of tables (or one, --partition K)."""
    import csv
    import sys

    import duckdb

    from crm.db import analytics_path

    settings = _settings(lake=True, all_partitions=True) if STATE.config.exists() else None
    if settings is not None and settings.storage.kind == "ducklake":
        from crm.storage import ExtensionError, StorageError, connect_group

        try:
            con = connect_group(settings.storage, STATE.partition)
        except ExtensionError as e:
            fail(str(e))
        except StorageError as e:
            fail(str(e), 1)
    else:
        from crm.db import analytics_failure, analytics_ready, connect

        copy = analytics_path(STATE.db)
        if not analytics_ready(STATE.db):
            print("the analysts' copy after the latest run is still on its way (a run holds the file); "
                  "reading the previous one", file=sys.stderr)
        failure = analytics_failure(STATE.db)
        if failure is not None:
            from datetime import datetime

            made = datetime.fromtimestamp(copy.stat().st_mtime).astimezone().isoformat(timespec="seconds")
            when, why = failure
            print(f"warning: reading the analysts' copy of {made}: the copy after a later run failed at {when}: "
                  f"{why} (every failure: {copy.name}.log; the next run copies the file again)", file=sys.stderr)
        path = copy if copy.exists() else STATE.db
        try:
            con = connect(path, read_only=True)
        except FileNotFoundError as e:
            fail(str(e))
        except duckdb.Error as e:            # not a database (a folder, a truncated file): no traceback
            fail(f"cannot read {path}: {str(e).splitlines()[0]}" + (
                "; it is the analysts' copy: move it aside (the next run that writes makes it again)"
                if path == copy else ""), 1)
    try:
        cursor = con.execute(query)
        names = [d[0] for d in cursor.description or []]
        rows = cursor.fetchmany(limit)
    except duckdb.Error as e:
        fail(f"the query: {str(e).splitlines()[0]}")
    finally:
        con.close()
    if csv_out:
        writer = csv.writer(sys.stdout)
        writer.writerow(names)
        writer.writerows(rows)
        return
    from rich.table import Table

    table = Table(*names)
    for r in rows:
        table.add_row(*("" if v is None else str(v) for v in r))
    console.print(table)


@storage_app.command("maintain")
def storage_maintain(
    keep_days: int = typer.Option(7, "--keep-days", min=0, help="Keep snapshots (time travel) and their files this many days."),
    now: Optional[str] = typer.Option(None, "--now", help="The present, ISO 8601 with an offset or Z; default now."),
) -> None:
    """The lake's upkeep, as the daily lake-maintenance deployment runs it: flush the rows small inserts left in the
    catalog, merge small files, expire old snapshots, delete the files no snapshot needs (docs/rules.md §10)."""
    _check_time(now, "--now")
    _settings(lake=True)
    s = _run_flow("lake upkeep", "flows.maintenance:maintenance_flow", db=str(STATE.db), config=str(STATE.config),
                  keep_days=keep_days, now=now, partition=STATE.partition)
    if s["kind"] != "ducklake":
        console.print(f'kind = "{s["kind"]}": nothing to maintain (the lake\'s upkeep is for kind = "ducklake")',
                      highlight=False)
        return
    console.print(f"lake: {s['snapshots_before']:,} → {s['snapshots_after']:,} snapshots; {s['files_before']:,} → "
                  f"{s['files_after']:,} data files in use (rows the catalog held become files; small files merge)",
                  highlight=False)
    for step, r in s["steps"].items():
        console.print(f"  {step}: {r['rows']:,} in {r['seconds']:.2f} s", highlight=False)


def main() -> None:
    for group in (app, server_app, visits_app, storage_app):          # every command's help as light as the groups'
        for command in group.registered_commands:
            if command.cls in (None, typer.core.TyperCommand):
                command.cls = _Command
    try:
        app()
    except SystemExit as e:
        _end(e.code)
    _end(0)


def _end(code) -> None:
    """End the command's process without Python's finalization: after a flow ran, freeing Prefect's and pydantic's
    objects module by module takes ~0.4 s, which a user would wait for. What finalization would do that matters is
    done first: other threads that are not daemons are waited for, the exit handlers run (logging's flush,
    Prefect's), the output streams are flushed. Connections are closed by the code that opened them (a DuckDB file
    left open is safe anyway: its committed writes are in the WAL, which the next open replays)."""
    import atexit
    import os
    import sys
    import threading

    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)      # what SystemExit("message") prints
        code = 1
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass                          # a closed pipe (`crm … | head`): nothing more to write
    os._exit(code)


if __name__ == "__main__":
    main()
