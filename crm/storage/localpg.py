"""A throwaway PostgreSQL cluster and S3 server on 127.0.0.1: what the storage tests, the group demo (`./run
group-demo`, crm/groupdemo.py) and the group benchmark (bench/bench_group.py) start for themselves (docs/rules.md §10).

`Postgres`: Debian's PostgreSQL server (postgresql-15 is on the machine image; `initdb` + `pg_ctl`) in a folder of
its own under the system's temporary folder, on a free port, trust authentication on 127.0.0.1 only, no fsync
(a throwaway cluster need not survive a power cut); `stop()` ends it and removes the folder. PostgreSQL refuses to
run as root, so under root its programs run as the `postgres` user (`runuser`), in a folder that user owns. Each
user of the cluster takes a database of its own (`database()`).

`S3`: moto's S3 server (`moto_server`, the dev dependency moto[s3] + flask), an S3 that keeps everything in memory,
on a free port; each user takes a bucket of its own (`bucket()`).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin() -> Path | None:
    """The folder of the newest PostgreSQL server programs Debian installed (/usr/lib/postgresql/<n>/bin)."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found and (found[-1] / "pg_ctl").exists() else None


class Postgres:
    """One throwaway PostgreSQL cluster; `psql()` runs SQL in it as the superuser `postgres`."""

    def __init__(self, bindir: Path, prefix: str = "crm-test-pg-"):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.root, "postgres", "postgres")
            self.root.chmod(0o700)

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def start(self) -> "Postgres":
        init = self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                         "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr or init.stdout}")
        for _attempt in range(5):                     # a free port can be taken between the look and the listen
            self.port = free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
            started = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                                "-o", options, "-w", "-t", "60", "start")
            if started.returncode == 0:
                return self
        raise RuntimeError(f"pg_ctl start failed: {started.stderr or started.stdout}: "
                           f"{self.log.read_text(errors='replace')[-2000:] if self.log.exists() else ''}")

    def stop(self) -> None:
        if self.data.exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser; its output, unaligned and without headers (an error raises)."""
        out = subprocess.run([str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                              "-d", database, "-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t", "-c", sql],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"psql: {out.stderr.strip()}")
        return out.stdout.strip()

    def database(self, prefix: str = "t") -> str:
        """A new, empty database; its name."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.psql(f'CREATE DATABASE "{name}"')
        return name

    def keywords(self, database: str, user: str = "postgres") -> str:
        """A libpq key=value connection string (DuckLake's catalog form)."""
        return f"dbname={database} host=127.0.0.1 port={self.port} user={user}"

    def uri(self, database: str, user: str = "postgres") -> str:
        """A postgresql:// connection string."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"


class S3:
    """moto's S3 server on a free port of 127.0.0.1, its log in `folder`."""

    def __init__(self, folder: Path):
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.log = Path(folder) / "moto.log"
        server = Path(sys.executable).parent / "moto_server"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://{self.endpoint}/", timeout=2)
                break
            except httpx.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto_server did not start: {self.log.read_text(errors='replace')[-2000:]}")
                time.sleep(0.1)

    def bucket(self, prefix: str = "t") -> str:
        """A new, empty bucket; its name (moto takes unsigned requests)."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        r = httpx.put(f"http://{self.endpoint}/{name}", timeout=10)
        r.raise_for_status()
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in the bucket under `prefix` (S3's ListObjectsV2, one page of up to 1000)."""
        import xml.etree.ElementTree as ET

        r = httpx.get(f"http://{self.endpoint}/{bucket}", params={"list-type": "2", "prefix": prefix}, timeout=10)
        r.raise_for_status()
        ns = {"s3": "http://s3.amazonaws.com/doc/2006-03-01/"}
        return sorted(e.text or "" for e in ET.fromstring(r.content).findall("s3:Contents/s3:Key", ns))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
