"""net/grpc.py (the "gun" tunnel) and the grpc fields of vmess, vless and trojan links and clash proxies.

The framing is checked against hand-made messages (varints, messages cut
anywhere, several in one read, fields a Hunk does not have); the stream
against an HTTP/2 server made with the h2 library's server side, over
loopback, which ends the call with the trailers a test asks for.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import re
import socket
import struct
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, urlsplit

import h2.config
import h2.connection
import h2.events
import pytest

from daetui.net.grpc import GrpcStream, HunkDecoder, message, open_grpc, status_error, tun_path, varint
from daetui.net.stream import DialError, SocketStream
from daetui.outbound import trojan, vless, vmess
from daetui.outbound.links import parse_link
from daetui.outbound.subscription import clash_link
from daetui.outbound.transport import Transport
from testkit.sockets import tcp_pair

UID = "b831381d-6324-4d53-ad4f-8cda48b30811"


# -- framing ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "encoded"), [
    (0, "00"), (1, "01"), (127, "7f"), (128, "8001"), (300, "ac02"), (16383, "ff7f"), (16384, "808001"),
    (2 ** 21, "80808001"), (2 ** 32 - 1, "ffffffff0f"),
])
def test_varint(n: int, encoded: str) -> None:
    assert varint(n).hex() == encoded


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, 70_000])
def test_message_layout(size: int) -> None:
    """flag 0 | length | 0x0A | varint(size) | data, the length counting the Hunk's bytes."""
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    m = message(data)
    head = b"\x0a" + varint(size)
    assert m[0] == 0 and struct.unpack("!I", m[1:5])[0] == len(head) + size
    assert m[5:5 + len(head)] == head and m[5 + len(head):] == data
    assert HunkDecoder().feed(m) == data


def test_a_message_cut_anywhere() -> None:
    """Messages fed a byte at a time, and cut at every place in two: the same data, nothing held at the end."""
    stream = message(b"first hunk" * 30) + message(b"") + message(b"x")
    want = b"first hunk" * 30 + b"x"
    d = HunkDecoder()
    assert b"".join(d.feed(stream[i:i + 1]) for i in range(len(stream))) == want
    assert d.at_boundary
    for cut in range(len(stream) + 1):
        d = HunkDecoder()
        got = d.feed(stream[:cut])
        assert got + d.feed(stream[cut:]) == want and d.at_boundary


def test_several_messages_in_one_read() -> None:
    parts = [bytes([i]) * (i * 100) for i in range(1, 40)]
    d = HunkDecoder()
    assert d.feed(b"".join(message(p) for p in parts)) == b"".join(parts)
    assert d.at_boundary


def test_random_messages_cut_at_random() -> None:
    """Many messages of random sizes (varints of 1 to 3 bytes), the body cut at random places: the data whole."""
    rng = random.Random(13)
    parts = [rng.randbytes(rng.choice((0, 1, 127, 128, 300, 16383, 16384, 40_000))) for _ in range(200)]
    body = b"".join(message(p) for p in parts)
    cuts = sorted(rng.sample(range(1, len(body)), 500))
    d = HunkDecoder()
    got = b"".join(d.feed(body[a:b]) for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True))
    assert got == b"".join(parts) and d.at_boundary


def test_fields_other_than_data_are_skipped() -> None:
    """A varint (field 2), bytes (3), fixed64 (4) and fixed32 (5) around the data, and a repeated data field."""
    body = (b"\x10" + varint(300) + b"\x1a\x03abc" + b"\x21" + bytes(8) + b"\x0a\x02hi" + b"\x2d" + bytes(4)
            + b"\x0a\x01!")
    raw = b"\x00" + struct.pack("!I", len(body)) + body
    d = HunkDecoder()
    assert b"".join(d.feed(raw[i:i + 3]) for i in range(0, len(raw), 3)) == b"hi!"
    assert d.at_boundary


def test_within_a_message_is_not_a_boundary() -> None:
    d = HunkDecoder()
    m = message(b"abcdef")
    assert d.feed(m[:-2]) == b"abcd" and not d.at_boundary
    assert d.feed(m[-2:]) == b"ef" and d.at_boundary


@pytest.mark.parametrize(("raw", "reason"), [
    (b"\x01\x00\x00\x00\x03\x0a\x01x", "compressed message"),
    (b"\x07\x00\x00\x00\x03\x0a\x01x", "message flag 7"),
    (b"\x00\x00\x00\x00\x03\x0a\x05x", "a field longer than its message"),
    (b"\x00\x00\x00\x00\x02\x0b\x00", "wire type 3"),
    (b"\x00\x00\x00\x00\x0c\x0a" + b"\xff" * 11, "varint longer than 10 bytes"),
])
def test_not_grpc(raw: bytes, reason: str) -> None:
    with pytest.raises(DialError, match=reason):
        HunkDecoder().feed(raw)


@pytest.mark.parametrize(("service", "path"), [
    ("svc", "/svc/Tun"), ("", "/GunService/Tun"), ("a b", "/a%20b/Tun"), ("my.pkg.Gun", "/my.pkg.Gun/Tun"),
    ("/custom/path/Tun", "/custom/path/Tun"), ("/a/b|c", "/a/b"),
])
def test_tun_path(service: str, path: str) -> None:
    assert tun_path(service) == path


def test_status_error() -> None:
    assert status_error({}) is None and status_error({b"grpc-status": b"0"}) is None
    e = status_error({b"grpc-status": b"14", b"grpc-message": b"no%20upstream"})
    assert e is not None and str(e) == "grpc: the server ended the call with grpc-status 14 (UNAVAILABLE): no upstream"
    e = status_error({b"grpc-status": b"12"})
    assert e is not None and "12 (UNIMPLEMENTED) (wrong serviceName?)" in str(e)


# -- the stream against an h2 server -----------------------------------------------------------

class Server:
    """The server end of a tcp pair: one gRPC call, answered as a test says."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.conn.initiate_connection()
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()
        self.ended = False

    async def flush(self) -> None:
        if data := self.conn.data_to_send():
            await self.loop.sock_sendall(self.sock, data)

    async def more(self) -> bool:
        data = await self.loop.sock_recv(self.sock, 1 << 16)
        if not data:
            return False
        for e in self.conn.receive_data(data):
            if isinstance(e, h2.events.RequestReceived):
                self.headers = dict(e.headers)
            elif isinstance(e, h2.events.DataReceived):
                self.body += e.data
                self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif isinstance(e, h2.events.StreamEnded):
                self.ended = True
        await self.flush()
        return True

    async def request(self, body: int = 0) -> None:
        await self.flush()
        while not self.headers or len(self.body) < body:
            assert await self.more(), "closed before the request"

    async def respond(self, status: int = 200, kind: bytes = b"application/grpc",
                      extra: tuple[tuple[bytes, bytes], ...] = (), end: bool = False) -> None:
        self.conn.send_headers(1, [(b":status", str(status).encode()), (b"content-type", kind), *extra],
                               end_stream=end)
        await self.flush()

    async def send(self, data: bytes, pieces: int = 1) -> None:
        step = max(1, -(-len(data) // pieces))
        for i in range(0, len(data), step):
            self.conn.send_data(1, data[i:i + step])
            await self.flush()

    async def trailers(self, status: bytes, msg: bytes = b"") -> None:
        self.conn.send_headers(1, [(b"grpc-status", status), *([(b"grpc-message", msg)] if msg else [])],
                               end_stream=True)
        await self.flush()


def run(scenario: Callable[[Server], Awaitable[None]], client: Callable[[SocketStream], Awaitable[None]]) -> None:
    async def main() -> None:
        a, b = tcp_pair()
        try:
            await asyncio.wait_for(asyncio.gather(scenario(Server(b)), client(SocketStream(a))), 10)
        finally:
            a.close()
            b.close()
    asyncio.run(main())


async def read_all(g: GrpcStream) -> bytes:
    out = bytearray()
    while data := await g.read(1000):
        out += data
    return bytes(out)


def test_a_call_both_ways() -> None:
    """The request's headers and first message; the server's messages cut across DATA frames; trailers 0: the end."""
    down = [b"one", b"two" * 5000, b"", b"three"]
    up = bytes(range(256)) * 300  # more than one message's worth: MESSAGE_DATA each

    async def scenario(s: Server) -> None:
        await s.request(body=len(message(b"request")))
        h = s.headers
        assert (h[b":method"], h[b":path"], h[b":scheme"], h[b":authority"]) == (
            b"POST", b"/lab.Svc/Tun", b"https", b"cdn.test")
        assert (h[b"content-type"], h[b"te"]) == (b"application/grpc", b"trailers")
        await s.respond()
        await s.send(b"".join(message(d) for d in down), pieces=7)
        while not s.ended:  # the client's upload, then its end
            assert await s.more()
        d = HunkDecoder()
        assert d.feed(bytes(s.body)) == b"request" + up and d.at_boundary
        await s.trailers(b"0")

    async def client(inner: SocketStream) -> None:
        g = await open_grpc(inner, authority="cdn.test", service_name="lab.Svc", timeout=3, tls=True,
                            early_data=b"request")
        await g.write(up)
        await g.write_eof()
        assert await read_all(g) == b"".join(down)
        assert await g.read(10) == b""
        g.close()

    run(scenario, client)


def test_cleartext_call_says_http() -> None:
    async def scenario(s: Server) -> None:
        await s.request()
        assert s.headers[b":scheme"] == b"http"
        await s.respond()
        await s.send(message(b"hi"))
        s.conn.end_stream(1)  # no trailers at all, as mihomo ends a call: a plain end
        await s.flush()

    async def client(inner: SocketStream) -> None:
        g = await open_grpc(inner, authority="h", service_name="s", timeout=3, tls=False)
        assert await read_all(g) == b"hi"
        g.close()

    run(scenario, client)


@pytest.mark.parametrize(("how", "reason"), [
    ("trailer", "grpc-status 14 (UNAVAILABLE): upstream gone"),
    ("trailers-only", "grpc-status 12 (UNIMPLEMENTED) (wrong serviceName?)"),
    ("404", "HTTP 404 (wrong serviceName?)"),
    ("html", "content-type 'text/html', not a gRPC call"),
    ("cut", "ended the call within a message"),
])
def test_the_call_refused_or_broken(how: str, reason: str) -> None:
    """An error status in the trailer (after data) or in a trailers-only answer, a 404, a web page, a cut message."""
    async def scenario(s: Server) -> None:
        await s.request()
        if how == "trailers-only":
            await s.respond(extra=((b"grpc-status", b"12"),), end=True)
        elif how == "404":
            await s.respond(404, b"text/plain", end=True)
        elif how == "html":
            await s.respond(200, b"text/html")
            await s.send(b"<html>")
        else:
            await s.respond()
            await s.send(message(b"some data")[:-2] if how == "cut" else message(b"some data"))
            if how == "cut":
                s.conn.end_stream(1)
                await s.flush()
            else:
                await s.trailers(b"14", b"upstream%20gone")
        await s.more()

    async def client(inner: SocketStream) -> None:
        g = await open_grpc(inner, authority="h", service_name="s", timeout=3, tls=True)
        with pytest.raises(DialError, match=re.escape(reason)):
            await read_all(g)
        g.close()

    run(scenario, client)


# -- links --------------------------------------------------------------------------------------

def _query(link: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(link).query))


@pytest.mark.parametrize("link", [
    f"vless://{UID}@h.test:443?encryption=none&security=tls&sni=s.test&type=grpc&serviceName=my.Svc&mode=gun#v",
    f"vless://{UID}@[2001:db8::1]:443?security=none&type=grpc&serviceName=x&authority=a.test#v6",
    "trojan://pw@h.test:443?sni=s.test&type=grpc&serviceName=%2Fcustom%2FTun#t",
    "trojan://pw@h.test:443?type=gun&serviceName=g#gun is grpc",
])
def test_vless_and_trojan_grpc_links_both_ways(link: str) -> None:
    parse = vless.parse_link if link.startswith("vless") else trojan.parse_link
    node = parse(link)
    params = _query(link)
    assert node.transport == Transport("grpc", params["serviceName"], params.get("authority", ""))
    again = parse(node.link())
    assert again == node and again.link() == node.link()
    out = _query(node.link())
    assert out["type"] == "grpc" and out["serviceName"] == params["serviceName"]
    assert "path" not in out and "host" not in out
    assert parse_link(link).transport.kind == "grpc"  # through links.py, as a config's node is read


def test_vmess_grpc_json_both_ways() -> None:
    """v2rayN's JSON: net grpc, the service name in `path`, the mode in `type`, the authority in `host`."""
    obj = {"v": "2", "ps": "m", "add": "h.test", "port": "443", "id": UID, "aid": "0", "net": "grpc",
           "type": "gun", "path": "my.Svc", "host": "a.test", "tls": "tls", "sni": "s.test"}
    node = vmess.parse_link("vmess://" + base64.b64encode(json.dumps(obj).encode()).decode())
    assert node.transport == Transport("grpc", "my.Svc", "a.test") and node.sni == "s.test"
    back = json.loads(base64.b64decode(node.link()[len("vmess://"):]))
    assert (back["net"], back["path"], back["host"], back["type"]) == ("grpc", "my.Svc", "a.test", "gun")
    assert vmess.parse_link(node.link()) == node
    for mode in ("", "none"):
        obj["type"] = mode
        assert vmess.parse_link("vmess://" + base64.b64encode(json.dumps(obj).encode()).decode()) == node


@pytest.mark.parametrize(("link", "reason"), [
    (f"vless://{UID}@h.test:443?type=grpc&serviceName=x&mode=multi",
     "mode=multi is not supported: grpc mode multi (TunMulti), which no server here serves (only gun)"),
    ("trojan://pw@h.test:443?type=grpc&serviceName=x&ed=2048", "early data (ed=) is a ws setting, not grpc's"),
])
def test_grpc_refusals(link: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        (vless.parse_link if link.startswith("vless") else trojan.parse_link)(link)


@pytest.mark.parametrize("kind", ["vmess", "vless", "trojan"])
def test_clash_grpc_opts_make_a_grpc_node(kind: str) -> None:
    """A clash proxy with `network: grpc` and grpc-opts becomes a link whose node has the service name.

    (subscription.py reads clash YAML and writes links, never YAML: there is no other way to go.)"""
    proxy = {"name": "g", "type": kind, "server": "192.0.2.1", "port": 443, "network": "grpc",
             "grpc-opts": {"grpc-service-name": "clash.Svc"}, "tls": True, "servername": "s.test", "sni": "s.test"}
    proxy.update({"uuid": UID, "alterId": 0, "cipher": "auto"} if kind != "trojan" else {"password": "pw"})
    link, _ = clash_link(proxy)
    node = parse_link(link)
    assert node.transport == Transport("grpc", "clash.Svc") and node.sni == "s.test"
