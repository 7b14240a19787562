"""The webhook channel against a real HTTP server on 127.0.0.1 (docs/rules.md §7)."""

from __future__ import annotations

import asyncio
import gzip
import re
import socket
import threading
import time

import pytest

from crm.channels import WebhookClient, send_webhook
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
        async with WebhookClient(url, timeout=timeout) as client:
            return await send_webhook(client, msg, max_attempts=max_attempts, base_delay=base)

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
    gateway.script["payment_reminder:o1"] = [("slow", 3)]
    started = time.monotonic()
    out = send(gateway.url, timeout=0.3)
    assert (out.status, out.attempts) == ("sent", 2)
    assert time.monotonic() - started < 2.5, "the client did not wait for the slow answer"


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


# --------------------------------------------------------------------------------------------------
# the client itself, against a server scripted byte by byte


class RawServer:
    """An HTTP server on 127.0.0.1 that answers each request with `answer(n, request)` (n counts requests from
    0): (bytes to write, close the connection after). It keeps each request's head and the connection it came
    on."""

    def __init__(self, answer):
        self.answer, self.requests, self.connections = answer, [], 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/send"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        with conn:
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                while len(data) < length:
                    data += conn.recv(65536)
                data = data[length:]
                self.requests.append((number, head.decode("latin-1")))
                out, close = self.answer(len(self.requests) - 1, head)
                conn.sendall(out)
                if close:
                    return

    def stop(self) -> None:
        self.sock.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
def raw():
    servers = []

    def start(answer):
        servers.append(RawServer(answer))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def send_many(url: str, n: int, **kw) -> list:
    async def go():
        async with WebhookClient(url, timeout=kw.pop("timeout", 1.0)) as client:
            return [await send_webhook(client, {"message_id": f"payment_reminder:o{i}", "channel": "sms", "shop_id": "s1",
                                                "purpose": "payment_reminder", "recipient": "13800000001", "body": "您好"},
                                       max_attempts=kw.get("max_attempts", 3), base_delay=0.01, token=kw.get("token", ""))
                    for i in range(n)]

    return asyncio.run(go())


def test_one_kept_alive_connection_carries_the_messages(raw):
    # catches: a new TCP connection for every message (the answer was left unread, so the connection was
    # dropped), which doubled the gateway's and the client's work
    server = raw(lambda n, head: (OK, False))
    outs = send_many(server.url, 20)
    assert [o.status for o in outs] == ["sent"] * 20
    assert (server.connections, len(server.requests)) == (1, 20)


def test_a_kept_connection_the_gateway_dropped_is_replaced_at_once(raw):
    # a gateway that closes an idle kept-alive connection just as the next request comes: the request goes
    # again at once, on a new connection, without an attempt (or a backoff) spent
    server = raw(lambda n, head: (b"", True) if n % 2 else (OK, False))
    outs = send_many(server.url, 3)
    assert [(o.status, o.attempts) for o in outs] == [("sent", 1)] * 3
    assert server.connections == 3


def test_the_request_carries_the_key_the_token_and_json(raw):
    server = raw(lambda n, head: (OK, False))
    send_many(server.url, 1, token="s3cret")
    head = server.requests[0][1]
    assert head.startswith("POST /send HTTP/1.1\r\n")
    assert "Idempotency-Key: payment_reminder:o0" in head and "Authorization: Bearer s3cret" in head
    assert "Content-Type: application/json" in head and f"Host: 127.0.0.1:{server.url.split(':')[2].split('/')[0]}" in head


def test_a_redirect_is_not_followed_and_fails_with_the_answer(raw):
    server = raw(lambda n, head: (b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere/\r\nContent-Length: 5\r\n\r\nmoved", False))
    (out,) = send_many(server.url, 1)
    assert (out.status, out.attempts, out.error) == ("failed", 1, "HTTP 302: moved")
    assert len(server.requests) == 1


def test_an_error_answer_in_chunks_and_gzip_is_kept_readable(raw):
    text = gzip.compress("号码无效 invalid number".encode())
    body = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (5, text[:5], len(text) - 5, text[5:])
    server = raw(lambda n, head: (b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n"
                                  b"Content-Encoding: gzip\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body, False))
    (out,) = send_many(server.url, 1)
    assert (out.status, out.error) == ("failed", "HTTP 400: 号码无效 invalid number")


def test_an_answer_ended_by_closing_the_connection_counts(raw):
    server = raw(lambda n, head: (b"HTTP/1.0 200 OK\r\n\r\naccepted", True))
    outs = send_many(server.url, 2)
    assert [(o.status, o.attempts) for o in outs] == [("sent", 1)] * 2
    assert server.connections == 2, "an HTTP/1.0 answer closes its connection"


def test_an_answer_that_is_not_http_is_retried_then_stays_queued(raw):
    server = raw(lambda n, head: (b"SSH-2.0-OpenSSH_9.6\r\n", True))
    (out,) = send_many(server.url, 1, max_attempts=2)
    assert (out.status, out.attempts) == ("queued", 2)
    assert "connection error: ConnectionBroken" in out.error
