-- Parsing helpers shared by the staging models; created as TEMP macros on every connection.
-- Each takes text already cleaned by crm_text (trimmed, blank = NULL), so nothing is trimmed twice.

-- blank text is missing
CREATE OR REPLACE TEMP MACRO crm_text(s) AS nullif(trim(s), '');
-- an ISO 8601 timestamp that names its zone: an offset ('+08', '+08:00', '+0800', '-05:00') or 'Z', 'UTC',
-- 'GMT' (any case). After the date part (10 characters) a '+' or '-' can only start an offset
-- (one regular expression: ~3x faster than the same with right(), upper() and contains())
CREATE OR REPLACE TEMP MACRO crm_has_offset(t) AS
    length(t) > 10 AND regexp_matches(t, '(?s)^.{10}.*[+-]|(?i:z|utc|gmt)$');
-- a timestamp with its zone as an instant: Z, UTC and GMT are +00:00; a numeric offset must be one of the
-- world's (at most 14 hours, minutes below 60). Anything else is NULL: '+25:00', 'UTC+8' (which way?), and
-- a zone abbreviation ('CST': China's or Central?)
CREATE OR REPLACE TEMP MACRO crm_ts_aware(t) AS CASE
    WHEN regexp_matches(t, '[+-]((0[0-9]|1[0-3])(:?[0-5][0-9])?|14(:?00)?)$') THEN try_cast(t AS TIMESTAMPTZ)
    WHEN upper(right(t, 1)) = 'Z' THEN try_cast(rtrim(left(t, -1)) || '+00:00' AS TIMESTAMPTZ)
    WHEN upper(right(t, 3)) IN ('UTC', 'GMT') THEN try_cast(rtrim(left(t, -3)) || '+00:00' AS TIMESTAMPTZ) END;
-- a timestamp without zone, read as wall-clock time, ends in a digit (DuckDB's own cast would drop a zone
-- name it does not know, '… PST', and read the rest as local time)
CREATE OR REPLACE TEMP MACRO crm_is_wall_clock(t) AS right(t, 1) BETWEEN '0' AND '9';
-- text without a zone as a wall-clock timestamp; off is crm_has_offset(t), made a column of its own before:
-- the staging models type each timestamp in three steps (offset, wall clock, instant: crm_landed_ts), each
-- step's value a column, because a macro's argument is pasted into every use of it and the zone arithmetic
-- uses the wall-clock time up to nine times (an expression there would parse the text at each use)
CREATE OR REPLACE TEMP MACRO crm_wall_clock(t, off) AS
    CASE WHEN NOT off AND crm_is_wall_clock(t) THEN try_cast(t AS TIMESTAMP) END;
-- a local wall-clock time in zone tz as an instant. Across DST: a time that happens twice is the
-- first one, a time that does not exist takes the offset from before the change (Python's fold=0)
CREATE OR REPLACE TEMP MACRO crm_utc(l, tz) AS
    CASE WHEN timezone(tz, timezone(tz, l) - INTERVAL 1 HOUR) = l
         THEN timezone(tz, l) - INTERVAL 1 HOUR ELSE timezone(tz, l) END;
-- an instant as local wall-clock time, and its local date / minute of the day
CREATE OR REPLACE TEMP MACRO crm_local(ts, tz) AS timezone(tz, ts);
CREATE OR REPLACE TEMP MACRO crm_local_date(ts, tz) AS CAST(timezone(tz, ts) AS DATE);
CREATE OR REPLACE TEMP MACRO crm_minute_of_day(l) AS hour(l) * 60 + minute(l);
-- Per-shop versions (crm_shop_local, crm_shop_local_date, crm_shop_utc, crm_shop_ts) are generated from
-- the configuration by crm.db.sync_shops: one CASE branch per shop with its zone as a literal, because
-- DuckDB's timezone() is ~15x slower when the zone varies from row to row.
-- whole numbers: plain decimal digits with an optional sign; '2' and '2.0' parse, '2.5', 'two', '0x5', '0b101',
-- '1_000' and '1e0' do not (DuckDB's own cast reads all of those, and rounds '2.5')
CREATE OR REPLACE TEMP MACRO crm_int(t) AS
    CASE WHEN regexp_full_match(t, '[+-]?[0-9]+(\.0*)?') THEN try_cast(split_part(t, '.', 1) AS INTEGER) END;
-- amounts: plain decimal digits, an optional sign and decimal point (not '1_000', '1e2', '0x10'), to the cent
-- (crm_money_problem says when that is not exact)
CREATE OR REPLACE TEMP MACRO crm_money(t) AS
    CASE WHEN regexp_full_match(t, '[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)') THEN try_cast(t AS DECIMAL(18, 2)) END;
-- no decimal beyond the second but zeros ('12.50', '12.500', '12')
CREATE OR REPLACE TEMP MACRO crm_cents_exact(t) AS length(rtrim(split_part(t, '.', 2), '0')) <= 2;
CREATE OR REPLACE TEMP MACRO crm_bool(t) AS
    CASE WHEN lower(t) IN ('true', 't', '1', 'yes', 'y') THEN true
         WHEN lower(t) IN ('false', 'f', '0', 'no', 'n') THEN false END;
-- phone numbers: crm_e164(text, region) and crm_phone_problem(text, region) are Python (crm/phones.py),
-- created with the per-shop macros by crm.db.sync_shops

-- reason fragments: NULL when the value is fine.
-- crm_echo: the value as a reason quotes it (' "yesterday"'), or '' where it may be personal data: never for
-- names, contacts, addresses or free text, nor for a value that looks like an e-mail or a phone number in any
-- column (an '@', or more than 8 digits without the ':' of a time). The row itself stays in ops.quarantine.row.
CREATE OR REPLACE TEMP MACRO crm_echo(name, t) AS
    CASE WHEN name IN ('name', 'phone', 'email', 'city', 'receiver_city', 'text', 'reason', 'address')
              OR contains(t, '@')
              OR (NOT contains(t, ':') AND length(regexp_replace(t, '[^0-9]', '', 'g')) > 8)
         THEN '' ELSE ' ' || to_json(left(t, 40)) END;
CREATE OR REPLACE TEMP MACRO crm_need(name, t) AS
    CASE WHEN t IS NULL THEN 'missing ' || name END;
CREATE OR REPLACE TEMP MACRO crm_unparsable(name, t, val) AS
    CASE WHEN t IS NOT NULL AND val IS NULL THEN 'unparsable ' || name || crm_echo(name, t) END;
-- a row's shop must be configured (tz: the shop's zone from ops.shops, NULL when unknown)
CREATE OR REPLACE TEMP MACRO crm_shop_problem(shop, tz) AS
    CASE WHEN shop IS NULL THEN 'missing shop_id' WHEN tz IS NULL THEN 'unknown shop_id' || crm_echo('shop_id', shop) END;
-- (t NULL and val set: the value came typed from Parquet, transforms/ingest.py TYPED_KIND)
CREATE OR REPLACE TEMP MACRO crm_required(name, t, val) AS
    CASE WHEN t IS NULL AND val IS NULL THEN 'missing ' || name
         WHEN val IS NULL THEN 'unparsable ' || name || crm_echo(name, t) END;
-- an amount must not be negative (judged on the text, before rounding: '-0.001' is negative) and must be
-- exact to the cent: '12.345' is refused, not rounded (a third decimal means a wrong column or unit more
-- often than a rounding to do). Beyond the 10th place, the binary noise of a float number (0.1 + 0.2 =
-- 0.30000000000000004) is not a decimal of its own: that is 0.30.
CREATE OR REPLACE TEMP MACRO crm_money_problem(name, t) AS
    CASE WHEN crm_money(t) IS NULL THEN NULL
         WHEN starts_with(t, '-') AND regexp_matches(t, '[1-9]')
         THEN 'negative ' || name || ' ' || CASE WHEN crm_cents_exact(t) THEN crm_money(t)::VARCHAR ELSE t END
         WHEN NOT crm_cents_exact(t) AND try_cast(t AS DECIMAL(38, 10)) <> crm_money(t)
         THEN name || ' has more than 2 decimals: ' || t END;

-- docs/rules.md §3: hash01(x) = first 8 hex digits of md5(x) as an integer / 2^32, in [0, 1)
CREATE OR REPLACE TEMP MACRO hash01(x) AS CAST(('0x' || left(md5(x), 8)) AS UBIGINT) / 4294967296.0;
-- quiet hours [qs, qe) in minutes of the day, wrapping midnight when qs > qe; none when NULL or equal
CREATE OR REPLACE TEMP MACRO crm_in_quiet(m, qs, qe) AS
    CASE WHEN qs IS NULL OR qs = qe THEN false
         WHEN qs < qe THEN m >= qs AND m < qe
         ELSE m >= qs OR m < qe END;

-- docs/rules.md §8: 95% intervals for the paid rates of the payment reminders' effect. z is the normal
-- distribution's 97.5% point. Wilson's score interval for k of n (NULL when n = 0; Newcombe 1998, method 3):
CREATE OR REPLACE TEMP MACRO crm_z95() AS 1.959963984540054;
CREATE OR REPLACE TEMP MACRO crm_wilson_low(k, n) AS CASE WHEN n > 0 THEN greatest(0.0,
    (k::DOUBLE / n + pow(crm_z95(), 2) / (2 * n)
     - crm_z95() * sqrt(k::DOUBLE / n * (1 - k::DOUBLE / n) / n + pow(crm_z95(), 2) / (4 * pow(n, 2))))
    / (1 + pow(crm_z95(), 2) / n)) END;
CREATE OR REPLACE TEMP MACRO crm_wilson_high(k, n) AS CASE WHEN n > 0 THEN least(1.0,
    (k::DOUBLE / n + pow(crm_z95(), 2) / (2 * n)
     + crm_z95() * sqrt(k::DOUBLE / n * (1 - k::DOUBLE / n) / n + pow(crm_z95(), 2) / (4 * pow(n, 2))))
    / (1 + pow(crm_z95(), 2) / n)) END;
-- the difference k1/n1 - k2/n2 and its interval by Newcombe's hybrid score method (Newcombe 1998, method 10),
-- from the two Wilson intervals
CREATE OR REPLACE TEMP MACRO crm_newcombe_low(k1, n1, k2, n2) AS CASE WHEN n1 > 0 AND n2 > 0 THEN
    k1::DOUBLE / n1 - k2::DOUBLE / n2
    - sqrt(pow(k1::DOUBLE / n1 - crm_wilson_low(k1, n1), 2) + pow(crm_wilson_high(k2, n2) - k2::DOUBLE / n2, 2)) END;
CREATE OR REPLACE TEMP MACRO crm_newcombe_high(k1, n1, k2, n2) AS CASE WHEN n1 > 0 AND n2 > 0 THEN
    k1::DOUBLE / n1 - k2::DOUBLE / n2
    + sqrt(pow(crm_wilson_high(k1, n1) - k1::DOUBLE / n1, 2) + pow(k2::DOUBLE / n2 - crm_wilson_low(k2, n2), 2)) END;
-- an order's outcome at T for the reminders' effect (docs/rules.md §8): known when it can no longer change (paid,
-- closed, or past the platform's auto-close), and paid before closing (paid at T, before the auto-close and not
-- after closed_at; such an order is always known)
CREATE OR REPLACE TEMP MACRO crm_outcome_known(paid_at, closed_at, created_at, auto_close_minutes, t) AS
    paid_at <= t or closed_at <= t or created_at + to_minutes(auto_close_minutes) <= t;
CREATE OR REPLACE TEMP MACRO crm_paid_before_close(paid_at, closed_at, created_at, auto_close_minutes, t) AS
    coalesce(paid_at <= t and paid_at < created_at + to_minutes(auto_close_minutes)
             and (closed_at is null or paid_at <= closed_at), false);
-- too small: a comparison is made only when each of its two groups has at least this many orders whose outcome
-- is known; below it the difference and its interval are NULL and the status says 'too_small'
CREATE OR REPLACE TEMP MACRO crm_effect_min_known() AS 30;
CREATE OR REPLACE TEMP MACRO crm_effect_status(n1, n2) AS
    CASE WHEN n1 >= crm_effect_min_known() AND n2 >= crm_effect_min_known() THEN 'ok' ELSE 'too_small' END;
