"""A throwaway PostgreSQL cluster and S3 server on 127.0.0.1 for the storage tests (docs/rules.md §10), as pytest
fixtures of the session (`postgres`, `s3`), started on first use. The cluster (initdb + pg_ctl of Debian's PostgreSQL,
as the postgres user under root, a free port, no fsync) and moto's S3 server are crm/storage/localpg.py's, which the
group demo and benchmark start too. Each test takes a database of its own (`postgres.database()`) or a bucket
(`s3.bucket()`), so that one cluster and one server serve every test.

A test module uses them by importing them (`from postgres import postgres, s3  # noqa: F401`). Where the PostgreSQL
programs are missing the tests that need them are skipped with the reason; nothing else is.
"""

from __future__ import annotations

import pytest

# the cluster and the S3 server themselves: one copy, shared with the group demo and benchmark
from crm.storage.localpg import S3, Postgres, free_port, pg_bin  # noqa: F401  (re-exported for the tests)


@pytest.fixture(scope="session")
def postgres():
    bindir = pg_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server programs under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    cluster = Postgres(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    server = S3(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        server.stop()
