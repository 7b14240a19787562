"""Dispatch (docs/rules.md §6-§7): outbox, exactly-once sending, calls for agents, validation, dry run."""

from __future__ import annotations

from decimal import Decimal

import duckdb
import pytest

from crm.config import load_settings
from crm.db import connect, sync_shops
from dispatching import T, shop_config, start_smtp
from gateway import Gateway
from planning import MIN, local, stage
from transforms.dispatch import dispatch
from transforms.validate import ValidationFailed, validate_outbox


@pytest.fixture
def servers():
    gw = Gateway().start()
    smtp, box = start_smtp()
    yield gw, smtp, box
    gw.stop()
    smtp.stop()


@pytest.fixture
def world(tmp_path, servers):
    gw, smtp, box = servers
    config = shop_config(tmp_path / "shops.toml", gw.url, smtp.port)
    settings = load_settings(config)
    con = connect(tmp_path / "crm.duckdb")
    sync_shops(con, settings)
    stage(con, "customers",
          {"customer_id": "new", "phone": "13800000001", "email": "new@example.com"},
          {"customer_id": "again", "phone": "13800000002", "email": "again@example.com"},
          {"customer_id": "quiet", "phone": "13800000003", "opt_out": True},
          {"customer_id": "mail", "phone": None, "email": "mail@example.com"},
          {"customer_id": "fan", "phone": "13800000005", "email": None},
          {"customer_id": "late", "phone": "13800000006", "email": None})
    stage(con, "products", {"product_id": "p1", "title": "猫咪抱枕", "style_tags": ["cute"]})
    stage(con, "orders",
          # payment reminders: a new customer (call), a second purchase (sms), an opted-out one
          {"order_id": "u-new", "customer_id": "new", "created_at": local("2026-11-24 10:00")},
          {"order_id": "first", "customer_id": "again", "created_at": local("2026-11-01 10:00"),
           "paid_at": local("2026-11-01 10:05")},
          {"order_id": "u-again", "customer_id": "again", "created_at": local("2026-11-24 10:05")},
          {"order_id": "u-quiet", "customer_id": "quiet", "created_at": local("2026-11-24 10:00")},
          # follow-ups due today: a high-value one takes the only call, the other two are automatic
          {"order_id": "d-fan", "customer_id": "fan", "created_at": local("2026-11-10 10:00"), "total_amount": Decimal("900"),
           "paid_at": local("2026-11-10 10:01"), "delivered_at": local("2026-11-17 12:00")},
          {"order_id": "d-mail", "customer_id": "mail", "created_at": local("2026-11-10 10:00"),
           "paid_at": local("2026-11-10 10:01"), "delivered_at": local("2026-11-17 12:00")},
          {"order_id": "d-new", "customer_id": "late", "created_at": local("2026-11-10 10:00"),
           "paid_at": local("2026-11-10 10:01"), "delivered_at": local("2026-11-17 12:00")},
          {"order_id": "d-quiet", "customer_id": "quiet", "created_at": local("2026-11-10 10:00"),
           "paid_at": local("2026-11-10 10:01"), "delivered_at": local("2026-11-17 12:00")})
    stage(con, "order_items", {"order_id": "u-new", "product_id": "p1"}, {"order_id": "d-fan", "product_id": "p1"})
    yield con, settings, gw, box
    con.close()


def messages(con) -> dict[str, tuple]:
    rows = con.execute("SELECT message_id, channel, status, attempts, recipient, body, created_at, sent_at "
                       "FROM ops.messages ORDER BY message_id").fetchall()
    return {r[0]: r[1:] for r in rows}


def test_dispatch_sends_reminders_and_queues_calls(world):
    con, settings, gw, box = world
    r = dispatch(con, settings, T, validate=validate_outbox)
    got = messages(con)
    # the new customer gets a call task, the second purchase an SMS; the opted-out customer nothing
    assert got["payment_reminder:u-new"][:2] == ("call", "queued")
    assert got["payment_reminder:u-again"][:3] == ("sms", "sent", 1)
    assert not any("quiet" in k for k in got), "nothing for an opted-out customer"
    # follow-ups at 10:30: the call is queued at once; the automatic ones wait for the 11:00 window
    assert got["followup:d-fan"][:2] == ("call", "queued")
    assert "followup:d-mail" not in got and "followup:d-new" not in got
    assert set(gw.accepted) == {"payment_reminder:u-again"}
    assert gw.accepted["payment_reminder:u-again"]["body"].endswith("回T退订")
    assert "老客立减10元" in gw.accepted["payment_reminder:u-again"]["body"]
    assert got["payment_reminder:u-new"][5] == T and got["payment_reminder:u-again"][6] is not None
    assert "猫咪抱枕" in got["payment_reminder:u-new"][4], "the call script names what was ordered"
    assert (r.sent, r.failed, r.calls_queued) == (1, 0, 2)


def test_automatic_followups_go_out_when_due(world):
    con, settings, gw, box = world
    dispatch(con, settings, T, validate=validate_outbox)
    r = dispatch(con, settings, local("2026-11-24 11:05"), validate=validate_outbox)
    got = messages(con)
    assert got["followup:d-new"][:3] == ("sms", "sent", 1)
    assert "followup:d-mail" not in got, "auto_channel sms and no phone: no channel, no message"
    assert set(gw.accepted) == {"payment_reminder:u-again", "followup:d-new"}
    assert (r.sent, r.created) == (1, {"followup/sms": 1})


def test_email_followup_over_smtp(tmp_path, servers):
    gw, smtp, box = servers
    config = shop_config(tmp_path / "shops.toml", gw.url, smtp.port, capacity=0, extra='auto_channel = "email"')
    settings = load_settings(config)
    con = connect(tmp_path / "crm.duckdb")
    sync_shops(con, settings)
    stage(con, "customers", {"customer_id": "mail", "email": "mail@example.com", "name": "李雷"})
    stage(con, "orders", {"order_id": "d1", "customer_id": "mail", "created_at": local("2026-11-10 10:00"),
                          "paid_at": local("2026-11-10 10:01"), "delivered_at": local("2026-11-17 12:00")})
    r = dispatch(con, settings, local("2026-11-24 11:05"), validate=validate_outbox)
    assert (r.sent, r.failed) == (1, 0)
    [mail] = box.messages
    assert mail.rcpt_tos == ["mail@example.com"] and mail.mail_from == "crm@example.com"
    text = mail.content.decode("utf-8", errors="replace")
    assert "X-CRM-Message-Id: followup:d1" in text
    assert messages(con)["followup:d1"][:2] == ("email", "sent")
    con.close()


def test_a_second_dispatch_at_the_same_t_sends_nothing(world):
    con, settings, gw, box = world
    first = dispatch(con, settings, T, validate=validate_outbox)
    before = messages(con)
    second = dispatch(con, settings, T, validate=validate_outbox)
    assert (first.sent, second.sent, second.created) == (1, 0, {})
    assert messages(con) == before and len(gw.requests) == 1


def test_failed_messages_are_recorded_with_the_gateways_answer(world):
    con, settings, gw, box = world
    gw.script["payment_reminder:u-again"] = [("status", 400, "number not in service")]
    r = dispatch(con, settings, T, validate=validate_outbox)
    status, attempts = messages(con)["payment_reminder:u-again"][1:3]
    error = con.execute("SELECT last_error FROM ops.messages WHERE message_id = 'payment_reminder:u-again'").fetchone()[0]
    assert (status, attempts, r.failed) == ("failed", 1, 1)
    assert error == "HTTP 400: number not in service"
    # a permanently failed message is not sent again by the next run
    again = dispatch(con, settings, T + MIN, validate=validate_outbox)
    assert again.sent == 0 and len(gw.requests) == 1


def test_dry_run_writes_nothing(world, tmp_path):
    con, settings, gw, box = world
    r = dispatch(con, settings, T, dry_run=True, validate=validate_outbox)
    assert r.created == {"followup/call": 1, "payment_reminder/call": 1, "payment_reminder/sms": 1}
    assert {m["message_id"] for m in r.preview} == {"payment_reminder:u-new", "payment_reminder:u-again", "followup:d-fan"}
    assert con.execute("SELECT count(*) FROM ops.messages").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM marts.reminder_decisions").fetchone()[0] == 0
    assert gw.requests == []


def test_a_broken_template_stops_the_run_before_anything_is_written(world, tmp_path):
    from crm.render import Renderer, RenderError

    import shutil

    from crm.db import asset_dir

    con, settings, gw, box = world
    # the shipped templates, with the second-purchase reminder (u-again's) made unsafe
    root = tmp_path / "templates"
    shutil.copytree(asset_dir("templates"), root)
    for locale in ("zh-CN", "en"):
        (root / locale / "payment_reminder" / "second.j2").write_text("{{ shop.__class__.__mro__ }}")
    with pytest.raises(RenderError, match="second.j2"):
        dispatch(con, settings, T, validate=validate_outbox, renderer=Renderer(root))
    assert con.execute("SELECT count(*) FROM ops.messages").fetchone()[0] == 0 and gw.requests == []


def test_validation_failure_stops_before_any_write(world):
    con, settings, gw, box = world
    import polars as pl

    bad = pl.DataFrame({"message_id": ["a", "b"], "paid_at_t": [False, True], "in_quiet": [False, False],
                        "over_cap": [False, False], "opted_out": [True, False], "recipient": ["1", "2"],
                        "channel": ["sms", "sms"]})
    with pytest.raises(ValidationFailed) as info:
        validate_outbox(con, bad, T)
    assert "paid_at_t) failed for 1 of 2 rows (a payment reminder for an order paid at T)" in str(info.value)
    assert "(a message to an opted-out customer)" in str(info.value)
    stored = con.execute("SELECT count(*) FROM ops.validation_results WHERE run_kind = 'dispatch' AND NOT success").fetchone()[0]
    assert stored == 2


def test_no_full_phone_or_email_in_the_logs(world, caplog):
    con, settings, gw, box = world
    import logging

    caplog.set_level(logging.DEBUG)
    dispatch(con, settings, T, validate=validate_outbox)
    logged = caplog.text
    assert "payment_reminder:u-again" in logged, "the send was logged"
    assert "13800000002" not in logged and "again@example.com" not in logged
    assert "138****02" in logged


def test_only_calls_queues_the_calls_and_leaves_the_rest_for_later(world):
    # catches: --only call sending SMS anyway, or swallowing the other channels' messages for good
    con, settings, gw, box = world
    r = dispatch(con, settings, T, validate=validate_outbox, channels=["call"])
    got = messages(con)
    assert {k: v[:2] for k, v in got.items()} == {"payment_reminder:u-new": ("call", "queued"),
                                                  "followup:d-fan": ("call", "queued")}
    assert gw.accepted == {} and (r.sent, r.calls_queued) == (0, 2)
    later = dispatch(con, settings, T + MIN, validate=validate_outbox)
    assert messages(con)["payment_reminder:u-again"][:3] == ("sms", "sent", 1), "a later full run sends it"
    assert set(gw.accepted) == {"payment_reminder:u-again"} and later.calls_queued == 0


def test_failure_lines_do_not_carry_the_full_number(world):
    # catches: a gateway answer quoting the recipient reaching the run's failure lines, which are logged
    con, settings, gw, box = world
    gw.script["payment_reminder:u-again"] = [("status", 400, "invalid number 13800000002")]
    r = dispatch(con, settings, T, validate=validate_outbox)
    assert r.failed == 1
    assert "13800000002" not in r.failures[0] and "138****02" in r.failures[0], r.failures
    assert messages(con)["payment_reminder:u-again"][3] == "13800000002", "the recipient itself is kept"
