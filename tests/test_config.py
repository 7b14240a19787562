"""Configuration (docs/rules.md §3, §7): defaults, strict types, and one clear line for every kind of bad config."""

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
    assert s.gateway.timeout_seconds == 10 and s.gateway.down_after == 10
    assert (s.smtp.host, s.smtp.port, s.smtp.sender) == ("127.0.0.1", 1025, "crm@example.com")
    assert s.retired_shops == []


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


# --------------------------------------------------------------------------------------------------
# strict types: TOML's own types, never a number or a switch in quotes


SHOP = '[[shops]]\nshop_id = "s1"\n'


@pytest.mark.parametrize("table,key,written,where", [
    ("[shops.reminders]", "lead_minutes", '"60"', "shop 's1': reminders.lead_minutes"),
    ("[shops.reminders]", "daily_cap", '"1"', "shop 's1': reminders.daily_cap"),
    ("[shops.visits]", "manual_capacity", '"40"', "shop 's1': visits.manual_capacity"),
    ("[shops.reminders]", "holdout_rate", '"0.1"', "shop 's1': reminders.holdout_rate"),
    ("[shops.visits]", "high_value_amount", '"500"', "shop 's1': visits.high_value_amount"),
    ("[gateway]", "max_attempts", '"5"', "gateway.max_attempts"),
    ("[gateway]", "timeout_seconds", '"10"', "gateway.timeout_seconds"),
    ("[smtp]", "port", '"1025"', "smtp.port"),
])
def test_a_number_in_quotes_is_refused(tmp_path, table, key, written, where):
    msg = _error(f"{SHOP}{table}\n{key} = {written}\n", tmp_path)
    assert f"{where}: " in msg and "without quotes" in msg and f"(got {written.replace(chr(34), chr(39))})" in msg


@pytest.mark.parametrize("table,key,written", [
    ("[shops.visits]", "manual_capacity", "40.0"),
    ("[shops.reminders]", "lead_minutes", "60.5"),
    ("[gateway]", "max_attempts", "5e0"),
])
def test_a_decimal_where_a_whole_number_is_wanted_is_refused(tmp_path, table, key, written):
    msg = _error(f"{SHOP}{table}\n{key} = {written}\n", tmp_path)
    assert key in msg and "must be a whole number" in msg


def test_a_whole_number_where_a_decimal_is_wanted_is_fine(tmp_path):
    path = tmp_path / "shops.toml"
    path.write_text(f"{SHOP}[shops.visits]\nhigh_value_amount = 300\ngift_ratio = 0\n"
                    "[gateway]\ntimeout_seconds = 3\nbackoff_seconds = 1\n", encoding="utf-8")
    s = load_settings(path)
    assert s.shops[0].visits.high_value_amount == 300.0 and isinstance(s.shops[0].visits.high_value_amount, float)
    assert s.shops[0].visits.gift_ratio == 0.0 and (s.gateway.timeout_seconds, s.gateway.backoff_seconds) == (3.0, 1.0)


def test_a_switch_in_quotes_is_refused(tmp_path):
    msg = _error(f'[smtp]\nstarttls = "true"\n{SHOP}', tmp_path)
    assert "smtp.starttls: must be true or false, written without quotes (got 'true')" in msg
    path = tmp_path / "ok.toml"
    path.write_text(f"[smtp]\nstarttls = true\n{SHOP}", encoding="utf-8")
    assert load_settings(path).smtp.starttls is True


@pytest.mark.parametrize("table,key,written,words", [
    ("[shops.reminders]", "daily_cap", "true", ["reminders.daily_cap", "not true/false", "(got True)"]),
    ("[shops.visits]", "gift_ratio", "false", ["visits.gift_ratio", "not true/false"]),
    ("[smtp]", "starttls", "1", ["smtp.starttls", "must be true or false", "(got 1)"]),
    ("[shops.reminders]", "quiet_hours", '"21:00"', ["reminders.quiet_hours", "valid list", "'21:00'"]),
    ("[shops.visits]", "complaint_keywords", '"slow"', ["visits.complaint_keywords", "valid list"]),
    ("[shops.reminders]", "channels", '"sms"', ["reminders.channels", "must be a table of keys", "'sms'"]),
    ("[shops.reminders]", "second_purchase_offer", "10", ["reminders.second_purchase_offer", "valid string", "(got 10)"]),
])
def test_other_wrong_types_are_refused(tmp_path, table, key, written, words):
    msg = _error(f"{SHOP}{table}\n{key} = {written}\n", tmp_path)
    assert all(w in msg for w in words), msg


def test_a_shop_level_wrong_type_names_the_shop(tmp_path):
    msg = _error('[[shops]]\nshop_id = "s9"\ndistribution_platforms = "fenxiao"\n', tmp_path)
    assert msg.startswith(f"{tmp_path / 'shops.toml'}: shop 's9': distribution_platforms: ")


# --------------------------------------------------------------------------------------------------
# the environment: text, converted to the key's type, an error naming the variable


def _env_error(monkeypatch, var: str, value: str) -> str:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        parse_settings({"shops": [{"shop_id": "s1"}]}, "shops.toml")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{var}: ")
    return message


def test_smtp_port_from_the_environment_is_a_number(monkeypatch):
    monkeypatch.setenv("CRM_SMTP_PORT", " 2525 ")
    s = parse_settings({"shops": [{"shop_id": "s1"}], "smtp": {"port": 1025}})
    assert s.smtp.port == 2525


@pytest.mark.parametrize("value", ["abc", "", "25.5", "-1", "２５"])
def test_a_bad_smtp_port_in_the_environment_names_the_variable(monkeypatch, value):
    msg = _env_error(monkeypatch, "CRM_SMTP_PORT", value)
    assert f"{value!r} is not a whole number from 1 to 65535" in msg and "smtp.port" in msg and "shops.toml" in msg


def test_an_environment_value_out_of_range_names_the_variable(monkeypatch):
    msg = _env_error(monkeypatch, "CRM_SMTP_PORT", "70000")
    assert "70000" in msg and "smtp.port" in msg
    msg = _env_error(monkeypatch, "CRM_GATEWAY_URL", "ftp://x")
    assert "'ftp://x' is not an http(s) URL" in msg and "gateway.webhook_url" in msg


# --------------------------------------------------------------------------------------------------
# the new keys: retired_shops, gateway.down_after


def test_retired_shops(tmp_path):
    path = tmp_path / "shops.toml"
    path.write_text(f'retired_shops = ["s3", "old"]\n{SHOP}', encoding="utf-8")
    assert load_settings(path).retired_shops == ["s3", "old"]


@pytest.mark.parametrize("written,words", [
    ('["s3", "s1"]', ["retired_shops[1]: 's1' is also configured", "either configured or retired"]),
    ('["s3", "s3"]', ["retired_shops[1]: 's3' is listed twice"]),
    ('[""]', ["retired_shops[0]", "at least 1 character"]),
    ('"s3"', ["retired_shops", "valid list", "'s3'"]),
    ("[3]", ["retired_shops[0]", "valid string", "(got 3)"]),
])
def test_bad_retired_shops(tmp_path, written, words):
    msg = _error(f"retired_shops = {written}\n{SHOP}", tmp_path)
    assert all(w in msg for w in words), msg


def test_down_after(tmp_path):
    path = tmp_path / "shops.toml"
    path.write_text(f"[gateway]\ndown_after = 3\n{SHOP}", encoding="utf-8")
    assert load_settings(path).gateway.down_after == 3
    assert "gateway.down_after" in _error(f"[gateway]\ndown_after = 0\n{SHOP}", tmp_path)
    assert "without quotes" in _error(f'[gateway]\ndown_after = "10"\n{SHOP}', tmp_path)


# --------------------------------------------------------------------------------------------------
# a time zone both Python and DuckDB know (issue 12.12): 'localtime' and the other files under
# /usr/share/zoneinfo that are not zone names pass ZoneInfo but not DuckDB's ICU


@pytest.mark.parametrize("zone", ["localtime", "posixrules", "posix/Asia/Shanghai", "right/UTC", "asia/shanghai",
                                  "GMT+8", "Asia/Shanghai ", "", "Asia"])
def test_a_zone_duckdb_does_not_know_is_one_line(tmp_path, zone):
    msg = _error(f'[[shops]]\nshop_id = "s2"\ntimezone = "{zone}"\n', tmp_path)
    assert f"shop 's2': timezone: {zone!r} is not a known time zone" in msg


def test_every_zone_named_in_the_docs_and_tests_is_accepted():
    from zoneinfo import available_timezones

    import duckdb

    # what both know is what the validator must accept: every ICU zone that Python also has
    icu = {name for (name,) in duckdb.connect().execute("SELECT name FROM pg_timezone_names()").fetchall()}
    both = sorted(icu & available_timezones())
    assert len(both) > 500 and {"Asia/Shanghai", "America/New_York", "Europe/Berlin", "UTC", "Etc/GMT-8"} <= set(both)
    for zone in both:
        assert parse_settings({"shops": [{"shop_id": "s1", "timezone": zone}]}).shops[0].timezone == zone


def test_a_bad_zone_stops_the_command_in_one_line_before_the_flow(tmp_path):
    from conftest import crm
    from crm.db import connect

    connect(tmp_path / "crm.duckdb").close()                    # a database exists: the command gets that far
    bad = tmp_path / "bad.toml"
    bad.write_text('[[shops]]\nshop_id = "s1"\ntimezone = "localtime"\n', encoding="utf-8")
    result = crm("--db", str(tmp_path / "crm.duckdb"), "--config", str(bad), "plan",
                 "--as-of", "2026-11-24T10:00:00+08:00", env={"PREFECT_API_URL": ""})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0] == f"error: {bad}: shop 's1': timezone: 'localtime' is not a known time zone (an IANA name like 'Asia/Shanghai')"


# --------------------------------------------------------------------------------------------------
# [storage] (docs/rules.md §10): the embedded DuckDB file by default, DuckLake + PostgreSQL when asked


LAKE = ('[storage]\nkind = "ducklake"\ncatalog = "postgres:dbname=crm_lake host=127.0.0.1"\n'
        'data_path = "data/lake/"\nops_dsn = "postgresql://crm@127.0.0.1:5432/crm"\n')


@pytest.fixture
def no_storage_env(monkeypatch):
    for var in ("CRM_LAKE_CATALOG", "CRM_OPS_DSN", "CRM_S3_KEY_ID", "CRM_S3_SECRET"):
        monkeypatch.delenv(var, raising=False)


def test_storage_defaults_to_the_embedded_file(no_storage_env):
    s = parse_settings({"shops": [{"shop_id": "s1"}]}).storage
    assert (s.kind, s.catalog, s.data_path, s.ops_dsn) == ("duckdb", "", "", "")
    assert (s.s3.endpoint, s.s3.key_id, s.s3.secret, s.s3.region, s.s3.url_style, s.s3.use_ssl) == \
        ("", "", "", "us-east-1", "path", True)


def test_a_ducklake_storage_is_read_as_written(tmp_path, no_storage_env):
    path = tmp_path / "shops.toml"
    path.write_text('[[shops]]\nshop_id = "s1"\n' + LAKE.replace('"data/lake/"', '"s3://crm/lake/"')
                    + '[storage.s3]\nendpoint = "127.0.0.1:5555"\nregion = "eu-west-1"\nuse_ssl = false\n',
                    encoding="utf-8")
    s = load_settings(path).storage
    assert (s.kind, s.catalog, s.data_path) == ("ducklake", "postgres:dbname=crm_lake host=127.0.0.1", "s3://crm/lake/")
    assert (s.on_s3, s.s3.endpoint, s.s3.region, s.s3.use_ssl, s.s3.url_style) == (True, "127.0.0.1:5555", "eu-west-1", False, "path")


@pytest.mark.parametrize("text,words", [
    ('[storage]\nkind = "sqlite"\n', ["storage.kind", "'duckdb' or 'ducklake'", "'sqlite'"]),
    (LAKE.replace('catalog = "postgres:dbname=crm_lake host=127.0.0.1"\n', ""),
     ["storage.catalog: required for kind = \"ducklake\""]),
    (LAKE.replace('data_path = "data/lake/"\n', ""), ["storage.data_path: required for kind = \"ducklake\""]),
    (LAKE.replace('ops_dsn = "postgresql://crm@127.0.0.1:5432/crm"\n', ""),
     ["storage.ops_dsn: required for kind = \"ducklake\""]),
    (LAKE.replace('"data/lake/"', '"s3://crm/lake/"'), ["storage.s3.endpoint: required for an s3:// data_path"]),
    (LAKE.replace('"data/lake/"', '"s3://crm/lake/"') + '[storage.s3]\nendpoint = "127.0.0.1:5555"\nregion = ""\n',
     ["storage.s3.region: required for an s3:// data_path"]),
    (LAKE.replace('"data/lake/"', '"gs://crm/lake/"'), ["storage.data_path", "a folder or s3://bucket/prefix/"]),
    (LAKE.replace('"data/lake/"', '"s3:///lake/"'), ["storage.data_path", "names no bucket"]),
    (LAKE.replace('"postgres:dbname', '"sqlite:dbname'), ["storage.catalog", 'must be "postgres:"']),
    (LAKE.replace('"postgresql://crm@127.0.0.1:5432/crm"', '"crm"'), ["storage.ops_dsn", "PostgreSQL connection string"]),
    ('[storage.s3]\nendpoint = "http://127.0.0.1:5555"\n', ["storage.s3.endpoint", "not a host[:port]"]),
    ('[storage.s3]\nurl_style = "virtual"\n', ["storage.s3.url_style", "'path' or 'vhost'"]),
    ('[storage.s3]\nuse_ssl = "false"\n', ["storage.s3.use_ssl", "true or false"]),
    ('[storage]\nkind = "ducklake"\nbucket = "x"\n', ["storage.bucket", "unknown key"]),
])
def test_bad_storage_is_one_line_naming_the_key(tmp_path, no_storage_env, text, words):
    msg = _error('[[shops]]\nshop_id = "s1"\n' + text, tmp_path)
    assert all(w in msg for w in words), msg


def test_a_password_in_a_bad_catalog_is_not_echoed(tmp_path, no_storage_env):
    msg = _error('[[shops]]\nshop_id = "s1"\n' + LAKE.replace('"postgres:dbname=crm_lake host=127.0.0.1"',
                                                               '"dbname=crm_lake password=hunter2"'), tmp_path)
    assert "storage.catalog" in msg and "hunter2" not in msg


def test_storage_secrets_come_from_the_environment(monkeypatch, no_storage_env):
    monkeypatch.setenv("CRM_S3_KEY_ID", "AKIA-env")
    monkeypatch.setenv("CRM_S3_SECRET", "from-env")
    monkeypatch.setenv("CRM_LAKE_CATALOG", "postgres:dbname=lake password=pw1")
    monkeypatch.setenv("CRM_OPS_DSN", "postgresql://crm:pw2@db:5432/crm")
    raw = {"shops": [{"shop_id": "s1"}],
           "storage": {"kind": "ducklake", "data_path": "s3://b/p/", "s3": {"endpoint": "s3.amazonaws.com", "secret": "in-file"}}}
    s = parse_settings(raw).storage
    assert (s.s3.key_id, s.s3.secret, s.catalog, s.ops_dsn) == \
        ("AKIA-env", "from-env", "postgres:dbname=lake password=pw1", "postgresql://crm:pw2@db:5432/crm")
    assert s.s3.endpoint == "s3.amazonaws.com" and raw["storage"]["s3"]["secret"] == "in-file", "the document is not changed"


def test_a_storage_value_from_the_environment_names_the_variable(monkeypatch, no_storage_env):
    raw = {"shops": [{"shop_id": "s1"}], "storage": {"kind": "ducklake", "data_path": "x/", "ops_dsn": "dbname=crm"}}
    monkeypatch.setenv("CRM_LAKE_CATALOG", "mysql:db=lake")
    with pytest.raises(ConfigError) as info:
        parse_settings(raw, "shops.toml")
    assert str(info.value).startswith("CRM_LAKE_CATALOG: ") and "it sets storage.catalog, overriding shops.toml" in str(info.value)
    monkeypatch.setenv("CRM_LAKE_CATALOG", "")
    with pytest.raises(ConfigError) as info:
        parse_settings(raw, "shops.toml")
    assert str(info.value).startswith("CRM_LAKE_CATALOG: required for kind = \"ducklake\" (e.g. ")
    assert str(info.value).endswith("(it sets storage.catalog, overriding shops.toml)")


def test_storage_from_the_environment_without_a_storage_table(monkeypatch, no_storage_env):
    """An override needs no [storage] / [storage.s3] table in the file: the tables are made on the way."""
    monkeypatch.setenv("CRM_S3_SECRET", "only-in-env")
    s = parse_settings({"shops": [{"shop_id": "s1"}]}).storage
    assert (s.kind, s.s3.secret, s.s3.region) == ("duckdb", "only-in-env", "us-east-1")


def test_a_lake_storage_is_refused_in_one_line_by_the_commands_that_do_not_run_on_it(tmp_path):
    from conftest import crm
    from crm.db import connect

    connect(tmp_path / "crm.duckdb").close()                    # a database exists: the command gets that far
    lake = tmp_path / "lake.toml"
    lake.write_text('[[shops]]\nshop_id = "s1"\n' + LAKE, encoding="utf-8")
    # every other command runs on the lake (tests/test_lake_pipeline.py, test_lake_dispatch.py,
    # test_lake_commands.py); the demo makes a DuckDB file of its own and refuses it
    for args in (["demo", "--out", str(tmp_path / "demo"), "--orders", "100"],):
        result = crm("--db", str(tmp_path / "crm.duckdb"), "--config", str(lake), *args, env={"PREFECT_API_URL": ""})
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
        command = "crm " + " ".join(a for a in args[:2] if not a.startswith(("-", "/")))
        assert lines[0].startswith(f'error: {lake}: [storage] kind = "ducklake": not yet supported by {command}; '), lines[0]


def test_a_flow_run_refuses_a_lake_storage_before_touching_the_file(tmp_path, no_storage_env):
    """A deployment's run reaches the flows without `crm`: the session of a flow that does not run on the lake
    (dispatch) refuses too, and makes no file."""
    from crm.db import session

    settings = load_settings(_write(tmp_path, '[[shops]]\nshop_id = "s1"\n' + LAKE))
    with pytest.raises(ConfigError, match=r'^\[storage\] kind = "ducklake": not yet supported by this flow; '):
        with session(tmp_path / "crm.duckdb", settings):
            pass
    assert not (tmp_path / "crm.duckdb").exists()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shops.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_crm_storage_check_on_the_embedded_file(tmp_path):
    from conftest import crm

    config = _write(tmp_path, '[[shops]]\nshop_id = "s1"\n')
    result = crm("--db", str(tmp_path / "crm.duckdb"), "--config", str(config), "storage", "check")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == (f'kind = "duckdb": every table in the DuckDB file {tmp_path / "crm.duckdb"} '
                                     "(not made yet: crm ingest or crm demo makes it)")
    assert not (tmp_path / "crm.duckdb").exists(), "a check makes nothing"
