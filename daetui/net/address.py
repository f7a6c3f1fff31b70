"""Host text: whether it is an IP literal, and a name's first address."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket

from daetui.net.stream import DialError


@functools.lru_cache(maxsize=4096)
def ip_of(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """ipaddress.ip_address(text), remembered (bounded): every connection parses its client and its
    destination, mostly ones seen before, and a parse is over a microsecond of Python."""
    return ipaddress.ip_address(text)


def is_address(host: str) -> bool:
    """True for an IPv4 or IPv6 literal."""
    try:
        ip_of(host)
    except ValueError:
        return False
    return True


async def resolve(host: str, port: int, kind: socket.SocketKind = socket.SOCK_STREAM) -> str:
    """An IP literal for host: itself when it is one, else its first address from the system's
    resolver (off the loop); DialError "host: reason" when it has none."""
    if is_address(host):
        return host
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=kind)
    except socket.gaierror as e:
        raise DialError(f"{host}: {e.strerror}") from None
    return str(infos[0][4][0])
