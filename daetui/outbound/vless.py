"""VLESS nodes over TCP, WebSocket, HTTP/2 or gRPC, with or without TLS (h2: always TLS).

    vless://UUID@HOST:PORT?encryption=none&security=tls&sni=NAME&type=tcp&allowInsecure=1#NAME
    vless://UUID@HOST:443?security=tls&sni=NAME&type=ws&host=CDN.NAME&path=%2Fray%3Fed%3D2048#NAME
    vless://UUID@HOST:443?security=tls&type=h2&host=A,B&path=%2Fray#NAME
    vless://UUID@HOST:443?security=tls&sni=NAME&type=grpc&serviceName=SVC&mode=gun#NAME

Request (client -> server), then the payload:

    version 0 | UUID (16) | addons length (0) | command | port (2) | ATYP | address

with command 1 (TCP) or 2 (UDP; V2Ray-style address, ATYP 1 IPv4, 2 domain,
3 IPv6). Response (server -> client), before the destination's bytes:

    version 0 | addons length | addons

The server sends its response together with the destination's first bytes,
so it is read on the first `read()`, not in `connect()`; a wrong UUID shows
there as the server closing (DialError). UDP datagrams travel as a 2-byte
length and the payload, for the one destination in the request (so each
destination gets its own connection; see _udp.py).

The transport (`type`, `host`, `path`, `ed`; grpc's `serviceName`, `authority`, `mode`)
is transport.py's; refused with a reason: other transports (quic, kcp, xhttp, ...), grpc's
`mode=multi`, `headerType=http`, `flow` (XTLS, xtls-rprx-vision, also with REALITY),
`security=xtls`, `encryption` other than none.

`security=reality` (`pbk`, `sid`, `sni`, `fp`, `spx`; reality.py) runs over tcp only.
"""

from __future__ import annotations

import functools
import socket
import ssl
import struct
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote

from daetui.net.buffered import Buffered
from daetui.net.stream import Codec, CodecOver, Dialer, DialError, Stream, WrappedStream, framing_of
from daetui.outbound import _share
from daetui.outbound._address import v2ray_address
from daetui.outbound._udp import PerDestination
from daetui.outbound.reality import Reality
from daetui.outbound.reality import from_params as reality_params
from daetui.outbound.reality import open_session as reality_session
from daetui.outbound.state import NodeProtocol
from daetui.outbound.transport import TCP, Transport, open_stream, parse_type, tls_context

VERSION = 0
CMD_TCP = 1
CMD_UDP = 2
HANDSHAKE_TIMEOUT = 10.0
MAX_DATAGRAM = 65535


@dataclass(frozen=True)
class VlessNode:
    """A VLESS server and how to reach it (its transport: tcp, ws, h2 or grpc)."""

    protocol: ClassVar[NodeProtocol] = "vless"

    name: str
    host: str
    port: int
    uuid: str
    tls: bool = False
    sni: str = ""
    allow_insecure: bool = False
    alpn: tuple[str, ...] = ()
    transport: Transport = TCP
    reality: Reality | None = None  # security=reality (then `tls` is False)

    def link(self) -> str:
        """The share link of this node (parse_link(link()) == self)."""
        t = self.transport
        params = [("encryption", "none"), ("security", self._security), *t.link_params(),
                  ("sni", self.sni), ("allowInsecure", "1" if self.allow_insecure else ""),
                  ("alpn", ",".join(self.alpn)), *(self.reality.params() if self.reality else ())]
        return (f"vless://{self.uuid}@{_share.netloc(self.host, self.port)}"
                f"{_share.query_text(params)}{_share.fragment(self.name)}")

    @property
    def _security(self) -> str:
        return "reality" if self.reality else "tls" if self.tls else "none"

    def dialer(self, via: Dialer, *, allow_insecure: bool = False, ca_file: str | Path | None = None,
               ssl_context: ssl.SSLContext | None = None, handshake_timeout: float = HANDSHAKE_TIMEOUT) -> VlessDialer:
        """A Dialer through this node, its connection made through `via` (the TLS settings: node_context)."""
        ctx = tls_context(self, self.transport, allow_insecure, ca_file, ssl_context) if self.tls else None
        return VlessDialer(self, via, ctx, handshake_timeout)


def parse_link(link: str, name: str = "") -> VlessNode:
    """The node a vless:// link describes; ValueError says what is wrong with it."""
    parts = _share.split(link, "vless")
    uid = _share.canonical_uuid(unquote(parts.netloc.rpartition("@")[0]))
    params = _share.query(parts)
    encryption = params.get("encryption", "none").lower() or "none"
    if encryption != "none":
        raise ValueError(f"encryption={encryption} is not supported (vless has none)")
    if params.get("flow"):
        raise ValueError(f"flow={params['flow']} (XTLS) is not supported (only no flow)")
    security = params.get("security", "none").lower() or "none"
    if security not in ("none", "tls", "reality"):
        raise ValueError(f"security={security} is not supported (none, tls or reality)")
    reality = None
    if security == "reality":
        reality = reality_params(params)
        if (params.get("type") or "tcp").strip().lower() != "tcp":
            raise ValueError(f"security=reality over type={params['type']} is not supported (reality: tcp only)")
    transport = parse_type(params.get("type", ""), path=params.get("path", ""), host=params.get("host", ""),
                           ed=params.get("ed", ""), header_type=params.get("headerType", ""),
                           tls=security == "tls", service_name=params.get("serviceName", ""),
                           authority=params.get("authority", ""), mode=params.get("mode", ""))
    return VlessNode(
        name=name or unquote(parts.fragment),
        host=_share.host_of(parts),
        port=parts.port or 0,
        uuid=uid,
        tls=security == "tls",
        sni=params.get("sni") or params.get("peer", ""),
        allow_insecure=_share.flag(params, "allowInsecure"),
        alpn=_share.alpn_list(params.get("alpn", "")),
        transport=transport,
        reality=reality,
    )


def request(uid: str, command: int, host: str, port: int) -> bytes:
    """The request header (no addons)."""
    return bytes((VERSION,)) + _uuid_bytes(uid) + b"\x00" + bytes((command,)) + v2ray_address(host, port)


@functools.lru_cache(maxsize=256)
def _uuid_bytes(uid: str) -> bytes:
    """The UUID's 16 bytes, parsed once per node rather than per connection."""
    return uuidlib.UUID(uid).bytes


_NO_RESPONSE = ("vless: the server closed without a response (wrong id, not a vless server, "
                "or the destination closed at once)")


def _addons_length(head: bytes) -> int:
    """The response header's first two bytes checked: how many addon bytes follow."""
    if head[0] != VERSION:
        raise DialError(f"vless: response version {head[0]} (expected {VERSION}): not a vless server?")
    return head[1]


async def read_response(reader: Buffered) -> None:
    """Read and check the server's response header; DialError if it is not one."""
    await reader.hold(2, _NO_RESPONSE)
    head = await reader.read_exactly(2)
    if n := _addons_length(head):
        await reader.read_exactly(n, "the vless response addons")


class ResponseCodec(CodecOver):
    """The Codec below a vless stream, with the server's response header checked and cut off first."""

    def __init__(self, below: Codec) -> None:
        super().__init__(below)
        self.head = b""  # the response header so far
        self.answered = False

    def decode(self, data: bytes) -> bytes | bytearray:
        plain = self.below.decode(data)
        if self.answered:
            return plain
        self.head += plain
        if len(self.head) < 2:
            return b""
        end = 2 + _addons_length(self.head[:2])
        if len(self.head) < end:
            return b""
        out, self.head, self.answered = self.head[end:], b"", True
        return out

    def decode_eof(self) -> None:
        self.below.decode_eof()
        if not self.answered:
            raise DialError(_NO_RESPONSE)


class VlessStream(WrappedStream):
    """A stream to the destination through a vless server; the response header is checked on the first read."""

    def __init__(self, inner: Stream) -> None:
        super().__init__(inner)
        self.reader = Buffered(inner)
        self._replied = False

    async def read(self, n: int) -> bytes:
        if not self._replied:
            await read_response(self.reader)
            self._replied = True
        return await self.reader.read_some(n)

    def framed(self) -> tuple[socket.socket, Codec] | None:
        """The stream below's socket and Codec, the response header cut off by a ResponseCodec."""
        below = None if self.reader.buf else framing_of(self.inner)
        if below is None:
            return None
        return below if self._replied else (below[0], ResponseCodec(below[1]))


class VlessPackets:
    """Datagrams to one destination over a vless UDP session (length-prefixed)."""

    def __init__(self, inner: Stream) -> None:
        self.inner = inner
        self.reader = Buffered(inner)
        self._replied = False

    async def send(self, data: bytes) -> None:
        if len(data) > MAX_DATAGRAM:
            raise DialError(f"datagram of {len(data)} bytes: too large for vless")
        await self.inner.write(struct.pack("!H", len(data)) + data)

    async def recv(self) -> bytes:
        if not self._replied:
            await read_response(self.reader)
            self._replied = True
        (length,) = struct.unpack("!H", await self.reader.read_exactly(2, "a vless datagram's length"))
        return await self.reader.read_exactly(length, "a vless datagram")

    def close(self) -> None:
        self.inner.close()


class VlessDialer:
    """Dials destinations through a vless server."""

    def __init__(self, node: VlessNode, via: Dialer, ctx: ssl.SSLContext | None,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.node = node
        self.name = node.name
        self.via = via
        self.ctx = ctx
        self.handshake_timeout = handshake_timeout

    async def _session(self, command: int, host: str, port: int) -> Stream:
        node = self.node
        if node.reality is not None:
            return await reality_session(self.via, node.host, node.port, node.reality, node.sni, node.alpn,
                                         self.handshake_timeout, request(node.uuid, command, host, port), "vless")
        # vless servers are v2ray/xray, which keep answering after close_notify: a real half-close.
        return await open_stream(self.via, node.host, node.port, node.transport, self.ctx, node.sni,
                                 self.handshake_timeout, True, request(node.uuid, command, host, port), "vless")

    async def connect(self, host: str, port: int) -> VlessStream:
        """A stream to host:port through the server."""
        return VlessStream(await self._session(CMD_TCP, host, port))

    async def _packets(self, host: str, port: int) -> VlessPackets:
        return VlessPackets(await self._session(CMD_UDP, host, port))

    async def datagrams(self) -> PerDestination:
        """Datagrams to any destination: a vless UDP session per destination."""
        return PerDestination(self._packets, "vless")
