"""What the budget stress tests share: load run on a thread inside a lab namespace, the daemon's
descriptors and memory read from /proc, and its snapshot read over the control socket."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from daetui import aio
from daetui.control.client import call_once
from daetui.control.state import Snapshot
from daetui.net.netns import netns

T = TypeVar("T")


def run_in_netns(ns: str, work: Callable[[], Awaitable[T]], timeout: float) -> T:
    """Run `work()` on an event loop of a thread inside namespace `ns` (its sockets are made there)."""
    out: dict[str, Any] = {}

    def main() -> None:
        try:
            with netns(ns), asyncio.Runner(loop_factory=aio.loop_factory()) as runner:
                out["value"] = runner.run(asyncio.wait_for(work(), timeout))
        except BaseException as e:  # handed to the caller
            out["error"] = e

    t = threading.Thread(target=main, name=f"load-{ns}", daemon=True)
    t.start()
    t.join(timeout + 30)
    if "error" in out:
        raise out["error"]
    if "value" not in out:
        raise TimeoutError(f"the load in {ns} did not end")
    return out["value"]  # type: ignore[no-any-return]


def fds(pid: int) -> int:
    import os

    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_limit(pid: int) -> int:
    """The soft RLIMIT_NOFILE of `pid`."""
    with open(f"/proc/{pid}/limits") as f:
        row = next(line for line in f if line.startswith("Max open files"))
    return int(row.split()[3])


def rss(pid: int) -> int:
    """Resident memory of `pid`, bytes."""
    with open(f"/proc/{pid}/status") as f:
        row = next(line for line in f if line.startswith("VmRSS:"))
    return int(row.split()[1]) * 1024


@dataclass
class Sampler:
    """Samples a process's descriptors and RSS every `interval` on a thread of its own; keeps the peaks."""

    pid: int
    interval: float = 0.25
    peak_fds: int = 0
    peak_rss: int = 0
    samples: int = 0
    extra: Callable[[], None] | None = None  # called on every sample too (e.g. to read a snapshot)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_fds = max(self.peak_fds, fds(self.pid))
                self.peak_rss = max(self.peak_rss, rss(self.pid))
                if self.extra is not None:
                    self.extra()
                self.samples += 1
            except (OSError, StopIteration):
                pass
            self._stop.wait(self.interval)


def snapshot_of(control: Any) -> Snapshot:
    """The daemon's snapshot (no kernel flows, no DNS), over its control socket."""
    return call_once(control, lambda c: c.snapshot(flows=False, dns=False))


def percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def monotonic() -> float:
    return time.monotonic()
