"""Trojan nodes: TLS to the server, then a password hash and a SOCKS5-like request.

    trojan://PASSWORD@HOST:PORT?sni=NAME&allowInsecure=1&alpn=h2,http/1.1#NAME
    trojan://PASSWORD@HOST:443?sni=NAME&type=ws&host=CDN.NAME&path=%2Ftj#NAME   (also type=h2)
    trojan://PASSWORD@HOST:443?sni=NAME&type=grpc&serviceName=SVC#NAME

After the TLS handshake the client sends, in one write,

    hex(SHA224(password)) CRLF  CMD ATYP ADDR PORT  CRLF  [payload]

with CMD 1 (CONNECT: the rest of the stream is the destination's bytes) or
3 (UDP ASSOCIATE: the rest is a sequence of frames, each
`ATYP ADDR PORT LENGTH CRLF PAYLOAD`, in both directions). The server never
answers the request itself: a wrong password shows as the server closing
(v2ray) or as another server's bytes (trojan-gfw hands what it cannot
authenticate to its `remote_addr`, a web server).

Half-close: the client's EOF is not passed on by default. TLS can carry it
(close_notify), but trojan-gfw ends the whole session on it and drops what
the destination still had to say, while v2ray keeps answering; with
`half_close=True` (for servers known to keep answering) write_eof sends it.

Over ws, h2 or grpc (transport.py) the same bytes travel inside TLS, then the
WebSocket, the HTTP/2 request or the gRPC call: trojan-go's, v2ray's and mihomo's.
A half-close is then the transport's: none over ws, the end of the request
body over h2 and grpc. quic and other transports, and REALITY, are refused.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ssl
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote, unquote

from daetui.net.buffered import Buffered
from daetui.net.stream import Dialer, DialError, Stream
from daetui.outbound import _share
from daetui.outbound._address import parse_socks_address, socks_address
from daetui.outbound.state import NodeProtocol
from daetui.outbound.transport import TCP, Transport, open_stream, parse_type, tls_context

CONNECT = 1
UDP_ASSOCIATE = 3
CRLF = b"\r\n"
MAX_DATAGRAM = 65535 - 8  # what a frame's 16-bit length can carry, headers aside
HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class TrojanNode:
    """A trojan server and how to reach it (TLS always)."""

    protocol: ClassVar[NodeProtocol] = "trojan"

    name: str
    host: str
    port: int
    password: str = field(repr=False)
    sni: str = ""
    allow_insecure: bool = False
    alpn: tuple[str, ...] = ()
    transport: Transport = TCP

    def link(self) -> str:
        """The share link of this node (parse_link(link()) == self)."""
        t = self.transport
        params = [("sni", self.sni), ("allowInsecure", "1" if self.allow_insecure else ""),
                  ("alpn", ",".join(self.alpn))]
        if t.kind != "tcp":
            params += t.link_params()
        return (f"trojan://{quote(self.password, safe='')}@{_share.netloc(self.host, self.port)}"
                f"{_share.query_text(params)}{_share.fragment(self.name)}")

    def dialer(self, via: Dialer, *, allow_insecure: bool = False, ca_file: str | Path | None = None,
               ssl_context: ssl.SSLContext | None = None, handshake_timeout: float = HANDSHAKE_TIMEOUT,
               half_close: bool = False) -> TrojanDialer:
        """A Dialer through this node, its TLS connection made through `via` (the TLS settings:
        node_context; `half_close`: see the module's docstring)."""
        ctx = tls_context(self, self.transport, allow_insecure, ca_file, ssl_context)
        return TrojanDialer(self, via, ctx, handshake_timeout, half_close)


def parse_link(link: str, name: str = "") -> TrojanNode:
    """The node a trojan:// link describes; ValueError says what is wrong with it."""
    parts = _share.split(link, "trojan")
    userinfo = parts.netloc.rpartition("@")[0]
    password = unquote(userinfo)
    if not password:
        raise ValueError("no password (trojan://PASSWORD@host:port)")
    params = _share.query(parts)
    security = params.get("security", "tls").lower() or "tls"
    if security == "reality":
        raise ValueError("security=reality is not supported: no REALITY client here (trojan runs over tls)")
    if security != "tls":
        raise ValueError(f"security={security} is not supported (trojan runs over tls)")
    if params.get("flow"):
        raise ValueError(f"flow={params['flow']} is not supported (only no flow)")
    transport = parse_type(params.get("type", ""), path=params.get("path", ""), host=params.get("host", ""),
                           ed=params.get("ed", ""), header_type=params.get("headerType", ""), tls=True,
                           service_name=params.get("serviceName", ""),
                           authority=params.get("authority", ""), mode=params.get("mode", ""))
    return TrojanNode(
        name=name or unquote(parts.fragment),
        host=_share.host_of(parts),
        port=parts.port or 0,
        password=password,
        sni=params.get("sni") or params.get("peer", ""),
        allow_insecure=_share.flag(params, "allowInsecure") if "allowInsecure" in params
        else _share.flag(params, "allow_insecure"),
        alpn=_share.alpn_list(params.get("alpn", "")),
        transport=transport,
    )


@functools.lru_cache(maxsize=256)
def password_hash(password: str) -> bytes:
    """The 56 hex digits that stand for the password on the wire (worked out once per password)."""
    return hashlib.sha224(password.encode()).hexdigest().encode()


def request(password: str, command: int, host: str, port: int) -> bytes:
    """The request a client sends first (payload not included)."""
    return password_hash(password) + CRLF + bytes((command,)) + socks_address(host, port) + CRLF


def udp_frame(data: bytes, host: str, port: int) -> bytes:
    """One datagram as a frame in the UDP-associate stream."""
    if len(data) > MAX_DATAGRAM:
        raise DialError(f"datagram of {len(data)} bytes: too large for a trojan frame")
    return socks_address(host, port) + struct.pack("!H", len(data)) + CRLF + data


class TrojanDialer:
    """Dials destinations through a trojan server."""

    def __init__(self, node: TrojanNode, via: Dialer, ctx: ssl.SSLContext,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT, half_close: bool = False) -> None:
        self.node = node
        self.name = node.name
        self.via = via
        self.ctx = ctx
        self.handshake_timeout = handshake_timeout
        self.half_close = half_close

    async def _session(self, command: int, host: str, port: int) -> Stream:
        node = self.node
        # One write: trojan-gfw parses the request from the first record it reads.
        return await open_stream(self.via, node.host, node.port, node.transport, self.ctx, node.sni,
                                 self.handshake_timeout, self.half_close, request(node.password, command, host, port),
                                 "trojan")

    async def connect(self, host: str, port: int) -> Stream:
        """A stream to host:port through the server (the TLS stream itself, after the request)."""
        return await self._session(CONNECT, host, port)

    async def datagrams(self) -> TrojanDatagrams:
        """A UDP association: datagrams to any destination, framed in one TLS stream."""
        # The request's own address is not used by servers for UDP: every frame names its own.
        return TrojanDatagrams(await self._session(UDP_ASSOCIATE, "0.0.0.0", 0))


class TrojanDatagrams:
    """Datagrams to and from any destination over one trojan UDP-associate stream."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.reader = Buffered(stream)
        self._send_lock = asyncio.Lock()

    async def send(self, data: bytes, host: str, port: int) -> None:
        frame = udp_frame(data, host, port)
        async with self._send_lock:
            await self.stream.write(frame)

    async def recv(self) -> tuple[bytes, str, int]:
        """The next datagram and its sender; DialError when the stream ends or is not frames."""
        buf = self.reader
        while True:
            parsed = parse_socks_address(buf.buf)
            if parsed is not None and len(buf.buf) >= parsed[2] + 4:
                break
            if len(buf.buf) > 2 + 255 + 2 + 4:
                raise DialError("trojan: malformed UDP frame")
            if not await buf.fill():
                raise DialError("trojan: the server closed the UDP association")
        host, port, end = parsed
        (length,) = struct.unpack_from("!H", buf.buf, end)
        if bytes(buf.buf[end + 2:end + 4]) != CRLF:
            raise DialError("trojan: malformed UDP frame (no CRLF after the length)")
        del buf.buf[:end + 4]
        return await buf.read_exactly(length, "a UDP frame"), host, port

    def close(self) -> None:
        self.stream.close()
