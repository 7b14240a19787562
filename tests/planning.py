"""Given-rows helpers for the planning tests: stage rows straight into the staging tables."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

from crm.config import parse_settings
from crm.db import sync_shops
from transforms.plan import plan

SH = ZoneInfo("Asia/Shanghai")
NY = ZoneInfo("America/New_York")


def local(text: str, tz=SH) -> datetime:
    """'2026-11-24 10:30' in a shop zone -> aware UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=tz).astimezone(timezone.utc)


DEFAULTS = {
    "orders": {"shop_id": "s1", "customer_id": "c1", "platform": "taobao", "total_amount": Decimal("100.00"),
               "currency": "CNY"},
    "customers": {"shop_id": "s1", "name": "张三", "phone": "13800000001", "email": "c@example.com",
                  "member_level": 1, "registered_at": local("2026-01-01 00:00"), "opt_out": False,
                  "updated_at": local("2026-01-01 00:00")},
    "order_items": {"line_no": 1, "product_id": "p1", "quantity": 1, "unit_price": Decimal("100.00")},
    "products": {"shop_id": "s1", "title": "枕头", "category": "home"},
    "reviews": {"text": None},
    "suppressions": {},
}


def stage(con, table: str, *rows: dict) -> None:
    for row in rows:
        full = {**DEFAULTS[table], **row}
        if table == "orders":
            full.setdefault("updated_at", full["created_at"])
        cols = list(full)
        con.execute(f"INSERT INTO staging.{table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                    [full[c] for c in cols])


def message(con, message_id: str, purpose: str, order_id: str, created_at: datetime, *, customer_id="c1",
            shop_id="s1", channel="sms", status="sent") -> None:
    con.execute("INSERT INTO ops.messages (message_id, purpose, shop_id, order_id, customer_id, channel, status, "
                "attempts, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)",
                [message_id, purpose, shop_id, order_id, customer_id, channel, status, created_at])


def configure(con, **shop) -> None:
    """One shop s1 (Shanghai, contract defaults) with overrides, e.g. reminders={'holdout_rate': 1.0}."""
    shops = shop.pop("shops", None) or [{"shop_id": "s1", **shop}]
    sync_shops(con, parse_settings({"shops": shops}))


def decisions(con, as_of: datetime, variants=()) -> dict[str, dict]:
    plan(con, as_of, variants=list(variants))
    rows = con.execute("SELECT * FROM marts.reminder_decisions WHERE as_of = ? ORDER BY order_id", [as_of]).fetchall()
    cols = [d[0] for d in con.description]
    return {row["order_id"]: row for row in (dict(zip(cols, r)) for r in rows)}


def visits(con, as_of: datetime) -> list[dict]:
    plan(con, as_of, variants=[])
    rows = con.execute("SELECT * FROM marts.visit_tasks WHERE as_of = ? ORDER BY shop_id, rank", [as_of]).fetchall()
    cols = [d[0] for d in con.description]
    return [dict(zip(cols, r)) for r in rows]


MIN = timedelta(minutes=1)
