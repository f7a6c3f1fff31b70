"""Packets the program cannot or should not parse pass untouched and are counted."""

from __future__ import annotations

import os
import socket
import struct

import pytest
from helpers import plane_in_lab, snapshot, tcp_echo, udp_exchange, wait_for

from daetui.lab.topology import ADDR, LAN_MAC, ROUTER_LAN_MAC
from daetui.net.netns import netns
from testkit.configs import RELAY_CONFIG

pytestmark = pytest.mark.kernel



@pytest.fixture(scope="module")
def plane(lab, tmp_path_factory):
    with plane_in_lab(lab, RELAY_CONFIG, tmp_path_factory.mktemp("run")) as runner:
        yield runner


def send_frame(lab, ethertype: int, payload: bytes) -> None:
    """Put a raw Ethernet frame on the LAN client's link, addressed to the router."""
    with netns(lab.lan):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        s.bind((ADDR.client_ifname, 0))
        mac = lambda m: bytes.fromhex(m.replace(":", ""))  # noqa: E731
        s.send(mac(ROUTER_LAN_MAC) + mac(LAN_MAC) + struct.pack("!H", ethertype) + payload)
    finally:
        s.close()


def ipv4_header(proto: int, payload_len: int, ihl: int = 5, frag: int = 0) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", (4 << 4) | ihl, 0, 20 + payload_len, 1, frag, 64, proto, 0,
                       socket.inet_aton(ADDR.client4), socket.inet_aton(ADDR.hosts4[0]))


def counter_rises(plane, name: str, before: int) -> int:
    return wait_for(lambda: (v := snapshot(plane).counters[name]) > before and v)


@pytest.mark.parametrize(("what", "ethertype", "payload", "counter"), [
    ("unknown ethertype", 0x88B5, b"\x00" * 46, "NOT_IP"),
    ("truncated IPv4 header", 0x0800, b"\x45\x00\x00", "UNPARSED"),
    ("IPv4 header length below 5", 0x0800, ipv4_header(17, 8, ihl=3) + b"\0" * 8, "UNPARSED"),
    ("IPv4 fragment", 0x0800, ipv4_header(17, 8, frag=0x2000) + b"\0" * 8, "FRAGMENT"),
    ("truncated TCP header", 0x0800, ipv4_header(6, 4) + b"\x01\x02\x03\x04", "UNPARSED"),
    ("ICMP", 0x0800, ipv4_header(1, 8) + b"\x08\0\0\0\0\0\0\0", "OTHER_L4"),
])
def test_unparseable_frames_pass_and_are_counted(plane, lab, what, ethertype, payload, counter):
    before = snapshot(plane).counters[counter]
    send_frame(lab, ethertype, payload)
    counter_rises(plane, counter, before)


@pytest.mark.parametrize("host", [ADDR.hosts4[0], ADDR.hosts6[0]])
def test_fragmented_datagrams_to_a_proxied_host_pass_untouched(plane, lab, host):
    """Fragments carry no ports to route by: they pass as direct, and arrive whole."""
    before = snapshot(plane).counters["FRAGMENT"]
    payload = os.urandom(4000)  # over the 1500-byte MTU: the client fragments it
    assert udp_exchange(lab, host, payload) == [payload]
    counter_rises(plane, "FRAGMENT", before)


def test_the_daemon_still_relays_after_all_that(plane, lab):
    data = os.urandom(100_000)
    assert tcp_echo(lab, ADDR.hosts4[0], data) == data
    assert tcp_echo(lab, ADDR.hosts6[0], data) == data
