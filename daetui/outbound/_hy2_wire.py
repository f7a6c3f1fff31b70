"""Hysteria2's messages on the wire: the TCP request and response, UDP messages and their fragments, Salamander.

From the protocol's spec (v2.hysteria.network/docs/developers/Protocol/);
varints are QUIC's (RFC 9000 16), numbers big-endian.

    TCPRequest    varint 0x401, varint address length, "host:port", varint padding length, padding
    TCPResponse   uint8 status (0 ok), varint message length, message, varint padding length, padding
    UDPMessage    uint32 session id, uint16 packet id, uint8 fragment id, uint8 fragment count,
                  varint address length, "host:port", payload            (one QUIC datagram each)

A UDP message too large for one QUIC datagram is cut into fragments that
share its packet id, each with the whole header; the receiver puts them back
together (`Reassembler`, bounded) and drops a packet missing a fragment.

Salamander (the `obfs` option) hides every QUIC packet: 8 random bytes of
salt, then the packet XOR BLAKE2b-256(password + salt), the 32-byte hash
repeated.

Used by hysteria2.py and _hy2_conn.py.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import secrets
import struct
from collections import OrderedDict
from dataclasses import dataclass

from daetui.net.stream import DialError

TCP_REQUEST = 0x401
STATUS_OK = 0
MAX_ADDRESS = 2048          # "host:port" (hysteria's own bound)
MAX_MESSAGE = 2048          # a TCPResponse's message
MAX_PADDING = 4096          # what we accept of the server's padding
MAX_UDP_PACKET = 65535      # a reassembled datagram
SALT = 8

_HEAD = struct.Struct("!IHBB")


# -- varints -----------------------------------------------------------------------------------

def varint(n: int) -> bytes:
    """n as a QUIC variable-length integer."""
    if n < 0x40:
        return bytes((n,))
    if n < 0x4000:
        return (n | 0x4000).to_bytes(2, "big")
    if n < 0x4000_0000:
        return (n | 0x8000_0000).to_bytes(4, "big")
    if n < 0x4000_0000_0000_0000:
        return (n | 0xC000_0000_0000_0000).to_bytes(8, "big")
    raise ValueError(f"{n} is too large for a varint")


def read_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
    """The varint at `pos` and the position after it; None when `buf` ends inside it."""
    if pos >= len(buf):
        return None
    first = buf[pos]
    size = 1 << (first >> 6)
    if pos + size > len(buf):
        return None
    value = first & 0x3F
    for b in buf[pos + 1:pos + size]:
        value = (value << 8) | b
    return value, pos + size


# -- addresses ---------------------------------------------------------------------------------

def address(host: str, port: int) -> str:
    """`host:port` as hysteria writes it (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_address(text: str) -> tuple[str, int]:
    """`host:port` back to host (IPv6 without brackets, in its short form) and port; ValueError when it is not."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"bad address {text[:80]!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        pass
    return host, int(port)


def padding(low: int, high: int) -> bytes:
    """Random padding of a random length in [low, high] (letters and digits, as hysteria sends)."""
    n = low + secrets.randbelow(high - low + 1)
    return secrets.token_urlsafe(n)[:n].encode()


# -- TCP ---------------------------------------------------------------------------------------

def tcp_request(host: str, port: int, pad: bytes = b"") -> bytes:
    """What a client writes first on a new bidirectional stream to reach host:port."""
    addr = address(host, port).encode()
    if len(addr) > MAX_ADDRESS:
        raise DialError(f"hysteria2: address of {len(addr)} bytes: too long")
    return varint(TCP_REQUEST) + varint(len(addr)) + addr + varint(len(pad)) + pad


@dataclass(frozen=True)
class TcpResponse:
    """The server's answer to a TCPRequest."""

    status: int
    message: str
    size: int   # bytes it took on the stream: what follows is the destination's


def parse_tcp_response(buf: bytes | bytearray) -> TcpResponse | None:
    """The TCPResponse at the start of `buf`; None while incomplete; DialError when it is not one."""
    if not buf:
        return None
    status = buf[0]
    got = read_varint(buf, 1)
    if got is None:
        return None
    n, pos = got
    if n > MAX_MESSAGE:
        raise DialError(f"hysteria2: malformed response (a message of {n} bytes)")
    if len(buf) < pos + n:
        return None
    message = bytes(buf[pos:pos + n]).decode("utf-8", "replace")
    got = read_varint(buf, pos + n)
    if got is None:
        return None
    pad, pos = got
    if pad > MAX_PADDING:
        raise DialError(f"hysteria2: malformed response ({pad} bytes of padding)")
    if len(buf) < pos + pad:
        return None
    return TcpResponse(status, message, pos + pad)


# -- UDP ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UdpMessage:
    """One UDPMessage (a whole datagram when fragment_count is 1)."""

    session: int
    packet: int
    fragment: int
    count: int
    host: str
    port: int
    data: bytes


def udp_header(session: int, packet: int, fragment: int, count: int, addr: bytes) -> bytes:
    return _HEAD.pack(session, packet, fragment, count) + varint(len(addr)) + addr


def udp_messages(session: int, packet: int, host: str, port: int, data: bytes, max_size: int) -> list[bytes]:
    """The QUIC datagrams that carry `data` to host:port: one, or fragments of at most max_size bytes each."""
    addr = address(host, port).encode()
    head = len(udp_header(session, packet, 0, 1, addr))
    if head + len(data) <= max_size:
        return [udp_header(session, packet, 0, 1, addr) + data]
    room = max_size - head
    if room <= 0:
        raise DialError(f"hysteria2: address {address(host, port)!r} leaves no room in a datagram")
    count = -(-len(data) // room)
    if count > 255:
        raise DialError(f"hysteria2: datagram of {len(data)} bytes: too large (more than 255 fragments)")
    return [udp_header(session, packet, i, count, addr) + data[i * room:(i + 1) * room] for i in range(count)]


def parse_udp_message(buf: bytes) -> UdpMessage:
    """A received QUIC datagram as a UDPMessage; ValueError when it is not one."""
    if len(buf) < _HEAD.size + 1:
        raise ValueError(f"a UDP message of {len(buf)} bytes")
    session, packet, fragment, count = _HEAD.unpack_from(buf)
    got = read_varint(buf, _HEAD.size)
    if got is None:
        raise ValueError("a UDP message cut inside its address length")
    n, pos = got
    if n > MAX_ADDRESS or pos + n > len(buf):
        raise ValueError(f"a UDP message with an address of {n} bytes")
    if count == 0 or fragment >= count:
        raise ValueError(f"a UDP message's fragment {fragment} of {count}")
    host, port = split_address(buf[pos:pos + n].decode("utf-8", "replace"))
    return UdpMessage(session, packet, fragment, count, host, port, buf[pos + n:])


class _Partial:
    __slots__ = ("count", "host", "parts", "port", "size")

    def __init__(self, first: UdpMessage) -> None:
        self.count = first.count
        self.host, self.port = first.host, first.port
        self.parts: dict[int, bytes] = {}
        self.size = 0


class Reassembler:
    """Fragments of one session's datagrams put back together, in any order.

    At most `max_packets` datagrams, of `max_bytes` together, are waiting for
    fragments (the oldest is dropped for a new one: a fragment that never
    comes costs its datagram, never memory), none larger than MAX_UDP_PACKET.
    """

    def __init__(self, max_packets: int = 16, max_bytes: int = 128 << 10) -> None:
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self.pending: OrderedDict[int, _Partial] = OrderedDict()
        self.size = 0       # bytes held in pending
        self.dropped = 0

    def _drop(self, packet: int) -> None:
        self.size -= self.pending.pop(packet).size
        self.dropped += 1

    def add(self, msg: UdpMessage) -> UdpMessage | None:
        """The whole datagram once `msg` completes one; None while fragments are missing."""
        if msg.count == 1:
            return msg
        p = self.pending.get(msg.packet)
        if p is None or p.count != msg.count:
            if p is not None:  # the same id for another datagram (ids wrap): the old one is lost
                self._drop(msg.packet)
            p = self.pending[msg.packet] = _Partial(msg)
            while len(self.pending) > self.max_packets:
                self._drop(next(iter(self.pending)))
        if msg.fragment in p.parts:
            return None  # a duplicate
        p.parts[msg.fragment] = msg.data
        p.size += len(msg.data)
        self.size += len(msg.data)
        if p.size > MAX_UDP_PACKET:
            self._drop(msg.packet)
            return None
        if len(p.parts) < p.count:
            while self.size > self.max_bytes:
                self._drop(next(iter(self.pending)))  # the oldest first: this one, if it is alone
            return None
        self.size -= p.size
        del self.pending[msg.packet]
        data = b"".join(p.parts[i] for i in range(p.count))
        return UdpMessage(msg.session, msg.packet, 0, 1, p.host, p.port, data)


# -- Salamander --------------------------------------------------------------------------------

class Salamander:
    """The Salamander obfuscation of QUIC packets, keyed by the obfs password."""

    def __init__(self, password: str) -> None:
        if len(password.encode()) < 4:
            # hysteria refuses shorter ones too: the key would be trivial to find
            raise ValueError("obfs-password must be at least 4 bytes")
        self.key = password.encode()

    def _mask(self, salt: bytes, n: int) -> int:
        h = hashlib.blake2b(self.key + salt, digest_size=32).digest()
        return int.from_bytes((h * (n // 32 + 1))[:n], "big")

    def obfuscate(self, packet: bytes) -> bytes:
        """What goes on the wire for one QUIC packet."""
        salt = os.urandom(SALT)
        n = len(packet)
        return salt + (int.from_bytes(packet, "big") ^ self._mask(salt, n)).to_bytes(n, "big")

    def deobfuscate(self, wire: bytes) -> bytes | None:
        """The QUIC packet in what came off the wire; None when it is too short to be one."""
        if len(wire) <= SALT:
            return None
        salt, body = wire[:SALT], wire[SALT:]
        n = len(body)
        return (int.from_bytes(body, "big") ^ self._mask(salt, n)).to_bytes(n, "big")
