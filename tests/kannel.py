"""The real Kannel for tests: Debian's bearerbox and smsbox, with `fakesmsc` (kannel-extras) as the SMS centre,
all on 127.0.0.1 ports of their own, in a folder of the test's. `./run test` installs the packages.

Two fake SMS centres: `out` takes every message sent (a long-running fakesmsc prints each one it gets:
`messages` reads them back, Chinese text decoded), and `mo` brings customers' replies in: `reply()` starts a
one-shot fakesmsc that sends one message to smsbox, which calls the `sms-service` get-url (`mo_url`). The
fake centre answers every message with delivery reports (8 accepted by the SMSC, 1 delivered), which smsbox
posts to each message's `dlr-url`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes

import httpx

from conftest import free_port

FAKESMSC = "/usr/lib/kannel/test/fakesmsc"
USER, PASSWORD = "crm", "kannel-secret"


def available() -> bool:
    return bool(shutil.which("bearerbox") and shutil.which("smsbox") and os.path.exists(FAKESMSC))


@dataclass
class Received:
    sender: str
    to: str
    coding: str         # 'text' or 'ucs-2' as fakesmsc prints it
    text: str


_GOT = re.compile(r"Got message \d+: <(\S+) (\S+) (\S+) (.*)>\s*$")


def _decode(coding: str, data: str) -> str:
    raw = unquote_to_bytes(data.replace("+", " "))
    return raw.decode("utf-16-be") if coding.startswith("ucs") else raw.decode("utf-8", "replace")


class Kannel:
    def __init__(self, folder: Path, *, mo_url: str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.admin, self.box, self.out_port, self.mo_port, self.sendsms = (free_port() for _ in range(5))
        self.mo_url = mo_url
        self.sendsms_url = f"http://127.0.0.1:{self.sendsms}/cgi-bin/sendsms"
        self.messages: list[Received] = []
        self._procs: list[subprocess.Popen] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ setup
    def _config(self) -> Path:
        conf = self.folder / "kannel.conf"
        conf.write_text(f"""
group = core
admin-port = {self.admin}
admin-password = secret
admin-allow-ip = "127.0.0.1"
smsbox-port = {self.box}
box-allow-ip = "127.0.0.1"
log-file = "{self.folder / 'bearerbox.log'}"
log-level = 1
dlr-storage = internal

group = smsc
smsc = fake
smsc-id = out
port = {self.out_port}
connect-allow-ip = "127.0.0.1"

group = smsc
smsc = fake
smsc-id = mo
port = {self.mo_port}
connect-allow-ip = "127.0.0.1"
allowed-smsc-id = "replies-only"

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {self.box}
sendsms-port = {self.sendsms}
log-file = "{self.folder / 'smsbox.log'}"
log-level = 1

group = sendsms-user
username = {USER}
password = {PASSWORD}
concatenation = true
max-messages = 10

group = sms-service
keyword = default
catch-all = true
max-messages = 0
get-url = "{self.mo_url}"
""", encoding="utf-8")
        return conf

    def _spawn(self, *args: str, out: Path) -> subprocess.Popen:
        proc = subprocess.Popen(list(args), stdout=open(out, "ab"), stderr=subprocess.STDOUT, cwd=self.folder,
                                start_new_session=True)
        self._procs.append(proc)
        return proc

    def start(self) -> "Kannel":
        conf = self._config()
        self._spawn("bearerbox", "-v", "1", str(conf), out=self.folder / "bearerbox.out")
        self._wait_port(self.box)
        fake_log = self.folder / "fakesmsc.out"
        self._spawn(FAKESMSC, "-H", "127.0.0.1", "-r", str(self.out_port), "-i", "1", "-m", "0", "1 2 text nop",
                    out=fake_log)
        self._spawn("smsbox", "-v", "1", str(conf), out=self.folder / "smsbox.out")
        self._wait_port(self.sendsms)
        self._reader = threading.Thread(target=self._read, args=(fake_log,), daemon=True)
        self._reader.start()
        # smsbox answers sendsms before bearerbox has its SMS centre: wait until a message really goes through
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = httpx.get(f"http://127.0.0.1:{self.admin}/status.txt", params={"password": "secret"}).text
            if re.search(r"out\[out\].*online", status):
                return self
            time.sleep(0.2)
        raise RuntimeError(f"Kannel's fake SMS centre did not come online: {status}")

    @staticmethod
    def _wait_port(port: int, timeout: float = 30) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")

    def _read(self, log: Path) -> None:
        with open(log, encoding="utf-8", errors="replace") as fh:
            while True:
                line = fh.readline()
                if not line:
                    if all(p.poll() is not None for p in self._procs[:1]):
                        return
                    time.sleep(0.05)
                    continue
                m = _GOT.search(line)
                if m:
                    with self._lock:
                        self.messages.append(Received(m.group(1), m.group(2), m.group(3), _decode(m.group(3), m.group(4))))

    def wait_for(self, n: int, timeout: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= n:
                    return list(self.messages)
            time.sleep(0.05)
        return list(self.messages)

    # ------------------------------------------------------------------------------------------ replies
    def reply(self, sender: str, to: str, text: str, timeout: float = 10) -> None:
        """A customer's SMS from `sender` to `to`: Kannel calls the sms-service get-url with it."""
        if text.isascii():
            msg = f"{sender} {to} text {text}"
        else:
            msg = f"{sender} {to} ucs2 {quote(text.encode('utf-16-be'))}"
        proc = subprocess.Popen([FAKESMSC, "-H", "127.0.0.1", "-r", str(self.mo_port), "-i", "0", "-m", "1", msg],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(1.0)            # it connects, sends, and stays connected: give the message time to go
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)

    # ------------------------------------------------------------------------------------------ teardown
    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for proc in self._procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


class SlowLink:
    """A TCP forwarder on 127.0.0.1 that holds each chunk a client sends for `delay` seconds before passing it
    on (a slow link to the gateway), so that a test can stop a dispatch in the middle of its sending."""

    def __init__(self, target_port: int, delay: float = 0.02):
        import socket

        self.target_port, self.delay = target_port, delay
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream, self.delay), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, 0.0), daemon=True).start()

    @staticmethod
    def _pipe(src, dst, delay: float) -> None:
        try:
            while data := src.recv(65536):
                if delay:
                    time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()
