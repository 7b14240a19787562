-- Parsing helpers shared by the staging models; created as TEMP macros on every connection.
-- blank text is missing
CREATE OR REPLACE TEMP MACRO crm_text(s) AS nullif(trim(s), '');
-- an ISO 8601 timestamp that carries its own offset ('Z', '+08', '+08:00', '+0800')
CREATE OR REPLACE TEMP MACRO crm_has_offset(s) AS
    regexp_matches(s, '[T ]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?\s*([Zz]|[+-]\d{2}(:?\d{2})?)$');
-- with an offset: absolute; without one: local time in zone tz (correct across DST)
CREATE OR REPLACE TEMP MACRO crm_ts(s, tz) AS
    CASE WHEN crm_text(s) IS NULL THEN NULL
         WHEN crm_has_offset(trim(s)) THEN try_cast(trim(s) AS TIMESTAMPTZ)
         ELSE timezone(tz, try_cast(trim(s) AS TIMESTAMP)) END;
-- whole numbers only: '2' and '2.0' parse, '2.5' and 'two' do not
CREATE OR REPLACE TEMP MACRO crm_int(s) AS
    CASE WHEN try_cast(trim(s) AS DOUBLE) = floor(try_cast(trim(s) AS DOUBLE))
              AND abs(try_cast(trim(s) AS DOUBLE)) < 2147483647
         THEN try_cast(try_cast(trim(s) AS DOUBLE) AS INTEGER) END;
CREATE OR REPLACE TEMP MACRO crm_money(s) AS try_cast(trim(s) AS DECIMAL(18, 2));
CREATE OR REPLACE TEMP MACRO crm_bool(s) AS
    CASE WHEN crm_text(s) IS NULL THEN NULL
         WHEN lower(trim(s)) IN ('true', 't', '1', 'yes', 'y') THEN true
         WHEN lower(trim(s)) IN ('false', 'f', '0', 'no', 'n') THEN false END;
-- reason fragments: NULL when the value is fine
CREATE OR REPLACE TEMP MACRO crm_need(name, raw) AS
    CASE WHEN crm_text(raw) IS NULL THEN 'missing ' || name END;
CREATE OR REPLACE TEMP MACRO crm_unparsable(name, raw, val) AS
    CASE WHEN crm_text(raw) IS NOT NULL AND val IS NULL THEN 'unparsable ' || name || ' ' || to_json(raw) END;
CREATE OR REPLACE TEMP MACRO crm_required(name, raw, val) AS
    coalesce(crm_need(name, raw), crm_unparsable(name, raw, val));
