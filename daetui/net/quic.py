"""What every QUIC client here shares (DoQ/DoH3 upstreams, hysteria2 and tuic nodes): aioquic on a connected
UDP socket of the router's own, the system's CAs, and one kept connection per server opened once.

aioquic writes with `sendto(data, addr)`; uvloop (libuv) refuses an address on a connected socket
(EISCONN) where asyncio's own loop ignores it, and the path is the one the socket is connected to
either way: `ConnectedTransport` drops the address (and applies an obfuscation, hysteria2's
Salamander, when given one).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar


def system_ca() -> str | None:
    """The system's CA bundle, as the TLS nodes and upstreams use it (aioquic on its own would take certifi's)."""
    paths = ssl.get_default_verify_paths()
    for path in (paths.cafile, paths.openssl_cafile):
        if path and os.path.isfile(path):
            return path
    return None


class ConnectedTransport(asyncio.DatagramTransport):
    """A connected UDP socket's transport that takes aioquic's `sendto(data, addr)` as `sendto(data)`."""

    def __init__(self, transport: asyncio.DatagramTransport,
                 transform: Callable[[bytes], bytes] | None = None) -> None:
        super().__init__()
        self._t = transport
        self._transform = transform  # applied to every datagram sent (hysteria2's Salamander)

    def sendto(self, data: bytes | bytearray | memoryview, addr: object = None) -> None:
        self._t.sendto(self._transform(bytes(data)) if self._transform is not None else data)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._t.get_extra_info(name, default)

    def close(self) -> None:
        self._t.close()

    def is_closing(self) -> bool:
        return self._t.is_closing()

    def abort(self) -> None:
        self._t.abort()


class _Alive(Protocol):
    @property
    def alive(self) -> bool: ...

    def abort(self) -> None: ...


C = TypeVar("C", bound=_Alive)


class KeptConnection(Generic[C]):
    """The one connection a dialer keeps to its server: opened by `open` once however many dials wait for it,
    reopened by the first dial after it died."""

    def __init__(self, open_: Callable[[], Awaitable[C]]) -> None:
        self._open = open_
        self.current: C | None = None
        self._opening: asyncio.Task[C] | None = None

    async def get(self) -> C:
        """The live connection: the kept one, or a new one (its opener's DialError when that fails)."""
        c = self.current
        if c is not None and c.alive:
            return c
        if self._opening is None:
            self._opening = asyncio.get_running_loop().create_task(self._opened())
            # Retrieved even when every dial that waited for it has given up.
            self._opening.add_done_callback(lambda t: t.cancelled() or t.exception())
        task = self._opening
        try:
            # Shielded: one dial's cancellation does not end the handshake the others wait for.
            return await asyncio.shield(task)
        finally:
            if task.done() and self._opening is task:
                self._opening = None

    async def _opened(self) -> C:
        conn = await self._open()
        if self.current is not None:
            self.current.abort()
        self.current = conn
        return conn

    def close(self) -> None:
        """Abort the connection and a handshake under way."""
        if self._opening is not None:
            self._opening.cancel()
            self._opening = None
        if self.current is not None:
            self.current.abort()
            self.current = None
