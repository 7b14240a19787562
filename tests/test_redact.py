"""Logs never carry a full phone number or email address."""

from crm.redact import mask_email, mask_phone, redact


def test_masks_inside_free_text():
    text = 'row {"phone": "13812345678", "email": "zhang.san123@example.com", "order_id": "s1-o000123"}'
    out = redact(text)
    assert "13812345678" not in out and "zhang.san123@example.com" not in out
    assert "138****78" in out and "z***@e***.com" in out
    assert "s1-o000123" in out, "order ids stay readable"


def test_mask_single_values():
    assert mask_phone("+86 138-1234-5678") == "861****78"
    assert mask_email("bob@example.com") == "b***@e***"
    assert mask_phone(None) == "" and mask_email("") == ""
