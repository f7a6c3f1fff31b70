"""TUIC v5 nodes: commands over one QUIC connection per node (github.com/EAimTY/tuic, SPEC.md).

    tuic://UUID:PASSWORD@HOST:PORT?sni=NAME&alpn=h3&congestion_control=bbr&udp_relay_mode=native#NAME

Every command starts `VER (5) | TYPE`:

    Authenticate  0  UUID (16) | TOKEN (32)                  on a unidirectional stream, first
    Connect       1  ADDR, then the destination's bytes        one bidirectional stream per TCP connection
    Packet        2  ASSOC_ID (2) | PKT_ID (2) | FRAG_TOTAL | FRAG_ID | SIZE (2) | ADDR, then SIZE bytes
    Dissociate    3  ASSOC_ID (2)                              on a unidirectional stream
    Heartbeat     4  (nothing)                                  a QUIC datagram, while anything is relayed

ADDR is `TYPE | address | port (2)`, TYPE 0 a domain (a length byte first),
1 IPv4, 2 IPv6, 0xff none (a Packet's fragments after the first: no address, no port).

The TOKEN is the TLS keying material exporter (RFC 8446 7.5) of the QUIC
connection's TLS session: label the UUID's 16 bytes, context the password,
32 bytes. aioquic has no exporter: `_Quic` keeps the exporter_master_secret
when aioquic's key schedule makes the application secrets, and `exporter()`
does the rest. The server never answers a command; a wrong token makes it
close the connection (mihomo: "AuthenticationFailed"), which every stream
and association on it then reports as a DialError saying so.

UDP: one association (ASSOC_ID) per `datagrams()`, its Packets sent as QUIC
datagrams (udp_relay_mode=native; fragmented to fit a QUIC packet of 1200
bytes) or each on a unidirectional stream of its own (quic); the server
answers in the same mode. Fragments are put back together per association,
a bounded number of packets at a time. Known limits of mihomo's side (quic
mode has neither): it reassembles each QUIC datagram in a goroutine of its
own, so fragments of packets sent back to back may race there and lose the
packet, as they do from mihomo's own client; and it sizes its fragments to
the packets its path MTU discovery aims at, so a long answer in the first
moments of a connection may be lost. (Offering smaller DATAGRAM frames than
65535 does not help: with 1160, mihomo lost every fragmented answer from IPv6.)

One QUIC connection per dialer carries every stream and association; a
connection that ended (idle, the server closed it, a lost network) is
replaced on the next dial, the streams on the old one failing with its
reason. The UDP socket comes from `via.udp_socket()` (a direct dialer: the
node cannot be reached through another proxy node). The congestion control
of the link is accepted; aioquic has reno and cubic only, so bbr runs as cubic.
Each stream's receive window moves with what its reader took (aioquic's own
grows with what arrived, without bound), and a writer waits while more than
SEND_BUFFER of its bytes are unacknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import ssl
import struct
import uuid as uuidlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, unquote

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import (
    ConnectionTerminated,
    DatagramFrameReceived,
    HandshakeCompleted,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from aioquic.tls import Epoch, hkdf_expand_label
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from daetui.net.address import resolve
from daetui.net.quic import ConnectedTransport, KeptConnection, PacedQuic, system_ca
from daetui.net.stream import Dialer, DialError
from daetui.outbound import _share
from daetui.outbound.state import NodeProtocol

log = logging.getLogger(__name__)

VERSION = 5
AUTHENTICATE, CONNECT, PACKET, DISSOCIATE, HEARTBEAT = range(5)
ATYP_DOMAIN, ATYP_IPV4, ATYP_IPV6, ATYP_NONE = 0, 1, 2, 0xFF
RELAY_MODES = ("native", "quic")
# The link's congestion control -> aioquic's algorithm (it has no BBR).
CONGESTION = {"bbr": "cubic", "cubic": "cubic", "new_reno": "reno", "reno": "reno"}
DEFAULT_ALPN = ("h3",)          # what mihomo and tuic-client offer when the link names none

HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 30.0             # QUIC's idle timeout we offer (the server's, when smaller, wins)
HEARTBEAT_INTERVAL = 10.0       # while anything is relayed (less when the server's idle timeout is short)
MAX_DATAGRAM = 65535            # the largest UDP payload
PACKET_HEADER = 10              # VER TYPE ASSOC_ID PKT_ID FRAG_TOTAL FRAG_ID SIZE, before the ADDR
QUIC_PACKET = 1200              # QUIC's smallest max datagram size: fits every path
DATAGRAM_ROOM = QUIC_PACKET - 64  # a DATAGRAM frame's share of one packet (header, AEAD tag, frame header)
STREAM_WINDOW = 2 << 20         # bytes a stream's server may send beyond what its reader took
SEND_BUFFER = 1 << 20           # unacknowledged bytes a stream's writer may have before write() waits
MAX_QUEUED_DATAGRAMS = 256      # QUIC datagrams waiting for the congestion window; more are dropped
MAX_STREAMS = 1024              # QUIC streams of a connection (UDP packets on streams beyond it are dropped)
QUEUE_SIZE = 1024               # datagrams received and not yet read, per association
MAX_PARTIAL = 16                # packets being reassembled at a time, per association
# mihomo's QUIC application error codes (transport/tuic/v5); any close whose reason names
# authentication counts too (other servers word it their own way).
AUTH_ERRORS = {0xFFFFFFF1: "AuthenticationFailed", 0xFFFFFFF2: "AuthenticationTimeout"}


@dataclass(frozen=True)
class TuicNode:
    """A TUIC v5 server and how to reach it (QUIC, so TLS 1.3 always)."""

    protocol: ClassVar[NodeProtocol] = "tuic"

    name: str
    host: str
    port: int
    uuid: str
    password: str = field(repr=False)
    sni: str = ""
    alpn: tuple[str, ...] = ()
    congestion_control: str = ""    # as the link names it ("" = not named: cubic)
    udp_relay_mode: str = "native"
    allow_insecure: bool = False

    def link(self) -> str:
        """The share link of this node (parse_link(link()) == self)."""
        params = [("sni", self.sni), ("alpn", ",".join(self.alpn)),
                  ("congestion_control", self.congestion_control),
                  ("udp_relay_mode", self.udp_relay_mode if self.udp_relay_mode != "native" else ""),
                  ("allow_insecure", "1" if self.allow_insecure else "")]
        return (f"tuic://{self.uuid}:{quote(self.password, safe='')}@{_share.netloc(self.host, self.port)}"
                f"{_share.query_text(params)}{_share.fragment(self.name)}")

    def dialer(self, via: Dialer, *, allow_insecure: bool = False, ca_file: str | Path | None = None,
               handshake_timeout: float = HANDSHAKE_TIMEOUT, **_: Any) -> TuicDialer:
        """A Dialer through this node, its QUIC connection from `via`'s UDP socket.

        `allow_insecure` (daetui's global setting) or the link's accepts any certificate;
        `ca_file` trusts those CAs instead of the system's (as node_context does for TLS nodes).
        """
        return TuicDialer(self, via, allow_insecure=allow_insecure or self.allow_insecure, ca_file=ca_file,
                          handshake_timeout=handshake_timeout)


def parse_link(link: str, name: str = "") -> TuicNode:
    """The node a tuic:// link describes; ValueError says what is wrong with it."""
    parts = _share.split(link, "tuic")
    userinfo = parts.netloc.rpartition("@")[0]
    uid, colon, password = userinfo.partition(":")
    if not colon:
        raise ValueError("no password: TUIC v4's token-only links are not supported (v5: tuic://UUID:PASSWORD@...)")
    uid = _share.canonical_uuid(unquote(uid))
    password = unquote(password)
    params = _share.query(parts)
    version = params.get("version", "5").strip() or "5"
    if version != "5":
        raise ValueError(f"version={version}: only TUIC v5 is supported")
    mode = params.get("udp_relay_mode", "native").strip().lower() or "native"
    if mode not in RELAY_MODES:
        raise ValueError(f"udp_relay_mode={mode}: expected native or quic")
    cc = params.get("congestion_control", params.get("congestion_controller", "")).strip().lower()
    if cc and cc not in CONGESTION:
        raise ValueError(f"congestion_control={cc}: expected bbr, cubic or new_reno")
    if "disable_sni" in params and _share.flag(params, "disable_sni"):
        raise ValueError("disable_sni=1 is not supported (the server name is always sent)")
    insecure = next((k for k in ("allow_insecure", "allowInsecure", "insecure") if k in params), "")
    return TuicNode(
        name=name or unquote(parts.fragment),
        host=_share.host_of(parts),
        port=parts.port or 0,
        uuid=uid,
        password=password,
        sni=params.get("sni") or params.get("peer", ""),
        alpn=_share.alpn_list(params.get("alpn", "")),
        congestion_control=cc,
        udp_relay_mode=mode,
        allow_insecure=_share.flag(params, insecure) if insecure else False,
    )


# -- the wire ----------------------------------------------------------------------------------------

def encode_address(host: str, port: int) -> bytes:
    """host (an IP literal or a domain name) and port as a TUIC ADDR."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        name = host.rstrip(".").encode("idna") if not host.isascii() else host.rstrip(".").encode()
        if not 0 < len(name) <= 255:
            raise DialError(f"domain name of {len(name)} bytes: 1 to 255 fit the address field") from None
        return bytes((ATYP_DOMAIN, len(name))) + name + struct.pack("!H", port)
    return bytes((ATYP_IPV4 if ip.version == 4 else ATYP_IPV6,)) + ip.packed + struct.pack("!H", port)


def parse_address(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[str | None, int, int]:
    """(host, port, end offset) of the ADDR at data[offset:]; host None for type none. ValueError if bad."""
    if len(data) <= offset:
        raise ValueError("no address")
    atyp = data[offset]
    if atyp == ATYP_NONE:
        return None, 0, offset + 1
    if atyp == ATYP_IPV4:
        end = offset + 5
        host = str(ipaddress.IPv4Address(bytes(data[offset + 1:end]))) if len(data) >= end else ""
    elif atyp == ATYP_IPV6:
        end = offset + 17
        host = str(ipaddress.IPv6Address(bytes(data[offset + 1:end]))) if len(data) >= end else ""
    elif atyp == ATYP_DOMAIN:
        if len(data) < offset + 2:
            raise ValueError("address cut short")
        end = offset + 2 + data[offset + 1]
        host = bytes(data[offset + 2:end]).decode("ascii", "replace")
    else:
        raise ValueError(f"unknown address type {atyp:#x}")
    if len(data) < end + 2:
        raise ValueError("address cut short")
    return host, struct.unpack_from("!H", data, end)[0], end + 2


def authenticate(uid: str, token: bytes) -> bytes:
    """The Authenticate command."""
    return bytes((VERSION, AUTHENTICATE)) + uuidlib.UUID(uid).bytes + token


def connect_header(host: str, port: int) -> bytes:
    """The Connect command (the destination's bytes follow it on the stream)."""
    return bytes((VERSION, CONNECT)) + encode_address(host, port)


def dissociate(assoc_id: int) -> bytes:
    """The Dissociate command: the server forgets the association (and closes its UDP socket)."""
    return struct.pack("!BBH", VERSION, DISSOCIATE, assoc_id)


def heartbeat() -> bytes:
    """The Heartbeat command."""
    return bytes((VERSION, HEARTBEAT))


def packets(assoc_id: int, pkt_id: int, data: bytes, host: str, port: int, room: int | None) -> list[bytes]:
    """One UDP datagram as Packet commands, each at most `room` bytes (None: one, unfragmented).

    The address goes in the first fragment only (the others carry type none), as mihomo sends them.
    """
    if len(data) > MAX_DATAGRAM:
        raise DialError(f"datagram of {len(data)} bytes: too large for UDP")
    addr = encode_address(host, port)
    if room is None or PACKET_HEADER + len(addr) + len(data) <= room:
        return [struct.pack("!BBHHBBH", VERSION, PACKET, assoc_id, pkt_id, 1, 0, len(data)) + addr + data]
    size = room - PACKET_HEADER - len(addr)  # each fragment's payload: the first's header is the longest
    total = -(-len(data) // size)
    if size <= 0 or total > 255:
        raise DialError(f"datagram of {len(data)} bytes does not fit 255 fragments of {size}")
    return [struct.pack("!BBHHBBH", VERSION, PACKET, assoc_id, pkt_id, total, i, len(piece))
            + (addr if i == 0 else bytes((ATYP_NONE,))) + piece
            for i, piece in enumerate(data[k:k + size] for k in range(0, len(data), size))]


@dataclass(frozen=True)
class Packet:
    """A Packet command as received: one fragment of a datagram from `host:port` (None after the first)."""

    assoc_id: int
    pkt_id: int
    frag_total: int
    frag_id: int
    host: str | None
    port: int
    data: bytes


def parse_packet(data: bytes | bytearray | memoryview) -> Packet:
    """The Packet command in `data` (a QUIC datagram, or a whole unidirectional stream); ValueError if bad."""
    if len(data) < PACKET_HEADER + 1:
        raise ValueError(f"a packet command of {len(data)} bytes")
    ver, kind, assoc_id, pkt_id, total, frag, size = struct.unpack_from("!BBHHBBH", data)
    if ver != VERSION or kind != PACKET:
        raise ValueError(f"command {ver}/{kind} where a packet (5/2) was expected")
    host, port, end = parse_address(data, PACKET_HEADER)
    if len(data) - end != size:
        raise ValueError(f"a packet saying {size} bytes carries {len(data) - end}")
    if total == 0 or frag >= total:
        raise ValueError(f"fragment {frag} of {total}")
    return Packet(assoc_id, pkt_id, total, frag, host, port, bytes(data[end:]))


class Reassembly:
    """Fragmented packets of one association put back together: at most `max_partial` at a time.

    A packet whose fragments stop coming is dropped when newer ones push it
    out (UDP may lose any of them); a packet growing past MAX_DATAGRAM, or
    whose fragments disagree on their count, is dropped at once.
    """

    def __init__(self, max_partial: int = MAX_PARTIAL) -> None:
        self.max_partial = max_partial
        # pkt_id -> (fragment count, fragments so far, sender from the first fragment, bytes so far)
        self.partial: OrderedDict[int, tuple[int, dict[int, bytes], tuple[str, int] | None, int]] = OrderedDict()
        self.dropped = 0
        self.reassembled = 0   # packets that came in fragments, put back together

    def feed(self, p: Packet) -> tuple[bytes, str, int] | None:
        """The whole datagram and its sender once `p` completes one; else None."""
        if p.frag_total == 1:
            return (p.data, p.host, p.port) if p.host is not None else None
        entry = self.partial.pop(p.pkt_id, None)
        if entry is None:
            entry = (p.frag_total, {}, None, 0)
            while len(self.partial) >= self.max_partial:
                self.partial.popitem(last=False)
                self.dropped += 1
        total, frags, sender, size = entry
        if total != p.frag_total or size + len(p.data) > MAX_DATAGRAM:
            self.dropped += 1
            return None
        if p.frag_id not in frags:
            frags[p.frag_id] = p.data
            size += len(p.data)
        if p.frag_id == 0 and p.host is not None:
            sender = (p.host, p.port)
        if len(frags) < total:
            self.partial[p.pkt_id] = (total, frags, sender, size)
            return None
        if sender is None:
            self.dropped += 1  # a first fragment without an address: nowhere to say it came from
            return None
        self.reassembled += 1
        return b"".join(frags[i] for i in range(total)), sender[0], sender[1]


def exporter(algorithm: hashes.HashAlgorithm, exporter_master_secret: bytes, label: bytes, context: bytes,
             length: int) -> bytes:
    """TLS 1.3's keying material exporter (RFC 8446 7.5) from the session's exporter_master_secret:

        HKDF-Expand-Label(Derive-Secret(secret, label, ""), "exporter", Hash(context), length)
    """
    def digest(data: bytes) -> bytes:
        h = hashes.Hash(algorithm)
        h.update(data)
        return h.finalize()

    secret = hkdf_expand_label(algorithm, exporter_master_secret, label, digest(b""), algorithm.digest_size)
    return hkdf_expand_label(algorithm, secret, b"exporter", digest(context), length)


def token(quic: _Quic, uid: str, password: str) -> bytes:
    """The Authenticate command's token for this connection (its handshake done)."""
    if quic.exporter_secret is None or quic.exporter_hash is None:
        raise DialError("tuic: the TLS handshake left no exporter secret")
    return exporter(quic.exporter_hash, quic.exporter_secret, uuidlib.UUID(uid).bytes, password.encode(), 32)


# -- QUIC ----------------------------------------------------------------------------------------------

class _Quic(PacedQuic):
    """aioquic's connection, keeping what TUIC needs of it: the TLS exporter secret, bounded receive windows."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.exporter_secret: bytes | None = None
        self.exporter_hash: hashes.HashAlgorithm | None = None

    def _update_traffic_key(self, direction: Any, epoch: Epoch, cipher_suite: Any, secret: bytes) -> None:
        # The first 1-RTT key is made right after the server's Finished, when the key schedule holds the
        # master secret and the transcript up to that Finished: exactly what exporter_master_secret is
        # derived from (RFC 8446 7.1). Later the client's Finished joins the transcript: too late.
        if epoch == Epoch.ONE_RTT and self.exporter_secret is None:
            schedule = self.tls.key_schedule
            self.exporter_secret = schedule.derive_secret(b"exp master")
            self.exporter_hash = schedule.algorithm
        super()._update_traffic_key(direction, epoch, cipher_suite, secret)


class _Connection(QuicConnectionProtocol):
    """One QUIC connection to the server: its streams and associations, authenticated once, kept alive."""

    _quic: _Quic

    def __init__(self, quic: _Quic, node: TuicNode, where: str) -> None:
        super().__init__(quic)
        self.node = node
        self.where = where
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ended = ""                  # why the connection ended ("" while it lives)
        self.streams: dict[int, TuicStream] = {}
        self.assocs: dict[int, TuicDatagrams] = {}
        self.incoming: dict[int, bytearray] = {}    # the server's unidirectional streams (quic-mode packets)
        self.progress = asyncio.Event()             # set whenever the server was heard from (acks: writers go on)
        self._beat: asyncio.TimerHandle | None = None

    @property
    def alive(self) -> bool:
        return not self.ended

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(ConnectedTransport(transport))  # type: ignore[arg-type]

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        super().datagram_received(data, addr)
        self.progress.set()

    def error_received(self, exc: Exception) -> None:
        # ICMP for our connected socket (port or host unreachable): nothing will come back.
        self._end(f"tuic {self.where}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}")
        self.abort()

    # -- events ---------------------------------------------------------------------------
    def quic_event_received(self, event: QuicEvent) -> None:
        # Not the base class's handling: it makes an unbounded StreamReader per stream.
        if isinstance(event, StreamDataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.feed(event.data, event.end_stream)
            elif event.stream_id % 4 == 3:
                self._incoming(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, DatagramFrameReceived):
            self._packet(event.data)
        elif isinstance(event, StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.fail(f"tuic {self.where}: the server reset the stream (error {event.error_code:#x}): "
                            "the destination refused or closed it")
            self.incoming.pop(event.stream_id, None)
        elif isinstance(event, StopSendingReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:  # the destination's side is gone: writes fail, reads may still finish
                stream.write_error = (f"tuic {self.where}: the server stopped taking the stream's bytes "
                                      f"(error {event.error_code:#x})")
        elif isinstance(event, HandshakeCompleted):
            self._authenticate()
        elif isinstance(event, ConnectionTerminated):
            self._end(self._why_closed(event))

    def _why_closed(self, event: ConnectionTerminated) -> str:
        phrase = event.reason_phrase or ""
        if event.error_code == 0xFFFFFFF2:
            return (f"tuic {self.where}: the server waited for our authentication in vain "
                    f"({phrase or AUTH_ERRORS[event.error_code]})")
        if event.error_code in AUTH_ERRORS or "auth" in phrase.lower():
            what = phrase or AUTH_ERRORS[event.error_code]
            return (f"tuic {self.where}: authentication rejected by the server ({what}): "
                    "wrong uuid or password")
        what = "QUIC handshake failed" if not self.ready.done() else "QUIC connection closed"
        return f"tuic {self.where}: {what}: {phrase or 'no reason given'} (error {event.error_code:#x})"

    def _authenticate(self) -> None:
        try:
            command = authenticate(self.node.uuid, token(self._quic, self.node.uuid, self.node.password))
        except DialError as e:
            self._end(str(e))
            self.abort()
            return
        sid = self._quic.get_next_available_stream_id(is_unidirectional=True)
        self._quic.send_stream_data(sid, command, end_stream=True)
        self.transmit()
        if not self.ready.done():
            self.ready.set_result(None)
        self._beat = self._loop.call_later(self._beat_interval(), self._heartbeat)

    def _beat_interval(self) -> float:
        # A third of the idle timeout both sides agreed on, when the server's is short (mihomo's default: 15 s).
        idle = min(IDLE_TIMEOUT, self._quic._remote_max_idle_timeout or IDLE_TIMEOUT)
        return max(1.0, min(HEARTBEAT_INTERVAL, idle / 3))

    def _heartbeat(self) -> None:
        self._beat = None
        if self.ended:
            return
        if self.streams or self.assocs:
            # A datagram when the server takes them (TUIC's heartbeat), else a QUIC PING: either keeps it alive.
            if self._quic._remote_max_datagram_frame_size is not None:
                self._quic.send_datagram_frame(heartbeat())
            else:
                self._quic.send_ping(0)
            self.transmit()
        self._beat = self._loop.call_later(self._beat_interval(), self._heartbeat)

    def _incoming(self, sid: int, data: bytes, end: bool) -> None:
        buf = self.incoming.setdefault(sid, bytearray())
        buf += data
        if len(buf) > PACKET_HEADER + 1 + 255 + 2 + MAX_DATAGRAM:
            del self.incoming[sid]
            with contextlib.suppress(Exception):
                self._quic.stop_stream(sid, 0)
            return
        if end:
            del self.incoming[sid]
            self._packet(bytes(buf))

    def _packet(self, data: bytes) -> None:
        try:
            if len(data) >= 2 and data[1] == HEARTBEAT and data[0] == VERSION:
                return
            p = parse_packet(data)
        except ValueError as e:
            log.debug("tuic %s: a malformed packet from the server dropped: %s", self.where, e)
            return
        assoc = self.assocs.get(p.assoc_id)
        if assoc is not None:
            assoc.deliver(p)

    # -- what streams and associations ask ------------------------------------------------------
    def open_stream(self, header: bytes) -> TuicStream:
        """A new bidirectional stream, its Connect header sent."""
        if self.ended:
            raise DialError(self.ended)
        sid = self._quic.get_next_available_stream_id()
        stream = TuicStream(self, sid)
        self.streams[sid] = stream
        self._quic.pace(sid, STREAM_WINDOW)
        self._quic.send_stream_data(sid, header)
        self.transmit()
        return stream

    def forget_stream(self, sid: int) -> None:
        self.streams.pop(sid, None)
        self._quic.forget(sid)

    def unacked(self, sid: int) -> int:
        """Bytes written to the stream the server has not acknowledged yet."""
        return self._quic.unacked(sid)

    def send_packets(self, commands: list[bytes], native: bool) -> None:
        """Packet commands as QUIC datagrams (native) or each on a unidirectional stream of its own;
        dropped, as a full socket buffer would drop them, when those queues are full."""
        if self.ended:
            raise DialError(self.ended)
        quic = self._quic
        if native:
            if len(quic._datagrams_pending) + len(commands) > MAX_QUEUED_DATAGRAMS:
                return  # the congestion window is full
            for c in commands:
                quic.send_datagram_frame(c)
        else:
            if len(quic._streams) >= MAX_STREAMS:
                return
            for c in commands:
                quic.send_stream_data(quic.get_next_available_stream_id(is_unidirectional=True), c,
                                      end_stream=True)
        self.transmit()

    def send_command(self, command: bytes) -> None:
        """A command on a unidirectional stream of its own (Dissociate)."""
        if self.ended:
            return
        self._quic.send_stream_data(self._quic.get_next_available_stream_id(is_unidirectional=True), command,
                                    end_stream=True)
        self.transmit()

    def datagram_room(self) -> int:
        """How long a Packet command sent as a QUIC datagram may be."""
        peer = self._quic._remote_max_datagram_frame_size
        if peer is None:
            raise DialError(f"tuic {self.where}: the server takes no QUIC datagrams (udp_relay_mode=native): "
                            "try udp_relay_mode=quic")
        return min(DATAGRAM_ROOM, peer - 8)

    def new_assoc_id(self) -> int:
        for _ in range(64):
            candidate = random.getrandbits(16)
            if candidate not in self.assocs:
                return candidate
        raise DialError(f"tuic {self.where}: no free association id")

    # -- ending ---------------------------------------------------------------------------
    def _end(self, why: str) -> None:
        if self.ended:
            return
        self.ended = why
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        if not self.ready.done():
            self.ready.set_exception(DialError(why))
            self.ready.exception()  # retrieved: nobody may be waiting any more
        for stream in list(self.streams.values()):
            stream.fail(why)
        for assoc in list(self.assocs.values()):
            assoc.fail(why)
        self.progress.set()

    def abort(self) -> None:
        """Close the connection (CONNECTION_CLOSE, no error) and its socket now, without the draining wait."""
        self._end(f"tuic {self.where}: connection closed")
        with contextlib.suppress(Exception):
            self._quic.close(error_code=0)
            self.transmit()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()


class TuicStream:
    """A stream to the destination: a bidirectional QUIC stream after its Connect command."""

    raw: socket.socket | None = None  # bytes go through Python (QUIC): never spliced

    def __init__(self, conn: _Connection, sid: int) -> None:
        self.conn = conn
        self.sid = sid
        self.buf = bytearray()
        self.eof = False
        self.error = ""
        self.write_error = ""
        self.eof_sent = False
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None

    def feed(self, data: bytes, end: bool) -> None:
        self.buf += data
        self.eof = self.eof or end
        self._wake()

    def fail(self, why: str) -> None:
        if not self.error:
            self.error = why
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self, n: int) -> bytes:
        while not self.buf:
            if self.eof:
                return b""
            if self.error:
                raise DialError(self.error)
            if self.closed:
                raise DialError("tuic: stream closed")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = bytes(self.buf[:n])
        del self.buf[:n]
        if self.conn._quic.took(self.sid, len(data)):
            self.conn.transmit()  # the server gets the window the reader made
        return data

    async def write(self, data: bytes) -> None:
        if self.error or self.write_error:
            raise DialError(self.error or self.write_error)
        if self.closed:
            raise DialError("tuic: stream closed")
        conn = self.conn
        try:
            conn._quic.send_stream_data(self.sid, data)
        except (ValueError, RuntimeError) as e:  # after our end, after a reset: aioquic's own words
            raise DialError(f"tuic {conn.where}: {e}") from None
        conn.transmit()
        # Wait while too much is unacknowledged: QUIC would buffer whatever it is given.
        while conn.unacked(self.sid) > SEND_BUFFER and not self.error:
            conn.progress.clear()
            try:
                async with asyncio.timeout(IDLE_TIMEOUT):
                    await conn.progress.wait()
            except TimeoutError:
                raise DialError(f"tuic {conn.where}: the server acknowledged nothing for {IDLE_TIMEOUT:g}s") \
                    from None
        if self.error:
            raise DialError(self.error)

    async def write_eof(self) -> None:
        if self.error or self.write_error or self.closed:
            return
        with contextlib.suppress(ValueError, RuntimeError):
            self.conn._quic.send_stream_data(self.sid, b"", end_stream=True)
            self.eof_sent = True
            self.conn.transmit()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        conn = self.conn
        conn.forget_stream(self.sid)
        self._wake()
        if conn.ended:
            return
        with contextlib.suppress(Exception):
            # Both ways ended now (the server drops the destination's connection). Our side, once ended
            # with FIN, is left to QUIC to deliver: a reset would drop what is not acknowledged yet.
            stream = conn._quic._streams.get(self.sid)
            if stream is not None and not self.eof_sent and not stream.sender.is_finished:
                conn._quic.reset_stream(self.sid, 0)
            if stream is not None and not stream.receiver.is_finished:
                conn._quic.stop_stream(self.sid, 0)
            conn.transmit()


class TuicDatagrams:
    """A UDP association over the dialer's connection: datagrams to and from any destination."""

    def __init__(self, conn: _Connection, native: bool) -> None:
        self.conn = conn
        self.native = native
        self.assoc_id = conn.new_assoc_id()
        self.pkt_id = 0
        self.reassembly = Reassembly()
        # None wakes a waiting recv() when the association ends.
        self.queue: asyncio.Queue[tuple[bytes, str, int] | None] = asyncio.Queue(QUEUE_SIZE)
        self.error = ""
        self.room = conn.datagram_room() if native else None
        conn.assocs[self.assoc_id] = self

    async def send(self, data: bytes, host: str, port: int) -> None:
        if self.error:
            raise DialError(self.error)
        self.pkt_id = (self.pkt_id + 1) & 0xFFFF
        self.conn.send_packets(packets(self.assoc_id, self.pkt_id, data, host, port, self.room), self.native)

    def deliver(self, p: Packet) -> None:
        whole = self.reassembly.feed(p)
        if whole is not None and not self.queue.full():  # nobody reads: dropped, as a full socket buffer would
            self.queue.put_nowait(whole)

    async def recv(self) -> tuple[bytes, str, int]:
        """The next datagram from any destination, and which one; DialError once the association ended."""
        if self.error:
            raise DialError(self.error)
        item = await self.queue.get()
        if item is None:
            self.queue.put_nowait(None)  # for any other waiter
            raise DialError(self.error)
        return item

    def fail(self, why: str) -> None:
        if self.error:
            return
        self.error = why
        self.conn.assocs.pop(self.assoc_id, None)
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)

    def close(self) -> None:
        if self.error:
            return
        self.conn.send_command(dissociate(self.assoc_id))
        self.fail("tuic: UDP association closed")


class TuicDialer:
    """Dials destinations through a TUIC server, every stream and association on one QUIC connection."""

    def __init__(self, node: TuicNode, via: Dialer, *, allow_insecure: bool = False,
                 ca_file: str | Path | None = None, handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.node = node
        self.name = node.name
        self.via = via
        self.allow_insecure = allow_insecure
        self.ca_file = str(ca_file) if ca_file is not None else system_ca()
        self.handshake_timeout = handshake_timeout
        host = f"[{node.host}]" if ":" in node.host else node.host
        self.where = f"{node.name} ({host}:{node.port})" if node.name else f"{host}:{node.port}"
        self._kept: KeptConnection[_Connection] = KeptConnection(self._open)
        self.handshakes = 0

    async def connect(self, host: str, port: int) -> TuicStream:
        """A stream to host:port (an address, or a name the server resolves)."""
        header = connect_header(host, port)   # a bad destination fails before any connection
        return (await self._connection()).open_stream(header)

    async def datagrams(self) -> TuicDatagrams:
        """A UDP association: datagrams to any destination (the link's udp_relay_mode)."""
        return TuicDatagrams(await self._connection(), self.node.udp_relay_mode == "native")

    @property
    def connection(self) -> _Connection | None:
        """The connection kept to the server (None before the first dial), alive or not."""
        return self._kept.current

    async def _connection(self) -> _Connection:
        return await self._kept.get()

    def _configuration(self) -> QuicConfiguration:
        node = self.node
        cfg = QuicConfiguration(is_client=True, alpn_protocols=list(node.alpn or DEFAULT_ALPN),
                                idle_timeout=IDLE_TIMEOUT, server_name=node.sni or node.host,
                                max_datagram_frame_size=MAX_DATAGRAM)
        if hasattr(cfg, "congestion_control_algorithm"):  # aioquic 1.2 on; before it, reno only
            cfg.congestion_control_algorithm = CONGESTION.get(node.congestion_control, "cubic")
        if self.allow_insecure:
            cfg.verify_mode = ssl.CERT_NONE
        elif self.ca_file:
            # Read and checked here: aioquic would only open it inside the handshake, failing there unworded.
            try:
                cadata = Path(self.ca_file).read_bytes()
                x509.load_pem_x509_certificates(cadata)
            except (OSError, ValueError) as e:
                raise DialError(f"CA file {self.ca_file}: {getattr(e, 'strerror', None) or e}") from None
            cfg.load_verify_locations(cadata=cadata)
        return cfg

    async def _open(self) -> _Connection:
        node = self.node
        udp_socket = getattr(self.via, "udp_socket", None)
        if udp_socket is None:
            raise DialError(f"tuic {self.where}: reaching the server through {self.via.name} is not supported "
                            "(QUIC needs a UDP socket of its own)")
        ip = await resolve(node.host, node.port, socket.SOCK_DGRAM)
        cfg = self._configuration()
        try:
            sock = udp_socket(ip, node.port)
        except OSError as e:
            raise DialError(f"tuic {self.where}: {e.strerror or e}") from None
        try:
            peer = sock.getpeername()  # the form datagrams arrive from: QUIC's path is matched against it
            _, conn = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _Connection(_Quic(configuration=cfg), node, self.where), sock=sock)
        except BaseException:
            sock.close()
            raise
        try:
            conn.connect(peer)
            async with asyncio.timeout(self.handshake_timeout):
                await conn.ready
        except TimeoutError:
            conn.abort()
            raise DialError(f"tuic {self.where}: QUIC handshake timeout (no answer in {self.handshake_timeout:g}s)") \
                from None
        except DialError:
            conn.abort()
            raise
        except BaseException:
            conn.abort()
            raise
        self.handshakes += 1
        return conn

    def close(self) -> None:
        """Close the connection (and a handshake under way)."""
        self._kept.close()
