"""global.unknown_domain: what a domain() function does with an address DNS gave no name.

"sniff" (the default): the kernel cannot decide, the flow goes to the control plane, which reads the
name from its first bytes. "no_match" (dae's kernel): the function is false (a negated one true) and
the kernel decides on, so the flow never reaches user space for its name. Both by the walk and by the
classifier, and as the user-space matcher (and explain) say.
"""

from __future__ import annotations

import pytest

from daetui.routing.explain import Query, explain
from daetui.routing.matcher import decide
from testkit.packets import Packet
from testkit.progtest import shared_harness

pytestmark = pytest.mark.kernel

CONFIG = """[global]
lan_interface = ["lan0"]
[group.ga]
[routing]
rules = [
  "domain(suffix: cn.test) -> direct",
  "!domain(keyword: ads) && dport(8443) -> ga",
  "dport(443) -> block",
]
fallback = "ga"
"""
UNNAMED, NAMED = "203.0.113.40", "203.0.113.41"


@pytest.fixture(scope="module")
def harness():
    h = shared_harness()
    h.reset()
    h.load(CONFIG)
    h.learn_name(NAMED, "www.cn.test")
    yield h
    h.reset()


@pytest.mark.parametrize("walk", [True, False], ids=["walk", "classifier"])
def test_no_match_decides_in_the_kernel_what_sniff_hands_over(harness, walk):
    harness.set_walk(walk)
    cases = [  # (destination, dport) -> (sniff, no_match): outbound, rule index
        ((UNNAMED, 443), (("(user space)", 0), ("block", 2))),
        ((UNNAMED, 8443), (("(user space)", 0), ("ga", 1))),
        ((UNNAMED, 80), (("(user space)", 0), ("ga", None))),
        ((NAMED, 443), (("direct", 0), ("direct", 0))),
    ]
    for (dst, dport), expected in cases:
        for no_match, (outbound, rule) in zip((False, True), expected, strict=True):
            harness.program.set_domain_no_match(no_match)
            v = harness.run(Packet(src="192.0.2.10", dst=dst, dport=dport))
            assert (v.outbound, v.rule_index) == (outbound, rule), (dst, dport, no_match, walk)
            assert ("UNDECIDED" in v.counters) == (outbound == "(user space)")
            if no_match:   # the user-space matcher, told the same, agrees
                d = decide(harness.ruleset, harness.facts(Packet(src="192.0.2.10", dst=dst, dport=dport)),
                           unknown_name_matches=False)
                assert (d.outbound, d.rule_index) == (outbound, rule)
    harness.program.set_domain_no_match(False)
    harness.set_walk(False)


def test_explain_says_what_the_kernel_does_in_either_mode(harness):
    q = Query(UNNAMED, 443, "tcp")
    sniffed = explain(harness.ruleset, q, UNNAMED)
    assert sniffed.outbound is None and "sniffs the name" in sniffed.text
    decided = explain(harness.ruleset, q, UNNAMED, unknown_domain="no_match")
    assert (decided.outbound, decided.rule_index) == ("block", 2)
