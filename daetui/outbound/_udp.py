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

from daetui.net.stream import DialError

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
        # Sessions being opened: datagrams sent meanwhile to the same destination wait for that one.
        self.opening: dict[tuple[str, int], asyncio.Future[PacketSession]] = {}
        # None wakes a waiting recv() when the association closes.
        self.queue: asyncio.Queue[tuple[bytes, str, int] | None] = asyncio.Queue(QUEUE_SIZE)
        self.closed = False

    def _check_open(self) -> None:
        if self.closed:
            raise DialError(f"{self.protocol}: UDP association closed")

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

    async def _session(self, key: tuple[str, int]) -> PacketSession:
        entry = self.sessions.get(key)
        if entry is not None:
            self.sessions.move_to_end(key)
            return entry[0]
        pending = self.opening.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[PacketSession] = asyncio.get_running_loop().create_future()
        self.opening[key] = fut
        try:
            session = await self.opener(*key)
        except Exception as e:
            fut.set_exception(e)  # the same failure for the datagrams that waited
            fut.exception()  # retrieved here: no warning when nobody waited
            raise
        except BaseException:
            fut.cancel()
            raise
        finally:
            del self.opening[key]
        if self.closed:
            session.close()
            fut.cancel()
            self._check_open()
        while len(self.sessions) >= self.max_sessions:
            _, (old, task) = self.sessions.popitem(last=False)
            task.cancel()
            old.close()
        self.sessions[key] = (session, asyncio.ensure_future(self._pump(key, session)))
        fut.set_result(session)
        return session

    async def send(self, data: bytes, host: str, port: int) -> None:
        """Send to host:port, opening a session to it first if there is none."""
        self._check_open()
        session = await self._session((host, port))
        await session.send(data)

    async def recv(self) -> tuple[bytes, str, int]:
        """The next datagram from any destination, and which one."""
        self._check_open()
        item = await self.queue.get()
        if item is None:
            self.queue.put_nowait(None)  # for any other waiter
            raise DialError(f"{self.protocol}: UDP association closed")
        return item

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for session, task in self.sessions.values():
            task.cancel()
            with contextlib.suppress(Exception):
                session.close()
        self.sessions.clear()
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)
