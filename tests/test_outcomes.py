"""Visit outcomes: the gift-ratio rule at its boundary, a bad import file, the call task marked done; a recorded
time between the call's creation and now, and an import that records the same row once (issue 12, item 8)."""

from __future__ import annotations

import csv
from datetime import timedelta

import pytest

from conftest import crm
from planning import MIN, configure, local, message, stage
from transforms.outcomes import OutcomeError, Refusal, check, gift_refusal, import_file, record

NOW = local("2026-11-24 15:00")
FIELDS = ["order_id", "reached", "quality", "logistics", "packaging", "service", "suggestion", "gift", "compensation",
          "recorded_at", "callback_at", "agent"]
PLANNED = local("2026-10-01 10:00")          # the fixture's visits are planned (their calls created) then


@pytest.fixture
def shop(con):
    configure(con, visits={"gift_ratio": 0.25})
    stage(con, "customers", {"customer_id": "c1"})
    for i in range(12):
        con.execute("INSERT INTO marts.visit_tasks (as_of, shop_id, order_id, customer_id, tier, rank, channel, due_at) "
                    "VALUES (?, 's1', ?, 'c1', 'other', ?, 'call', ?)", [PLANNED, f"o{i}", i + 1, PLANNED])
    from crm.config import parse_settings

    return con, parse_settings({"shops": [{"shop_id": "s1", "visits": {"gift_ratio": 0.25}}]})


def save(con, settings, order_id, *, gift=False, reached=True, when=NOW):
    outcome, problems = check({"order_id": order_id, "reached": str(reached), "quality": "good", "logistics": "good",
                               "packaging": "good", "service": "good", "gift": str(gift)})
    assert problems == []
    return record(con, settings, outcome, when)


def test_gift_ratio_at_its_boundary(shop):
    con, settings = shop
    assert save(con, settings, "o0", gift=True) is None, "the month's first gift is always allowed"
    for i in (1, 2):
        assert save(con, settings, f"o{i}") is None
    # 1 gift in 3 reached: a second gift would make 2 in 4 = 50% > 25%
    assert save(con, settings, "o3", gift=True) == Refusal("gift_refused", {"gifts": 2, "reached": 4, "share": 0.5,
                                                                           "ratio": 0.25})
    for i in (3, 4, 5, 6):
        assert save(con, settings, f"o{i}") is None
    # 1 gift in 7 reached: a second gift makes 2 in 8 = 25%, not above: allowed
    assert save(con, settings, "o7", gift=True) is None
    refused = save(con, settings, "o8", gift=True)
    assert str(refused) == ("gift refused: it would make 3 gifts in 9 reached visits this month (33%), above the "
                            "shop's gift_ratio of 25%"), "3 in 9 = 33% is above"
    assert con.execute("SELECT count(*) FILTER (WHERE gift) FROM ops.visit_outcomes").fetchone()[0] == 2


def test_a_new_month_starts_again(shop):
    con, settings = shop
    assert save(con, settings, "o0", gift=True, when=local("2026-10-31 23:00")) is None
    assert save(con, settings, "o1", gift=True, when=local("2026-11-01 00:30")) is None, "first gift of November"
    assert gift_refusal(con, "s1", local("2026-11-02 10:00"), 0.25) is not None


def test_zero_ratio_still_allows_the_first_gift(shop):
    con, _ = shop
    assert gift_refusal(con, "s1", NOW, 0.0) is None


def _write(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in FIELDS})
    return path


def test_bad_import_file_reports_line_numbers_and_saves_the_good_rows(shop, tmp_path):
    con, settings = shop
    message(con, "followup:o0", "followup", "o0", NOW - 60 * MIN, channel="call", status="queued")
    message(con, "followup:o1", "followup", "o1", NOW - 60 * MIN, channel="call", status="queued")
    good = {"reached": "true", "quality": "good", "logistics": "issue", "packaging": "n/a", "service": "good"}
    path = _write(tmp_path / "export.csv", [
        {"order_id": "o0", **good, "suggestion": "faster courier please", "gift": "true"},      # line 2: saved
        {"order_id": "o1", "reached": "false", "callback_at": "2026-11-25T10:00:00+08:00"},     # 3: saved, not reached
        {"order_id": "nope", **good},                                                          # 4
        {"order_id": "o2", **good, "quality": "excellent"},                                    # 5
        {"order_id": "o3", **good, "reached": "maybe"},                                        # 6
        {"order_id": "o4", "reached": "false", "gift": "true"},                                # 7
        {"order_id": "o5", **good, "compensation": "50% off!"},                                # 8
        {"order_id": "o6", **good, "recorded_at": "2026-11-24 15:00"},                         # 9
        {"order_id": "", **good},                                                              # 10
        {"order_id": "o7", **good, "gift": "true"},                                            # 11: refused, 2 in 2
        {"order_id": "o8", **good, "reached": ""},                                             # 12: blank is not "no"
    ])
    result = import_file(con, settings, path, now=NOW)
    assert result.saved == 2
    reasons = dict(result.errors)
    assert sorted(reasons) == [4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert reasons[4] == "order 'nope' has no follow-up visit planned"
    assert "quality must be good, issue or n/a, got 'excellent'" in reasons[5]
    assert "reached must be true or false, got 'maybe'" in reasons[6]
    assert reasons[7] == "a gift or compensation needs a reached customer"
    assert "compensation must be a word" in reasons[8]
    assert "recorded_at must be ISO 8601 with an offset" in reasons[9]
    assert reasons[10] == "missing order_id"
    assert reasons[11].startswith("gift refused")
    assert "reached is missing" in reasons[12]
    status = dict(con.execute("SELECT message_id, status FROM ops.messages").fetchall())
    assert status == {"followup:o0": "done", "followup:o1": "queued"}, "a reached call is done, the other stays"
    saved = con.execute("SELECT order_id, reached, logistics, suggestion, gift, callback_at FROM ops.visit_outcomes "
                        "ORDER BY order_id").fetchall()
    assert [s[:5] for s in saved] == [("o0", True, "issue", "faster courier please", True), ("o1", False, "n/a", None, False)]
    assert saved[1][5] == local("2026-11-25 10:00")


def test_unreadable_import_file(shop, tmp_path):
    con, settings = shop
    (tmp_path / "x.csv").write_text("just,some\n1,2\n")
    with pytest.raises(OutcomeError, match="needs at least the columns order_id and reached"):
        import_file(con, settings, tmp_path / "x.csv", NOW)
    with pytest.raises(OutcomeError, match="file not found"):
        import_file(con, settings, tmp_path / "none.csv", NOW)


REACHED = {"reached": "true", "quality": "good", "logistics": "good", "packaging": "good", "service": "good"}


def test_a_recorded_time_lies_between_the_calls_creation_and_now(shop, tmp_path):
    # catches: six gifts in six visits at gift_ratio 0.05, each dated into its own month as "the month's first"
    con, _ = shop
    from crm.config import parse_settings

    settings = parse_settings({"shops": [{"shop_id": "s1", "visits": {"gift_ratio": 0.05}}]})
    created = NOW - 60 * MIN
    for i in range(6):
        message(con, f"followup:o{i}", "followup", f"o{i}", created, channel="call", status="queued")
    months = ["2026-06-10T10:00:00+08:00", "2026-07-10T10:00:00+08:00", "2026-08-10T10:00:00+08:00",
              "2026-09-10T10:00:00+08:00", "2026-11-24T14:30:00+08:00", "2026-12-10T10:00:00+08:00"]
    path = _write(tmp_path / "export.csv", [{"order_id": f"o{i}", **REACHED, "gift": "true", "recorded_at": at}
                                            for i, at in enumerate(months)])
    result = import_file(con, settings, path, NOW)
    assert result.saved == 1
    reasons = dict(result.errors)
    assert sorted(reasons) == [2, 3, 4, 5, 7]
    assert reasons[2] == ("recorded_at 2026-06-10 02:00:00 UTC is before the call was created "
                          "(2026-11-24 06:00:00 UTC)")
    assert reasons[7] == "recorded_at 2026-12-10 02:00:00 UTC is after now (2026-11-24 07:00:00 UTC)"
    assert con.execute("SELECT order_id, gift FROM ops.visit_outcomes").fetchall() == [("o4", True)]
    # the bounds themselves are allowed; a second before or after is not (the task's T when there is no message)
    for order_id, at, refused in (("o6", PLANNED - timedelta(seconds=1), "recorded_before_call"),
                                  ("o6", PLANNED, None),
                                  ("o0", created - timedelta(seconds=1), "recorded_before_call"),
                                  ("o0", created, None),
                                  ("o1", NOW + timedelta(seconds=1), "recorded_in_future"),
                                  ("o1", NOW, None)):
        outcome, problems = check({"order_id": order_id, **REACHED, "recorded_at": at.isoformat()})
        assert problems == []
        got = record(con, settings, outcome, NOW)
        assert (got.code if got else None) == refused, (order_id, at, got)


def test_reimporting_the_same_not_reached_rows_records_them_once(shop, tmp_path):
    # catches: a re-imported export that tripled every "not reached" attempt
    con, settings = shop
    rows = [
        {"order_id": "o1", "reached": "false", "recorded_at": "2026-11-24T10:00:00+08:00",
         "callback_at": "2026-11-24T16:00:00+08:00", "agent": "小李"},                        # line 2
        {"order_id": "o1", "reached": "false", "recorded_at": "2026-11-24T14:00:00+08:00",
         "callback_at": "2026-11-24T16:00:00+08:00", "agent": "小李"},                        # 3: a later attempt
        {"order_id": "o2", "reached": "false", "callback_at": "2026-11-25T10:00:00+08:00", "agent": "小王"},  # 4
        {"order_id": "o2", "reached": "false", "callback_at": "2026-11-25T10:00:00+08:00", "agent": "小张"},  # 5
        {"order_id": "o3", **REACHED},                                                       # 6
    ]
    path = _write(tmp_path / "export.csv", rows)
    first = import_file(con, settings, path, NOW)
    assert (first.saved, first.errors) == (5, [])
    # the same file again, also an hour later (a row without recorded_at is dated by the import's clock)
    for now in (NOW, NOW + 60 * MIN):
        again = import_file(con, settings, path, now)
        assert again.saved == 0
        reasons = dict(again.errors)
        assert sorted(reasons) == [2, 3, 4, 5, 6]
        assert reasons[2] == "order 'o1': this not-reached attempt was already recorded at 2026-11-24 02:00 UTC"
        assert reasons[4] == "order 'o2': this not-reached attempt was already recorded at 2026-11-24 07:00 UTC"
        assert reasons[6].startswith("order 'o3' was already recorded as reached")
    attempts = con.execute("SELECT order_id, recorded_at, agent FROM ops.visit_outcomes WHERE NOT reached "
                           "ORDER BY order_id, recorded_at, agent").fetchall()
    assert attempts == [("o1", local("2026-11-24 10:00"), "小李"), ("o1", local("2026-11-24 14:00"), "小李"),
                        ("o2", NOW, "小张"), ("o2", NOW, "小王")]
    # a new call-back time is a new attempt
    path = _write(tmp_path / "next.csv", [{**rows[2], "callback_at": "2026-11-26T10:00:00+08:00"}])
    assert import_file(con, settings, path, NOW + 60 * MIN).saved == 1


def test_visits_import_command(local_server, tmp_path, config_path):
    from crm.db import connect

    db = local_server.parent / "visits.duckdb"
    con = connect(db)
    con.execute("INSERT INTO marts.visit_tasks (as_of, shop_id, order_id, customer_id, tier, rank, channel, due_at) "
                "VALUES (?, 's1', 'o1', 'c1', 'other', 1, 'call', ?)", [NOW, NOW])
    con.close()
    path = _write(tmp_path / "export.csv", [
        {"order_id": "o1", "reached": "true", "quality": "good", "logistics": "good", "packaging": "good",
         "service": "issue", "suggestion": "reply faster"},
        {"order_id": "o9", "reached": "true"},
    ])
    result = crm("--db", str(db), "--config", str(config_path), "visits", "import", str(path),
                 "--as-of", "2026-11-24T15:00:00+08:00", env={"PREFECT_API_URL": ""})
    assert result.returncode == 1, result.stderr
    assert "1 outcomes saved, 1 refused" in result.stdout and "line 3: " in result.stdout
    con = connect(db, read_only=True)
    try:
        assert con.execute("SELECT recorded_at FROM ops.visit_outcomes").fetchall() == [(NOW,)], "by --as-of"
    finally:
        con.close()
    early = crm("--db", str(db), "--config", str(config_path), "visits", "import", str(path),
                "--as-of", "2026-11-24T15:00:00", env={"PREFECT_API_URL": ""})
    assert early.returncode == 2 and early.stderr.startswith("error: --as-of"), early.stderr
