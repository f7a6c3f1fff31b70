"""DNS over QUIC and over HTTP/3 upstreams on loopback, against the aioquic-built server of testkit.

The server (testkit.peers.quic_dns) is checked first with dnspython's own DoQ
and DoH3 clients, so what daetui's client is then tested against is a server
that another implementation agrees with. Then daetui's upstream: answers over
IPv4 and IPv6, one connection kept for many queries, queries in flight on a
connection bounded, a connection the server closed opened anew, malformed
answers counted and dropped, a server that is down or silent, a certificate
of another CA or another name refused, SO_MARK on the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import dns.asyncquery
import dns.message
import dns.rdatatype
import pytest

from daetui.config.dns_upstream import parse_upstream
from daetui.dns.controller import question_bytes
from daetui.dns.quic import MAX_STREAMS
from daetui.dns.upstream import MalformedAnswer, Upstream, UpstreamError, UpstreamRoute
from daetui.lab.dnspeers import LabCA
from testkit.peers.quic_dns import QuicDnsServer

NAME = "dns.lab.test"
RECORDS = [("www.example.test", "A", "192.0.2.1", 300), ("www.example.test", "AAAA", "2001:db8::1", 300)]
HOSTS = {4: "127.0.0.1", 6: "::1"}


def _direct(ip: str, port: int, proto: str) -> UpstreamRoute:
    return UpstreamRoute("direct", "fallback")


def free_udp_port(host: str = "127.0.0.1") -> int:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


@pytest.fixture(scope="module")
def ca() -> Iterator[LabCA]:
    with LabCA(NAME, addresses=("127.0.0.1", "::1")) as c:
        yield c


@contextlib.asynccontextmanager
async def server(ca: LabCA, **kw: object) -> AsyncIterator[QuicDnsServer]:
    kw.setdefault("records", RECORDS)
    s = QuicDnsServer(str(ca.cert_file), str(ca.key_file), ["127.0.0.1", "::1"], doq_port=free_udp_port(),
                      h3_port=free_udp_port(), **kw)  # type: ignore[arg-type]
    async with s:
        yield s


def url(s: QuicDnsServer, scheme: str, v: int = 4) -> str:
    host = "127.0.0.1" if v == 4 else "[::1]"
    return f"quic://{host}:{s.doq_port}" if scheme == "quic" else f"h3://{host}:{s.h3_port}/dns-query"


def upstream(u: str, ca: LabCA | str, timeout: float = 2.0, **kw: object) -> Upstream:
    ca_file = ca if isinstance(ca, str) else str(ca.ca_file)
    return Upstream(parse_upstream("q", u), _direct, ca_file=ca_file, timeout=timeout, **kw)  # type: ignore[arg-type]


def a_of(wire: bytes) -> list[str]:
    return [rd.to_text() for rr in dns.message.from_wire(wire).answer for rd in rr]


Q_A = question_bytes("www.example.test", dns.rdatatype.A)
Q_AAAA = question_bytes("www.example.test", dns.rdatatype.AAAA)
SCHEMES = pytest.mark.parametrize("scheme", ["quic", "h3"])


# -- the URLs -------------------------------------------------------------------------------------

def test_urls_take_dae_s_schemes_ports_and_paths():
    q = parse_upstream("a", "quic://dns.example")
    assert (q.scheme, q.port) == ("quic", 853)
    h = parse_upstream("b", "h3://dns.example")
    assert (h.scheme, h.port, h.path) == ("h3", 443, "/dns-query")
    h = parse_upstream("c", "http3://[2001:db8::1]:8443/resolve")  # dae's alias
    assert (h.scheme, h.host, h.port, h.path) == ("h3", "2001:db8::1", 8443, "/resolve")
    with pytest.raises(ValueError, match="takes no path"):
        parse_upstream("d", "quic://dns.example/dns-query")
    with pytest.raises(ValueError, match="write quic://"):
        parse_upstream("e", "doq://dns.example")


# -- the test server, as another client sees it ----------------------------------------------------

async def test_the_server_answers_dnspython_s_own_doq_and_doh3_clients(ca: LabCA):
    async with server(ca) as s:
        q = dns.message.make_query("www.example.test", "A")
        r = await dns.asyncquery.quic(q, "127.0.0.1", port=s.doq_port, verify=str(ca.ca_file),
                                      server_hostname=NAME, timeout=5)
        assert [rd.to_text() for rr in r.answer for rd in rr] == ["192.0.2.1"]
        q = dns.message.make_query("www.example.test", "AAAA")
        r = await dns.asyncquery.https(q, "::1", port=s.h3_port, path="/dns-query", verify=str(ca.ca_file),
                                       http_version=dns.asyncquery.HTTPVersion.H3, timeout=5)
        assert [rd.to_text() for rr in r.answer for rd in rr] == ["2001:db8::1"]
        assert s.figures.queries == 2


# -- answers, and the connection kept ----------------------------------------------------------

@SCHEMES
@pytest.mark.parametrize("v", [4, 6])
async def test_answers_over_one_kept_connection(ca: LabCA, scheme: str, v: int):
    async with server(ca) as s:
        up = upstream(url(s, scheme, v), ca)
        try:
            for _ in range(3):
                assert a_of(await up.query(Q_A)) == ["192.0.2.1"]
            assert a_of(await up.query(Q_AAAA)) == ["2001:db8::1"]
            assert (up.stats.queries, up.stats.errors, up.stats.malformed) == (4, 0, 0)
            assert s.figures.handshakes == 1 and s.figures.queries == 4
        finally:
            await up.close()


@SCHEMES
async def test_concurrent_queries_share_one_handshake_and_are_bounded(ca: LabCA, scheme: str):
    # The server takes its time over each answer, so queries pile up on the connection.
    async with server(ca) as s:
        s.answer_delay = 0.05
        up = upstream(url(s, scheme), ca, timeout=10.0)
        try:
            got = await asyncio.gather(*(up.query(Q_A) for _ in range(3 * MAX_STREAMS)))
            assert all(a_of(w) == ["192.0.2.1"] for w in got)
            assert s.figures.handshakes == 1
            assert s.figures.queries == 3 * MAX_STREAMS
            assert 1 < s.figures.peak <= MAX_STREAMS
        finally:
            await up.close()


@SCHEMES
async def test_a_connection_the_server_let_go_idle_is_opened_anew(ca: LabCA, scheme: str):
    async with server(ca, idle_timeout=0.3) as s:
        up = upstream(url(s, scheme), ca)
        try:
            assert a_of(await up.query(Q_A)) == ["192.0.2.1"]
            await asyncio.sleep(1.2)  # past both sides' idle timeout (the smaller one, the server's, holds)
            assert a_of(await up.query(Q_A)) == ["192.0.2.1"]
            assert s.figures.handshakes == 2 and up.stats.errors == 0
        finally:
            await up.close()


async def test_the_socket_carries_daetui_s_mark(ca: LabCA):
    async with server(ca) as s:
        up = upstream(url(s, "quic"), ca, mark=0x4000000)
        try:
            await up.query(Q_A)
            sock = up._quic._client._transport.get_extra_info("socket")  # type: ignore[union-attr]
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0x4000000
        finally:
            await up.close()


# -- what goes wrong ---------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme, misbehave, says", [
    ("quic", "length", "length prefix says"),
    ("h3", "type", "content-type 'text/plain'"),
])
async def test_a_malformed_answer_is_counted_and_dropped(ca: LabCA, scheme: str, misbehave: str, says: str):
    async with server(ca, misbehave=misbehave) as s:
        up = upstream(url(s, scheme), ca)
        try:
            for _ in range(2):
                with pytest.raises(MalformedAnswer, match=says):
                    await up.query(Q_A)
            assert (up.stats.errors, up.stats.malformed) == (2, 2)
            assert s.figures.handshakes == 1  # the connection stays for the queries to come
        finally:
            await up.close()


@SCHEMES
async def test_an_answer_that_is_no_dns_message_is_not_the_answer(ca: LabCA, scheme: str):
    async with server(ca, misbehave="garbage") as s:
        up = upstream(url(s, scheme), ca)
        try:
            with pytest.raises(UpstreamError, match="wrong ID or question"):
                await up.query(Q_A)
            assert (up.stats.errors, up.stats.mismatched) == (1, 1)
        finally:
            await up.close()


async def test_an_http_error_says_its_status(ca: LabCA):
    async with server(ca, misbehave="status") as s:
        up = upstream(url(s, "h3"), ca)
        try:
            with pytest.raises(UpstreamError, match="HTTP 500"):
                await up.query(Q_A)
            assert up.stats.malformed == 0
        finally:
            await up.close()


@SCHEMES
@pytest.mark.parametrize("v", [4, 6])
async def test_a_server_that_is_down_is_an_error_before_the_timeout(ca: LabCA, scheme: str, v: int):
    port = free_udp_port(HOSTS[v])  # nobody listens: the kernel answers "port unreachable"
    host = HOSTS[v] if v == 4 else f"[{HOSTS[v]}]"
    up = upstream(f"{scheme}://{host}:{port}", ca, timeout=30.0)
    try:
        with pytest.raises(UpstreamError, match="refused") as e:
            await up.query(Q_A)
        assert str(e.value).startswith("q: ")
        assert (up.stats.errors, up.stats.timeouts) == (1, 0)  # the refusal, not the 30 s timeout
    finally:
        await up.close()


@SCHEMES
async def test_a_silent_server_is_a_timeout(ca: LabCA, scheme: str):
    async with server(ca, misbehave="silent") as s:
        up = upstream(url(s, scheme), ca, timeout=0.5)
        try:
            with pytest.raises(UpstreamError, match=r"no answer in 0\.5s"):
                await up.query(Q_A)
            assert up.stats.timeouts == 1
        finally:
            await up.close()


@SCHEMES
async def test_a_certificate_of_another_ca_is_refused(ca: LabCA, scheme: str):
    with LabCA(NAME, addresses=("127.0.0.1", "::1")) as other:
        async with server(ca) as s:
            up = upstream(url(s, scheme), other)
            try:
                with pytest.raises(UpstreamError, match="certificate") as e:
                    await up.query(Q_A)
                assert up.stats.timeouts == 0, e.value
                assert s.figures.queries == 0
            finally:
                await up.close()


@SCHEMES
async def test_a_certificate_for_another_name_is_refused(ca: LabCA, scheme: str):
    async def bootstrap(host: str) -> str:
        return "127.0.0.1"

    async with server(ca) as s:
        port = s.doq_port if scheme == "quic" else s.h3_port
        up = Upstream(parse_upstream("q", f"{scheme}://wrong.lab.test:{port}"), _direct, ca_file=str(ca.ca_file),
                      bootstrap=bootstrap, timeout=2.0)
        try:
            with pytest.raises(UpstreamError, match=r"wrong\.lab\.test"):
                await up.query(Q_A)
            assert s.figures.queries == 0
        finally:
            await up.close()


@SCHEMES
def test_answers_under_uvloop_too(ca: LabCA, scheme: str):
    # daetui's own loops are uvloop's, whose UDP transport refuses an address on a connected socket.
    uvloop = pytest.importorskip("uvloop")

    async def run() -> list[str]:
        async with server(ca) as s:
            up = upstream(url(s, scheme, 6), ca)
            try:
                return a_of(await up.query(Q_A)) + a_of(await up.query(Q_AAAA))
            finally:
                await up.close()

    assert uvloop.run(run()) == ["192.0.2.1", "2001:db8::1"]
