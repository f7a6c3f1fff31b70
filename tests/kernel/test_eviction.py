"""The eviction guard (issue 11, fix 3): routing_tuples is an LRU, and churn makes it forget flows.

Before the guard, a mid-stream packet of a relayed flow whose entry the LRU had
forgotten was passed untouched: routed on, it left the WAN with the client's
own address — hidden in the lab by TCP early demux while the relay's socket
lived, plain once it was gone. Now it reaches the relay's socket, or is
dropped; a direct flow forgotten the same way, and a connection older than
daetui, still pass.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest
from helpers import early_demux_off, echoes, lan_connect, lan_frames, newest_conn, plane_in_lab, udp_churn, wait_for

from daetui.abi.flowrecord import FlowKey
from daetui.control.plane import ControlPlane
from daetui.control.runner import ControlPlaneThread
from daetui.lab.topology import ADDR, ECHO_PORT, LAN_MAC, ROUTER_LAN_MAC
from testkit.configs import RELAY_CONFIG, RELAYED4, RELAYED6
from testkit.packets import TCP_ACK, Packet
from testkit.wancapture import Capture

pytestmark = pytest.mark.kernel

TABLE = 1024                          # flow_table_size of these tests: churn of a few thousand flows evicts
CONFIG = RELAY_CONFIG.replace('lan_interface = ["lan0"]', f'lan_interface = ["lan0"]\nflow_table_size = {TABLE}')
HOST_B = {4: "192.0.2.11", 6: "2001:db8:1::11"}
DIRECT = {4: ADDR.hosts4[1], 6: ADDR.hosts6[1]}  # the fallback's: direct
CLIENT = {4: ADDR.client4, 6: ADDR.client6}
RELAYED = {4: RELAYED4, 6: RELAYED6}


@pytest.fixture(scope="module")
def plane(lab) -> Iterator[ControlPlaneThread]:  # type: ignore[no-untyped-def]
    import tempfile
    from pathlib import Path

    with early_demux_off(lab), plane_in_lab(lab, CONFIG, Path(tempfile.mkdtemp(prefix="evict-"))) as runner:
        yield runner


def program(plane: ControlPlaneThread):  # type: ignore[no-untyped-def]
    p: ControlPlane = plane.plane  # type: ignore[assignment]
    assert p.sync.program is not None
    return p.sync.program


def counters(plane: ControlPlaneThread) -> dict[str, int]:
    return plane.call(lambda: program(plane).counters())


def key_of(sock, family: int) -> FlowKey:  # type: ignore[no-untyped-def]
    src, sport = sock.getsockname()[:2]
    dst, dport = sock.getpeername()[:2]
    return FlowKey(ipaddress.ip_address(src), sport, ipaddress.ip_address(dst), dport, "tcp")


def evict(lab, plane: ControlPlaneThread, key: FlowKey, family: int) -> int:  # type: ignore[no-untyped-def]
    """Churn of distinct UDP flows from host B until the LRU has forgotten `key`; how many it took."""
    sent = 0
    for _ in range(20):   # bounded: 20 rounds of two tables' worth
        sent += udp_churn(lab, HOST_B[family], DIRECT[family], 2 * TABLE, first=sent) // 2
        if plane.call(lambda: program(plane).flow(key)) is None:
            return sent
    raise AssertionError(f"{key} still in routing_tuples after {sent} new flows")


@pytest.mark.parametrize("family", [4, 6])
def test_a_relayed_flow_the_lru_forgot_still_reaches_its_relay_and_nothing_leaves_raw(lab, plane, family):
    c = lan_connect(lab, RELAYED[family], ECHO_PORT)
    try:
        assert echoes(c, b"before the churn")
        key = key_of(c, family)
        assert newest_conn(plane, (RELAYED[family], ECHO_PORT)).state == "open"
        before = counters(plane)
        took = evict(lab, plane, key, family)
        with Capture(lab.router, ADDR.wan_ifname) as cap:
            assert echoes(c, b"after the churn: still through the relay")
            assert echoes(c, b"x" * 20000)
        after = counters(plane)
    finally:
        c.close()
    leaked = cap.count(src=CLIENT[family], dst=RELAYED[family])
    print(f"[figure] IPv{family}: forgotten after {took} new flows; packets leaving raw: {leaked}; "
          f"to the socket: {after['ORPHAN_TO_SOCKET'] - before['ORPHAN_TO_SOCKET']}")
    assert leaked == 0
    assert after["ORPHAN_TO_SOCKET"] > before["ORPHAN_TO_SOCKET"]
    assert cap.count(dst=RELAYED[family]) > 0  # the relay's own packets were seen: the capture works


@pytest.mark.parametrize("family", [4, 6])
def test_a_forgotten_relayed_flow_whose_socket_is_gone_is_dropped(lab, plane, family):
    c = lan_connect(lab, RELAYED[family], ECHO_PORT)
    key = key_of(c, family)
    try:
        assert echoes(c, b"hello")
        conn = newest_conn(plane, (RELAYED[family], ECHO_PORT))
        p: ControlPlane = plane.plane  # type: ignore[assignment]
        assert plane.call(lambda: p.close_connections([conn.id])) == 1
    finally:
        c.close()
    evict(lab, plane, key, family)
    before = counters(plane)
    # The client's stack is gone too (reset): what it would still send, built by hand.
    ack = Packet(str(key.src), str(key.dst), key.sport, key.dport, "tcp", src_mac=LAN_MAC, dst_mac=ROUTER_LAN_MAC,
                 tcp_flags=TCP_ACK, payload=b"late data")
    with Capture(lab.router, ADDR.wan_ifname) as cap:
        lan_frames(lab, [ack.build()] * 5)
        wait_for(lambda: counters(plane)["ORPHAN_DROPPED"] >= before["ORPHAN_DROPPED"] + 5 or None, timeout=5)
    assert cap.count(src=CLIENT[family], dst=RELAYED[family]) == 0


def test_a_forgotten_direct_flow_and_one_older_than_daetui_still_pass(lab, plane):
    c = lan_connect(lab, DIRECT[4], ECHO_PORT)
    try:
        assert echoes(c, b"direct")
        key = key_of(c, 4)
        evict(lab, plane, key, 4)
        before = counters(plane)
        assert echoes(c, b"direct, forgotten: passed as before")
        assert counters(plane)["UNTRACKED_TCP"] > before["UNTRACKED_TCP"]
    finally:
        c.close()
