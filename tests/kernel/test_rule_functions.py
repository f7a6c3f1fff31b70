"""Every kernel function, matching and not, with `!` and `&&`: the kernel and the
user-space matcher must route the same table of flows the same way."""

from __future__ import annotations

import ipaddress

import pytest
from helpers import plane_in_lab, snapshot, udp_exchange, wait_for

from daetui.lab.topology import ADDR, LAN_MAC
from daetui.routing.matcher import FlowFacts, decide

pytestmark = pytest.mark.kernel

# Each rule owns a range of destination ports (the *_ports below), so each
# case lands on the rule it means to test; 203.0.113.11:<port> has no server,
# only the decision matters. Outbound names say which rule routed a flow.
CONFIG = f"""
[global]
lan_interface = ["lan0"]

[group.g_sport]
[group.g_mac]
[group.g_notmac]
[group.g_v6]
[group.g_v4udp]
[group.g_notudp]
[group.g_sip]
[group.g_notsip]
[group.g_dip]
[group.g_range]
[group.g_sport2]
[group.g_disabled]

[routing]
rules = [
  "dport(40100) && sport(50100-50110) -> g_sport",
  "dport(40200) && mac('{LAN_MAC}') -> g_mac",
  "dport(40300) && !mac('02:00:00:00:00:99') -> g_notmac",
  "dport(40400) && ipversion(6) -> g_v6",
  "dport(40500) && ipversion(4) && l4proto(udp) -> g_v4udp",
  "dport(40600) && !l4proto(udp) -> g_notudp",
  "dport(40700) && sip(192.0.2.0/25, '2001:db8:1::/64') -> g_sip",
  "dport(40800) && !sip(192.0.2.128/25) -> g_notsip",
  "dport(40900) && dip(203.0.113.0/28) && !dip(203.0.113.11) -> g_dip",
  "dport(41000-41010, 41020) -> g_range",
  "dport(41100) && sport(50000-50999) && !sport(50500) -> g_sport2",
  {{ rule = "dport(41200) -> g_disabled", enabled = false }},
  "dport(41200) -> block",
]
fallback = "direct"
"""

# (dport, sport, IP version, host index) -> the kernel's outbound is checked against the matcher.
CASES = [
    (40100, 50105, 4, 1), (40100, 50111, 4, 1),
    (40200, 50201, 4, 1), (40200, 50202, 6, 1),
    (40300, 50301, 4, 1),
    (40400, 50401, 6, 1), (40400, 50402, 4, 1),
    (40500, 50501, 4, 1), (40500, 50502, 6, 1),
    (40600, 50601, 4, 1),
    (40700, 50701, 4, 1), (40700, 50702, 6, 1),
    (40800, 50801, 4, 1),
    (40900, 50901, 4, 1), (40900, 50902, 4, 0), (40900, 50903, 6, 0),
    (41000, 51001, 4, 1), (41010, 51002, 6, 1), (41015, 51003, 4, 1), (41020, 51004, 4, 1),
    (41100, 50600, 4, 1), (41100, 50500, 4, 1),
    (41200, 51201, 4, 1),
]


def endpoints(v: int, host_index: int) -> tuple[str, str]:
    host = (ADDR.hosts4 if v == 4 else ADDR.hosts6)[host_index]
    return (ADDR.client4 if v == 4 else ADDR.client6), host


@pytest.fixture(scope="module")
def plane(lab, tmp_path_factory):
    with plane_in_lab(lab, CONFIG, tmp_path_factory.mktemp("run")) as runner:
        yield runner


@pytest.mark.parametrize(("dport", "sport", "v", "h"), CASES)
def test_kernel_and_matcher_agree(plane, lab, dport, sport, v, h):
    client, host = endpoints(v, h)
    udp_exchange(lab, host, b"?", port=dport, sport=sport, timeout=0.05)
    dst = ipaddress.ip_address(host)

    def kernel_decision():
        for f in snapshot(plane).kernel_flows:
            if f.key.dst == dst and f.key.dport == dport and f.key.sport == sport and f.key.proto == "udp":
                return f
        return None
    kf = wait_for(kernel_decision)
    ruleset = plane.plane.ruleset
    facts = FlowFacts(ipaddress.ip_address(client), dst, sport, dport, "udp", bytes.fromhex(LAN_MAC.replace(":", "")))
    expected = decide(ruleset, facts)
    assert ruleset.outbound_name(kf.outbound) == expected.outbound
    assert kf.rule_index == expected.rule_index


def test_the_table_covers_matches_and_misses(plane):
    """Each function is seen both matching and failing (else the table proves little)."""
    ruleset = plane.plane.ruleset
    seen: dict[str, set[str]] = {}
    for dport, sport, v, h in CASES:
        client, host = endpoints(v, h)
        d = decide(ruleset, FlowFacts(ipaddress.ip_address(client), ipaddress.ip_address(host), sport, dport,
                                      "udp", bytes.fromhex(LAN_MAC.replace(":", ""))))
        seen.setdefault(d.outbound, set()).add(f"{dport}")
    for name in ("g_sport", "g_mac", "g_notmac", "g_v6", "g_v4udp", "g_sip", "g_notsip", "g_dip", "g_range",
                 "g_sport2", "block", "direct"):
        assert name in seen, f"no case routes to {name}"
    assert "g_notudp" not in seen and "g_disabled" not in seen
