"""A queued call keeps the context of the plan that created it (issue 11.5): re-planning a T that was already
dispatched (or any later T) leaves out the orders that already have a follow-up (docs/rules.md §5), and the agents'
list must still show each call's tier, rank, rating and review, in rank order. Real pipeline, real DuckDB file."""

from __future__ import annotations

from datetime import timedelta

from crm.config import load_settings
from crm.db import session, sql_text
import workspace
from transforms.plan import plan


def call_list(db, config, now) -> list[dict]:
    with session(db, load_settings(config)) as con:
        cursor = con.execute(sql_text("workspace/call_list.sql"), {"shop_id": "s1", "order_id": None, "now": now})
        cols = [d[0] for d in cursor.description]
        return [dict(zip(cols, r)) for r in cursor.fetchall()]


def test_replanning_the_dispatched_t_keeps_every_calls_tier_rank_and_review(tmp_path):
    # catches: a literal "None" tier and a lost rank order after a second plan at the same T (0 of 120 kept)
    db, config = workspace.make(tmp_path)
    first = call_list(db, config, workspace.T)
    assert [(c["order_id"], c["tier"], c["rank"]) for c in first] == [
        ("o-high", "high_value", 1), ("o-bad", "bad_review", 2), ("o-mid", "neutral_review", 3),
        ("o-praise", "complaint_in_praise", 4)]
    assert first[3]["review_text"] == "很好看,就是物流有点慢" and first[3]["complaint_words"] == ["慢"]

    settings = load_settings(config)
    with session(db, settings) as con:
        plan(con, workspace.T)                              # the same T again
        plan(con, workspace.T + timedelta(hours=2))         # and a later one
        # the new plans leave the called orders out, as the rules say
        replanned = con.execute("SELECT count(*) FROM marts.visit_tasks WHERE as_of = ? AND order_id IN "
                                "('o-high', 'o-bad', 'o-mid', 'o-praise')", [workspace.T]).fetchone()[0]
        assert replanned == 0
    again = call_list(db, config, workspace.T + timedelta(hours=2))
    keep = ("order_id", "tier", "rank", "rating", "review_text", "complaint_words", "planned_at")
    assert [{k: c[k] for k in keep} for c in again] == [{k: c[k] for k in keep} for c in first]
    assert all(c["planned_at"] == workspace.T for c in again)
