"""The one place configuration is resolved: the shops file (docs/rules.md §3, §7) and the environment.

Every error is a single line naming the file, the shop and the key, e.g.
``shops.toml: shop 's2': reminders.shipping_cutoffs[0]: '25:00' is not a time HH:MM (00:00-23:59)``.
Types are strict: a number in quotes (``lead_minutes = "60"``) or a boolean in quotes is refused, not
converted; a whole number is fine where a decimal is expected (``high_value_amount = 500``).
Secrets and URLs come from the file or from the environment (``CRM_GATEWAY_URL``,
``CRM_GATEWAY_TOKEN``, ``CRM_SMTP_HOST``, ``CRM_SMTP_PORT``, ``CRM_SMTP_USER``, ``CRM_SMTP_PASSWORD``,
``CRM_LAKE_CATALOG``, ``CRM_OPS_DSN``, ``CRM_S3_KEY_ID``, ``CRM_S3_SECRET``: the full list is ``_ENV``),
the environment winning; a variable's text is converted to its key's type here, and an error names it.
"""

from __future__ import annotations

import os
import re
import tomllib
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from crm import DEFAULT_CONFIG, DEFAULT_DB  # noqa: F401  (kept in crm/__init__.py: `crm --help` needs no pydantic)


class ConfigError(Exception):
    """A configuration problem, already phrased as one line for the user."""


_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def _check_hhmm(value: str) -> str:
    if not isinstance(value, str) or not _HHMM.match(value):
        raise ValueError(f"{value!r} is not a time HH:MM (00:00-23:59)")
    return value


def minutes_of(hhmm: str) -> int:
    """'11:30' -> 690."""
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


NonNegInt = Annotated[int, Field(ge=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Share = Annotated[float, Field(ge=0, le=1)]
Channel = Literal["call", "sms", "email"]


class _Strict(BaseModel):
    # strict: TOML's own types only (60, not "60"; true, not "true"); an int is accepted for a float
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Channels(_Strict):
    new: Channel = "call"
    second: Channel = "sms"
    repeat: Channel = "sms"


class Reminders(_Strict):
    strategy: Literal["cutoff", "delay"] = "cutoff"
    shipping_cutoffs: list[str] = ["11:00", "17:00"]
    lead_minutes: NonNegInt = 60
    delay_minutes: NonNegInt = 150
    min_age_minutes: NonNegInt = 15
    auto_close_minutes: NonNegInt = 1440
    close_margin_minutes: NonNegInt = 5
    quiet_hours: list[str] = ["21:00", "09:00"]
    daily_cap: NonNegInt = 1
    second_purchase_offer: str = ""
    channels: Channels = Channels()
    holdout_rate: Share = 0.0

    @field_validator("shipping_cutoffs")
    @classmethod
    def _cutoffs(cls, v: list[str]) -> list[str]:
        for i, c in enumerate(v):
            try:
                _check_hhmm(c)
            except ValueError as e:
                raise ValueError(f"[{i}]: {e}") from None
        if len(set(v)) != len(v):
            raise ValueError(f"repeats a cut-off: {v}")
        return sorted(v)

    @field_validator("quiet_hours")
    @classmethod
    def _quiet(cls, v: list[str]) -> list[str]:
        if len(v) not in (0, 2):
            raise ValueError(f"must be [start, end] (two times HH:MM) or [], got {v}")
        for i, c in enumerate(v):
            try:
                _check_hhmm(c)
            except ValueError as e:
                raise ValueError(f"[{i}]: {e}") from None
        return v


_WINDOW = re.compile(r"^(\d{2}:\d{2})-(\d{2}:\d{2})$")


class Visits(_Strict):
    trigger: Literal["delivered", "shipped", "paid"] = "delivered"
    followup_days: NonNegInt = 7
    grace_days: Annotated[int, Field(ge=1)] = 3
    windows: list[str] = ["11:00-12:00", "16:00-18:00"]
    manual_capacity: NonNegInt = 40
    high_value_amount: NonNegFloat = 500
    complaint_keywords: list[str] = ["慢", "破", "差", "没想到", "一般", "slow", "broken", "damaged", "disappoint"]
    auto_channel: Literal["sms", "email", "none"] = "sms"
    gift_ratio: Share = 0.05

    @field_validator("windows")
    @classmethod
    def _windows(cls, v: list[str]) -> list[str]:
        spans = []
        for i, w in enumerate(v):
            m = _WINDOW.match(w) if isinstance(w, str) else None
            if not m:
                raise ValueError(f"[{i}]: {w!r} is not a window HH:MM-HH:MM")
            try:
                start, end = _check_hhmm(m.group(1)), _check_hhmm(m.group(2))
            except ValueError as e:
                raise ValueError(f"[{i}]: {e}") from None
            if minutes_of(start) >= minutes_of(end):
                raise ValueError(f"[{i}]: {w!r} ends before it starts (a window stays inside one day)")
            spans.append((minutes_of(start), minutes_of(end), w))
        spans.sort()
        for (s1, e1, w1), (s2, _e2, w2) in zip(spans, spans[1:]):
            if s2 < e1:
                raise ValueError(f"windows {w1!r} and {w2!r} overlap")
        return [w for _s, _e, w in spans]

    @field_validator("complaint_keywords")
    @classmethod
    def _keywords(cls, v: list[str]) -> list[str]:
        if any(not k.strip() for k in v):
            raise ValueError("an empty keyword would match every review")
        return v


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TOP_ROUTER = "https://eco.taobao.com/router/rest"


class Source(_Strict):
    """[shops.source]: where `crm extract` fetches the shop's orders (docs/rules.md §11). Secrets stay out of
    the file: the *_env keys name the environment variables that hold them."""
    kind: Literal["taobao", "shopify"]
    endpoint: str = ""                      # taobao: the TOP router ("": TOP_ROUTER); shopify: https://<store>.myshopify.com
    app_key: str = ""                       # taobao
    app_secret_env: str = ""                # taobao: the variable holding the app secret
    session_env: str = ""                   # taobao: the variable holding the seller's session key
    sign_method: Literal["md5", "hmac-sha256"] = "md5"   # taobao
    api_version: str = "2025-10"            # shopify: the Admin API version
    token_env: str = ""                     # shopify: the variable holding the access token
    backfill_days: Annotated[int, Field(ge=1)] = 30      # a first extract reaches this far back
    overlap_minutes: NonNegInt = 10         # each run re-reads this much before the watermark

    @field_validator("app_secret_env", "session_env", "token_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        # never echo the value: a secret pasted here by mistake must not end up in an error line
        if v and not _ENV_NAME.match(v):
            raise ValueError("must be the name of an environment variable (letters, digits, _), not the secret "
                             "itself: the secret stays out of this file")
        return v

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if v and not re.match(r"^https?://[^\s/]+", v):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _needs(self) -> "Source":
        if self.kind == "taobao":
            needed = ("app_key", "app_secret_env", "session_env")
        else:
            needed = ("endpoint", "token_env")
        missing = [k for k in needed if not getattr(self, k)]
        if missing:
            raise ValueError(f"kind {self.kind!r} needs {' and '.join(missing)}")
        return self

    @property
    def url(self) -> str:
        """The endpoint, with taobao's default router."""
        return self.endpoint or (TOP_ROUTER if self.kind == "taobao" else "")


@cache
def _duckdb_zones() -> frozenset[str]:
    """The time zone names DuckDB's ICU knows (exactly as it lists them)."""
    import duckdb

    con = duckdb.connect()
    try:
        return frozenset(name for (name,) in con.execute("SELECT name FROM pg_timezone_names()").fetchall())
    finally:
        con.close()


# [shops.experiments] (docs/rules.md §4, §8): a segment's payment reminders split between templates
_TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


class Experiment(_Strict):
    """One segment's template experiment: `variants` are template names under payment_reminder/ (e.g. 'new',
    'new.short'), `weights` their shares of the orders ([]: equal shares). No variants: no experiment."""
    variants: list[str] = []
    weights: list[NonNegFloat] = []

    @model_validator(mode="after")
    def _split(self) -> "Experiment":
        v, w = self.variants, self.weights
        if not v:
            if w:
                raise ValueError("weights without variants: list the variants' template names")
            return self
        for i, name in enumerate(v):
            if not isinstance(name, str) or not _TEMPLATE_NAME.match(name):
                raise ValueError(f"variants[{i}]: {name!r} is not a template name under payment_reminder/ "
                                 "(letters, digits, _ and -, parts joined by dots, e.g. 'new.short')")
        if len(v) < 2:
            raise ValueError(f"an experiment needs at least two variants (got {v})")
        if len(set(v)) != len(v):
            raise ValueError(f"variants lists a template twice: {v}")
        if w:
            if len(w) != len(v):
                raise ValueError(f"weights has {len(w)} shares for {len(v)} variants: give one per variant, "
                                 "or none for equal shares")
            if any(x <= 0 for x in w):
                raise ValueError(f"every weight must be above 0 (got {w})")
            if abs(sum(w) - 1) > 1e-9:
                raise ValueError(f"weights must add up to 1 (got {w}, which add up to {sum(w):g})")
        return self


class PaymentReminderExperiments(_Strict):
    new: Experiment = Experiment()
    second: Experiment = Experiment()
    repeat: Experiment = Experiment()


class Experiments(_Strict):
    payment_reminder: PaymentReminderExperiments = PaymentReminderExperiments()


class Shop(_Strict):
    shop_id: Annotated[str, Field(min_length=1)]
    name: str = ""
    timezone: str = "Asia/Shanghai"
    # where a phone number written without a country code is (ISO 3166 alpha-2); default: timezone's country
    phone_region: str | None = Field(default=None, validate_default=True)
    locale: Literal["zh-CN", "en"] = "zh-CN"
    team_email: str = ""
    distribution_platforms: list[str] = ["fenxiao"]
    reminders: Reminders = Reminders()
    visits: Visits = Visits()
    source: Source | None = None              # [shops.source]: none, nothing is extracted
    experiments: Experiments = Experiments()   # [shops.experiments]: template experiments (§4, §8)

    @field_validator("experiments")
    @classmethod
    def _experiment_channels(cls, v: Experiments, info: ValidationInfo) -> Experiments:
        reminders = info.data.get("reminders")
        for segment in ("new", "second", "repeat"):
            channel = getattr(reminders.channels, segment) if reminders else None
            if getattr(v.payment_reminder, segment).variants and channel == "call":
                raise ValueError(f".payment_reminder.{segment}: segment {segment!r} is reminded by call "
                                 f"(reminders.channels.{segment}), which reads the call script, not payment_reminder/ "
                                 f"templates: remind it by sms or email, or remove the experiment")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        # a zone both sides know: the SQL models convert with DuckDB's ICU, Python with zoneinfo. ZoneInfo alone
        # also opens any file under /usr/share/zoneinfo ('localtime', 'posixrules', 'posix/…', a folder);
        # ICU matches names without regard to case, which ZoneInfo does not
        known = v in _duckdb_zones()
        if known:
            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError, OSError):
                known = False
        if not known:
            raise ValueError(f"{v!r} is not a known time zone (an IANA name like 'Asia/Shanghai')")
        return v

    @field_validator("phone_region")
    @classmethod
    def _phone_region(cls, v: str | None, info: ValidationInfo) -> str:
        from crm.phones import default_region, supported_regions

        if v is None:
            return default_region(info.data.get("timezone"))
        if v not in supported_regions():
            if v.upper() in supported_regions():
                raise ValueError(f"{v!r} is not a region code in capitals: write {v.upper()!r}")
            raise ValueError(f"{v!r} is not a region phone numbers know: an ISO 3166 alpha-2 code such as "
                             "'CN', 'US' or 'DE'")
        return v

    @property
    def display_name(self) -> str:
        return self.name or self.shop_id


class Gateway(_Strict):
    kind: Literal["webhook", "kannel"] = "webhook"
    # kind "webhook": the generic HTTP gateway
    webhook_url: str = "http://127.0.0.1:8080/send"
    token: str = ""
    signing_secret: str = ""               # whsec_<base64>: sign requests, verify receipts and replies
    # kind "kannel": Kannel's smsbox sendsms interface
    sendsms_url: str = "http://127.0.0.1:13013/cgi-bin/sendsms"
    username: str = ""
    password: str = ""
    sender: str = ""                       # the shop group's sender number or short code (Kannel's `from`)
    hooks_url: str = "http://127.0.0.1:8000"   # where the gateway reaches `crm serve` (receipts, replies)
    hook_key: str = ""                     # Kannel's hooks need key=<hook_key> when set
    # both
    timeout_seconds: Annotated[float, Field(gt=0)] = 10
    max_attempts: Annotated[int, Field(ge=1)] = 5
    concurrency: Annotated[int, Field(ge=1)] = 16
    backoff_seconds: Annotated[float, Field(ge=0)] = 0.5    # first retry waits up to this, doubling
    down_after: Annotated[int, Field(ge=1)] = 10            # messages in a row failing transiently: gateway down

    @field_validator("webhook_url", "sendsms_url", "hooks_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/]+", v):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v

    @field_validator("signing_secret")
    @classmethod
    def _secret(cls, v: str) -> str:
        import base64
        import binascii

        if not v:
            return v
        body = v.removeprefix("whsec_")
        try:
            key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
        except (ValueError, binascii.Error):
            key = b""
        if not v.startswith("whsec_") or not key:
            raise ValueError("must be whsec_ followed by base64 (the Standard Webhooks secret format)")
        return v


class Smtp(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1025
    sender: str = "crm@example.com"
    username: str = ""
    password: str = ""
    starttls: bool = False


class S3(_Strict):
    """[storage.s3]: the S3 service of an s3:// data_path (docs/rules.md §10)."""
    endpoint: str = ""                     # host[:port] of the S3 service, e.g. "127.0.0.1:5555"; AWS: "s3.amazonaws.com"
    key_id: str = ""
    secret: str = ""                       # better from CRM_S3_SECRET than from the file
    region: str = "us-east-1"
    url_style: Literal["path", "vhost"] = "path"
    use_ssl: bool = True

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if v and not re.match(r"^[A-Za-z0-9.\[\]:-]+$", v):
            raise ValueError(f"{v!r} is not a host[:port] (no http:// in front: use_ssl says which)")
        return v


class Storage(_Strict):
    """[storage] (docs/rules.md §10): the embedded DuckDB file (the default), or DuckLake with its catalog and the
    ops tables in PostgreSQL."""
    kind: Literal["duckdb", "ducklake"] = "duckdb"
    catalog: str = ""                      # ducklake: "postgres:<libpq connection string>" of DuckLake's catalog
    data_path: str = ""                    # ducklake: a folder, or "s3://bucket/prefix/"
    ops_dsn: str = ""                      # ducklake: the PostgreSQL database of the ops tables
    # ducklake: the shops split into this many partitions, each a lake of its own that one worker at a time writes
    # (crm/storage/partitions.py); a command names its partition (--partition / CRM_PARTITION)
    partitions: int = Field(1, ge=1, le=1024)
    # duckdb: from a file this big (MiB) on, the analysts' copy after a run is made in the background, just after
    # the run closes the file (copying takes ~1.6 s per GB here); 0: always in the background
    analytics_copy_background_mb: int = Field(256, ge=0)
    s3: S3 = S3()

    @field_validator("catalog")
    @classmethod
    def _catalog(cls, v: str) -> str:
        # never echo the value: it may carry a password
        if v and not v.startswith("postgres:"):
            raise ValueError('must be "postgres:" followed by a PostgreSQL connection string, e.g. '
                             '"postgres:dbname=crm_lake host=127.0.0.1 user=crm" (DuckLake\'s catalog lives in PostgreSQL)')
        return v

    @field_validator("data_path")
    @classmethod
    def _data_path(cls, v: str) -> str:
        scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", v)
        if scheme and scheme.group(1) != "s3":
            raise ValueError(f"{v!r}: the data path is a folder or s3://bucket/prefix/ (not {scheme.group(1)}://)")
        if scheme and not re.match(r"^s3://[^/\s]+", v):
            raise ValueError(f"{v!r} names no bucket: write s3://bucket/prefix/")
        return v

    @field_validator("ops_dsn")
    @classmethod
    def _ops_dsn(cls, v: str) -> str:
        if v and not (v.startswith(("postgresql://", "postgres://")) or "=" in v):
            raise ValueError('must be a PostgreSQL connection string: "postgresql://user@host:port/dbname" or '
                             '"dbname=crm host=… user=…"')
        return v

    @model_validator(mode="after")
    def _needs(self) -> "Storage":
        if self.kind == "ducklake":
            for key, example in (("catalog", '"postgres:dbname=crm_lake host=127.0.0.1 user=crm"'),
                                 ("data_path", '"data/lake/" or "s3://bucket/prefix/"'),
                                 ("ops_dsn", '"postgresql://crm@127.0.0.1:5432/crm"')):
                if not getattr(self, key):
                    raise ValueError(f'.{key}: required for kind = "ducklake" (e.g. {example})')
        if self.data_path.startswith("s3://"):
            for key in ("endpoint", "region"):
                if not getattr(self.s3, key):
                    raise ValueError(f".s3.{key}: required for an s3:// data_path (AWS itself: endpoint = "
                                     '"s3.amazonaws.com")')
        return self

    @property
    def on_s3(self) -> bool:
        return self.data_path.startswith("s3://")


class Settings(_Strict):
    shops: list[Shop]
    # shops that still have orders in the database but are no longer served: not planned, not an error
    retired_shops: list[Annotated[str, Field(min_length=1)]] = []
    gateway: Gateway = Gateway()
    smtp: Smtp = Smtp()
    storage: Storage = Storage()

    @field_validator("retired_shops")
    @classmethod
    def _retired(cls, v: list[str], info: ValidationInfo) -> list[str]:
        configured = {s.shop_id for s in info.data.get("shops") or []}
        seen: set[str] = set()
        for i, shop_id in enumerate(v):
            if shop_id in configured:
                raise ValueError(f"[{i}]: {shop_id!r} is also configured in [[shops]]: a shop is either "
                                 "configured or retired")
            if shop_id in seen:
                raise ValueError(f"[{i}]: {shop_id!r} is listed twice")
            seen.add(shop_id)
        return v

    @model_validator(mode="after")
    def _unique_shops(self) -> "Settings":
        seen: set[str] = set()
        for i, s in enumerate(self.shops):
            if s.shop_id in seen:
                raise _DuplicateShop(i, s.shop_id)
            seen.add(s.shop_id)
        return self

    def shop(self, shop_id: str) -> Shop:
        for s in self.shops:
            if s.shop_id == shop_id:
                return s
        raise KeyError(shop_id)


class _DuplicateShop(ValueError):
    def __init__(self, index: int, shop_id: str):
        super().__init__(f"duplicate shop_id {shop_id!r}")
        self.index, self.shop_id = index, shop_id


def _env_port(value: str) -> int:
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"{value!r} is not a whole number from 1 to 65535")
    return int(text)


# the key's path -> the environment variable that overrides it, and how its text becomes the key's type
_ENV: dict[tuple[str, ...], tuple[str, Any]] = {
    ("gateway", "webhook_url"): ("CRM_GATEWAY_URL", str),
    ("gateway", "token"): ("CRM_GATEWAY_TOKEN", str),
    ("gateway", "signing_secret"): ("CRM_GATEWAY_SIGNING_SECRET", str),
    ("gateway", "password"): ("CRM_KANNEL_PASSWORD", str),
    ("gateway", "hook_key"): ("CRM_HOOK_KEY", str),
    ("smtp", "host"): ("CRM_SMTP_HOST", str),
    ("smtp", "port"): ("CRM_SMTP_PORT", _env_port),
    ("smtp", "username"): ("CRM_SMTP_USER", str),
    ("smtp", "password"): ("CRM_SMTP_PASSWORD", str),
    # connection strings with their passwords, and the S3 credentials: kept out of the shops file
    ("storage", "catalog"): ("CRM_LAKE_CATALOG", str),
    ("storage", "ops_dsn"): ("CRM_OPS_DSN", str),
    ("storage", "s3", "key_id"): ("CRM_S3_KEY_ID", str),
    ("storage", "s3", "secret"): ("CRM_S3_SECRET", str),
}


def _where(raw: dict[str, Any], loc: tuple[Any, ...]) -> str:
    """Turn a pydantic error location into "shop 's2': reminders.lead_minutes"."""
    prefix = ""
    parts = list(loc)
    if len(parts) >= 2 and parts[0] == "shops" and isinstance(parts[1], int):
        idx = parts[1]
        shops = raw.get("shops") or []
        sid = shops[idx].get("shop_id") if idx < len(shops) and isinstance(shops[idx], dict) else None
        prefix = f"shop {sid!r}: " if sid else f"shops[{idx}]: "
        parts = parts[2:]
    key = ""
    for p in parts:
        key += f"[{p}]" if isinstance(p, int) else (f".{p}" if key else str(p))
    return prefix + (key or "(top level)")


# strict types: what a value of the wrong TOML type should have been
_WANTED = {"int_type": "must be a whole number", "float_type": "must be a number",
           "bool_type": "must be true or false", "model_type": "must be a table of keys",
           "dict_type": "must be a table of keys"}


def _message(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind in _WANTED:
        value, hint = err.get("input"), ""
        if isinstance(value, str) and kind in ("int_type", "float_type", "bool_type"):
            hint = ", written without quotes"
        elif isinstance(value, bool) and kind in ("int_type", "float_type"):
            hint = ", not true/false"
        return f"{_WANTED[kind]}{hint} (got {value!r})"
    msg = err.get("msg", "invalid")
    msg = re.sub(r"^(Value error|Assertion failed), ", "", msg)
    if kind.startswith(("greater_than", "less_than")) or kind in {"literal_error", "int_parsing", "float_parsing", "string_type", "bool_parsing", "int_from_float", "list_type"}:
        msg = f"{msg} (got {err.get('input')!r})"
    return msg


def parse_settings(raw: dict[str, Any], source: str = "<config>") -> Settings:
    """Validate an already-parsed TOML document; raise ConfigError with one line."""
    if not raw.get("shops"):
        raise ConfigError(f"{source}: no [[shops]] defined (see shops.example.toml)")
    raw, from_env = _apply_env(raw, source)
    try:
        return Settings.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _DuplicateShop):
            raise ConfigError(f"{source}: shops[{ctx_err.index}]: shop_id: duplicate shop_id {ctx_err.shop_id!r}") from None
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        loc = tuple(err["loc"])
        where, msg = _where(raw, loc), _message(err)
        var = next((v for path, v in from_env.items() if loc[:len(path)] == path), None)
        if var is None and loc == ("storage",):
            # a [storage] rule about a key the environment set: ".catalog: required …"
            for path, v in from_env.items():
                key = "." + ".".join(path[1:]) + ":"
                if path[0] == "storage" and msg.startswith(key):
                    var, where, msg = v, ".".join(path), msg[len(key):].strip()
                    break
        if var is not None:
            # the value came from the environment: name the variable, not the file
            raise ConfigError(f"{var}: {msg} (it sets {where}, overriding {source}){more}") from None
        sep = "" if msg.startswith(("[", ".")) else ": "
        raise ConfigError(f"{source}: {where}{sep}{msg}{more}") from None


def _apply_env(raw: dict[str, Any], source: str = "<config>") -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """The document with the environment's overrides, each converted to its key's type (one line naming the
    variable if it cannot be); and which key (its path) came from which variable."""
    raw = dict(raw)
    used: dict[tuple[str, ...], str] = {}
    for path, (var, convert) in _ENV.items():
        if var not in os.environ:
            continue
        try:
            value = convert(os.environ[var])
        except ValueError as e:
            raise ConfigError(f"{var}: {e} (it sets {'.'.join(path)}, overriding {source})") from None
        *tables, key = path
        parent, ok = raw, True
        for name in tables:                   # copy each table on the way down: the caller's document stays as it was
            table = parent.get(name)
            if table is not None and not isinstance(table, dict):
                ok = False                    # [section] is not a table: validation says so, naming the file
                break
            parent[name] = dict(table or {})
            parent = parent[name]
        if ok:
            parent[key] = value
            used[path] = var
    return raw, used


def load_settings(path: str | os.PathLike[str]) -> Settings:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: configuration file not found (pass --config or set CRM_CONFIG; an example is shops.example.toml)")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot be read: {e}") from None
    return parse_settings(raw, str(p))


def resolve_paths(db: str | None, config: str | None) -> tuple[Path, Path]:
    """--db/--config win over CRM_DB/CRM_CONFIG, which win over the defaults."""
    return (
        Path(db or os.environ.get("CRM_DB") or DEFAULT_DB),
        Path(config or os.environ.get("CRM_CONFIG") or DEFAULT_CONFIG),
    )
