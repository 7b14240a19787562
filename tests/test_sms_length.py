"""SMS length: every shipped SMS template fits one segment at the documented limits (templates/README.md):
zh-CN 70 UCS-2 characters with the 【shop】 signature and 回T退订, en 160 GSM-7 characters with the opt-out;
the product title gives way, nothing else is cut; beyond the limits the length report counts the message."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from crm.render import Renderer, sms_segments
from transforms.dispatch import render_all

REMINDERS = [f"payment_reminder/{s}{t}" for s in ("new", "second", "repeat") for t in ("", ".cute", ".gift")]
SMS = REMINDERS + ["followup/sms"]
OPT_OUT = {"zh-CN": "回T退订", "en": "Reply STOP to opt out"}

# the documented limits: shop name 8 / 20 characters, customer name 4 characters / first name 10,
# amount 7 characters (9999.99), second_purchase_offer 10 / 20 characters, up to 99 paid orders
LIMITS = {
    "zh-CN": {"shop": "萌宠小铺旗舰专卖", "customer_name": "欧阳明月", "offer": "满199减20送小样", "currency": "CNY"},
    "en": {"shop": "Berliner Teeladen Co", "customer_name": "Maximilian Whitfield-Jones", "offer": "10% off: code BACK10",
           "currency": "EUR"},
}
LONG = {"zh-CN": "云朵发声毛绒玩具猫咪专用逗猫棒超大号 蓝色 L码", "en": "Spree Matcha Tin with Bamboo Whisk and Ceramic Bowl, 100g"}
ODD = {"zh-CN": "🐱猫抓板瓦楞纸超大号耐磨不掉屑🐟🐟 灰色", "en": "“Winter” Sencha – Tin [100g] × 2 … Limited™"}


def context(locale: str, **over) -> dict:
    ctx = {"member_level": 5, "order_id": "s1-o000123", "amount": "1299.00", "items": [{"title": LONG[locale], "quantity": 1}],
           "close_time": "2026-12-31 23:59", "paid_orders": 99, "tier": None, "rating": None, "review_text": None,
           "trigger_label": "x", **LIMITS[locale]}
    return {**ctx, **over}


def units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def check_one_segment(locale: str, name: str, ctx: dict) -> str:
    body = Renderer().render(locale, name, ctx)
    assert sms_segments(body) == 1, f"{len(body)} characters: {body}"
    assert body.startswith(f"【{ctx['shop']}】" if locale == "zh-CN" else f"{ctx['shop']}: "), body
    assert body.endswith(OPT_OUT[locale]), body
    return body


@pytest.mark.parametrize("locale", ["zh-CN", "en"])
@pytest.mark.parametrize("name", SMS)
@pytest.mark.parametrize("goods", ["one long title", "three long titles", "odd characters"])
def test_every_sms_fits_one_segment_at_the_documented_limits(locale, name, goods):
    items = {"one long title": [{"title": LONG[locale], "quantity": 1}],
             "three long titles": [{"title": LONG[locale], "quantity": 2}] * 3,
             "odd characters": [{"title": ODD[locale], "quantity": 1}]}[goods]
    ctx = context(locale, items=items)
    body = check_one_segment(locale, name, ctx)
    # what the message must say is all there, whole
    if name.startswith("payment_reminder/"):
        assert "1299.00" in body
        assert ("31日23:59" if locale == "zh-CN" else "Dec 31 23:59") in body
        assert any(w in body for w in ("待付款", "还没付款", "unpaid")), body
    if name.startswith("payment_reminder/second"):
        assert ctx["offer"] in body
    if locale == "en":
        assert all(c not in body for c in "“”–×…™[]"), "typographic characters in a title are made plain GSM"


@pytest.mark.parametrize("locale", ["zh-CN", "en"])
@pytest.mark.parametrize("name", SMS)
def test_an_unknown_customer_name_reads_well(locale, name):
    body = check_one_segment(locale, name, context(locale, customer_name=""))
    assert "】，" not in body and "Hi ," not in body and ", !" not in body, body


@pytest.mark.parametrize("name", SMS)
def test_a_long_title_is_cut_to_what_is_left_of_the_70(name):
    """With a short shop name the title gets all the room left: the SMS is exactly 70 characters."""
    title = "云朵发声毛绒玩具猫咪专用逗猫棒超大号" * 3
    body = check_one_segment("zh-CN", name, context("zh-CN", shop="萌宠小铺", customer_name="林伟",
                                                    items=[{"title": title, "quantity": 1}]))
    assert "…" in body and title[:4] in body
    assert units(body) == 70


def test_an_emoji_counts_two_when_the_title_is_cut():
    items = [{"title": "😺" * 40, "quantity": 1}]
    body = check_one_segment("zh-CN", "payment_reminder/new", context("zh-CN", shop="萌宠小铺", items=items))
    assert "😺…" in body and units(body) in (69, 70)   # an emoji never half fits


@pytest.mark.parametrize("locale", ["zh-CN", "en"])
@pytest.mark.parametrize("name", SMS)
def test_a_short_title_is_left_whole(locale, name):
    title = {"zh-CN": "云朵猫砂盆 L码", "en": "Earl Grey 50g"}[locale]
    ctx = context(locale, shop={"zh-CN": "萌宠小铺", "en": "Maple Home Goods"}[locale], amount="23.00",
                  customer_name={"zh-CN": "林伟", "en": "Ben Meyer"}[locale],
                  offer={"zh-CN": "满199减20", "en": "free shipping"}[locale],
                  items=[{"title": title, "quantity": 1}, {"title": "x", "quantity": 1}])
    body = check_one_segment(locale, name, ctx)
    assert (f"{title}等2件" if locale == "zh-CN" else f"{title} and 1 more") in body


def test_en_cuts_a_title_at_a_word():
    items = [{"title": LONG["en"] * 2, "quantity": 1}]
    body = check_one_segment("en", "payment_reminder/new", context("en", shop="Maple Home Goods", items=items))
    cut = body.split("your ", 1)[1].split("...", 1)[0]
    assert cut and LONG["en"].startswith(cut) and LONG["en"][len(cut)] == " ", body


def test_an_en_title_outside_the_gsm_alphabet_gives_way_to_order():
    """One non-GSM letter would make the whole SMS Unicode (70 characters): the title is left out instead."""
    body = check_one_segment("en", "payment_reminder/new", context("en", items=[{"title": "Pâté en croûte", "quantity": 1}]))
    assert "Pâté" not in body and "your order (EUR 1299.00)" in body


@pytest.mark.parametrize("locale,name,over", [
    ("zh-CN", "payment_reminder/second.cute", {"shop": "萌宠小铺旗舰专卖店官方直营总店"}),   # shop name beyond the limit
    ("zh-CN", "payment_reminder/second.cute", {"offer": "老客专享全场满199减20元再送精美小样一份限本周"}),  # offer beyond
    ("en", "payment_reminder/new", {"customer_name": "Zoë Smith"}),                          # non-GSM name: Unicode SMS
])
def test_beyond_the_limits_the_sms_is_counted_and_nothing_is_cut(locale, name, over):
    body = Renderer().render(locale, name, context(locale, **over))
    assert sms_segments(body) > 1
    assert LONG[locale] in body, "the title is kept whole when shortening it cannot make the SMS fit"
    assert all(v.split()[0] in body for v in over.values()) and body.endswith(OPT_OUT[locale])


def _frame(template_root: Path | None, locale: str, template: str) -> pl.DataFrame:
    ctx = context(locale)
    row = {"message_id": "payment_reminder:s1-o000123", "locale": locale, "template": template, "channel": "sms",
           "shop_name": ctx["shop"], "customer_name": ctx["customer_name"], "member_level": 5, "order_id": ctx["order_id"],
           "total_amount": 1299.0, "currency": ctx["currency"], "items": ctx["items"], "close_time": ctx["close_time"],
           "offer": ctx["offer"], "paid_orders": 99, "tier": None, "rating": None, "review_text": None,
           "visit_trigger": "delivered"}
    return render_all(pl.DataFrame([row]), Renderer(template_root))


@pytest.mark.parametrize("locale", ["zh-CN", "en"])
def test_the_length_report_counts_a_template_a_shop_made_long(tmp_path, locale):
    assert _frame(None, locale, "payment_reminder/new")["segments"].to_list() == [1]
    root = tmp_path / "templates"
    shutil.copytree(Renderer().root, root)
    (root / locale / "payment_reminder" / "new.j2").write_text(
        '{%- import "_macros.j2" as m -%}\n{%- call(title) m.sms(shop, items) -%}\n'
        + "{{ title }} {{ amount }} " + "我们的店铺有很多好东西 " * 12 + "\n{%- endcall -%}\n", encoding="utf-8")
    frame = _frame(root, locale, "payment_reminder/new")
    assert frame["segments"].to_list() == [sms_segments(frame["body"][0])] and frame["segments"][0] >= 3


@pytest.mark.parametrize("locale,brk", [("zh-CN", "。"), ("en", ".")])
def test_perks_end_their_sentence(tmp_path, locale, brk):
    root = tmp_path / "templates"
    shutil.copytree(Renderer().root, root)
    (root / locale / "probe.j2").write_text('{%- import "_macros.j2" as m -%}[{{ m.perks(member_level) }}]NEXT',
                                            encoding="utf-8")
    said = set()
    for level in range(0, 7):
        out = Renderer(root).render(locale, "probe", context(locale, member_level=level))
        perks = out.removeprefix("[").removesuffix("]NEXT")
        assert perks == "" or perks.endswith(brk), out
        said.add(bool(perks))
    assert said == {True, False}, "levels below 2 have no perks, higher ones do"
    # the agents' call script names them, as a line of its own
    script = Renderer().render(locale, "call_script/payment_reminder", context(locale, member_level=5))
    line = next(x for x in script.splitlines() if x.startswith(("【会员权益】", "[Member perks]")))
    assert line.endswith(brk) and ("5级会员" in line or "level 5 member" in line), script
    sms = Renderer().render(locale, "payment_reminder/repeat", context(locale))
    assert "会员" not in sms and "member" not in sms, "no perks in an SMS: they do not fit"


@pytest.mark.parametrize("locale,text", [
    ("en", "a" * 160), ("en", "a" * 161), ("en", "{" * 80), ("en", "{" * 81), ("en", "€" * 80 + "a"),
    ("en", "£¥èé@" + "a" * 155), ("en", "Zoë" + "a" * 67), ("en", "Zoë" + "a" * 68), ("en", "’" * 70), ("en", "😀" * 36),
    ("zh-CN", "【" + "中" * 69), ("zh-CN", "【" + "中" * 70), ("zh-CN", "【" + "😀" * 34 + "a"), ("zh-CN", "【" + "😀" * 35),
])
def test_the_templates_measure_as_the_length_report_does(tmp_path, locale, text):
    """The macros' own measure (which picks the title) agrees with sms_segments (which the report counts)."""
    root = tmp_path / "templates"
    shutil.copytree(Renderer().root, root)
    (root / locale / "probe.j2").write_text('{%- import "_macros.j2" as m -%}[{{ m.fits(shop) }}]', encoding="utf-8")
    said = Renderer(root).render(locale, "probe", {"shop": text})
    assert said == ("[yes]" if sms_segments(text) == 1 else "[]")
