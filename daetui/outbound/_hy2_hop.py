"""Hysteria2's port hopping: the client's packets go to a port of a range that changes every so often.

    hysteria2://PASSWORD@HOST:443,20000-30000/        (or HOST:443/?mport=20000-30000)

The server listens on one port and its firewall sends the whole range there
(hysteria's docs: an iptables/nft DNAT); a censor that throttles one UDP
flow sees many short ones. As hysteria's own client does, the hops are hidden
from QUIC: one peer address throughout, a new UDP socket to a random port of
the range every `interval` seconds, the previous socket kept until the next
hop for replies still on their way.

Used by hysteria2.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import socket
from collections.abc import Callable

HOP_INTERVAL = 30.0          # hysteria's default
MAX_RANGES = 64
_SPEC = re.compile(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*")


def parse_ports(text: str) -> tuple[tuple[int, int], ...]:
    """`443,5000-6000` as ranges ((443, 443), (5000, 6000)); ValueError says what is wrong."""
    text = text.strip().replace(" ", "")
    if not _SPEC.fullmatch(text):
        raise ValueError(f"bad ports {text!r} (expected e.g. 443,5000-6000)")
    ranges = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        a, b = int(low), int(high or low)
        if not 0 < a <= b < 65536:
            raise ValueError(f"bad port range {part!r}")
        ranges.append((a, b))
    if len(ranges) > MAX_RANGES:
        raise ValueError(f"more than {MAX_RANGES} port ranges")
    return tuple(ranges)


def pick_port(ranges: tuple[tuple[int, int], ...]) -> int:
    """A port of the ranges, each port as likely as any other."""
    n = secrets.randbelow(sum(b - a + 1 for a, b in ranges))
    for a, b in ranges:
        if n <= b - a:
            return a + n
        n -= b - a + 1
    raise AssertionError("unreachable")


class _Feed(asyncio.DatagramProtocol):
    """One hop's socket: what it receives goes to the QUIC connection as from the one peer address."""

    def __init__(self, receive: Callable[[bytes, object], None], peer: object) -> None:
        self.receive = receive
        self.peer = peer

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.receive(data, self.peer)

    def error_received(self, exc: Exception) -> None:
        pass  # a port of the range that is closed: the next hop goes elsewhere; QUIC's timers judge the rest


class Hopper(asyncio.DatagramTransport):
    """The transport of a QUIC connection whose server port hops (see the module's docstring)."""

    def __init__(self, open_socket: Callable[[int], socket.socket], ranges: tuple[tuple[int, int], ...],
                 interval: float = HOP_INTERVAL) -> None:
        super().__init__()
        self.open_socket = open_socket
        self.ranges = ranges
        self.interval = interval
        self.peer: object = None
        self.receive: Callable[[bytes, object], None] = lambda data, addr: None
        self.current: asyncio.DatagramTransport | None = None
        self.previous: asyncio.DatagramTransport | None = None
        self.ports: list[int] = []     # every port hopped to, in order (the last is the current one)
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    async def start(self, receive: Callable[[bytes, object], None]) -> object:
        """Open the first hop; `receive` gets every datagram. Returns the peer address QUIC is to use."""
        self.receive = receive
        sock = self.open_socket(pick_port(self.ranges))
        self.peer = sock.getpeername()
        await self._take(sock)
        return self.peer

    async def _take(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: _Feed(self._received, self.peer), sock=sock)
        except BaseException:
            sock.close()
            raise
        if self._closed:
            transport.close()
            return
        if self.previous is not None:
            self.previous.close()
        self.previous, self.current = self.current, transport
        self.ports.append(sock.getpeername()[1])
        self._timer = loop.call_later(self.interval, self._hop)

    def _received(self, data: bytes, addr: object) -> None:
        if not self._closed:
            self.receive(data, addr)

    def _hop(self) -> None:
        self._timer = None
        if self._closed:
            return
        try:
            sock = self.open_socket(pick_port(self.ranges))
        except OSError:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._hop)  # try again later
            return
        task = asyncio.ensure_future(self._take(sock))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    # -- DatagramTransport ------------------------------------------------------------------
    def sendto(self, data: bytes | bytearray | memoryview, addr: object = None) -> None:
        if self.current is not None and not self._closed:
            self.current.sendto(data)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.current.get_extra_info(name, default) if self.current is not None else default

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for t in (self.previous, self.current):
            if t is not None:
                with contextlib.suppress(Exception):
                    t.close()
        self.previous = self.current = None

    def abort(self) -> None:
        self.close()
