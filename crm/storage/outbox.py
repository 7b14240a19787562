"""The outbox in PostgreSQL (`[storage] kind = "ducklake"`, docs/scale-out.md): ops.messages as a PostgreSQL table
that several dispatch workers, on one machine or many, claim from at once, each message sent once.

The table has the columns of ops.messages (sql/schema.sql) and three more: `claimed_by` (the worker holding the
message), `claim_until` (its lease, PostgreSQL's clock) and `shop_bucket` (the shop's partition, where the
caller knows it). Uniqueness is PostgreSQL's: `message_id` is the primary key and :meth:`PgOutbox.enqueue` is
``INSERT … ON CONFLICT DO NOTHING``, so a message planned twice, by two workers or two runs, is one row.

A worker's round: :meth:`~PgOutbox.settle` (the messages of workers that died, below), :meth:`~PgOutbox.claim`
(``FOR UPDATE SKIP LOCKED``: two workers never hold the same message), send, :meth:`~PgOutbox.record` (only
where the worker still holds the message), and at the end :meth:`~PgOutbox.release`. While it sends it
extends its leases (:meth:`~PgOutbox.renew`), so a slow but live worker is not taken over.

Webhook messages (SMS, chat) carry an Idempotency-Key: one whose worker died is claimed again when its lease
runs out and sent again under the same id; the gateway accepts it once. E-mail and SMS to Kannel go at most
once, and for them the row is the send journal (crm/journal.py's rule): just before the request goes the row
becomes ``sending`` (:meth:`~PgOutbox.mark_sending`, only while the worker's claim holds), then ``sent``
(:meth:`~PgOutbox.mark_accepted`) or ``queued`` again (:meth:`~PgOutbox.mark_not_sent`: nothing went out).
A ``sending`` row whose lease ran out is settled as a journal is: a delivery receipt already in -> sent; else
failed, in doubt (crm.journal.in_doubt), never sent again automatically.

Every method is one short transaction on the outbox's connection (a lock makes the object safe to share
between a worker's threads). A PostgreSQL that cannot be reached is one line naming ``[storage] ops_dsn``,
without its password (StorageError).
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from typing import Iterable

import pyarrow as pa
import pyarrow.csv as pa_csv

from crm.journal import in_doubt
from crm.storage import StorageError, _first_line, mask

TABLE = "messages"

# (column, PostgreSQL type, Arrow type): ops.messages of sql/schema.sql, its ALTERed columns included
COLUMNS: tuple[tuple[str, str, pa.DataType], ...] = (
    ("message_id", "text PRIMARY KEY", pa.string()),
    ("purpose", "text NOT NULL", pa.string()),
    ("shop_id", "text NOT NULL", pa.string()),
    ("order_id", "text", pa.string()),
    ("customer_id", "text", pa.string()),
    ("channel", "text NOT NULL", pa.string()),
    ("recipient", "text", pa.string()),
    ("body", "text", pa.string()),
    ("status", "text NOT NULL", pa.string()),              # queued, sending, sent, failed, done
    ("attempts", "integer NOT NULL DEFAULT 0", pa.int32()),
    ("created_at", "timestamptz NOT NULL", pa.timestamp("us", tz="UTC")),
    ("sent_at", "timestamptz", pa.timestamp("us", tz="UTC")),
    ("template", "text", pa.string()),
    ("as_of", "timestamptz", pa.timestamp("us", tz="UTC")),
    ("last_error", "text", pa.string()),
    ("segments", "integer", pa.int32()),
    ("expires_at", "timestamptz", pa.timestamp("us", tz="UTC")),
    ("tier", "text", pa.string()),
    ("rank", "bigint", pa.int64()),
    ("rating", "integer", pa.int32()),
    ("review_text", "text", pa.string()),
    ("delivery", "text", pa.string()),
    ("delivered_at", "timestamptz", pa.timestamp("us", tz="UTC")),
    ("customer_segment", "text", pa.string()),
    ("variant", "text", pa.string()),
    # the outbox's own: who holds the message, until when (PostgreSQL's clock), and its shop's partition
    ("claimed_by", "text", pa.string()),
    ("claim_until", "timestamptz", pa.timestamp("us", tz="UTC")),
    ("shop_bucket", "integer", pa.int32()),
)
CLAIM_COLUMNS = ("claimed_by", "claim_until")
MESSAGE_COLUMNS = tuple(name for name, _, _ in COLUMNS if name not in CLAIM_COLUMNS)
REQUIRED = ("message_id", "purpose", "shop_id", "channel", "created_at")
_ARROW = {name: t for name, _, t in COLUMNS}
_RETURNING = ", ".join(f"m.{c}" for c in MESSAGE_COLUMNS)


@dataclass
class Settled:
    """What a settle round did with the messages of workers whose lease ran out."""
    sent: int = 0            # `sending` with a delivery receipt in: recorded sent
    in_doubt: int = 0        # `sending` without one: failed, in doubt, never sent again automatically
    cleared: int = 0         # already `sent` (accepted before the worker died): only the claim cleared


def _filters(channels, shops, buckets) -> tuple[str, dict]:
    sql, args = [], {}
    if channels is not None:
        sql.append("channel = ANY(%(channels)s)")
        args["channels"] = list(channels)
    if shops is not None:
        sql.append("shop_id = ANY(%(shops)s)")
        args["shops"] = list(shops)
    if buckets is not None:
        sql.append("shop_bucket = ANY(%(buckets)s)")
        args["buckets"] = [int(b) for b in buckets]
    return "".join(f" AND {s}" for s in sql), args


class PgOutbox:
    """ops.messages in the PostgreSQL database `dsn` (a postgresql:// URI or libpq key=value string)."""

    def __init__(self, dsn: str, *, receipts: str = "delivery_receipts", connect_timeout: float = 10):
        self.dsn, self.receipts, self.connect_timeout = dsn, receipts, connect_timeout
        self._con = None
        self._lock = threading.RLock()

    # ---------------------------------------------------------------------------------------- connection
    def _connection(self):
        import psycopg

        if self._con is None or self._con.closed:
            try:
                self._con = psycopg.connect(self.dsn, autocommit=True, connect_timeout=int(self.connect_timeout),
                                            application_name="crm-outbox")
            except psycopg.Error as e:
                raise StorageError(f"[storage] ops_dsn: cannot reach the ops database: {mask(_first_line(e))}") from None
        return self._con

    def _run(self, work):
        """`work(connection)` in one transaction, under the lock; a lost connection is one line (StorageError)."""
        import psycopg

        with self._lock:
            con = self._connection()
            try:
                with con.transaction():
                    return work(con)
            except psycopg.OperationalError as e:
                if con.closed or con.broken:
                    self._con = None
                raise StorageError(f"[storage] ops_dsn: the ops database failed: {mask(_first_line(e))}") from None

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    def __enter__(self) -> "PgOutbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------- schema
    def ensure(self) -> None:
        """The table and its indexes, made when missing (several workers may call it at once)."""
        columns = ",\n    ".join(f"{name} {pg}" for name, pg, _ in COLUMNS)
        adds = ", ".join(f"ADD COLUMN IF NOT EXISTS {name} {pg}" for name, pg, _ in COLUMNS
                         if name in CLAIM_COLUMNS + ("shop_bucket",))

        def work(con):
            con.execute("SELECT pg_advisory_xact_lock(hashtext('crm.outbox.ensure'))")
            con.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (\n    {columns}\n)")
            con.execute(f"ALTER TABLE {TABLE} {adds}")          # a messages table made before the outbox's columns
            # the claim's scan: the queued messages, oldest first
            con.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_claimable ON {TABLE} (created_at, message_id) "
                        "WHERE status = 'queued'")
            # renew, release and settle: the messages some worker holds (few at any time)
            con.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_claimed ON {TABLE} (claimed_by, claim_until) "
                        "WHERE claimed_by IS NOT NULL")

        self._run(work)

    # ---------------------------------------------------------------------------------------- writing
    def enqueue(self, rows: pa.Table | Iterable[dict]) -> int:
        """New messages (the columns of ops.messages; `status` defaults to queued, `attempts` to 0), through
        COPY into a temporary table and one INSERT … ON CONFLICT (message_id) DO NOTHING: a message_id already
        there is left alone. Returns how many were new."""
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows))
        if table.num_rows == 0:
            return 0
        missing = [c for c in REQUIRED if c not in table.column_names]
        if missing:
            raise ValueError(f"enqueue: the messages lack {', '.join(missing)}")
        unknown = [c for c in table.column_names if c not in MESSAGE_COLUMNS]
        if unknown:
            raise ValueError(f"enqueue: {', '.join(unknown)} are not columns of ops.messages")
        names = [c for c in MESSAGE_COLUMNS if c in table.column_names]
        table = pa.table({c: table[c].cast(_ARROW[c]) for c in names})
        buffer = io.BytesIO()
        pa_csv.write_csv(table, buffer, pa_csv.WriteOptions(include_header=False))   # NULL unquoted, '' quoted
        cols = ", ".join(names)
        defaults = {"status": "'queued'", "attempts": "0"}
        insert = names + [c for c in defaults if c not in names]
        select = names + [defaults[c] for c in defaults if c not in names]

        def work(con):
            # the columns' types, not their constraints: a missing status or attempts is filled in below
            con.execute(f"CREATE TEMP TABLE _outbox_new ON COMMIT DROP AS SELECT {cols} FROM {TABLE} WITH NO DATA")
            with con.cursor().copy(f"COPY _outbox_new ({cols}) FROM STDIN (FORMAT csv)") as copy:
                copy.write(buffer.getvalue())
            cur = con.execute(f"INSERT INTO {TABLE} ({', '.join(insert)}) SELECT {', '.join(select)} "
                              "FROM _outbox_new ON CONFLICT (message_id) DO NOTHING")
            return cur.rowcount

        return self._run(work)

    # ---------------------------------------------------------------------------------------- a worker's round
    def settle(self, channels=None, shops=None, buckets=None) -> Settled:
        """The at-most-once messages of workers whose lease ran out (their worker died, or stalled past it):
        `sending` -> sent if a delivery receipt names it, else failed in doubt (crm.journal.in_doubt); `sent`
        (accepted, not yet recorded) -> only the claim cleared. Messages claimed and still `queued` need
        nothing: :meth:`claim` takes them again."""
        where, args = _filters(channels, shops, buckets)
        args |= {"doubt_email": in_doubt("email"), "doubt_sms": in_doubt("sms")}

        def work(con):
            has_receipts = con.execute("SELECT to_regclass(%s) IS NOT NULL", [self.receipts]).fetchone()[0]
            receipt = (f"EXISTS (SELECT 1 FROM {self.receipts} AS r WHERE r.message_id = s.message_id)"
                       if has_receipts else "false")
            rows = con.execute(
                f"WITH stale AS MATERIALIZED ("
                f" SELECT message_id, status AS was FROM {TABLE} AS s"
                f" WHERE claimed_by IS NOT NULL AND claim_until < now() AND status IN ('sending', 'sent'){where}"
                f" FOR UPDATE SKIP LOCKED"
                f"), decided AS (SELECT s.message_id, s.was, s.was = 'sent' OR {receipt} AS went FROM stale AS s) "
                f"UPDATE {TABLE} AS m SET"
                f" status = CASE WHEN d.went THEN 'sent' ELSE 'failed' END,"
                f" sent_at = CASE WHEN d.was = 'sending' AND d.went THEN now() ELSE m.sent_at END,"
                f" last_error = CASE WHEN d.went THEN m.last_error"
                f"  WHEN m.channel = 'email' THEN %(doubt_email)s ELSE %(doubt_sms)s END,"
                f" claimed_by = NULL, claim_until = NULL "
                f"FROM decided AS d WHERE m.message_id = d.message_id "
                f"RETURNING d.was, d.went", args).fetchall()
            return Settled(sent=sum(was == "sending" and went for was, went in rows),
                           in_doubt=sum(not went for _, went in rows),
                           cleared=sum(was == "sent" for was, _ in rows))

        return self._run(work)

    def claim(self, worker: str, limit: int, lease_seconds: float, channels, shops=None, buckets=None) -> list[dict]:
        """Up to `limit` queued messages of `channels` (and `shops` / `buckets`, if given) that no live claim
        holds, oldest first, now held by `worker` for `lease_seconds`. Rows another transaction is claiming at
        this moment are skipped (SKIP LOCKED), never waited for or taken twice. The rows are picked and locked
        once (a MATERIALIZED CTE, never folded into the UPDATE), and the UPDATE writes exactly those."""
        where, args = _filters(channels, shops, buckets)
        args |= {"worker": worker, "limit": int(limit), "lease": float(lease_seconds)}

        def work(con):
            cur = con.cursor()
            cur.execute(
                f"WITH picked AS MATERIALIZED ("
                f" SELECT message_id FROM {TABLE}"
                f" WHERE status = 'queued'{where} AND (claim_until IS NULL OR claim_until < now())"
                f" ORDER BY created_at, message_id LIMIT %(limit)s"
                f" FOR UPDATE SKIP LOCKED"
                f") UPDATE {TABLE} AS m SET claimed_by = %(worker)s,"
                f" claim_until = now() + make_interval(secs => %(lease)s) "
                f"FROM picked WHERE m.message_id = picked.message_id "
                f"RETURNING {_RETURNING}", args)
            names = [d.name for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

        rows = self._run(work)
        rows.sort(key=lambda r: (r["created_at"], r["message_id"]))
        return rows

    def renew(self, worker: str, lease_seconds: float) -> int:
        """Every claim `worker` holds extended to `lease_seconds` from now; how many."""
        return self._run(lambda con: con.execute(
            f"UPDATE {TABLE} SET claim_until = now() + make_interval(secs => %s) WHERE claimed_by = %s",
            [float(lease_seconds), worker]).rowcount)

    # at most once (e-mail, SMS to Kannel): the row is the journal. One statement each, as the request goes.
    def mark_sending(self, worker: str, message_id: str) -> bool:
        """About to hand `message_id` over: True if `worker`'s claim on it still holds (then it is `sending`);
        False: it may not go (the claim ran out, or another worker holds it now)."""
        return self._run(lambda con: con.execute(
            f"UPDATE {TABLE} SET status = 'sending' WHERE message_id = %s AND claimed_by = %s "
            "AND claim_until > now() AND status IN ('queued', 'sending')", [message_id, worker]).rowcount) == 1

    def mark_accepted(self, worker: str, message_id: str) -> None:
        self._run(lambda con: con.execute(
            f"UPDATE {TABLE} SET status = 'sent', sent_at = now() WHERE message_id = %s AND claimed_by = %s "
            "AND status = 'sending'", [message_id, worker]))

    def mark_not_sent(self, worker: str, message_id: str) -> None:
        """The server refused it, or was never reached: nothing went out, it may go again."""
        self._run(lambda con: con.execute(
            f"UPDATE {TABLE} SET status = 'queued' WHERE message_id = %s AND claimed_by = %s "
            "AND status = 'sending'", [message_id, worker]))

    def record(self, worker: str, outcomes) -> int:
        """Outcomes (crm.channels.Outcome: message_id, status, attempts, error, sent_at) of messages `worker`
        holds, in one UPDATE … FROM a COPY: sent and failed are final and the claim is cleared; a transient
        failure stays queued (attempts + n, last_error) and stays held by `worker` until :meth:`release`, so
        this run does not try it again. A message `worker` no longer holds (its lease ran out and another
        worker took it) is left as the other worker has it. Returns how many rows were written."""
        outcomes = list(outcomes)
        if not outcomes:
            return 0

        def work(con):
            con.execute("CREATE TEMP TABLE _outbox_outcomes (message_id text, status text, attempts integer, "
                        "error text, sent_at timestamptz) ON COMMIT DROP")
            with con.cursor().copy("COPY _outbox_outcomes FROM STDIN") as copy:
                for o in outcomes:
                    copy.write_row((o.message_id, o.status, o.attempts, o.error, o.sent_at))
            return con.execute(
                f"UPDATE {TABLE} AS m SET status = o.status, attempts = m.attempts + o.attempts,"
                f" sent_at = coalesce(o.sent_at, m.sent_at), last_error = o.error,"
                f" claimed_by = CASE WHEN o.status = 'queued' THEN m.claimed_by END,"
                f" claim_until = CASE WHEN o.status = 'queued' THEN m.claim_until END "
                f"FROM _outbox_outcomes AS o "
                f"WHERE m.message_id = o.message_id AND m.claimed_by = %s "
                f"AND m.status IN ('queued', 'sending', 'sent')", [worker]).rowcount

        return self._run(work)

    def release(self, worker: str) -> int:
        """A clean stop: every message `worker` still holds and did not send is free again (still queued:
        waiting, kept after transient failures, or never tried). A `sending` one stays held: its outcome is
        unknown, and when the lease runs out :meth:`settle` decides it. Returns how many were released."""
        return self._run(lambda con: con.execute(
            f"UPDATE {TABLE} SET claimed_by = NULL, claim_until = NULL WHERE claimed_by = %s "
            "AND status <> 'sending'", [worker]).rowcount)

    # ---------------------------------------------------------------------------------------- reading
    def counts(self) -> dict[str, int]:
        """{status: messages}."""
        return dict(self._run(lambda con: con.execute(
            f"SELECT status, count(*) FROM {TABLE} GROUP BY status").fetchall()))
