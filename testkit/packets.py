"""Packets made by hand: Ethernet + IPv4/IPv6 + TCP/UDP, checksums right.

For running the kernel programs on a packet of one's choosing
(`testkit.progtest`): MACs, DSCP, ports, TCP flags, IPv6 extension headers
and IPv4 fragments are all the caller's to set. Plain struct packing; no
scapy (not installed here, and nothing below needs more).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from daetui.abi.flowrecord import FlowKey
from daetui.routing.matcher import FlowFacts

# The lab's LAN client and the router's LAN port (daetui.lab.topology), so a
# crafted packet looks like the lab's real ones.
CLIENT_MAC = "02:00:5e:00:02:10"
ROUTER_MAC = "02:00:5e:00:02:01"

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10

IPPROTO_HOPOPTS, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ROUTING, IPPROTO_FRAGMENT = 0, 6, 17, 43, 44
IPPROTO_ICMP, IPPROTO_DSTOPTS = 1, 60

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def mac_bytes(mac: str) -> bytes:
    """'02:00:5e:00:02:10' -> 6 bytes."""
    raw = bytes(int(x, 16) for x in mac.replace("-", ":").split(":"))
    if len(raw) != 6:
        raise ValueError(f"{mac!r} is not a MAC address")
    return raw


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s >> 16) + (s & 0xFFFF)
    return ~s & 0xFFFF


def _pseudo_header(src: IPAddress, dst: IPAddress, proto: int, length: int) -> bytes:
    if src.version == 4:
        return src.packed + dst.packed + struct.pack("!BBH", 0, proto, length)
    return src.packed + dst.packed + struct.pack("!IxxxB", length, proto)


def tcp_segment(src: IPAddress, dst: IPAddress, sport: int, dport: int, flags: int, payload: bytes = b"",
                seq: int = 1, ack: int = 0, window: int = 64240) -> bytes:
    """A TCP header (no options) and payload, checksummed over the pseudo-header."""
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, window, 0, 0)
    csum = checksum(_pseudo_header(src, dst, IPPROTO_TCP, len(hdr) + len(payload)) + hdr + payload)
    return hdr[:16] + struct.pack("!H", csum) + hdr[18:] + payload


def udp_datagram(src: IPAddress, dst: IPAddress, sport: int, dport: int, payload: bytes = b"") -> bytes:
    """A UDP header and payload, checksummed over the pseudo-header (0 sent as 0xffff)."""
    length = 8 + len(payload)
    hdr = struct.pack("!HHHH", sport, dport, length, 0)
    csum = checksum(_pseudo_header(src, dst, IPPROTO_UDP, length) + hdr + payload) or 0xFFFF
    return hdr[:6] + struct.pack("!H", csum) + payload


def ipv4_header(src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address, proto: int, payload_len: int,
                dscp: int = 0, ecn: int = 0, ttl: int = 64, frag_off: int = 0x4000, ident: int = 1,
                options: bytes = b"") -> bytes:
    """An IPv4 header; `frag_off` is the raw flags+offset field (0x4000: DF, not a fragment)."""
    if len(options) % 4:
        raise ValueError("IPv4 options must fill whole 32-bit words")
    ihl = 5 + len(options) // 4
    hdr = struct.pack("!BBHHHBBH4s4s", 4 << 4 | ihl, dscp << 2 | ecn, ihl * 4 + payload_len, ident, frag_off,
                      ttl, proto, 0, src.packed, dst.packed) + options
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]


def ipv6_header(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, next_header: int, payload_len: int,
                dscp: int = 0, ecn: int = 0, flow_label: int = 0, hop_limit: int = 64) -> bytes:
    """An IPv6 header; DSCP and ECN make the traffic class."""
    first = 6 << 28 | (dscp << 2 | ecn) << 20 | flow_label & 0xFFFFF
    return struct.pack("!IHBB16s16s", first, payload_len, next_header, hop_limit, src.packed, dst.packed)


def ipv6_extension(next_header: int, length_units: int = 0) -> bytes:
    """A hop-by-hop/routing/destination-options header of (length_units + 1) * 8 bytes, padded with PadN."""
    size = (length_units + 1) * 8
    return struct.pack("!BB", next_header, length_units) + bytes([1, size - 4]) + b"\0" * (size - 4)


def ethernet(dst_mac: str, src_mac: str, ethertype: int) -> bytes:
    return mac_bytes(dst_mac) + mac_bytes(src_mac) + struct.pack("!H", ethertype)


@dataclass(frozen=True)
class Packet:
    """One packet of a flow from a LAN client, described by what rules can see of it.

    `build()` gives the bytes on the wire; `flow_key()` the key the kernel
    files the flow under; `facts()` what the user-space matcher is told.
    """

    src: str
    dst: str
    sport: int = 40000
    dport: int = 443
    proto: str = "tcp"                    # "tcp" | "udp"
    src_mac: str = CLIENT_MAC
    dst_mac: str = ROUTER_MAC
    dscp: int = 0
    ecn: int = 0
    tcp_flags: int = TCP_SYN              # TCP only
    payload: bytes = b""
    ipv6_extensions: tuple[int, ...] = ()  # IPv6: extension header types in order (HOPOPTS, ROUTING, DSTOPTS...)
    frag_off: int = 0x4000                # IPv4: flags + fragment offset field
    ipv4_options: bytes = b""

    @property
    def source(self) -> IPAddress:
        return ipaddress.ip_address(self.src)

    @property
    def destination(self) -> IPAddress:
        return ipaddress.ip_address(self.dst)

    @property
    def version(self) -> int:
        return self.destination.version

    def build(self) -> bytes:
        """Ethernet + IP + TCP/UDP as a LAN client would send it."""
        src, dst = self.source, self.destination
        if src.version != dst.version:
            raise ValueError(f"{self.src} and {self.dst} are of different families")
        if self.proto == "tcp":
            l4, proto = tcp_segment(src, dst, self.sport, self.dport, self.tcp_flags, self.payload), IPPROTO_TCP
        elif self.proto == "udp":
            l4, proto = udp_datagram(src, dst, self.sport, self.dport, self.payload), IPPROTO_UDP
        else:
            raise ValueError(f"proto {self.proto!r}: tcp or udp")
        if isinstance(src, ipaddress.IPv4Address) and isinstance(dst, ipaddress.IPv4Address):
            ip = ipv4_header(src, dst, proto, len(l4), self.dscp, self.ecn, frag_off=self.frag_off,
                             options=self.ipv4_options)
            return ethernet(self.dst_mac, self.src_mac, ETH_P_IP) + ip + l4
        assert isinstance(src, ipaddress.IPv6Address) and isinstance(dst, ipaddress.IPv6Address)
        # Extension headers chain: each one's next-header field names the one after it.
        chain = list(self.ipv6_extensions)
        exts = b"".join(ipv6_extension(nxt) for nxt in [*chain[1:], proto]) if chain else b""
        first = chain[0] if chain else proto
        ip = ipv6_header(src, dst, first, len(exts) + len(l4), self.dscp, self.ecn)
        return ethernet(self.dst_mac, self.src_mac, ETH_P_IPV6) + ip + exts + l4

    def flow_key(self) -> FlowKey:
        """The flow's key as `routing_tuples` holds it (the client's side)."""
        return FlowKey(self.source, self.sport, self.destination, self.dport, self.proto)

    def facts(self, iface_in: str | None = None, iface_out: str | None = None,
              domain_bits: int | None = None, domain: str | None = None) -> FlowFacts:
        """What the user-space matcher knows of this packet's flow."""
        return FlowFacts(self.source, self.destination, self.sport, self.dport, self.proto,
                         mac_bytes(self.src_mac), self.dscp, iface_in, iface_out, None, domain, domain_bits)
