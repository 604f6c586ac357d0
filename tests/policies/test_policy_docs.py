"""docs/policies.md has a section per policy and selector, with every option and a
command that runs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetsim.policies import POLICIES, PolicyOptions
from fleetsim.server.selection import SELECTORS

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "policies.md").read_text()
POLICY_NAMES = ("fedavg", "fedprox", "fednova", "federated_dropout", "heterofl", "fjord",
                "fedrolex")
SELECTOR_NAMES = ("random", "oort", "tifl")
COMMON = set(PolicyOptions.model_fields)


def section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", DOC, re.S | re.M)
    assert m, f"docs/policies.md has no section '## {title}'"
    return m.group(1)


def as_yaml(v: Any) -> str:
    v = list(v) if isinstance(v, tuple) else v
    return yaml.safe_dump(v, default_flow_style=True).removesuffix("...\n").strip()


def check(text: str, fields: dict[str, Any], skip: set[str], command: bool = True) -> None:
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| `?([^|`]*)`? \|",
                                                        text, re.M)}
    checked = 0
    for name, f in fields.items():
        assert f"`{name}`" in text, f"option {name} is not documented"
        if name in rows and name not in skip:
            assert rows[name] == as_yaml(f.default), f"default of {name}"
            checked += 1
    # the table pattern must keep matching, or no default would be checked at all
    assert checked or not (set(fields) - skip), "no documented default was checked"
    for line in re.findall(r"^fleetsim run (\S+)", text, re.M):
        assert (ROOT / shlex.split(line)[0]).is_file()
    assert not command or "fleetsim run scenarios/" in text


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_policy_section(name: str) -> None:
    fields = POLICIES.get(name).Options.model_fields
    check(section(f"`{name}`"), fields, skip=COMMON if name != "fedavg" else set())


@pytest.mark.parametrize("name", SELECTOR_NAMES)
def test_selector_section(name: str) -> None:
    check(section(f"Selector `{name}`"), SELECTORS.get(name).Options.model_fields, set())


def test_common_options() -> None:
    check(section("Options every policy has"), PolicyOptions.model_fields, set(),
          command=False)


def test_every_policy_cites_its_paper() -> None:
    for name in POLICY_NAMES:
        doc = POLICIES.get(name).__doc__ or ""
        assert re.search(r"(19|20)\d\d", doc) and "Server" in doc, name
    for name in SELECTOR_NAMES[1:]:
        assert re.search(r"20\d\d", SELECTORS.get(name).__doc__ or ""), name


# ----------------------------------------------------------------- defaults of each method

#: every built-in method (the DISTREAL family included): each is in the defaults table
METHODS = (*POLICY_NAMES, "distreal", "uniform-adaptive", "distreal-static")


def defaults_rows() -> dict[tuple[str, str], str]:
    """(method, setting) -> default, from the table of '## Defaults of each method'."""
    text = section("Defaults of each method")
    rows = {}
    for m in re.finditer(r"^\| `([\w-]+)` \| ([^|]+?) \| ([^|]+?) \| [^|]+ \|", text, re.M):
        rows[(m.group(1), m.group(2).strip())] = m.group(3).strip()
    assert len(rows) > 20, "the defaults table was not read"
    return rows


@pytest.mark.parametrize("name", METHODS)
def test_defaults_table_matches_the_class(name: str) -> None:
    cls = POLICIES.get(name)
    rows = defaults_rows()
    assert any(m == name for m, _ in rows), f"{name} has no row in the defaults table"
    declared = {f"`model.options.{d.option}`": as_yaml(d.value) for d in cls.model_defaults}
    documented = {s: v for (m, s), v in rows.items()
                  if m == name and s.startswith("`model.options.")}
    # every default the class applies is documented with its value, and no row documents
    # one the class does not apply
    assert documented == {k: f"`{v}`" for k, v in declared.items()}
    for d in cls.model_defaults:
        assert d.source.strip(), f"{name}: default {d.option} has no source"
    for (m, s), v in rows.items():
        if m == name and s.startswith("`policy.options."):
            option = s.strip("`").removeprefix("policy.options.")
            assert v == f"`{as_yaml(cls.Options.model_fields[option].default)}`", (name, s)
