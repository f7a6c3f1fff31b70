"""AnyTLS (anytls://) against a real server: mihomo's anytls listener (testkit/peers/mihomo.py).

Every node is made from its share link, dialed from the router namespace
through a DirectDialer to mihomo on ADDR.hosts4[1] / hosts6[1], which reaches
the wan's echo, source and UDP echo servers on hosts4[0] / hosts6[0]. The
certificate comes from a throwaway LabCA. One mihomo serves the whole module.

What mihomo checks by itself: the password (a wrong one: it closes the
connection), that cmdSettings comes before the first SYN (else cmdAlert),
the padding scheme's md5 (a different one: cmdUpdatePaddingScheme), and the
UoT v2 request and packets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from helpers import in_router

from daetui.lab.servers import pattern_bytes
from daetui.lab.topology import ADDR, ECHO_PORT, Lab
from daetui.net.stream import DialError
from daetui.outbound import _anytls_wire as wire
from daetui.outbound import anytls, links, trojan
from daetui.outbound.direct import DirectDialer
from testkit.peers.mihomo import TlsMihomo, tls, tls_mihomo
from testkit.peers.trojan import TrojanGfw
from testkit.proxycheck import download, echo, udp_round

pytestmark = pytest.mark.kernel

SERVER = {4: ADDR.hosts4[1], 6: ADDR.hosts6[1]}
DEST = {4: ADDR.hosts4[0], 6: ADDR.hosts6[0]}
TLS_NAME = "anytls.lab.test"
PASSWORD = "lab anytls password: with / and @"
PORT = 10701   # 10700-10709 are this module's
PORT_PADDING = 10702  # a listener with a padding scheme of its own
PORT_TROJAN = 10703   # trojan-gfw, for chains
PADDING = "stop=3\n0=10-20\n1=300-600,c,200-200\n2=50-900"
MB = 1 << 20
ECHO = 256 << 10
V4V6 = pytest.mark.parametrize("v", [4, 6])


Peers = TlsMihomo


@pytest.fixture(scope="module")
def peers(lab: Lab) -> Iterator[Peers]:
    """mihomo with two anytls listeners (on both of its addresses): the default padding scheme, and one of its own."""
    with tls_mihomo(lab, TLS_NAME, lambda ca: [
        {"name": "anytls", "type": "anytls", "port": PORT, "users": {"lab": PASSWORD}, **tls(ca)},
        {"name": "padded", "type": "anytls", "port": PORT_PADDING, "users": {"lab": PASSWORD},
         "padding-scheme": PADDING, **tls(ca)},
    ]) as p:
        yield p


def link_of(v: int, *, password: str = PASSWORD, extra: str = "") -> str:
    """The share link a provider would hand out, for the server's IPv`v` address."""
    addr = f"[{SERVER[v]}]" if v == 6 else SERVER[v]
    return f"anytls://{quote(password, safe='')}@{addr}:{PORT}/?sni={TLS_NAME}{extra}#anytls-{v}"


def dialer_of(p: Peers, link: str, **kw: int) -> anytls.AnyTlsDialer:
    """The link's node (through links.parse_link, as a config would have it) and its dialer."""
    node = links.parse_link(link)
    assert isinstance(node, anytls.AnyTlsNode) and anytls.parse_link(node.link()) == node
    return node.dialer(DirectDialer(mark=0, connect_timeout=3), ca_file=p.ca.ca_file, handshake_timeout=5, **kw)


@V4V6
def test_tcp_and_udp(peers: Peers, v: int) -> None:
    """Over the server's IPv`v` address: 1 MB downloaded and 256 KB echoed intact from both families'
    destinations, one after the other on one session (reused); then datagrams of 1, 700 and 1400
    bytes to both echoes over UDP-over-TCP, on that session too."""
    payload = pattern_bytes(ECHO)[::-1]

    async def run() -> None:
        d = dialer_of(peers, link_of(v))
        try:
            for dest in (DEST[4], DEST[6]):
                assert await download(d, dest, MB) == pattern_bytes(MB)
                assert await echo(d, dest, payload) == payload
            u = await d.datagrams()
            try:
                await udp_round(u, [DEST[4], DEST[6]], (1, 700, 1400))
            finally:
                u.close()
            assert d.pool.seq == 1, "every stream rode the first session"
            session = d.pool.sessions[0]
            assert session.peer_version == 2 and session.next_sid == 6
            assert session.padding_updates == 0, "the server found our default scheme's md5 its own"
        finally:
            d.close()

    in_router(peers.lab, run())


def test_streams_at_once(peers: Peers) -> None:
    """Several streams at once: on one session when the dialer allows it (max_streams), on a session each
    by default (as anytls-go's client does), and the idle ones are reused newest first after."""
    payload = pattern_bytes(100_000)

    async def run() -> None:
        shared = dialer_of(peers, link_of(4), max_streams=4)
        single = dialer_of(peers, link_of(6))
        try:
            for d, sessions in ((shared, 1), (single, 3)):
                got = await asyncio.gather(download(d, DEST[6], MB), echo(d, DEST[4], payload),
                                           echo(d, DEST[6], payload[::-1]))
                assert got == [pattern_bytes(MB), payload, payload[::-1]]
                assert d.pool.seq == sessions
            assert await echo(single, DEST[4], b"again") == b"again"
            assert single.pool.seq == 3 and single.pool.sessions[-1].next_sid == 3, "the newest idle one"
        finally:
            shared.close()
            single.close()

    in_router(peers.lab, run())


def test_idle_sessions_closed(peers: Peers) -> None:
    """An idle session is closed after idleSessionTimeout; the next dial opens a new one."""
    async def run() -> None:
        d = dialer_of(peers, link_of(4, extra="&idleSessionTimeout=0.3"))
        try:
            assert await echo(d, DEST[4], b"one") == b"one"
            session = d.pool.sessions[0]
            await asyncio.sleep(0.6)
            assert session.error is not None and not d.pool.sessions
            assert await echo(d, DEST[4], b"two") == b"two"
            assert d.pool.seq == 2
        finally:
            d.close()

    in_router(peers.lab, run())


def test_chains_with_trojan(peers: Peers) -> None:
    """anytls at each end of a chain with trojan-gfw (mihomo cannot be both hops: it refuses what comes
    from its own outbound as a loop): trojan's TLS inside an anytls stream; anytls's session inside a
    trojan stream, TCP and UDP through it."""
    async def run() -> None:
        first = dialer_of(peers, link_of(4))
        tj = trojan.parse_link(f"trojan://{quote(PASSWORD, safe='')}@{DEST[4]}:{PORT_TROJAN}?sni={TLS_NAME}")
        over_anytls = tj.dialer(first, ca_file=peers.ca.ca_file)
        second = links.parse_link(link_of(6)).dialer(tj.dialer(DirectDialer(mark=0, connect_timeout=3),
                                                                ca_file=peers.ca.ca_file),
                                                      ca_file=peers.ca.ca_file, handshake_timeout=5)
        try:
            assert await download(over_anytls, DEST[6], 200_000) == pattern_bytes(200_000)
            assert await download(second, DEST[4], 200_000) == pattern_bytes(200_000)
            u = await second.datagrams()
            try:
                await udp_round(u, [DEST[4], DEST[6]], (700,))
            finally:
                u.close()
        finally:
            second.close()
            first.close()

    with TrojanGfw(peers.lab, peers.ca, [PASSWORD], address=DEST[4], port=PORT_TROJAN):
        in_router(peers.lab, run())


def test_wrong_password(peers: Peers) -> None:
    """mihomo closes the connection on a wrong password: a DialError that says so."""
    d = dialer_of(peers, link_of(4, password="not the password"))

    async def run() -> None:
        try:
            t0 = time.monotonic()
            with pytest.raises(DialError, match="wrong password"):
                await d.connect(DEST[4], ECHO_PORT)
            assert time.monotonic() - t0 < 3, "told at once, not by a timeout"
        finally:
            d.close()

    in_router(peers.lab, run())


def test_server_padding_scheme(peers: Peers) -> None:
    """A server with a padding scheme of its own sends it after our cmdSettings (its md5 is not the default's);
    the dialer's next session is shaped by it and says so with its md5, which the server finds its own."""
    async def run() -> None:
        d = dialer_of(peers, link_of(6).replace(f":{PORT}/", f":{PORT_PADDING}/"))
        try:
            assert await echo(d, DEST[6], b"first") == b"first"
            first = d.pool.sessions[0]
            assert first.padding_updates == 1 and first.scheme.raw == wire.DEFAULT_PADDING
            assert d.pool.padding.scheme.raw == PADDING.encode()
            first.close()
            assert await echo(d, DEST[4], b"second") == b"second"
            second = d.pool.sessions[0]
            assert second.scheme.raw == PADDING.encode() and second.peer_version == 2
            assert second.padding_updates == 0, "the server took our md5 as its own"
        finally:
            d.close()

    in_router(peers.lab, run())
