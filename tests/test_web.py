"""The agents' page over HTTP (`crm serve` in its own process, its clock set to the fixture's T): what it
lists, what a save refuses and in which language, the times it shows, and how it shares the DuckDB file with
the flows (issue 6, item 5; issue 11, items 1 and 9)."""

from __future__ import annotations

import html
import os
import re
import string
import subprocess
import sys
import threading
import time
from datetime import timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest

import workspace
from conftest import crm
from crm.config import load_settings, parse_settings
from crm.db import analytics_path, connect
from crm.web import PAGE_REFUSALS, Page, Workspace
from transforms.outcomes import ENGLISH, Refusal

SH = ZoneInfo("Asia/Shanghai")

HOLD = """
import sys, time
from crm.config import load_settings
from crm.db import session
with session(sys.argv[1], load_settings(sys.argv[2])) as con:
    con.execute("UPDATE staging.customers SET city = '宁波' WHERE customer_id = 'c2'")
    print("holding", flush=True)
    sys.stdin.readline()           # until the test lets go
"""


@pytest.fixture
def served(request, tmp_path):
    """The fixture's shop (zh-CN; `indirect` parametrization picks another locale) served at T."""
    db, config = workspace.make(tmp_path, locale=getattr(request, "param", "zh-CN"))
    server = workspace.Served(db, config)
    yield server, db, config
    server.stop()


def alert(page: str) -> str:
    """The text of the page's refusal."""
    found = re.search(r'<p class="note error" role="alert">(.*?)</p>', page, re.S)
    assert found, page[:2000]
    return html.unescape(found.group(1))


def english_words(text: str, *allowed: str) -> list[str]:
    """Latin words left in a text once the given ids and typed values are taken out ("T" of a time is one letter)."""
    for word in allowed:
        text = text.replace(word, "")
    return re.findall(r"[A-Za-z]{2,}", text)


def shanghai(ts) -> str:
    return ts.astimezone(SH).strftime("%Y-%m-%d %H:%M")


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
    missing = httpx.get(f"{server.url}/shops/s1/calls/o-a")
    assert missing.status_code == 404, "o-a got no call (capacity 4)"
    assert missing.text == "店铺 s1 中没有订单 o-a 的回访电话"


# form, then the refusal's words in en and in zh-CN (the page's now is T = 2026-11-24 11:30 in Shanghai)
BAD_FORMS = [
    ({"quality": "good"}, "say whether the customer was reached", "请选择是否联系上客户"),
    (outcome(quality="great"), "Quality must be good, issue or n/a, got “great”", "质量只能选满意、有问题或未涉及,收到的是“great”"),
    (outcome(quality="great", service="meh"), "got “great”; Service must be good", "收到的是“great”;服务只能选"),
    (outcome(reached="false"), "not reached: pick a call-back time", "未联系上客户:请选择回拨时间"),
    (outcome(reached="false", callback_at="tomorrow"),
     "the call-back time must look like 2026-11-24T15:30, got “tomorrow”", "回拨时间格式应类似 2026-11-24T15:30,收到的是“tomorrow”"),
    # half an hour before the page's now: in the past, whatever day the tests run
    (outcome(reached="false", callback_at="2026-11-24T11:00"), "must be in the future (it is now 2026-11-24 11:",
     "回拨时间必须晚于当前时间(2026-11-24 11:"),
    (outcome(compensation="免单!"), "compensation must be a word like none", "补偿方式无效:“免单!”"),
    (outcome(reached="false", callback_at="2026-11-25T10:00", gift="true"),
     "a gift or compensation needs a reached customer", "未联系上客户时不能赠送礼品或给予补偿"),
]


@pytest.mark.parametrize("served", ["zh-CN", "en"], indirect=True)
def test_bad_form_input_saves_nothing_and_says_why_in_the_shops_language(served):
    server, db, config = served
    locale = load_settings(config).shops[0].locale
    agent = workspace.Agent(server.url)
    for form, en, zh in BAD_FORMS:
        r = agent.post("/shops/s1/calls/o-bad", data=form)
        assert r.status_code == 422, (form, r.status_code)
        said = alert(r.text)
        if locale == "en":
            assert en in said and said.endswith(". Nothing was saved."), (form, said)
        else:
            assert zh in said and said.endswith("。未保存任何内容。"), (form, said)
            assert english_words(said, "great", "meh", "tomorrow") == [], (form, said)
    assert outcomes(db) == []
    assert workspace.statuses(db)["o-bad"] == "queued"


def test_a_gift_over_the_ratio_is_refused_with_a_message(served):
    # gift_ratio 0.25: the month's first gift is allowed; a second one after one reached visit is 2 in 2
    server, db, _ = served
    agent = workspace.Agent(server.url)
    assert agent.post("/shops/s1/calls/o-high", data=outcome(gift="true")).status_code == 303
    refused = agent.post("/shops/s1/calls/o-bad", data=outcome(gift="true"))
    assert refused.status_code == 422
    said = alert(refused.text)
    assert said == "不能赠送礼品:本月已联系上的回访将变为 2 次中赠送 2 次(100%),超过店铺的赠品比例上限 25%。未保存任何内容。"
    assert 'name="gift" value="true" checked' in refused.text, "the form keeps what the agent typed"
    assert outcomes(db) == [("o-high", True, True)]
    assert workspace.statuses(db) == {"o-high": "done", "o-bad": "queued", "o-mid": "queued", "o-praise": "queued",
                                     "u1": "queued"}
    # the same order cannot be recorded twice; the first time is shown as the shop's wall time
    again = agent.post("/shops/s1/calls/o-high", data=outcome())
    con = connect(db, read_only=True)
    try:
        (recorded_at,), = con.execute("SELECT recorded_at FROM ops.visit_outcomes WHERE order_id = 'o-high'").fetchall()
    finally:
        con.close()
    assert recorded_at - workspace.T < timedelta(minutes=5), "recorded by the page's clock, not the real time"
    assert again.status_code == 422
    assert alert(again.text) == f"订单 o-high 已于 {shanghai(recorded_at)} 记录为已联系上,不能重复记录。未保存任何内容。"


def test_a_not_reached_call_saved_twice_is_recorded_once_and_no_save_predates_the_call(tmp_path):
    # catches: a double-clicked "not reached" recorded twice, and a page whose clock is before the call was queued
    db, config = workspace.make(tmp_path)
    server = workspace.Served(db, config)
    try:
        agent = workspace.Agent(server.url)
        form = {"reached": "false", "callback_at": "2026-11-24T15:30", "agent": "小李"}
        assert agent.post("/shops/s1/calls/o-bad", data=form).status_code == 303
        twice = agent.post("/shops/s1/calls/o-bad", data=form)
        assert twice.status_code == 422
        assert re.fullmatch(r"订单 o-bad 的这次未联系上记录已于 2026-11-24 11:3\d 保存过,不能重复记录。未保存任何内容。",
                            alert(twice.text)), alert(twice.text)
        assert agent.post("/shops/s1/calls/o-bad", data={**form, "callback_at": "2026-11-24T16:00"}).status_code == 303
    finally:
        server.stop()
    assert outcomes(db) == [("o-bad", False, False)] * 2
    early = workspace.Served(db, config, as_of=workspace.T - timedelta(hours=1))
    try:
        refused = workspace.Agent(early.url).post("/shops/s1/calls/o-mid", data=outcome())
    finally:
        early.stop()
    assert refused.status_code == 422
    assert re.fullmatch(r"记录时间 2026-11-24 10:3\d 早于这次回访电话的创建时间\(2026-11-24 11:30\)。未保存任何内容。",
                        alert(refused.text)), alert(refused.text)
    assert outcomes(db) == [("o-bad", False, False)] * 2


def test_every_refusal_has_its_words_in_both_languages():
    # catches: a refusal the page can show that falls back to English on a zh-CN page (or has no words at all)
    page = Page(Workspace("unused.duckdb", parse_settings({"shops": [{"shop_id": "s1"}]})))
    codes = set(ENGLISH) | set(PAGE_REFUSALS)
    samples = {"value": "great", "category": "quality", "field": "callback_at", "at": workspace.T, "now": workspace.T,
               "created": workspace.T,
               "order_id": "o-bad", "shop": "s1", "gifts": 3, "reached": 9, "share": 1 / 3, "ratio": 0.25,
               "seconds": 15}
    for locale in ("en", "zh-CN"):
        wording = page.labels[locale]["refusals"]
        assert set(wording) == codes, (locale, set(wording) ^ codes)
    for code in codes:
        names = {name for locale in ("en", "zh-CN")
                 for _, name, _, _ in string.Formatter().parse(page.labels[locale]["refusals"][code]) if name}
        if code in ENGLISH:
            assert names == {name for _, name, _, _ in string.Formatter().parse(ENGLISH[code]) if name}, code
        facts = {name: samples[name] for name in names}
        shop = page.ws.settings.shops[0]
        zh = page.say(page.labels["zh-CN"], shop, [Refusal(code, facts)])
        assert english_words(zh, "great", "o-bad", "s1") == [], (code, zh)
        assert "{" not in zh and "{" not in page.say(page.labels["en"], shop, [Refusal(code, facts)]), code
    # the import keeps its English, with the time as it was recorded
    assert str(Refusal("gift_refused", {"gifts": 2, "reached": 2, "share": 1.0, "ratio": 0.25})) == (
        "gift refused: it would make 2 gifts in 2 reached visits this month (100%), above the shop's gift_ratio of 25%")
    assert page.say(page.labels["zh-CN"], shop, [Refusal("callback_past", {"now": workspace.T})]) == \
        "回拨时间必须晚于当前时间(2026-11-24 11:30)"


def test_a_save_while_a_flow_holds_the_file_too_long_says_so_in_the_shops_language(tmp_path):
    # the page (in this process, for its 1 s write wait) while another process holds the file as a flow does
    db, config = workspace.make(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(db), str(config)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with workspace.served_here(db, config, write_wait=1.0) as url, workspace.Agent(url, timeout=30) as client:
            busy = client.post("/shops/s1/calls/o-bad", data=outcome())
            assert busy.status_code == 503
            assert alert(busy.text) == "有流程正在写入数据库(已等待 1 秒)。未保存任何内容。"
            assert 'name="reached" value="true" checked' in busy.text, "the form keeps what the agent typed"
            called = client.post("/shops/s1/reminders/u1", follow_redirects=False)
            assert called.status_code == 503 and called.text == "有流程正在写入数据库(已等待 1 秒)。未保存任何内容。"
            analytics_path(db).unlink()                  # nothing to read while the flow writes
            for path in ("/shops/s1", "/"):
                unreadable = client.get(path)
                assert unreadable.status_code == 503 and unreadable.text == "有流程正在写入数据库,暂时还没有可读取的副本", path
        assert holder.poll() is None, "all of it while the flow still held the file"
    finally:
        holder.kill()
        holder.wait(10)
    assert outcomes(db) == []
    assert workspace.statuses(db)["o-bad"] == "queued" and workspace.statuses(db)["u1"] == "queued"


def test_times_on_a_shops_pages_are_its_local_times(served):
    # catches: UTC on a Shanghai shop's page next to local times (the same moment shown twice, 8 hours apart)
    server, db, _ = served
    task = httpx.get(f"{server.url}/shops/s1/calls/o-bad").text
    assert f"签收 {shanghai(workspace.DELIVERED)}" in task and "签收 2026-11-17 15:00" in task, "delivered 15:00 Shanghai"
    assert "2026-11-17 07:00" not in task, "not its UTC time"
    assert "(计划于 2026-11-24 11:30)" in task, "planned at T, 03:30 UTC"
    assert "时间均为店铺当地时间:Asia/Shanghai(UTC+08:00)" in task
    assert "页面时钟已设定,当前时间为 2026-11-24 11:" in task, "the page says its clock is set"
    listed = httpx.get(f"{server.url}/shops/s1").text
    u1 = listed.split('data-reminder="u1"')[1].split("</tr>")[0]
    assert "2026-11-25 09:40" in u1, "closes 24 h after 09:40 Shanghai"


def test_the_page_works_while_a_flow_holds_the_file(served):
    # catches: a page that errors or hangs while a flow writes, reads queued behind a save that waits for
    # the flow, and a save lost because the file was locked
    server, db, config = served
    copy = analytics_path(db)
    os.utime(copy, (workspace.T.timestamp(), workspace.T.timestamp()))      # published at T (11:30 Shanghai)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(db), str(config)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    saved = {}
    try:
        assert holder.stdout.readline().strip() == "holding"
        agent = workspace.Agent(server.url, timeout=30)
        agent.token                              # the form was opened before the flow took the file
        save = threading.Thread(target=lambda: saved.update(r=agent.post(
            "/shops/s1/calls/o-bad", data=outcome(suggestion="rope"))))
        save.start()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            pages = [client.get(path) for path in ("/shops/s1", "/", "/shops/s1/calls/o-mid", "/shops/s1")]
        assert [p.status_code for p in pages] == [200] * 4
        assert holder.poll() is None and save.is_alive(), "answered while the flow held the file and the save waited"
        holder.stdin.write("\n")                 # the flow is done
        holder.stdin.close()
        assert "o-bad" in pages[0].text and "有流程正在写入数据库" in pages[0].text, "read from the published copy"
        save.join(30)
        assert saved["r"].status_code == 303, saved["r"].text
        assert holder.wait(10) == 0, "the flow finished normally"
    finally:
        holder.kill()
    assert workspace.statuses(db)["o-bad"] == "done"
    # the copy's time in Shanghai time on the shop's page and on the index (no Accept-Language: the first shop's
    # locale, zh-CN)
    assert "当前显示的是 2026-11-24 11:30 发布的副本" in pages[0].text
    assert "当前显示的是 2026-11-24 11:30 (Asia/Shanghai) 发布的副本" in pages[1].text and "03:30" not in pages[1].text
    time.sleep(2)                          # the page tries the live file again 2 s after it found it busy
    fresh = httpx.get(f"{server.url}/shops/s1/calls/o-bad").text
    assert "宁波" in fresh and "有流程正在写入数据库" not in fresh, "after the flow: the live file, with its write"


def test_a_flow_is_not_blocked_by_the_page(local_server, tmp_path):
    # a real plan flow through the CLI while an agent keeps reading and saving
    db, config = workspace.make(tmp_path, db=local_server.parent / "web.duckdb")
    server = workspace.Served(db, config)
    answers, stop = [], threading.Event()

    def agent():
        with workspace.Agent(server.url, timeout=30) as client:
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
    agent = workspace.Agent(server.url)
    r = agent.post("/shops/s1/reminders/u1")
    assert r.status_code == 303
    assert workspace.statuses(db)["u1"] == "done"
    again = agent.post("/shops/s1/reminders/u1")
    assert again.status_code == 404 and again.text == "店铺 s1 中没有订单 u1 的待拨催付电话", "only once"
    con = connect(db, read_only=True)
    try:
        (called_at,), = con.execute(
            "SELECT sent_at FROM ops.messages WHERE message_id = 'payment_reminder:u1'").fetchall()
    finally:
        con.close()
    assert called_at - workspace.T < timedelta(minutes=5), "called by the page's clock"
    row = httpx.get(f"{server.url}/shops/s1").text.split('data-reminder="u1"')[1].split("</tr>")[0]
    assert f"✔ {shanghai(called_at)}" in row, "called today (the page's today), at its Shanghai time"


def test_what_the_page_lists_follows_its_clock(tmp_path):
    # catches: a page that decides "open" and "today" by the real time (the reminder test was red on main
    # once the fixture's order had closed by the wall clock)
    db, config = workspace.make(tmp_path)
    for as_of, listed in ((workspace.T, True), (workspace.T + timedelta(days=1), False)):
        server = workspace.Served(db, config, as_of=as_of)
        try:
            page = httpx.get(f"{server.url}/shops/s1").text
        finally:
            server.stop()
        assert ('data-reminder="u1"' in page) is listed, as_of
        assert ('id="settled">另有 1 个' in page) is not listed, "a day later u1 has closed (auto-close 24 h)"


def test_beyond_this_machine_the_page_needs_a_password(tmp_path):
    # catches: customers' phone numbers served to the network without any login
    db, config = workspace.make(tmp_path)
    refused = crm("--db", str(db), "--config", str(config), "serve", "--host", "0.0.0.0", env={"CRM_WEB_PASSWORD": ""})
    assert refused.returncode == 2 and "CRM_WEB_PASSWORD" in refused.stderr
    naive = crm("--db", str(db), "--config", str(config), "serve", "--as-of", "2026-11-24T11:30")
    assert naive.returncode == 2 and naive.stderr.startswith("error: --as-of") and "offset" in naive.stderr
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


@pytest.mark.parametrize("accept, title, lang", [
    ("zh-CN,zh;q=0.9,en;q=0.8", "回访电话", "zh-CN"),
    ("en-US,en;q=0.9", "Follow-up calls", "en"),
    ("fr-FR, en;q=0.5", "Follow-up calls", "en"),
    ("en;q=0.2, zh-TW;q=0.8", "回访电话", "zh-CN"),
    (None, "回访电话", "zh-CN"),                          # no preference: the first shop's locale
])
def test_the_index_speaks_the_browsers_language(served, accept, title, lang):
    server, _, _ = served
    headers = {"Accept-Language": accept} if accept else {}
    index = httpx.get(f"{server.url}/", headers=headers).text
    assert f'<html lang="{lang}">' in index and f"<title>{title}</title>" in index
    assert ("选择店铺" in index) is (lang == "zh-CN") and ("Pick a shop" in index) is (lang == "en")
    missing = httpx.get(f"{server.url}/shops/nope", headers=headers)
    assert missing.status_code == 404
    assert missing.text == ("没有这个店铺:nope" if lang == "zh-CN" else "no such shop: nope")


def test_serve_says_when_the_hooks_accept_unsigned_requests(tmp_path):
    # catches: anyone who can reach the port posting delivery receipts and opt-outs, unnoticed
    db, config = workspace.make(tmp_path)
    note = "accept unsigned requests"
    server = workspace.Served(db, config, env={"CRM_GATEWAY_SIGNING_SECRET": "", "CRM_HOOK_KEY": ""})
    server.stop()
    said = server.proc.stdout.read()
    assert "note: /hooks/receipts and /hooks/replies and /hooks/kannel/ " + note in said, said
    assert "set [gateway] signing_secret and hook_key" in said
    secret = "whsec_" + __import__("base64").b64encode(b"k" * 24).decode()
    server = workspace.Served(db, config, env={"CRM_GATEWAY_SIGNING_SECRET": secret, "CRM_HOOK_KEY": "h00k"})
    server.stop()
    said = server.proc.stdout.read()
    assert note not in said and "agents' page on" in said, said
