"""The idle timeout of relayed TCP: a flow with no byte either way for `tcp_idle_timeout` ends.

One sweep for every relay, whichever way it moves its bytes (splice, copy,
framed, stream): the connection table's byte counts grow as bytes pass, so a
flow whose counts did not change since a sweep `timeout` ago is idle. The
kernel's conntrack would keep such a flow 5 days (nf_conntrack_tcp_timeout_
established); each relay here holds two descriptors and a task meanwhile.
A flow the client still wants carries keepalives (Linux sends the first
after 2 h, tcp_keepalive_time), which the default of 2 h 4 min lets through:
it is RFC 5382's minimum for a NAT (REQ-5), OpenWrt's conntrack setting and
dae's DefaultNatTimeoutTCPEstablished.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from daetui.control.connections import ConnectionTable
from daetui.control.periodic import LoopTask

# How often the table is swept at most: the timeout is kept to within this (or a quarter of it).
SWEEP = 1.0


class IdleWatch(LoopTask):
    """Sweeps the open TCP connections; `expire(conn_id)` is called for each idle for `timeout` seconds."""

    TASK_NAME = "daetui-idle-watch"

    def __init__(self, connections: ConnectionTable, timeout: float, expire: Callable[[int], None]) -> None:
        self.connections = connections
        self.timeout = timeout
        self.expire = expire
        self.expired = 0
        self._marks: dict[int, tuple[int, float]] = {}   # conn id -> (bytes up + down, since when unchanged)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(SWEEP, self.timeout / 4))
            self.sweep(loop.time())

    def sweep(self, now: float) -> None:
        """One pass over the open TCP connections."""
        marks: dict[int, tuple[int, float]] = {}
        idle = []
        for conn in self.connections.open.values():
            if conn.proto != "tcp":
                continue
            total = conn.up + conn.down
            mark = self._marks.get(conn.id)
            if mark is None or mark[0] != total:
                mark = (total, now)
            elif now - mark[1] >= self.timeout:
                idle.append(conn.id)
            marks[conn.id] = mark
        self._marks = marks
        for cid in idle:
            self.expired += 1
            self.expire(cid)
