"""Configuration (CONTRACT §3, §7): defaults, and one clear line for every kind of bad config."""

from __future__ import annotations

from pathlib import Path

import pytest

from crm.config import ConfigError, load_settings, parse_settings, resolve_paths

REPO = Path(__file__).resolve().parent.parent


def _error(text: str, tmp_path: Path) -> str:
    path = tmp_path / "shops.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert "\n" not in message, "an error is one line"
    assert message.startswith(str(path)), "an error names the file"
    return message


def test_defaults_are_the_contracts():
    s = parse_settings({"shops": [{"shop_id": "s1"}]})
    shop = s.shops[0]
    assert shop.timezone == "Asia/Shanghai" and shop.locale == "zh-CN" and shop.display_name == "s1"
    assert shop.distribution_platforms == ["fenxiao"]
    r = shop.reminders
    assert (r.strategy, r.shipping_cutoffs, r.lead_minutes, r.delay_minutes) == ("cutoff", ["11:00", "17:00"], 60, 150)
    assert (r.min_age_minutes, r.auto_close_minutes, r.close_margin_minutes) == (15, 1440, 5)
    assert (r.quiet_hours, r.daily_cap, r.second_purchase_offer, r.holdout_rate) == (["21:00", "09:00"], 1, "", 0.0)
    assert (r.channels.new, r.channels.second, r.channels.repeat) == ("call", "sms", "sms")
    v = shop.visits
    assert (v.trigger, v.followup_days, v.grace_days, v.manual_capacity) == ("delivered", 7, 3, 40)
    assert v.windows == ["11:00-12:00", "16:00-18:00"] and v.high_value_amount == 500
    assert v.auto_channel == "sms" and v.gift_ratio == 0.05 and "慢" in v.complaint_keywords
    assert s.gateway.webhook_url == "http://127.0.0.1:8080/send" and s.gateway.max_attempts == 5
    assert s.gateway.timeout_seconds == 10
    assert (s.smtp.host, s.smtp.port, s.smtp.sender) == ("127.0.0.1", 1025, "crm@example.com")


def test_partial_channels_keep_the_other_defaults():
    s = parse_settings({"shops": [{"shop_id": "s1", "reminders": {"channels": {"new": "sms"}}}]})
    assert (s.shops[0].reminders.channels.new, s.shops[0].reminders.channels.second) == ("sms", "sms")


def test_example_file_is_valid():
    s = load_settings(REPO / "shops.example.toml")
    assert [x.shop_id for x in s.shops] == ["s1", "s2"]


def test_unknown_key_names_shop_and_key(tmp_path):
    msg = _error('[[shops]]\nshop_id = "s1"\n[shops.reminders]\nlead_minutez = 5\n', tmp_path)
    assert "shop 's1'" in msg and "reminders.lead_minutez" in msg and "unknown key" in msg


def test_bad_time(tmp_path):
    msg = _error('[[shops]]\nshop_id = "s1"\n[shops.reminders]\nshipping_cutoffs = ["11:00", "25:00"]\n', tmp_path)
    assert "shop 's1'" in msg and "reminders.shipping_cutoffs[1]" in msg and "'25:00'" in msg


def test_bad_quiet_hours_time(tmp_path):
    msg = _error('[[shops]]\nshop_id = "s1"\n[shops.reminders]\nquiet_hours = ["21:00", "9"]\n', tmp_path)
    assert "reminders.quiet_hours[1]" in msg and "'9'" in msg


def test_unknown_time_zone(tmp_path):
    msg = _error('[[shops]]\nshop_id = "s2"\ntimezone = "Mars/Olympus_Mons"\n', tmp_path)
    assert "shop 's2'" in msg and "timezone" in msg and "Mars/Olympus_Mons" in msg


@pytest.mark.parametrize("window", ["11:00–10:00", "11:00-10:00", "11:00-11:00", "1100-1200", "11:00-24:30"])
def test_malformed_window(tmp_path, window):
    msg = _error(f'[[shops]]\nshop_id = "s1"\n[shops.visits]\nwindows = ["{window}"]\n', tmp_path)
    assert "shop 's1'" in msg and "visits.windows[0]" in msg


def test_overlapping_windows(tmp_path):
    msg = _error('[[shops]]\nshop_id = "s1"\n[shops.visits]\nwindows = ["11:00-13:00", "12:00-14:00"]\n', tmp_path)
    assert "visits.windows" in msg and "overlap" in msg


@pytest.mark.parametrize("section,key", [
    ("reminders", "lead_minutes"), ("reminders", "daily_cap"), ("reminders", "auto_close_minutes"),
    ("visits", "manual_capacity"), ("visits", "followup_days"), ("visits", "high_value_amount"),
])
def test_negative_number(tmp_path, section, key):
    msg = _error(f'[[shops]]\nshop_id = "s1"\n[shops.{section}]\n{key} = -1\n', tmp_path)
    assert f"shop 's1': {section}.{key}" in msg and "-1" in msg


def test_share_above_one(tmp_path):
    msg = _error('[[shops]]\nshop_id = "s1"\n[shops.reminders]\nholdout_rate = 1.5\n', tmp_path)
    assert "reminders.holdout_rate" in msg


def test_duplicate_shop_id(tmp_path):
    msg = _error('[[shops]]\nshop_id = "s1"\n[[shops]]\nshop_id = "s1"\n', tmp_path)
    assert "shops[1]" in msg and "duplicate shop_id 's1'" in msg


def test_bad_gateway_and_smtp(tmp_path):
    assert "gateway.max_attempts" in _error('[[shops]]\nshop_id = "s1"\n[gateway]\nmax_attempts = 0\n', tmp_path)
    assert "gateway.webhook_url" in _error('[[shops]]\nshop_id = "s1"\n[gateway]\nwebhook_url = "ftp:x"\n', tmp_path)
    assert "smtp.port" in _error('[[shops]]\nshop_id = "s1"\n[smtp]\nport = 70000\n', tmp_path)


def test_missing_shops_and_bad_toml(tmp_path):
    assert "no [[shops]]" in _error('[gateway]\ntimeout_seconds = 3\n', tmp_path)
    assert "not valid TOML" in _error('[[shops]\nshop_id = "s1"\n', tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_settings(tmp_path / "nope.toml")


def test_environment_overrides_secrets_and_urls(monkeypatch):
    monkeypatch.setenv("CRM_GATEWAY_URL", "http://127.0.0.1:9999/hook")
    monkeypatch.setenv("CRM_SMTP_PASSWORD", "s3cret")
    s = parse_settings({"shops": [{"shop_id": "s1"}], "gateway": {"webhook_url": "http://127.0.0.1:1/x"}})
    assert s.gateway.webhook_url == "http://127.0.0.1:9999/hook" and s.smtp.password == "s3cret"


def test_paths_resolve_option_then_environment_then_default(monkeypatch):
    monkeypatch.delenv("CRM_DB", raising=False)
    monkeypatch.delenv("CRM_CONFIG", raising=False)
    assert resolve_paths(None, None) == (Path("data/crm.duckdb"), Path("shops.toml"))
    monkeypatch.setenv("CRM_DB", "/x/env.duckdb")
    assert resolve_paths(None, None)[0] == Path("/x/env.duckdb")
    assert resolve_paths("/x/opt.duckdb", None)[0] == Path("/x/opt.duckdb")
