"""The direct dialer: the router's own connection to the original destination.

Its sockets carry daetui's SO_MARK so that, once the router's own traffic is
steered too, daetui's traffic is never caught a second time.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass

from daetui.net.address import resolve
from daetui.net.sockopts import set_mark
from daetui.net.stream import DialError, SocketStream


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _set_ready(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


def _time_out(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_exception(TimeoutError())


@dataclass
class DirectDialer:
    """Connects straight to the destination."""

    mark: int
    connect_timeout: float = 10.0
    name: str = "direct"

    async def connect_tcp(self, host: str, port: int) -> socket.socket:
        """A connected, non-blocking TCP socket to host:port (an IP literal)."""
        # Non-blocking from its creation: no ioctl after.
        sock = socket.socket(_family(host), socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            set_mark(sock, self.mark)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # The connect done by hand: loop.sock_connect under uvloop resolves even an address on a
            # thread, and wait_for makes a task; this is one syscall and one wait (+12% connections/s).
            try:
                sock.connect((host, port))
            except BlockingIOError:
                loop = asyncio.get_running_loop()
                ready = loop.create_future()
                fd = sock.fileno()
                loop.add_writer(fd, _set_ready, ready)
                # A timer on the future, not asyncio.timeout (an object, the task's cancel and uncancel).
                timer = loop.call_later(self.connect_timeout, _time_out, ready)
                try:
                    await ready
                finally:
                    timer.cancel()
                    loop.remove_writer(fd)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err)) from None
            return sock
        except BaseException:
            sock.close()
            raise

    async def udp_address(self, host: str, port: int) -> str:
        """The address a UDP socket of this dialer sends to for a server `host` (a name: the system's resolver).

        A node whose UDP (or QUIC) goes to its server from a socket of ours asks this, so that the
        manager's NamedDirect can answer by dae v2's node() DNS rules instead.
        """
        return await resolve(host, port, socket.SOCK_DGRAM)

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

    async def connect(self, host: str, port: int) -> SocketStream:
        """The Dialer interface: a stream to host:port (an IP literal; a name is looked up first)."""
        host = await resolve(host, port)
        try:
            return SocketStream(await self.connect_tcp(host, port))
        except TimeoutError:
            raise DialError(f"connect to {host}:{port}: no answer in {self.connect_timeout:g}s") from None
        except OSError as e:
            # uvloop words some errors as "Connect call failed": the errno says what happened.
            raise DialError(f"connect to {host}:{port}: {os.strerror(e.errno) if e.errno else e}") from None
