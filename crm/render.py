"""Render messages from the shops' Jinja2 templates, safely.

Templates live in ``templates/<locale>/<name>.j2`` (``payment_reminder/new.cute``, ``followup/sms``,
``call_script/followup`` …). Shops edit them, so they run in Jinja2's sandbox (no attribute of
Python internals is reachable) with strict undefined variables (a typo is an error, not an empty
string). Every template a run needs is compiled before anything is sent: a missing or broken one
stops the run with one line naming it.
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path

from jinja2 import FileSystemLoader, StrictUndefined, TemplateError, TemplateNotFound, TemplateSyntaxError
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from crm.db import asset_dir

LOCALES = ("zh-CN", "en")


class RenderError(Exception):
    """A template is missing, broken, unsafe or refers to an unknown variable: one line for the user."""


class Renderer:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else asset_dir("templates")

    @cached_property
    def _envs(self) -> dict[str, SandboxedEnvironment]:
        return {
            locale: SandboxedEnvironment(
                loader=FileSystemLoader(self.root / locale),
                undefined=StrictUndefined,
                autoescape=False,
                trim_blocks=False,
                keep_trailing_newline=False,
            )
            for locale in LOCALES
        }

    def _env(self, locale: str) -> SandboxedEnvironment:
        if locale not in self._envs:
            raise RenderError(f"no templates for locale {locale!r} (have {', '.join(LOCALES)})")
        return self._envs[locale]

    def check(self, locale: str, name: str) -> None:
        """Compile a template (and what it imports) now, so a broken one fails before any send."""
        try:
            self._env(locale).get_template(f"{name}.j2")
        except TemplateNotFound as e:
            raise RenderError(f"template {locale}/{name}.j2 not found (missing: {e.name})") from None
        except TemplateSyntaxError as e:
            raise RenderError(f"template {locale}/{name}.j2 is broken: line {e.lineno}: {e.message}") from None

    def render(self, locale: str, name: str, context: dict) -> str:
        self.check(locale, name)
        try:
            return self._env(locale).get_template(f"{name}.j2").render(**context).strip()
        except SecurityError as e:
            raise RenderError(f"template {locale}/{name}.j2 tries to reach Python internals: {e}") from None
        except UndefinedError as e:
            raise RenderError(f"template {locale}/{name}.j2 uses an unknown variable: {e.message}") from None
        except TemplateError as e:
            raise RenderError(f"template {locale}/{name}.j2 failed: {e}") from None


# --------------------------------------------------------------------------------------------------
# SMS length: one segment holds 160 GSM-7 characters, or 70 UCS-2 characters (Chinese); longer
# messages are split into parts of 153 / 67.

_GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿"
    "abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED = set("^{}\\[~]|€")


def sms_segments(text: str) -> int:
    if all(c in _GSM7 or c in _GSM7_EXTENDED for c in text):
        units, single, part = len(text) + sum(c in _GSM7_EXTENDED for c in text), 160, 153
    else:
        units, single, part = len(text.encode("utf-16-le")) // 2, 70, 67
    return 1 if units <= single else math.ceil(units / part)
