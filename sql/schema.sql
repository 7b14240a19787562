-- The one DuckDB file's layout. Idempotent: run on every write connection.
-- staging: typed, de-duplicated inputs (newest version of each key wins)
-- marts:   analysis tables written by a plan
-- ops:     operational state (manifest, quarantine, messages, validation results)
CREATE SCHEMA IF NOT EXISTS staging;
CREATE SCHEMA IF NOT EXISTS marts;
CREATE SCHEMA IF NOT EXISTS ops;

-- ops.shops (the configured shops, typed) and ops.retired_shops (the top-level retired_shops) are rebuilt
-- from the config file by crm.db.sync_shops before each load or plan when the configuration changed
-- (ops.shops_fingerprint); the SQL models join ops.shops for
-- time zones and settings, so a shop missing from it is not planned (transforms/plan.py refuses to plan
-- while the orders of a shop that is neither configured nor retired are in the database).

-- what each ingest run read
CREATE SEQUENCE IF NOT EXISTS ops.ingest_run_seq START 1;
CREATE TABLE IF NOT EXISTS ops.ingest_runs (
    ingest_id       INTEGER PRIMARY KEY,
    landing_dir     VARCHAR NOT NULL,
    started_at      TIMESTAMPTZ NOT NULL,
    finished_at     TIMESTAMPTZ,
    files_seen      INTEGER,
    files_new       INTEGER,
    rows_loaded     BIGINT,
    rows_quarantined BIGINT,
    status          VARCHAR                   -- 'ok', 'failed_validation'
);

-- the manifest: one row per file content ever loaded (a renamed copy has the same hash)
CREATE TABLE IF NOT EXISTS ops.ingested_files (
    file_hash       VARCHAR PRIMARY KEY,      -- sha256 of the bytes
    entity          VARCHAR NOT NULL,
    path            VARCHAR NOT NULL,         -- where it was first seen
    size_bytes      BIGINT NOT NULL,
    format          VARCHAR NOT NULL,         -- parquet, csv, ndjson
    rows_read       BIGINT NOT NULL,
    rows_quarantined BIGINT NOT NULL,
    status          VARCHAR NOT NULL,         -- 'loaded' or 'quarantined' (unreadable as a whole)
    ingest_id       INTEGER NOT NULL,
    loaded_at       TIMESTAMPTZ NOT NULL
);
-- the lake's partition whose run loaded it (crm/storage/partitions.py; each partition loads a content once, and on
-- such a lake the key is (file_hash, lake_partition)); NULL: the file, or a lake without partitions
ALTER TABLE ops.ingest_runs ADD COLUMN IF NOT EXISTS lake_partition INTEGER;
ALTER TABLE ops.ingested_files ADD COLUMN IF NOT EXISTS lake_partition INTEGER;

-- the hash of each path as last seen: a file whose size, mtime, ctime and inode are unchanged is not read
-- again to hash it (transforms/ingest.py select_new); only a cache, the manifest above decides what is new
CREATE TABLE IF NOT EXISTS ops.file_hashes (
    path            VARCHAR PRIMARY KEY,
    size_bytes      BIGINT NOT NULL,
    mtime_ns        BIGINT NOT NULL,
    ctime_ns        BIGINT NOT NULL,
    inode           BIGINT NOT NULL,
    file_hash       VARCHAR NOT NULL
);

-- where each shop's extraction from its platform stands (crm/sources, docs/rules.md §11): everything the platform
-- changed before `watermark` has been written to the landing folder; the next run starts overlap_minutes before it
CREATE TABLE IF NOT EXISTS ops.source_watermarks (
    shop_id         VARCHAR NOT NULL,
    source          VARCHAR NOT NULL,         -- the [shops.source] kind: taobao, shopify
    watermark       TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,     -- real time it last moved
    PRIMARY KEY (shop_id, source)
);

-- the configuration ops.shops was last written from (crm/db.py sync_shops): it is written again only when this changes
CREATE TABLE IF NOT EXISTS ops.shops_fingerprint (fingerprint VARCHAR);

-- every rejected input row, with its file and the reason; never silently dropped
CREATE TABLE IF NOT EXISTS ops.quarantine (
    entity          VARCHAR NOT NULL,
    source_file     VARCHAR NOT NULL,
    row_number      BIGINT,                   -- data row in the file (1 = first row after a header); NULL: whole file
    "row"           VARCHAR,                  -- the row as it was read (JSON object, or the raw line)
    reason          VARCHAR NOT NULL,
    ingest_id       INTEGER,
    loaded_at       TIMESTAMPTZ NOT NULL
);

-- Great Expectations results, one row per expectation per run
CREATE TABLE IF NOT EXISTS ops.validation_results (
    run_kind        VARCHAR NOT NULL,         -- 'ingest', 'plan', 'dispatch'
    run_ref         VARCHAR NOT NULL,         -- ingest_id or as_of
    suite           VARCHAR NOT NULL,
    expectation     VARCHAR NOT NULL,
    column_name     VARCHAR,
    critical        BOOLEAN NOT NULL,
    success         BOOLEAN NOT NULL,
    element_count   BIGINT,
    unexpected_count BIGINT,
    checked_at      TIMESTAMPTZ NOT NULL
);

-- staged inputs (docs/rules.md §1), typed; _ingest_id/_file_ord/_row_number say where the winning version came from
CREATE TABLE IF NOT EXISTS staging.orders (
    order_id VARCHAR NOT NULL, shop_id VARCHAR NOT NULL, customer_id VARCHAR NOT NULL, platform VARCHAR NOT NULL,
    created_at TIMESTAMPTZ NOT NULL, paid_at TIMESTAMPTZ, shipped_at TIMESTAMPTZ, delivered_at TIMESTAMPTZ,
    closed_at TIMESTAMPTZ, refunded_at TIMESTAMPTZ,
    total_amount DECIMAL(18, 2) NOT NULL, currency VARCHAR NOT NULL, receiver_city VARCHAR,
    updated_at TIMESTAMPTZ NOT NULL,
    _source_file VARCHAR, _ingest_id INTEGER, _file_ord INTEGER, _row_number BIGINT
);
CREATE TABLE IF NOT EXISTS staging.order_items (
    order_id VARCHAR NOT NULL, line_no INTEGER NOT NULL, product_id VARCHAR NOT NULL,
    quantity INTEGER NOT NULL, unit_price DECIMAL(18, 2) NOT NULL,
    _source_file VARCHAR, _ingest_id INTEGER, _file_ord INTEGER, _row_number BIGINT
);
CREATE TABLE IF NOT EXISTS staging.products (
    product_id VARCHAR NOT NULL, shop_id VARCHAR NOT NULL, title VARCHAR NOT NULL, category VARCHAR NOT NULL,
    style_tags VARCHAR[], followup_days INTEGER,
    _source_file VARCHAR, _ingest_id INTEGER, _file_ord INTEGER, _row_number BIGINT
);
CREATE TABLE IF NOT EXISTS staging.customers (
    customer_id VARCHAR NOT NULL, shop_id VARCHAR NOT NULL, name VARCHAR NOT NULL, phone VARCHAR, email VARCHAR,
    city VARCHAR, member_level INTEGER NOT NULL, registered_at TIMESTAMPTZ NOT NULL, opt_out BOOLEAN NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    _source_file VARCHAR, _ingest_id INTEGER, _file_ord INTEGER, _row_number BIGINT
);
CREATE TABLE IF NOT EXISTS staging.reviews (
    order_id VARCHAR NOT NULL, created_at TIMESTAMPTZ NOT NULL, rating INTEGER NOT NULL, text VARCHAR,
    _source_file VARCHAR, _ingest_id INTEGER, _file_ord INTEGER, _row_number BIGINT
);
CREATE TABLE IF NOT EXISTS staging.suppressions (
    customer_id VARCHAR, phone VARCHAR, email VARCHAR, channel VARCHAR NOT NULL,
    created_at TIMESTAMPTZ NOT NULL, reason VARCHAR,
    _source_file VARCHAR, _ingest_id INTEGER, _file_ord INTEGER, _row_number BIGINT
);

-- messages: the transactional outbox; only a dispatching run writes it (docs/rules.md §6)
CREATE TABLE IF NOT EXISTS ops.messages (
    message_id      VARCHAR PRIMARY KEY,      -- deterministic: purpose + order
    purpose         VARCHAR NOT NULL,         -- payment_reminder, followup, feedback_summary
    shop_id         VARCHAR NOT NULL,
    order_id        VARCHAR,
    customer_id     VARCHAR,
    channel         VARCHAR NOT NULL,         -- sms, email, call, chat
    recipient       VARCHAR,
    body            VARCHAR,
    status          VARCHAR NOT NULL,         -- queued, sent, failed, done
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      TIMESTAMPTZ NOT NULL,     -- logical time: derived from the run's T
    sent_at         TIMESTAMPTZ,              -- real time
    template        VARCHAR,
    as_of           TIMESTAMPTZ,              -- the T of the dispatch that created it
    last_error      VARCHAR,                  -- the gateway's or SMTP server's last answer
    segments        INTEGER                   -- SMS parts the body needs (1 = one segment)
);

-- plans: one row per T planned (a backfill re-run skips the T it already did)
CREATE TABLE IF NOT EXISTS ops.plan_runs (
    as_of           TIMESTAMPTZ NOT NULL,
    planned_at      TIMESTAMPTZ NOT NULL,
    backfill_key    VARCHAR,                  -- from/to/every of the backfill that planned it, if any
    unpaid_orders   BIGINT,
    reminders       BIGINT,
    visit_tasks     BIGINT,
    seconds         DOUBLE
);

-- marts (docs/rules.md §6): written by a plan, one set of rows per T
-- marts.customer_segments is a view (crm.db.connect creates it): these rows, all as of one T, so a
-- plan at a newer T rewrites only the customers whose orders changed (transforms.plan.refresh_segments)
CREATE TABLE IF NOT EXISTS ops.segment_rows (
    shop_id VARCHAR NOT NULL, customer_id VARCHAR NOT NULL,
    paid_orders BIGINT NOT NULL, lifetime_value DECIMAL(18, 2) NOT NULL, last_paid_at TIMESTAMPTZ,
    member_level INTEGER, segment VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS ops.segment_state (
    as_of           TIMESTAMPTZ NOT NULL,     -- the T every row of ops.segment_rows is as of
    last_ingest_id  INTEGER NOT NULL          -- the newest ingest those rows have seen
);
-- customers whose orders moved to another customer or shop in an ingest: recomputed by the next plan
CREATE TABLE IF NOT EXISTS ops.segment_dirty (shop_id VARCHAR, customer_id VARCHAR);
CREATE TABLE IF NOT EXISTS marts.reminder_decisions (
    as_of TIMESTAMPTZ NOT NULL, shop_id VARCHAR NOT NULL, order_id VARCHAR NOT NULL, customer_id VARCHAR NOT NULL,
    segment VARCHAR NOT NULL, decision VARCHAR NOT NULL, reason VARCHAR, channel VARCHAR,
    send_at TIMESTAMPTZ, template VARCHAR,
    -- context for analysts
    created_at TIMESTAMPTZ, deadline TIMESTAMPTZ, prior_purchases BIGINT, total_amount DECIMAL(18, 2),
    platform VARCHAR, style_tag VARCHAR,
    variant VARCHAR                           -- the template experiment's variant ([shops.experiments])
);
CREATE TABLE IF NOT EXISTS marts.visit_tasks (
    as_of TIMESTAMPTZ NOT NULL, shop_id VARCHAR NOT NULL, order_id VARCHAR NOT NULL, customer_id VARCHAR NOT NULL,
    tier VARCHAR NOT NULL, rank BIGINT NOT NULL, channel VARCHAR, due_at TIMESTAMPTZ NOT NULL,
    -- context for agents and analysts
    trigger_at TIMESTAMPTZ, due_date DATE, total_amount DECIMAL(18, 2), rating INTEGER, review_text VARCHAR
);

-- columns added after the first release of a table (no-ops on a new file)
ALTER TABLE ops.messages ADD COLUMN IF NOT EXISTS segments INTEGER;
-- until when a queued message is still worth sending (a reminder: its order's deadline; a follow-up: the
-- end of its due day); NULL: no limit (calls, reports). A send at a T past it fails the message instead.
ALTER TABLE ops.messages ADD COLUMN IF NOT EXISTS expires_at TIMESTAMPTZ;
-- a follow-up's visit task as the plan that created the message saw it: the agents' context stays put
-- whatever is planned later
ALTER TABLE ops.messages ADD COLUMN IF NOT EXISTS tier VARCHAR;
ALTER TABLE ops.messages ADD COLUMN IF NOT EXISTS rank BIGINT;
ALTER TABLE ops.messages ADD COLUMN IF NOT EXISTS rating INTEGER;
ALTER TABLE ops.messages ADD COLUMN IF NOT EXISTS review_text VARCHAR;
-- what the delivery receipts said (docs/rules.md §7): 'delivered' or 'undelivered', once set never changed
ALTER TABLE ops.messages ADD COLUMN IF NOT EXISTS delivery VARCHAR;
ALTER TABLE ops.messages ADD COLUMN IF NOT EXISTS delivered_at TIMESTAMPTZ;
-- a payment reminder's segment and template experiment variant, as its decision had them (docs/rules.md §4, §8)
ALTER TABLE ops.messages ADD COLUMN IF NOT EXISTS customer_segment VARCHAR;
ALTER TABLE ops.messages ADD COLUMN IF NOT EXISTS variant VARCHAR;
ALTER TABLE marts.reminder_decisions ADD COLUMN IF NOT EXISTS variant VARCHAR;

-- what the gateways told us back (crm/hooks.py, docs/rules.md §7): every receipt and reply is kept
CREATE TABLE IF NOT EXISTS ops.delivery_receipts (
    receipt_id      VARCHAR PRIMARY KEY,      -- one per request received (the hooks' spool line)
    message_id      VARCHAR,                  -- as the gateway gave it; an unknown one is kept too
    status          VARCHAR NOT NULL,         -- delivered, undelivered, rejected, accepted, buffered (Kannel %d)
    gateway         VARCHAR NOT NULL,         -- kannel, webhook
    reported_at     TIMESTAMPTZ,              -- when the gateway says it happened (webhook 'at')
    received_at     TIMESTAMPTZ NOT NULL,
    raw             VARCHAR                   -- the request as received (query or body)
);
CREATE TABLE IF NOT EXISTS ops.replies (
    reply_id        VARCHAR PRIMARY KEY,
    sender          VARCHAR,                  -- the customer's number (E.164 when it parses)
    recipient       VARCHAR,                  -- our number or short code it was sent to
    text            VARCHAR,                  -- decoded with the charset Kannel gave
    replied_at      TIMESTAMPTZ,              -- the reply's time (Kannel %T, webhook 'at')
    received_at     TIMESTAMPTZ NOT NULL,
    opt_out         BOOLEAN NOT NULL,         -- one of the opt-out words (crm.hooks.opt_out_word)
    gateway         VARCHAR NOT NULL,
    raw             VARCHAR
);
-- opt-outs by reply, read by plans and dispatches exactly like staging.suppressions
CREATE TABLE IF NOT EXISTS ops.suppressions (
    customer_id VARCHAR, phone VARCHAR, email VARCHAR, channel VARCHAR NOT NULL,
    created_at TIMESTAMPTZ NOT NULL, reason VARCHAR,
    reply_id        VARCHAR                   -- the reply it came from
);

-- visit outcomes (docs/rules.md §5, §6): one row per recorded visit; an order can have several (not reached,
-- called back later, reached)
CREATE TABLE IF NOT EXISTS ops.visit_outcomes (
    order_id        VARCHAR NOT NULL,
    reached         BOOLEAN NOT NULL,
    quality         VARCHAR,                  -- good, issue, n/a
    logistics       VARCHAR,
    packaging       VARCHAR,
    service         VARCHAR,
    suggestion      VARCHAR,
    gift            BOOLEAN NOT NULL DEFAULT false,
    compensation    VARCHAR NOT NULL DEFAULT 'none',   -- none, coupon, free_shipping, …
    recorded_at     TIMESTAMPTZ NOT NULL,
    -- extras
    shop_id         VARCHAR,
    callback_at     TIMESTAMPTZ,              -- not reached: when to call again
    agent           VARCHAR,
    message_id      VARCHAR                   -- the call task it closes
);

-- docs/rules.md §8: written by a plan at the newest T (as_of), refreshed incrementally (ops.report_state below)
CREATE TABLE IF NOT EXISTS marts.feedback_summary (
    as_of TIMESTAMPTZ NOT NULL, shop_id VARCHAR NOT NULL, period VARCHAR NOT NULL, period_start DATE NOT NULL,
    visits_planned BIGINT NOT NULL, reached BIGINT NOT NULL,
    quality_issues BIGINT NOT NULL, logistics_issues BIGINT NOT NULL, packaging_issues BIGINT NOT NULL,
    service_issues BIGINT NOT NULL, gifts BIGINT NOT NULL, compensations BIGINT NOT NULL, suggestions BIGINT NOT NULL,
    -- reach per channel: visits planned by channel, calls an agent recorded, automatic follow-ups sent
    calls_planned BIGINT NOT NULL, sms_planned BIGINT NOT NULL, email_planned BIGINT NOT NULL,
    no_channel_planned BIGINT NOT NULL, calls_attempted BIGINT NOT NULL, sms_sent BIGINT NOT NULL,
    email_sent BIGINT NOT NULL
);
-- per shop, local day, segment and channel, with segment and channel 'all' for the day's totals (never sum those
-- with the others); marts.reminder_effect is a view (crm.db.connect creates it): the 'all' rows, one per shop and
-- local day, without the segment and channel columns
CREATE TABLE IF NOT EXISTS marts.reminder_effect_segments (
    as_of TIMESTAMPTZ NOT NULL, shop_id VARCHAR NOT NULL, day DATE NOT NULL,
    orders_reminded BIGINT NOT NULL, reminded_paid_before_close BIGINT NOT NULL,
    recovered_amount DECIMAL(18, 2) NOT NULL,
    orders_held_out BIGINT NOT NULL, held_out_paid_before_close BIGINT NOT NULL,
    -- outcome known at T (paid, closed or past auto-close) or still open; reminders planned but not made
    orders_reminded_known BIGINT NOT NULL, orders_reminded_open BIGINT NOT NULL, reminders_not_made BIGINT NOT NULL,
    orders_held_out_known BIGINT NOT NULL, orders_held_out_open BIGINT NOT NULL,
    -- per segment and channel ('all': the shop's day); the lift: orders assigned a reminder (made or not) against
    -- the held out, with 95% intervals (NULL and effect_status 'too_small' when a group is too small)
    segment VARCHAR NOT NULL DEFAULT 'all', channel VARCHAR NOT NULL DEFAULT 'all',
    orders_assigned_known BIGINT NOT NULL DEFAULT 0, orders_assigned_open BIGINT NOT NULL DEFAULT 0,
    assigned_paid_before_close BIGINT NOT NULL DEFAULT 0, assigned_known_amount DECIMAL(18, 2) NOT NULL DEFAULT 0,
    reminded_paid_rate DOUBLE, assigned_paid_rate DOUBLE, held_out_paid_rate DOUBLE,
    lift DOUBLE, lift_low DOUBLE, lift_high DOUBLE,
    implied_recovered_amount DECIMAL(18, 2), implied_recovered_low DECIMAL(18, 2), implied_recovered_high DECIMAL(18, 2),
    effect_status VARCHAR NOT NULL DEFAULT 'too_small'
);
-- per shop, local day, segment and template experiment variant (docs/rules.md §8): the variants' paid rates
CREATE TABLE IF NOT EXISTS marts.reminder_variants (
    as_of TIMESTAMPTZ NOT NULL, shop_id VARCHAR NOT NULL, day DATE NOT NULL, segment VARCHAR NOT NULL,
    variant VARCHAR NOT NULL,
    orders_assigned BIGINT NOT NULL, orders_known BIGINT NOT NULL, orders_open BIGINT NOT NULL,
    paid_before_close BIGINT NOT NULL, paid_rate DOUBLE, paid_rate_low DOUBLE, paid_rate_high DOUBLE,
    -- against the experiment's first variant
    reference_variant VARCHAR, difference DOUBLE, difference_low DOUBLE, difference_high DOUBLE,
    status VARCHAR NOT NULL
);
-- their columns added after the first release (no-ops on a new file; a plan rebuilds the tables whole). The columns
-- the first release's marts.reminder_effect (a table) gained are reminder_effect_segments' now; that table is
-- replaced by the view after these (crm/db.py)
ALTER TABLE marts.feedback_summary ADD COLUMN IF NOT EXISTS calls_planned BIGINT DEFAULT 0;
ALTER TABLE marts.feedback_summary ADD COLUMN IF NOT EXISTS sms_planned BIGINT DEFAULT 0;
ALTER TABLE marts.feedback_summary ADD COLUMN IF NOT EXISTS email_planned BIGINT DEFAULT 0;
ALTER TABLE marts.feedback_summary ADD COLUMN IF NOT EXISTS no_channel_planned BIGINT DEFAULT 0;
ALTER TABLE marts.feedback_summary ADD COLUMN IF NOT EXISTS calls_attempted BIGINT DEFAULT 0;
ALTER TABLE marts.feedback_summary ADD COLUMN IF NOT EXISTS sms_sent BIGINT DEFAULT 0;
ALTER TABLE marts.feedback_summary ADD COLUMN IF NOT EXISTS email_sent BIGINT DEFAULT 0;
ALTER TABLE marts.reminder_effect_segments ADD COLUMN IF NOT EXISTS orders_reminded_known BIGINT DEFAULT 0;
ALTER TABLE marts.reminder_effect_segments ADD COLUMN IF NOT EXISTS orders_reminded_open BIGINT DEFAULT 0;
ALTER TABLE marts.reminder_effect_segments ADD COLUMN IF NOT EXISTS reminders_not_made BIGINT DEFAULT 0;
ALTER TABLE marts.reminder_effect_segments ADD COLUMN IF NOT EXISTS orders_held_out_known BIGINT DEFAULT 0;
ALTER TABLE marts.reminder_effect_segments ADD COLUMN IF NOT EXISTS orders_held_out_open BIGINT DEFAULT 0;
ALTER TABLE marts.reminder_effect_segments ADD COLUMN IF NOT EXISTS segment VARCHAR DEFAULT 'all';
ALTER TABLE marts.reminder_effect_segments ADD COLUMN IF NOT EXISTS channel VARCHAR DEFAULT 'all';
ALTER TABLE marts.reminder_effect_segments ADD COLUMN IF NOT EXISTS orders_assigned_known BIGINT DEFAULT 0;
ALTER TABLE marts.reminder_effect_segments ADD COLUMN IF NOT EXISTS orders_assigned_open BIGINT DEFAULT 0;
ALTER TABLE marts.reminder_effect_segments ADD COLUMN IF NOT EXISTS assigned_paid_before_close BIGINT DEFAULT 0;
ALTER TABLE marts.reminder_effect_segments ADD COLUMN IF NOT EXISTS assigned_known_amount DECIMAL(18, 2) DEFAULT 0;
ALTER TABLE marts.reminder_effect_segments ADD COLUMN IF NOT EXISTS reminded_paid_rate DOUBLE;
ALTER TABLE marts.reminder_effect_segments ADD COLUMN IF NOT EXISTS assigned_paid_rate DOUBLE;
ALTER TABLE marts.reminder_effect_segments ADD COLUMN IF NOT EXISTS held_out_paid_rate DOUBLE;
ALTER TABLE marts.reminder_effect_segments ADD COLUMN IF NOT EXISTS lift DOUBLE;
ALTER TABLE marts.reminder_effect_segments ADD COLUMN IF NOT EXISTS lift_low DOUBLE;
ALTER TABLE marts.reminder_effect_segments ADD COLUMN IF NOT EXISTS lift_high DOUBLE;
ALTER TABLE marts.reminder_effect_segments ADD COLUMN IF NOT EXISTS implied_recovered_amount DECIMAL(18, 2);
ALTER TABLE marts.reminder_effect_segments ADD COLUMN IF NOT EXISTS implied_recovered_low DECIMAL(18, 2);
ALTER TABLE marts.reminder_effect_segments ADD COLUMN IF NOT EXISTS implied_recovered_high DECIMAL(18, 2);
ALTER TABLE marts.reminder_effect_segments ADD COLUMN IF NOT EXISTS effect_status VARCHAR DEFAULT 'too_small';

-- what an incremental refresh of the two §8 marts needs (transforms/plan.py refresh_reports): the marts are
-- as of ops.report_state.as_of, and a plan recomputes only the periods that can have changed since
CREATE TABLE IF NOT EXISTS ops.report_state (
    as_of           TIMESTAMPTZ NOT NULL,     -- the T the §8 marts are as of
    last_ingest_id  INTEGER NOT NULL,         -- the newest ingest they have seen
    shops_key       VARCHAR NOT NULL          -- the shops, zones and auto-close they were computed with
);
-- the T planned since (their visit tasks and decisions are not counted yet), and the orders that left the
-- visit tasks or holdouts of a T already counted (a T planned again)
CREATE TABLE IF NOT EXISTS ops.report_pending (as_of TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS ops.report_gone (
    kind VARCHAR NOT NULL, as_of TIMESTAMPTZ NOT NULL, shop_id VARCHAR NOT NULL, order_id VARCHAR NOT NULL
);
-- per source ('messages:<purpose>', 'outcomes'), shop and UTC day: a fingerprint of the rows the marts read
-- from ops.messages and ops.visit_outcomes, to find the days that changed
CREATE TABLE IF NOT EXISTS ops.report_buckets (
    source VARCHAR NOT NULL, shop_id VARCHAR NOT NULL, day DATE NOT NULL,
    n BIGINT NOT NULL, n_made BIGINT NOT NULL, fingerprint HUGEINT NOT NULL
);
-- per shop and period (local day, ISO week): the latest T with visit tasks there, and the orders planned there
-- before it but not at it, with their latest task (marts/feedback_tasks.sql): the rest are that T's tasks
CREATE TABLE IF NOT EXISTS ops.feedback_latest (
    shop_id VARCHAR NOT NULL, period VARCHAR NOT NULL, period_start DATE NOT NULL, as_of TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS ops.feedback_tasks (
    shop_id VARCHAR NOT NULL, period VARCHAR NOT NULL, period_start DATE NOT NULL, order_id VARCHAR NOT NULL,
    as_of TIMESTAMPTZ NOT NULL, channel VARCHAR NOT NULL
);
-- per shop and order: its payment reminders, its first holdout, and what it counts for in reminder_effect
-- (marts/effect_reminders.sql, effect_holdouts.sql, effect_rows.sql)
CREATE TABLE IF NOT EXISTS ops.effect_reminders (
    shop_id VARCHAR NOT NULL, order_id VARCHAR NOT NULL, made BOOLEAN NOT NULL, made_day DATE, first_day DATE NOT NULL
);
CREATE TABLE IF NOT EXISTS ops.effect_holdouts (shop_id VARCHAR NOT NULL, order_id VARCHAR NOT NULL, first_day DATE NOT NULL);
-- their segment, channel and variant (the first holdout decision's: first_at), added later
ALTER TABLE ops.effect_reminders ADD COLUMN IF NOT EXISTS channel VARCHAR;
ALTER TABLE ops.effect_reminders ADD COLUMN IF NOT EXISTS segment VARCHAR;
ALTER TABLE ops.effect_reminders ADD COLUMN IF NOT EXISTS variant VARCHAR;
ALTER TABLE ops.effect_holdouts ADD COLUMN IF NOT EXISTS first_at TIMESTAMPTZ;
ALTER TABLE ops.effect_holdouts ADD COLUMN IF NOT EXISTS segment VARCHAR;
ALTER TABLE ops.effect_holdouts ADD COLUMN IF NOT EXISTS channel VARCHAR;
ALTER TABLE ops.effect_holdouts ADD COLUMN IF NOT EXISTS variant VARCHAR;
CREATE TABLE IF NOT EXISTS ops.effect_rows (
    grp VARCHAR NOT NULL, shop_id VARCHAR NOT NULL, order_id VARCHAR NOT NULL, day DATE NOT NULL,
    known BOOLEAN NOT NULL, paid BOOLEAN NOT NULL, total_amount DECIMAL(18, 2)
);
-- each order's segment, channel and variant in reminder_effect, added later; a not-made reminder's outcome too
ALTER TABLE ops.effect_rows ADD COLUMN IF NOT EXISTS segment VARCHAR;
ALTER TABLE ops.effect_rows ADD COLUMN IF NOT EXISTS channel VARCHAR;
ALTER TABLE ops.effect_rows ADD COLUMN IF NOT EXISTS variant VARCHAR;
