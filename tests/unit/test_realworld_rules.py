"""The rule strings of the real-world corpus: what dae accepts is accepted with dae's meaning, what it
rejects is rejected with a message located in the rule (../shared/realworld/rules.json says which is which)."""

from __future__ import annotations

from pathlib import Path

import pytest
from realworld import load_json, write_geodata

from daetui.routing.dns_rules import DnsFacts, LookupFacts, compile_list
from daetui.routing.errors import RuleError
from daetui.routing.functions import typed_values
from daetui.routing.geodata import GeoData
from daetui.routing.parser import parse_rule
from daetui.routing.ruleset import check_rule


def _cases() -> list[dict]:
    try:
        return load_json("rules.json")
    except pytest.skip.Exception:
        return []


def _judge(case: dict, tmp: Path):
    """The compiled rule (routing: its checked form; DNS: the one-rule list), or RuleError."""
    write_geodata(tmp, case["rule"])
    geo = GeoData([tmp])
    if case["context"] == "routing":
        rule = parse_rule(case["rule"])
        check_rule(rule, geo)
        return rule
    ups = {u: "udp://192.0.2.53:53" for u in case.get("upstreams") or []}
    kind = "request" if case["context"] == "dns-request" else "response"
    return compile_list(kind, (case["rule"],), "asis" if kind == "request" else "accept", ups, geo)


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["id"])
def test_dae_verdict_is_daetuis(case: dict, tmp_path: Path) -> None:
    if case["dae"] == "valid":
        _judge(case, tmp_path)
        return
    try:
        _judge(case, tmp_path)
    except RuleError as e:
        assert 0 <= e.start <= len(case["rule"]), e      # located in the rule
        assert str(e)
        return
    # Accepting it anyway is harmless only where the corpus says so (and why).
    assert case.get("lenient_ok"), f"dae rejects {case['rule']!r} ({case.get('why')}); daetui accepted it"


def _rule(rule_id: str) -> dict:
    # load_json skips the calling test where the corpus is absent (_cases() would be empty).
    return next(c for c in load_json("rules.json") if c["id"] == rule_id)


def test_contains_and_domain_keys_mean_keyword_and_suffix(tmp_path: Path) -> None:
    """dae's AliasOptimizer: domain(contains: x) is keyword, domain(domain: x) is suffix."""
    contains = typed_values(parse_rule(_rule("rule-062")["rule"]).conditions[0])[0]
    domain = typed_values(parse_rule(_rule("rule-063")["rule"]).conditions[0])[0]
    assert contains.matches("www.google.com") and contains.matches("googleapis.net")
    assert not contains.matches("example.org")
    assert domain.matches("example.com") and domain.matches("a.example.com")
    assert not domain.matches("notexample.com")


def test_internal_selectors_choose_the_upstream_of_daetuis_own_lookups(tmp_path: Path) -> None:
    ups = {"alidns": "udp://192.0.2.1:53", "googledns": "udp://192.0.2.2:53"}
    rules = tuple(_rule(i)["rule"] for i in ("rule-047", "rule-045", "rule-046"))
    lst = compile_list("request", rules, "asis", ups, GeoData([tmp_path]))
    # They route no client query.
    assert lst.choose(DnsFacts("hk.example.com", 1)).target == "asis"
    assert lst.internal_upstream(LookupFacts("sub", tag="my_sub", link="https://s")) == "googledns"
    assert lst.internal_upstream(LookupFacts("sub", tag="other")) is None
    assert lst.internal_upstream(LookupFacts("node", name="hk-01", link="ss://x")) == "googledns"
    # subnode() is checked before node(), and only for nodes of a subscription.
    assert lst.internal_upstream(LookupFacts("node", tag="my_sub", name="hk-01")) == "alidns"
    assert lst.internal_upstream(LookupFacts("node", name="us-01")) is None


@pytest.mark.parametrize("text, message", [
    ("sub(my_sub) && qname(a.com) -> googledns", "cannot go with sub()"),
    ("node(name: hk) -> asis", "unknown target 'asis'"),
    ("subnode(bogus: x) -> googledns", "takes no key 'bogus'"),
])
def test_internal_selectors_are_checked_as_dae_checks_them(text: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(RuleError, match=message):
        compile_list("request", (text,), "asis", {"googledns": "udp://192.0.2.2:53"}, GeoData([tmp_path]))
