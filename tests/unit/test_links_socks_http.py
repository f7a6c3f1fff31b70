"""socks5:// and http(s):// share links, both ways; the SOCKS5 and HTTP wire pieces; bad input with its reason.

The handshake tests here use scripted servers on loopback; the real servers
(danted, tinyproxy, v2ray) are in tests/kernel/test_proxy_socks_http.py.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable

import pytest
from helpers import OpaqueDialer

from daetui.net.stream import DialError, SocketStream
from daetui.outbound.direct import DirectDialer
from daetui.outbound.http_proxy import HttpNode, PrefixedStream, parse_head
from daetui.outbound.links import LinkError, parse_link
from daetui.outbound.socks5 import (
    Socks5Node,
    decode_udp,
    encode_request,
    encode_udp,
)

# -- links ------------------------------------------------------------------------------

ROUND_TRIPS = [
    "socks5://203.0.113.11:1080#plain",
    "socks5://alice:lab-secret@203.0.113.11:1081#with%20auth",
    "socks5://[2001:db8:3::11]:1080#v6",
    "socks5://p%40ss:w%3Ard%2F%23@proxy.example.test:1080#odd%20credentials",
    "http://203.0.113.11:8888#tiny",
    "http://alice:lab-secret@[2001:db8:3::11]:8888#tiny6",
    "https://alice:lab-secret@203.0.113.11:8443?sni=proxy.lab.test#tls",
    "https://proxy.example.test:443?allow_insecure=1#insecure",
    "https://203.0.113.11:8443?sni=proxy.lab.test&allow_insecure=1#both",
]


@pytest.mark.parametrize("link", ROUND_TRIPS)
def test_link_round_trip(link: str) -> None:
    node = parse_link(link)
    assert node.link() == link  # these are already in canonical form
    assert parse_link(node.link()) == node


def test_socks5_fields() -> None:
    node = parse_link("socks5://p%40ss:w%3Ard@[2001:DB8:3:0::11]:1081#My%20node")
    assert isinstance(node, Socks5Node)
    assert (node.name, node.host, node.port) == ("My node", "2001:db8:3::11", 1081)
    assert (node.username, node.password) == ("p@ss", "w:rd")


def test_defaults_and_name_override() -> None:
    assert parse_link("socks5://Proxy.Example.Test").port == 1080
    assert parse_link("socks5://Proxy.Example.Test").host == "proxy.example.test"
    assert parse_link("http://203.0.113.11").port == 80
    assert parse_link("https://203.0.113.11").port == 443
    # No fragment: named after where it is. A given name wins over the fragment.
    assert parse_link("socks5://[2001:db8::1]:1080").name == "[2001:db8::1]:1080"
    assert parse_link("socks5://203.0.113.11:1080#from-link", "from-config").name == "from-config"


def test_base64_credentials() -> None:
    token = base64.urlsafe_b64encode(b"bob:s3cret").decode().rstrip("=")
    node = parse_link(f"socks5://{token}@203.0.113.11:1080")
    assert (node.username, node.password) == ("bob", "s3cret")
    # Both alphabets: this one's standard encoding has '/' and '+', the URL-safe one '_' and '-'.
    assert base64.b64encode("u:ûÿ¿>?".encode()) == b"dTrDu8O/wr8+Pw=="
    for token in ("dTrDu8O%2Fwr8+Pw%3D%3D", "dTrDu8O_wr8-Pw"):
        assert parse_link(f"socks5://{token}@h.test").password == "ûÿ¿>?"


def test_https_parameters_as_other_clients_write_them() -> None:
    for query in ("allowInsecure=1", "skip-cert-verify=true", "insecure=1", "allow_insecure=yes"):
        node = parse_link(f"https://203.0.113.11:8443?{query}")
        assert isinstance(node, HttpNode) and node.tls and node.allow_insecure, query
    assert not parse_link("https://203.0.113.11:8443?allowInsecure=0").allow_insecure
    assert parse_link("https://203.0.113.11:8443?peer=proxy.lab.test").sni == "proxy.lab.test"
    # An SNI equal to the host is the default: dropped, so equal nodes print equal links.
    assert parse_link("https://proxy.lab.test?sni=proxy.lab.test") == parse_link("https://proxy.lab.test")
    # Options of other clients are ignored, not errors.
    assert parse_link("https://203.0.113.11:8443?tfo=1&udp=1").tls


BAD_LINKS = [
    ("socks5://", "no host"),
    ("socks5://203.0.113.11:99999", "port 99999 out of range"),
    ("socks5://203.0.113.11:0", "port 0 out of range"),
    ("socks5://203.0.113.11:http", "port 'http' is not a number"),
    ("socks5://2001:db8::1:1080", "brackets"),
    ("socks5://[2001:db8::zz]:1080", "is not an IPv6 address"),
    ("socks5://[2001:db8::1:1080", "unclosed"),
    ("socks5://[2001:db8::1]x:1080", "unexpected 'x:1080'"),
    ("socks5://ho st:1080", "neither an IP address nor a hostname"),
    ("socks5://-bad-.test:1080", "neither an IP address nor a hostname"),
    ("socks5://alice@203.0.113.11:1080", "credentials must be user:password"),
    ("socks5://alice:@203.0.113.11:1080", "needs both a username and a password"),
    ("socks5://@203.0.113.11:1080", "empty credentials"),
    ("socks5://" + "u" * 256 + ":p@203.0.113.11:1080", "username is longer than 255 bytes"),
    ("socks5://203.0.113.11:1080/some/path", "unexpected path /some/path"),
    ("http://203.0.113.11:8888?sni=proxy.lab.test", "for https:// links only"),
    ("http://203.0.113.11:8888?allow_insecure=1", "for https:// links only"),
    ("https://203.0.113.11?allow_insecure=maybe", "expected 1/true or 0/false"),
    ("https://203.0.113.11?sni=a.test&peer=b.test", "two different SNI"),
    ("https://203.0.113.11?sni=bad%20name", "neither an IP address nor a hostname"),
    ("https://203.0.113.11?sni=a.test&sni=a.test", "given twice"),
    ("http://:pw@203.0.113.11", "a password without a username"),
    ("gopher://203.0.113.11:70", "unknown scheme"),
]


def test_socks5_parameters_are_ignored_as_dae_ignores_them() -> None:
    node = parse_link("socks5://203.0.113.11:1080?remarks=home&udp=1#n")
    assert (node.host, node.port, node.name) == ("203.0.113.11", 1080, "n")
    assert parse_link(node.link()) == node


@pytest.mark.parametrize(("link", "reason"), BAD_LINKS)
def test_bad_links_say_why(link: str, reason: str) -> None:
    with pytest.raises(LinkError) as e:
        parse_link(link)
    assert reason in str(e.value)


def test_nodes_check_their_fields() -> None:
    with pytest.raises(ValueError, match="out of range"):
        Socks5Node("n", "203.0.113.11", 70000)
    with pytest.raises(ValueError, match="https:// nodes only"):
        HttpNode("n", "203.0.113.11", 80, sni="x.test")


# -- SOCKS5 wire format -----------------------------------------------------------------------

def test_socks5_requests() -> None:
    assert encode_request(1, "203.0.113.10", 80) == b"\x05\x01\x00\x01\xcb\x00\x71\x0a\x00\x50"
    assert encode_request(3, "::", 0) == b"\x05\x03\x00\x04" + bytes(16) + b"\x00\x00"
    assert encode_request(1, "www.lab.test", 443) == b"\x05\x01\x00\x03\x0cwww.lab.test\x01\xbb"
    with pytest.raises(DialError, match="1-255"):
        encode_request(1, "a" * 256, 80)


@pytest.mark.parametrize("host", ["203.0.113.10", "2001:db8:3::10", "www.lab.test"])
def test_socks5_udp_header_round_trip(host: str) -> None:
    packet = encode_udp(b"payload", host, 5353)
    assert packet[:3] == b"\0\0\0"
    assert decode_udp(packet) == (b"payload", host, 5353)


@pytest.mark.parametrize(("packet", "reason"), [
    (b"\0\0", "shorter than a SOCKS5 UDP header"),
    (b"\0\0\x01\x01" + bytes(6), "fragment 1"),
    (b"\0\0\0\x01\xcb\x00", "ends inside its header"),
    (b"\0\0\0\x04" + bytes(10), "ends inside its header"),
    (b"\0\0\0\x09" + bytes(10), "unknown address type 9"),
])
def test_socks5_bad_datagrams(packet: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        decode_udp(packet)


# -- HTTP answer heads ------------------------------------------------------------------------

def test_parse_head() -> None:
    head = b"HTTP/1.0 200 Connection established\r\nProxy-agent: tinyproxy/1.11.1\r\n\r\n"
    assert parse_head(head) == (200, "Connection established", [("Proxy-agent", "tinyproxy/1.11.1")])
    assert parse_head(b"HTTP/1.1 200\r\n\r\n")[:2] == (200, "")


@pytest.mark.parametrize(("head", "reason"), [
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP/1.x status line"),
    (b"HTTP/2 200 OK\r\n\r\n", "not an HTTP/1.x status line"),
    (b"HTTP/1.1 20 OK\r\n\r\n", "not an HTTP/1.x status line"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
    (b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", "malformed header line"),
    (b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n", "control character in header X"),
])
def test_parse_head_rejects(head: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_head(head)


def test_connect_request() -> None:
    node = parse_link("http://alice:lab-secret@203.0.113.11:8888")
    req = node.dialer(DirectDialer(0)).request("2001:db8:3::10", 80)
    token = base64.b64encode(b"alice:lab-secret")
    assert req == (b"CONNECT [2001:db8:3::10]:80 HTTP/1.1\r\nHost: [2001:db8:3::10]:80\r\n"
                   b"Proxy-Authorization: Basic " + token + b"\r\n\r\n")
    # A sniffed name is untrusted: nothing may smuggle a line into the request.
    with pytest.raises(DialError, match="not a hostname"):
        node.dialer(DirectDialer(0)).request("evil.test\r\nX-Injected: 1", 80)


# -- handshakes against scripted servers on loopback ----------------------------------------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def with_server(script: Script, use: Callable[[int], Awaitable[None]]) -> None:
    server = await asyncio.start_server(script, "127.0.0.1", 0)
    try:
        await use(server.sockets[0].getsockname()[1])
    finally:
        server.close()




@pytest.mark.parametrize("opaque", [False, True], ids=["socket", "stream"])
async def test_http_bytes_after_the_head_are_kept(opaque: bool) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        # The head and the destination's first bytes in one segment.
        writer.write(b"HTTP/1.1 200 Connection established\r\nX-Pad: 1\r\n\r\nHELLO")
        await writer.drain()
        writer.write(await reader.readexactly(4))
        await writer.drain()
        writer.close()

    async def use(port: int) -> None:
        via = OpaqueDialer() if opaque else DirectDialer(0)
        stream = await parse_link(f"http://127.0.0.1:{port}").dialer(via).connect("203.0.113.10", 80)
        # Over a socket the head was peeked: the stream is still a plain, spliceable socket.
        assert isinstance(stream, PrefixedStream if opaque else SocketStream)
        await stream.write(b"ping")
        got = b""
        while chunk := await stream.read(100):
            got += chunk
        stream.close()
        assert got == b"HELLOping"

    await with_server(script, use)


async def test_socks5_method_refused_without_credentials() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(3) == b"\x05\x01\x00"  # we offered "no authentication" only
        writer.write(b"\x05\xff")
        await writer.drain()
        writer.close()

    async def use(port: int) -> None:
        with pytest.raises(DialError, match="requires authentication"):
            await parse_link(f"socks5://127.0.0.1:{port}").dialer(DirectDialer(0)).connect("203.0.113.10", 80)

    await with_server(script, use)


async def test_socks5_connect_over_an_opaque_stream() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(4) == b"\x05\x02\x00\x02"
        writer.write(b"\x05\x02")
        assert await reader.readexactly(12) == b"\x01\x03bob\x06s3cret"
        writer.write(b"\x01\x00")
        assert await reader.readexactly(10) == encode_request(1, "203.0.113.10", 80)
        # A domain-typed bound address and the destination's first bytes, together.
        writer.write(b"\x05\x00\x00\x03\x04test\x00\x50" + b"DATA")
        await writer.drain()
        writer.close()

    async def use(port: int) -> None:
        stream = await parse_link(f"socks5://bob:s3cret@127.0.0.1:{port}").dialer(OpaqueDialer()).connect(
            "203.0.113.10", 80)
        assert await stream.read(100) == b"DATA"
        stream.close()

    await with_server(script, use)


async def test_no_udp_through_http_or_a_socks5_chain() -> None:
    with pytest.raises(DialError, match="HTTP proxies have no UDP"):
        await parse_link("http://127.0.0.1:8888").dialer(DirectDialer(0)).datagrams()
    with pytest.raises(DialError, match="UDP through a chain is not supported"):
        await parse_link("socks5://127.0.0.1:1080").dialer(OpaqueDialer()).datagrams()
