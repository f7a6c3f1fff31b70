"""lan_ingress around the rules, on testkit's harness (BPF_PROG_TEST_RUN, no lab): the fallback,
generations and the flip, decisions kept for a flow's later packets, DNS hijack, dead groups,
which listener a flow is handed to, and what it parses.

Also what the harness itself stands on: its packets are ones the kernel's own stack accepts,
and the context's ifindex reaches the program.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from daetui.abi.constants import ABI
from testkit.packets import (
    CLIENT_MAC,
    ETH_P_ARP,
    IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_ROUTING,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    Packet,
    ethernet,
    ipv4_header,
)
from testkit.progtest import TC_ACT_OK, TC_ACT_SHOT, TPROXY_MARK, RouteHarness, shared_harness

pytestmark = pytest.mark.kernel

C4, C6 = "192.0.2.10", "2001:db8:1::10"
H4, H6 = "203.0.113.10", "2001:db8:3::10"

RULES = """
[global]
lan_interface = ["lan0"]
[group.g1]
[group.g2]
[routing]
rules = ["dport(1000) -> g1", "dport(2000) -> g2", "dport(3000) -> block", "dport(4000) -> direct(mark: 0x40)"]
fallback = "direct"
"""


@pytest.fixture
def h() -> Iterator[RouteHarness]:
    """The shared harness with this module's rules, and nothing left behind for the next test."""
    harness = shared_harness()
    harness.reset()
    harness.load(RULES)
    yield harness
    harness.reset()


def config(rules: list[str], fallback: str = "direct", groups: tuple[str, ...] = ("g1", "g2")) -> str:
    return ('[global]\nlan_interface = ["lan0"]\n' + "".join(f"[group.{g}]\n" for g in groups)
            + "[routing]\nrules = [" + ", ".join(f'"{r}"' for r in rules) + f']\nfallback = "{fallback}"\n')


# -- what the harness stands on -------------------------------------------------------------

def _tcp_syn_recv(h: RouteHarness, port: int, v6: bool) -> bool:
    """Does the namespace hold a half-open connection to `port` (the SYN was taken)?"""
    with h.ns.entered(), open(f"/proc/net/tcp{'6' if v6 else ''}") as f:
        rows = [ln.split() for ln in f.read().splitlines()[1:]]
    return any(int(r[1].rsplit(":", 1)[1], 16) == port and r[3] == "03" for r in rows)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_crafted_packets_pass_the_kernels_own_checksum_checks(h, v6):
    """Sent on lan0's veth peer to the namespace's own sockets: a right checksum is taken, a wrong one
    dropped (so the check is live), for UDP and TCP alike."""
    family = socket.AF_INET6 if v6 else socket.AF_INET
    local, client = ("2001:db8:1::1", C6) if v6 else ("192.0.2.1", C4)
    lan0_mac = h.ns.mac["lan0"]
    udp = h.socket(family, socket.SOCK_DGRAM)
    tcp = h.socket(family, socket.SOCK_STREAM)
    raw = h.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        udp.bind((local, 0))
        udp.settimeout(1)
        tcp.bind((local, 0))
        tcp.listen()
        raw.bind(("lan0p", 0))
        uport, tport = udp.getsockname()[1], tcp.getsockname()[1]
        good = Packet(client, local, 40001, uport, "udp", dst_mac=lan0_mac, payload=b"checksummed")
        bad = bytearray(Packet(client, local, 40002, uport, "udp", dst_mac=lan0_mac, payload=b"corrupted").build())
        bad[-1] ^= 0xFF  # payload changed after the checksum was made
        raw.send(bytes(bad))
        raw.send(good.build())
        assert udp.recvfrom(100) == (b"checksummed", (client, 40001, 0, 0) if v6 else (client, 40001))
        bad_syn = bytearray(Packet(client, local, 40003, tport, dst_mac=lan0_mac).build())
        bad_syn[-3] ^= 0xFF  # the window field
        raw.send(bytes(bad_syn))
        time.sleep(0.05)
        assert not _tcp_syn_recv(h, tport, v6)
        raw.send(Packet(client, local, 40004, tport, dst_mac=lan0_mac).build())
        deadline = time.monotonic() + 2
        while not _tcp_syn_recv(h, tport, v6) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _tcp_syn_recv(h, tport, v6)
    finally:
        for s in (udp, tcp, raw):
            s.close()


def test_the_contexts_ifindex_is_the_interface_lan_ingress_sees(h):
    for iface in ("lan0", "lan1", "wan0"):
        v = h.run(Packet(C4, H4, 40000, 1000), iface)
        assert v.flow is not None and v.flow.ifindex == h.ns.ifindex[iface]
    stats = h.program.interface_stats()
    assert all(stats[h.ns.ifindex[i]]["rx_packets"] >= 1 for i in ("lan0", "lan1", "wan0"))


def test_an_interface_of_a_high_index_is_counted_too(h):
    """Below MAX_INTERFACES an interface's counters are an array slot; above, a hash entry: both are read."""
    index = ABI.MAX_INTERFACES + 44
    subprocess.run(["ip", "-n", h.ns.name, "link", "add", "far0", "index", str(index), "type", "veth",
                    "peer", "name", "far0p"],
                   check=True, capture_output=True, timeout=30)
    try:
        subprocess.run(["ip", "-n", h.ns.name, "link", "set", "far0", "up"], check=True, timeout=30)
        h.ns.ifindex["far0"] = index
        before = h.program.interface_stats().get(index, {}).get("rx_packets", 0)
        for _ in range(3):
            h.run(Packet(C4, H4, 40000, 1000), "far0")
        stats = h.program.interface_stats()
        assert stats[index]["rx_packets"] == before + 3
        assert stats[h.ns.ifindex["lan0"]]["rx_packets"] >= 1   # the array's entries are still read
    finally:
        h.ns.ifindex.pop("far0", None)
        subprocess.run(["ip", "-n", h.ns.name, "link", "del", "far0"], capture_output=True, timeout=30)


# -- the fallback ---------------------------------------------------------------------------

@pytest.mark.parametrize(("fallback", "retval"), [("direct", TC_ACT_OK), ("block", TC_ACT_SHOT), ("g2", TC_ACT_OK)])
def test_the_fallback_decides_what_no_rule_matches(h, fallback, retval):
    h.load(config(["dport(1000) -> g1"], fallback))
    for pk in (Packet(C4, H4, 40000, 5000), Packet(C6, H6, 40000, 5000, "udp")):
        v = h.run(pk)
        assert (v.outbound, v.rule_index, v.retval) == (fallback, None, retval)
        assert bool(v.flow.flags & ABI.FLOW_ASSIGNED) == (fallback == "g2")
    hits = h.program.rule_hits(h.generation, 1)
    assert hits[None][0] == 2 and hits[0][0] == 0


def test_no_rules_at_all_is_the_fallback(h):
    h.load(config([], "g1"))
    assert h.run(Packet(C4, H4)).outbound == "g1"


# -- generations ----------------------------------------------------------------------------

def test_rules_written_to_the_inactive_generation_are_unseen_until_the_flip(h):
    before = h.generation
    h.write_inactive(config(["dport(1000) -> g2"]))
    v = h.run(Packet(C4, H4, 40000, 1000))
    assert (v.outbound, v.flow.generation) == ("g1", before)
    gen = h.flip()
    assert gen != before
    v = h.run(Packet(C4, H4, 40000, 1000))
    assert (v.outbound, v.flow.generation) == ("g2", gen)


def test_a_flow_keeps_its_decision_across_a_reload_and_a_new_syn_takes_the_new_rules(h):
    syn = Packet(C4, H4, 40000, 1000)
    assert h.run(syn).outbound == "g1"
    h.load(config(["dport(1000) -> g2"]), forget_flows=False)
    # Later packets of the flow: the kept decision, counted, FIN noted.
    v = h.run(Packet(C4, H4, 40000, 1000, tcp_flags=TCP_ACK | TCP_FIN), keep_flow=True)
    assert (v.outbound, v.flow.generation, v.flow.packets) == ("g1", 1 - h.generation, 2)
    assert v.flow.flags & ABI.FLOW_TCP_FIN and "NEW_FLOWS" not in v.counters
    v = h.run(Packet(C4, H4, 40000, 1000, tcp_flags=TCP_ACK | TCP_RST), keep_flow=True)
    assert v.flow.flags & ABI.FLOW_TCP_RST
    # A new SYN on the same 4-tuple is a new connection: decided again, by today's rules.
    v = h.run(syn, keep_flow=True)
    assert (v.outbound, v.flow.generation, v.flow.packets) == ("g2", h.generation, 1)
    # UDP: the next datagram keeps the decision too (until it has been idle for UDP_REDECIDE_NS).
    dg = Packet(C4, H4, 40000, 1000, "udp")
    assert h.run(dg).outbound == "g2"
    h.load(config(["dport(1000) -> g1"]), forget_flows=False)
    assert h.run(dg, keep_flow=True).outbound == "g2"
    assert h.run(dg).outbound == "g1"  # (forgotten: decided afresh)


def test_mid_stream_tcp_with_no_decision_passes_undecided(h):
    v = h.run(Packet(C4, H4, 40000, 1000, tcp_flags=TCP_ACK))
    assert (v.retval, v.flow, v.counters.get("UNTRACKED_TCP")) == (TC_ACT_OK, None, 1)


def test_a_relayed_flow_the_lru_forgot_is_never_forwarded_raw(h):
    """Issue 11, fix 3: routing_tuples forgot a relayed flow (here: its entry deleted, as an LRU evicts).

    Its next mid-stream packet finds no socket under BPF_PROG_TEST_RUN (there is none), so it is
    dropped; a direct flow forgotten the same way still passes, as one older than daetui does.
    """
    h.load(config(["dport(1000) -> g1"]))
    relayed = Packet(C4, H4, 40001, 1000)
    assert h.run(relayed).outbound == "g1"
    h.program.forget_flow(relayed.flow_key())
    v = h.run(Packet(C4, H4, 40001, 1000, tcp_flags=TCP_ACK), keep_flow=True)
    assert (v.retval, v.counters.get("ORPHAN_DROPPED"), v.counters.get("UNTRACKED_TCP")) == (TC_ACT_SHOT, 1, None)
    assert v.skb_mark == 0
    direct = Packet(C4, H4, 40002, 2000)
    assert h.run(direct).outbound == "direct"
    h.program.forget_flow(direct.flow_key())
    v = h.run(Packet(C4, H4, 40002, 2000, tcp_flags=TCP_ACK), keep_flow=True)
    assert (v.retval, v.counters.get("UNTRACKED_TCP"), v.counters.get("ORPHAN_DROPPED")) == (TC_ACT_OK, 1, None)


def test_domain_bits_are_read_for_the_active_generation(h):
    """A name's bits are kept per generation; after a flip the kernel must read the new one's."""
    h.load(config(["domain(suffix: example.test) -> g1"]))
    h.learn_name(H4, "www.example.test")
    assert h.run(Packet(C4, H4)).outbound == "g1"
    # The same name is now bit 1 (bit 0: another function); the old generation still says bit 0.
    h.load(config(["domain(suffix: other.test) -> g2", "domain(suffix: example.test) -> g1"]))
    bits = h.program.domain_bits(ipaddress.ip_address(H4))
    assert bits == {1 - h.generation: 1, h.generation: 2}
    v = h.run(Packet(C4, H4))
    assert (v.outbound, v.rule_index) == ("g1", 1)
    h.forget_name(H4)
    v = h.run(Packet(C4, H4))
    assert (v.outbound, v.rule_index, v.counters.get("UNDECIDED")) == ("(user space)", 0, 1)


# -- DNS, dead groups, listeners --------------------------------------------------------------

def test_dns_is_hijacked_for_the_controller_unless_must_or_blocked(h):
    h.load(config(["sip(192.0.2.11) -> must_direct", "sip(192.0.2.12) -> block", "sip(192.0.2.13) -> must_rules",
                   "sip(192.0.2.13) -> g1", "dport(53) -> g1"]))
    cases = [(C4, "udp", "(dns)", 4), ("192.0.2.11", "udp", "direct", 0), ("192.0.2.12", "tcp", "block", 1),
             ("192.0.2.13", "udp", "g1", 3), (C4, "tcp", "(dns)", 4)]
    for src, proto, outbound, rule in cases:
        v = h.run(Packet(src, H4, 40000, 53, proto))
        assert (v.outbound, v.rule_index) == (outbound, rule), src
        assert v.must == (outbound in ("direct", "g1"))
        assert v.counters.get("DNS_HIJACKED", 0) == (outbound == "(dns)")
    # Not port 53: nothing hijacked.
    assert h.run(Packet(C4, H4, 40000, 5353, "udp")).outbound == "direct"


@pytest.mark.parametrize(("action", "outbound", "retval"), [
    (ABI.GROUP_DEAD_DIRECT, "direct", TC_ACT_OK), (ABI.GROUP_DEAD_DROP, "block", TC_ACT_SHOT),
    (ABI.GROUP_DEAD_REJECT, "g1", TC_ACT_OK)])
def test_a_group_with_no_live_node_for_the_family(h, action, outbound, retval):
    h.set_group_health("g1", ABI.GROUP_DEAD4 | action)
    v = h.run(Packet(C4, H4, 40000, 1000))
    assert (v.outbound, v.retval, v.counters.get("GROUP_DEAD")) == (outbound, retval, 1)
    assert v.flow.flags & ABI.FLOW_GROUP_DEAD
    # IPv6 has live nodes; the other group is not concerned.
    v6 = h.run(Packet(C6, H6, 40000, 1000))
    assert (v6.outbound, v6.flow.flags & ABI.FLOW_GROUP_DEAD) == ("g1", 0)
    assert h.run(Packet(C4, H4, 40000, 2000)).outbound == "g2"


def _packets() -> dict[int, Packet]:
    """One flow for the control plane per listener slot: TCP/UDP x IPv4/IPv6 x DNS or not."""
    out = {}
    for slot, (proto, v, dport) in {
            ABI.LISTENER_TCP4: ("tcp", 4, 1000), ABI.LISTENER_TCP6: ("tcp", 6, 1000),
            ABI.LISTENER_UDP4: ("udp", 4, 1000), ABI.LISTENER_UDP6: ("udp", 6, 1000),
            ABI.LISTENER_DNS_TCP4: ("tcp", 4, 53), ABI.LISTENER_DNS_TCP6: ("tcp", 6, 53),
            ABI.LISTENER_DNS_UDP4: ("udp", 4, 53), ABI.LISTENER_DNS_UDP6: ("udp", 6, 53)}.items():
        out[slot] = Packet(C4 if v == 4 else C6, H4 if v == 4 else H6, 40000 + slot, dport, proto)
    return out


def test_each_flow_is_handed_to_its_own_listener_slot(h):
    """One listener at a time in the sockmap: only the flows of its kind find it (the packet is marked
    for policy routing and sk_assign is tried; it cannot succeed under test_run), the rest fail open."""
    packets = _packets()
    assert len(packets) == ABI.N_LISTENERS
    for slot, kind in packets.items():
        family = socket.AF_INET6 if slot in (ABI.LISTENER_TCP6, ABI.LISTENER_UDP6, ABI.LISTENER_DNS_TCP6,
                                             ABI.LISTENER_DNS_UDP6) else socket.AF_INET
        sock = h.socket(family, socket.SOCK_STREAM if kind.proto == "tcp" else socket.SOCK_DGRAM)
        try:
            sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
            if kind.proto == "tcp":
                sock.listen()
            h.set_listener(slot, sock)
            for other, pk in packets.items():
                v = h.run(pk)
                found = "ASSIGN_ERROR" in v.counters or "TO_CONTROL" in v.counters
                assert found == (other == slot), (slot, other, v.counters)
                assert v.skb_mark == (TPROXY_MARK if found else 0)
                assert v.outbound == ("(dns)" if pk.dport == 53 else "g1")
        finally:
            h.clear_listener(slot)
            sock.close()


def test_no_listener_drops_when_configured_to_fail_closed(h):
    h.set_fail_open(False)
    v = h.run(Packet(C4, H4, 40000, 1000))
    assert (v.outbound, v.retval, v.counters.get("FAIL_OPEN")) == ("g1", TC_ACT_SHOT, 1)
    assert h.run(Packet(C4, H4, 40000, 5000)).retval == TC_ACT_OK  # direct flows do not care


# -- what is parsed, and what passes untouched --------------------------------------------------

@pytest.mark.parametrize(("what", "packet", "counter"), [
    ("broadcast", Packet(C4, H4, dport=1000, dst_mac="ff:ff:ff:ff:ff:ff"), "NON_UNICAST"),
    ("multicast", Packet(C6, "ff02::fb", dport=1000, proto="udp", dst_mac="33:33:00:00:00:fb"), "NON_UNICAST"),
    ("IPv4 fragment", Packet(C4, H4, dport=1000, proto="udp", frag_off=0x2000), "FRAGMENT"),
    ("IPv4 later fragment", Packet(C4, H4, dport=1000, proto="udp", frag_off=0x0010), "FRAGMENT"),
    ("IPv6 fragment header", Packet(C6, H6, dport=1000, proto="udp", ipv6_extensions=(IPPROTO_FRAGMENT,)),
     "FRAGMENT"),
    ("five IPv6 extension headers", Packet(C6, H6, dport=1000, ipv6_extensions=(IPPROTO_HOPOPTS,) * 5), "UNPARSED"),
])
def test_what_is_not_ours_passes_undecided(h, what, packet, counter):
    v = h.run(packet)
    assert (v.retval, v.flow, v.counters.get(counter)) == (TC_ACT_OK, None, 1), what
    assert "NEW_FLOWS" not in v.counters


@pytest.mark.parametrize(("what", "frame", "counter"), [
    ("ARP", ethernet("02:00:5e:00:02:01", CLIENT_MAC, ETH_P_ARP) + b"\0" * 28, "NOT_IP"),
    # (test_run refuses a frame shorter than its IP header: truncated headers are test_malformed's, in the lab)
    ("truncated UDP", Packet(C4, H4, dport=1000, proto="udp").build()[:14 + 20 + 2], "UNPARSED"),
    ("truncated TCP", Packet(C4, H4, dport=1000).build()[:14 + 20 + 10], "UNPARSED"),
    ("ICMP", ethernet("02:00:5e:00:02:01", CLIENT_MAC, 0x0800)
     + ipv4_header(ipaddress.ip_address(C4), ipaddress.ip_address(H4), 1, 8) + b"\x08" + b"\0" * 7, "OTHER_L4"),
])
def test_frames_that_are_not_tcp_or_udp_over_ip_pass(h, what, frame, counter):
    v = h.run(frame)
    assert (v.retval, v.counters.get(counter)) == (TC_ACT_OK, 1), what
    assert "NEW_FLOWS" not in v.counters


@pytest.mark.parametrize("packet", [
    Packet(C6, H6, 40000, 1000, "udp", ipv6_extensions=(IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS)),
    Packet(C6, H6, 40000, 1000, ipv6_extensions=(IPPROTO_HOPOPTS,) * 4),
    Packet(C4, H4, 40000, 1000, "udp", ipv4_options=b"\x01\x01\x01\x00" * 2),
], ids=["ipv6 three extension headers", "ipv6 four extension headers", "ipv4 options"])
def test_ports_are_found_behind_extension_headers_and_options(h, packet):
    v = h.run(packet)
    assert (v.outbound, v.rule_index, v.flow.key.sport) == ("g1", 0, 40000)


def test_marks_and_blocks_are_carried_out_on_the_packet(h):
    v = h.run(Packet(C4, H4, 40000, 4000), mark=0x1)
    assert (v.outbound, v.skb_mark, v.flow.mark) == ("direct", 0x40, 0x40)
    v = h.run(Packet(C4, H4, 40000, 5000), mark=0x1)
    assert (v.outbound, v.skb_mark) == ("direct", 0x1)  # no mark of its own: the packet's is left alone
    v = h.run(Packet(C4, H4, 40000, 3000, tcp_flags=TCP_SYN))
    assert (v.outbound, v.retval, v.counters.get("DECIDED_BLOCK")) == ("block", TC_ACT_SHOT, 1)
