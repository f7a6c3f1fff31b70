"""Every rule function in the kernel, matching and not, with `!` and `&&`: the kernel,
the user-space matcher and `explain` must route the same table of flows the same way.

The table runs on testkit's harness: lan_ingress on crafted packets
(BPF_PROG_TEST_RUN), in a namespace of its own, decisions read back from
routing_tuples. That reaches what real sockets in the lab reach only at a
cost or not at all: MACs, DSCP with ECN set, TCP and UDP alike, IPv6
variants, port edges, a second LAN port, the FIB's answer for
interface(wan: ...), DNS hijack, must_*. One flow still goes through the
lab, as a LAN client sends it, to a daemon (the real path).
"""

from __future__ import annotations

import ipaddress
import re
import socket

import pytest
from helpers import lan_socket, plane_in_lab, snapshot, wait_for

from daetui.abi.constants import ABI
from daetui.lab.topology import ADDR, LAN_MAC
from daetui.routing.explain import Query, explain
from daetui.routing.matcher import Decision, FlowFacts, decide
from daetui.routing.ruleset import DNS, USERSPACE
from testkit.packets import CLIENT_MAC, Packet
from testkit.progtest import TC_ACT_OK, TC_ACT_SHOT, RouteHarness, shared_harness

pytestmark = pytest.mark.kernel

C4, C6 = "192.0.2.10", "2001:db8:1::10"            # the LAN client (on the harness's lan0)
H4 = ("203.0.113.10", "203.0.113.11", "203.0.113.12")  # WAN hosts: out by wan0
H6 = ("2001:db8:3::10", "2001:db8:3::11", "2001:db8:3::12")
ON_LAN1 = "192.0.2.200"                             # routed out of the second LAN port
SNIFFED = "203.0.113.13"                            # named in the sniffed.test zone
# What DNS told the kernel of the hosts' names; host index 2 has none.
NAMES = {H4[0]: "www.other.test", H6[0]: "www.other.test", H4[1]: "www.example.test", H6[1]: "www.example.test",
         SNIFFED: "cdn.sniffed.test"}
OTHER_MAC = "02:00:00:00:00:99"

# Each rule owns a destination port (or a source address, for port 53), so each case lands on
# the rule it means to test; the outbound names say which rule routed a flow.
RULES = [
    "dport(40100) && sport(50100-50110) -> g_sport",
    f"dport(40200) && mac('{CLIENT_MAC}') -> g_mac",
    f"dport(40300) && !mac('{OTHER_MAC}') -> g_notmac",
    "dport(40400) && ipversion(6) -> g_v6",
    "dport(40500) && ipversion(4) && l4proto(udp) -> g_v4udp",
    "dport(40600) && !l4proto(udp) -> g_notudp",
    "dport(40700) && sip(192.0.2.0/25, '2001:db8:1::/64') -> g_sip",
    "dport(40800) && !sip(192.0.2.128/25) -> g_notsip",
    "dport(40900) && dip(203.0.113.0/28) && !dip(203.0.113.11) -> g_dip",
    "dport(41000-41010, 41020) -> g_range",
    "dport(41100) && sport(50000-50999) && !sport(50500) -> g_sport2",
    '{ rule = "dport(41200) -> g_disabled", enabled = false }',
    "dport(41200) -> block",
    "dport(42100) && dscp(46) -> g_dscp",
    "dport(42101) && !dscp(46) -> g_notdscp",
    "dport(42200) && interface(lan: lan0) -> g_lan",
    "dport(42201) && interface(lan: nosuch0) -> g_nolan",
    "dport(42300) && interface(wan: wan0) -> g_wan",
    "dport(42301) && interface(wan: lan0) -> g_wanlan",
    "domain(suffix: example.test) && dport(42400) -> g_domain",
    "dport(42500) && pname(curl) -> block",
    "dport(42501) && !pname(curl) -> g_notpname",
    "dport(42600) -> must_rules",
    "dport(42600) -> g_aftermust",
    "dport(42700) -> must_direct",
    "dport(42800) && !domain(keyword: example) -> g_notdomain",
    "dport(43000) && mac('02:00:00:00:00:01', '02:00:00:00:00:02') -> g_macs",
    "dport(43100) && dscp(0, 10, 63) -> g_dscps",
    "dport(43200) && interface(lan: lan1) -> g_lan1",
    "dport(43201) && !interface(lan: lan0) -> g_notlan0",
    "dport(43202) && interface(lan: lan1, wan: lan1) -> g_sides",
    "dport(43300) && dip('2001:db8:3::/120') && !dip('2001:db8:3::11') -> g_dip6",
    "dport(43400) && dip('::/0') -> g_any6",
    "dport(43401) && dip(0.0.0.0/0) -> g_any4",
    "dport(43402) && !dip(0.0.0.0/0) -> g_not4",
    "dport(0, 1) -> g_low",
    "dport(65535) -> g_high",
    "dport(43500) && sport(1024-2047) -> g_srange",
    "dport(43501) && !sport(1024-2047) -> g_notsrange",
    "dport(43600) && l4proto(tcp, udp) && ipversion(4, 6) && sip(0.0.0.0/0, '::/0') -> g_all",
    "dport(43700) -> direct(mark: 0x10)",
    "dport(43701) && l4proto(tcp) -> g_tcp(must)",
    "dport(43702) -> must_g_mustgrp",
    f"dport(43800) && dscp(46) && !mac('{OTHER_MAC}') && sport(50000-50999) && !l4proto(tcp) -> g_combo",
    "dport(53) && sip(192.0.2.11) -> must_direct",
    "dport(53) && sip(192.0.2.12) -> block",
    "dport(53) && sip(192.0.2.13) -> g_dnsgroup",
    "dport(53) && sip(192.0.2.14) -> must_rules",
    "dport(53) && sip(192.0.2.14) -> g_dnsgroup",
    "dport(43900) && domain(full: www.example.test) && ipversion(6) -> g_domain6",
    "dport(44000) && domain(suffix: sniffed.test) -> g_sniff",
]
GROUPS = sorted({m.group(1) for m in map(re.compile(r"-> (?:must_)?(g_\w+)").search, RULES) if m})
CONFIG = ('[global]\nlan_interface = ["lan0"]\n' + "".join(f"[group.{g}]\n" for g in GROUPS)
          + "[routing]\nrules = [\n"
          + "".join(f"  {r},\n" if r.startswith("{") else f'  "{r}",\n' for r in RULES)
          + ']\nfallback = "direct"\n')


def p(dport: int, v: int = 4, h: int = 1, **kw: object) -> Packet:
    """A packet from the LAN client to WAN host `h` (IPv`v`), TCP SYN unless proto='udp'."""
    kw.setdefault("src", C4 if v == 4 else C6)
    kw.setdefault("dst", (H4 if v == 4 else H6)[h])
    kw.setdefault("sport", 50000)
    return Packet(dport=dport, **kw)  # type: ignore[arg-type]


def u(dport: int, v: int = 4, h: int = 1, **kw: object) -> Packet:
    return p(dport, v, h, proto="udp", **kw)


# (packet, the LAN port it comes in on)
CASES: list[tuple[Packet, str]] = [(pk, "lan0") for pk in [
    # ports and source ports
    u(40100, sport=50105), u(40100, sport=50111), u(40100, sport=50100), u(40100, sport=50110), u(40100, sport=50099),
    u(41000), u(41010, 6), u(41015), u(41020), u(40999), u(41011), u(41019), u(41021), p(41020), p(41021, 6),
    u(41100, sport=50600), u(41100, sport=50500), u(41100, sport=49999), u(41100, sport=50999), u(41100, sport=51000),
    u(0), u(1), u(2), p(65535), p(65534), u(65535, 6),
    u(43500, sport=1023), u(43500, sport=1024), u(43500, sport=2047), u(43500, sport=2048),
    u(43501, sport=1023), u(43501, sport=1024), u(43501, sport=65535), u(43501, sport=0),
    # MACs
    u(40200), u(40200, 6), u(40200, src_mac=OTHER_MAC),
    u(40300), p(40300, 6), u(40300, src_mac=OTHER_MAC),
    u(43000, src_mac="02:00:00:00:00:01"), p(43000, 6, src_mac="02:00:00:00:00:02"),
    u(43000, src_mac="02:00:00:00:00:03"), u(43000, src_mac="03:00:00:00:00:01"), u(43000),
    # l4proto and ipversion
    u(40400, 6), u(40400), p(40400, 6),
    u(40500), u(40500, 6), p(40500),
    u(40600), p(40600), p(40600, 6), u(40600, 6),
    u(43600), p(43600, 6), u(43600, 6, h=2),
    # sip and dip
    u(40700), u(40700, 6), u(40700, src="192.0.2.127"), u(40700, src="192.0.2.128"), u(40700, 6, src="2001:db8:4::10"),
    u(40800), u(40800, src="192.0.2.200"), u(40800, 6),
    u(40900, h=1), u(40900, h=0), u(40900, 6, h=0), u(40900, dst="203.0.113.15"), u(40900, dst="203.0.113.16"),
    u(43300, 6, h=0), u(43300, 6, h=1), u(43300, 6, dst="2001:db8:3::ff"), u(43300, 6, dst="2001:db8:3::100"),
    u(43300, h=0),
    u(43400, 6), u(43400), u(43401), u(43401, 6), u(43402, 6), u(43402),
    # disabled rule skipped; block drops
    u(41200), p(41200, 6),
    # DSCP (ECN bits beside it must not count)
    u(42100, dscp=46), u(42100), u(42100, 6, dscp=46), u(42100, dscp=46, ecn=3), u(42100, 6, dscp=46, ecn=1),
    u(42100, dscp=47), u(42100, dscp=45),
    u(42101), u(42101, 6, dscp=46), u(42101, dscp=46),
    u(43100), u(43100, dscp=10), u(43100, 6, dscp=63), u(43100, dscp=63, ecn=3), u(43100, dscp=11), u(43100, dscp=62),
    # interfaces: in (the context's ifindex) and out (the FIB's answer)
    u(42200), u(42201),
    u(42300), u(42300, 6), u(42300, dst=ON_LAN1), u(42300, dst="192.0.2.50"),
    u(42301), u(42301, dst="192.0.2.50"), u(42301, 6, dst="2001:db8:1::50"), u(42301, 6, dst="2001:db8:4::50"),
    u(43201), u(43202), u(43202, dst=ON_LAN1), u(43202, 6, dst="2001:db8:4::50"),
    # domain: by the bits DNS gave the kernel; no name -> user space; domain functions go last
    u(42400, h=1), u(42400, h=0), u(42400, 6, h=1), u(42400, h=2), u(42401, h=2),
    u(42800, h=0), u(42800, h=1), u(42800, h=2), u(42800, 6, h=0),
    u(43900, h=2), u(43900, 6, h=2), u(43900, 6, h=1), u(43900, 6, h=0), u(43900, h=1),
    u(44000, h=1), u(44000, h=2), p(44000, 6, h=2), u(44000, dst=SNIFFED),
    # pname: no LAN flow has a process on the router
    u(42500), u(42501),
    # must: must_rules goes on and marks the flow; must_x and x(must)
    u(42600), u(42700), p(43701), u(43701), u(43702, 6),
    # direct(mark: ...)
    u(43700), p(43700, 6),
    # && of five functions
    u(43800, dscp=46), u(43800, 6, dscp=46, sport=50999), p(43800, dscp=46), u(43800), u(43800, dscp=46, sport=49999),
    u(43800, dscp=46, src_mac=OTHER_MAC),
    # DNS (port 53): hijacked to the DNS controller unless must_* or block
    u(53), p(53), u(53, 6), u(53, src="192.0.2.11"), u(53, src="192.0.2.12"), p(53, src="192.0.2.13"),
    u(53, src="192.0.2.14"), u(53, h=2, src="192.0.2.14"),
    # the fallback
    u(44444), p(44444, 6),
]] + [(pk, "lan1") for pk in [
    u(42200), u(43200), u(43200, 6), u(43201), u(43202), u(40700, src="192.0.2.200"),
]] + [(u(43200), "lan0")]


def case_id(case: tuple[Packet, str]) -> str:
    pk, iface = case
    extra = "".join(f" {k}={v}" for k, v in (("dscp", pk.dscp), ("ecn", pk.ecn)) if v)
    if pk.src_mac != CLIENT_MAC:
        extra += f" mac={pk.src_mac}"
    return f"{pk.proto} {pk.src}:{pk.sport}->{pk.dst}:{pk.dport}{extra} on {iface}"


@pytest.fixture(scope="module")
def harness() -> RouteHarness:
    h = shared_harness()
    h.reset()
    h.load(CONFIG)
    for addr, name in NAMES.items():
        h.learn_name(addr, name)
    return h


def kernel_name(d: Decision, pk: Packet) -> str:
    """The matcher's decision as the kernel files it: user space when a name is needed, and
    DNS answered by the controller unless a must_* rule matched or the rule blocks it."""
    out = d.outbound or USERSPACE
    if pk.dport == 53 and not d.must and out != "block":
        return DNS
    return out


def explained(h: RouteHarness, pk: Packet, facts: FlowFacts) -> tuple[str | None, int | None]:
    """What `daetui explain` says of the flow, given the same facts."""
    target = f"[{pk.dst}]:{pk.dport}" if pk.version == 6 else f"{pk.dst}:{pk.dport}"
    assert h.ruleset is not None
    ex = explain(h.ruleset, Query(target, proto=pk.proto, mac=pk.src_mac, iface=facts.iface_in, wan=facts.iface_out,
                                  src=pk.src, dscp=pk.dscp, sport=pk.sport), domain_bits=facts.domain_bits)
    return ex.outbound, ex.rule_index


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_kernel_matcher_and_explain_agree(harness, case):
    pk, iface = case
    v = harness.run(pk, iface)
    facts = harness.facts(pk, iface)
    expected = decide(harness.ruleset, facts)
    assert v.flow is not None, f"no decision filed; counters {v.counters}"
    assert (v.outbound, v.rule_index, v.must) == (kernel_name(expected, pk), expected.rule_index, expected.must)
    if pk.dport:  # explain takes no port 0 (no service listens there)
        assert explained(harness, pk, facts) == (expected.outbound, expected.rule_index)
    # What the program did with the packet, and what it filed with the decision.
    assert v.retval == (TC_ACT_SHOT if v.outbound == "block" else TC_ACT_OK)
    assert v.flow.mark == expected.mark and v.flow.generation == harness.generation
    assert (v.flow.ifindex, v.flow.mac) == (harness.ns.ifindex[iface], bytes.fromhex(pk.src_mac.replace(":", "")))
    if v.outbound == "direct":
        assert v.skb_mark == expected.mark
    elif v.outbound != "block":
        # For the control plane, and no listener here: passed unmarked (fail-open).
        assert (v.skb_mark, v.counters.get("FAIL_OPEN")) == (0, 1)


def test_the_table_sees_every_function_match_and_fail(harness):
    """Each function, plain and negated, is seen both matching and failing, and every rule meant to
    be reached decides some case (else the table proves little)."""
    seen: set[tuple[str, bool, bool]] = set()
    outbounds: set[str] = set()
    for pk, iface in CASES:
        d = decide(harness.ruleset, harness.facts(pk, iface))
        outbounds.add(kernel_name(d, pk))
        for rule in d.trace:
            for c in rule.conditions:
                if c.matched is not None:
                    seen.add((c.text.lstrip("!").split("(")[0], c.text.startswith("!"), c.matched))
    for fn in ("dip", "sip", "dport", "sport", "l4proto", "ipversion", "mac", "dscp", "interface", "domain"):
        assert {(fn, False, True), (fn, False, False)} <= seen, fn
    for fn in ("dip", "sip", "sport", "l4proto", "mac", "dscp", "interface", "domain"):
        assert {(fn, True, True), (fn, True, False)} <= seen, f"!{fn}"
    # No LAN flow has a process on the router: pname() never matches, !pname() always does.
    assert {("pname", False, False), ("pname", True, True)} <= seen
    missing = set(GROUPS) - outbounds - {"g_disabled", "g_nolan"}
    assert not missing, f"no case routes to {sorted(missing)}"
    assert {"g_disabled", "g_nolan"}.isdisjoint(outbounds)
    assert {"direct", "block", DNS, USERSPACE} <= outbounds


@pytest.mark.parametrize("dport", [40900, 40400])
@pytest.mark.parametrize(("src", "dst"), [("::ffff:192.0.2.10", "::ffff:203.0.113.10"),
                                          ("2001:db8:1::10", "::ffff:203.0.113.10"),
                                          ("::ffff:192.0.2.10", "2001:db8:3::10")])
def test_ipv6_packets_with_v4_mapped_addresses_are_never_filed(harness, dport, src, dst):
    """::ffff:a.b.c.d is never valid on the wire, and it is how the maps key IPv4: filed, such a packet
    would overwrite the decision of the IPv4 flow between those addresses (a LAN device could re-route
    another's flow). It passes untouched (Linux drops a v4-mapped source itself), counted, filed nowhere."""
    v4 = u(dport, 4, src="192.0.2.10", dst="203.0.113.10")
    before = harness.run(v4)
    v = harness.run(u(dport, 6, src=src, dst=dst), keep_flow=True)
    assert (v.retval, v.counters.get("V4_MAPPED_V6"), v.counters.get("NEW_FLOWS")) == (TC_ACT_OK, 1, None)
    after = harness.program.flow(v4.flow_key())
    assert after is not None and before.flow is not None
    assert (after.outbound, after.rule_index, after.first_seen) == (before.flow.outbound, before.flow.rule_index,
                                                                     before.flow.first_seen)


# -- the real path: one flow from a LAN client in the lab, to a daemon ---------------------------

@pytest.fixture(scope="module")
def plane(lab, tmp_path_factory):
    with plane_in_lab(lab, CONFIG, tmp_path_factory.mktemp("run")) as runner:
        yield runner


def test_a_real_flow_through_the_lab_is_decided_as_the_matcher_says(plane, lab):
    """dport, sport, DSCP, MAC and l4proto of a datagram the LAN client's own stack built."""
    host, dport, sport = ADDR.hosts4[1], 43800, 50800
    s = lan_socket(lab, host, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 46 << 2)
        s.bind(("0.0.0.0", sport))
        s.sendto(b"?", (host, dport))
    finally:
        s.close()
    dst = ipaddress.ip_address(host)
    kf = wait_for(lambda: next((f for f in snapshot(plane).kernel_flows if f.key.dst == dst
                                and f.key.dport == dport and f.key.sport == sport), None))
    ruleset = plane.plane.ruleset
    expected = decide(ruleset, FlowFacts(ipaddress.ip_address(ADDR.client4), dst, sport, dport, "udp",
                                         bytes.fromhex(LAN_MAC.replace(":", "")), 46, "lan0", "wan0"))
    assert (ruleset.outbound_name(kf.outbound), kf.rule_index) == (expected.outbound, expected.rule_index)
    assert expected.outbound == "g_combo" and bool(kf.flags & ABI.FLOW_MUST) is False
