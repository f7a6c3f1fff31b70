"""What every QUIC client here shares (DoQ/DoH3 upstreams, hysteria2 and tuic nodes): aioquic on a connected
UDP socket of the router's own, the system's CAs, one kept connection per server opened once, and
stream windows paced by their readers (which reaches into aioquic's internals:
tests/unit/test_quic_internals.py fails when they move).

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
from typing import Any, Generic, Protocol, TypeVar

from aioquic.quic.connection import MAX_STREAM_DATA_FRAME_CAPACITY, QuicConnection
from aioquic.quic.packet import QuicFrameType


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


class PacedQuic(QuicConnection):
    """aioquic's connection with the receive window of chosen streams tied to their readers.

    A stream given to `pace()` may receive `window` bytes beyond what its reader took (`took()`), never
    more: aioquic on its own doubles a stream's window as data arrives, read or not, so a slow reader
    behind a fast server would buffer without bound. Credit goes back in steps of a quarter window (not
    a frame per read). Hysteria2's and TUIC's TCP streams are paced; their other streams are aioquic's.
    """

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.read_limits: dict[int, int] = {}  # stream id -> the offset the peer may send up to
        self._paced: dict[int, list[int]] = {}  # stream id -> [bytes its reader took, its window]

    def pace(self, sid: int, window: int) -> None:
        """Tie stream `sid`'s receive window to its reader."""
        self.read_limits[sid] = window
        self._paced[sid] = [0, window]

    def took(self, sid: int, n: int) -> bool:
        """The reader of `sid` took n more bytes: True when its window moved (transmit, to tell the peer)."""
        paced = self._paced.get(sid)
        if paced is None:
            return False
        paced[0] += n
        taken, window = paced
        if taken + window - self.read_limits[sid] < window // 4:
            return False
        self.read_limits[sid] = taken + window
        return True

    def forget(self, sid: int) -> None:
        """Stream `sid` is done with."""
        self.read_limits.pop(sid, None)
        self._paced.pop(sid, None)

    def unacked(self, sid: int) -> int:
        """Bytes written on stream `sid` that the peer has not acknowledged yet."""
        # aioquic keeps them in the sender's buffer until acknowledged, with no public count of them.
        s = self._streams.get(sid)
        return len(s.sender._buffer) if s is not None else 0

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        limit = self.read_limits.get(stream.stream_id)
        if limit is None:
            super()._write_stream_limits(builder=builder, space=space, stream=stream)
            return
        # As aioquic's own, without its doubling of the window as data arrives.
        if limit > stream.max_stream_data_local:
            stream.max_stream_data_local = limit
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(QuicFrameType.MAX_STREAM_DATA, capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                                      handler=self._on_max_stream_data_delivery, handler_args=(stream,))
            buf.push_uint_var(stream.stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local
