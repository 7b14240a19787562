"""Sending through Kannel's smsbox `sendsms` HTTP interface (Kannel 1.4, as Debian packages it), docs/rules.md §7.

One GET per message to ``gateway.sendsms_url`` with ``username``, ``password``, ``from`` (``gateway.sender``),
``to``, ``text`` (UTF-8, ``charset=UTF-8``; ``coding=2`` when the text is not GSM 7-bit, so Kannel sends it
as UCS-2), ``dlr-mask=31`` and a ``dlr-url`` bringing each delivery report back to
``<hooks_url>/hooks/kannel/dlr?id=<message_id>&s=%d`` (with ``key=<hook_key>`` when set; Kannel fills in %d).

Kannel's 202 (``0: Accepted for delivery``, ``3: Queued for later delivery``) means accepted. Kannel has no
idempotency key, so a message goes to it **at most once**: the send journal hears of it before the request
goes (``?``), and of the answer (``+`` accepted, ``-`` refused). Only what certainly did not reach Kannel is
tried again: a refused connection, a connect timeout, or a 5xx answer (Kannel answered: it did not take it).
A request that may have reached Kannel and got no answer (a read timeout, a connection broken after the
request was written) is *in doubt*: it is not tried again; the message ends ``failed`` with ``last_error``
saying so, and a delivery report for it later settles it as sent (crm/hooks.py). Any other answer fails the
message for good, with Kannel's text kept.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from urllib.parse import quote

import httpx

from crm.channels import MAX_BACKOFF, Outcome, _kept, backoff
from crm.render import is_gsm7

ACCEPTED = ("0:", "3:")          # Kannel's 202 texts: accepted, queued for later delivery
IN_DOUBT = ("in doubt: the request reached Kannel or may have, and no answer came ({error}); Kannel has no "
            "idempotency key, so it is not sent again automatically (a delivery report settles it as sent)")


def dlr_url(gateway, message_id: str) -> str:
    url = f"{gateway.hooks_url.rstrip('/')}/hooks/kannel/dlr?id={quote(message_id, safe='')}&s=%d"
    return url + (f"&key={quote(gateway.hook_key, safe='')}" if gateway.hook_key else "")


def params(gateway, msg: dict) -> dict:
    text = msg["body"]
    return {
        "username": gateway.username, "password": gateway.password, "from": gateway.sender, "to": msg["recipient"],
        "text": text, "charset": "UTF-8", "coding": "0" if is_gsm7(text) else "2",
        "dlr-mask": "31", "dlr-url": dlr_url(gateway, msg["message_id"]),
    }


async def send_kannel(client: httpx.AsyncClient, gateway, msg: dict, *, journal=None) -> Outcome:
    """One message to Kannel, at most once (see the module's doc)."""
    message_id, error = msg["message_id"], None
    query = params(gateway, msg)
    for attempt in range(1, gateway.max_attempts + 1):
        if journal is not None:
            journal.begin(message_id)
        try:
            response = await client.get(gateway.sendsms_url, params=query)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:   # never reached Kannel: safe to try again
            error = f"connection error: {type(e).__name__}"
            if journal is not None:
                journal.not_sent(message_id)
        except httpx.TransportError as e:                        # sent, and no answer: in doubt
            return Outcome(message_id, "failed", attempt, IN_DOUBT.format(error=type(e).__name__))
        else:
            text = response.text.strip()[:300]
            if response.status_code == 202 and text.startswith(ACCEPTED):
                if journal is not None:
                    journal.accepted(message_id)
                return Outcome(message_id, "sent", attempt, sent_at=datetime.now(timezone.utc))
            if journal is not None:
                journal.not_sent(message_id)
            error = f"Kannel {response.status_code}: {text}"
            if response.status_code < 500:
                return Outcome(message_id, "failed", attempt, error)
        if attempt < gateway.max_attempts:
            await asyncio.sleep(min(MAX_BACKOFF, backoff(attempt, gateway.backoff_seconds)))
    return _kept(message_id, gateway.max_attempts, error)
