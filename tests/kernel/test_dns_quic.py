"""DNS over QUIC and over HTTP/3 upstreams, and optimistic_cache, in the lab.

The LAN client asks as any client would; the kernel hands its port-53
traffic to daetui, which asks the upstream over QUIC from the router
namespace across wan0. The DoQ/DoH3 server is testkit.peers.quic_dns (built
on aioquic's server API: no packaged DoQ or DoH3 server runs here, see its
docstring) in the wan namespace on dnsmasq's addresses (unbound holds UDP
853 and 443 on its own), named doq.lab.test, forwarding to the lab's
unbound; its certificate is from a lab CA (daetui.lab.dnspeers.LabCA),
trusted through dns.ca_file as for tls:// and https://.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dns.rcode
import pytest
from helpers import addresses, lan_query, plane_in_lab, snapshot, upstream_rows, wait_for

from daetui.lab.dnspeers import LAB_ZONE, LabCA, Record
from daetui.lab.topology import ADDR, Lab
from testkit.configs import dns_config
from testkit.peers.dnsmasq import Dnsmasq, DnsPeers, dns_peers
from testkit.peers.quic_dns import QuicDnsPeer

pytestmark = pytest.mark.kernel

UNBOUND4, DNSMASQ4 = ADDR.dns4
UNBOUND6, DNSMASQ6 = ADDR.dns6
WWW4, WWW6, API4 = ADDR.hosts4[0], ADDR.hosts6[0], ADDR.hosts4[1]
DOQ_NAME = "doq.lab.test"
# Ports of the servers that go down or show a bad certificate: not the kept server's.
ALT_DOQ, ALT_H3 = 8853, 8443


@pytest.fixture(scope="module")
def peers(lab: Lab) -> Iterator[DnsPeers]:
    names = (Record(DOQ_NAME, "A", DNSMASQ4), Record(DOQ_NAME, "AAAA", DNSMASQ6))
    with dns_peers(lab, (*LAB_ZONE, *names)) as p:
        yield p


@pytest.fixture(scope="module")
def quic_ca() -> Iterator[LabCA]:
    """The DoQ/DoH3 server's CA: its certificate names doq.lab.test and the lab's DNS addresses."""
    with LabCA(DOQ_NAME) as ca:
        yield ca


@pytest.fixture(scope="module")
def quic_peer(lab: Lab, peers: DnsPeers, quic_ca: LabCA) -> Iterator[QuicDnsPeer]:
    """DoQ on UDP 853 and DoH3 on UDP 443 of doq.lab.test (dnsmasq's addresses), forwarding to unbound."""
    with QuicDnsPeer(lab, quic_ca, f"{UNBOUND4}:53") as p:
        yield p


def handshakes(peer: QuicDnsPeer, alpn: str) -> int:
    return peer.log_path.read_text().count(f"handshake ({alpn})")


def test_queries_are_answered_over_quic_and_http3_on_both_families(lab: Lab, quic_ca: LabCA,
                                                                    quic_peer: QuicDnsPeer, tmp_path: Path):
    cfg = dns_config(f"""
[dns]
upstream = {{ doq = "quic://{DOQ_NAME}", doq6 = "quic://[{DNSMASQ6}]:853",
             doh3 = "h3://{DOQ_NAME}/dns-query", doh36 = "http3://[{DNSMASQ6}]" }}
ca_file = "{quic_ca.ca_file}"
request = ["qname(full: www.example.test) && qtype(a) -> doq", "qname(full: www.example.test) -> doq6",
           "qname(full: api.example.test) -> doh3", "qname(full: alias.example.test) -> doh36", "fallback: doq"]
[routing]
fallback = "direct"
""")
    before = {alpn: handshakes(quic_peer, alpn) for alpn in ("doq", "h3")}
    with plane_in_lab(lab, cfg, tmp_path) as runner:
        first = lan_query(lab, UNBOUND4, "www.example.test")
        assert addresses(first) == [WWW4], {n: u.last_error for n, u in upstream_rows(runner).items()}
        assert addresses(lan_query(lab, UNBOUND6, "www.example.test", "AAAA")) == [WWW6]
        assert addresses(lan_query(lab, UNBOUND4, "api.example.test")) == [API4]
        alias = lan_query(lab, UNBOUND6, "alias.example.test", tcp=True)
        assert addresses(alias) == [WWW4]
        # A second name through the same upstream: its connection is kept.
        assert lan_query(lab, UNBOUND4, "txt.example.test", "TXT").rcode() == dns.rcode.NOERROR
        ups = upstream_rows(runner)
        for name, n in (("doq", 2), ("doq6", 1), ("doh3", 1), ("doh36", 1)):
            assert (ups[name].queries, ups[name].errors, ups[name].malformed) == (n, 0, 0), ups[name]
        assert ups["doq"].address == ups["doh3"].address == DNSMASQ4  # doq.lab.test, by the bootstrap resolver
        assert ups["doq6"].address == ups["doh36"].address == DNSMASQ6
    # One QUIC connection per upstream: doq's two queries shared one handshake.
    assert handshakes(quic_peer, "doq") - before["doq"] == 2
    assert handshakes(quic_peer, "h3") - before["h3"] == 2


def test_a_server_that_went_down_is_a_clear_upstream_error(lab: Lab, peers: DnsPeers, tmp_path: Path):
    # A server of its own (ports of its own), stopped halfway.
    with QuicDnsPeer(lab, peers.ca, f"{UNBOUND4}:53", doq_port=ALT_DOQ, h3_port=ALT_H3) as gone:
        cfg = dns_config(f"""
[dns]
upstream = {{ doq = "quic://{DNSMASQ4}:{ALT_DOQ}", doh3 = "h3://[{DNSMASQ6}]:{ALT_H3}/dns-query" }}
ca_file = "{peers.ca.ca_file}"
request = ["qname(full: www.example.test) -> doq", "fallback: doh3"]
[routing]
fallback = "direct"
""")
        with plane_in_lab(lab, cfg, tmp_path) as runner:
            # Each upstream is asked once while the server runs (connections made), then once after.
            assert addresses(lan_query(lab, UNBOUND4, "www.example.test")) == [WWW4]
            assert addresses(lan_query(lab, UNBOUND4, "api.example.test")) == [API4]
            gone.stop()
            runner.call(runner.plane.dns_flush)  # type: ignore[attr-defined]
            assert lan_query(lab, UNBOUND4, "www.example.test").rcode() == dns.rcode.SERVFAIL
            assert lan_query(lab, UNBOUND4, "api.example.test").rcode() == dns.rcode.SERVFAIL
            ups = upstream_rows(runner)
            for name in ("doq", "doh3"):
                # Refused by the kernel's ICMP before any timeout: said so, and no timeout counted.
                assert "refused" in ups[name].last_error.lower(), ups[name]
                assert ups[name].last_error.startswith(f"{name}: ")
                assert ups[name].timeouts == 0


def test_a_certificate_daetui_does_not_trust_is_refused(lab: Lab, peers: DnsPeers, tmp_path: Path):
    with LabCA() as other, QuicDnsPeer(lab, other, f"{UNBOUND4}:53", doq_port=ALT_DOQ,
                                       h3_port=ALT_H3) as untrusted:
        cfg = dns_config(f"""
[dns]
upstream = {{ doq = "quic://{DNSMASQ4}:{ALT_DOQ}", doh3 = "h3://[{DNSMASQ6}]:{ALT_H3}/dns-query" }}
ca_file = "{peers.ca.ca_file}"
request = ["qname(full: www.example.test) -> doq", "fallback: doh3"]
[routing]
fallback = "direct"
""")
        with plane_in_lab(lab, cfg, tmp_path) as runner:
            assert lan_query(lab, UNBOUND4, "www.example.test").rcode() == dns.rcode.SERVFAIL
            assert lan_query(lab, UNBOUND6, "api.example.test").rcode() == dns.rcode.SERVFAIL
            ups = upstream_rows(runner)
            for name in ("doq", "doh3"):
                assert "certificate" in ups[name].last_error, ups[name]
        assert "query " not in untrusted.log_path.read_text()  # no query reached it


def test_a_stale_answer_comes_while_the_upstream_is_away_and_is_refreshed_when_it_returns(
        lab: Lab, peers: DnsPeers, tmp_path: Path):
    first = [Record("stale.example.test", "A", "203.0.113.21", ttl=1)]
    second = [Record("stale.example.test", "A", "203.0.113.22", ttl=300)]
    cfg = dns_config(f"""
[dns]
upstream = {{ dm = "udp://{DNSMASQ4}:5353" }}
request = ["fallback: dm"]
optimistic_cache = true
optimistic_cache_ttl = "10m"
[routing]
fallback = "direct"
""")
    away = Dnsmasq(lab, records=first, port=5353)
    away.start()
    try:
        with plane_in_lab(lab, cfg, tmp_path) as runner:
            assert addresses(lan_query(lab, UNBOUND4, "stale.example.test")) == ["203.0.113.21"]
            away.stop()
            # Its TTL runs out while the upstream is away.
            wait_for(lambda: any(r.stale for r in snapshot(runner).dns.cache if r.name == "stale.example.test"))
            got = lan_query(lab, UNBOUND4, "stale.example.test")
            assert addresses(got) == ["203.0.113.21"] and got.answer[0].ttl == 1  # min(30 s, its own)
            wait_for(lambda: snapshot(runner).dns.counters.refresh_failures >= 1)
            # Back, with another address: the next query still gets the stale answer, and refreshes it.
            away = Dnsmasq(lab, records=second, port=5353)
            away.start()
            assert addresses(lan_query(lab, UNBOUND4, "stale.example.test")) == ["203.0.113.21"]
            row = wait_for(lambda: next((r for r in snapshot(runner).dns.cache
                                         if r.name == "stale.example.test" and not r.stale), None))
            assert row.answers == ("203.0.113.22",)
            got = lan_query(lab, UNBOUND4, "stale.example.test")
            assert addresses(got) == ["203.0.113.22"] and got.answer[0].ttl > 1
            counters = snapshot(runner).dns.counters
            assert counters.stale_served >= 2 and counters.refreshes >= 2
    finally:
        away.stop()
