"""Destination addresses on the wire, as trojan (SOCKS5 style) and vmess/vless (port first) write them.

SOCKS5 style (RFC 1928, used by trojan): ATYP, address, port.
    ATYP 1: 4-byte IPv4; 3: a length byte and the domain; 4: 16-byte IPv6.
V2Ray style (vmess, vless): port, ATYP, address.
    ATYP 1: IPv4; 2: domain; 3: IPv6.

Shared by trojan.py, vless.py and vmess.py (other outbounds keep their own);
"""

from __future__ import annotations

import ipaddress
import struct

from daetui.net.address import ip_of
from daetui.net.stream import DialError

# (IPv4, domain, IPv6) type bytes of each layout.
SOCKS_TYPES = (1, 3, 4)
V2RAY_TYPES = (1, 2, 3)


def _host_bytes(host: str, types: tuple[int, int, int]) -> bytes:
    """The type byte and the address bytes of host (an IP literal or a domain name)."""
    try:
        ip = ip_of(host.strip("[]"))
    except ValueError:
        name = host.rstrip(".").encode("idna") if not host.isascii() else host.rstrip(".").encode()
        if not 0 < len(name) <= 255:
            raise DialError(f"domain name of {len(name)} bytes: 1 to 255 fit the address field") from None
        return bytes((types[1], len(name))) + name
    return bytes((types[0] if ip.version == 4 else types[2],)) + ip.packed


def socks_address(host: str, port: int) -> bytes:
    """host and port in SOCKS5 style: ATYP, address, port."""
    return _host_bytes(host, SOCKS_TYPES) + struct.pack("!H", port)


def v2ray_address(host: str, port: int) -> bytes:
    """host and port in vmess/vless style: port, ATYP, address."""
    return struct.pack("!H", port) + _host_bytes(host, V2RAY_TYPES)


def parse_socks_address(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[str, int, int] | None:
    """(host, port, end offset) of a SOCKS5-style address at data[offset:]; None if it is not all there yet.

    Raises DialError on an unknown address type.
    """
    if len(data) <= offset:
        return None
    atyp = data[offset]
    if atyp == 1:
        end = offset + 1 + 4
        host = str(ipaddress.IPv4Address(bytes(data[offset + 1:end]))) if len(data) >= end else ""
    elif atyp == 4:
        end = offset + 1 + 16
        host = str(ipaddress.IPv6Address(bytes(data[offset + 1:end]))) if len(data) >= end else ""
    elif atyp == 3:
        if len(data) < offset + 2:
            return None
        end = offset + 2 + data[offset + 1]
        host = bytes(data[offset + 2:end]).decode("ascii", "replace")
    else:
        raise DialError(f"unknown address type {atyp}")
    if len(data) < end + 2:
        return None
    (port,) = struct.unpack_from("!H", data, end)
    return host, port, end + 2
