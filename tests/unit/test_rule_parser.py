"""dae's rule syntax: what parses, what it means, and where errors point."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daetui.routing.errors import RuleError
from daetui.routing.functions import PortRange
from daetui.routing.parser import parse_outbound_name, parse_rule
from daetui.routing.ruleset import check_rule


def test_functions_values_and_outbound():
    r = parse_rule("dip(224.0.0.0/3, 'ff00::/8') && !dport(80, 8000-9000) && l4proto(tcp) -> proxy")
    assert [c.name for c in r.conditions] == ["dip", "dport", "l4proto"]
    assert [c.negate for c in r.conditions] == [False, True, False]
    assert [p.value for p in r.conditions[0].params] == ["224.0.0.0/3", "ff00::/8"]
    assert r.outbound.name == "proxy" and r.outbound.target == "proxy" and not r.outbound.must
    checked = check_rule(r)
    assert checked[0].values == (ipaddress.ip_network("224.0.0.0/3"), ipaddress.ip_network("ff00::/8"))
    assert checked[1].values == (PortRange(80, 80), PortRange(8000, 9000))


@pytest.mark.parametrize("text", [
    "dip(ff00::/8) -> direct",                  # unquoted IPv6: ff00 is no key of dip
    "dip('ff00::/8') -> direct",
    'dip("ff00::/8") -> direct',
    "dip( ff00::/8 ) -> direct",
])
def test_ipv6_quoted_or_not(text):
    r = parse_rule(text)
    assert r.conditions[0].params[0].value == "ff00::/8"
    assert r.conditions[0].params[0].key is None


def test_aliases_keys_and_outbound_params():
    r = parse_rule("ip(10.0.0.0/8) && port(53) -> direct(mark: 0x100)")
    assert check_rule(r)[0].function == "dip" and check_rule(r)[1].function == "dport"
    assert r.outbound.mark == 0x100
    d = parse_rule("domain(suffix: example.com, geosite:cn, keyword:google) -> must_proxy")
    assert [(p.key, p.value) for p in d.conditions[0].params] == [
        ("suffix", "example.com"), ("geosite", "cn"), ("keyword", "google")]
    assert d.outbound.must and d.outbound.target == "proxy"


def test_mac_quoted_and_canonical():
    r = parse_rule("mac('02:42:AC:11:00:02') -> block")
    assert check_rule(r)[0].values == (bytes.fromhex("0242ac110002"),)
    assert str(r) == "mac('02:42:AC:11:00:02') -> block"


@pytest.mark.parametrize(("text", "message", "start"), [
    ("", "empty rule", 0),
    ("dport(80)", "expected '&&' or '->'", 9),
    ("dport(80) -> ", "expected an outbound", 13),
    ("dprot(80) -> direct", "did you mean 'dport'", 0),
    ("dport 80 -> direct", "expected '(' after dport", 6),
    ("dport(80 -> direct", "missing ')'", 5),
    ("dport(80,) -> direct", "empty parameter", 9),
    ("dport(80) && -> direct", "expected a function name", 13),
    ("dport(80) -> direct extra", "expected the end of the rule", 20),
    ("dip('10.0.0.0/8) -> direct", "unterminated", 4),
    ("pname(my app) -> direct", "unexpected ' '", 8),
    ("direct(mark: x) -> direct", "unknown function 'direct'", 0),
    ("dport(1) -> direct(mark: banana)", "not an integer", 25),
    ("dport(1) -> proxy(mark: 1)", "takes no such parameter", 18),
])
def test_syntax_errors_point_at_the_problem(text, message, start):
    with pytest.raises(RuleError) as e:
        parse_rule(text)
    assert message in e.value.message
    assert e.value.start == start


@pytest.mark.parametrize(("text", "message", "start"), [
    ("dport(70000) -> direct", "out of range", 6),
    ("dport(90-80) -> direct", "runs backwards", 6),
    ("dip(10.0.0.300) -> direct", "not an IP address", 4),
    ("l4proto(icmp) -> direct", "expected tcp or udp", 8),
    ("ipversion(5) -> direct", "expected 4 or 6", 10),
    ("mac(02:42) -> direct", "not a MAC address", 4),
    ("dport(80) && domain(regex: 'a(') -> direct", "bad regular expression", 27),
    ("dip(geoip:cn) -> direct", "geoip.dat", 4),
    ("dscp(64) -> direct", "expected 0 to 63", 5),
    ("interface(eth0) -> direct", "say which side", 10),
    ("dport(1) -> must_rules(must)", "takes no parameters", 12),
    ("dport(1) -> block(must)", "block cannot be must", 12),
])
def test_value_errors_point_at_the_value(text, message, start):
    with pytest.raises(RuleError) as e:
        check_rule(parse_rule(text))
    assert message in e.value.message
    assert e.value.start == start


def test_caret_marks_the_span():
    with pytest.raises(RuleError) as e:
        check_rule(parse_rule("dport(80) && sport(99999) -> x"))
    assert e.value.caret("dport(80) && sport(99999) -> x").splitlines()[1] == " " * 19 + "^" * 5


def test_fallback_name():
    assert parse_outbound_name(" proxy ") == "proxy"
    with pytest.raises(RuleError):
        parse_outbound_name("proxy extra")


# -- properties ------------------------------------------------------------------

TOKENS = ["dip", "sip", "dport", "sport", "l4proto", "ipversion", "mac", "domain", "port", "(", ")", ",", "&&",
          "!", "->", ":", "'", '"', " ", "80", "1-2", "10.0.0.0/8", "ff00::/8", "tcp", "udp", "4", "6",
          "suffix", "direct", "block", "proxy", "must_direct", "mark", "0x10", "x"]
VALID = st.builds(
    lambda conds, out: " && ".join(conds) + f" -> {out}",
    st.lists(st.sampled_from(["dport(80, 443)", "!sport(1000-2000)", "l4proto(udp)", "ipversion(4, 6)",
                              "dip(10.0.0.0/8, 'fd00::/8')", "!sip(192.0.2.1)", "mac('aa:bb:cc:dd:ee:ff')"]),
             min_size=1, max_size=5),
    st.sampled_from(["direct", "block", "proxy", "must_direct", "must_proxy", "direct(mark: 0x10)"]))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=25).map("".join) | st.text(max_size=60))
def test_any_text_gives_a_rule_or_a_positioned_error(text):
    try:
        rule = parse_rule(text)
    except RuleError as e:
        assert 0 <= e.start <= len(text)
        return
    # What parsed prints back to something that parses to the same rule.
    assert parse_rule(str(rule)) == rule


@settings(max_examples=200, deadline=None)
@given(VALID)
def test_valid_rules_round_trip_and_check(text):
    rule = parse_rule(text)
    again = parse_rule(str(rule))
    assert again == rule and str(again) == str(rule)
    assert check_rule(again) == check_rule(rule)
