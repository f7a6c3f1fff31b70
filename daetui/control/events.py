"""The control plane's event stream: news for the console and the control socket.

Publishing never blocks and never fails: each subscriber has a bounded
queue, and a subscriber too slow to keep up loses the oldest events (counted
in `dropped`). The data path must not wait on a reader.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """Something that happened: `kind` is e.g. "conn.open", "conn.close", "log", "bind"."""

    kind: str
    data: dict[str, Any]
    time: float = field(default_factory=time.time)


class Subscription:
    """One reader's queue of events."""

    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self.bus = bus
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.dropped = 0

    def _offer(self, event: Event) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    async def get(self) -> Event:
        return await self.queue.get()

    def get_waiting(self) -> list[Event]:
        """Every event queued now (no wait): at most the queue's bound."""
        q = self.queue
        return [q.get_nowait() for _ in range(q.qsize())]

    def close(self) -> None:
        self.bus._subs.discard(self)


class EventBus:
    """Fan-out of events to subscribers; call from the control plane's loop."""

    def __init__(self) -> None:
        self._subs: set[Subscription] = set()

    def subscribe(self, maxsize: int = 10000) -> Subscription:
        sub = Subscription(self, maxsize)
        self._subs.add(sub)
        return sub

    def publish(self, kind: str, **data: Any) -> None:
        if not self._subs:
            return
        ev = Event(kind, data)
        for sub in list(self._subs):
            sub._offer(ev)
