"""Interfaces named by wildcards, and interfaces without an Ethernet header (issue 12).

`lan_interface = ["vethw*"]` binds every matching interface, including one created while daetui
runs, and interface() in rules follows the same wildcards (compiled again when one comes). A tun
device stands for WireGuard (which this kernel lacks): the test holds it open, writes IPv4 packets
into it as a client behind it would send them, and reads what the router sends back; the L3
programs route them by the rules, direct in the kernel or relayed by the control plane.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import plane_in_lab, snapshot, wait_for

from daetui.lab.topology import ADDR, ECHO_PORT, Lab
from daetui.net.netns import netns

pytestmark = pytest.mark.kernel

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
TUN_NET, TUN_ROUTER, TUN_CLIENT = "10.9.0.0/24", "10.9.0.1", "10.9.0.2"
RELAYED, DIRECT = ADDR.hosts4[0], ADDR.hosts4[1]


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, timeout=10)


def bound(runner, name: str) -> tuple[str, ...] | None:  # type: ignore[no-untyped-def]
    for i in snapshot(runner).interfaces:
        if i.name == name and i.bound:
            return i.programs
    return None


def iface_indices(runner) -> set[int]:  # type: ignore[no-untyped-def]
    kr = runner.plane.dataplane.kernel_rules
    return {m.ifindex for m in kr.match_sets if m.ifindex}


def test_a_wildcard_binds_every_matching_interface_and_one_created_later(lab: Lab, tmp_path: Path) -> None:
    ip(lab.router, "link", "add", "vethw1", "type", "veth", "peer", "name", "pw1")
    try:
        cfg = """
[global]
lan_interface = ["lan0", "vethw*"]
[routing]
rules = ["interface(lan: vethw+) -> block"]
fallback = "direct"
"""
        with plane_in_lab(lab, cfg, tmp_path / "run") as runner:
            assert bound(runner, "vethw1") == ("lan_ingress (ingress)", "lan_egress (egress)")
            assert bound(runner, "pw1") is None and bound(runner, "lan0")
            with netns(lab.router):
                w1 = socket.if_nametoindex("vethw1")
            assert iface_indices(runner) == {w1}
            info = {i.name: i for i in snapshot(runner).interfaces}
            assert info["vethw1"].matched == "vethw*" and info["lan0"].matched is None
            ip(lab.router, "link", "add", "vethw2", "type", "veth", "peer", "name", "pw2")
            assert wait_for(lambda: bound(runner, "vethw2"), timeout=5)
            with netns(lab.router):
                w2 = socket.if_nametoindex("vethw2")
            # interface(lan: vethw+) now names the new one too: the rules were compiled again.
            wait_for(lambda: iface_indices(runner) == {w1, w2}, timeout=5)
            ip(lab.router, "link", "del", "vethw2")
            wait_for(lambda: iface_indices(runner) == {w1}, timeout=5)
            assert "vethw2" not in snapshot(runner).missing_interfaces  # a wildcard's match is never "missing"
    finally:
        for name in ("vethw1", "vethw2"):
            subprocess.run(["ip", "-n", lab.router, "link", "del", name], capture_output=True, timeout=10)


@pytest.fixture
def tun(lab: Lab) -> Iterator[int]:
    """tun0 in the router namespace, held open by this test (its file descriptor), 10.9.0.1/24 on it;
    the wan namespace routes 10.9.0.0/24 back through the router."""
    with netns(lab.router):
        fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"tun0", IFF_TUN | IFF_NO_PI))
        ip(lab.router, "addr", "add", f"{TUN_ROUTER}/24", "dev", "tun0")
        ip(lab.router, "link", "set", "tun0", "up")
        ip(lab.wan, "route", "add", TUN_NET, "via", ADDR.router_wan4)
        try:
            yield fd
        finally:
            subprocess.run(["ip", "-n", lab.wan, "route", "del", TUN_NET], capture_output=True, timeout=10)
    finally:
        os.close(fd)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def udp_packet(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload  # checksum 0: none (IPv4)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, socket.IPPROTO_UDP, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    hdr = hdr[:10] + struct.pack("!H", _checksum(hdr)) + hdr[12:]
    return hdr + udp


def read_udp(fd: int, want: Callable[[str, int, str, int], bool],
             timeout: float = 5.0) -> tuple[str, int, bytes] | None:
    """The next IPv4 UDP datagram the router sends into tun0 that `want(src, sport, dst, dport)`:
    (source, source port, payload), or None. Others (IPv6 router solicitations...) are skipped."""
    for _ in range(50):  # bounded
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return None
        pkt = os.read(fd, 65535)
        if pkt[0] >> 4 != 4 or pkt[9] != socket.IPPROTO_UDP:
            continue
        ihl = (pkt[0] & 0xF) * 4
        src, dst = socket.inet_ntoa(pkt[12:16]), socket.inet_ntoa(pkt[16:20])
        sport, dport = struct.unpack("!HH", pkt[ihl:ihl + 4])
        if want(src, sport, dst, dport):
            return src, sport, pkt[ihl + 8:]
    return None


def exchange(fd: int, dst: str, sport: int, payload: bytes) -> bytes | None:
    """Write a UDP datagram from the client behind tun0 to dst:echo; the payload of the answer, or None."""
    os.write(fd, udp_packet(TUN_CLIENT, sport, dst, ECHO_PORT, payload))
    got = read_udp(fd, lambda src, psport, to, pdport: (src, psport, to, pdport) == (dst, ECHO_PORT, TUN_CLIENT,
                                                                                      sport))
    return got[2] if got else None


def relay_config(side: str, interfaces: str, relayed: str) -> str:
    """One rule: `relayed` goes to a group with no nodes (relayed by the control plane); the rest direct."""
    return f"""
[global]
{side}_interface = [{interfaces}]
[group.proxy]
[routing]
rules = ["dip({relayed}) -> proxy"]
fallback = "direct"
"""


def test_a_tun_lan_interface_is_bound_with_the_l3_program_and_its_flows_follow_the_rules(
        lab: Lab, tun: int, tmp_path: Path) -> None:
    with plane_in_lab(lab, relay_config("lan", '"lan0", "tun0"', RELAYED), tmp_path / "run") as runner:
        assert bound(runner, "tun0") == ("lan_ingress_l3 (ingress)", "lan_egress_l3 (egress)")
        before = snapshot(runner).counters
        assert exchange(tun, DIRECT, 40001, b"straight through") == b"straight through"
        mid = snapshot(runner).counters
        assert mid["DECIDED_DIRECT"] - before["DECIDED_DIRECT"] == 1
        assert mid["TO_CONTROL"] == before["TO_CONTROL"]  # direct: the control plane never saw it
        assert exchange(tun, RELAYED, 40002, b"through the relay") == b"through the relay"
        conns = [c for c in snapshot(runner).connections if c.dst == (RELAYED, ECHO_PORT)]
        assert [(c.src, c.proto, c.outbound) for c in conns] == [((TUN_CLIENT, 40002), "udp", "proxy")]
        assert snapshot(runner).counters["TO_CONTROL"] > mid["TO_CONTROL"]


ROUTER_UDP = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[2])))
s.settimeout(5)
s.sendto(b"out by tun0", (sys.argv[1], 7))
print(s.recvfrom(2048)[0].decode())
"""


def test_a_tun_wan_interface_gets_the_l3_wan_program(lab: Lab, tun: int, tmp_path: Path) -> None:
    """The router's own UDP out of tun0: a proxied flow reaches the far side from the relay's socket (another
    port), its answer comes back to the program; a direct one leaves from the program's own port."""
    relayed_peer, direct_peer = "10.9.0.7", "10.9.0.8"
    with plane_in_lab(lab, relay_config("wan", '"wan0", "tun0"', relayed_peer), tmp_path / "run") as runner:
        assert bound(runner, "tun0") == ("wan_egress_l3 (egress)",)
        for peer, sport, relayed in ((relayed_peer, 41001, True), (direct_peer, 41002, False)):
            prog = subprocess.Popen(["ip", "netns", "exec", lab.router, "python3", "-c", ROUTER_UDP, peer, str(sport)],
                                    stdout=subprocess.PIPE, text=True)
            try:
                got = read_udp(tun, lambda _s, _sp, _d, dport: dport == ECHO_PORT)
                assert got is not None and got[2] == b"out by tun0"
                src, from_port, _ = got
                assert src == TUN_ROUTER
                assert (from_port != sport) is relayed  # the relay's own socket, or the program's
                os.write(tun, udp_packet(peer, ECHO_PORT, src, from_port, b"answer"))
                out, _ = prog.communicate(timeout=10)
                assert out.strip() == "answer"
            finally:
                prog.kill()
                prog.wait()
        conns = [c for c in snapshot(runner).connections if c.dst[0] == relayed_peer]
        assert [(c.proto, c.src[1], c.outbound) for c in conns] == [("udp", 41001, "proxy")]
        assert not [c for c in snapshot(runner).connections if c.dst[0] == direct_peer]
