"""TUIC v5 (tuic://) against a real server: mihomo's tuic listener (testkit/peers/mihomo.py).

Every node is made from its share link, dialed from the router namespace
through a DirectDialer to mihomo on ADDR.hosts4[1] / hosts6[1], which
reaches the wan's echo, source and UDP echo servers on hosts4[0] / hosts6[0].
The certificate comes from a throwaway LabCA. One mihomo serves the whole
module (its listener takes UDP relaying in both modes: it answers in the
mode each association's first packet came in).

That mihomo accepts our Authenticate command at all checks the token (the
TLS exporter aioquic lacks, _tuic_wire.exporter): with a wrong one it closes the
connection ("AuthenticationFailed"), as test_wrong_password shows.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from helpers import in_router, read_to_end

from daetui.lab.servers import pattern_bytes
from daetui.lab.topology import ADDR, ECHO_PORT, Lab
from daetui.net.netns import netns
from daetui.net.stream import Datagrams, DialError
from daetui.outbound import links, tuic
from daetui.outbound.direct import DirectDialer
from testkit.peers.mihomo import TlsMihomo, tls, tls_mihomo
from testkit.proxycheck import download, echo, udp_round

pytestmark = pytest.mark.kernel

SERVER = {4: ADDR.hosts4[1], 6: ADDR.hosts6[1]}
DEST = {4: ADDR.hosts4[0], 6: ADDR.hosts6[0]}
TLS_NAME = "tuic.lab.test"
UID = str(uuid.uuid4())
PASSWORD = "lab tuic password"
PORT = 10461   # 10460-10469 are this module's
P_IDLE = 10462  # a listener that ends a connection idle for 3 s
MB = 1 << 20
ECHO = 256 << 10
V4V6 = pytest.mark.parametrize("v", [4, 6])


Peers = TlsMihomo


@pytest.fixture(scope="module")
def peers(lab: Lab) -> Iterator[Peers]:
    """mihomo with two tuic listeners (each on both of its addresses), the second with a short idle timeout."""
    with tls_mihomo(lab, TLS_NAME, lambda ca: [
        {"name": "tuic", "type": "tuic", "port": PORT, "users": {UID: PASSWORD}, "alpn": ["h3"],
         "congestion-controller": "bbr", **tls(ca)},
        {"name": "tuic-idle", "type": "tuic", "port": P_IDLE, "users": {UID: PASSWORD}, "alpn": ["h3"],
         "max-idle-time": 3000, **tls(ca)},
    ]) as p:
        yield p


def link_of(v: int, *, mode: str = "native", password: str = PASSWORD) -> str:
    """The share link a provider would hand out, for the server's IPv`v` address."""
    addr = f"[{SERVER[v]}]" if v == 6 else SERVER[v]
    return (f"tuic://{UID}:{quote(password, safe='')}@{addr}:{PORT}?sni={TLS_NAME}&alpn=h3"
            f"&congestion_control=bbr&udp_relay_mode={mode}#tuic-{v}")


def dialer_of(p: Peers, link: str) -> tuic.TuicDialer:
    """The link's node (through links.parse_link, as a config would have it) and its dialer."""
    node = links.parse_link(link)
    assert isinstance(node, tuic.TuicNode) and tuic.parse_link(node.link()) == node
    return node.dialer(DirectDialer(mark=0, connect_timeout=3), ca_file=p.ca.ca_file, handshake_timeout=5)


class _Amplifier(asyncio.DatagramProtocol):
    """Answers a datagram saying N with N bytes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(b"a" * int(data), addr)  # type: ignore[attr-defined]


async def amplified(lab: Lab, u: Datagrams, host: str, n: int) -> bytes:
    """What a UDP server on the wan's `host` answers to a datagram asking for n bytes, through `u`."""
    with netns(lab.wan):
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(_Amplifier, sock=sock)
    try:
        await u.send(str(n).encode(), host, sock.getsockname()[1])
        data, sender, port = await asyncio.wait_for(u.recv(), 5)
        assert (sender, port) == (host, sock.getsockname()[1])
        return data
    finally:
        transport.close()


@V4V6
def test_tcp_and_udp(peers: Peers, v: int) -> None:
    """Over the server's IPv`v` address, on one QUIC connection: 1 MB downloaded and 256 KB echoed (two
    streams at once) to both families' destinations, then datagrams of 1, 700 and 1400 bytes to both
    echoes as QUIC datagrams (relay mode native); then the same on QUIC streams (relay mode quic)."""
    payload = pattern_bytes(ECHO)[::-1]

    async def run() -> None:
        d = dialer_of(peers, link_of(v))
        try:
            for dest in (DEST[4], DEST[6]):
                got, echoed = await asyncio.gather(download(d, dest, MB), echo(d, dest, payload))
                assert got == pattern_bytes(MB)
                assert echoed == payload
            u = await d.datagrams()
            try:
                await udp_round(u, [DEST[4], DEST[6]], (1, 700, 1400))
                # A short request with a long answer: mihomo sends it in fragments (no QUIC datagram
                # holds 3000 bytes), put back together here.
                before = u.reassembly.reassembled
                assert await amplified(peers.lab, u, DEST[v], 3000) == b"a" * 3000
                assert u.reassembly.reassembled == before + 1
            finally:
                u.close()
            assert d.handshakes == 1, "every stream and association rides the one connection"
        finally:
            d.close()
        d = dialer_of(peers, link_of(v, mode="quic"))
        try:
            u = await d.datagrams()
            try:
                await udp_round(u, [DEST[4], DEST[6]], (1, 700, 1400))
            finally:
                u.close()
        finally:
            d.close()

    in_router(peers.lab, run())


def test_half_close(peers: Peers) -> None:
    """Our end (the stream's FIN) reaches the destination, which still answers: the echo ends after it."""
    d = dialer_of(peers, link_of(6))
    payload = pattern_bytes(100_000)

    async def run() -> bytes:
        s = await d.connect(DEST[4], ECHO_PORT)
        try:
            await s.write(payload)
            await s.write_eof()
            return await read_to_end(s)
        finally:
            s.close()
            d.close()

    assert in_router(peers.lab, run()) == payload


def test_heartbeat_keeps_an_idle_stream(peers: Peers) -> None:
    """A server that ends connections idle for 3 s: a stream silent for 4 s still works, kept alive by
    the heartbeats (every second: a third of that timeout), which mihomo takes without complaint."""
    d = dialer_of(peers, link_of(4).replace(f":{PORT}?", f":{P_IDLE}?"))

    async def run() -> bytes:
        s = await d.connect(DEST[4], ECHO_PORT)
        try:
            await s.write(b"before")
            first = await s.read(100)
            assert d.connection is not None and d.connection._quic._remote_max_idle_timeout == 3.0
            await asyncio.sleep(4)
            await s.write(b"after")
            return first + await asyncio.wait_for(s.read(100), 3)
        finally:
            s.close()
            d.close()

    assert in_router(peers.lab, run()) == b"beforeafter"
    assert d.handshakes == 1


def test_reconnect(peers: Peers) -> None:
    """A connection that ended (here: closed under the dialer) is replaced on the next dial; the stream
    that was on it fails with a DialError."""
    d = dialer_of(peers, link_of(4))

    async def run() -> None:
        try:
            s = await d.connect(DEST[4], ECHO_PORT)
            assert d.connection is not None
            d.connection.abort()
            with pytest.raises(DialError, match="connection closed"):
                await s.read(10)
            s.close()
            assert await download(d, DEST[6], 100_000) == pattern_bytes(100_000)
            assert d.handshakes == 2
        finally:
            d.close()

    in_router(peers.lab, run())


def test_wrong_password(peers: Peers) -> None:
    """A wrong password: the server closes the connection, and the stream's DialError says why."""
    d = dialer_of(peers, link_of(4, password="not the password"))

    async def run() -> str:
        try:
            s = await d.connect(DEST[4], ECHO_PORT)
            await s.write(b"ping")
            data = await asyncio.wait_for(s.read(100), 5)
            return f"data {data!r}"
        except DialError as e:
            return f"DialError {e}"
        finally:
            d.close()

    got = in_router(peers.lab, run())
    assert got.startswith("DialError") and "authentication rejected" in got, got


def test_handshake_failures(peers: Peers) -> None:
    """No server on the port (ICMP port unreachable): a DialError at once; a server that never answers:
    the handshake timeout; a certificate for another name: the TLS check fails the handshake."""
    async def outcome(link: str, timeout: float = 5) -> str:
        node = tuic.parse_link(link)
        d = node.dialer(DirectDialer(mark=0, connect_timeout=3), ca_file=peers.ca.ca_file,
                        handshake_timeout=timeout)
        try:
            await d.connect(DEST[4], ECHO_PORT)
            return "connected"
        except DialError as e:
            return str(e)
        finally:
            d.close()

    async def run() -> list[str]:
        loop = asyncio.get_running_loop()
        closed = await outcome(link_of(4).replace(f":{PORT}?", ":10469?"))
        # A UDP socket of the wan that takes the handshake's datagrams and says nothing.
        with netns(peers.lab.wan):
            silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind((DEST[4], 0))
        try:
            started = loop.time()
            mute = await outcome(link_of(4).replace(f"{SERVER[4]}:{PORT}", f"{DEST[4]}:{silent.getsockname()[1]}"), 1)
            assert loop.time() - started < 2
        finally:
            silent.close()
        wrong_name = await outcome(link_of(4).replace(f"sni={TLS_NAME}", "sni=other.lab.test"))
        return [closed, mute, wrong_name]

    closed, mute, wrong_name = in_router(peers.lab, run())
    assert "tuic-4 (203.0.113.11:10469)" in closed and "refused" in closed.lower(), closed
    assert "QUIC handshake timeout" in mute, mute
    assert "other.lab.test" in wrong_name, wrong_name
