"""A send goes batch by batch, each batch checked again shortly before it goes, the next one's check made
while a batch sends (issue 13.6). Real gateway on 127.0.0.1, real DuckDB files."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from conftest import rows
from crm.config import parse_settings
from crm.db import connect, sync_shops
from dispatching import T, opt_out_while_held
from gateway import Gateway
from planning import message, stage
from transforms.dispatch import _Database, send_queued




@pytest.fixture
def gateway():
    gw = Gateway().start()
    yield gw
    gw.stop()


def older_reminders(db, gateway_url: str, customers: dict[str, int], daily_cap: int = 1):
    """Each customer's payment reminders queued yesterday (not sent yet), one order each, in message order."""
    settings = parse_settings({"shops": [{"shop_id": "s1", "reminders": {"auto_close_minutes": 4320,
                                                                          "daily_cap": daily_cap}}],
                               "gateway": {"webhook_url": gateway_url}})
    con = connect(db)
    try:
        sync_shops(con, settings)
        for n, (customer, count) in enumerate(customers.items()):
            stage(con, "customers", {"customer_id": customer, "phone": f"1380000{n:04d}"})
            for i in range(count):
                order = f"{customer}-o{i}"
                stage(con, "orders", {"order_id": order, "customer_id": customer,
                                      "created_at": T - timedelta(days=1, minutes=count - i)})
                message(con, f"payment_reminder:{order}", "payment_reminder", order,
                        T - timedelta(days=1, minutes=count - i), customer_id=customer, status="queued")
        con.execute("UPDATE ops.messages SET recipient = '13800000001', body = 'hi'")
    finally:
        con.close()
    return settings


# a gateway answering at once: the whole send takes less than the recorder's 0.5 s, so an earlier batch's
# reminders are still queued in the file when a later batch is checked; answering in 0.3 s: they are
# recorded sent by then (with the real time as sent_at, another day than T's)
@pytest.mark.parametrize("batch,delay", [(1, 0.0), (2, 0.0), (500, 0.0), (1, 0.3)])
def test_the_daily_cap_holds_across_batches(gateway, tmp_path, batch, delay):
    # catches: a customer's older reminders split over two batches all going out, because the later batch's
    # check did not count the earlier batch's reminder (still being sent, or sent but not recorded yet)
    db = tmp_path / "crm.duckdb"
    settings = older_reminders(db, gateway.url, {"c1": 3, "c2": 2, "c3": 1})
    gateway.delay = delay
    r = send_queued(db, settings, T + timedelta(minutes=1), batch=batch)
    assert (r.sent, r.waiting) == (3, 3), "daily_cap 1: one reminder per customer today"
    assert sorted(gateway.accepted) == ["payment_reminder:c1-o0", "payment_reminder:c2-o0", "payment_reminder:c3-o0"]
    assert rows(db, "SELECT order_id FROM ops.messages WHERE status = 'queued' ORDER BY 1") == [
        ("c1-o1",), ("c1-o2",), ("c2-o1",)]


def test_a_daily_cap_of_two_sends_each_customers_first_two(gateway, tmp_path):
    db = tmp_path / "crm.duckdb"
    settings = older_reminders(db, gateway.url, {"c1": 3, "c2": 2}, daily_cap=2)
    gateway.delay = 0.3                 # c1's first two are recorded sent before c1-o2 is checked
    r = send_queued(db, settings, T + timedelta(minutes=1), batch=1)
    assert (r.sent, r.waiting) == (4, 1)
    assert "payment_reminder:c1-o2" not in gateway.accepted


def test_a_check_that_got_old_while_a_slow_batch_went_is_made_again(gateway, tmp_path, monkeypatch):
    # the next batch is checked while one sends; when that batch took long (a slow gateway), the check is made
    # again just before the next batch goes, so an opt-out while the slow batch went still counts
    db = tmp_path / "crm.duckdb"
    settings = older_reminders(db, gateway.url, {f"c{i}": 1 for i in range(4)}, daily_cap=5)
    gateway.delay = 1.0                           # the first batch (c0, c1) takes a second
    checks: list[float] = []
    check = _Database.check

    def counted(self, *args):
        out = check(self, *args)
        checks.append(time.monotonic())
        return out

    monkeypatch.setattr(_Database, "check", counted)
    opted = threading.Event()

    def opt_out_once_the_next_batch_was_checked() -> None:
        deadline = time.monotonic() + 20
        while len(checks) < 2 and time.monotonic() < deadline:     # the first listing, then batch 2's check
            time.sleep(0.01)
        opt_out_while_held(db, "c2", gateway, opted)

    gateway.hold()                 # batch 1 waits at the gateway until the opt-out is in, however slow this thread
    thread = threading.Thread(target=opt_out_once_the_next_batch_was_checked)
    thread.start()
    r = send_queued(db, settings, T + timedelta(minutes=1), batch=2, fresh_seconds=0.5)
    thread.join()
    assert opted.is_set() and len(checks) == 3, "batch 2 was checked while batch 1 went, and again before it went"
    assert (r.sent, r.withdrawn, r.checks) == (3, 1, 1)
    assert "payment_reminder:c2-o0" not in gateway.accepted
    assert rows(db, "SELECT status, split_part(last_error, ':', 1) FROM ops.messages WHERE customer_id = 'c2'") == [
        ("failed", "opted_out")]
