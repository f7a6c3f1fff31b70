"""Socket options the transparent path needs, with their Linux numbers.

Python's socket module lacks some of them; the values are from
<linux/in.h> and <linux/in6.h>.
"""

from __future__ import annotations

import contextlib
import socket
import struct

IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IP_RECVORIGDSTADDR = getattr(socket, "IP_RECVORIGDSTADDR", 20)
IP_ORIGDSTADDR = IP_RECVORIGDSTADDR
IPV6_TRANSPARENT = getattr(socket, "IPV6_TRANSPARENT", 75)
IPV6_RECVORIGDSTADDR = getattr(socket, "IPV6_RECVORIGDSTADDR", 74)
IPV6_ORIGDSTADDR = IPV6_RECVORIGDSTADDR
SO_MARK = getattr(socket, "SO_MARK", 36)
SOL_IPV6 = getattr(socket, "SOL_IPV6", socket.IPPROTO_IPV6)


def set_transparent(sock: socket.socket) -> None:
    """Let the socket use an address that is not the router's (the original destination)."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(SOL_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)


def set_mark(sock: socket.socket, mark: int) -> None:
    """Mark daetui's own outgoing traffic, so that it is never caught again."""
    if mark:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)


def parse_origdst(ancdata: list[tuple[int, int, bytes]]) -> tuple[str, int] | None:
    """The original destination from IP(V6)_ORIGDSTADDR ancillary data."""
    for level, type_, data in ancdata:
        if level == socket.SOL_IP and type_ == IP_ORIGDSTADDR and len(data) >= 8:
            port = struct.unpack_from("!H", data, 2)[0]
            return socket.inet_ntop(socket.AF_INET, data[4:8]), port
        if level == SOL_IPV6 and type_ == IPV6_ORIGDSTADDR and len(data) >= 24:
            port = struct.unpack_from("!H", data, 2)[0]
            return socket.inet_ntop(socket.AF_INET6, data[8:24]), port
    return None


def reply_socket(addr: tuple[str, int], scope: int = 0) -> socket.socket:
    """A transparent UDP socket bound to `addr` (an address not the router's): replies leave from it.

    `scope` is the interface of an IPv6 link-local address. It is never read from.
    """
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        set_transparent(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # never read
        sock.bind((addr[0], addr[1], 0, scope) if family == socket.AF_INET6 else addr)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


_LINGER_ZERO = struct.pack("ii", 1, 0)  # struct linger {l_onoff = 1, l_linger = 0}


def reset_on_close(sock: socket.socket) -> None:
    """Make the socket's close send RST rather than FIN, so the peer sees a refusal or a failure
    passed on, not a clean end. A socket already gone is left alone."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
