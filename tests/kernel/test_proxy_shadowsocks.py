"""Shadowsocks AEAD against the real ss-server (shadowsocks-libev 3.3.5) in the lab's wan namespace.

The dialer runs in the router namespace, where daetui runs, and reaches
ss-server on 203.0.113.12 / 2001:db8:3::12 (one server per cipher) across the
router's wan0; ss-server reaches the lab's HTTP, echo and source servers on
203.0.113.10-11. Domain targets are resolved by ss-server through the lab's
unbound. Broken servers are played by sockets opened in the wan namespace.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from helpers import dial_http_get, in_router, read_to_end, wan_listener, wan_udp

from daetui.lab.dnspeers import Unbound
from daetui.lab.servers import pattern_bytes
from daetui.lab.topology import ADDR, ECHO_PORT, HTTP_PORT, SOURCE_PORT, Lab
from daetui.net.netns import netns
from daetui.net.stream import DialError
from daetui.outbound.direct import DirectDialer
from daetui.outbound.shadowsocks import METHODS, Sealer, SsNode, SsStream, master_key, subkey
from testkit.peers.shadowsocks import SsServer
from testkit.xchacha import RefXChaCha20Poly1305

pytestmark = pytest.mark.kernel

CIPHERS = ("aes-128-gcm", "aes-256-gcm", "chacha20-ietf-poly1305", "xchacha20-ietf-poly1305")
PASSWORD = "lab pässword:@/#?"  # the separators a link must carry, and UTF-8
BASE_PORT = 8388
UNUSED_PORT = 8399
DIRECT = DirectDialer(mark=0, connect_timeout=3.0)

BY_CIPHER = pytest.mark.parametrize("method", CIPHERS)
BY_FAMILY = pytest.mark.parametrize("v", [4, 6])


def target(v: int, i: int = 0) -> str:
    return ADDR.hosts4[i] if v == 4 else ADDR.hosts6[i]


@pytest.fixture(scope="module")
def servers(lab: Lab) -> Iterator[dict[str, SsServer]]:
    """One ss-server per cipher, and the lab's unbound for the names they resolve."""
    with ExitStack() as stack:
        unbound = Unbound(lab)
        stack.callback(unbound.stop)
        unbound.start()
        out = {}
        for i, method in enumerate(CIPHERS):
            server = SsServer(lab, method, PASSWORD, BASE_PORT + i, nameserver=ADDR.dns4[0])
            stack.callback(server.stop)
            server.start()
            out[method] = server
        yield out


def wait_for_log(server: SsServer, pattern: str, timeout: float = 3.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = server.log_text()
        if re.search(pattern, text):
            return text
        time.sleep(0.05)
    raise AssertionError(f"ss-server never logged {pattern!r}:\n{server.log_text()[-2000:]}")


# -- bytes through the real server --------------------------------------------------------------------

@BY_CIPHER
@BY_FAMILY
def test_http(lab: Lab, servers: dict[str, SsServer], method: str, v: int) -> None:
    """An HTTP download from the wan's server, the ss-server dialled over IPv4 / IPv6."""
    dialer = servers[method].node(v).dialer(DIRECT)
    head, body = in_router(lab, dial_http_get(dialer, target(v), "/bytes/100000"))
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body == pattern_bytes(100000)


@BY_CIPHER
def test_megabyte_both_ways(lab: Lab, servers: dict[str, SsServer], method: str) -> None:
    """1 MB up and back through the echo server, and 1 MB down from the source server, intact."""
    dialer = servers[method].node(4).dialer(DIRECT)
    payload = os.urandom(1 << 20)

    async def echo() -> bytes:
        stream = await dialer.connect(target(4), ECHO_PORT)

        async def send() -> None:
            for i in range(0, len(payload), 100_000):  # writes of an odd size: chunks cut across them
                await stream.write(payload[i:i + 100_000])

        # No half-close: ss-server (libev) ends both directions when the client's side ends,
        # dropping what the echo has not sent back yet.
        got = bytearray()
        try:
            sender = asyncio.ensure_future(send())
            while len(got) < len(payload) and (data := await stream.read(1 << 16)):
                got += data
            await sender
            return bytes(got)
        finally:
            stream.close()

    async def source() -> bytes:
        stream = await dialer.connect(target(4, 1), SOURCE_PORT)
        try:
            await stream.write(b"%d\n" % (1 << 20))
            return await read_to_end(stream)
        finally:
            stream.close()

    got = in_router(lab, echo())
    assert len(got) == len(payload) and hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    assert in_router(lab, source()) == pattern_bytes(1 << 20)


def test_domain_target(lab: Lab, servers: dict[str, SsServer]) -> None:
    """A name goes to ss-server as a name (ATYP 3): it resolves it through the lab's unbound."""
    server = servers["chacha20-ietf-poly1305"]
    head, body = in_router(lab, dial_http_get(server.node(4).dialer(DIRECT), "www.example.test", "/"))
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body in (f"daetui lab host {ADDR.hosts4[0]}\n".encode(), f"daetui lab host {ADDR.hosts6[0]}\n".encode())
    wait_for_log(server, r"connect to www\.example\.test:80")


def test_unresolvable_domain_fails_cleanly(lab: Lab, servers: dict[str, SsServer]) -> None:
    """ss-server closes a connection whose name it cannot resolve: a DialError that says so, at once."""
    server = servers["aes-128-gcm"]
    t0 = time.monotonic()
    with pytest.raises(DialError, match="closed the connection without answering"):
        in_router(lab, dial_http_get(server.node(4).dialer(DIRECT), "nx.example.test", "/"))
    assert time.monotonic() - t0 < 3
    wait_for_log(server, r"unable to resolve nx\.example\.test")


@BY_CIPHER
@BY_FAMILY
def test_udp_echo(lab: Lab, servers: dict[str, SsServer], method: str, v: int) -> None:
    """Datagrams to the wan's UDP echo and back, their source reported as the echo server."""
    dialer = servers[method].node(v).dialer(DIRECT)
    # ss-server 3.3.5 without --mtu drops a datagram much above 1400 bytes ("Message too long").
    payloads = [b"ping", os.urandom(1400)]

    async def go() -> list[tuple[bytes, str, int]]:
        grams = await dialer.datagrams()
        out = []
        try:
            for p in payloads:
                await grams.send(p, target(v), ECHO_PORT)
                out.append(await asyncio.wait_for(grams.recv(), 3))
        finally:
            grams.close()
        return out

    assert in_router(lab, go()) == [(p, target(v), ECHO_PORT) for p in payloads]


# -- the known-answer recipe, against the server ---------------------------------------------------------

def recipe_aead(method: str, salt: bytes) -> AESGCM | ChaCha20Poly1305 | RefXChaCha20Poly1305:
    """EVP_BytesToKey, HKDF-SHA1 "ss-subkey", step by step (as tests/unit/test_shadowsocks.py derives them)."""
    size = METHODS[method].key_size
    d, key = b"", b""
    while len(key) < size:
        d = hashlib.md5(d + PASSWORD.encode()).digest()
        key += d
    sub = HKDF(algorithm=hashes.SHA1(), length=size, salt=salt, info=b"ss-subkey").derive(key[:size])
    if method.startswith("xchacha"):
        return RefXChaCha20Poly1305(sub)
    return (AESGCM if method.endswith("gcm") else ChaCha20Poly1305)(sub)


def recipe_chunk(aead: AESGCM | ChaCha20Poly1305 | RefXChaCha20Poly1305, n: int, payload: bytes) -> bytes:
    return (aead.encrypt(n.to_bytes(12, "little"), len(payload).to_bytes(2, "big"), None)
            + aead.encrypt((n + 1).to_bytes(12, "little"), payload, None))


@BY_CIPHER
def test_known_answer_request_is_what_ss_server_speaks(lab: Lab, servers: dict[str, SsServer], method: str) -> None:
    """A request made by the recipe, with a fixed salt, over a plain socket: ss-server answers it, and
    the answer opens with the recipe. The module makes the very same bytes for that salt."""
    size = METHODS[method].salt_size
    salt = hashlib.sha256(b"fixed salt " + method.encode()).digest()[:size]
    header = b"\x01" + socket.inet_aton(ADDR.hosts4[0]) + HTTP_PORT.to_bytes(2, "big")
    request = header + b"GET /bytes/1000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    wire = salt + recipe_chunk(recipe_aead(method, salt), 0, request)
    module = salt + bytes(Sealer(METHODS[method].aead(subkey(master_key(PASSWORD, size), salt))).seal(request))
    assert module == wire

    with netns(lab.router):
        sock = socket.create_connection((ADDR.hosts4[2], servers[method].port), timeout=5)
    with sock:
        sock.sendall(wire)
        answer = b""
        while data := sock.recv(1 << 16):
            answer += data
    aead = recipe_aead(method, answer[:size])
    plain, pos, n = b"", size, 0
    while pos < len(answer):
        length = int.from_bytes(aead.decrypt(n.to_bytes(12, "little"), answer[pos:pos + 18], None), "big")
        pos += 18
        plain += aead.decrypt((n + 1).to_bytes(12, "little"), answer[pos:pos + length + 16], None)
        pos += length + 16
        n += 2
    head, _, body = plain.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body == pattern_bytes(1000)


# -- failures -----------------------------------------------------------------------------------------------

def test_wrong_password_tcp(lab: Lab, servers: dict[str, SsServer]) -> None:
    """ss-server holds a connection it cannot decrypt open and silent: answer_timeout names the likely cause."""
    server = servers["aes-256-gcm"]
    node = SsNode("wrong", ADDR.hosts4[2], server.port, "aes-256-gcm", "not the password")
    t0 = time.monotonic()
    with pytest.raises(DialError, match=r"^shadowsocks wrong \(.*\): no answer within 1.5s: wrong password or method"):
        in_router(lab, dial_http_get(node.dialer(DIRECT, answer_timeout=1.5), target(4), "/"))
    assert 1.4 < time.monotonic() - t0 < 4
    wait_for_log(server, "authentication error")


def test_wrong_password_udp(lab: Lab, servers: dict[str, SsServer]) -> None:
    """A UDP packet under the wrong password is dropped by ss-server: nothing comes back."""
    server = servers["aes-256-gcm"]
    node = SsNode("wrong", ADDR.hosts4[2], server.port, "aes-256-gcm", "not the password")

    async def go() -> None:
        grams = await node.dialer(DIRECT).datagrams()
        try:
            await grams.send(b"ping", target(4), ECHO_PORT)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(grams.recv(), 1.0)
        finally:
            grams.close()

    in_router(lab, go())
    wait_for_log(server, "suspicious UDP packet")


def test_no_server_there(lab: Lab) -> None:
    """Nothing listens on the port: TCP fails at connect, UDP on the ICMP error, both with the reason."""
    dialer = SsNode("gone", ADDR.hosts4[2], UNUSED_PORT, "aes-128-gcm", PASSWORD).dialer(DIRECT)
    # (asyncio words a refused connect "Connect call failed"; DirectDialer passes that on.)
    with pytest.raises(DialError, match=r"shadowsocks gone \(203.0.113.12:8399\): connect to .*(refused|failed)"):
        in_router(lab, dialer.connect(target(4), HTTP_PORT))

    async def udp() -> None:
        grams = await dialer.datagrams()
        try:
            await grams.send(b"ping", target(4), ECHO_PORT)
            await grams.recv()
        finally:
            grams.close()

    with pytest.raises(DialError, match=r"refused \(no UDP relay there"):
        in_router(lab, udp(), timeout=5)


# -- broken servers, played by sockets in the wan namespace ---------------------------------------------------

FAKE = "aes-128-gcm"


def _reply(chunks: list[bytes]) -> tuple[bytes, bytes]:
    """A valid salt and the recipe's chunks for `chunks` (the fake server's key is the real password's)."""
    salt = os.urandom(16)
    aead = recipe_aead(FAKE, salt)
    return salt, b"".join(recipe_chunk(aead, 2 * i, c) for i, c in enumerate(chunks))


async def _garbage(w: asyncio.StreamWriter) -> None:
    w.write(os.urandom(200))


async def _close(w: asyncio.StreamWriter) -> None:
    w.close()


async def _reset(w: asyncio.StreamWriter) -> None:
    w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    w.close()


async def _half_salt_close(w: asyncio.StreamWriter) -> None:
    w.write(os.urandom(5))
    w.close()


async def _half_salt_stall(w: asyncio.StreamWriter) -> None:
    w.write(os.urandom(5))
    await asyncio.sleep(10)


async def _silent(w: asyncio.StreamWriter) -> None:
    await asyncio.sleep(10)


async def _mid_chunk_stall(w: asyncio.StreamWriter) -> None:
    salt, body = _reply([b"hello"])
    w.write(salt + body[:10])
    await asyncio.sleep(10)


async def _truncated(w: asyncio.StreamWriter) -> None:
    salt, body = _reply([b"hello", b"world"])
    w.write(salt + body[:-8])
    w.close()


async def _tampered(w: asyncio.StreamWriter) -> None:
    salt, body = _reply([b"hello", b"world"])
    body = bytearray(body)
    body[-20] ^= 1
    w.write(salt + bytes(body))
    await asyncio.sleep(10)


async def _zero_length(w: asyncio.StreamWriter) -> None:
    salt = os.urandom(16)
    w.write(salt + recipe_aead(FAKE, salt).encrypt(bytes(12), b"\0\0", None))
    await asyncio.sleep(10)


# (behaviour, payload read before the error, the DialError's words)
BROKEN: list[tuple[Callable[[asyncio.StreamWriter], Awaitable[None]], bytes, str]] = [
    (_garbage, b"", r"chunk 0 failed authentication \(wrong password or method\?\)"),
    (_close, b"", "closed the connection without answering"),
    (_reset, b"", "reset the connection before answering"),
    (_half_salt_close, b"", "closed after 5 bytes of a 16-byte salt"),
    (_half_salt_stall, b"", r"stalled for 1s in the middle of a chunk"),
    (_silent, b"", "no answer within 1s"),
    (_mid_chunk_stall, b"", r"stalled for 1s in the middle of a chunk"),
    (_truncated, b"hello", r"closed in the middle of a chunk"),
    (_tampered, b"hello", r"chunk 1 failed authentication \(tampered\?\)"),
    (_zero_length, b"", "chunk length 0 out of range"),
]


@pytest.mark.parametrize(("behaviour", "before", "reason"), BROKEN, ids=[b[0].__name__.strip("_") for b in BROKEN])
def test_broken_server(lab: Lab, behaviour: Callable[[asyncio.StreamWriter], Awaitable[None]], before: bytes,
                       reason: str) -> None:
    """Garbage, an early close or reset, a stall, a cut or forged chunk: a DialError with the reason, soon."""
    listener = wan_listener(lab, ADDR.hosts4[2])
    port = listener.getsockname()[1]
    node = SsNode("fake", ADDR.hosts4[2], port, FAKE, PASSWORD)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)  # the request, so that a close is a FIN and not a reset
        await behaviour(writer)

    async def go() -> tuple[bytes, DialError]:
        server = await asyncio.start_server(serve, sock=listener)
        stream: SsStream = await node.dialer(DIRECT, frame_timeout=1.0, answer_timeout=1.0).connect(target(4), 80)
        got = b""
        try:
            await stream.write(b"GET / HTTP/1.1\r\n\r\n")
            while data := await stream.read(1 << 16):
                got += data
        except DialError as e:
            return got, e
        finally:
            stream.close()
            server.close()
        raise AssertionError(f"no error; read {got!r}")

    t0 = time.monotonic()
    got, error = in_router(lab, go(), timeout=8)
    assert time.monotonic() - t0 < 3
    assert got == before
    assert re.search(reason, str(error)), error
    assert str(error).startswith(f"shadowsocks fake (203.0.113.12:{port}): ")


def test_broken_udp_replies_dropped_and_counted(lab: Lab) -> None:
    """Replies that are short, garbage or under another key are dropped and counted; the good one comes through."""
    server = wan_udp(lab, ADDR.hosts4[2])
    server.settimeout(3)
    node = SsNode("fake", ADDR.hosts4[2], server.getsockname()[1], FAKE, PASSWORD)

    def fake_server() -> bytes:
        """Blocking, in a thread (uvloop has no sock_recvfrom): take the request, answer four times."""
        packet, client = server.recvfrom(65536)
        other = os.urandom(16)
        forged = other + AESGCM(master_key("other", 16)).encrypt(bytes(12), b"\x01" + bytes(6) + b"x", None)
        good = other + recipe_aead(FAKE, other).encrypt(
            bytes(12), b"\x01" + socket.inet_aton(target(4, 1)) + (53).to_bytes(2, "big") + b"pong", None)
        for p in (b"tiny", os.urandom(300), forged, good):
            server.sendto(p, client)
        return packet

    async def go() -> tuple[bytes, tuple[bytes, str, int], int, str]:
        grams = await node.dialer(DIRECT).datagrams()
        try:
            served = asyncio.ensure_future(asyncio.to_thread(fake_server))
            await grams.send(b"ping", target(4), ECHO_PORT)
            answer = await asyncio.wait_for(grams.recv(), 3)
            return await served, answer, grams.dropped, grams.last_drop
        finally:
            grams.close()

    try:
        request, answer, dropped, last = in_router(lab, go())
    finally:
        server.close()
    salt = request[:16]
    assert recipe_aead(FAKE, salt).decrypt(bytes(12), request[16:], None) == (
        b"\x01" + socket.inet_aton(target(4)) + ECHO_PORT.to_bytes(2, "big") + b"ping")
    assert answer == (b"pong", target(4, 1), 53)
    assert dropped == 3
    assert "failed authentication" in last
