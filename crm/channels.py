"""Sending: the webhook gateway (SMS, chat) and SMTP (email), docs/rules.md §7.

Webhook: one POST per message with JSON {message_id, channel, to, body, shop_id, purpose} and the
header ``Idempotency-Key: <message_id>``, so a message sent again after a crash is accepted once.
2xx: sent. 429, 5xx, a timeout or a refused connection: retried with exponential backoff and full
jitter (``Retry-After`` honoured), up to ``max_attempts``; a message whose every attempt failed that way
stays ``queued`` (``Outcome.transient``) for a later run. Any other answer (4xx, or a redirect, which is not
followed): failed for good, with the gateway's answer kept. The client (WebhookClient) is HTTP/1.1 on
asyncio with httptools' parser: bench/README.md compares it with httpx and aiohttp.
Email goes over SMTP; SMTP 4xx and connection errors are retried (and then stay queued), 5xx fail.
An email body is plain text whose first line is the subject, or a whole HTML page (the feedback report),
sent as multipart/alternative with a plain-text part and the page's <title> as the subject.
Nothing here logs a full phone number or email address.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import random
import re
import smtplib
import socket
import ssl
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from urllib.parse import quote, unquote, urlsplit

import httptools

RETRYABLE_STATUS = {429} | set(range(500, 600))
MAX_BACKOFF = 30.0


@dataclass(slots=True)
class Outcome:
    message_id: str
    status: str            # 'sent', 'failed' (for good), or 'queued' (every attempt failed transiently)
    attempts: int
    error: str | None = None
    sent_at: datetime | None = None

    @property
    def transient(self) -> bool:
        """Not sent, but only for reasons that may pass (the gateway down, slow or busy): send it later."""
        return self.status == "queued"


def _kept(message_id: str, attempts: int, error: str | None) -> Outcome:
    return Outcome(message_id, "queued", attempts, f"{attempts} attempts failed, stays queued: {error}")


def _retry_after(answer: "Answer") -> float | None:
    value = answer.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
            return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
        except (TypeError, ValueError):
            return None


def backoff(attempt: int, base: float) -> float:
    """Full jitter: a random wait in [0, base * 2^(attempt-1)], capped."""
    return random.uniform(0, min(MAX_BACKOFF, base * 2 ** (attempt - 1)))


# printable ASCII stays as it is in a header value; anything else (订单-2, a control character) is
# percent-encoded as in a URL, so every id is a valid, stable and unique header value
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F))


def header_value(message_id: str) -> str:
    """A message id as an HTTP header value: 'followup:订单-2' -> 'followup:%E8%AE%A2%E5%8D%95-2'."""
    return quote(message_id, safe=_HEADER_SAFE)


# --------------------------------------------------------------------------------------------------
# the HTTP client


class ConnectionBroken(OSError):
    """The gateway closed the connection, or answered what is not HTTP, before its answer was complete."""


@dataclass(slots=True)
class Answer:
    status: int
    headers: dict[str, str]         # names in lower case
    body: bytes                     # the first ANSWER_KEPT bytes (an error's text); a 2xx's is not kept


ANSWER_KEPT = 64 * 1024


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request at a time, its answer read by httptools' parser."""

    def __init__(self):
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.kept = False                # taken from the idle ones for this request
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future | None = None
        self._begin()

    def _begin(self) -> None:
        self.answered = False            # a byte of this request's answer came
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._kept = 0
        self._complete = self._keep_alive = False

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # a request's head and body go out at once, not held back by Nagle's algorithm
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.answered = True
        if self._waiter is None or self._waiter.done():
            self.close()                 # nothing was asked: the connection cannot be trusted any more
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(ConnectionBroken(f"not an HTTP answer ({type(e).__name__})"))

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            if self._status >= 200 and not self._complete and "content-length" not in self._headers \
                    and "chunked" not in self._headers.get("transfer-encoding", "").lower():
                self.on_message_complete()       # an answer whose end is the connection's close
            else:
                self._fail(ConnectionBroken("the gateway closed the connection before its answer was complete"))

    # httptools' callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self._kept < ANSWER_KEPT and not 200 <= self._status < 300:
            self._body.append(body)
            self._kept += len(body)

    def on_message_complete(self) -> None:
        if self._status < 200:                   # 1xx (103 Early Hints …): the answer follows
            self._begin()
            return
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()     # known only until the next message begins
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(Answer(self._status, self._headers, b"".join(self._body)[:ANSWER_KEPT]))

    # use
    async def request(self, data: bytes) -> Answer:
        self._begin()
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self._waiter

    @property
    def reusable(self) -> bool:
        return not self.closed and self._complete and self._keep_alive

    def _fail(self, error: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class WebhookClient:
    """HTTP/1.1 requests to one gateway URL (http or https) over keep-alive connections, at most one request
    at a time on each (so as many connections as requests at once), each request within `timeout` seconds in
    all (connect, send, answer). A connection is used again only after a complete answer that allows it; one
    that failed or timed out is closed. Redirects are not followed, no proxy is used. Open it inside the event
    loop that uses it; ``async with`` closes its connections."""

    def __init__(self, url: str, *, timeout: float):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http(s) URL")
        self.url, self.timeout = url, timeout
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        host = f"[{self.host}]" if ":" in self.host else self.host.encode("idna").decode()
        default = (parts.scheme, self.port) in (("http", 80), ("https", 443))
        head = [f"Host: {host if default else f'{host}:{self.port}'}", "User-Agent: shop-crm",
                "Accept-Encoding: identity"]
        if parts.username is not None:          # http://user:password@host/…: HTTP Basic
            login = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            head.append(f"Authorization: Basic {base64.b64encode(login).decode()}")
        self._head = ("\r\n".join(head) + "\r\n").encode("latin-1")
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()

    async def request(self, method: str, body: bytes = b"", headers: dict[str, str] | None = None,
                      path: str | None = None) -> Answer:
        """`method` `path` (default: the URL's) with `body` and `headers`; raises TimeoutError, or OSError when
        the connection was refused, broke or did not answer in HTTP."""
        fields = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        if fields.count("\n") != len(headers or ()) or "\r" in fields.replace("\r\n", ""):
            raise ValueError("a header name or value holds a line break")
        data = b"".join((f"{method} {path or self.path} HTTP/1.1\r\n".encode("latin-1"), self._head,
                         fields.encode("latin-1"), b"Content-Length: %d\r\n\r\n" % len(body), body))
        async with asyncio.timeout(self.timeout):
            for reuse in (True, False):
                conn = await self._connection(reuse=reuse)
                try:
                    answer = await conn.request(data)
                    break
                except BaseException as e:
                    conn.close()
                    self._open.discard(conn)
                    # a kept connection the gateway had closed meanwhile (its keep-alive ran out): the request
                    # never reached it, so it goes again at once on a new connection
                    if not (conn.kept and isinstance(e, ConnectionBroken) and not conn.answered):
                        raise
        if conn.reusable:
            self._idle.append(conn)
        else:
            conn.close()
            self._open.discard(conn)
        return answer

    async def post(self, body: bytes, headers: dict[str, str] | None = None) -> Answer:
        return await self.request("POST", body, headers)

    async def _connection(self, reuse: bool = True) -> _Connection:
        while reuse and self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                conn.kept = True
                return conn
            self._open.discard(conn)
        _, conn = await asyncio.get_running_loop().create_connection(
            _Connection, self.host, self.port, ssl=self._ssl, server_hostname=self.host if self._ssl else None)
        self._open.add(conn)
        return conn

    async def aclose(self) -> None:
        for conn in self._open:
            conn.close()
        self._open.clear()
        self._idle.clear()

    async def __aenter__(self) -> "WebhookClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


def _answer_text(answer: Answer) -> str:
    """What the gateway said, for last_error; a body that cannot be decoded says so instead."""
    body = answer.body
    encoding = answer.headers.get("content-encoding", "identity").strip().lower()
    try:
        if encoding in ("gzip", "x-gzip", "deflate"):
            body = zlib.decompressobj(zlib.MAX_WBITS | 32 if encoding != "deflate" else zlib.MAX_WBITS).decompress(body)
        elif encoding != "identity":
            return f"(unreadable answer: Content-Encoding {encoding[:20]})"
    except zlib.error:
        return "(unreadable answer: DecodingError)"
    charset = re.search(r"charset=\"?([\w.:-]+)", answer.headers.get("content-type", ""))
    try:
        return body.decode(charset.group(1) if charset else "utf-8", errors="replace")[:300]
    except LookupError:
        return body.decode("utf-8", errors="replace")[:300]


def _json(payload: dict) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def signature_headers(signer, webhook_id: str, body: bytes) -> dict[str, str]:
    """Standard Webhooks headers for `body`, signed now: `webhook-id`, `webhook-timestamp`, `webhook-signature`
    (``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``); `signer` is a standardwebhooks Webhook."""
    now = datetime.now(timezone.utc)
    return {"webhook-id": webhook_id, "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signer.sign(webhook_id, now, body.decode())}


async def send_webhook(client: WebhookClient, msg: dict, *, max_attempts: int, base_delay: float,
                       token: str = "", signer=None) -> Outcome:
    """One message to the gateway at ``client.url``, with `token` (if any) as a bearer token, signed with
    `signer` (a standardwebhooks Webhook for ``gateway.signing_secret``, if set) at each attempt."""
    body = _json({"message_id": msg["message_id"], "channel": msg["channel"], "shop_id": msg["shop_id"],
                  "purpose": msg["purpose"], "to": msg["recipient"], "body": msg["body"]})
    key = header_value(msg["message_id"])
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    error = None
    for attempt in range(1, max_attempts + 1):
        wait = None
        if signer is not None:
            headers.update(signature_headers(signer, key, body))
        try:
            # the status decides: a 2xx whose body cannot be decoded (a broken Content-Encoding) is still sent
            answer = await client.post(body, headers)
            if 200 <= answer.status < 300:
                return Outcome(msg["message_id"], "sent", attempt, sent_at=datetime.now(timezone.utc))
            error = f"HTTP {answer.status}: {_answer_text(answer)}"
            if answer.status not in RETRYABLE_STATUS:
                return Outcome(msg["message_id"], "failed", attempt, error)
            wait = _retry_after(answer)
        except TimeoutError:
            error = "timeout"
        except OSError as e:                       # refused connection, reset, DNS, TLS, not HTTP …
            error = f"connection error: {type(e).__name__}"
        if attempt < max_attempts:
            await asyncio.sleep(min(MAX_BACKOFF, wait) if wait is not None else backoff(attempt, base_delay))
    return _kept(msg["message_id"], max_attempts, error)


class SmtpSender:
    """One SMTP connection reused for a run's emails (opened on first use)."""

    def __init__(self, host: str, port: int, sender: str, username: str = "", password: str = "",
                 starttls: bool = False, timeout: float = 10):
        self.host, self.port, self.sender = host, port, sender
        self.username, self.password, self.starttls, self.timeout = username, password, starttls, timeout
        self._smtp: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        if self._smtp is None:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username:
                smtp.login(self.username, self.password)
            self._smtp = smtp
        return self._smtp

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except smtplib.SMTPException:
                pass
            except OSError:
                pass
            self._smtp = None

    def send(self, msg: dict, *, max_attempts: int, base_delay: float, journal=None) -> Outcome:
        """Send one email at most once; `journal` (crm.journal.SendJournal) hears of it before it goes."""
        html = is_html(msg["body"])
        if html:
            # an HTML page (the feedback report): its <title> is the subject, a text part the fallback
            subject, body = html_title_and_text(msg["body"])
        else:
            subject, _, body = msg["body"].partition("\n")      # a plain message: its first line is the subject
        mail = EmailMessage()
        mail["From"], mail["To"], mail["Subject"] = self.sender, msg["recipient"], subject.strip()
        # header-safe forms of the id (an order id may hold any character)
        mail["Message-ID"] = email.utils.make_msgid(idstring=quote(msg["message_id"], safe="").replace("%", "="))
        mail["X-CRM-Message-Id"] = header_value(msg["message_id"])
        mail.set_content(body.strip() + "\n")
        if html:
            # multipart/alternative: text, then HTML; mail clients drop inline SVG, so each chart goes as a
            # PNG in the HTML part's multipart/related, referenced by cid
            page, images = svg_as_png(msg["body"], msg["message_id"])
            mail.add_alternative(page, subtype="html")
            for cid, png in images:
                mail.get_payload()[1].add_related(png, "image", "png", cid=f"<{cid}>")
        return self._deliver(mail, msg["message_id"], max_attempts=max_attempts, base_delay=base_delay,
                             journal=journal)

    def _ready(self) -> smtplib.SMTP:
        """A connection that answers now: a reused one the server may have dropped while idle is checked
        (NOOP) and replaced, so that a message is only ever begun on a live connection."""
        if self._smtp is not None:
            try:
                if self._smtp.noop()[0] == 250:
                    return self._smtp
            except (OSError, smtplib.SMTPException):
                pass
            self._smtp = None
        return self._connect()

    def _deliver(self, mail: EmailMessage, message_id: str, *, max_attempts: int, base_delay: float,
                 journal=None) -> Outcome:
        """At most once: a failure before the message is handed over (no connection) or an explicit refusal
        by the server is safe to try again; a connection that breaks while the message is being handed over
        leaves it in doubt, and it is not tried again (docs/rules.md §7)."""
        error = None
        for attempt in range(1, max_attempts + 1):
            try:
                smtp = self._ready()
            except smtplib.SMTPResponseException as e:      # refused at greeting / login: nothing was sent
                error = f"SMTP {e.smtp_code}: {_smtp_text(e)}"
                self.close()
                if e.smtp_code >= 500:
                    return self._not_sent(journal, Outcome(message_id, "failed", attempt, error))
            except (OSError, smtplib.SMTPException) as e:
                error = f"SMTP connection error: {type(e).__name__}"
                self.close()
            else:
                if journal is not None:
                    journal.begin(message_id)
                try:
                    smtp.send_message(mail)
                except smtplib.SMTPRecipientsRefused as e:
                    return self._not_sent(journal, Outcome(message_id, "failed", attempt,
                                                           f"recipient refused: {list(e.recipients.values())[:1]}"))
                except smtplib.SMTPResponseException as e:  # the server answered no: it did not take the message
                    error = f"SMTP {e.smtp_code}: {_smtp_text(e)}"
                    self.close()
                    if journal is not None:
                        journal.not_sent(message_id)
                    if e.smtp_code >= 500:
                        return Outcome(message_id, "failed", attempt, error)
                except (OSError, smtplib.SMTPException) as e:
                    self.close()
                    return Outcome(message_id, "failed", attempt,
                                   f"in doubt: the connection broke while the message was being handed over "
                                   f"({type(e).__name__}); it may have gone out, so it is not sent again automatically")
                else:
                    if journal is not None:
                        journal.accepted(message_id)
                    return Outcome(message_id, "sent", attempt, sent_at=datetime.now(timezone.utc))
            if attempt < max_attempts:
                time.sleep(backoff(attempt, base_delay))
        return _kept(message_id, max_attempts, error)

    @staticmethod
    def _not_sent(journal, outcome: Outcome) -> Outcome:
        if journal is not None:
            journal.not_sent(outcome.message_id)
        return outcome


def _smtp_text(e: smtplib.SMTPResponseException) -> str:
    return (e.smtp_error.decode(errors="replace") if isinstance(e.smtp_error, bytes) else str(e.smtp_error))[:200]


# --------------------------------------------------------------------------------------------------
# HTML bodies: a whole page (``<!DOCTYPE html>``) goes as multipart/alternative


_SVG = re.compile(r"<svg\b.*?</svg>", re.DOTALL | re.IGNORECASE)


def svg_as_png(page: str, message_id: str) -> tuple[str, list[tuple[str, bytes]]]:
    """The page with each inline <svg> replaced by an <img src="cid:…">, and those PNGs (2x scale)."""
    if "<svg" not in page:
        return page, []
    import vl_convert

    images: list[tuple[str, bytes]] = []

    def swap(match: re.Match) -> str:
        cid = f"chart{len(images) + 1}.{message_id.replace(':', '.')}@crm"
        images.append((cid, vl_convert.svg_to_png(match.group(0), scale=2)))
        width = re.search(r'\bwidth="([\d.]+)"', match.group(0))
        size = f' width="{width.group(1)}"' if width else ""
        return f'<img src="cid:{cid}" alt="chart"{size} style="max-width:100%;height:auto">'

    return _SVG.sub(swap, page), images


def is_html(body: str) -> bool:
    return body.lstrip()[:15].lower() == "<!doctype html>"


class _Text(HTMLParser):
    """The readable text of a page: no <style>, <script> or <svg> (the chart's labels), a line per block."""

    SKIP = {"style", "script", "svg", "head"}
    BLOCK = {"p", "div", "h1", "h2", "h3", "tr", "li", "br", "table", "footer", "section"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0
        self.title: list[str] = []
        self.in_title = False

    def handle_starttag(self, tag, attrs):
        if tag == "title":
            self.in_title = True
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in ("h1", "h2", "h3"):
            self.parts.append("\n\x00\n")       # a blank line before a heading
        elif tag in self.BLOCK:
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append("  ")

    def handle_endtag(self, tag):
        if tag == "title":
            self.in_title = False
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if self.in_title:
            self.title.append(data)
        if not self.skipping:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_title_and_text(html: str) -> tuple[str, str]:
    """A page's <title> and its readable text, from one parse."""
    parser = _Text()
    parser.feed(html)
    parser.close()
    lines = (line.strip() for line in "".join(parser.parts).splitlines())
    text = "\n".join(line for line in lines if line).replace("\x00", "").strip()
    return " ".join("".join(parser.title).split()), text
