"""The webhook channel against a real HTTP server on 127.0.0.1 (docs/rules.md §7)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from crm.channels import send_webhook
from gateway import Gateway, closed_port_url


@pytest.fixture
def gateway():
    gw = Gateway().start()
    yield gw
    gw.stop()


def send(url: str, message_id: str = "payment_reminder:o1", *, timeout: float = 1.0, max_attempts: int = 4,
         base: float = 0.01):
    msg = {"message_id": message_id, "channel": "sms", "shop_id": "s1", "purpose": "payment_reminder",
           "recipient": "13800000001", "body": "您好"}

    async def go():
        async with httpx.AsyncClient(timeout=httpx.Timeout(timeout)) as client:
            return await send_webhook(client, url, msg, max_attempts=max_attempts, base_delay=base)

    return asyncio.run(go())


def test_accepted_with_idempotency_key_and_the_contract_body(gateway):
    out = send(gateway.url)
    assert (out.status, out.attempts) == ("sent", 1)
    assert gateway.accepted["payment_reminder:o1"] == {"message_id": "payment_reminder:o1", "channel": "sms",
                                                       "shop_id": "s1", "purpose": "payment_reminder",
                                                       "to": "13800000001", "body": "您好"}
    assert gateway.missing_key == 0


def test_503_is_retried(gateway):
    gateway.script["payment_reminder:o1"] = [("status", 503), ("status", 502)]
    out = send(gateway.url)
    assert (out.status, out.attempts) == ("sent", 3)


def test_429_waits_for_retry_after(gateway):
    gateway.script["payment_reminder:o1"] = [("retry_after", 429, 1)]
    out = send(gateway.url)
    (t1, _, s1), (t2, _, s2) = gateway.requests
    assert (s1, s2, out.status, out.attempts) == (429, 200, "sent", 2)
    assert t2 - t1 >= 0.95, "Retry-After: 1 was honoured"


def test_a_response_slower_than_the_timeout_is_retried(gateway):
    gateway.script["payment_reminder:o1"] = [("slow", 1.5)]
    started = time.monotonic()
    out = send(gateway.url, timeout=0.3)
    assert (out.status, out.attempts) == ("sent", 2)
    assert time.monotonic() - started < 1.4, "the client did not wait for the slow answer"


def test_refused_connection_is_retried_then_stays_queued():
    # catches: a gateway outage failing messages for good (they were lost to the next run)
    out = send(closed_port_url(), max_attempts=3)
    assert (out.status, out.attempts, out.transient) == ("queued", 3, True)
    assert "3 attempts failed, stays queued" in out.error and "connection error" in out.error


def test_400_fails_at_once_and_keeps_the_answer(gateway):
    gateway.script["payment_reminder:o1"] = [("status", 400, "invalid phone number")]
    out = send(gateway.url)
    assert (out.status, out.attempts) == ("failed", 1)
    assert out.error == "HTTP 400: invalid phone number"
    assert len(gateway.requests) == 1


def test_persistent_5xx_stops_after_max_attempts_and_stays_queued(gateway):
    gateway.script["payment_reminder:o1"] = [("status", 500)] * 10
    out = send(gateway.url, max_attempts=3)
    assert (out.status, out.attempts, len(gateway.requests)) == ("queued", 3, 3)
    assert "HTTP 500" in out.error
