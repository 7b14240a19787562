"""Masking for logs: no full phone number or email address is ever logged."""

from __future__ import annotations

import re

_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9-])[A-Za-z0-9.-]*\.([A-Za-z]{2,})")
_PHONE = re.compile(r"(?<!\d)(\+?\d{3})\d{4,}(\d{2})(?!\d)")


def mask_email(value: str | None) -> str:
    if not value or "@" not in value:
        return value or ""
    local, _, domain = value.partition("@")
    return f"{local[:1]}***@{domain[:1]}***"


def mask_phone(value: str | None) -> str:
    digits = re.sub(r"\D", "", value or "")
    if len(digits) < 5:
        return "***" if digits else ""
    return f"{digits[:3]}****{digits[-2:]}"


def redact(text: str) -> str:
    """Mask every phone number and email address inside free text."""
    text = _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}***.{m.group(3)}", text)
    return _PHONE.sub(lambda m: f"{m.group(1)}****{m.group(2)}", text)
