"""Phone numbers in one form, E.164 (``+8613757333573``), however they were written.

Platforms export the same number as ``13757333573``, ``+86 137 5733 3573``, ``0086-137…``, ``86137…`` or in
full-width digits (``１３７…``); an opt-out must match all of them (docs/rules.md §1). Google's libphonenumber
(the ``phonenumbers`` package) does the parsing: text is NFKC-normalised first, then parsed with the shop's
``phone_region`` as the region of numbers written without a country code, and kept when its length is a
possible one for its country (``is_possible_number``: validity by number range is left out on purpose, so a
number in a range newer than the library's metadata still loads). Everything else is a reason, worded
without the number itself.

The staging SQL calls it through two DuckDB functions that :func:`register` creates on every connection
that stages (``crm.db.sync_shops``, which also makes the shop macros staging needs):

    crm_e164(text, region)           the number in E.164; NULL when it cannot be parsed (region NULL: only
                                     numbers with their country code parse)
    crm_phone_problem(text, region)  why not, e.g. 'unparsable phone: too short for a +86 number (5 digits)';
                                     NULL when it is a number

libphonenumber is Python, per value (no vectorised form): 13-22 µs to parse a new number, 13-22 s per
million distinct numbers, and DuckDB's call of a Python function costs ~1.6 µs a row more. So ``crm_e164``
is a SQL macro that first tries a *fast path* in plain SQL, vectorised (~1-2 µs a row), for the shapes
most numbers come in, and asks libphonenumber only for the rest (``crm_e164_lib``, a Python UDF; DuckDB's
coalesce calls it only for the rows the fast path left NULL). The fast path answers exactly what
libphonenumber answers, or nothing (tests/test_phones.py compares both on generated numbers of every
shape). It takes text of ASCII digits with an optional leading ``+`` and the separators `` ().-`` only
(anything else, full-width digits, letters, other separators, goes to libphonenumber), and:

* with ``+``, or ``00`` in a region whose international prefix is 00 (CN, DE, GB): a Chinese mobile ``+86
  1[3-9]…`` (11 digits), a NANP number ``+1 [2-9]xx [2-9]xx xxxx``, a German number ``+49 [1-9]…`` of 6 to 13
  digits after the country code, a UK mobile ``+44 7[1-9]…`` (10 digits), a Japanese mobile ``+81 [789]0…``
  (10 digits);
* written without the country code, in the shop's region: CN ``1[3-9]`` + 9 digits (also after a bare
  ``86``), US a NANP number (also after a leading ``1``), DE ``0`` + 6 to 13 digits not starting with 0,
  GB ``07[1-9]`` + 8 digits, JP ``0[789]0`` + 8 digits.

Chinese numbers starting ``179`` are left to libphonenumber (``179xx`` is a carrier prefix it may strip).
"""

from __future__ import annotations

import unicodedata
from functools import cache, lru_cache
from pathlib import Path

DEFAULT_REGION = "CN"

# the phonenumbers parse errors and impossible lengths, as reasons
_PARSE_REASON = {
    0: "unknown country code",                      # INVALID_COUNTRY_CODE
    1: "not a phone number",                        # NOT_A_NUMBER
    2: "too short after the international prefix",  # TOO_SHORT_AFTER_IDD
    3: "too short",                                 # TOO_SHORT_NSN
    4: "too long",                                  # TOO_LONG
}


@lru_cache(maxsize=1 << 17)
def parse(text: str, region: str | None) -> tuple[str | None, str | None]:
    """(E.164, None) for a number, or (None, why) for text that is not one. `region` (ISO 3166 alpha-2)
    places numbers written without a country code; None parses only international ones (+…)."""
    import phonenumbers as pn

    text = unicodedata.normalize("NFKC", text).strip()
    n = sum(c.isdigit() for c in text)
    digits = f"{n} digit{'' if n == 1 else 's'}"
    try:
        number = pn.parse(text, region or "ZZ")
    except pn.NumberParseException as e:
        why = _PARSE_REASON.get(e.error_type, "not a phone number")
        if e.error_type == 0 and not region and not text.startswith("+"):
            why = "no country code, and no region to place it in"
        return None, f"{why} ({digits})"
    reason = pn.is_possible_number_with_reason(number)
    if reason in (pn.ValidationResult.IS_POSSIBLE, pn.ValidationResult.IS_POSSIBLE_LOCAL_ONLY):
        return pn.format_number(number, pn.PhoneNumberFormat.E164), None
    length = {pn.ValidationResult.TOO_SHORT: "too short", pn.ValidationResult.TOO_LONG: "too long",
              pn.ValidationResult.INVALID_COUNTRY_CODE: "unknown country code"}.get(reason, "a length none has")
    return None, f"{length} for a +{number.country_code} number ({digits})"


def e164(text: str | None, region: str | None = DEFAULT_REGION) -> str | None:
    """The number in E.164, or None (also for None or blank text)."""
    if text is None or not text.strip():
        return None
    return parse(text, region)[0]


def problem(text: str | None, region: str | None = DEFAULT_REGION) -> str | None:
    """Why `text` is not a phone number (never quoting it), or None when it is one or is blank."""
    if text is None or not text.strip():
        return None
    why = parse(text, region)[1]
    return None if why is None else f"unparsable phone: {why}"


# --------------------------------------------------------------------------------------------------
# DuckDB


# The fast path (see the module's doc). `d` keeps a leading '+' and drops the separators.
FAST_PATH_SQL = r"""
CREATE OR REPLACE TEMP MACRO crm_e164_intl(i) AS
    CASE WHEN (regexp_full_match(i, '861[3-9][0-9]{9}') AND NOT starts_with(i, '86179'))
           OR regexp_full_match(i, '1[2-9][0-9]{2}[2-9][0-9]{6}')
           OR regexp_full_match(i, '49[1-9][0-9]{5,12}') OR regexp_full_match(i, '447[1-9][0-9]{8}')
           OR regexp_full_match(i, '81[789]0[0-9]{8}') THEN '+' || i END;
CREATE OR REPLACE TEMP MACRO crm_e164_digits(d, region) AS
    CASE WHEN d[1] = '+' THEN crm_e164_intl(d[2:])
         WHEN region IN ('CN', 'DE', 'GB') AND starts_with(d, '00') THEN crm_e164_intl(d[3:])
         WHEN region = 'CN' THEN CASE WHEN regexp_full_match(d, '(86)?1[3-9][0-9]{9}')
                                           AND NOT regexp_matches(d, '^(86)?179') THEN '+86' || right(d, 11) END
         WHEN region = 'US' THEN CASE WHEN regexp_full_match(d, '1?[2-9][0-9]{2}[2-9][0-9]{6}') THEN '+1' || right(d, 10) END
         WHEN region = 'DE' THEN CASE WHEN regexp_full_match(d, '0[1-9][0-9]{5,12}') THEN '+49' || d[2:] END
         WHEN region = 'GB' THEN CASE WHEN regexp_full_match(d, '07[1-9][0-9]{8}') THEN '+44' || d[2:] END
         WHEN region = 'JP' THEN CASE WHEN regexp_full_match(d, '0[789]0[0-9]{8}') THEN '+81' || d[2:] END END;
CREATE OR REPLACE TEMP MACRO crm_e164_fast(t, region) AS
    crm_e164_digits(CASE WHEN regexp_full_match(trim(t), '\+?\(?[0-9][0-9 ().-]*')
                         THEN regexp_replace(trim(t), '[^0-9+]', '', 'g') END, region);
CREATE OR REPLACE TEMP MACRO crm_e164(t, region) AS coalesce(crm_e164_fast(t, region), crm_e164_lib(t, region));
"""


def register(con) -> None:
    """Create crm_e164(text, region) and crm_phone_problem(text, region) on this connection (again: a no-op).

    crm_e164_lib and crm_phone_problem are DuckDB's "native" Python UDFs, which DuckDB calls once per value over
    each vector: libphonenumber has no vectorised form, so the per-value parse is the cost either way (the
    same ~17 s per million distinct numbers measured both ways). Not Arrow UDFs: DuckDB (up to 1.5.6 at least,
    duckdb/duckdb#20606) can keep pointers into the Arrow buffers a UDF returns after they are freed, and then
    stores garbage for strings longer than 12 bytes (an E.164 number is 12 to 16), e.g. under coalesce() with
    a subquery argument. crm_e164 is a macro: the fast path, else crm_e164_lib."""
    import duckdb

    for name, fn in (("crm_e164_lib", e164), ("crm_phone_problem", problem)):
        try:
            con.create_function(name, fn, ["VARCHAR", "VARCHAR"], "VARCHAR",
                                type="native", null_handling="special", side_effects=False)
        except duckdb.NotImplementedException as e:
            if "already created" not in str(e):
                raise
    con.execute(FAST_PATH_SQL)


# --------------------------------------------------------------------------------------------------
# a shop's default region from its time zone


def _zoneinfo_file(name: str) -> bytes | None:
    """The compiled zone file of `name`, found where zoneinfo finds it (TZPATH, then the tzdata package)."""
    import zoneinfo

    if not name or name.startswith("/") or ".." in name.split("/"):
        return None
    for base in zoneinfo.TZPATH:
        path = Path(base) / name
        if path.is_file():
            return path.read_bytes()
    try:
        from importlib.resources import files

        resource = files("tzdata").joinpath("zoneinfo", *name.split("/"))
        return resource.read_bytes() if resource.is_file() else None
    except (ModuleNotFoundError, OSError):
        return None


@cache
def _zone_tab() -> dict[str, str]:
    """zone.tab of the IANA time zone database: zone name -> its country (ISO 3166 alpha-2)."""
    text = _zoneinfo_file("zone.tab")
    zones = {}
    for line in (text or b"").decode("utf-8").splitlines():
        if line and not line.startswith("#"):
            fields = line.split("\t")
            if len(fields) >= 3:
                zones[fields[2]] = fields[0]
    return zones


@cache
def region_of_timezone(name: str) -> str | None:
    """The country of an IANA zone, when there is exactly one: zone.tab names each zone's country
    ('Asia/Shanghai' -> 'CN', 'Europe/Berlin' -> 'DE'); a name it does not list (a link such as
    'US/Eastern' or 'PRC') counts when its zone data is that of zones of one country only. None for
    zones of no country ('UTC', 'Etc/GMT-8') or of several, and for regions phonenumbers does not know."""
    import phonenumbers as pn

    zones = _zone_tab()
    region = zones.get(name)
    if region is None:
        data = _zoneinfo_file(name)
        if data is None:
            return None
        same = {country for zone, country in zones.items() if _zoneinfo_file(zone) == data}
        region = same.pop() if len(same) == 1 else None
    return region if region in pn.SUPPORTED_REGIONS else None


def default_region(timezone: str | None) -> str:
    """A shop's phone_region when its configuration has none: its zone's country, else 'CN'."""
    return (region_of_timezone(timezone) if timezone else None) or DEFAULT_REGION


def supported_regions() -> frozenset[str]:
    import phonenumbers as pn

    return frozenset(pn.SUPPORTED_REGIONS)


# --------------------------------------------------------------------------------------------------
# a database from before numbers were stored in E.164

_STORED = "E.164, e.g. +8613800138000 (crm.phones)"


def convert_stored(con) -> None:
    """Once per database, after ops.shops is synced: numbers staged before they were kept in E.164 are
    converted in place (a customer's by its shop's region; a suppression's by its customer's shop, else the
    first shop's), so that new rows match old ones. A number that cannot be parsed stays as it was. The
    column comment on staging.customers.phone records that it was done."""
    done = con.execute("SELECT comment FROM duckdb_columns() WHERE schema_name = 'staging' "
                       "AND table_name = 'customers' AND column_name = 'phone'").fetchone()
    if done is None or done[0] == _STORED:
        return
    register(con)
    con.execute("""
        UPDATE staging.customers AS c SET phone = coalesce(crm_e164(c.phone, shops.phone_region), c.phone)
        FROM ops.shops AS shops
        WHERE shops.shop_id = c.shop_id AND c.phone IS NOT NULL""")
    con.execute("""
        UPDATE staging.suppressions AS x SET phone = coalesce(crm_e164(x.phone, coalesce(
            (SELECT shops.phone_region FROM staging.customers AS c JOIN ops.shops AS shops USING (shop_id)
             WHERE c.customer_id = x.customer_id),
            (SELECT phone_region FROM ops.shops WHERE position = 0))), x.phone)
        WHERE x.phone IS NOT NULL""")
    con.execute(f"COMMENT ON COLUMN staging.customers.phone IS '{_STORED}'")
