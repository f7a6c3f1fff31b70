"""The channel between the main process and a relay worker: pickled messages, length-prefixed, on a socketpair.

Both ends are daetui's own processes (the socketpair is made by the main
process and given to the worker it starts), so pickle carries the messages:
tuples whose first item names them, and the node objects a worker dials
through. Nothing from the network is unpickled here.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket
import struct
from collections.abc import Callable
from typing import Any

log = logging.getLogger("daetui.control")

_HEADER = struct.Struct("!I")
MAX_MESSAGE = 16 << 20        # a frame: a turn's messages (plans, opens, ends, counts; a node's pickle is a few KB)
HIGH_WATER = 4 << 20          # unsent bytes past which the other end counts as not reading (congested)


class Channel(asyncio.Protocol):
    """One end: `send(message)`; each message received goes to `on_message`, the end to `on_lost`.

    Messages sent in one turn of the event loop leave together, as one pickled list in one frame:
    under load a worker's opens and ends, and the main process's plans, cost one write and one
    read per turn, not one each.
    """

    def __init__(self, on_message: Callable[[tuple[Any, ...]], None],
                 on_lost: Callable[[Exception | None], None]) -> None:
        self.on_message = on_message
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._out: list[tuple[Any, ...]] = []
        self.closed = False

    @classmethod
    async def open(cls, sock: socket.socket, on_message: Callable[[tuple[Any, ...]], None],
                   on_lost: Callable[[Exception | None], None]) -> Channel:
        """Run a channel on `sock` (one end of a socketpair) on the running loop."""
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_unix_connection(lambda: cls(on_message, on_lost), sock=sock)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are no asyncio.Transport subclass

    def send(self, message: tuple[Any, ...]) -> None:
        """Queue one message, to leave at the end of this turn of the loop (dropped once the channel is
        closed: the other end is gone)."""
        if self.transport is None or self.closed:
            return
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(message)

    def congested(self) -> bool:
        """More than HIGH_WATER waits unsent: the other end is not reading (stopped, hung)."""
        return self.transport is not None and self.transport.get_write_buffer_size() > HIGH_WATER

    def _flush(self) -> None:
        batch, self._out = self._out, []
        if self.transport is None or self.closed or not batch:
            return
        data = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
        self.transport.write(_HEADER.pack(len(data)) + data)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        at = 0
        while len(buf) - at >= _HEADER.size:
            (n,) = _HEADER.unpack_from(buf, at)
            if n > MAX_MESSAGE:
                log.error("relay channel: a message of %d bytes: closing it", n)
                self.close()
                return
            if len(buf) - at - _HEADER.size < n:
                break
            start = at + _HEADER.size
            batch = pickle.loads(buf[start:start + n])
            at = start + n
            for message in batch:
                try:
                    self.on_message(message)
                except Exception:
                    log.exception("relay channel: handling %r", message[0] if message else message)
        if at:
            del buf[:at]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.on_lost(exc)

    def close(self) -> None:
        """Send what is queued, then close."""
        self._flush()
        self.closed = True
        if self.transport is not None:
            self.transport.close()
