"""A real DuckDB file with follow-up calls queued for agents, for the page tests: one Shanghai shop, six
orders delivered seven days before T (due today), capacity 4 calls; the rest go to nobody (auto_channel
'none'), so no gateway is needed. Made by the real pipeline: staged rows, then a dispatch at T. `Served` starts
`crm serve` with its clock set to T (`--as-of`), so what the page shows does not depend on the day tests run."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import httpx
import uvicorn

from conftest import BIN, free_port
from crm.config import load_settings
from crm.db import connect, publish_snapshot, session
from crm.web import CSRF_FIELD, clock_from, create_app
from planning import local, stage
from transforms.dispatch import dispatch
from transforms.validate import validate_outbox

ROOT = Path(__file__).resolve().parent.parent

# Tuesday 2026-11-24 11:30 in Shanghai, inside the 11:00-12:00 visit window
T = local("2026-11-24 11:30")
DELIVERED = local("2026-11-17 15:00")

CONFIG = """
[[shops]]
shop_id = "s1"
name = "萌宠小铺"
timezone = "Asia/Shanghai"
locale = "{locale}"
[shops.reminders]
channels = {{ new = "call" }}
[shops.visits]
manual_capacity = {capacity}
gift_ratio = 0.25
auto_channel = "none"
high_value_amount = 500
"""

# order, customer, amount, rating, review: the ranking is o-high (high value), o-bad (rating 1),
# o-mid (rating 3), o-praise (5 but "slow"), then o-a / o-b drawn at random
ORDERS = [
    ("o-high", "c1", "899.00", None, None),
    ("o-bad", "c2", "59.00", 1, "质量太差了"),
    ("o-mid", "c3", "120.00", 3, "还行"),
    ("o-praise", "c4", "88.00", 5, "很好看,就是物流有点慢"),
    ("o-a", "c5", "45.00", None, None),
    ("o-b", "c6", "46.00", None, None),
]


def make(folder: Path, *, capacity: int = 4, db: Path | None = None, locale: str = "zh-CN") -> tuple[Path, Path]:
    """(db, config) with `capacity` follow-up calls queued at T, and the analytics copy published."""
    config = folder / "shops.toml"
    config.write_text(CONFIG.format(capacity=capacity, locale=locale), encoding="utf-8")
    db = db or folder / "crm.duckdb"
    settings = load_settings(config)
    with session(db, settings) as con:
        stage(con, "products", {"product_id": "p1", "title": "猫爬架"}, {"product_id": "p2", "title": "逗猫棒"})
        for i, (order_id, customer_id, amount, rating, text) in enumerate(ORDERS):
            stage(con, "customers", {"customer_id": customer_id, "name": f"客户{i + 1}", "phone": f"1380000000{i}",
                                     "city": "杭州"})
            stage(con, "orders", {"order_id": order_id, "customer_id": customer_id, "total_amount": Decimal(amount),
                                  "created_at": DELIVERED.replace(day=12), "paid_at": DELIVERED.replace(day=12),
                                  "shipped_at": DELIVERED.replace(day=14), "delivered_at": DELIVERED,
                                  "receiver_city": "杭州"})
            stage(con, "order_items", {"order_id": order_id, "product_id": "p1", "unit_price": Decimal(amount)},
                  {"order_id": order_id, "line_no": 2, "product_id": "p2", "quantity": 2, "unit_price": Decimal("0")})
            if rating:
                stage(con, "reviews", {"order_id": order_id, "created_at": DELIVERED.replace(hour=20),
                                       "rating": rating, "text": text})
        # and one order placed before T, unpaid, by a new customer: a payment-reminder call
        stage(con, "customers", {"customer_id": "c9", "name": "新客户", "phone": "13900000009"})
        stage(con, "orders", {"order_id": "u1", "customer_id": "c9", "total_amount": Decimal("66.00"),
                              "created_at": local("2026-11-24 09:40")})
        stage(con, "order_items", {"order_id": "u1", "product_id": "p2", "unit_price": Decimal("66.00")})
        dispatch(con, settings, T, validate=validate_outbox)
        publish_snapshot(con, db)
    return db, config


class Served:
    """`crm serve` as a user starts it, in its own process, its clock set to `as_of` (None: the real time)."""

    def __init__(self, db: Path, config: Path, *args: str, env: dict | None = None, as_of: datetime | None = T):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "CRM_DB": str(db), "CRM_CONFIG": str(config), **(env or {})}
        clock = ["--as-of", as_of.isoformat()] if as_of else []
        self.proc = subprocess.Popen([str(BIN), "serve", "--port", str(self.port), *clock, *args], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"crm serve did not start: {self.proc.stdout.read() if self.proc.stdout else ''}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@contextmanager
def served_here(db: Path, config: Path, *, as_of: datetime = T, **waits):
    """The page's app served by uvicorn in this process (a thread), on 127.0.0.1, its clock set to `as_of`:
    for the waits `crm serve` has no option for (e.g. a short `write_wait`). Yields the base URL."""
    app = create_app(db, load_settings(config), clock=clock_from(as_of), **waits)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not server.started:
        server.should_exit = True
        raise RuntimeError("the page did not start in this process")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


class Agent(httpx.Client):
    """An agent's browser over plain HTTP: it keeps the page's cookie and sends its forms' CSRF token (read
    from the first page it opens) with every POST, as the page's own forms do."""

    def __init__(self, base_url: str, **kwargs):
        super().__init__(base_url=base_url, **kwargs)
        self._token: str | None = None

    @property
    def token(self) -> str:
        if self._token is None:
            found = re.search(r'<meta name="csrf-token" content="([^"]+)">', self.get("/").text)
            assert found, "every page carries the browser's CSRF token"
            self._token = found.group(1)
        return self._token

    def post(self, url, *, data: dict | None = None, **kwargs) -> httpx.Response:
        return super().post(url, data={CSRF_FIELD: self.token, **(data or {})}, **kwargs)


def statuses(db: Path) -> dict[str, str]:
    con = connect(db, read_only=True)
    try:
        return dict(con.execute("SELECT order_id, status FROM ops.messages WHERE channel = 'call'").fetchall())
    finally:
        con.close()
