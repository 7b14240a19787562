"""Sending: the webhook gateway (SMS, chat) and SMTP (email), docs/rules.md §7.

Webhook: one POST per message with JSON {message_id, channel, to, body, shop_id, purpose} and the
header ``Idempotency-Key: <message_id>``, so a message sent again after a crash is accepted once.
2xx: sent. 429, 5xx, a timeout or a refused connection: retried with exponential backoff and full
jitter (``Retry-After`` honoured), up to ``max_attempts``; a message whose every attempt failed that way
stays ``queued`` (``Outcome.transient``) for a later run. Any other 4xx: failed for good, with the
gateway's answer kept. Email goes over SMTP; SMTP 4xx and connection errors are retried (and then stay
queued), 5xx fail.
An email body is plain text whose first line is the subject, or a whole HTML page (the feedback report),
sent as multipart/alternative with a plain-text part and the page's <title> as the subject.
Nothing here logs a full phone number or email address.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import smtplib
import ssl
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from urllib.parse import quote

import httpx

RETRYABLE_STATUS = {429} | set(range(500, 600))
MAX_BACKOFF = 30.0


@dataclass
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


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
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


async def _answer_text(response: httpx.Response) -> str:
    """What the gateway said, for last_error; a body that cannot be read or decoded says so instead."""
    try:
        await response.aread()
        return response.text[:300]
    except (httpx.DecodingError, httpx.TransportError, UnicodeDecodeError) as e:
        return f"(unreadable answer: {type(e).__name__})"


async def send_webhook(client: httpx.AsyncClient, url: str, msg: dict, *, max_attempts: int, base_delay: float,
                       token: str = "") -> Outcome:
    payload = {k: msg[k] for k in ("message_id", "channel", "shop_id", "purpose")} | {"to": msg["recipient"],
                                                                                       "body": msg["body"]}
    headers = {"Idempotency-Key": header_value(msg["message_id"])}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    error = None
    for attempt in range(1, max_attempts + 1):
        wait = None
        try:
            # the status decides; the body is read only to keep an error's text (a 2xx whose body cannot be
            # decoded, e.g. a broken Content-Encoding, is still accepted)
            async with client.stream("POST", url, json=payload, headers=headers) as response:
                if 200 <= response.status_code < 300:
                    return Outcome(msg["message_id"], "sent", attempt, sent_at=datetime.now(timezone.utc))
                error = f"HTTP {response.status_code}: {await _answer_text(response)}"
                if response.status_code not in RETRYABLE_STATUS:
                    return Outcome(msg["message_id"], "failed", attempt, error)
                wait = _retry_after(response)
        except httpx.TimeoutException:
            error = "timeout"
        except httpx.TransportError as e:          # refused connection, reset, DNS …
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
