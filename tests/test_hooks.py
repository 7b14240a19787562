"""The gateways' receipts and replies under /hooks/ on `crm serve` (docs/rules.md §7): signatures, keys,
receipts that only move a message forward, opt-out replies that become suppressions. `crm serve` in its own
process, real HTTP on 127.0.0.1, a real DuckDB file."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import httpx
import pytest
from conftest import rows, settle
from standardwebhooks.webhooks import Webhook

import workspace
from crm.db import connect
from crm.hooks import opt_out_word
from planning import message

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HOOK_KEY = "k-3f9a"


@pytest.mark.parametrize("text", ["T", "td", " ｔｄ ", "ＴＤ", "退订", "取消", "STOP!", "Unsubscribe.", "0000", "【退订】",
                                  "quit", "StopAll"])
def test_opt_out_words(text):
    assert opt_out_word(text) is not None


@pytest.mark.parametrize("text", ["怎么付款?", "TDD", "stop it", "", None, "T D X", "好的"])
def test_other_replies_are_not_opt_outs(text):
    assert opt_out_word(text) is None


@pytest.fixture
def served(tmp_path):
    db, config = workspace.make(tmp_path)
    config.write_text(config.read_text() + f'\n[gateway]\nsigning_secret = "{SECRET}"\nhook_key = "{HOOK_KEY}"\n',
                      encoding="utf-8")
    con = connect(db)
    # phones as ingest stages them (E.164, docs/rules.md §1): replies are matched by phone
    con.execute("UPDATE staging.customers SET phone = '+86' || phone WHERE phone NOT LIKE '+%'")
    for i in (1, 2):
        message(con, f"payment_reminder:m{i}", "payment_reminder", f"m{i}", workspace.T, status="sent")
    con.close()
    server = workspace.Served(db, config)
    yield server, db
    server.stop()






def signed(body: dict, *, msg_id: str = "msg_1", at: datetime | None = None, secret: str = SECRET) -> tuple[bytes, dict]:
    data = json.dumps(body)
    at = at or datetime.now(timezone.utc)
    return data.encode(), {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
                           "webhook-signature": Webhook(secret).sign(msg_id, at, data), "content-type": "application/json"}


def test_webhook_receipts_need_a_good_fresh_signature(served):
    server, db = served
    receipt = {"message_id": "payment_reminder:m1", "status": "delivered", "at": "2026-11-24T02:35:00Z"}
    body, headers = signed(receipt)
    bad = {**headers, "webhook-signature": Webhook("whsec_" + "QUFBQUFBQUFBQUFBQUFBQQ==").sign("msg_1", datetime.now(timezone.utc), body.decode())}
    stale_body, stale = signed(receipt, at=datetime.now(timezone.utc) - timedelta(minutes=6))
    assert httpx.post(f"{server.url}/hooks/receipts", content=body).status_code == 401, "unsigned"
    assert httpx.post(f"{server.url}/hooks/receipts", content=body, headers=bad).status_code == 401, "wrong key"
    assert httpx.post(f"{server.url}/hooks/receipts", content=stale_body, headers=stale).status_code == 401, "stale"
    tampered = body.replace(b"delivered", b"undelivered")
    assert httpx.post(f"{server.url}/hooks/receipts", content=tampered, headers=headers).status_code == 401
    time.sleep(1.0)
    assert rows(db, "SELECT count(*) FROM ops.delivery_receipts") == [(0,)], "nothing recorded"
    assert httpx.post(f"{server.url}/hooks/receipts", content=body, headers=headers).status_code == 200
    assert settle(db, "SELECT delivery, delivered_at FROM ops.messages WHERE message_id = 'payment_reminder:m1'",
                  [("delivered", datetime(2026, 11, 24, 2, 35, tzinfo=timezone.utc))]) == [
        ("delivered", datetime(2026, 11, 24, 2, 35, tzinfo=timezone.utc))]


def test_kannel_receipts_only_move_a_message_forward(served):
    server, db = served
    dlr = f"{server.url}/hooks/kannel/dlr"
    assert httpx.get(dlr, params={"id": "payment_reminder:m1", "s": "1"}).status_code == 401, "no key"
    assert httpx.get(dlr, params={"id": "payment_reminder:m1", "s": "1", "key": "wrong"}).status_code == 401
    # m1: undelivered first, then a late 'delivered' and a duplicate; m2: accepted (8) then delivered (1)
    for mid, s in (("m1", 2), ("m1", 1), ("m1", 2), ("m2", 8), ("m2", 1), ("m2", 1), ("nobody", 1)):
        assert httpx.get(dlr, params={"id": f"payment_reminder:{mid}", "s": str(s), "key": HOOK_KEY}).status_code == 200
    expected = [("payment_reminder:m1", "undelivered"), ("payment_reminder:m2", "delivered")]
    assert settle(db, "SELECT message_id, delivery FROM ops.messages WHERE delivery IS NOT NULL ORDER BY 1",
                  expected) == expected
    # (read until all are in: the spool writes them in batches, and the last may come after the messages settled)
    assert settle(db, "SELECT count(*), count(DISTINCT message_id) FROM ops.delivery_receipts", [(7, 3)]) == [(7, 3)], \
        "every receipt kept, the unknown id's too"
    assert rows(db, "SELECT count(*) FROM ops.messages WHERE message_id = 'payment_reminder:nobody'") == [(0,)]


def test_replies_opt_outs_become_suppressions_others_are_kept(served):
    server, db = served
    mo = f"{server.url}/hooks/kannel/mo"
    # Kannel's get-url: %b is the message's bytes, %C their charset (UTF-16BE for Chinese)
    td = quote("ｔｄ ".encode("utf-16-be"))
    question = quote("怎么付款?".encode("utf-16-be"))
    for sender, text, charset in (("+8613800000001", td, "UTF-16BE"), ("+8613800000002", question, "UTF-16BE"),
                                  ("13800000003", "STOP", "UTF-8")):
        url = f"{mo}?from={quote(sender)}&to=10690&text={text}&charset={charset}&ts=1795999999&key={HOOK_KEY}"
        r = httpx.get(url)
        assert r.status_code == 200 and r.text == "", "an empty answer: no SMS back"
    body, headers = signed({"from": "+8613800000004", "to": "10690", "text": "退订", "at": "2026-11-24T03:00:00+08:00"})
    assert httpx.post(f"{server.url}/hooks/replies", content=body, headers=headers).status_code == 200
    expected = [("+8613800000001", "ｔｄ ", True), ("+8613800000002", "怎么付款?", False),
                ("+8613800000003", "STOP", True), ("+8613800000004", "退订", True)]
    assert settle(db, "SELECT sender, text, opt_out FROM ops.replies ORDER BY sender", expected) == expected
    supp = rows(db, "SELECT phone, channel, created_at, reason FROM ops.suppressions ORDER BY phone")
    assert supp == [
        ("+8613800000001", "sms", datetime.fromtimestamp(1795999999, timezone.utc), "reply: ｔｄ "),
        ("+8613800000003", "sms", datetime.fromtimestamp(1795999999, timezone.utc), "reply: STOP"),
        ("+8613800000004", "sms", datetime(2026, 11, 23, 19, 0, tzinfo=timezone.utc), "reply: 退订"),
    ]
    # the question is shown to the agents, with the customer; the opt-outs are not
    page = httpx.get(f"{server.url}/shops/s1").text
    replies = page.split('id="replies"')[1]
    assert "怎么付款?" in replies and "客户3" in replies and "ｔｄ" not in replies and "STOP" not in replies
    call = httpx.get(f"{server.url}/shops/s1/calls/o-mid").text
    assert "怎么付款?" in call.split('id="replies"')[1]
    assert 'id="replies"' not in httpx.get(f"{server.url}/shops/s1/calls/o-high").text


@pytest.mark.parametrize("gateway_secret, sent", [(SECRET, 3), ("whsec_" + "QkJCQkJCQkJCQkJCQkJCQg==", 0)])
def test_requests_to_the_webhook_gateway_are_signed(tmp_path, gateway_secret, sent):
    # a gateway that checks Standard Webhooks signatures: ours verify with the shared secret, and not with another
    from crm.config import load_settings
    from dispatching import T, sms_crowd
    from gateway import Gateway
    from transforms.dispatch import dispatch_db

    gw = Gateway(secret=gateway_secret).start()
    try:
        db, config = tmp_path / "crm.duckdb", tmp_path / "shops.toml"
        sms_crowd(db, config, gw.url, 3)
        config.write_text(config.read_text().replace("[gateway]", f'[gateway]\nsigning_secret = "{SECRET}"'))
        r = dispatch_db(db, load_settings(config), T)
        assert (r.sent, len(gw.accepted), gw.bad_signatures) == (sent, sent, 3 - sent), r
        if not sent:
            assert rows(db, "SELECT DISTINCT status, last_error FROM ops.messages") == [("failed", "HTTP 401: bad signature")]
    finally:
        gw.stop()
