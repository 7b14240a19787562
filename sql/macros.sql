-- Parsing helpers shared by the staging models; created as TEMP macros on every connection.
-- Each takes text already cleaned by crm_text (trimmed, blank = NULL), so nothing is trimmed twice.

-- blank text is missing
CREATE OR REPLACE TEMP MACRO crm_text(s) AS nullif(trim(s), '');
-- an ISO 8601 timestamp that carries its own offset ('Z', '+08', '+08:00', '+0800', '-05:00'):
-- after the date part (10 characters) a '+' or '-' can only start an offset
CREATE OR REPLACE TEMP MACRO crm_has_offset(t) AS
    length(t) > 10 AND (right(t, 1) IN ('Z', 'z') OR contains(t[11:], '+') OR contains(t[11:], '-'));
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
-- whole numbers only: '2' and '2.0' parse, '2.5' and 'two' do not (DuckDB's own cast rounds '2.5')
CREATE OR REPLACE TEMP MACRO crm_int(t) AS
    CASE WHEN NOT contains(t, '.') THEN try_cast(t AS INTEGER)
         WHEN try_cast(t AS DOUBLE) = floor(try_cast(t AS DOUBLE)) AND abs(try_cast(t AS DOUBLE)) < 2147483647
         THEN try_cast(try_cast(t AS DOUBLE) AS INTEGER) END;
CREATE OR REPLACE TEMP MACRO crm_money(t) AS try_cast(t AS DECIMAL(18, 2));
CREATE OR REPLACE TEMP MACRO crm_bool(t) AS
    CASE WHEN lower(t) IN ('true', 't', '1', 'yes', 'y') THEN true
         WHEN lower(t) IN ('false', 'f', '0', 'no', 'n') THEN false END;
-- a phone number compared by its digits (and a leading +)
CREATE OR REPLACE TEMP MACRO crm_phone(t) AS nullif(regexp_replace(t, '[^0-9+]', '', 'g'), '');

-- reason fragments: NULL when the value is fine
CREATE OR REPLACE TEMP MACRO crm_need(name, t) AS
    CASE WHEN t IS NULL THEN 'missing ' || name END;
CREATE OR REPLACE TEMP MACRO crm_unparsable(name, t, val) AS
    CASE WHEN t IS NOT NULL AND val IS NULL THEN 'unparsable ' || name || ' ' || to_json(t) END;
-- a row's shop must be configured (tz: the shop's zone from ops.shops, NULL when unknown)
CREATE OR REPLACE TEMP MACRO crm_shop_problem(shop, tz) AS
    CASE WHEN shop IS NULL THEN 'missing shop_id' WHEN tz IS NULL THEN 'unknown shop_id ' || to_json(shop) END;
CREATE OR REPLACE TEMP MACRO crm_required(name, t, val) AS
    CASE WHEN t IS NULL THEN 'missing ' || name
         WHEN val IS NULL THEN 'unparsable ' || name || ' ' || to_json(t) END;

-- docs/rules.md §3: hash01(x) = first 8 hex digits of md5(x) as an integer / 2^32, in [0, 1)
CREATE OR REPLACE TEMP MACRO hash01(x) AS CAST(('0x' || left(md5(x), 8)) AS UBIGINT) / 4294967296.0;
-- quiet hours [qs, qe) in minutes of the day, wrapping midnight when qs > qe; none when NULL or equal
CREATE OR REPLACE TEMP MACRO crm_in_quiet(m, qs, qe) AS
    CASE WHEN qs IS NULL OR qs = qe THEN false
         WHEN qs < qe THEN m >= qs AND m < qe
         ELSE m >= qs OR m < qe END;
