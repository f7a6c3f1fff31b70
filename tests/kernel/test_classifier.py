"""The rule classifier decides every new flow as the rule walk does (the walk is the reference).

Random rule sets over values that overlap on purpose (nested prefixes, port
ranges inside ranges, the same MAC or interface in several rules, negations,
must_rules, must_* outbounds, domain() with names known or not), and random
packets over the same values: each packet is decided in the kernel twice, by
the walk (params.walk) and by the classifier, and the two decisions must be
the same in every field the flow table keeps and in what happened to the
packet. Seeded: a failure names its seed, rule set and packet.
"""

from __future__ import annotations

import random

import pytest

from daetui.abi.constants import ABI
from daetui.routing.classify import build_classifier
from testkit.packets import CLIENT_MAC, Packet
from testkit.progtest import RouteHarness, Verdict, shared_harness

pytestmark = pytest.mark.kernel

RULE_SETS = 250
PACKETS = 40          # per rule set, each decided twice: 10 000 cases

V4_DST = ("203.0.113.10", "203.0.113.11", "203.0.113.40", "198.51.100.20", "192.0.2.200")
V6_DST = ("2001:db8:3::10", "2001:db8:3::11", "2001:db8:3::1:1", "2001:db8:2::20")
V4_SRC = ("192.0.2.10", "192.0.2.11", "192.0.2.100")
V6_SRC = ("2001:db8:1::10", "2001:db8:1::11")
MACS = (CLIENT_MAC, "02:00:00:00:00:01", "02:00:00:00:00:02")
PORTS = (53, 80, 443, 444, 1000, 1023, 1024, 8080, 50000, 50001, 65535)
DSCPS = (0, 10, 46)
NAMES = ("www.example.test", "api.example.test", "other.test", "cdn.sniffed.test")

DIPS = ("203.0.113.0/24", "203.0.113.0/28", "203.0.113.8/29", "203.0.113.10", "203.0.113.11/32",
        "198.51.100.0/24", "0.0.0.0/0", "'2001:db8:3::/48'", "'2001:db8:3::/120'", "'2001:db8:3::11'", "'::/0'")
SIPS = ("192.0.2.0/24", "192.0.2.0/28", "192.0.2.10", "192.0.2.64/26", "'2001:db8:1::/64'", "'2001:db8:1::11'")
DPORTS = ("53", "80", "443", "80, 443", "400-500", "1-1023", "1024-65535", "443-444", "8080", "0-65535")
SPORTS = ("50000", "50000-50001", "1024-65535", "1-1023", "50001")
DOMAINS = ("suffix: example.test", "full: www.example.test", "keyword: sniffed", "suffix: test", "suffix: nowhere.test")
OUTBOUNDS = ("direct", "block", "ga", "gb", "must_rules", "must_direct", "ga(must)", "direct(mark: 0x20)", "must_gb")


def _some(rng: random.Random, pool: tuple[str, ...], most: int = 2) -> str:
    return ", ".join(rng.sample(pool, rng.randint(1, most)))


# One random function of each kind, its values drawn from the pools above (dip and domain twice as likely).
FUNCTIONS = {
    "dip": lambda rng: f"dip({_some(rng, DIPS)})",
    "sip": lambda rng: f"sip({_some(rng, SIPS)})",
    "dport": lambda rng: f"dport({rng.choice(DPORTS)})",
    "sport": lambda rng: f"sport({rng.choice(SPORTS)})",
    "l4proto": lambda rng: f"l4proto({rng.choice(('tcp', 'udp'))})",
    "ipversion": lambda rng: f"ipversion({rng.choice(('4', '6'))})",
    "mac": lambda rng: f"mac({_some(rng, tuple(repr(m) for m in MACS))})",
    "dscp": lambda rng: f"dscp({_some(rng, tuple(str(d) for d in DSCPS))})",
    "lan": lambda rng: f"interface(lan: {rng.choice(('lan0', 'lan1', 'nosuch0'))})",
    "wan": lambda rng: f"interface(wan: {rng.choice(('wan0', 'lan1'))})",
    "sides": lambda rng: f"interface(lan: {rng.choice(('lan0', 'lan1'))}, wan: {rng.choice(('wan0', 'lan1'))})",
    "domain": lambda rng: f"domain({rng.choice(DOMAINS)})",
    "pname": lambda rng: "pname(curl)",
}
WEIGHTS = {"dip": 2, "dport": 2, "domain": 2}


def function(rng: random.Random) -> str:
    kinds = list(FUNCTIONS)
    kind = rng.choices(kinds, weights=[WEIGHTS.get(k, 1) for k in kinds])[0]
    return ("!" if rng.random() < 0.25 else "") + FUNCTIONS[kind](rng)


def rule_set(rng: random.Random) -> str:
    n = rng.choice((1, 2, 5, 10, 30, 90))
    rules = []
    for _ in range(n):
        funcs = " && ".join(function(rng) for _ in range(rng.choice((1, 1, 2, 3))))
        rules.append(f'  "{funcs} -> {rng.choice(OUTBOUNDS)}",')
    return ('[global]\nlan_interface = ["lan0", "lan1"]\n[group.ga]\n[group.gb]\n[routing]\nrules = [\n'
            + "\n".join(rules) + f'\n]\nfallback = "{rng.choice(("direct", "ga"))}"\n')


def packet(rng: random.Random) -> tuple[Packet, str]:
    v6 = rng.random() < 0.35
    pk = Packet(src=rng.choice(V6_SRC if v6 else V4_SRC), dst=rng.choice(V6_DST if v6 else V4_DST),
                sport=rng.choice(PORTS), dport=rng.choice(PORTS), proto=rng.choice(("tcp", "udp")),
                src_mac=rng.choice(MACS), dscp=rng.choice(DSCPS))
    return pk, rng.choice(("lan0", "lan0", "lan1"))


def decision(v: Verdict) -> tuple[object, ...]:
    f = v.flow
    return (v.retval, v.skb_mark, v.outbound, f and f.rule_index, f and f.flags, f and f.mark)


def both(h: RouteHarness, pk: Packet, iface: str) -> tuple[tuple[object, ...], tuple[object, ...]]:
    h.set_walk(True)
    walked = decision(h.run(pk, iface))
    h.set_walk(False)
    return walked, decision(h.run(pk, iface))


@pytest.fixture(scope="module")
def harness():
    h = shared_harness()
    h.reset()
    yield h
    h.set_walk(False)
    h.reset()


def test_the_classifier_decides_10000_random_cases_as_the_walk_does(harness):
    rng = random.Random(20261206)
    cases = classified = 0
    for n in range(RULE_SETS):
        config = rule_set(rng)
        harness.reset()
        harness.load(config)
        assert harness.classified, build_classifier(harness.kernel_rules).why
        classified += 1
        # global.unknown_domain = "no_match" for a third of the sets: a domain() with no name is false.
        harness.program.set_domain_no_match(rng.random() < 0.33)
        for addr in rng.sample(V4_DST + V6_DST, rng.randint(0, 6)):
            harness.learn_name(addr, rng.choice(NAMES))
        for _ in range(PACKETS):
            pk, iface = packet(rng)
            walked, by_class = both(harness, pk, iface)
            assert by_class == walked, f"rule set {n}:\n{config}\npacket {pk} on {iface}"
            cases += 1
    assert cases == RULE_SETS * PACKETS and classified == RULE_SETS


def test_a_classifier_that_differs_from_the_walk_is_caught(harness):
    """The comparison above can fail: a classifier built with one negation dropped decides differently."""
    config = ('[global]\nlan_interface = ["lan0"]\n[group.ga]\n[routing]\nrules = [\n'
              '  "!dport(443) && dip(203.0.113.0/24) -> ga",\n  "dport(443) -> block",\n]\nfallback = "direct"\n')
    harness.reset()
    rules = harness.load(config)
    pk = Packet(src="192.0.2.10", dst="203.0.113.10", dport=80)
    walked, by_class = both(harness, pk, "lan0")
    assert walked == by_class and walked[2] == "ga"
    # Now the same rules, with the first function's negation lost on the way to the classifier.
    rules.match_sets[0].negate = 0
    harness.program.write_classifier(harness.generation, build_classifier(rules))
    walked, by_class = both(harness, pk, "lan0")
    assert walked[2] == "ga" and by_class[2] == "direct"


def test_rules_the_classifier_cannot_hold_are_walked(harness):
    """A rule with more domain() functions than the classifier keeps per rule: the generation is walked,
    and still decides right."""
    many = " && ".join(f"!domain(suffix: n{i}.test)" for i in range(ABI.CLS_MAX_RULE_DOMAINS + 1))
    config = ('[global]\nlan_interface = ["lan0"]\n[group.ga]\n[routing]\nrules = [\n'
              f'  "dport(80) && {many} -> ga",\n  "dport(80) -> block",\n]\nfallback = "direct"\n')
    harness.reset()
    harness.load(config)
    assert not harness.classified
    assert "domain()" in harness.program.classifiers[harness.generation].why
    pk = Packet(src="192.0.2.10", dst="203.0.113.10", dport=80)
    harness.learn_name(pk.dst, "www.example.test")
    assert harness.run(pk).outbound == "ga"
    harness.learn_name(pk.dst, "www.n7.test")
    assert harness.run(pk).outbound == "block"


def test_hundreds_of_candidates_turned_down_hand_over_to_the_walk(harness):
    """700 must_rules rules that all match, then the deciding rule: more candidates than the classifier's
    runs try, so the walk takes over from the next rule; the decision is the walk's, with no tail call
    run out of."""
    rules = [f'  "dport(80) && sport({1000 + i}-65535) -> must_rules",' for i in range(700)]
    config = ('[global]\nlan_interface = ["lan0"]\n[group.ga]\n[routing]\nrules = [\n' + "\n".join(rules)
              + '\n  "dport(80) -> ga",\n]\nfallback = "direct"\n')
    harness.reset()
    harness.load(config)
    assert harness.classified
    pk = Packet(src="192.0.2.10", dst="203.0.113.10", sport=40000, dport=80)
    v = harness.run(pk)
    assert (v.outbound, v.rule_index, v.must) == ("ga", 700, True)
    assert "CHUNK_LIMIT" not in v.counters
    walked, by_class = both(harness, pk, "lan0")
    assert walked == by_class


def test_a_hand_over_after_the_last_rule_is_the_fallback(harness):
    """Every rule a must_rules candidate turned down, none deciding: the fallback, as the walk decides,
    whatever a longer rule set left in the positions after the last rule."""
    rules = [f'  "dport(80) && sport({1000 + i}-65535) -> must_rules",' for i in range(700)]
    longer = ('[global]\nlan_interface = ["lan0"]\n[group.ga]\n[routing]\nrules = [\n'
              + "\n".join(rules + ['  "dport(80) -> block",'] * 2) + '\n]\nfallback = "ga"\n')
    harness.reset()
    harness.load(longer)          # both generations' positions past 700 hold rules
    harness.load(longer)
    config = ('[global]\nlan_interface = ["lan0"]\n[group.ga]\n[routing]\nrules = [\n' + "\n".join(rules)
              + '\n]\nfallback = "ga"\n')
    harness.load(config)
    assert harness.classified
    pk = Packet(src="192.0.2.10", dst="203.0.113.10", sport=40000, dport=80)
    walked, by_class = both(harness, pk, "lan0")
    assert by_class == walked and walked[2] == "ga" and walked[3] is None
    assert "CHUNK_LIMIT" not in harness.run(pk).counters
