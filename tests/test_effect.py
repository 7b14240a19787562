"""The payment reminders' lift with 95% intervals, template experiments, and where people see them (issue 17,
docs/rules.md §4, §8): the interval macros against published worked examples, the lift's groups on given rows
(known outcomes only, the too-small rule, the held out counted from their send time, planned reminders not
made), the deterministic variant split through re-plans, a backfill and a real dispatch, the configuration's
one-line errors, the report's effect section and `crm effect`."""

from __future__ import annotations

import hashlib
import math
from datetime import date, timedelta, timezone
from decimal import Decimal
from statistics import NormalDist

import duckdb
import pytest

from conftest import crm
from crm.config import ConfigError, load_settings, parse_settings
from crm.db import connect, sql_text, sync_shops
from dispatching import T, shop_config, start_smtp
from gateway import Gateway
from planning import MIN, configure, local, message, stage
from transforms.dispatch import dispatch
from transforms.plan import backfill_times, plan
from transforms.report import gather, labels, render

Z = NormalDist().inv_cdf(0.975)
DAY = date(2026, 11, 24)
CREATED = local("2026-11-24 10:00")
LATER = local("2026-11-26 09:00")            # every order of DAY is past the platform's auto-close (1440 min)


# --------------------------------------------------------------------------------------------------
# the intervals: published worked examples, and an independent plain-Python reading of the formulas


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson's score interval (Newcombe 1998a, method 3), from its formula."""
    p = k / n
    centre, half = p + Z * Z / (2 * n), Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return max(0.0, (centre - half) / (1 + Z * Z / n)), min(1.0, (centre + half) / (1 + Z * Z / n))


def newcombe(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float, float]:
    """k1/n1 - k2/n2 with Newcombe's hybrid score interval (Newcombe 1998b, method 10)."""
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = wilson(k1, n1), wilson(k2, n2)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


@pytest.fixture
def macros():
    con = duckdb.connect()
    con.execute(sql_text("macros.sql"))
    yield con
    con.close()


# Newcombe RG (1998), "Two-sided confidence intervals for the single proportion: comparison of seven methods",
# Stat Med 17:857-872, method 3 (Wilson); and "Interval estimation for the difference between independent
# proportions: comparison of eleven methods", Stat Med 17:873-890, method 10 — the values as the R package
# propint (m-Py/propint, tests/testthat/test_Single_Proportion_CI.R and test_Two_Independent_Props_CI.R) checks
# them against the papers, to 4 decimals
@pytest.mark.parametrize("k,n,low,high", [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605)])
def test_wilson_interval_matches_newcombes_worked_examples(macros, k, n, low, high):
    got = macros.execute("SELECT crm_wilson_low(?, ?), crm_wilson_high(?, ?)", [k, n, k, n]).fetchone()
    assert got == pytest.approx((low, high), abs=5e-5)


@pytest.mark.parametrize("k1,n1,k2,n2,diff,low,high", [(56, 70, 48, 80, 0.2, 0.0524, 0.3339),
                                                        (9, 10, 3, 10, 0.6, 0.1705, 0.8090)])
def test_newcombe_interval_matches_newcombes_worked_examples(macros, k1, n1, k2, n2, diff, low, high):
    got = macros.execute("SELECT ?::DOUBLE / ? - ?::DOUBLE / ?, crm_newcombe_low(?, ?, ?, ?), "
                         "crm_newcombe_high(?, ?, ?, ?)", [k1, n1, k2, n2] * 3).fetchone()
    assert got == pytest.approx((diff, low, high), abs=5e-5)


def test_the_macros_follow_the_formulas_at_the_edges(macros):
    """Every k of n up to 40 (none paid, all paid included), and no interval without an order."""
    cases = [(k, n) for n in (1, 2, 5, 29, 30, 40) for k in range(n + 1)]
    for k, n in cases:
        got = macros.execute("SELECT crm_wilson_low(?, ?), crm_wilson_high(?, ?)", [k, n, k, n]).fetchone()
        assert got == pytest.approx(wilson(k, n), abs=1e-12), (k, n)
        assert 0.0 <= got[0] <= k / n <= got[1] <= 1.0
    for (k1, n1), (k2, n2) in zip(cases, reversed(cases)):
        got = macros.execute("SELECT crm_newcombe_low(?, ?, ?, ?), crm_newcombe_high(?, ?, ?, ?)",
                             [k1, n1, k2, n2] * 2).fetchone()
        assert got == pytest.approx(newcombe(k1, n1, k2, n2)[1:], abs=1e-12), (k1, n1, k2, n2)
    assert macros.execute("SELECT crm_wilson_low(0, 0), crm_newcombe_high(1, 2, 0, 0)").fetchone() == (None, None)
    assert macros.execute("SELECT crm_effect_status(30, 30), crm_effect_status(29, 500), crm_effect_status(500, 0)"
                          ).fetchone() == ("ok", "too_small", "too_small")


# --------------------------------------------------------------------------------------------------
# the lift on given rows


def holdout(con, order_id: str, as_of, *, send_at=None, segment="new", channel="sms") -> None:
    con.execute("INSERT INTO marts.reminder_decisions (as_of, shop_id, order_id, customer_id, segment, decision, "
                "reason, channel, send_at) VALUES (?, 's1', ?, 'c1', ?, 'skip', 'holdout', ?, ?)",
                [as_of, order_id, segment, channel, as_of if send_at is None else send_at])


def orders(con, prefix: str, paid: int, closed: int = 0, unpaid: int = 0, *, amount="100.00") -> list[str]:
    """Orders placed at CREATED: `paid` paid an hour later, `closed` closed by the platform unpaid after 3 hours,
    `unpaid` left unpaid (open until the platform's auto-close)."""
    ids = []
    for i in range(paid + closed + unpaid):
        order_id = f"{prefix}{i:03d}"
        row = {"order_id": order_id, "created_at": CREATED, "total_amount": Decimal(amount)}
        if i < paid:
            row["paid_at"] = CREATED + 60 * MIN
        elif i < paid + closed:
            row["closed_at"] = CREATED + 180 * MIN
        stage(con, "orders", row)
        ids.append(order_id)
    return ids


def remind(con, ids: list[str], **kw) -> None:
    for order_id in ids:
        message(con, f"payment_reminder:{order_id}", "payment_reminder", order_id, CREATED + 15 * MIN, **kw)
        con.execute("UPDATE ops.messages SET customer_segment = 'new' WHERE message_id = ?", [f"payment_reminder:{order_id}"])


def effect(con, segment="all", channel="all") -> dict:
    cur = con.execute("SELECT * FROM marts.reminder_effect_segments WHERE day = ? AND segment = ? AND channel = ?",
                      [DAY, segment, channel])
    cols = [d[0] for d in cur.description]
    [row] = cur.fetchall()
    return dict(zip(cols, row))


@pytest.fixture
def shop(con):
    configure(con, reminders={"holdout_rate": 0.0, "channels": {"new": "sms"}})
    stage(con, "customers", {"customer_id": "c1"})
    return con


def test_an_order_still_open_is_not_counted_as_unpaid(shop):
    remind(shop, orders(shop, "r", paid=30, closed=6, unpaid=4))
    for order_id in orders(shop, "h", paid=12, closed=20, unpaid=3):
        holdout(shop, order_id, CREATED + 20 * MIN)
    at = CREATED + 600 * MIN                  # before the auto-close: the unpaid orders are still open
    plan(shop, at)
    e = effect(shop)
    assert (e["orders_assigned_known"], e["orders_assigned_open"], e["assigned_paid_before_close"]) == (36, 4, 30)
    assert (e["orders_held_out_known"], e["orders_held_out_open"], e["held_out_paid_before_close"]) == (32, 3, 12)
    assert e["assigned_paid_rate"] == 30 / 36 and e["held_out_paid_rate"] == 12 / 32
    assert (e["lift"], e["lift_low"], e["lift_high"]) == pytest.approx(newcombe(30, 36, 12, 32), abs=1e-12)
    assert e["effect_status"] == "ok"
    # past the auto-close the open orders are known, and unpaid
    plan(shop, LATER)
    e = effect(shop)
    assert (e["orders_assigned_known"], e["orders_assigned_open"], e["orders_held_out_known"]) == (40, 0, 35)
    assert (e["lift"], e["lift_low"], e["lift_high"]) == pytest.approx(newcombe(30, 40, 12, 35), abs=1e-12)
    # the revenue the lift implies: lift x the amount of the orders a reminder was planned for, interval alike
    assert e["assigned_known_amount"] == Decimal("4000.00")
    for got, lift in zip(("implied_recovered_amount", "implied_recovered_low", "implied_recovered_high"),
                         newcombe(30, 40, 12, 35)):
        assert e[got] == Decimal(str(round(lift * 4000, 2))).quantize(Decimal("0.01"))
    # the shop's day and its segment and channel (both: every order is a new customer's SMS)
    assert {k: v for k, v in effect(shop, "new", "sms").items() if k not in ("segment", "channel")} == \
        {k: v for k, v in e.items() if k not in ("segment", "channel")}


@pytest.mark.parametrize("held_out_known", [29, 30])
def test_too_small_a_group_gives_no_lift(shop, held_out_known):
    remind(shop, orders(shop, "r", paid=40, closed=10))
    for order_id in orders(shop, "h", paid=10, closed=held_out_known - 10, unpaid=5):
        holdout(shop, order_id, CREATED + 20 * MIN)
    plan(shop, CREATED + 600 * MIN)           # the 5 unpaid held-out orders are open: they do not count
    e = effect(shop)
    assert e["orders_held_out_known"] == held_out_known
    if held_out_known < 30:
        assert e["effect_status"] == "too_small"
        assert [e[k] for k in ("lift", "lift_low", "lift_high", "implied_recovered_amount", "implied_recovered_low",
                               "implied_recovered_high")] == [None] * 6
        assert e["held_out_paid_rate"] == 10 / 29, "the rates are still there"
    else:
        assert e["effect_status"] == "ok"
        assert (e["lift"], e["lift_low"], e["lift_high"]) == pytest.approx(newcombe(40, 50, 10, 30), abs=1e-12)


def test_the_held_out_count_from_their_send_time_and_planned_reminders_count_made_or_not(shop):
    # paid before its send time: an order not held out would not have been reminded either
    stage(shop, "orders", {"order_id": "early", "created_at": CREATED, "paid_at": CREATED + 20 * MIN},
          {"order_id": "due", "created_at": CREATED, "paid_at": CREATED + 90 * MIN},
          {"order_id": "next_day", "created_at": CREATED - 1000 * MIN},
          {"order_id": "h_then_call", "created_at": CREATED, "paid_at": CREATED + 60 * MIN},
          {"order_id": "call", "created_at": CREATED, "paid_at": CREATED + 50 * MIN})
    holdout(shop, "early", CREATED + 16 * MIN, send_at=CREATED + 60 * MIN)      # decided before its send time
    holdout(shop, "due", CREATED + 16 * MIN, send_at=CREATED + 60 * MIN)
    holdout(shop, "due", CREATED + 61 * MIN, send_at=CREATED + 60 * MIN)        # counted from here
    # placed the evening before, decided then before its send time (the next morning): counted on DAY
    holdout(shop, "next_day", CREATED - 980 * MIN, send_at=CREATED + 10 * MIN)
    holdout(shop, "next_day", CREATED + 20 * MIN, send_at=CREATED + 10 * MIN)
    # held out, then a call planned that nobody made: not a control any more; counted as planned, paid
    holdout(shop, "h_then_call", CREATED + 20 * MIN)
    remind(shop, ["h_then_call", "call"], channel="call", status="queued")
    plan(shop, LATER)
    e = effect(shop)
    assert (e["orders_held_out"], e["orders_held_out_known"], e["held_out_paid_before_close"]) == (2, 2, 1)
    assert (e["orders_reminded"], e["reminders_not_made"]) == (0, 2)
    assert (e["orders_assigned_known"], e["assigned_paid_before_close"]) == (2, 2)
    assert e["reminded_paid_rate"] is None and e["assigned_paid_rate"] == 1.0
    assert effect(shop, "new", "call")["reminders_not_made"] == 2
    assert shop.execute("SELECT count(*) FROM marts.reminder_effect_segments WHERE day <> ?", [DAY]).fetchone()[0] == 0


# --------------------------------------------------------------------------------------------------
# template experiments: configuration


def settings_with(experiments: dict, **reminders):
    return parse_settings({"shops": [{"shop_id": "s1", "reminders": reminders, "experiments": experiments}]},
                          "shops.toml")


@pytest.mark.parametrize("experiment,line", [
    ({"second": {"variants": ["second", "second.short"], "weights": [0.5, 0.4]}},
     "shops.toml: shop 's1': experiments.payment_reminder.second: weights must add up to 1 (got [0.5, 0.4], "
     "which add up to 0.9)"),
    ({"second": {"variants": ["second", "second.short"], "weights": [1.0]}},
     "shops.toml: shop 's1': experiments.payment_reminder.second: weights has 1 shares for 2 variants"),
    ({"repeat": {"variants": ["repeat", "repeat.short"], "weights": [1.0, 0.0]}},
     "shops.toml: shop 's1': experiments.payment_reminder.repeat: every weight must be above 0"),
    ({"second": {"variants": ["second", "../../etc/passwd"]}},
     "shops.toml: shop 's1': experiments.payment_reminder.second: variants[1]: '../../etc/passwd' is not a "
     "template name under payment_reminder/"),
    ({"second": {"variants": ["second"]}},
     "shops.toml: shop 's1': experiments.payment_reminder.second: an experiment needs at least two variants"),
    ({"second": {"variants": ["second", "second"]}},
     "shops.toml: shop 's1': experiments.payment_reminder.second: variants lists a template twice"),
    ({"second": {"weights": [1.0]}},
     "shops.toml: shop 's1': experiments.payment_reminder.second: weights without variants"),
    ({"second": {"variants": ["second", "second.b"], "weights": ["0.5", 0.5]}},
     "shops.toml: shop 's1': experiments.payment_reminder.second.weights[0]: must be a number, written without quotes"),
    ({"third": {"variants": ["a", "b"]}}, "shops.toml: shop 's1': experiments.payment_reminder.third: unknown key"),
    ({"new": {"variants": ["new", "new.short"]}},
     "shops.toml: shop 's1': experiments.payment_reminder.new: segment 'new' is reminded by call "
     "(reminders.channels.new)"),
])
def test_a_bad_experiment_is_one_line_naming_the_key(experiment, line):
    with pytest.raises(ConfigError) as info:
        settings_with({"payment_reminder": experiment})
    assert str(info.value).startswith(line), str(info.value)
    assert "\n" not in str(info.value)


def test_a_good_experiment_loads():
    s = settings_with({"payment_reminder": {"new": {"variants": ["new", "new.short"], "weights": [0.25, 0.75]},
                                            "repeat": {"variants": ["repeat", "repeat.gift", "repeat.cute"]}}},
                      channels={"new": "sms"})
    e = s.shops[0].experiments.payment_reminder
    assert (e.new.variants, e.new.weights, e.repeat.weights, e.second.variants) == (
        ["new", "new.short"], [0.25, 0.75], [], [])


# --------------------------------------------------------------------------------------------------
# template experiments: the split, through plans, a backfill and a dispatch

WEIGHTS = [0.4, 0.6]
N = 150


def hash01(x: str) -> float:
    return int(hashlib.md5(x.encode()).hexdigest()[:8], 16) / 2**32


def expected_variant(order_id: str) -> str:
    return "new" if hash01("variant:" + order_id) < WEIGHTS[0] else "new.gift"


@pytest.fixture
def experiment(tmp_path):
    gw = Gateway().start()
    smtp, box = start_smtp()
    config = shop_config(tmp_path / "shops.toml", gw.url, smtp.port)
    config.write_text(config.read_text().replace(
        "[shops.visits]", 'channels = { new = "sms" }\nholdout_rate = 0.4\n'
        f'[shops.experiments]\npayment_reminder.new = {{ variants = ["new", "new.gift"], weights = {WEIGHTS} }}\n'
        "[shops.visits]"), encoding="utf-8")
    settings = load_settings(config)
    con = connect(tmp_path / "crm.duckdb")
    sync_shops(con, settings)
    stage(con, "customers", *[{"customer_id": f"c{i}", "phone": f"1390000{i:04d}"} for i in range(N)])
    stage(con, "products", {"product_id": "p1", "title": "猫咪抱枕", "style_tags": ["cute"]})
    # every third order has the cute product: the variant 'new' takes its tone (new.cute), 'new.gift' has none
    stage(con, "orders", *[{"order_id": f"o{i:04d}", "customer_id": f"c{i}", "created_at": local("2026-11-24 10:00"),
                            "paid_at": local("2026-11-24 12:00") if i % 2 else None} for i in range(N)])
    stage(con, "order_items", *[{"order_id": f"o{i:04d}", "product_id": "p1"} for i in range(0, N, 3)])
    yield con, settings, config, gw
    con.close()
    gw.stop()
    smtp.stop()


def decisions_at(con, at) -> dict[str, tuple]:
    return {r[0]: r[1:] for r in con.execute(
        "SELECT order_id, reason, variant, template FROM marts.reminder_decisions WHERE as_of = ?", [at]).fetchall()}


def test_variants_split_deterministically_and_stay_put(experiment, tmp_path):
    con, settings, config, gw = experiment
    plan(con, T)
    first = decisions_at(con, T)
    assert len(first) == N
    for order_id, (reason, variant, template) in first.items():
        # rule 11 decides the control group first; every order, held out or not, has its variant recorded
        assert (reason == "holdout") == (hash01("holdout:" + order_id) < 0.4), order_id
        assert variant == expected_variant(order_id), order_id
        tone = int(order_id[1:]) % 3 == 0 and variant == "new"
        assert template == f"payment_reminder/{variant}{'.cute' if tone else ''}", order_id
    assert {v for _r, v, _t in first.values()} == {"new", "new.gift"}
    assert {t for _r, _v, t in first.values()} == {"payment_reminder/new", "payment_reminder/new.cute",
                                                   "payment_reminder/new.gift"}
    # planned again, later, and in a backfill of the hours before: the same variant for every order
    plan(con, T)
    assert decisions_at(con, T) == first
    for at in [T + timedelta(minutes=20)] + backfill_times(T - timedelta(minutes=20), T, timedelta(minutes=10)):
        plan(con, at, segments=False)
        assert {o: v for o, (_r, v, _t) in decisions_at(con, at).items()} == {o: v for o, (_r, v, _t) in first.items()}
    # a dispatch records the variant and the segment on each message, which renders the variant's template
    dispatch(con, settings, T)
    sent = con.execute("SELECT order_id, variant, customer_segment, template, status FROM ops.messages "
                       "WHERE purpose = 'payment_reminder'").fetchall()
    assert len(sent) == sum(1 for r, _v, _t in first.values() if r is None) > 60
    for order_id, variant, segment, template, status in sent:
        assert (variant, segment, template, status) == (first[order_id][1], "new", first[order_id][2], "sent")
    # the effect once every outcome is known: the variants compared, each group counted as given
    plan(con, LATER)
    rows = {r[0]: r[1:] for r in con.execute(
        "SELECT variant, orders_known, paid_before_close, paid_rate_low, paid_rate_high, reference_variant, status, "
        "difference, difference_low, difference_high FROM marts.reminder_variants WHERE day = ?", [DAY]).fetchall()}
    counts = {}
    for order_id, variant, *_ in sent:
        known, paid = counts.get(variant, (0, 0))
        counts[variant] = (known + 1, paid + int(order_id[1:]) % 2)
    assert {v: r[:2] for v, r in rows.items()} == counts
    for v, (known, paid, low, high, reference, status, *difference) in rows.items():
        assert (low, high) == pytest.approx(wilson(paid, known), abs=1e-12)
        assert reference == "new"
        ok = min(known, counts["new"][0]) >= 30
        assert status == ("reference" if v == "new" else "ok" if ok else "too_small")
        if status == "ok":
            assert difference == pytest.approx(newcombe(paid, known, counts["new"][1], counts["new"][0]), abs=1e-12)
        else:
            assert difference == [None] * 3
    e = effect(con)
    held = [o for o, (r, _v, _t) in first.items() if r == "holdout"]
    assert (e["orders_held_out_known"], e["held_out_paid_before_close"]) == (
        len(held), sum(int(o[1:]) % 2 for o in held))
    assert (e["orders_assigned_known"], e["assigned_paid_before_close"]) == (
        len(sent), sum(int(o[1:]) % 2 for o, *_ in sent))
    con.close()

    # the report shows the lift with its error bar and the variants; `crm effect` prints the same numbers
    page = render(gather(tmp_path / "crm.duckdb", settings, "s1", "day", "2026-11-24", LATER), svg="<svg></svg>")
    assert 'class="error-bar"' in page and 'data-key="lift_all"' in page
    assert f'data-key="variant_difference_new_new">{labels("zh-CN")["reference"]}<' in page
    done = crm("--db", str(tmp_path / "crm.duckdb"), "--config", str(config), "effect", "--from", "2026-11-24")
    assert done.returncode == 0, done.stderr
    lift = f"{(e['lift']) * 100:+.1f}"
    assert "s1: reminder planned against held out" in done.stdout and lift in done.stdout
    assert f"{e['lift_low'] * 100:+.1f} to {e['lift_high'] * 100:+.1f}" in done.stdout
    assert "s1: template experiments" in done.stdout and "new.gift" in done.stdout


# --------------------------------------------------------------------------------------------------
# where people look: the report when there is too little, and `crm effect`'s one-line errors


def test_the_report_says_not_enough_data_yet(tmp_path):
    settings = parse_settings({"shops": [{"shop_id": "s1", "locale": "en"}]})
    db = tmp_path / "crm.duckdb"
    con = connect(db)
    sync_shops(con, settings)
    remind(con, orders(con, "r", paid=5, closed=5))
    for order_id in orders(con, "h", paid=2, closed=3):
        holdout(con, order_id, CREATED + 20 * MIN)
    con.close()
    page = render(gather(db, settings, "s1", "day", "2026-11-24", LATER), svg="<svg></svg>")
    assert "Not enough data yet: the lift is shown once the reminded and the held-out group each have 30 orders" in page
    assert 'data-key="lift_all">not enough data yet<' in page and 'class="error-bar"' not in page
    assert 'data-key="assigned_known_all">10<' in page and 'data-key="held_out_known_all">5<' in page


def test_crm_effect_answers_bad_input_in_one_line(tmp_path):
    settings_file = tmp_path / "shops.toml"
    settings_file.write_text('[[shops]]\nshop_id = "s1"\n', encoding="utf-8")
    db = tmp_path / "crm.duckdb"
    con = connect(db)
    sync_shops(con, load_settings(settings_file))
    con.close()
    for args, line in ((["--from", "24.11.2026"], "error: --from '24.11.2026' is not a date YYYY-MM-DD"),
                       (["--from", "2026-11-24", "--to", "2026-11-01"], "error: --to 2026-11-01 is before --from"),
                       (["--shop", "s9"], "error: shop 's9' is not configured")):
        done = crm("--db", str(db), "--config", str(settings_file), "effect", *args)
        assert (done.returncode, done.stderr.strip().splitlines()[0][: len(line)]) == (2, line), done.stderr
    done = crm("--db", str(db), "--config", str(settings_file), "effect")
    assert done.returncode == 0 and "not enough data yet" in done.stdout, done.stdout + done.stderr
    assert "as of no plan yet" in done.stdout
    # after a plan that reminded nobody, the table is as of that plan's T (not "no plan yet")
    con = connect(db)
    sync_shops(con, load_settings(settings_file))
    plan(con, LATER)
    con.close()
    done = crm("--db", str(db), "--config", str(settings_file), "effect")
    assert done.returncode == 0, done.stderr
    assert f"as of {LATER.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC" in done.stdout, done.stdout


def test_a_variant_without_its_template_stops_the_dispatch_in_one_line(experiment):
    from crm.render import RenderError

    con, settings, config, gw = experiment
    config.write_text(config.read_text().replace('"new.gift"]', '"new.nope"]'), encoding="utf-8")
    settings = load_settings(config)
    sync_shops(con, settings)
    with pytest.raises(RenderError) as info:
        dispatch(con, settings, T)
    assert str(info.value) == "template zh-CN/payment_reminder/new.nope.j2 not found (missing: payment_reminder/new.nope.j2)"
    assert con.execute("SELECT count(*) FROM ops.messages").fetchone()[0] == 0 and gw.requests == []
