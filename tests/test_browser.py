"""The agents' page in headless Chromium (Debian's chromium, driven by Playwright), as an agent uses it:
pick the shop, open the first call, read the script, record the outcome, and see the call done.
Catches: a page that renders but whose form does not save, a save that does not close the call task, a
list that is not in rank order."""

from __future__ import annotations

import shutil

import pytest
from playwright.sync_api import expect, sync_playwright

import workspace
from crm.db import connect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


@pytest.fixture
def served(tmp_path):
    db, config = workspace.make(tmp_path)
    server = workspace.Served(db, config)
    yield server, db
    server.stop()


@pytest.fixture
def page(tmp_path):
    if not shutil.which("chromium"):
        pytest.fail("Debian's chromium is not installed (./run test installs it: apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield browser.new_page(locale="zh-CN")
        finally:
            browser.close()


def test_an_agent_records_a_call_and_sees_it_done(served, page, tmp_path):
    server, db = served
    page.goto(server.url + "/")
    page.get_by_role("link", name="萌宠小铺").click()

    rows = page.locator("#to-call + table tbody tr")
    expect(rows).to_have_count(4)
    assert [rows.nth(i).get_attribute("data-order") for i in range(4)] == ["o-high", "o-bad", "o-mid", "o-praise"]

    # the second call: the bad review
    rows.nth(1).get_by_role("link").click()
    expect(page.locator(".why")).to_contain_text("1 分")
    expect(page.locator("pre.script")).to_contain_text("客户2")
    page.screenshot(path=str(tmp_path / "task.png"), full_page=True)

    # saving without saying whether the customer was reached is refused (in the shop's language), nothing saved
    page.get_by_role("button", name="保存").click()
    expect(page.get_by_role("alert")).to_have_text("请选择是否联系上客户。未保存任何内容。")
    assert workspace.statuses(db)["o-bad"] == "queued"

    page.get_by_label("已联系上").check()
    page.locator("input[name=quality][value=issue]").check()
    page.locator("input[name=logistics][value=good]").check()
    page.get_by_label("客户建议").fill("猫爬架的绳子可以再粗一点")
    page.get_by_label("赠送礼品").check()
    page.get_by_label("补偿").select_option("coupon")
    page.get_by_label("坐席").fill("小李")
    page.get_by_role("button", name="保存").click()

    # back on the list: the call is done and no longer waiting
    expect(page.get_by_role("status")).to_contain_text("o-bad")
    done = page.locator("#done + table tbody tr")
    expect(done).to_have_count(1)
    expect(done.first).to_have_attribute("data-order", "o-bad")
    expect(done.first).to_contain_text("小李")
    expect(page.locator("#to-call + table tbody tr")).to_have_count(3)
    page.screenshot(path=str(tmp_path / "list.png"), full_page=True)

    assert workspace.statuses(db)["o-bad"] == "done"
    con = connect(db, read_only=True)
    try:
        saved = con.execute("SELECT reached, quality, logistics, packaging, service, suggestion, gift, compensation, "
                            "agent FROM ops.visit_outcomes WHERE order_id = 'o-bad'").fetchall()
    finally:
        con.close()
    assert saved == [(True, "issue", "good", "n/a", "n/a", "猫爬架的绳子可以再粗一点", True, "coupon", "小李")]


def test_a_customer_not_reached_moves_to_call_back_later(served, page):
    # 15:30 on the page's day (its clock is at T, 11:30 Shanghai): later today, whatever day the tests run
    server, db = served
    page.goto(server.url + "/shops/s1/calls/o-high")
    page.get_by_label("未联系上,稍后回拨").check()
    page.get_by_label("回拨时间(店铺时间)").fill("2026-11-24T15:30")
    page.get_by_role("button", name="保存").click()
    later = page.locator("#later + table tbody tr")
    expect(later).to_have_count(1)
    expect(later.first).to_contain_text("回拨时间 2026-11-24 15:30")
    assert workspace.statuses(db)["o-high"] == "queued", "not reached: the call stays queued"
