"""Masking for logs: no full phone number or email address is ever logged.

:func:`redact` masks every phone number and e-mail address inside free text (a gateway's or SMTP server's
answer, an exception, a quarantined row or reason). Phone numbers are found by libphonenumber's
``PhoneNumberMatcher`` (the ``phonenumbers`` package), which knows separators (spaces, dashes, dots,
parentheses), country codes (``+86``, ``0086``, ``86…``), full-width digits, and leaves dates, times and
timestamps alone. It runs with the least strict leniency, so that numbers outside assigned ranges are found
too, and a candidate is masked when it is a valid number, or has 9 to 15 digits (a full number anywhere)
and is not an amount (``12345678.90``), an IPv4 address or inside a UUID (a Prefect run's link). Order ids (``s1-o000123``, 19-digit platform
ids), amounts, counts and dates stay readable. A masked number keeps its first three digits and last two:
``137-1527-5764`` -> ``137****64``, ``+86 137 1527 5764`` -> ``+861****64``.

Cost: text with fewer than 7 digits close together returns at once (most log lines); a line that holds a
number takes ~0.1 ms.

:func:`install_log_redaction` makes every log record of the process go through :func:`redact` (message and
exception text), as a safety net under the explicit masking where answers are logged.
"""

from __future__ import annotations

import logging
import re
import unicodedata

_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9-])[A-Za-z0-9.-]*\.([A-Za-z]{2,})")
# seven digits with at most three separators (space, dash, dot, parenthesis, slash) between each two: the least
# any phone number has; text without it (most log lines) is not searched further
_MAYBE_PHONE = re.compile(r"\d(?:[\s\-.()/\u2010-\u2015\uff08\uff09\uff0d\uff0e]{0,3}\d){6}")
# a UUID (a Prefect run's id in its "View at" link, a message id): hex digits, of which about one in eight holds a
# run of 9+ decimal digits that libphonenumber would take for a number; such a run inside one is left whole
_UUID = re.compile(r"(?<![0-9A-Za-z])[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![0-9A-Za-z])")
_AMOUNT = re.compile(r"^\d+[.,]\d{1,2}$")
_IPV4 = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")
_REGION = "CN"              # the region of numbers written without a country code, when none is known


def mask_email(value: str | None) -> str:
    if not value or "@" not in value:
        return value or ""
    local, _, domain = value.partition("@")
    return f"{local[:1]}***@{domain[:1]}***"


def mask_phone(value: str | None) -> str:
    digits = re.sub(r"\D", "", unicodedata.normalize("NFKC", value or ""))
    if len(digits) < 5:
        return "***" if digits else ""
    return f"{digits[:3]}****{digits[-2:]}"


def _masked_number(raw: str) -> str:
    text = unicodedata.normalize("NFKC", raw)
    digits = re.sub(r"\D", "", text)
    international = text.lstrip("( ").startswith("+") or digits.startswith("00")
    if digits.startswith("00"):
        digits = digits[2:]
    return ("+" if international else "") + f"{digits[:3]}****{digits[-2:]}"


def _is_phone(match) -> bool:
    import phonenumbers as pn

    raw = unicodedata.normalize("NFKC", match.raw_string)
    if pn.is_valid_number(match.number):
        return True
    digits = re.sub(r"\D", "", raw)
    if digits.startswith("00"):
        digits = digits[2:]
    return 9 <= len(digits) <= 15 and not _AMOUNT.match(raw) and not _IPV4.match(raw)


def _mask_phones(text: str) -> str:
    if not _MAYBE_PHONE.search(text):
        return text
    import phonenumbers as pn

    uuids = [m.span() for m in _UUID.finditer(text)]
    out, last = [], 0
    for match in pn.PhoneNumberMatcher(text, _REGION, leniency=pn.Leniency.POSSIBLE):
        if any(a <= match.start and match.end <= b for a, b in uuids):
            continue
        if _is_phone(match):
            out += [text[last:match.start], _masked_number(match.raw_string)]
            last = match.end
    return "".join(out) + text[last:] if out else text


def redact(text: str) -> str:
    """Mask every phone number and email address inside free text."""
    if not text:
        return text or ""
    text = _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}***.{m.group(3)}", text)
    return _mask_phones(text)


# --------------------------------------------------------------------------------------------------
# every log record of the process


def _redacting(factory):
    def make(*args, **kwargs):
        record = factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:                     # a broken format string: logging reports it itself later
            return record
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    make._crm_redacting = True
    return make


def install_log_redaction() -> None:
    """Mask phone numbers and e-mails in every log record made from now on in this process: its message and
    its exception's traceback (which handlers, Prefect's API handler included, then print as they are).
    Idempotent."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "_crm_redacting", False):
        logging.setLogRecordFactory(_redacting(factory))
