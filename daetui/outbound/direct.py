"""The direct dialer: the router's own connection to the original destination.

Its sockets carry daetui's SO_MARK so that, once the router's own traffic is
steered too, daetui's traffic is never caught a second time.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from daetui.control.sockopts import set_mark


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


@dataclass
class DirectDialer:
    """Connects straight to the destination."""

    mark: int
    connect_timeout: float = 10.0
    name: str = "direct"

    async def connect_tcp(self, host: str, port: int) -> socket.socket:
        """A connected, non-blocking TCP socket to host:port (an IP literal)."""
        sock = socket.socket(_family(host), socket.SOCK_STREAM)
        try:
            set_mark(sock, self.mark)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), self.connect_timeout)
            return sock
        except BaseException:
            sock.close()
            raise

    def udp_socket(self, host: str, port: int) -> socket.socket:
        """A connected, non-blocking UDP socket to host:port."""
        sock = socket.socket(_family(host), socket.SOCK_DGRAM)
        try:
            set_mark(sock, self.mark)
            sock.setblocking(False)
            sock.connect((host, port))
            return sock
        except BaseException:
            sock.close()
            raise
