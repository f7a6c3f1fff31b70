"""Isolation: one LAN device's DNS server cannot poison the answers of another device, nor the kernel.

Host A resolves www.example.test through a server of its own (dnsmasq on the
lab's "internet", default request fallback `asis`) that answers a wrong
address with TTL 604800. Host B then asks the configured upstream (unbound)
for the same name 1000 times, while A keeps asking its own server now and
then. Pass: 0 of B's answers hold A's address; A's address gets no domain
bits in the kernel (and the control plane names nothing for it).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest
from helpers import addresses, lan_query, plane_in_lab, snapshot

from daetui.control.plane import ControlPlane
from daetui.lab.dnspeers import LAB_ZONE, LabCA, Record, Unbound
from daetui.lab.topology import ADDR, Lab
from daetui.net.netns import netns
from testkit.configs import dns_config
from testkit.peers.dnsmasq import Dnsmasq

UNBOUND4, DNSMASQ4 = ADDR.dns4
EVIL = "203.0.113.66"
WEEK = 604800
NAME = "www.example.test"
B_QUERIES = 1000
A_EVERY = 100  # host A asks its own server again after this many of B's queries

CONFIG = dns_config(f"""
[group.proxy]

[dns]
upstream = {{ ub = "udp://{UNBOUND4}:53" }}

[routing]
rules = ["domain(suffix: example.test) -> proxy"]
fallback = "direct"
""", extra_global='dial_mode = "ip"')


@pytest.fixture(scope="module")
def servers(lab: Lab) -> Iterator[None]:
    """unbound, the configured upstream; dnsmasq, host A's own server, saying EVIL for a week."""
    with LabCA() as ca:
        unbound = Unbound(lab, LAB_ZONE, ca)
        try:
            unbound.start()
            with Dnsmasq(lab, records=[Record(NAME, "A", EVIL, WEEK)]):
                yield
        finally:
            unbound.stop()


def test_host_a_own_server_never_answers_host_b(lab, servers, host_b, figures, tmp_path: Path):
    b4, _ = host_b
    with plane_in_lab(lab, CONFIG, tmp_path) as runner:
        plane: ControlPlane = runner.plane  # type: ignore[assignment]
        assert addresses(lan_query(lab, DNSMASQ4, NAME)) == [EVIL]

        with netns(lab.lan):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((b4, 0))
        sock.setblocking(False)
        poisoned = answered = unanswered = a_evil = 0
        t0 = time.monotonic()
        try:
            for i in range(B_QUERIES):
                if i % A_EVERY == A_EVERY - 1:
                    a_evil += addresses(lan_query(lab, DNSMASQ4, NAME)) == [EVIL]
                try:
                    r = dns.query.udp(dns.message.make_query(NAME, "A"), UNBOUND4, 3.0, sock=sock)
                except dns.exception.Timeout:
                    unanswered += 1
                    continue
                got = addresses(r)
                answered += 1
                poisoned += EVIL in got
        finally:
            sock.close()
        elapsed = time.monotonic() - t0

        evil = ipaddress.ip_address(EVIL)
        bits = runner.call(lambda: plane.dataplane.program.domain_bits(evil))
        names = runner.call(lambda: plane.sync.names.names(evil))
        good_bits = runner.call(lambda: plane.dataplane.program.domain_bits(ipaddress.ip_address(ADDR.hosts4[0])))

        figures.add("B's answers holding A's address", f"{poisoned} of {answered}", "0")
        figures.add("B's queries unanswered", unanswered, "")
        figures.add("B's lookups per second", f"{B_QUERIES / elapsed:.0f}", "")
        figures.add("A's own server still answers A", f"{a_evil} of {B_QUERIES // A_EVERY}", "")
        figures.add("A's address: domain bits in the kernel", "none" if bits is None else bits, "none")

        assert poisoned == 0
        assert answered >= B_QUERIES * 0.99, f"{unanswered} of B's queries went unanswered"
        assert bits is None and names == []
        assert good_bits is not None and any(good_bits.values())  # B's (configured) answer is in the kernel
        assert a_evil == B_QUERIES // A_EVERY  # A's own server is still asked for A
        figures.add("answers kept for the server asked (asis)", snapshot(runner).dns.counters.asis_scoped, "")
