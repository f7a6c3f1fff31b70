"""Keeping `relayed_tuples` (the relayed TCP flows the kernel guards) to the relays that live.

The kernel remembers every TCP flow it hands to the control plane in a hash
no churn evicts, so that a mid-stream packet of a flow whose routing_tuples
entry the LRU forgot reaches the relay's socket or is dropped, and never
leaves raw (bpf/lan.c, orphan()). The kernel cannot know when a relay ends;
this sweep, every `interval`, removes the entries older than `grace` whose
flow is no open connection here. The grace covers a relay's socket in
TIME_WAIT (60 s), which the kernel's lookup still finds, and a connection
still in the listener's accept queue.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor

from daetui.abi.flowrecord import FlowKey
from daetui.control.connections import Connection
from daetui.control.periodic import LoopTask
from daetui.dataplane.program import KernelProgram

log = logging.getLogger("daetui.control")

INTERVAL = 30.0
GRACE = 120.0


class RelayedSweep(LoopTask):
    """Removes the relayed_tuples entries of relays that ended (on the netlink thread, every `interval`)."""

    TASK_NAME = "daetui-relayed-sweep"

    def __init__(self, program: KernelProgram, open_connections: Callable[[], Iterable[Connection]],
                 executor: Executor, interval: float = INTERVAL, grace: float = GRACE) -> None:
        self.program = program
        self.open_connections = open_connections
        self.executor = executor
        self.interval, self.grace = interval, grace
        self.removed = 0
        self.held = 0                 # entries after the last sweep

    def live_keys(self) -> set[bytes]:
        """The relayed_tuples keys of the TCP connections open now (read on the loop: the table is the loop's)."""
        out = set()
        for c in list(self.open_connections()):
            if c.proto != "tcp":
                continue
            try:
                key = FlowKey(ipaddress.ip_address(c.src[0]), c.src[1], ipaddress.ip_address(c.dst[0]), c.dst[1], "tcp")
            except ValueError:
                continue
            out.add(self.program.relayed_key(key))
        return out

    def sweep(self, live: set[bytes]) -> int:
        """One pass (blocking: map syscalls). Returns how many entries went."""
        now = time.monotonic_ns()
        entries = self.program.relayed_entries()
        stale = [k for k, t in entries if now - t > self.grace * 1e9 and k not in live]
        n = self.program.forget_relayed(stale)
        self.removed += n
        self.held = len(entries) - n
        return n

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval)
            try:
                await loop.run_in_executor(self.executor, self.sweep, self.live_keys())
            except Exception as e:  # a failed pass is retried at the next; never ends the sweep
                log.error("relayed_tuples sweep: %s", e)
