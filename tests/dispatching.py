"""Shared set-up for the dispatch tests: a shop, a real gateway, a real SMTP server."""

from __future__ import annotations

from pathlib import Path

from aiosmtpd.controller import Controller

from conftest import free_port
from planning import local


class Mailbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope)
        return "250 OK"


def opt_out_while_held(db: Path, customer_id: str, gateway, opted) -> None:
    """`customer_id` opts out, in a connection of its own (as the agents' page would, during a run), then the
    `gateway`, held until now, answers again (also when the update failed); `opted` is set once it is in."""
    from crm.db import connect

    try:
        con = connect(db, setup=False)
        try:
            con.execute("UPDATE staging.customers SET opt_out = true WHERE customer_id = ?", [customer_id])
        finally:
            con.close()
        opted.set()
    finally:
        gateway.release()


def start_smtp() -> tuple[Controller, Mailbox]:
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    return controller, box


def shop_config(path: Path, gateway_url: str, smtp_port: int, *, capacity: int = 1, extra: str = "") -> Path:
    path.write_text(f"""
[[shops]]
shop_id = "s1"
name = "萌宠小铺"
[shops.reminders]
second_purchase_offer = "老客立减10元"
[shops.visits]
manual_capacity = {capacity}
{extra}
[gateway]
webhook_url = "{gateway_url}"
timeout_seconds = 2
max_attempts = 4
backoff_seconds = 0.01
[smtp]
host = "127.0.0.1"
port = {smtp_port}
""", encoding="utf-8")
    return path


# T = Tuesday 2026-11-24 10:30 in Shanghai: inside the 10:00-11:00 reminder window and before the
# 11:00-12:00 visit window (automatic follow-ups are due at 11:00).
T = local("2026-11-24 10:30")


def sms_crowd(db: Path, config: Path, gateway_url: str, n: int) -> None:
    """A shop whose new customers get SMS reminders, sent 4 at a time, and `n` new customers each with an
    order placed at 10:00 on T's day: a dispatch at T sends `n` SMS (the crash and lock tests)."""
    from crm.config import load_settings
    from crm.db import connect, sync_shops
    from planning import stage

    shop_config(config, gateway_url, 1)
    config.write_text(config.read_text().replace(
        "[shops.visits]", 'channels = { new = "sms" }\n[shops.visits]').replace(
        "backoff_seconds = 0.01", "backoff_seconds = 0.01\nconcurrency = 4"))
    con = connect(db)
    try:
        sync_shops(con, load_settings(config))
        stage(con, "customers", *[{"customer_id": f"c{i}", "phone": f"1390000{i:04d}"} for i in range(n)])
        stage(con, "orders", *[{"order_id": f"o{i:04d}", "customer_id": f"c{i}",
                                "created_at": local("2026-11-24 10:00")} for i in range(n)])
    finally:
        con.close()
