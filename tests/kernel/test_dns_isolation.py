"""One LAN client's DNS server cannot poison another client's answers, nor the kernel's domain map.

With the request fallback `asis` (the default), a client's query goes to the
server it addressed. Host A points at a server of its own (dnsmasq on the
lab's "internet") that says www.example.test is EVIL, for a week. Host B then
asks the configured upstream (unbound) the same question: it must get
unbound's address, and EVIL must never be named in the kernel's domain map
(else A could make any address match any domain rule for every client).
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest
from helpers import addresses, lan_query, plane_in_lab, snapshot

from daetui.control.plane import ControlPlane
from daetui.control.runner import ControlPlaneThread
from daetui.lab.dnspeers import LAB_ZONE, LabCA, Record, Unbound
from daetui.lab.topology import ADDR, Lab
from daetui.net.netns import netns
from testkit.configs import dns_config
from testkit.peers.dnsmasq import Dnsmasq

pytestmark = pytest.mark.kernel

UNBOUND4, DNSMASQ4 = ADDR.dns4
EVIL = "203.0.113.66"
WEEK = 604800
HOST_B = "192.0.2.12"  # not the stress suite's host B (192.0.2.11): both may share a lab

CONFIG = dns_config(f"""
[group.proxy]

[dns]
upstream = {{ ub = "udp://{UNBOUND4}:53" }}
# request fallback: asis (the default)

[routing]
rules = ["domain(suffix: example.test) -> proxy"]
fallback = "direct"
""", extra_global='dial_mode = "ip"')


@pytest.fixture(scope="module")
def servers(lab: Lab) -> Iterator[None]:
    """unbound (the configured upstream) with the lab's zone; dnsmasq (host A's own) saying EVIL for a week."""
    with LabCA() as ca:
        unbound = Unbound(lab, LAB_ZONE, ca)
        try:
            unbound.start()
            with Dnsmasq(lab, records=[Record("www.example.test", "A", EVIL, WEEK),
                                       Record("api.example.test", "A", EVIL, WEEK)]):
                yield
        finally:
            unbound.stop()


@pytest.fixture(scope="module")
def host_b(lab: Lab) -> Iterator[str]:
    """A second device on the LAN client's link."""
    argv = ["ip", "-n", lab.lan, "addr"]
    subprocess.run([*argv, "add", f"{HOST_B}/24", "dev", ADDR.client_ifname], check=True)
    try:
        yield HOST_B
    finally:
        subprocess.run([*argv, "del", f"{HOST_B}/24", "dev", ADDR.client_ifname], check=False)


def query_from(lab: Lab, source: str, server: str, name: str, timeout: float = 5.0) -> dns.message.Message:
    """Ask `server` from LAN address `source`."""
    with netns(lab.lan):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((source, 0))
        s.setblocking(False)
        return dns.query.udp(dns.message.make_query(name, "A"), server, timeout, sock=s)
    finally:
        s.close()


def kernel_bits(runner: ControlPlaneThread, addr: str) -> dict[int, int] | None:
    plane: ControlPlane = runner.plane  # type: ignore[assignment]
    return runner.call(lambda: plane.dataplane.program.domain_bits(ipaddress.ip_address(addr)))


def known_names(runner: ControlPlaneThread, addr: str) -> list[str]:
    plane: ControlPlane = runner.plane  # type: ignore[assignment]
    return runner.call(lambda: plane.sync.names.names(ipaddress.ip_address(addr)))


def test_an_asis_answer_serves_no_other_server_and_names_nothing_in_the_kernel(lab, servers, host_b,
                                                                               tmp_path: Path):
    with plane_in_lab(lab, CONFIG, tmp_path) as runner:
        # Host A asks its own server: it gets what that server says (asis).
        assert addresses(lan_query(lab, DNSMASQ4, "www.example.test")) == [EVIL]
        # Host B asks the configured upstream's address: unbound's answer, not A's.
        assert addresses(query_from(lab, host_b, UNBOUND4, "www.example.test")) == [ADDR.hosts4[0]]
        # A's answer names nothing in the kernel.
        assert kernel_bits(runner, EVIL) is None
        assert known_names(runner, EVIL) == []
        # The configured upstream's answer does name its address in the kernel.
        bits = kernel_bits(runner, ADDR.hosts4[0])
        assert bits is not None and any(bits.values())
        # The other way round: an answer of the configured upstream, cached, is not what A's own
        # server is taken to say.
        assert addresses(query_from(lab, host_b, UNBOUND4, "api.example.test")) == [ADDR.hosts4[1]]
        assert addresses(lan_query(lab, DNSMASQ4, "api.example.test")) == [EVIL]
        # A asks again: its own server's answer, from the cache kept for that server.
        assert addresses(lan_query(lab, DNSMASQ4, "www.example.test")) == [EVIL]
        rows = [r for r in snapshot(runner).dns.cache if r.name == "www.example.test"]
        assert sorted(r.upstream for r in rows) == sorted([f"asis {DNSMASQ4}:53", "ub"])
        evil_row = next(r for r in rows if r.upstream.startswith("asis"))
        assert evil_row.hits == 1
        assert kernel_bits(runner, EVIL) is None and known_names(runner, EVIL) == []
