"""The kernel layout of rules, and the user-space matcher that shares their meaning."""

from __future__ import annotations

import ipaddress

import pytest

from daetui.abi.constants import ABI
from daetui.config.load import parse_config
from daetui.routing.compile import CompileError, compile_rules
from daetui.routing.matcher import FlowFacts, decide


def ruleset(*rules: str, fallback: str = "direct"):
    body = ", ".join(repr(r) for r in rules)
    names = {r.rsplit("->", 1)[1].strip().split("(")[0].removeprefix("must_") for r in rules} | {fallback}
    groups = "".join(f"[group.{n}]\n" for n in sorted(names - {"direct", "block"}))
    return parse_config(f"{groups}[routing]\nrules = [{body}]\nfallback = '{fallback}'\n").routing


def test_layout_or_and_not():
    rs = ruleset("dport(80, 443) && !l4proto(udp) -> proxy", "dip(10.0.0.0/8) -> block")
    k = compile_rules(rs)
    m = k.match_sets
    assert [x.type for x in m] == [ABI.MATCH_DPORT, ABI.MATCH_DPORT, ABI.MATCH_L4PROTO, ABI.MATCH_DIP]
    # dport's two values: OR-ed, the second ends the function and jumps nowhere else.
    assert [x.flags for x in m] == [0, ABI.MS_FUNC_END, ABI.MS_FUNC_END | ABI.MS_RULE_END,
                                    ABI.MS_FUNC_END | ABI.MS_RULE_END]
    assert [x.func_end for x in m] == [1, 1, 2, 3]
    assert [x.next for x in m] == [3, 3, 3, 4]          # a failing function skips to the next rule
    assert m[2].negate == 1 and m[2].mask == ABI.L4_UDP
    assert m[2].outbound == ABI.OUTBOUND_FIRST_GROUP and m[3].outbound == ABI.OUTBOUND_BLOCK
    assert [x.rule_index for x in m] == [0, 0, 0, 1]
    assert k.fallback_outbound == ABI.OUTBOUND_DIRECT


def test_ports_merge_and_ip_sets_are_shared_and_collapsed():
    rs = ruleset("dport(80, 81, 82-90, 100, 95-99) -> proxy",
                 "dip(10.0.0.0/9, 10.128.0.0/9, 'fd00::/8') -> block",
                 "sip(10.0.0.0/8, 'fd00::/8') -> block")
    k = compile_rules(rs)
    ports = [(x.port_lo, x.port_hi) for x in k.match_sets if x.type == ABI.MATCH_DPORT]
    assert ports == [(80, 90), (95, 100)]
    assert k.ip_sets == {1: (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))}
    assert [x.ip_set for x in k.match_sets if x.type in (ABI.MATCH_DIP, ABI.MATCH_SIP)] == [1, 1]


def test_disabled_rules_keep_their_index_but_take_no_match_sets():
    text = ("[routing]\nrules = [{ rule = 'dport(1) -> block', enabled = false }, 'dport(2) -> block']\n")
    k = compile_rules(parse_config(text).routing)
    assert len(k.match_sets) == 1 and k.match_sets[0].rule_index == 1


def test_limits_are_errors():
    rs = ruleset(*[f"dport({p}) -> block" for p in range(1, 40)])
    with pytest.raises(CompileError, match="more than 16 match sets"):
        compile_rules(rs, max_match_sets=16)


def facts(dst: str, dport: int, proto: str = "tcp", src: str = "192.0.2.10", sport: int = 40000, mac=None):
    return FlowFacts(ipaddress.ip_address(src), ipaddress.ip_address(dst), sport, dport, proto, mac)


def test_first_match_wins_with_a_trace():
    rs = ruleset("dport(80) && l4proto(udp) -> a", "dport(80) -> b", "dport(80) -> c", fallback="f")
    d = decide(rs, facts("203.0.113.1", 80))
    assert (d.outbound, d.rule_index) == ("b", 1)
    assert [t.matched for t in d.trace] == [False, True]
    assert [c.matched for c in d.trace[0].conditions] == [True, False]
    d = decide(rs, facts("203.0.113.1", 81))
    assert (d.outbound, d.rule_index) == ("f", None)


def test_the_daemons_untraced_decisions_are_the_traced_ones():
    rs = ruleset("dport(80) && l4proto(udp) -> a", "domain(suffix: example.com) && dport(443) -> d",
                 "dport(1) -> must_b", "dport(80) -> b", "!dip(203.0.113.0/24) -> c", fallback="f")
    cases = [(facts("203.0.113.1", 80), {}), (facts("203.0.113.1", 443), {}),
             (facts("203.0.113.1", 443), {"unknown_name_matches": False}),
             (facts("198.51.100.1", 1), {}), (facts("203.0.113.1", 1), {})]
    for f, kw in cases:
        traced, plain = decide(rs, f, **kw), decide(rs, f, **kw, with_trace=False)
        assert traced.trace and not plain.trace
        assert (plain.outbound, plain.rule_index, plain.mark, plain.must) == \
            (traced.outbound, traced.rule_index, traced.mark, traced.must)


def test_families_do_not_cross():
    rs = ruleset("dip('::/0') -> six", "dip(0.0.0.0/0) -> four")
    assert decide(rs, facts("203.0.113.1", 1)).outbound == "four"
    assert decide(rs, facts("2001:db8::1", 1, src="2001:db8:1::10")).outbound == "six"
    # A v4-mapped address is the IPv4 address it carries.
    assert decide(rs, facts("::ffff:203.0.113.1", 1, src="::ffff:192.0.2.10")).outbound == "four"


def test_mac_and_negation():
    rs = ruleset("!mac('02:00:00:00:00:01') -> other", "mac('02:00:00:00:00:01') -> me")
    assert decide(rs, facts("203.0.113.1", 1, mac=bytes.fromhex("020000000001"))).outbound == "me"
    assert decide(rs, facts("203.0.113.1", 1, mac=bytes.fromhex("020000000002"))).outbound == "other"
    assert decide(rs, facts("203.0.113.1", 1, mac=None)).outbound == "other"
