"""The first real flow: kernel decision, direct forwarding, hand-off and relay, block.

One control plane runs in the lab's router namespace for the whole module;
every flow is made by a real socket in the LAN namespace.
"""

from __future__ import annotations

import ipaddress
import os

import pytest
from helpers import (
    http_get,
    plane_in_lab,
    run_in,
    snapshot,
    tcp_connect_fails,
    tcp_echo,
    udp_exchange,
    wait_for,
)

from daetui.abi.constants import ABI
from daetui.lab.topology import ADDR, LAN_MAC

pytestmark = pytest.mark.kernel

CONFIG = """
[global]
lan_interface = ["lan0"]
tproxy_port = 12345

[group.proxy]
# No nodes yet: a group relays through the direct dialer until proxy nodes exist.

[routing]
rules = [
  "dip(203.0.113.10, '2001:db8:3::10') -> proxy",
  "dip(203.0.113.12, '2001:db8:3::12') -> block",
  "dip(203.0.113.11, '2001:db8:3::11') && l4proto(udp) -> direct",
]
fallback = "direct"
"""

PROXIED = {4: ADDR.hosts4[0], 6: ADDR.hosts6[0]}
DIRECT = {4: ADDR.hosts4[1], 6: ADDR.hosts6[1]}
BLOCKED = {4: ADDR.hosts4[2], 6: ADDR.hosts6[2]}
CLIENT = {4: ADDR.client4, 6: ADDR.client6}
ROUTER_WAN = {4: ADDR.router_wan4, 6: ADDR.router_wan6}


@pytest.fixture(scope="module")
def plane(lab, tmp_path_factory):
    with plane_in_lab(lab, CONFIG, tmp_path_factory.mktemp("run")) as runner:
        yield runner


def conns_to(runner, host: str, port: int, proto: str):
    return [c for c in snapshot(runner).connections if c.dst == (host, port) and c.proto == proto]


def kernel_flows_to(runner, host: str, port: int, proto: str):
    dst = ipaddress.ip_address(host)
    return [f for f in snapshot(runner).kernel_flows
            if f.key.dst == dst and f.key.dport == port and f.key.proto == proto]


@pytest.mark.parametrize("v", [4, 6])
def test_direct_tcp_is_forwarded_by_the_kernel_only(plane, lab, v):
    # The fallback (direct) routes it; the server sees the client itself, not the router.
    body = http_get(lab, DIRECT[v], "/whoami")
    assert body.decode().strip() == CLIENT[v]
    assert conns_to(plane, DIRECT[v], 80, "tcp") == []
    flows = kernel_flows_to(plane, DIRECT[v], 80, "tcp")
    assert flows, "the kernel recorded no decision"
    f = flows[-1]
    assert f.outbound == ABI.OUTBOUND_DIRECT and f.rule_index is None  # the fallback decided
    assert f.packets >= 3 and f.rx_packets >= 3 and f.bytes > 0 and f.rx_bytes > 0
    assert f.mac == bytes.fromhex(LAN_MAC.replace(":", ""))


@pytest.mark.parametrize("v", [4, 6])
def test_direct_udp_is_forwarded_by_the_kernel_only(plane, lab, v):
    replies = udp_exchange(lab, DIRECT[v], b"ping direct", count=3)
    assert replies == [b"ping direct"] * 3
    assert conns_to(plane, DIRECT[v], 7, "udp") == []
    f = kernel_flows_to(plane, DIRECT[v], 7, "udp")[-1]
    assert f.outbound == ABI.OUTBOUND_DIRECT and f.rule_index == 2
    assert f.packets == 3 and f.rx_packets == 3


@pytest.mark.parametrize("v", [4, 6])
def test_proxied_tcp_is_relayed_byte_for_byte(plane, lab, v):
    payload = os.urandom(3 * 1024 * 1024 + 17)
    assert tcp_echo(lab, PROXIED[v], payload) == payload
    # Relayed: the server saw the router's WAN address, not the client.
    assert http_get(lab, PROXIED[v], "/whoami").decode().strip() == ROUTER_WAN[v]

    def closed_echo():
        return [c for c in conns_to(plane, PROXIED[v], 7, "tcp") if c.state != "open"]
    conn = wait_for(closed_echo)[-1]
    assert conn.src[0] == CLIENT[v]
    assert conn.dst == (PROXIED[v], 7)
    assert conn.rule_index == 0 and conn.rule == "dip(203.0.113.10, '2001:db8:3::10') -> proxy"
    assert conn.outbound == "proxy" and conn.stage == "kernel"
    assert conn.up == len(payload) and conn.down == len(payload)
    assert conn.state == "closed", conn.error
    kf = kernel_flows_to(plane, PROXIED[v], 7, "tcp")[-1]
    assert kf.outbound == ABI.OUTBOUND_FIRST_GROUP and kf.flags & ABI.FLOW_ASSIGNED


@pytest.mark.parametrize("v", [4, 6])
def test_proxied_udp_is_relayed(plane, lab, v):
    replies = udp_exchange(lab, PROXIED[v], b"x" * 1000, sport=41000 + v, count=5)
    assert replies == [b"x" * 1000] * 5
    conns = wait_for(lambda: [c for c in conns_to(plane, PROXIED[v], 7, "udp") if c.src[1] == 41000 + v])
    c = conns[-1]
    assert c.src == (CLIENT[v], 41000 + v)
    assert c.rule_index == 0 and c.outbound == "proxy" and c.stage == "kernel"
    assert c.up == 5000 and c.down == 5000


@pytest.mark.parametrize("v", [4, 6])
def test_block_rule_makes_tcp_and_udp_fail(plane, lab, v):
    before = snapshot(plane).counters["DECIDED_BLOCK"]
    assert tcp_connect_fails(lab, BLOCKED[v], 80, timeout=1.5)
    assert udp_exchange(lab, BLOCKED[v], b"anyone?", timeout=0.5) == []
    assert snapshot(plane).counters["DECIDED_BLOCK"] >= before + 2
    flows = kernel_flows_to(plane, BLOCKED[v], 80, "tcp")
    assert flows and flows[-1].outbound == ABI.OUTBOUND_BLOCK and flows[-1].rule_index == 1
    assert conns_to(plane, BLOCKED[v], 80, "tcp") == []


def test_interface_binding_is_reported(plane):
    snap = snapshot(plane)
    assert [b.name for b in snap.bindings] == ["lan0"]
    lan0 = snap.bindings[0]
    assert lan0.programs == ("lan_ingress (ingress)", "lan_egress (egress)") and lan0.rx_packets > 0
    assert snap.missing_interfaces == ()


def test_rule_hits_are_counted_and_read_in_one_batch(plane, lab):
    for v in (4, 6):  # one flow per rule and family
        tcp_echo(lab, PROXIED[v], b"counted")
        assert tcp_connect_fails(lab, BLOCKED[v])
    program = plane.plane.dataplane.program
    gen = plane.plane.dataplane.state.generation
    start = gen * (ABI.MAX_RULES + 1)
    batch = plane.call(lambda: program._rule_stats_batch(start, 3))
    assert batch == plane.call(lambda: [program._rule_stat(start + i) for i in range(3)])  # one at a time
    assert batch[0][0] >= 2 and batch[1][0] >= 2 and batch[0][1] > 0
    rules = {r.index: r for r in snapshot(plane).rules}
    assert rules[0].hits == batch[0][0] and rules[1].hits == batch[1][0]


@pytest.mark.parametrize("v", [4, 6])
def test_reusing_a_tuple_the_router_holds_in_time_wait(plane, lab, v):
    """The server closes first, so the router (standing in for it) keeps the
    4-tuple in TIME_WAIT; the client's next connection on the same source port
    must reach the listener at once (tproxy_lookup). Without it the kernel
    answers the SYN with an ACK, and only the client's retransmitted SYN, a
    second later, gets through."""
    sport = 47000 + v
    retrans_before = syn_retransmits(lab)
    for _ in range(3):
        body = http_get(lab, PROXIED[v], "/whoami", sport=sport)
        assert body.decode().strip() == ROUTER_WAN[v]
    assert syn_retransmits(lab) == retrans_before
    state = run_in(lab.router, "ss", "-tan", "state", "time-wait", f"( sport = :80 and dport = :{sport} )")
    assert f":{sport}" in state, "the router holds no TIME_WAIT for the tuple: the test proves nothing"


def syn_retransmits(lab) -> int:
    out = run_in(lab.lan, "nstat", "-asz", "TcpExtTCPSynRetrans")
    return int(out.split("TcpExtTCPSynRetrans")[1].split()[0])

