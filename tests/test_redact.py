"""Logs never carry a full phone number or email address (crm/redact.py): in any shape, in any free text,
and nothing else in the text is touched."""

import logging
import re

import pytest

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


def test_the_gateway_error_of_the_issue():
    text = "400 Bad Request: invalid recipient 137-1527-5764 / +86 137 1527 5764 (attempt 3 of 5)"
    assert redact(text) == "400 Bad Request: invalid recipient 137****64 / +861****64 (attempt 3 of 5)"


@pytest.mark.parametrize("number,masked", [
    ("13715275764", "137****64"),
    ("137-1527-5764", "137****64"),
    ("137 1527 5764", "137****64"),
    ("137.1527.5764", "137****64"),
    ("(137) 1527-5764", "137****64"),
    ("+86 137 1527 5764", "+861****64"),
    ("+86-137-1527-5764", "+861****64"),
    ("+86 (137) 1527 5764", "+861****64"),
    ("(+86)13715275764", "+861****64"),
    ("(+86) 137 1527 5764", "+861****64"),
    ("137 - 1527 - 5764", "137****64"),
    ("+8613715275764", "+861****64"),
    ("008613715275764", "+861****64"),
    ("0086 137 1527 5764", "+861****64"),
    ("8613715275764", "861****64"),
    ("86-137-1527-5764", "861****64"),
    ("１３７１５２７５７６４", "137****64"),                  # full width
    ("+８６ １３７ １５２７ ５７６４", "+861****64"),
    ("(010) 6552 9988", "010****88"),                       # a Beijing landline
    ("010-65529988", "010****88"),
    ("+1 (212) 555-0123", "+121****23"),
    ("212-555-0123", "212****23"),
    ("+49 30 12345678", "+493****78"),
    ("+12120001234", "+121****34"),                         # not an assigned range: masked all the same
    ("12345678901", "123****01"),
])
def test_every_shape_of_a_number_is_masked(number, masked):
    for text in (number, f"to {number}: rejected", f"号码{number}无效", f'{{"phone":"{number}","x":1}}',
                 f"to{number}.", f"{number}, {number}"):
        out = redact(text)
        assert out == text.replace(number, masked), (text, out)
        assert not re.search(r"\d{6}", out.replace(masked, "")), out


@pytest.mark.parametrize("text", [
    "order s1-o000123 at 2026-12-01 10:00 for 1234.56 CNY",
    "2026-12-01T10:00:00+08:00 and 2026-12-01 10:00:00 and 2026-12-01",
    "12/01/2026 10:00, 01.12.2026",
    "amount 12345678.90, 1,234,567.89 CNY; 3 of 1000000 rows",
    "payment_reminder:s1-o000123 and followup:s2-o9 Idempotency-Key payment_reminder%3A%E8%AE%A2",
    "Taobao order 2026112412345678901 (19 digits)",
    "connection refused: 127.0.0.1:45678, 192.168.100.200:8080",
    "HTTP 503 after 2.5 s, Retry-After 30; attempt 5/5",
    "uuid 550e8400-e29b-41d4-a716-446655440000",
    # a Prefect run's link: about one UUID in eight holds 9+ decimal digits in a row, which used to be masked
    "View at http://127.0.0.1:4200/runs/flow-run/78d5973b-e962-4262-a677-326626fe0387",
    "View at http://127.0.0.1:4200/runs/flow-run/341fada0-743b-44a1-b399-c868843239a2",
    "message 987284DB-B6D4-4060-BAC5-73F410969767 queued",
    "took 1234567 ms",
    "quarantine row 123456, ingest #42",
])
def test_nothing_else_is_mangled(text):
    assert redact(text) == text


def test_a_number_beside_a_uuid_is_still_masked():
    text = "run 78d5973b-e962-4262-a677-326626fe0387 to 13715275764, not 13715275764-e962"
    assert redact(text) == "run 78d5973b-e962-4262-a677-326626fe0387 to 137****64, not 137****64-e962"


def test_emails_too():
    assert redact("to Zhang.San+shop@Example.COM.cn, ok") == "to Z***@E***.cn, ok"


def test_every_failure_line_of_a_dispatch_is_masked_and_keeps_its_words():
    """redact runs on every failure line a dispatch logs (its speed is measured in bench/bench_redact.py, not here)."""
    lines = [f"message payment_reminder:s1-o{i:06d}: 400 invalid number 137-1527-{i % 10000:04d}" for i in range(2000)]
    out = [redact(line) for line in lines]
    assert all(line.endswith("400 invalid number 137****" + f"{i % 10000:04d}"[-2:]) for i, line in enumerate(out))
    assert all(f"s1-o{i:06d}" in line for i, line in enumerate(out))


def test_log_records_are_redacted_wherever_they_are_logged(caplog):
    """A safety net under the explicit masking: every log record made in the process is masked, Prefect's
    included (its API handler sends what the record says)."""
    from crm.redact import install_log_redaction

    import crm                                                # the package installs it
    assert getattr(logging.getLogRecordFactory(), "_crm_redacting", False), crm.__doc__
    install_log_redaction()                                   # again: still once
    with caplog.at_level(logging.INFO):
        logging.getLogger("anything").warning("gateway said %s for %s", "bad number +86 137 1527 5764", "o1")
        try:
            raise ValueError("refused 13715275764")
        except ValueError:
            logging.getLogger("x").exception("failed for 137-1527-5764")
    text = caplog.text
    assert "1527" not in text.replace("****", "") and "+861****64" in text and "137****64" in text
    assert "ValueError: refused 137****64" in text, "exception text too"


def test_crm_quarantine_masks_reasons_and_rows(con, db_path, landing):
    """`crm quarantine` shows no full number, neither in a row nor in a reason (a whole file's reason can be
    a reader's error that quotes the line, as DuckDB's CSV errors do)."""
    from conftest import crm, customer
    from transforms.ingest import load

    landing.csv("customers", "c.csv", [customer("c1", phone="137-1527-5764", registered_at="+86 137 1527 5765")])
    load(con, landing.root)
    con.execute("INSERT INTO ops.quarantine VALUES ('customers', 'landing/customers/d.csv', NULL, NULL, "
                "'CSV Error on Line: 3 Original Line: c9,s1,李四,0086 137 1527 5766,li@example.com', 2, now())")
    con.close()
    shown = crm("--db", str(db_path), "quarantine")
    assert shown.returncode == 0 and "customers: 2" in shown.stdout, shown.stdout + shown.stderr
    assert "137****64" in shown.stdout and "+861****66" in shown.stdout and "l***@e***.com" in shown.stdout
    flat = re.sub(r"[\s│┃]", "", shown.stdout)
    assert not re.search(r"1527", flat), shown.stdout
