"""SOCKS5 and HTTP(S) CONNECT dialers against real servers: danted, tinyproxy, v2ray's HTTPS proxy.

Every dial is made from the router namespace, where daetui runs: the
dialer's sockets cross the router's wan0 to the proxies on the "internet"
side, and the proxies reach the lab's servers (HTTP, echo, source, UDP echo).
Bad proxies -- garbage, an early close, silence -- are small Python servers
whose sockets live in the wan namespace, served from the test's own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from helpers import OpaqueDialer, OpaqueStream, in_router, read_to_end, wan_listener, wan_udp

from daetui.lab.servers import pattern_bytes
from daetui.lab.topology import ADDR, ECHO_PORT, SOURCE_PORT, Lab
from daetui.lab.topology import HTTP_PORT as WEB_PORT
from daetui.net.stream import DialError, SocketStream, Stream
from daetui.outbound.direct import DirectDialer
from daetui.outbound.http_proxy import PrefixedStream, TlsStream
from daetui.outbound.links import parse_link
from daetui.outbound.socks5 import decode_udp, encode_udp
from testkit.peers.socks_http import (
    BLOCKED,
    HTTP_PORT,
    HTTPS_PORT,
    LAB_NAME,
    PASSWORD,
    PROXY4,
    PROXY6,
    SOCKS_AUTH_PORT,
    SOCKS_PORT,
    TLS_NAME,
    USER,
    ProxyPeers,
    proxy_peers,
)

pytestmark = [pytest.mark.kernel, pytest.mark.peer]

V4V6 = pytest.mark.parametrize("v", [4, 6])
KINDS = ["socks5", "socks5-auth", "http", "https"]
MB = 1 << 20
FAST = 1.0  # handshake timeout for the bad proxies: a stall must end in about this long


@pytest.fixture(scope="module")
def peers(lab: Lab) -> Iterator[ProxyPeers]:
    with proxy_peers(lab) as p:
        yield p


def proxy(v: int) -> str:
    return PROXY4 if v == 4 else f"[{PROXY6}]"


def web(v: int) -> str:
    return ADDR.hosts4[0] if v == 4 else ADDR.hosts6[0]


def link(kind: str, v: int, password: str = PASSWORD, user: str = USER) -> str:
    creds = f"{user}:{password}@" if user else ""
    if kind == "socks5":
        return f"socks5://{proxy(v)}:{SOCKS_PORT}"
    if kind == "socks5-auth":
        return f"socks5://{creds}{proxy(v)}:{SOCKS_AUTH_PORT}"
    if kind == "http":
        return f"http://{creds}{proxy(v)}:{HTTP_PORT}"
    # Over IPv4 the certificate is checked for its name (SNI), over IPv6 for its address.
    return f"https://{creds}{proxy(v)}:{HTTPS_PORT}" + ("?sni=" + TLS_NAME if v == 4 else "")


def dialer(peers: ProxyPeers, text: str, via: Any = None, **kw: Any) -> Any:
    node = parse_link(text)
    if node.protocol == "https":
        kw.setdefault("ssl_context", peers.ca.client_context())
    return node.dialer(via or DirectDialer(0), **kw)


async def http_get(stream: Stream, path: str) -> tuple[bytes, bytes]:
    """(status line, body) of one HTTP/1.0 GET over the stream."""
    await stream.write(f"GET {path} HTTP/1.0\r\nHost: lab\r\n\r\n".encode())
    answer = await read_to_end(stream)
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0], body




# -- real servers: TCP ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@V4V6
def test_http_get_through_the_proxy(lab: Lab, peers: ProxyPeers, kind: str, v: int) -> None:
    """The wan's web server answers, and saw the proxy's side of the network, not the router."""
    async def go() -> tuple[bytes, bytes, Stream]:
        stream = await dialer(peers, link(kind, v)).connect(web(v), WEB_PORT)
        try:
            return (*await http_get(stream, "/whoami"), stream)
        finally:
            stream.close()

    status, body, stream = in_router(lab, go())
    assert status == b"HTTP/1.1 200 OK"
    seen = body.decode().strip()
    assert seen not in (ADDR.router_wan4, ADDR.router_wan6)
    assert seen in (*ADDR.hosts4, *ADDR.hosts6)
    if kind.startswith("socks5"):
        assert seen == (PROXY4 if v == 4 else PROXY6)  # danted's `external` address
    # Plain proxies hand back the socket itself (the relay splices it); TLS to the proxy cannot.
    if kind == "https":
        assert stream.raw is None
    else:
        assert isinstance(stream, SocketStream)


@pytest.mark.parametrize("kind", KINDS)
@V4V6
def test_one_megabyte_each_way(lab: Lab, peers: ProxyPeers, kind: str, v: int) -> None:
    """1 MB of random bytes to the echo server comes back intact; 1 MB from the source server arrives intact."""
    data = os.urandom(MB)

    async def go() -> tuple[bytes, bytes]:
        d = dialer(peers, link(kind, v))
        echo = await d.connect(web(v), ECHO_PORT)
        try:
            send = asyncio.ensure_future(echo.write(data))
            got = bytearray()
            while len(got) < MB and (chunk := await echo.read(1 << 16)):
                got += chunk
            await send
        finally:
            echo.close()
        source = await d.connect(web(v), SOURCE_PORT)
        try:
            await source.write(b"%d\n" % MB)
            down = await read_to_end(source)
        finally:
            source.close()
        return bytes(got), down

    echoed, down = in_router(lab, go())
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()
    assert len(down) == MB and down == pattern_bytes(MB)


@pytest.mark.parametrize("kind", KINDS)
def test_destination_by_name(lab: Lab, peers: ProxyPeers, kind: str) -> None:
    """A name is resolved by the proxy (its /etc/hosts has LAB_NAME), not by the router."""
    async def go() -> tuple[bytes, bytes]:
        stream = await dialer(peers, link(kind, 4)).connect(LAB_NAME, WEB_PORT)
        try:
            return await http_get(stream, "/")
        finally:
            stream.close()

    status, body = in_router(lab, go())
    assert status == b"HTTP/1.1 200 OK"
    assert body.startswith(b"daetui lab host ")
    assert body.decode().split()[-1] in (ADDR.hosts4[0], ADDR.hosts6[0])


@pytest.mark.parametrize("kind", ["http", "https"])
def test_over_a_stream_without_a_socket(lab: Lab, peers: ProxyPeers, kind: str) -> None:
    """Reached through a chain-like `via`: TLS over the stream (https), the head read without peeking (http)."""
    data = os.urandom(MB)

    async def go() -> tuple[type, bytes]:
        stream = await dialer(peers, link(kind, 4), via=OpaqueDialer()).connect(web(4), ECHO_PORT)
        try:
            send = asyncio.ensure_future(stream.write(data))
            got = bytearray()
            while len(got) < MB and (chunk := await stream.read(1 << 16)):
                got += chunk
            await send
            return type(stream), bytes(got)
        finally:
            stream.close()

    kind_of_stream, got = in_router(lab, go())
    assert kind_of_stream in ((TlsStream,) if kind == "https" else (OpaqueStream, PrefixedStream))
    assert got == data


# -- real servers: refusals -------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["socks5-auth", "http", "https"])
def test_wrong_password(lab: Lab, peers: ProxyPeers, kind: str) -> None:
    async def go() -> str:
        with pytest.raises(DialError) as e:
            await dialer(peers, link(kind, 4, password="not-" + PASSWORD)).connect(web(4), WEB_PORT)
        return str(e.value)

    reason = in_router(lab, go())
    assert f"authentication failed for user '{USER}'" in reason


@pytest.mark.parametrize("kind", ["socks5-auth", "http", "https"])
def test_no_credentials_where_required(lab: Lab, peers: ProxyPeers, kind: str) -> None:
    async def go() -> str:
        with pytest.raises(DialError) as e:
            await dialer(peers, link(kind, 6, user="")).connect(web(6), WEB_PORT)
        return str(e.value)

    assert "requires authentication" in in_router(lab, go())


@V4V6
def test_socks5_refused_by_ruleset(lab: Lab, peers: ProxyPeers, v: int) -> None:
    blocked = BLOCKED[0] if v == 4 else BLOCKED[1]

    async def go() -> str:
        with pytest.raises(DialError) as e:
            await dialer(peers, link("socks5", v)).connect(blocked, WEB_PORT)
        return str(e.value)

    reason = in_router(lab, go())
    assert "connection not allowed by ruleset (2)" in reason
    assert blocked in reason


def test_https_certificate_is_verified(lab: Lab, peers: ProxyPeers) -> None:
    """Not trusted by default (a lab CA), unless the link says allow_insecure."""
    async def go() -> tuple[str, bytes]:
        strict = parse_link(link("https", 4)).dialer(DirectDialer(0))  # the system's CAs only
        with pytest.raises(DialError) as e:
            await strict.connect(web(4), WEB_PORT)
        lax = parse_link(link("https", 4) + "&allow_insecure=1").dialer(DirectDialer(0))
        stream = await lax.connect(web(4), WEB_PORT)
        try:
            status, _ = await http_get(stream, "/")
        finally:
            stream.close()
        return str(e.value), status

    reason, status = in_router(lab, go())
    assert "TLS handshake: certificate not accepted: " in reason, reason
    assert status == b"HTTP/1.1 200 OK"


# -- real servers: SOCKS5 UDP ASSOCIATE ---------------------------------------------------------

@pytest.mark.parametrize("kind", ["socks5", "socks5-auth"])
@V4V6
def test_socks5_udp_to_the_echo_server(lab: Lab, peers: ProxyPeers, kind: str, v: int) -> None:
    payloads = [b"x", os.urandom(512), os.urandom(1400)]

    async def go() -> list[tuple[bytes, str, int]]:
        assoc = await dialer(peers, link(kind, v)).datagrams()
        try:
            got = []
            for p in payloads:
                # UDP may lose a datagram: a few tries each, each answered within a second.
                for _ in range(3):
                    await assoc.send(p, web(v), ECHO_PORT)
                    with contextlib.suppress(TimeoutError):
                        got.append(await asyncio.wait_for(assoc.recv(), 1.0))
                        break
            return got
        finally:
            assoc.close()

    got = in_router(lab, go())
    assert got == [(p, web(v), ECHO_PORT) for p in payloads]


# -- bad proxies ----------------------------------------------------------------------------

class Fake:
    """A bad proxy on PROXY4 (port chosen by the kernel) in the wan namespace, served from this loop."""

    def __init__(self, lab: Lab, script: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]):
        self.lab, self.script = lab, script
        self.client_closed = asyncio.Event()  # the dialer's socket ended (closed, not left open)
        self.writers: list[asyncio.StreamWriter] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await self.script(reader, writer)
            while await reader.read(4096):
                pass
        self.client_closed.set()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[int]:
        sock = wan_listener(self.lab, PROXY4)
        server = await asyncio.start_server(self._handle, sock=sock)
        try:
            yield sock.getsockname()[1]
        finally:
            server.close()
            for w in self.writers:
                w.close()


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)
    writer.write(b"\x00\xffnot a proxy at all\r\n\r\n")


async def close_early_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 Conn")
    await writer.drain()
    writer.close()


async def close_early_socks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readexactly(3)
    writer.write(b"\x05")  # half of the method selection
    await writer.drain()
    writer.close()


async def endless_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\n")
    for _ in range(400):
        writer.write(b"X-Filler: " + b"a" * 100 + b"\r\n")
    await writer.drain()


async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.read(4096):  # takes everything, answers nothing, until the client goes
        pass


BAD = [
    ("socks5", garbage, "answered version 0, not 5"),
    ("socks5", close_early_socks, "connection closed during method selection (after 1 of 2 bytes)"),
    ("socks5", stall, f"no answer to method selection within {FAST:g}s"),
    ("http", garbage, "not an HTTP/1.x status line"),
    ("http", close_early_http, "connection closed inside the answer head (after 17 bytes)"),
    ("http", endless_headers, "answer head longer than 16384 bytes"),
    ("http", stall, f"no answer to CONNECT within {FAST:g}s"),
    ("https", garbage, "TLS handshake: the server does not speak TLS"),
    ("https", stall, f"no answer to TLS handshake within {FAST:g}s"),
]


@pytest.mark.parametrize(("kind", "script", "reason"), BAD, ids=[f"{k}-{s.__name__}" for k, s, _ in BAD])
def test_bad_proxy_fails_with_a_reason(lab: Lab, peers: ProxyPeers, kind: str, script: Any, reason: str) -> None:
    """A DialError with the reason, within the handshake timeout; the socket is closed; others carry on."""
    async def go() -> tuple[str, float, bool, bytes]:
        fake = Fake(lab, script)
        async with fake.serving() as port:
            scheme = {"socks5": "socks5", "http": "http", "https": "https"}[kind]
            bad = dialer(peers, f"{scheme}://{PROXY4}:{port}", timeout=FAST)

            async def fail() -> tuple[str, float]:
                t0 = time.monotonic()
                with pytest.raises(DialError) as e:
                    await bad.connect(web(4), WEB_PORT)
                return str(e.value), time.monotonic() - t0

            async def good() -> bytes:
                # A real proxy used at the same time is not held up by the bad one.
                stream = await dialer(peers, link("socks5", 4)).connect(web(4), WEB_PORT)
                try:
                    return (await http_get(stream, "/"))[0]
                finally:
                    stream.close()

            (why, took), status = await asyncio.gather(fail(), good())
            closed = True
            try:
                await asyncio.wait_for(fake.client_closed.wait(), 1.0)
            except TimeoutError:
                closed = False
            return why, took, closed, status

    why, took, closed, status = in_router(lab, go())
    assert reason in why
    assert why.startswith(f"{kind} ") and f"{PROXY4}:" in why  # says which node
    assert took < FAST + 0.5
    assert closed, "the dialer left its connection to the bad proxy open"
    assert status == b"HTTP/1.1 200 OK"


def test_socks5_udp_association_with_a_scripted_server(lab: Lab) -> None:
    """The wire format both ways, malformed datagrams dropped, and the association ends with its control connection."""
    async def go() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        relay = wan_udp(lab, PROXY4)
        relay.setblocking(False)
        close_control = asyncio.Event()
        out: dict[str, Any] = {}

        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert await reader.readexactly(3) == b"\x05\x01\x00"
            writer.write(b"\x05\x00")
            out["request"] = await reader.readexactly(10)
            # The relay's address as the unspecified one: the client must use the server's.
            writer.write(b"\x05\x00\x00\x01\x00\x00\x00\x00" + relay.getsockname()[1].to_bytes(2, "big"))
            await writer.drain()
            await close_control.wait()
            writer.close()

        fake = Fake(lab, script)
        try:
            async with fake.serving() as port:
                assoc = await parse_link(f"socks5://{PROXY4}:{port}").dialer(DirectDialer(0)).datagrams()
                try:
                    await assoc.send(b"question", "www.lab.test", 53)
                    packet, client = await asyncio.wait_for(loop.sock_recvfrom(relay, 2048), 2)
                    out["sent"] = decode_udp(packet)
                    await loop.sock_sendto(relay, b"\0\0", client)  # malformed: dropped
                    await loop.sock_sendto(relay, encode_udp(b"answer", "2001:db8:3::53", 53), client)
                    out["received"] = await asyncio.wait_for(assoc.recv(), 2)
                    out["dropped"] = assoc.dropped
                    close_control.set()
                    t0 = time.monotonic()
                    with pytest.raises(DialError) as e:
                        await asyncio.wait_for(assoc.recv(), 2)
                    out["ended"], out["took"] = str(e.value), time.monotonic() - t0
                    with pytest.raises(DialError):
                        await assoc.send(b"late", "203.0.113.10", 7)
                finally:
                    assoc.close()
        finally:
            relay.close()
        return out

    out = in_router(lab, go(), loop_factory=asyncio.new_event_loop)  # uvloop has no sock_recvfrom
    assert out["request"] == b"\x05\x03\x00\x01" + bytes(6)  # ASSOCIATE, address and port unknown: zeros
    assert out["sent"] == (b"question", "www.lab.test", 53)
    assert out["received"] == (b"answer", "2001:db8:3::53", 53)
    assert out["dropped"] == 1
    assert "closed the association's control connection" in out["ended"]
    assert out["took"] < 1.0
