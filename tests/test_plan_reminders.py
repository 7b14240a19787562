"""Payment-reminder decisions (docs/rules.md §4), one rule at a time, on the least data that shows it.

Shop s1 is Asia/Shanghai with the default configuration: cut-offs 11:00 and 17:00 with a 60-minute
lead (windows [10:00, 11:00) and [16:00, 17:00)), min age 15 min, auto-close 1440 min, quiet hours
[21:00, 09:00), daily cap 1, no second-purchase offer, channels new=call, second=sms, repeat=sms.
T is Tuesday 2026-11-24 10:30 local unless a test says otherwise.
"""

from __future__ import annotations

import pytest

from planning import MIN, NY, configure, decisions, local, message, stage

T = local("2026-11-24 10:30")


@pytest.fixture
def shop(con):
    configure(con)
    stage(con, "customers", {"customer_id": "c1"})
    return con


def test_baseline_order_is_reminded(shop):
    stage(shop, "orders", {"order_id": "o1", "created_at": local("2026-11-24 10:00")})
    d = decisions(shop, T)["o1"]
    assert (d["decision"], d["reason"], d["segment"], d["channel"]) == ("remind", None, "new", "call")
    assert d["send_at"] == local("2026-11-24 10:15") and d["template"] == "payment_reminder/new"


# ------------------------------------------------------------------------------ 1..12, in order

def test_1_expired_at_exactly_auto_close(shop):
    stage(shop, "orders", {"order_id": "old", "created_at": T - 1440 * MIN},
          {"order_id": "young", "customer_id": "c2", "created_at": T - 1439 * MIN})
    d = decisions(shop, T)
    assert (d["old"]["decision"], d["old"]["reason"]) == ("skip", "expired")
    assert d["young"]["reason"] != "expired"


def test_closed_or_paid_orders_get_no_decision(shop):
    stage(shop, "orders", {"order_id": "closed", "created_at": local("2026-11-24 09:00"), "closed_at": T},
          {"order_id": "paid", "created_at": local("2026-11-24 09:00"), "paid_at": T},
          {"order_id": "future", "created_at": T + MIN},
          {"order_id": "closes_later", "customer_id": "c2", "created_at": local("2026-11-24 09:00"),
           "closed_at": T + MIN, "paid_at": T + MIN})
    assert list(decisions(shop, T)) == ["closes_later"]


def test_2_distribution_platform(shop):
    stage(shop, "orders", {"order_id": "o1", "platform": "fenxiao", "created_at": local("2026-11-24 10:00")})
    assert decisions(shop, T)["o1"]["reason"] == "distribution_platform"


def test_3_opted_out_by_flag(shop):
    stage(shop, "customers", {"customer_id": "c9", "opt_out": True})
    stage(shop, "orders", {"order_id": "o1", "customer_id": "c9", "created_at": local("2026-11-24 10:00")})
    assert decisions(shop, T)["o1"]["reason"] == "opted_out"


@pytest.mark.parametrize("match", [{"customer_id": "c1"}, {"phone": "13800000001"}, {"email": "c@example.com"}])
def test_3_opted_out_by_an_all_suppression(shop, match):
    stage(shop, "suppressions", {**match, "channel": "all", "created_at": T - MIN})
    stage(shop, "orders", {"order_id": "o1", "created_at": local("2026-11-24 10:00")})
    assert decisions(shop, T)["o1"]["reason"] == "opted_out"


def test_3_a_suppression_created_after_t_does_not_count(shop):
    stage(shop, "suppressions", {"customer_id": "c1", "channel": "all", "created_at": T + MIN})
    stage(shop, "orders", {"order_id": "o1", "created_at": local("2026-11-24 10:00")})
    assert decisions(shop, T)["o1"]["decision"] == "remind"


def test_4_paid_other_same_local_date(shop):
    # the seed: a wrong first order, re-placed and paid
    stage(shop, "orders", {"order_id": "wrong", "created_at": local("2026-11-24 09:50")},
          {"order_id": "right", "created_at": local("2026-11-24 09:40"), "paid_at": local("2026-11-24 09:55")})
    assert decisions(shop, T)["wrong"]["reason"] == "paid_other"


def test_4_paid_other_created_later_on_another_day(shop):
    stage(shop, "orders", {"order_id": "o1", "created_at": local("2026-11-23 23:30")},
          {"order_id": "o2", "created_at": local("2026-11-24 00:10"), "paid_at": local("2026-11-24 00:20")},
          # paid, but created earlier on another day: does not count
          {"order_id": "o0", "customer_id": "c2", "created_at": local("2026-11-23 12:00"), "paid_at": local("2026-11-23 12:05")},
          {"order_id": "o3", "customer_id": "c2", "created_at": local("2026-11-24 08:00")})
    d = decisions(shop, T)
    assert d["o1"]["reason"] == "paid_other" and d["o3"]["reason"] != "paid_other"


def test_4_paid_after_t_does_not_count(shop):
    stage(shop, "orders", {"order_id": "o1", "created_at": local("2026-11-24 10:00")},
          {"order_id": "o2", "created_at": local("2026-11-24 09:00"), "paid_at": T + MIN})
    # o2 is unpaid at T too (and earlier): o1 is the latest and is reminded
    assert decisions(shop, T)["o1"]["decision"] == "remind"


def test_5_not_latest_and_equal_times(shop):
    stage(shop, "orders", {"order_id": "a", "created_at": local("2026-11-24 09:00")},
          {"order_id": "b", "created_at": local("2026-11-24 10:00")},
          {"order_id": "c", "created_at": local("2026-11-24 10:00")})
    d = decisions(shop, T)
    assert (d["a"]["reason"], d["b"]["reason"], d["c"]["decision"]) == ("not_latest", "not_latest", "remind")


def test_5_a_later_distribution_order_does_not_make_an_order_not_latest(shop):
    stage(shop, "orders", {"order_id": "a", "created_at": local("2026-11-24 10:00")},
          {"order_id": "b", "created_at": local("2026-11-24 10:05"), "platform": "fenxiao"})
    d = decisions(shop, T)
    assert (d["a"]["decision"], d["b"]["reason"]) == ("remind", "distribution_platform")


def test_5_other_shops_orders_do_not_count(con):
    configure(con, shops=[{"shop_id": "s1"}, {"shop_id": "s2"}])
    stage(con, "customers", {"customer_id": "c1"})
    stage(con, "orders", {"order_id": "a", "created_at": local("2026-11-24 10:00")},
          {"order_id": "b", "shop_id": "s2", "created_at": local("2026-11-24 10:05")})
    assert decisions(con, T)["a"]["decision"] == "remind"


def test_6_already_reminded(shop):
    stage(shop, "orders", {"order_id": "o1", "created_at": local("2026-11-24 10:00")},
          {"order_id": "o2", "customer_id": "c2", "created_at": local("2026-11-24 10:00")},
          {"order_id": "o3", "customer_id": "c3", "created_at": local("2026-11-24 10:00")})
    stage(shop, "customers", {"customer_id": "c2"}, {"customer_id": "c3"})
    message(shop, "m1", "payment_reminder", "o1", T - MIN, channel="call", status="queued")
    # a failed reminder counts too (CONTRACT v3): its id is fixed, only --retry-failed queues it again
    message(shop, "m2", "payment_reminder", "o2", T - MIN, customer_id="c2", status="failed")
    message(shop, "m3", "payment_reminder", "o3", T + MIN, customer_id="c3")      # not yet at T
    d = decisions(shop, T)
    assert (d["o1"]["reason"], d["o2"]["reason"], d["o3"]["decision"]) == ("already_reminded", "already_reminded",
                                                                          "remind")


def _second_purchase(con):
    stage(con, "orders", {"order_id": "first", "created_at": local("2026-11-01 10:00"), "paid_at": local("2026-11-01 10:10")},
          {"order_id": "o1", "created_at": local("2026-11-24 10:00")})


def test_7_no_offer_for_second_purchase(shop):
    _second_purchase(shop)
    d = decisions(shop, T)["o1"]
    assert (d["segment"], d["reason"]) == ("second", "no_offer")


def test_7_with_an_offer_second_purchase_is_reminded_by_sms(con):
    configure(con, reminders={"second_purchase_offer": "老客立减10元"})
    stage(con, "customers", {"customer_id": "c1"})
    _second_purchase(con)
    d = decisions(con, T)["o1"]
    assert (d["segment"], d["decision"], d["channel"], d["template"]) == ("second", "remind", "sms", "payment_reminder/second")


def test_segments_count_only_unrefunded_purchases_paid_before_the_order(shop):
    stage(shop, "orders",
          {"order_id": "p1", "created_at": local("2026-10-01 10:00"), "paid_at": local("2026-10-01 10:01")},
          {"order_id": "p2", "created_at": local("2026-10-02 10:00"), "paid_at": local("2026-10-02 10:01")},
          {"order_id": "refunded", "created_at": local("2026-10-03 10:00"), "paid_at": local("2026-10-03 10:01"),
           "refunded_at": local("2026-10-05 10:00")},
          {"order_id": "o1", "created_at": local("2026-11-24 10:00")})
    d = decisions(shop, T)["o1"]
    assert (d["segment"], d["prior_purchases"], d["channel"], d["decision"]) == ("repeat", 2, "sms", "remind")


def test_8_daily_cap_counts_todays_reminders_to_the_customer(shop):
    stage(shop, "orders", {"order_id": "o1", "created_at": local("2026-11-24 10:00")})
    message(shop, "m0", "payment_reminder", "closed-order", local("2026-11-24 09:30"))
    assert decisions(shop, T)["o1"]["reason"] == "daily_cap"


def test_8_yesterdays_and_failed_reminders_do_not_count(shop):
    stage(shop, "orders", {"order_id": "o1", "created_at": local("2026-11-24 10:00")})
    message(shop, "m0", "payment_reminder", "x", local("2026-11-23 23:59"))
    message(shop, "m1", "payment_reminder", "y", local("2026-11-24 09:00"), status="failed")
    message(shop, "m2", "followup", "z", local("2026-11-24 09:00"))
    assert decisions(shop, T)["o1"]["decision"] == "remind"


def test_8_a_cap_of_two(con):
    configure(con, reminders={"daily_cap": 2})
    stage(con, "customers", {"customer_id": "c1"})
    stage(con, "orders", {"order_id": "o1", "created_at": local("2026-11-24 10:00")})
    message(con, "m0", "payment_reminder", "x", local("2026-11-24 09:00"))
    assert decisions(con, T)["o1"]["decision"] == "remind"
    message(con, "m1", "payment_reminder", "y", local("2026-11-24 09:10"))
    assert decisions(con, T)["o1"]["reason"] == "daily_cap"


def test_9_closes_before_send(con):
    # e = t0 + 30 is after the deadline t0 + 30 - 5
    configure(con, reminders={"auto_close_minutes": 30, "min_age_minutes": 30, "strategy": "delay"})
    stage(con, "customers", {"customer_id": "c1"})
    stage(con, "orders", {"order_id": "o1", "created_at": T - 10 * MIN})
    assert decisions(con, T)["o1"]["reason"] == "closes_before_send"


def test_9_quiet_hours_pushing_past_the_deadline(con):
    # created 20:00, auto-close 120: rescued to e = 20:15, but 20:15 is not quiet; delay 70 -> 21:10 quiet -> 09:00
    configure(con, reminders={"auto_close_minutes": 120, "strategy": "delay", "delay_minutes": 70,
                              "quiet_hours": ["21:00", "09:00"]})
    stage(con, "customers", {"customer_id": "c1"})
    stage(con, "orders", {"order_id": "o1", "created_at": local("2026-11-24 20:00")})
    d = decisions(con, local("2026-11-24 20:30"))["o1"]
    assert d["send_at"] == local("2026-11-25 09:00") and d["reason"] == "closes_before_send"


def test_10_unreachable_without_a_phone_for_a_call(shop):
    stage(shop, "customers", {"customer_id": "c9", "phone": None})
    stage(shop, "orders", {"order_id": "o1", "customer_id": "c9", "created_at": local("2026-11-24 10:00")},
          {"order_id": "o2", "customer_id": "ghost", "created_at": local("2026-11-24 10:00")})
    d = decisions(shop, T)
    assert (d["o1"]["reason"], d["o2"]["reason"]) == ("unreachable", "unreachable")


def test_10_unreachable_when_the_channel_is_suppressed(con):
    configure(con, reminders={"channels": {"new": "sms"}})
    stage(con, "customers", {"customer_id": "c1"}, {"customer_id": "c2", "phone": "13800000002"})
    stage(con, "suppressions", {"phone": "13800000001", "channel": "sms", "created_at": T - MIN},
          {"customer_id": "c2", "channel": "call", "created_at": T - MIN})
    stage(con, "orders", {"order_id": "o1", "created_at": local("2026-11-24 10:00")},
          {"order_id": "o2", "customer_id": "c2", "created_at": local("2026-11-24 10:00")})
    d = decisions(con, T)
    assert (d["o1"]["reason"], d["o2"]["decision"]) == ("unreachable", "remind"), "a call suppression leaves sms"


def test_10_email_channel_needs_an_email(con):
    configure(con, reminders={"channels": {"new": "email"}})
    stage(con, "customers", {"customer_id": "c1", "email": None}, {"customer_id": "c2"})
    stage(con, "orders", {"order_id": "o1", "created_at": local("2026-11-24 10:00")},
          {"order_id": "o2", "customer_id": "c2", "created_at": local("2026-11-24 10:00")})
    d = decisions(con, T)
    assert (d["o1"]["reason"], d["o2"]["channel"], d["o2"]["decision"]) == ("unreachable", "email", "remind")


def test_11_holdout(con):
    configure(con, reminders={"holdout_rate": 1.0})
    stage(con, "customers", {"customer_id": "c1"})
    stage(con, "orders", {"order_id": "o1", "created_at": local("2026-11-24 10:00")})
    assert decisions(con, T)["o1"]["reason"] == "holdout"


def test_11_holdout_follows_hash01(con):
    # hash01('holdout:o1') = 0.2224…, hash01('holdout:o2') = 0.4305…
    configure(con, reminders={"holdout_rate": 0.3})
    stage(con, "customers", {"customer_id": "c1"}, {"customer_id": "c2"})
    stage(con, "orders", {"order_id": "o1", "created_at": local("2026-11-24 10:00")},
          {"order_id": "o2", "customer_id": "c2", "created_at": local("2026-11-24 10:00")})
    d = decisions(con, T)
    assert (d["o1"]["reason"], d["o2"]["decision"]) == ("holdout", "remind")


def test_12_wait_for_the_next_window(shop):
    stage(shop, "orders", {"order_id": "o1", "created_at": local("2026-11-24 10:50")})
    d = decisions(shop, local("2026-11-24 10:55"))["o1"]
    assert (d["decision"], d["reason"], d["send_at"]) == ("wait", "wait", local("2026-11-24 16:00"))


def test_12_wait_inside_quiet_hours_even_when_due(con):
    configure(con, reminders={"strategy": "delay", "delay_minutes": 30})
    stage(con, "customers", {"customer_id": "c1"})
    stage(con, "orders", {"order_id": "o1", "created_at": local("2026-11-24 08:00")})
    d = decisions(con, local("2026-11-24 08:45"))["o1"]      # s = 08:30 -> quiet -> 09:00 > T
    assert (d["decision"], d["send_at"]) == ("wait", local("2026-11-24 09:00"))
    d = decisions(con, local("2026-11-24 09:00"))["o1"]
    assert d["decision"] == "remind"


def test_first_reason_wins_when_several_apply(shop):
    stage(shop, "customers", {"customer_id": "c9", "opt_out": True, "phone": None})
    stage(shop, "orders", {"order_id": "o1", "customer_id": "c9", "platform": "fenxiao", "created_at": T - 2000 * MIN},
          {"order_id": "o2", "customer_id": "c9", "platform": "fenxiao", "created_at": local("2026-11-24 10:00")},
          {"order_id": "o3", "customer_id": "c9", "created_at": local("2026-11-24 10:00")})
    d = decisions(shop, T)
    assert (d["o1"]["reason"], d["o2"]["reason"], d["o3"]["reason"]) == ("expired", "distribution_platform", "opted_out")


# ------------------------------------------------------------------------------ send time

def test_delay_strategy(con):
    configure(con, reminders={"strategy": "delay"})
    stage(con, "customers", {"customer_id": "c1"})
    stage(con, "orders", {"order_id": "o1", "created_at": local("2026-11-24 10:00")})
    d = decisions(con, T)["o1"]
    assert (d["send_at"], d["decision"]) == (local("2026-11-24 12:30"), "wait")


def test_rescue_before_auto_close(con):
    # the next window (16:00) is after the deadline (t0 + 120 - 5): send at e instead
    configure(con, reminders={"auto_close_minutes": 120})
    stage(con, "customers", {"customer_id": "c1"})
    stage(con, "orders", {"order_id": "o1", "created_at": local("2026-11-24 11:10")})
    d = decisions(con, local("2026-11-24 11:30"))["o1"]
    assert (d["send_at"], d["decision"]) == (local("2026-11-24 11:25"), "remind")


def test_quiet_hours_across_midnight(con):
    configure(con, reminders={"strategy": "delay", "delay_minutes": 60})
    stage(con, "customers", {"customer_id": "c1"}, {"customer_id": "c2"})
    stage(con, "orders", {"order_id": "evening", "created_at": local("2026-11-24 20:30")},
          {"order_id": "night", "customer_id": "c2", "created_at": local("2026-11-25 00:30")})
    d = decisions(con, local("2026-11-25 01:00"))
    assert d["evening"]["send_at"] == local("2026-11-25 09:00"), "21:30 moves to the next morning"
    assert d["night"]["send_at"] == local("2026-11-25 09:00"), "01:30 moves to the same morning"
    assert {x["decision"] for x in d.values()} == {"wait"}


def test_quiet_hours_not_wrapping(con):
    configure(con, reminders={"strategy": "delay", "delay_minutes": 0, "min_age_minutes": 0,
                              "quiet_hours": ["12:00", "14:00"]})
    stage(con, "customers", {"customer_id": "c1"})
    stage(con, "orders", {"order_id": "o1", "created_at": local("2026-11-24 12:30")})
    assert decisions(con, local("2026-11-24 12:31"))["o1"]["send_at"] == local("2026-11-24 14:00")


def test_window_edges(shop):
    # e exactly at a window's start is inside; exactly at its end is outside
    stage(shop, "customers", {"customer_id": "c2"})
    stage(shop, "orders", {"order_id": "at_start", "created_at": local("2026-11-24 09:45")},
          {"order_id": "at_end", "customer_id": "c2", "created_at": local("2026-11-24 10:45")})
    d = decisions(shop, local("2026-11-24 11:30"))
    assert d["at_start"]["send_at"] == local("2026-11-24 10:00")
    assert d["at_end"]["send_at"] == local("2026-11-24 16:00")


def test_dst_change_day_in_new_york(con):
    configure(con, timezone="America/New_York")
    stage(con, "customers", {"customer_id": "c1"})
    # 01:50 EST, e = 02:05 EST = 03:05 EDT; the 10:00 window is in EDT (14:00Z), not EST (15:00Z)
    stage(con, "orders", {"order_id": "o1", "created_at": local("2026-03-08 01:50", NY)})
    d = decisions(con, local("2026-03-08 10:30", NY))["o1"]
    assert d["send_at"] == local("2026-03-08 10:00", NY) and str(d["send_at"]) .startswith("2026-03-08 14:00")
    assert d["decision"] == "remind"


def test_dst_fall_back_quiet_hours_end(con):
    configure(con, timezone="America/New_York", reminders={"strategy": "delay", "delay_minutes": 60,
                                                           "quiet_hours": ["00:30", "01:30"]})
    stage(con, "customers", {"customer_id": "c1"})
    # 2026-11-01 01:30 happens twice in New York; the quiet period ends at its first occurrence (05:30Z)
    stage(con, "orders", {"order_id": "o1", "created_at": local("2026-10-31 23:50", NY)})
    d = decisions(con, local("2026-11-01 00:10", NY))["o1"]
    assert str(d["send_at"]).startswith("2026-11-01 05:30")


def test_style_variant_template(shop):
    stage(shop, "products", {"product_id": "p1", "style_tags": ["plain"]}, {"product_id": "p2", "style_tags": ["gift", "cute"]})
    stage(shop, "order_items", {"order_id": "o1", "line_no": 1, "product_id": "p1"},
          {"order_id": "o1", "line_no": 2, "product_id": "p2"})
    stage(shop, "orders", {"order_id": "o1", "created_at": local("2026-11-24 10:00")})
    assert decisions(shop, T, variants=["new.cute", "new.gift"])["o1"]["template"] == "payment_reminder/new.gift"
    assert decisions(shop, T, variants=["new.cute"])["o1"]["template"] == "payment_reminder/new.cute"
    assert decisions(shop, T, variants=["repeat.cute"])["o1"]["template"] == "payment_reminder/new"
