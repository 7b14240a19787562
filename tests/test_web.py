"""The agents' page over HTTP (`crm serve` in its own process): what it lists, what a save refuses, and
how it shares the DuckDB file with the flows (issue 6, item 5)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx
import pytest

import workspace
from conftest import crm
from crm.db import connect

HOLD = """
import sys, time
from crm.config import load_settings
from crm.db import session
with session(sys.argv[1], load_settings(sys.argv[2])) as con:
    con.execute("UPDATE staging.customers SET city = '宁波' WHERE customer_id = 'c2'")
    print("holding", flush=True)
    time.sleep(float(sys.argv[3]))
"""


@pytest.fixture
def served(tmp_path):
    db, config = workspace.make(tmp_path)
    server = workspace.Served(db, config)
    yield server, db, config
    server.stop()


def outcome(**kw) -> dict:
    return {"reached": "true", "quality": "good", "logistics": "good", "packaging": "good", "service": "good",
            "compensation": "none", **kw}


def outcomes(db) -> list[tuple]:
    con = connect(db, read_only=True)
    try:
        return con.execute("SELECT order_id, reached, gift FROM ops.visit_outcomes ORDER BY recorded_at").fetchall()
    finally:
        con.close()


def test_list_is_in_rank_order_with_the_reason(served):
    # catches: calls out of rank order, or a tier shown without why
    server, _, _ = served
    page = httpx.get(f"{server.url}/shops/s1").text
    order = [o for o in ("o-high", "o-bad", "o-mid", "o-praise") if f'data-order="{o}"' in page]
    assert order == ["o-high", "o-bad", "o-mid", "o-praise"]
    assert page.index('data-order="o-high"') < page.index('data-order="o-bad"') < page.index('data-order="o-praise"')
    task = httpx.get(f"{server.url}/shops/s1/calls/o-praise").text
    assert "评价中提到:慢" in task, "complaint in praise names the word that put it there"
    assert "猫爬架 ×1, 逗猫棒 ×2" in task and "CNY 88.00" in task
    assert httpx.get(f"{server.url}/shops/nope").status_code == 404
    assert httpx.get(f"{server.url}/shops/s1/calls/o-a").status_code == 404, "o-a got no call (capacity 4)"


def test_bad_form_input_saves_nothing(served):
    server, db, _ = served
    cases = [
        ({"quality": "good"}, "reached"),
        (outcome(quality="great"), "quality must be good, issue or n/a"),
        (outcome(reached="false"), "call-back time"),
        (outcome(reached="false", callback_at="2020-01-01T10:00"), "in the future"),
        (outcome(compensation="免单!"), "compensation"),
    ]
    for form, message in cases:
        r = httpx.post(f"{server.url}/shops/s1/calls/o-bad", data=form)
        assert r.status_code == 422 and message in r.text, (form, r.status_code)
        assert 'role="alert"' in r.text
    assert outcomes(db) == []
    assert workspace.statuses(db)["o-bad"] == "queued"


def test_a_gift_over_the_ratio_is_refused_with_a_message(served):
    # gift_ratio 0.25: the month's first gift is allowed; a second one after one reached visit is 2 in 2
    server, db, _ = served
    assert httpx.post(f"{server.url}/shops/s1/calls/o-high", data=outcome(gift="true")).status_code == 303
    refused = httpx.post(f"{server.url}/shops/s1/calls/o-bad", data=outcome(gift="true"))
    assert refused.status_code == 422
    assert "gift refused" in refused.text and "25%" in refused.text
    assert 'name="gift" value="true" checked' in refused.text, "the form keeps what the agent typed"
    assert outcomes(db) == [("o-high", True, True)]
    assert workspace.statuses(db) == {"o-high": "done", "o-bad": "queued", "o-mid": "queued", "o-praise": "queued",
                                     "u1": "queued"}
    # the same order cannot be recorded twice
    again = httpx.post(f"{server.url}/shops/s1/calls/o-high", data=outcome())
    assert again.status_code == 422 and "already recorded" in again.text


def test_the_page_works_while_a_flow_holds_the_file(served):
    # catches: a page that errors or hangs while a flow writes, reads queued behind a save that waits for
    # the flow, and a save lost because the file was locked
    server, db, config = served
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(db), str(config), "8"], stdout=subprocess.PIPE, text=True)
    saved = {}
    try:
        assert holder.stdout.readline().strip() == "holding"
        save = threading.Thread(target=lambda: saved.update(r=httpx.post(
            f"{server.url}/shops/s1/calls/o-bad", data=outcome(suggestion="rope"), timeout=30)))
        save.start()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            pages = [client.get(path) for path in ("/shops/s1", "/", "/shops/s1/calls/o-mid", "/shops/s1")]
        assert [p.status_code for p in pages] == [200] * 4
        assert holder.poll() is None and save.is_alive(), "answered while the flow held the file and the save waited"
        assert "o-bad" in pages[0].text and "有流程正在写入数据库" in pages[0].text, "read from the published copy"
        save.join(30)
        assert saved["r"].status_code == 303, saved["r"].text
        assert holder.wait(10) == 0, "the flow finished normally"
    finally:
        holder.kill()
    assert workspace.statuses(db)["o-bad"] == "done"
    time.sleep(2)                          # the page tries the live file again 2 s after it found it busy
    fresh = httpx.get(f"{server.url}/shops/s1/calls/o-bad").text
    assert "宁波" in fresh and "有流程正在写入数据库" not in fresh, "after the flow: the live file, with its write"


def test_a_flow_is_not_blocked_by_the_page(local_server, tmp_path):
    # a real plan flow through the CLI while an agent keeps reading and saving
    db, config = workspace.make(tmp_path, db=local_server.parent / "web.duckdb")
    server = workspace.Served(db, config)
    answers, stop = [], threading.Event()

    def agent():
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for order_id in ("o-high", "o-bad", "o-mid", "o-praise"):
                answers.append(client.get("/shops/s1").status_code)
                answers.append(client.post(f"/shops/s1/calls/{order_id}", data=outcome()).status_code)
            while not stop.is_set():             # agents refreshing their lists all the while
                answers.append(client.get("/shops/s1").status_code)
                time.sleep(0.02)

    thread = threading.Thread(target=agent)
    try:
        thread.start()
        result = crm("--db", str(db), "--config", str(config), "plan", "--as-of", "2026-11-24T12:00:00+08:00",
                     env={"PREFECT_API_URL": ""})
    finally:
        stop.set()
        thread.join(60)
        server.stop()
    assert result.returncode == 0, result.stderr + result.stdout
    assert set(answers) <= {200, 303} and len(answers) > 8, answers
    assert [s for o, s in sorted(workspace.statuses(db).items()) if o.startswith("o-")] == ["done"] * 4


def test_a_payment_reminder_call_is_marked_called(served):
    # catches: reminder calls that no agent can see or close (they would stay queued for ever)
    server, db, _ = served
    page = httpx.get(f"{server.url}/shops/s1").text
    assert 'data-reminder="u1"' in page and "新客户" in page and "CNY 66.00" in page
    assert "66.00" in page.split('data-reminder="u1"')[1].split("</tr>")[0]
    r = httpx.post(f"{server.url}/shops/s1/reminders/u1")
    assert r.status_code == 303
    assert workspace.statuses(db)["u1"] == "done"
    assert httpx.post(f"{server.url}/shops/s1/reminders/u1").status_code == 404, "only once"
    assert "✔" in httpx.get(f"{server.url}/shops/s1").text.split('data-reminder="u1"')[1].split("</tr>")[0]


def test_beyond_this_machine_the_page_needs_a_password(tmp_path):
    # catches: customers' phone numbers served to the network without any login
    db, config = workspace.make(tmp_path)
    refused = crm("--db", str(db), "--config", str(config), "serve", "--host", "0.0.0.0", env={"CRM_WEB_PASSWORD": ""})
    assert refused.returncode == 2 and "CRM_WEB_PASSWORD" in refused.stderr
    server = workspace.Served(db, config, env={"CRM_WEB_PASSWORD": "s3cret"})
    try:
        assert httpx.get(f"{server.url}/shops/s1").status_code == 401
        assert httpx.get(f"{server.url}/shops/s1", auth=("agent", "wrong")).status_code == 401
        page = httpx.get(f"{server.url}/shops/s1", auth=("小李", "s3cret"))
        assert page.status_code == 200 and 'data-order="o-high"' in page.text
    finally:
        server.stop()


def test_a_reminder_call_for_an_order_paid_since_is_not_listed_to_call(served):
    # catches: agents asked to chase an order the customer has paid meanwhile
    server, db, _ = served
    con = connect(db)
    try:
        con.execute("UPDATE staging.orders SET paid_at = created_at + INTERVAL 5 MINUTE WHERE order_id = 'u1'")
    finally:
        con.close()
    page = httpx.get(f"{server.url}/shops/s1").text
    assert 'data-reminder="u1"' not in page
    assert 'id="settled">另有 1 个在排队后已付款或已关闭' in page
