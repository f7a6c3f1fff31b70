"""What every route of the controller API reads from: the plane, shared snapshots, the counters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from daetui.api.stream import StreamStats
from daetui.control.plane import ControlPlane
from daetui.control.state import Snapshot

T = TypeVar("T")


class Shared(Generic[T]):
    """A value built at most once per `max_age` seconds, however many clients ask at once.

    A thousand dashboards streaming /connections cost one snapshot a second,
    not a thousand: the first asker builds it, the others wait for that build.
    """

    def __init__(self, build: Callable[[], Awaitable[T]], max_age: float) -> None:
        self._build = build
        self.max_age = max_age
        self._value: T | None = None
        self._at = 0.0
        self._building: asyncio.Future[T] | None = None
        self.builds = 0

    async def get(self, max_age: float | None = None) -> T:
        age = self.max_age if max_age is None else max_age
        if self._value is not None and time.monotonic() - self._at <= age:
            return self._value
        if self._building is None:
            self._building = asyncio.ensure_future(self._run())
        return await asyncio.shield(self._building)

    async def _run(self) -> T:
        try:
            value = await self._build()
            self._value, self._at = value, time.monotonic()
            self.builds += 1
            return value
        finally:
            self._building = None


@dataclass
class ApiCounters:
    """Requests the API answered and refused (the console's status line and /metrics)."""

    requests: int = 0
    unauthorized: int = 0
    errors: int = 0          # answered with a 4xx/5xx other than 401
    streams: StreamStats = field(default_factory=StreamStats)


class ApiContext:
    """The plane, and the snapshots the routes share."""

    def __init__(self, plane: ControlPlane, secret: str = "") -> None:
        self.plane = plane
        self.secret = secret
        self.counters = ApiCounters()
        self.started = time.time()
        # Without the kernel's flows, for groups, nodes, rules and DNS: cheap, shared for a moment.
        # (/connections shares its own views of the flows; /metrics builds one per scrape.)
        self.without_flows: Shared[Snapshot] = Shared(lambda: self.build(flows=False, dns=True), 0.2)

    async def build(self, flows: bool, dns: bool) -> Snapshot:
        """A snapshot of now; `flows`: with the kernel's flows, read in a thread (one batch syscall)."""
        loop = asyncio.get_running_loop()
        raw = await loop.run_in_executor(None, self.plane.raw_flows) if flows else None
        return self.plane.snapshot(raw_flows=raw, with_kernel_flows=False, with_dns=dns)

    async def snapshot(self, fresh: bool = False) -> Snapshot:
        """A snapshot without the kernel's flows, at most a moment old (`fresh`: built now, for an answer
        right after a change)."""
        return await self.without_flows.get(0.0 if fresh else None)
