"""UDP for protocols whose association names one destination (vless, vmess): one session per destination.

The Datagrams interface sends to any destination; vless and vmess carry
datagrams for the destination named in their request only. So each
destination gets a session of its own, opened on the first datagram to it
and read by a task that queues what comes back under that destination's
name. Sessions that end (the server closed, a bad frame) are dropped and
reopened by the next datagram; at most `max_sessions` are kept (the least
recently used closed first).

Shared by vless.py and vmess.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol

from daetui.outbound.base import DialError

log = logging.getLogger(__name__)

MAX_SESSIONS = 64
QUEUE_SIZE = 1024


class PacketSession(Protocol):
    """Datagrams to and from one destination over one proxy connection."""

    async def send(self, data: bytes) -> None:
        ...

    async def recv(self) -> bytes:
        """The next datagram; DialError when the session ends."""
        ...

    def close(self) -> None:
        ...


Opener = Callable[[str, int], Awaitable[PacketSession]]


class PerDestination:
    """Datagrams to any destination, one PacketSession each."""

    def __init__(self, opener: Opener, protocol: str, max_sessions: int = MAX_SESSIONS) -> None:
        self.opener = opener
        self.protocol = protocol
        self.max_sessions = max_sessions
        self.sessions: OrderedDict[tuple[str, int], tuple[PacketSession, asyncio.Task[None]]] = OrderedDict()
        self.queue: asyncio.Queue[tuple[bytes, str, int]] = asyncio.Queue(QUEUE_SIZE)
        self.closed = False

    async def _pump(self, key: tuple[str, int], session: PacketSession) -> None:
        try:
            while True:
                data = await session.recv()
                if self.queue.full():
                    continue  # nobody reads: drop, as a full socket buffer would
                self.queue.put_nowait((data, key[0], key[1]))
        except (DialError, OSError) as e:
            log.debug("%s UDP session to %s:%d ended: %s", self.protocol, key[0], key[1], e)
        finally:
            entry = self.sessions.get(key)
            if entry is not None and entry[0] is session:
                del self.sessions[key]
            session.close()

    async def send(self, data: bytes, host: str, port: int) -> None:
        """Send to host:port, opening a session to it first if there is none."""
        if self.closed:
            raise DialError(f"{self.protocol}: UDP association closed")
        key = (host, port)
        entry = self.sessions.get(key)
        if entry is None:
            session = await self.opener(host, port)
            if self.closed:
                session.close()
                raise DialError(f"{self.protocol}: UDP association closed")
            while len(self.sessions) >= self.max_sessions:
                _, (old, task) = self.sessions.popitem(last=False)
                task.cancel()
                old.close()
            entry = (session, asyncio.ensure_future(self._pump(key, session)))
            self.sessions[key] = entry
        else:
            self.sessions.move_to_end(key)
        await entry[0].send(data)

    async def recv(self) -> tuple[bytes, str, int]:
        """The next datagram from any destination, and which one."""
        if self.closed:
            raise DialError(f"{self.protocol}: UDP association closed")
        return await self.queue.get()

    def close(self) -> None:
        self.closed = True
        for session, task in self.sessions.values():
            task.cancel()
            with contextlib.suppress(Exception):
                session.close()
        self.sessions.clear()
