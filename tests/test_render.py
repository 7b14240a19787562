"""Templates: every shipped template renders in both locales; the sandbox and strict variables hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from crm.render import LOCALES, Renderer, RenderError, sms_segments

CONTEXT = {
    "shop": "萌宠小铺", "customer_name": "张三", "member_level": 3, "order_id": "s1-o1", "amount": "99.00",
    "currency": "CNY", "items": [{"title": "猫咪抱枕", "quantity": 1}, {"title": "逗猫棒", "quantity": 2}],
    "close_time": "2026-11-25 10:00", "offer": "老客立减10元", "paid_orders": 3, "tier": "bad_review",
    "rating": 2, "review_text": "物流太慢", "trigger_label": "签收",
}
SHIPPED = sorted({p.relative_to(p.parents[1]).with_suffix("").as_posix()
                  for p in Renderer().root.glob("*/*/*.j2")})


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("name", SHIPPED)
def test_every_template_renders(locale, name):
    body = Renderer().render(locale, name, CONTEXT)
    assert body and "{{" not in body and "猫咪抱枕" in body
    if name.startswith(("payment_reminder/", "followup/sms")):
        assert ("回T退订" if locale == "zh-CN" else "Reply STOP") in body, "marketing SMS carry the opt-out line"


def test_variants_exist_for_cute_and_gift():
    from transforms.plan import template_variants
    assert {"new.cute", "new.gift", "second.cute", "repeat.gift"} <= set(template_variants())


def _custom(tmp_path: Path, name: str, text: str) -> Renderer:
    for locale in LOCALES:
        path = tmp_path / locale / f"{name}.j2"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return Renderer(tmp_path)


@pytest.mark.parametrize("attack", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ items.__class__.__init__.__globals__ }}",
    "{{ shop.format.__globals__ }}",
    "{% for c in ''.__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
])
def test_a_template_cannot_reach_python_internals(tmp_path, attack):
    with pytest.raises(RenderError, match="tries to reach Python internals"):
        _custom(tmp_path, "x", attack).render("en", "x", CONTEXT)


def test_unknown_variable_is_an_error_not_an_empty_string(tmp_path):
    with pytest.raises(RenderError, match="unknown variable.*custmer_name"):
        _custom(tmp_path, "x", "Hi {{ custmer_name }}").render("en", "x", CONTEXT)


def test_missing_and_broken_templates(tmp_path):
    r = _custom(tmp_path, "x", "{% if %}")
    with pytest.raises(RenderError, match=r"en/x.j2 is broken: line 1"):
        r.check("en", "x")
    with pytest.raises(RenderError, match=r"en/nope.j2 not found"):
        r.check("en", "nope")


@pytest.mark.parametrize("text,parts", [
    ("a" * 160, 1), ("a" * 161, 2), ("a" * 306, 2), ("a" * 307, 3), ("{" * 80, 1), ("{" * 81, 2),
    ("中" * 70, 1), ("中" * 71, 2), ("中" * 134, 2), ("中" * 135, 3), ("a" * 69 + "中", 1),
    # outside the BMP (an emoji, a rare CJK character) a character is 2 UCS-2 units
    ("😀" * 35, 1), ("😀" * 35 + "a", 2), ("𠮷" * 35, 1), ("𠮷" * 36, 2),
    # 【】 and full-width punctuation are not GSM: they make the whole SMS UCS-2
    ("【" + "a" * 69, 1), ("【" + "a" * 70, 2), ("a" * 69 + "，", 1), ("a" * 70 + "，", 2), ("a" * 70 + "！", 2),
    ("Zoë" + "a" * 67, 1), ("Zoë" + "a" * 68, 2), ("£¥èé" + "a" * 156, 1),
])
def test_sms_segments(text, parts):
    assert sms_segments(text) == parts
