"""The repository documents itself: every configuration key the model accepts is in shops.example.toml
with its default and an explanation, and docs/rules.md names every key, its default, and only files that
exist (and every SQL model)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from types import NoneType, UnionType
from typing import Union, get_args, get_origin

import duckdb
import pytest
from pydantic import BaseModel

from crm.config import _ENV, Settings, Shop, Source, load_settings

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "shops.example.toml"
RULES = REPO / "docs" / "rules.md"


def _model_of(annotation) -> type[BaseModel] | None:
    """The model a field holds: Reminders for `reminders`, Shop for `shops: list[Shop]`, Source for an optional
    table (`source: Source | None`); None for a value."""
    if get_origin(annotation) in (Union, UnionType):
        inner = [a for a in get_args(annotation) if a is not NoneType]
        return _model_of(inner[0]) if len(inner) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


def model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every key a model accepts, dotted: 'shops.reminders.channels.new', 'gateway.down_after', …"""
    keys = set()
    for name, info in model.model_fields.items():
        inner = _model_of(info.annotation)
        keys |= model_keys(inner, f"{prefix}{name}.") if inner else {prefix + name}
    return keys


def document_keys(doc: dict, prefix: str = "") -> set[str]:
    """Every key a TOML document sets, dotted the same way (an array of tables counts each of its tables)."""
    keys = set()
    for name, value in doc.items():
        if isinstance(value, dict):
            keys |= document_keys(value, f"{prefix}{name}.")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                keys |= document_keys(item, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for name, value in values.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{name}.")
        else:
            out[prefix + name] = value
    return out


def rule_key(key: str) -> str:
    """How docs/rules.md and the error messages name a key: a shop's keys without the 'shops.' prefix."""
    return key.removeprefix("shops.")


@pytest.fixture
def no_overrides(monkeypatch):
    for var, _convert in _ENV.values():
        monkeypatch.delenv(var, raising=False)


def section(number: int) -> str:
    """The text of one numbered section of docs/rules.md."""
    text = RULES.read_text(encoding="utf-8")
    match = re.search(rf"^## {number}\. .*?(?=^## \d+\. |\Z)", text, re.M | re.S)
    assert match, f"docs/rules.md has no section {number}"
    return match.group(0)


# --------------------------------------------------------------------------------------------------
# shops.example.toml


def test_example_sets_every_key_the_model_accepts():
    keys = document_keys(tomllib.loads(EXAMPLE.read_text(encoding="utf-8")))
    accepted = model_keys(Settings)
    assert accepted - keys == set(), "keys the configuration accepts but shops.example.toml does not show"
    assert keys - accepted == set(), "keys in shops.example.toml the configuration does not accept"


def test_example_shows_the_defaults(no_overrides):
    """The first shop, [gateway] and [smtp] of the example are exactly the defaults (the second shop shows
    how to state only what differs)."""
    settings = load_settings(EXAMPLE)
    defaults = Settings(shops=[Shop(shop_id=settings.shops[0].shop_id)])
    assert settings.shops[0].model_dump() == defaults.shops[0].model_dump()
    assert settings.model_dump(exclude={"shops"}) == defaults.model_dump(exclude={"shops"})


def test_example_explains_every_key():
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    unexplained = []
    for i, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z_]+\s*=", line):
            explained = re.search(r"\s#\s*\S", line) or (i > 0 and lines[i - 1].lstrip().startswith("#"))
            if not explained:
                unexplained.append(line)
    assert unexplained == []


def test_example_points_to_the_rules_in_this_repository():
    text = EXAMPLE.read_text(encoding="utf-8")
    assert "contract" not in text.lower()
    assert "docs/rules.md" in text and RULES.is_file()


# --------------------------------------------------------------------------------------------------
# docs/rules.md


def test_rules_number_the_sections_the_code_refers_to():
    headings = re.findall(r"^## (\d+)\. ", RULES.read_text(encoding="utf-8"), re.M)
    assert headings == [str(n) for n in range(1, 12)]


def test_rules_name_every_configuration_key():
    keys = section(3)
    missing = [rule_key(k) for k in sorted(model_keys(Settings)) if f"`{rule_key(k)}`" not in keys]
    assert missing == []


def test_rules_give_the_true_defaults():
    """Each row `| `key` | `default` | … |` of §3 holds the model's default, read as TOML."""
    defaults = {rule_key(k): v for k, v in flat(Settings(shops=[Shop(shop_id="s1")]).model_dump()).items()
                if k != "shops"}
    defaults |= {rule_key(f"shops.{k}"): v for k, v in flat(Shop(shop_id="s1").model_dump()).items()}
    # the optional [shops.source] table: its keys' own defaults
    defaults |= {f"source.{k}": f.default for k, f in Source.model_fields.items() if not f.is_required()}
    rows = re.findall(r"^\| `([a-z0-9_.]+)` \| `(.+?)` \|", section(3), re.M)   # storage.s3.…
    assert len(rows) == len(model_keys(Settings)) - 2          # every key but shop_id and source.kind, which have none
    for key, written in rows:
        assert tomllib.loads(f"v = {written}")["v"] == defaults[key], key


def test_rules_cite_only_files_that_exist():
    text = RULES.read_text(encoding="utf-8")
    cited = set(re.findall(r"`((?:sql|crm|transforms|flows|templates|docs|tests|bench)/[^`<>*\s]+)`", text))
    cited |= {"shops.example.toml"} if "`shops.example.toml`" in text else set()
    assert len(cited) > 20
    assert sorted(c for c in cited if not (REPO / c).exists()) == []


def test_rules_cite_every_sql_model():
    """Each rule names the SQL file that implements it: a model nobody cites is a rule nobody documented."""
    text = RULES.read_text(encoding="utf-8")
    models = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "sql").rglob("*.sql"))
    assert [m for m in models if f"`{m}`" not in text] == []


def test_rules_hash01_example_is_what_the_sql_computes():
    text = section(2)
    match = re.search(r'`hash01\("([^"]+)"\)`: MD5 starts `([0-9a-f]{8})`, ([\d,]+) / 4,294,967,296 = (0\.\d+)', text)
    assert match, "the worked hash01 example"
    x, digits, number, value = match.groups()
    con = duckdb.connect()
    con.execute((REPO / "sql" / "macros.sql").read_text(encoding="utf-8"))
    computed, md5 = con.execute("SELECT hash01(?), left(md5(?), 8)", [x, x]).fetchone()
    assert md5 == digits and int(digits, 16) == int(number.replace(",", ""))
    assert str(computed).startswith(value)


def test_rules_do_not_send_readers_elsewhere():
    assert "contract" not in RULES.read_text(encoding="utf-8").lower()
