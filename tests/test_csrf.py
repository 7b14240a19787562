"""Cross-site request forgery on the agents' page (issue 12, item 7): a page of another origin that makes the
agent's browser POST to `crm serve` saves nothing and gets 403 in the page's language, with the password set
and the browser's credentials cached; the real forms keep working. The attacker is a real page served by a
second server on 127.0.0.1 (another port: another origin, but the same site, so cookies of either reach both),
opened in Debian's chromium. Below it, the same checks over plain HTTP, each layer on its own (the token, the
browser's Sec-Fetch-Site, the Origin), and the /hooks/ paths left to their own signatures."""

from __future__ import annotations

import asyncio
import re
import shutil
import threading
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import workspace
from conftest import free_port
from crm.config import parse_settings
from crm.db import connect
from crm.web import CSRF_COOKIE, CsrfGuard, create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]
PASSWORD = "s3cret"
GIFT = {"reached": "true", "quality": "good", "logistics": "good", "packaging": "good", "service": "good",
        "suggestion": "pwned", "gift": "true", "compensation": "partial_refund", "agent": "mallory"}
ZH_REFUSED = "此请求不是从坐席页面发出的,或页面已过期:请刷新页面后重试。未保存任何内容。"
EN_REFUSED = "this request did not come from the agents' page, or the page is out of date: reload it and try again. " \
             "Nothing was saved."


class Attacker:
    """Another origin on 127.0.0.1: each path answers an HTML page (and optional extra headers)."""

    def __init__(self, pages: dict[str, tuple[str, dict]]):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body, headers = pages.get(self.path, ("not here", {}))
                self.send_response(200 if self.path in pages else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def forged(action: str, fields: dict) -> str:
    """A page that POSTs a form to `action` as soon as it loads, as a hostile site would."""
    inputs = "".join(f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in fields.items())
    return (f'<!doctype html><html><body><h1>cute cats</h1><form id="f" method="post" action="{escape(action)}">'
            f'{inputs}</form><script>document.getElementById("f").submit()</script></body></html>')


def state(db) -> tuple[list, list]:
    """Everything a forged request could change: the outcomes and the outbox."""
    con = connect(db, read_only=True)
    try:
        return (con.execute("SELECT * FROM ops.visit_outcomes ORDER BY ALL").fetchall(),
                con.execute("SELECT message_id, status, sent_at, attempts FROM ops.messages ORDER BY ALL").fetchall())
    finally:
        con.close()


@pytest.fixture
def browser():
    if not shutil.which("chromium"):
        pytest.fail("Debian's chromium is not installed (./run test installs it: apt-get install chromium)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def guarded(tmp_path):
    """`crm serve` with CRM_WEB_PASSWORD set (made before the browser starts: a dispatch runs its own event loop)."""
    db, config = workspace.make(tmp_path)
    server = workspace.Served(db, config, env={"CRM_WEB_PASSWORD": PASSWORD})
    yield server, db
    server.stop()


def test_a_cross_site_page_cannot_save_an_outcome_or_mark_a_call(guarded, browser):
    server, db = guarded
    target = server.url
    attacker = Attacker({
        "/gift": (forged(f"{target}/shops/s1/calls/o-bad", GIFT), {}),
        "/called": (forged(f"{target}/shops/s1/reminders/u1", {}), {}),
        # a naive double-submit check would take this: the attacker sets the page's cookie for 127.0.0.1 (cookies
        # do not tell ports apart) and sends the same value as the form's token
        "/tossed": (forged(f"{target}/shops/s1/calls/o-bad", {**GIFT, "csrf_token": "evil"}),
                    {"Set-Cookie": f"{CSRF_COOKIE}=evil; Path=/; SameSite=Lax"}),
    })
    try:
        context = browser.new_context(locale="zh-CN")
        page = context.new_page()
        # the agent logs in (Chromium caches the credentials for the page's origin) and works the list
        page.goto(f"http://agent:{PASSWORD}@127.0.0.1:{server.port}/")
        page.goto(f"{target}/shops/s1")
        expect(page.locator("#to-call + table tbody tr")).to_have_count(4)
        before = state(db)

        for path in ("/gift", "/called", "/tossed"):
            with page.expect_response(lambda r: r.request.method == "POST") as answer:
                page.goto(attacker.url + path)
            response = answer.value
            assert response.url.startswith(target), response.url
            assert response.request.all_headers().get("authorization", "").startswith("Basic "), \
                "the forged POST carried the agent's cached credentials"
            assert response.status == 403, (path, response.status, state(db) == before)
            assert response.text() == ZH_REFUSED, path
            assert state(db) == before, f"{path}: a refused request saves nothing"

        # and the agent's own forms still work in the same browser, after the attacker's cookie too
        page.goto(f"{target}/shops/s1/calls/o-bad")
        page.get_by_label("已联系上").check()
        page.get_by_label("坐席").fill("小李")
        page.get_by_role("button", name="保存").click()
        expect(page.get_by_role("status")).to_contain_text("o-bad")
        page.goto(f"{target}/shops/s1")
        page.locator('[data-reminder="u1"]').get_by_role("button", name="已致电").click()
        expect(page.get_by_role("status")).to_contain_text("u1")
        outcomes, messages = state(db)
        assert [(o[0], o[1]) for o in outcomes] == [("o-bad", True)]
        status = {m[0]: m[1] for m in messages}
        assert status["followup:o-bad"] == "done" and status["payment_reminder:u1"] == "done"
    finally:
        attacker.stop()


def form_token(client: httpx.Client, path: str = "/shops/s1/calls/o-bad") -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert found, "the form carries its token"
    return found.group(1)


@pytest.mark.parametrize("locale, refused", [("zh-CN", ZH_REFUSED), ("en", EN_REFUSED)])
def test_each_check_refuses_on_its_own(tmp_path, locale, refused):
    db, config = workspace.make(tmp_path, locale=locale)
    server = workspace.Served(db, config)
    try:
        with httpx.Client(base_url=server.url) as agent, httpx.Client(base_url=server.url) as other:
            token, others = form_token(agent), form_token(other)
            assert token != others, "each browser has its own token"
            before = state(db)
            attempts = {
                "no token": ({}, {}),
                "a blank token": ({"csrf_token": ""}, {}),
                "another browser's token": ({"csrf_token": others}, {}),
                "the cookie's own value as token": ({"csrf_token": agent.cookies[CSRF_COOKIE]}, {}),
                # a valid token, but the browser says the form was on another site (another port: same site)
                "Sec-Fetch-Site: same-site": ({"csrf_token": token}, {"Sec-Fetch-Site": "same-site"}),
                "Sec-Fetch-Site: cross-site": ({"csrf_token": token}, {"Sec-Fetch-Site": "cross-site"}),
                # a browser without Sec-Fetch-Site: its Origin must be the page's
                "another Origin": ({"csrf_token": token}, {"Origin": "http://127.0.0.1:1"}),
                "Origin null": ({"csrf_token": token}, {"Origin": "null"}),
            }
            for name, (extra, headers) in attempts.items():
                for path, data in (("/shops/s1/calls/o-bad", {**GIFT, **extra}), ("/shops/s1/reminders/u1", extra)):
                    r = agent.post(path, data=data, headers=headers)
                    assert (r.status_code, r.text) == (403, refused), (name, path)
            assert state(db) == before
            # a client without cookies at all (curl) is refused as well
            assert httpx.post(f"{server.url}/shops/s1/reminders/u1", data={"csrf_token": token}).status_code == 403
            # the same requests from the page itself go through
            same = {"Sec-Fetch-Site": "same-origin", "Origin": server.url}
            saved = agent.post("/shops/s1/calls/o-bad", data={**GIFT, "csrf_token": token}, headers=same)
            assert saved.status_code == 303, saved.text[:500]
            assert agent.post("/shops/s1/reminders/u1", data={"csrf_token": token}).status_code == 303
            outcomes, messages = state(db)
            assert [(o[0], o[7]) for o in outcomes] == [("o-bad", True)]
    finally:
        server.stop()


def asgi(app, *requests: tuple) -> list[httpx.Response]:
    """Requests (method, path, keyword arguments) to an ASGI app, in order, with one client's cookies."""
    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://crm") as client:
            return [await client.request(method, path, **kw) for method, path, kw in requests]
    return asyncio.run(run())


def test_the_guard_covers_every_form_and_leaves_hooks_to_their_signatures():
    # the real page: every route that may change something is refused without a token, in the shop's language
    app = create_app("unused.duckdb", parse_settings({"shops": [{"shop_id": "s1", "locale": "en"}]}))
    assert isinstance(app, CsrfGuard)
    changing = [(r.path, method) for r in app.app.routes if isinstance(r, Route)
                for method in sorted(r.methods - {"GET", "HEAD"}) if not r.path.startswith("/hooks/")]
    assert changing == [("/shops/{shop_id}/calls/{order_id}", "POST"),
                        ("/shops/{shop_id}/reminders/{order_id}", "POST")]
    answers = asgi(app, *[(method, re.sub(r"\{[^}]+\}", "s1", path), {"data": {"reached": "true"}})
                          for path, method in changing])
    assert [(r.status_code, r.text) for r in answers] == [(403, EN_REFUSED)] * len(changing)
    # a gateway's hook (a later issue adds them under /hooks/) is not asked for a browser's token; all else is
    hooks = Starlette(routes=[
        Route("/hooks/sms", lambda request: PlainTextResponse("hook"), methods=["POST"]),
        Route("/hooksms", lambda request: PlainTextResponse("form"), methods=["POST"]),
        Route("/shops/s1/calls/o1", lambda request: PlainTextResponse("form"), methods=["POST", "PUT", "DELETE"]),
    ])
    guarded = CsrfGuard(hooks, lambda request: PlainTextResponse("refused", status_code=403))
    answers = asgi(guarded, ("POST", "/hooks/sms", {"content": b"{}", "headers": {"Sec-Fetch-Site": "cross-site"}}),
                   ("POST", "/hooksms", {}), *[(m, "/shops/s1/calls/o1", {}) for m in ("POST", "PUT", "DELETE")])
    assert [(r.status_code, r.text) for r in answers] == [(200, "hook")] + [(403, "refused")] * 4, \
        "only the /hooks/ folder is left alone"
