"""The feedback report (docs/rules.md §8): one shop's visits, what reached customers said and the payment
reminders' effect over a local day or ISO week, rendered as one self-contained HTML page, and sent to
the shop's team as a message with purpose ``feedback_summary``.

Each rate says its denominator in words: the reach rate is reached / calls an agent made (SMS and email
follow-ups are counted as sent, they cannot reach in the call sense); the reminders' paid rates count only
orders whose outcome is known at T (paid, closed or past the platform's auto-close), and "reminded" means a
reminder that reached the customer's side (a message sent, a call an agent made).

*Gather* reads through a short read-only connection (open, read, close). It runs the models
``sql/marts/feedback_summary.sql``, ``sql/marts/reminder_effect_segments.sql`` and ``reminder_variants.sql`` as
plain queries at T (default now), so the report is fresh even when no plan ran since, and takes the shop's rows
for the period; the suggestions and the compensations by type come from the same rows the model counts (each
order's latest reached outcome in the period). *Render* draws the issue-rate chart with Altair, converts it to SVG
offline with vl-convert and embeds it in ``templates/report/feedback_summary.html.j2`` (autoescaped:
suggestions are customers' words). *Send* writes the message to ``ops.messages`` as queued, sends it
over SMTP as HTML with a plain-text part and records sent or failed; its message_id
``feedback_summary:<shop>:<period>:<start>`` makes one period's report go out once.
"""

from __future__ import annotations

import logging
import re
import time
import tomllib
from contextlib import closing
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb

from crm.db import asset_dir, connect_storage, exclusive, reader, sql_text, transaction
from crm.storage.layout import ops_table
from crm.redact import mask_email

log = logging.getLogger("crm.report")

PERIODS = ("day", "week")
CATEGORIES = ("quality", "logistics", "packaging", "service")
PURPOSE = "feedback_summary"
TEMPLATE = "report/feedback_summary.html.j2"


class ReportError(Exception):
    """Bad input for a report (unknown shop, bad period or date, no database …): one line for the user."""


@dataclass
class Report:
    shop_id: str
    shop_name: str
    locale: str
    timezone: str
    period: str                       # 'day' or 'week'
    start: date                       # local date (a Monday for a week)
    end: date                         # last local date of the period (included)
    as_of: datetime                   # T, UTC
    visits_planned: int = 0
    # reach per channel: planned by channel; calls an agent recorded (attempted) and reached; messages sent
    calls_planned: int = 0
    sms_planned: int = 0
    email_planned: int = 0
    no_channel_planned: int = 0
    calls_attempted: int = 0
    reached: int = 0
    sms_sent: int = 0
    email_sent: int = 0
    issues: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    gifts: int = 0
    compensations: int = 0
    compensation_types: dict[str, int] = field(default_factory=dict)     # type -> orders, most first
    suggestion_count: int = 0
    suggestions: list[dict] = field(default_factory=list)                # order_id, recorded_at, text
    # the reminders' effect: every reminded / held-out order, those whose outcome is known at T (the rates'
    # denominators), those still open (not counted yet), and reminders planned but not made
    reminded: int = 0
    reminded_known: int = 0
    reminded_open: int = 0
    reminded_paid: int = 0
    recovered_amount: Decimal = Decimal("0.00")
    reminders_not_made: int = 0
    held_out: int = 0
    held_out_known: int = 0
    held_out_open: int = 0
    held_out_paid: int = 0
    # the lift (sql/report/effect.sql): the shop's row (segment and channel 'all') first, then one per segment and
    # channel; the template experiments' variants (sql/report/variants.sql); the too-small rule's minimum
    effect: list[dict] = field(default_factory=list)
    variants: list[dict] = field(default_factory=list)
    min_known: int = 30
    # what the receipts said: channel -> {sent, delivered, undelivered, no_receipt}; opt-out replies received
    delivery: dict[str, dict[str, int]] = field(default_factory=dict)
    opt_outs: int = 0
    seconds: dict[str, float] = field(default_factory=dict)              # gather, chart, render

    def delivery_rate(self, channel: str) -> float | None:
        """Delivered / sent on a channel (messages without a final receipt count as not delivered yet)."""
        d = self.delivery.get(channel) or {}
        return _rate(d.get("delivered", 0), d.get("sent", 0))

    @property
    def message_id(self) -> str:
        return f"{PURPOSE}:{self.shop_id}:{self.period}:{self.start.isoformat()}"

    @property
    def file_name(self) -> str:
        return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', self.shop_id)}-{self.period}-{self.start.isoformat()}.html"

    @property
    def reach_rate(self) -> float | None:
        """Calls reached / calls an agent made (recorded an outcome for), not / every visit planned: SMS and
        email follow-ups cannot reach in the call sense and would dilute it."""
        return _rate(self.reached, self.calls_attempted)

    @property
    def issue_rates(self) -> dict[str, float | None]:
        """Issues / reached visits per category; None when nobody was reached."""
        return {c: _rate(n, self.reached) for c, n in self.issues.items()}

    @property
    def reminded_paid_rate(self) -> float | None:
        """Paid before close / reminded orders whose outcome is known at T (open orders are not counted yet)."""
        return _rate(self.reminded_paid, self.reminded_known)

    @property
    def held_out_paid_rate(self) -> float | None:
        return _rate(self.held_out_paid, self.held_out_known)

    @property
    def paid_rate_difference(self) -> float | None:
        a, b = self.reminded_paid_rate, self.held_out_paid_rate
        return None if a is None or b is None else a - b


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


# --------------------------------------------------------------------------------------------------
# the request: shop, period, date, T


def parse_time(text: str | None) -> datetime:
    from transforms.plan import PlanError, parse_as_of

    try:
        return parse_as_of(text)
    except PlanError as e:
        raise ReportError(f"as_of: {e}") from None


def period_bounds(period: str, day: str | date | None, as_of: datetime, tz: str) -> tuple[date, date]:
    """The period's first and last local date. `day` is any local date inside it; None: the most recent
    complete period at T in the shop's zone (yesterday, or last week Monday to Sunday)."""
    if period not in PERIODS:
        raise ReportError(f"period {period!r} must be day or week")
    if day is None:
        today = as_of.astimezone(ZoneInfo(tz)).date()
        d = today - timedelta(days=1 if period == "day" else 7)
    elif isinstance(day, date):
        d = day
    else:
        try:
            d = date.fromisoformat(day.strip())
        except ValueError:
            raise ReportError(f"date {day!r} is not a date YYYY-MM-DD (e.g. 2026-11-24)") from None
    if period == "day":
        return d, d
    start = d - timedelta(days=d.weekday())
    return start, start + timedelta(days=6)


def select_shops(settings, shop: str | None = None, tz: str | None = None) -> list:
    """The shops a run reports on: one by id, or every configured one (only those in zone `tz` if given)."""
    if shop is not None:
        try:
            return [settings.shop(shop)]
        except KeyError:
            known = ", ".join(s.shop_id for s in settings.shops)
            raise ReportError(f"shop {shop!r} is not configured (configured: {known})") from None
    return [s for s in settings.shops if tz is None or s.timezone == tz]


def require_team_email(shop, source: str = "the configuration") -> str:
    if not shop.team_email.strip():
        raise ReportError(f"{source}: shop {shop.shop_id!r}: team_email is empty: set it to send its feedback summary")
    return shop.team_email.strip()


def output_path(out: str | Path | None, db: str | Path, report: "Report", *, several: bool = False) -> Path:
    """Where a report goes: `out` as the file (a name ending in .html, for one shop), or into the folder
    `out`; by default <the database's folder>/reports/<shop>-<period>-<start>.html."""
    if out is None:
        return Path(db).parent / "reports" / report.file_name
    out = Path(out)
    if out.suffix.lower() in (".html", ".htm") and not out.is_dir():
        if several:
            raise ReportError(f"out {out}: a file holds one shop's report; give a folder for several shops")
        return out
    if out.exists() and not out.is_dir():
        raise ReportError(f"out {out}: exists and is not a folder (name a file ending in .html, or a folder)")
    return out / report.file_name


def check_request(settings, *, shop: str | None, period: str, day: str | None, as_of: str | None,
                  send: bool = False, out: str | None = None, tz: str | None = None,
                  source: str = "the configuration") -> list:
    """Every check that needs no database, so that the command line answers a mistake at once; returns
    the shops to report on."""
    t = parse_time(as_of)
    shops = select_shops(settings, shop, tz)
    for s in shops:
        period_bounds(period, day, t, s.timezone)
    if send and shop is not None:
        require_team_email(shops[0], source)
    if out is not None:
        probe = Report(shops[0].shop_id if shops else "x", "", "en", "UTC", "day", date.min, date.min, t)
        output_path(out, ".", probe, several=len(shops) > 1)
    return shops


# --------------------------------------------------------------------------------------------------
# gather

_LATEST_REACHED = """
-- each order's latest reached outcome recorded in the period (<= T): the rows feedback_summary counts
with outcomes as (
    select
        coalesce(outcomes.shop_id, orders.shop_id) as shop_id, outcomes.order_id, outcomes.recorded_at,
        outcomes.suggestion, outcomes.compensation,
        crm_shop_local_date(coalesce(outcomes.shop_id, orders.shop_id), outcomes.recorded_at) as day
    from ops.visit_outcomes as outcomes
    left join staging.orders as orders using (order_id)
    where outcomes.recorded_at <= $as_of::TIMESTAMPTZ and outcomes.reached
)
select
    order_id, max(recorded_at) as recorded_at,
    nullif(trim(arg_max(suggestion, recorded_at)), '') as suggestion,
    coalesce(arg_max(compensation, recorded_at), 'none') as compensation
from outcomes
where shop_id = $shop and day between $start and $end
group by order_id
order by recorded_at, order_id
"""


def gather(db: str | Path, settings, shop_id: str, period: str = "week", day: str | date | None = None,
           as_of: datetime | str | None = None) -> Report:
    """One shop's report for the period containing `day` (default: the last complete one), as of T."""
    started = time.perf_counter()
    [shop] = select_shops(settings, shop_id)
    t = as_of if isinstance(as_of, datetime) else parse_time(as_of)
    t = t.astimezone(timezone.utc)
    start, end = period_bounds(period, day, t, shop.timezone)
    report = Report(shop.shop_id, shop.display_name, shop.locale, shop.timezone, period, start, end, t)
    con = _reader(db, settings)
    with closing(con):
        try:
            _read(con, report)
        except duckdb.CatalogException as e:
            raise ReportError(f"{db}: not a crm database ({str(e).splitlines()[0]})") from None
    report.seconds["gather"] = time.perf_counter() - started
    return report


def _reader(db: str | Path, settings) -> duckdb.DuckDBPyConnection:
    """The storage, read-only, with the shops' macros (crm.db.reader); a missing or unreadable file is one line."""
    try:
        return reader(db, settings)
    except FileNotFoundError as e:
        raise ReportError(str(e)) from None
    except duckdb.Error as e:
        raise ReportError(f"{db}: cannot be opened as a database: {str(e).splitlines()[0]}") from None


# feedback_summary's columns the report shows (Report fields of the same name)
_SUMMARY = ("visits_planned", "calls_planned", "sms_planned", "email_planned", "no_channel_planned",
            "calls_attempted", "reached", "sms_sent", "email_sent")
# Report field -> reminder_effect_segments column, summed over the period's days (its rows with segment and
# channel 'all': the day's totals)
_EFFECT = {"reminded": "orders_reminded", "reminded_known": "orders_reminded_known",
           "reminded_open": "orders_reminded_open", "reminded_paid": "reminded_paid_before_close",
           "reminders_not_made": "reminders_not_made", "held_out": "orders_held_out",
           "held_out_known": "orders_held_out_known", "held_out_open": "orders_held_out_open",
           "held_out_paid": "held_out_paid_before_close"}


def _read(con: duckdb.DuckDBPyConnection, r: Report) -> None:
    where = {"as_of": r.as_of, "shop": r.shop_id, "start": r.start, "end": r.end}
    row = con.execute(
        f"SELECT {', '.join(_SUMMARY)}, {', '.join(f'{c}_issues' for c in CATEGORIES)}, "
        f"gifts, compensations, suggestions FROM ({sql_text('marts/feedback_summary.sql')}) AS m "
        "WHERE shop_id = $shop AND period = $period AND period_start = $start",
        {"as_of": r.as_of, "shop": r.shop_id, "period": r.period, "start": r.start},
    ).fetchone()
    if row is not None:
        for name, value in zip(_SUMMARY, row):
            setattr(r, name, value)
        rest = row[len(_SUMMARY):]
        r.issues = dict(zip(CATEGORIES, rest[:4]))
        r.gifts, r.compensations, r.suggestion_count = rest[4:]
    kinds: dict[str, int] = {}
    for order_id, recorded_at, suggestion, compensation in con.execute(_LATEST_REACHED, where).fetchall():
        if suggestion:
            r.suggestions.append({"order_id": order_id, "recorded_at": recorded_at, "text": suggestion})
        if compensation != "none":
            kinds[compensation] = kinds.get(compensation, 0) + 1
    r.compensation_types = dict(sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))
    # the reminders' effect: the two models at T, this shop's days of the period, summed (the shop's rows: segment
    # and channel 'all') and with the lift per segment and channel (sql/report/effect.sql, variants.sql)
    period = {"shop": r.shop_id, "start": r.start, "end": r.end}
    effect_rows(con, {"as_of": r.as_of, **period}, marts=False)
    sums = ", ".join(f"coalesce(sum({column}), 0)::BIGINT" for column in _EFFECT.values())
    effect = con.execute(
        f"SELECT {sums}, coalesce(sum(recovered_amount), 0)::DECIMAL(18, 2) FROM effect_period_rows "
        "WHERE shop_id = $shop AND day BETWEEN $start AND $end AND segment = 'all' AND channel = 'all'", period,
    ).fetchone()
    for name, value in zip(_EFFECT, effect):
        setattr(r, name, value)
    r.recovered_amount = effect[-1]
    r.effect, r.variants, r.min_known = effect_tables(con, period)
    cursor = con.execute(sql_text("report/delivery.sql"), where)
    cols = [d[0] for d in cursor.description]
    r.delivery = {row[0]: dict(zip(cols[1:], row[1:])) for row in cursor.fetchall()}
    r.opt_outs = con.execute(sql_text("report/opt_outs.sql"), where).fetchone()[0]



def effect_rows(con: duckdb.DuckDBPyConnection, params: dict, *, marts: bool) -> None:
    """The temp tables sql/report/effect.sql and variants.sql read: the rows of marts.reminder_effect_segments and
    marts.reminder_variants (`marts`: as the last plan wrote them), or of their models at T (params['as_of']),
    for the shop and days in params (None: all)."""
    where = ("WHERE shop_id = coalesce($shop, shop_id) AND day >= coalesce($start::DATE, day) "
             "AND day <= coalesce($end::DATE, day)")
    for table, name in (("effect_period_rows", "reminder_effect_segments"),
                        ("variant_period_rows", "reminder_variants")):
        source = f"marts.{name}" if marts else f"({sql_text(f'marts/{name}.sql')})"
        sql = f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT * FROM {source} AS m {where}"
        con.execute(sql, {k: params.get(k) for k in ("as_of", "shop", "start", "end") if f"${k}" in sql})


def effect_tables(con: duckdb.DuckDBPyConnection, params: dict) -> tuple[list[dict], list[dict], int]:
    """The lift per shop, segment and channel and the variants compared, over the rows effect_rows gathered for the
    shop and days in params (None: all); and the too-small rule's minimum of known outcomes per group."""
    out = []
    for name in ("report/effect.sql", "report/variants.sql"):
        cursor = con.execute(sql_text(name), {k: params.get(k) for k in ("shop", "start", "end")})
        cols = [d[0] for d in cursor.description]
        out.append([dict(zip(cols, row)) for row in cursor.fetchall()])
    return out[0], out[1], con.execute("SELECT crm_effect_min_known()").fetchone()[0]


# --------------------------------------------------------------------------------------------------
# render


_FONTS = "-apple-system, 'Segoe UI', 'PingFang SC', 'Microsoft YaHei', 'Noto Sans CJK SC', sans-serif"


@cache
def labels(locale: str) -> dict:
    """The report's words in a locale (templates/report/labels.toml)."""
    table = tomllib.loads((asset_dir("templates") / "report" / "labels.toml").read_text(encoding="utf-8"))
    if locale not in table:
        raise ReportError(f"templates/report/labels.toml has no [{locale}] table")
    return table[locale]


def chart_svg(report: Report) -> str:
    """The issue rate by category as an Altair bar chart, rendered to SVG offline (bars at zero and a note
    when nobody was reached)."""
    import altair as alt
    import vl_convert

    t = labels(report.locale)
    rates = report.issue_rates
    values = [{"category": t["categories"][c], "rate": rates[c] or 0.0, "issues": report.issues[c]} for c in CATEGORIES]
    top = max(v["rate"] for v in values)
    domain = [0, 1.0 if top > 0.5 else max(0.1, round(top + 0.05, 2))]
    title = alt.TitleParams(t["chart_title"], subtitle=[t["no_reached"]] if not report.reached else [],
                            subtitleColor="#b45309", anchor="start", fontSize=14)
    chart = (
        alt.Chart(alt.Data(values=values), title=title, width=360, height=220)
        .mark_bar(color="#2563eb", size=48)
        .encode(
            x=alt.X("category:N", sort=None, title=None, axis=alt.Axis(labelAngle=0, labelFontSize=13)),
            y=alt.Y("rate:Q", title=t["issue_rate"], scale=alt.Scale(domain=domain),
                    axis=alt.Axis(format="%", tickCount=5)),
        )
    )
    text = chart.mark_text(dy=-8, fontSize=12, color="#111827").encode(text=alt.Text("rate:Q", format=".0%"))
    return vl_convert.vegalite_to_svg(alt.layer(chart, text).configure(font=_FONTS).configure_view(stroke=None).to_dict())


@cache
def _environment():
    from jinja2 import FileSystemLoader, StrictUndefined, select_autoescape
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(loader=FileSystemLoader(asset_dir("templates")), undefined=StrictUndefined,
                               autoescape=select_autoescape(enabled_extensions=("html.j2", "html")),
                               trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v: "–" if v is None else f"{v * 100:.1f}%"
    env.filters["points"] = lambda v: "–" if v is None else f"{v * 100:+.1f}"
    env.filters["amount"] = lambda v: f"{v:,.2f}"
    return env


BAR_WIDTH, BAR_PAD = 220, 8          # an error bar's SVG: its width and the room left at each end (px)


def _bar(low: float, mid: float, high: float, lo: float, hi: float) -> dict:
    """An error bar's x positions on [lo, hi] drawn across BAR_WIDTH px: the interval, the estimate, zero."""
    x = lambda v: round(BAR_PAD + (min(max(v, lo), hi) - lo) / (hi - lo) * (BAR_WIDTH - 2 * BAR_PAD), 1)  # noqa: E731
    return {"low": x(low), "mid": x(mid), "high": x(high), "zero": x(0.0), "width": BAR_WIDTH}


def effect_context(report: Report) -> dict:
    """The effect section: the shop's lift, one row per segment and channel, and the experiments' variants, each
    with its error bar (the lifts on one scale, symmetric about zero; the variants' paid rates on 0 to 100 %)."""
    t = labels(report.locale)
    rows = report.effect or [{"segment": "all", "channel": "all", "effect_status": "too_small",
                              "orders_assigned_known": 0, "orders_held_out_known": 0, "assigned_paid_rate": None,
                              "held_out_paid_rate": None, "lift": None, "lift_low": None, "lift_high": None,
                              "implied_recovered_amount": None, "implied_recovered_low": None,
                              "implied_recovered_high": None, "orders_assigned_open": 0, "orders_held_out_open": 0}]
    ok = [r for r in rows if r["effect_status"] == "ok"]
    span = max([0.05] + [abs(r[k]) for r in ok for k in ("lift_low", "lift_high")])
    span = min(1.0, -(-span * 20 // 1) / 20)                 # up to the next 5 points
    items = []
    for r in rows:
        segment = t["segments"].get(r["segment"], r["segment"])
        label = segment if r["channel"] == "all" else f"{segment} · {t['channels'].get(r['channel'], r['channel'])}"
        key = "all" if r["segment"] == "all" else f"{r['segment']}_{r['channel']}"
        bar = _bar(r["lift_low"], r["lift"], r["lift_high"], -span, span) if r["effect_status"] == "ok" else None
        items.append({**r, "label": label, "key": key, "bar": bar})
    experiments: dict[str, list] = {}
    for v in report.variants:
        bar = (_bar(v["paid_rate_low"], v["paid_rate"], v["paid_rate_high"], 0.0, 1.0)
               if v["paid_rate"] is not None else None)
        experiments.setdefault(v["segment"], []).append({**v, "bar": bar, "key": f"{v['segment']}_{v['variant']}"})
    return {
        "shop": items[0] if items[0]["segment"] == "all" else None,
        "rows": [i for i in items if i["segment"] != "all"],
        "span": span,
        "experiments": [{"segment": seg, "label": t["segments"].get(seg, seg), "variants": vs}
                        for seg, vs in experiments.items()],
        "not_enough": t["not_enough"].format(min=report.min_known),
    }


def period_label(report: Report) -> str:
    t = labels(report.locale)
    iso = report.start.isocalendar()
    return t[f"period_{report.period}"].format(start=report.start.isoformat(), end=report.end.isoformat(),
                                               year=iso.year, week=iso.week)


def render(report: Report, svg: str | None = None) -> str:
    """The report as one self-contained HTML page (inline CSS, inline SVG, no external resource)."""
    from markupsafe import Markup

    started = time.perf_counter()
    if svg is None:
        svg = chart_svg(report)
        report.seconds["chart"] = time.perf_counter() - started
    rendering = time.perf_counter()
    tz = ZoneInfo(report.timezone)
    t = labels(report.locale)
    context = {
        "t": t,
        "lang": report.locale,
        "r": report,
        "period_label": period_label(report),
        "as_of_local": f"{report.as_of.astimezone(tz):%Y-%m-%d %H:%M} ({report.timezone})",
        "categories": [{"key": c, "label": t["categories"][c], "issues": report.issues[c],
                        "rate": report.issue_rates[c]} for c in CATEGORIES],
        "suggestions": [{"order_id": s["order_id"], "text": s["text"],
                         "recorded": f"{s['recorded_at'].astimezone(tz):%Y-%m-%d %H:%M}"} for s in report.suggestions],
        "compensation_types": [{"key": k, "label": t["compensation_types"].get(k, k.replace("_", " ")), "orders": n}
                               for k, n in report.compensation_types.items()],
        "chart": Markup(svg),
        # the denominators in words: reach is of the calls made, effect is of the orders whose outcome is known
        "calls_sentence": t["calls_sentence"].format(reached=report.reached, attempted=report.calls_attempted,
                                                     planned=report.calls_planned),
        "channels": [
            {"key": "call", "label": t["channels"]["call"], "planned": report.calls_planned,
             "made": report.calls_attempted, "reached": report.reached},
            {"key": "sms", "label": t["channels"]["sms"], "planned": report.sms_planned, "made": report.sms_sent},
            {"key": "email", "label": t["channels"]["email"], "planned": report.email_planned,
             "made": report.email_sent},
            {"key": "none", "label": t["channels"]["none"], "planned": report.no_channel_planned},
        ],
        "effect_counted": t["effect_counted"].format(as_of=f"{report.as_of.astimezone(tz):%Y-%m-%d %H:%M}"),
        "effect_open": t["effect_open"].format(reminded=report.reminded_open, held_out=report.held_out_open),
        "effect_not_made": t["effect_not_made"].format(not_made=report.reminders_not_made),
        "lift": effect_context(report),
        # what the receipts said, per channel, and the opt-outs customers replied
        "delivery": [{"key": c, "label": t["channels"].get(c, c), **d, "rate": report.delivery_rate(c)}
                     for c, d in report.delivery.items()],
    }
    html = _environment().get_template(TEMPLATE).render(**context)
    report.seconds["render"] = time.perf_counter() - rendering
    return html


def write(html: str, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------------------------------
# send


@dataclass
class Sent:
    message_id: str
    status: str                  # 'sent', 'failed' or 'already_sent'
    recipient: str               # masked
    attempts: int = 0
    sent_at: datetime | None = None
    error: str | None = None


def send_report(db: str | Path, settings, report: Report, html: str, *, source: str = "the configuration",
                wait_seconds: float = 900) -> Sent:
    """Write the report to ops.messages (queued), send it over SMTP, record sent or failed. A report whose
    message_id was sent already is not sent again; one left queued or failed by an earlier try is sent
    with the new body. Runs under the dispatch lock, so a dispatch (which sends every queued email) never
    sends it beside us; the database is held only to write and to record, not while sending."""
    from crm.channels import SmtpSender
    from crm.journal import IN_DOUBT, SendJournal

    shop = settings.shop(report.shop_id)
    recipient = require_team_email(shop, source)
    masked = mask_email(recipient)
    msg = {"message_id": report.message_id, "purpose": PURPOSE, "channel": "email", "shop_id": report.shop_id,
           "recipient": recipient, "body": html}
    journal = SendJournal(db)
    with exclusive(f"{db}.dispatch.lock", wait_seconds=wait_seconds,
                   on_wait=lambda: log.warning("a dispatch is running on %s: waiting for it to finish", db)):
        with closing(connect_storage(db, settings)) as con:
            messages = ops_table(con, "messages")         # on the lake, PostgreSQL's
            row = con.execute("SELECT status, sent_at, attempts FROM ops.messages WHERE message_id = ?",
                              [msg["message_id"]]).fetchone()
            if row is not None and row[0] == "sent":
                log.info("%s was sent to %s at %s: not sent again", msg["message_id"], masked, row[1])
                return Sent(msg["message_id"], "already_sent", masked, row[2], row[1])
            # at most once: a try that stopped while handing this report to SMTP leaves it in doubt
            mark = journal.last_marks().get(msg["message_id"])
            if row is not None and row[0] == "queued" and mark in ("?", "+"):
                status, error = ("sent", None) if mark == "+" else ("failed", IN_DOUBT)
                con.execute(f"UPDATE {messages} SET status = ?, last_error = ? WHERE message_id = ?",
                            [status, error, msg["message_id"]])
                log.warning("%s: an earlier try stopped mid-send; recorded as %s, not sent again",
                            msg["message_id"], status)
                return Sent(msg["message_id"], "already_sent" if mark == "+" else "failed", masked, row[2], row[1],
                            error)
            with transaction(con):
                if row is None:
                    con.execute(
                        f"INSERT INTO {messages} (message_id, purpose, shop_id, channel, recipient, body, status, "
                        "attempts, created_at, template, as_of) VALUES (?, ?, ?, 'email', ?, ?, 'queued', 0, ?, ?, ?)",
                        [msg["message_id"], PURPOSE, report.shop_id, recipient, html, report.as_of, TEMPLATE,
                         report.as_of])
                else:
                    con.execute(f"UPDATE {messages} SET status = 'queued', recipient = ?, body = ?, last_error = NULL "
                                "WHERE message_id = ?", [recipient, html, msg["message_id"]])
        smtp, gw = settings.smtp, settings.gateway
        sender = SmtpSender(smtp.host, smtp.port, smtp.sender, smtp.username, smtp.password, smtp.starttls,
                            timeout=gw.timeout_seconds)
        try:
            outcome = sender.send(msg, max_attempts=gw.max_attempts, base_delay=gw.backoff_seconds, journal=journal)
        finally:
            sender.close()
            journal.close()           # its lines stay until the next dispatch settles the journal
        # SMTP has accepted (or refused) it: wait as long as it takes to record that, or a retry would send
        # the report a second time
        with closing(connect_storage(db, settings, wait_seconds=600)) as con:
            con.execute(f"UPDATE {ops_table(con, 'messages')} SET status = ?, attempts = attempts + ?, sent_at = ?, "
                        "last_error = ? "
                        "WHERE message_id = ? AND status = 'queued'",
                        [outcome.status, outcome.attempts, outcome.sent_at, outcome.error, msg["message_id"]])
    log.info("%s to %s: %s after %d attempt(s)", msg["message_id"], masked, outcome.status, outcome.attempts)
    return Sent(msg["message_id"], outcome.status, masked, outcome.attempts, outcome.sent_at, outcome.error)



# --------------------------------------------------------------------------------------------------
# `crm effect`: the same tables from the marts, in the terminal


def parse_day(text: str | None, option: str) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise ReportError(f"{option} {text!r} is not a date YYYY-MM-DD (e.g. 2026-11-24)") from None


def effect_summary(db: str | Path, settings, *, shop: str | None = None, start: str | None = None,
                   end: str | None = None) -> dict:
    """The lift per shop, segment and channel and the variants compared over the local days [start, end] (None:
    every day), from marts.reminder_effect_segments and marts.reminder_variants as the newest plan wrote them
    (read-only, short): {'as_of', 'shops', 'effect', 'variants', 'min_known'}."""
    shops = select_shops(settings, shop)
    first, last = parse_day(start, "--from"), parse_day(end, "--to")
    if first and last and last < first:
        raise ReportError(f"--to {last} is before --from {first}")
    con = _reader(db, settings)
    with closing(con):
        try:
            # the T the §8 marts are as of (the newest plan's), also when they hold no row yet
            as_of = con.execute("SELECT coalesce((SELECT max(as_of) FROM ops.report_state), "
                                "(SELECT max(as_of) FROM marts.reminder_effect_segments))").fetchone()[0]
            effect_rows(con, {"shop": shop, "start": first, "end": last}, marts=True)
            effect, variants, min_known = effect_tables(con, {"shop": shop, "start": first, "end": last})
        except (duckdb.CatalogException, duckdb.BinderException) as e:
            raise ReportError(f"{db}: the effect marts are not there yet or from an older version "
                              f"({str(e).splitlines()[0]}): run `crm plan` first") from None
    known = {s.shop_id for s in shops}
    return {"as_of": as_of, "shops": [s.shop_id for s in shops], "start": first, "end": last,
            "effect": [r for r in effect if r["shop_id"] in known],
            "variants": [v for v in variants if v["shop_id"] in known], "min_known": min_known}
