"""The lab's DNS peers: unbound (plain, DoT, DoH) and dnsmasq (serving, forwarding) really answer.

Queries are made from the router namespace, where daetui runs: they cross
the router's wan0 to the servers on the "internet" side, as daetui's own
upstream queries will.
"""

from __future__ import annotations

import ssl
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from daetui.lab.dnspeers import BIG_COUNT, DOH_PATH, DOH_PORT, DOT_PORT, NEG_TTL, TLS_NAME, DnsPeerError, Record
from daetui.lab.topology import ADDR, Lab
from daetui.net.netns import netns
from testkit.peers.dnsmasq import Dnsmasq, DnsPeers, dns_peers, query

pytestmark = pytest.mark.kernel

V4V6 = pytest.mark.parametrize("v", [4, 6])
# The unbound tests do not depend on how dnsmasq runs: once is enough.
SERVE_ONLY = pytest.mark.parametrize("peers", ["serve"], indirect=True)


@pytest.fixture(scope="module", params=["serve", "forward"])
def peers(request: pytest.FixtureRequest, lab: Lab) -> Iterator[DnsPeers]:
    """unbound and dnsmasq; dnsmasq serving LAB_ZONE itself, or forwarding to unbound."""
    with dns_peers(lab, dnsmasq_forward=request.param == "forward") as p:
        yield p


def unbound_addr(v: int) -> str:
    return ADDR.dns4[0] if v == 4 else ADDR.dns6[0]


def dnsmasq_addr(v: int) -> str:
    return ADDR.dns4[1] if v == 4 else ADDR.dns6[1]


def addresses(r: dns.message.Message, name: str, rdtype: str = "A") -> set[str]:
    rrset = r.get_rrset(r.answer, dns.name.from_text(name), dns.rdataclass.IN, dns.rdatatype.from_text(rdtype))
    return {rd.to_text() for rd in rrset} if rrset else set()


def ask(lab: Lab, server: str, name: str, rdtype: str = "A", **kw: object) -> dns.message.Message:
    """A plain query from the router namespace."""
    return query(lab.router, server, name, rdtype, **kw)  # type: ignore[arg-type]


# -- unbound ------------------------------------------------------------------------------

@SERVE_ONLY
@V4V6
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_unbound_plain(lab: Lab, peers: DnsPeers, v: int, tcp: bool) -> None:
    server = unbound_addr(v)
    r = ask(lab, server, "www.example.test", tcp=tcp)
    assert r.rcode() == dns.rcode.NOERROR
    assert addresses(r, "www.example.test.") == {ADDR.hosts4[0]}
    assert addresses(ask(lab, server, "www.example.test", "AAAA", tcp=tcp), "www.example.test.", "AAAA") == {
        ADDR.hosts6[0]}
    # The alias comes with its target, as from any authoritative server.
    r = ask(lab, server, "alias.example.test", tcp=tcp)
    assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert addresses(r, "www.example.test.") == {ADDR.hosts4[0]}
    r = ask(lab, server, "txt.example.test", "TXT", tcp=tcp)
    assert [rd.strings for rd in r.answer[0]] == [(b"hello",)]
    assert addresses(ask(lab, server, "dns.lab.test", "AAAA", tcp=tcp), "dns.lab.test.", "AAAA") == {ADDR.dns6[0]}
    assert addresses(ask(lab, server, "cn.lab.test", tcp=tcp), "cn.lab.test.") == {ADDR.hosts4[1]}


@SERVE_ONLY
@V4V6
def test_unbound_dot(lab: Lab, peers: DnsPeers, v: int) -> None:
    q = dns.message.make_query("api.example.test", "A")
    with netns(lab.router):
        r = dns.query.tls(q, unbound_addr(v), port=DOT_PORT, timeout=3, server_hostname=TLS_NAME,
                          ssl_context=peers.ca.client_context())
        assert addresses(r, "api.example.test.") == {ADDR.hosts4[1]}
        # The certificate really is checked: the system's CAs do not know the lab's.
        with pytest.raises(ssl.SSLCertVerificationError):
            dns.query.tls(q, unbound_addr(v), port=DOT_PORT, timeout=3, server_hostname=TLS_NAME,
                          ssl_context=ssl.create_default_context())


@SERVE_ONLY
@V4V6
@pytest.mark.parametrize("post", [True, False], ids=["post", "get"])
def test_unbound_doh(lab: Lab, peers: DnsPeers, v: int, post: bool) -> None:
    q = dns.message.make_query("www.example.test", "AAAA")
    # httpx2 deprecates a CA file path for `verify`; an SSLContext is what it wants
    # (httpcore sets the ALPN, h2, on it: unbound serves DoH over HTTP/2 only).
    with netns(lab.router):
        by_address = dns.query.https(q, unbound_addr(v), port=DOH_PORT, path=DOH_PATH, post=post, timeout=3,
                                     verify=peers.ca.client_context())
        by_name = dns.query.https(q, f"https://{TLS_NAME}{DOH_PATH}", bootstrap_address=unbound_addr(v), post=post,
                                  timeout=3, verify=peers.ca.client_context())
    for r in (by_address, by_name):
        assert addresses(r, "www.example.test.", "AAAA") == {ADDR.hosts6[0]}


@SERVE_ONLY
def test_unbound_truncates_big_answer_over_udp(lab: Lab, peers: DnsPeers) -> None:
    server = unbound_addr(4)
    r = ask(lab, server, "big.example.test", edns=False)
    assert r.flags & dns.flags.TC
    assert len(r.to_wire()) <= 512
    r = ask(lab, server, "big.example.test", edns=False, tcp=True)
    assert not r.flags & dns.flags.TC
    assert len(addresses(r, "big.example.test.")) == BIG_COUNT
    assert len(r.to_wire()) > 512
    # With EDNS (1232 bytes) UDP carries it whole.
    r = ask(lab, server, "big.example.test")
    assert not r.flags & dns.flags.TC and len(addresses(r, "big.example.test.")) == BIG_COUNT


@SERVE_ONLY
def test_unbound_negative_answers_carry_soa(lab: Lab, peers: DnsPeers) -> None:
    r = ask(lab, unbound_addr(4), "nothere.example.test")
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert [(rr.rdtype, rr.ttl) for rr in r.authority] == [(dns.rdatatype.SOA, NEG_TTL)]
    # NODATA: the name exists, the type does not.
    r = ask(lab, unbound_addr(4), "api.example.test", "AAAA")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer and r.authority


@SERVE_ONLY
def test_second_unbound_fails_clearly_and_leaves_nothing(lab: Lab, peers: DnsPeers) -> None:
    pattern = f"daetui-{lab.name}-unbound-*"
    before = set(Path(tempfile.gettempdir()).glob(pattern))
    with pytest.raises(DnsPeerError) as e, dns_peers(lab):
        pass
    # The log's tail says why: the addresses are taken by the running one.
    assert "already in use" in str(e.value)
    assert set(Path(tempfile.gettempdir()).glob(pattern)) == before
    assert addresses(ask(lab, unbound_addr(4), "www.example.test"), "www.example.test.") == {ADDR.hosts4[0]}


# -- both servers --------------------------------------------------------------------------

def servers(v: int) -> list[str]:
    return [unbound_addr(v), dnsmasq_addr(v)]


@V4V6
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_dnsmasq_answers(lab: Lab, peers: DnsPeers, v: int, tcp: bool) -> None:
    server = dnsmasq_addr(v)
    assert addresses(ask(lab, server, "www.example.test", tcp=tcp), "www.example.test.") == {ADDR.hosts4[0]}
    assert addresses(ask(lab, server, "www.example.test", "AAAA", tcp=tcp), "www.example.test.", "AAAA") == {
        ADDR.hosts6[0]}
    r = ask(lab, server, "alias.example.test", tcp=tcp)
    assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    r = ask(lab, server, "txt.example.test", "TXT", tcp=tcp)
    assert [rd.strings for rd in r.answer[0]] == [(b"hello",)]
    assert addresses(ask(lab, server, "cn.lab.test", tcp=tcp), "cn.lab.test.") == {ADDR.hosts4[1]}


def test_short_ttl(lab: Lab, peers: DnsPeers) -> None:
    r = ask(lab, unbound_addr(4), "short.example.test")
    assert [rr.ttl for rr in r.answer] == [3]
    r = ask(lab, dnsmasq_addr(4), "short.example.test")
    assert addresses(r, "short.example.test.") == {ADDR.hosts4[2]}
    if peers.dnsmasq.forward_to is None:
        assert [rr.ttl for rr in r.answer] == [3]
    else:
        # From its cache the TTL counts down, never up.
        assert 0 <= r.answer[0].ttl <= 3


@V4V6
def test_unknown_names_are_nxdomain_at_once(lab: Lab, peers: DnsPeers, v: int) -> None:
    # In a lab zone, and outside every lab zone: neither server may look further.
    for server in servers(v):
        for name in ("nothere.example.test", "www.example.com", "nothere.lab.test"):
            t0 = time.monotonic()
            r = ask(lab, server, name, timeout=1.0)
            assert r.rcode() == dns.rcode.NXDOMAIN, (server, name, dns.rcode.to_text(r.rcode()))
            assert time.monotonic() - t0 < 1.0


def test_big_answer_truncated_over_udp_whole_over_tcp(lab: Lab, peers: DnsPeers) -> None:
    for server in servers(4):
        r = ask(lab, server, "big.example.test", edns=False)
        assert r.flags & dns.flags.TC, server
        r = ask(lab, server, "big.example.test", edns=False, tcp=True)
        assert not r.flags & dns.flags.TC
        assert addresses(r, "big.example.test.") == {f"203.0.113.{100 + i}" for i in range(BIG_COUNT)}, server


def _chaos_counter(lab: Lab, name: str) -> int:
    q = dns.message.make_query(name, "TXT", "CH")
    with netns(lab.router):
        r = dns.query.udp(q, dnsmasq_addr(4), timeout=2)
    return int(r.answer[0][0].strings[0])


@pytest.mark.parametrize("peers", ["forward"], indirect=True)
def test_dnsmasq_forwarding_caches(lab: Lab, peers: DnsPeers) -> None:
    # No records of its own: every answer below came through unbound.
    assert peers.dnsmasq.forward_to == ADDR.dns4[0] and peers.dnsmasq.records == ()
    assert _chaos_counter(lab, "cachesize.bind") == peers.dnsmasq.cache_size
    misses = _chaos_counter(lab, "misses.bind")
    for _ in range(3):
        assert addresses(ask(lab, dnsmasq_addr(4), "api.example.test"), "api.example.test.") == {ADDR.hosts4[1]}
    # One miss went to unbound; the two after it came from dnsmasq's cache.
    assert _chaos_counter(lab, "misses.bind") == misses + 1


@SERVE_ONLY
def test_dnsmasq_stops_by_pid(lab: Lab, peers: DnsPeers) -> None:
    """A peer of its own on another port: answers, then is gone with its directory."""
    own = Dnsmasq(lab, (Record("only.example.test", "A", "203.0.113.77", ttl=7),), port=5353)
    own.start()
    try:
        pid, directory = own.pid, own.directory
        assert pid is not None and directory is not None and directory.is_dir()
        assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"/usr/sbin/dnsmasq\0")
        r = ask(lab, dnsmasq_addr(4), "only.example.test", port=5353)
        assert [(rr.ttl, rr[0].address) for rr in r.answer] == [(7, "203.0.113.77")]
    finally:
        own.stop()
    assert own.pid is None and not Path(f"/proc/{pid}").exists() and not directory.exists()
    with pytest.raises((dns.exception.Timeout, ConnectionRefusedError)):
        ask(lab, dnsmasq_addr(4), "only.example.test", port=5353, tcp=True, timeout=0.5)
    # The lab's own dnsmasq on port 53 was not touched.
    assert peers.dnsmasq.pid is not None
    assert addresses(ask(lab, dnsmasq_addr(4), "api.example.test"), "api.example.test.") == {ADDR.hosts4[1]}
