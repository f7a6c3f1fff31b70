"""TUIC v5's commands on the wire: addresses, Packet fragments and their reassembly, the TLS exporter.

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
32 bytes. aioquic has no exporter: `_Quic` (_tuic_conn.py) keeps the
exporter_master_secret when aioquic's key schedule makes the application
secrets, and `exporter()` does the rest.

Fragments are put back together per association (`Reassembly`), a bounded
number of packets at a time.

Used by tuic.py and _tuic_conn.py.
"""

from __future__ import annotations

import ipaddress
import struct
import uuid as uuidlib
from collections import OrderedDict
from dataclasses import dataclass

from aioquic.tls import hkdf_expand_label
from cryptography.hazmat.primitives import hashes

from daetui.net.stream import DialError

VERSION = 5
AUTHENTICATE, CONNECT, PACKET, DISSOCIATE, HEARTBEAT = range(5)
ATYP_DOMAIN, ATYP_IPV4, ATYP_IPV6, ATYP_NONE = 0, 1, 2, 0xFF
MAX_DATAGRAM = 65535            # the largest UDP payload
PACKET_HEADER = 10              # VER TYPE ASSOC_ID PKT_ID FRAG_TOTAL FRAG_ID SIZE, before the ADDR
MAX_PARTIAL = 16                # packets being reassembled at a time, per association


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
