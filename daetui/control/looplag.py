"""How late the event loop runs what is due: a small periodic task records how late it wakes.

Every relay, DNS answer and accept shares the one loop; a callback that holds
it (a large copy, a slow parse) delays them all by as much. The lag of a
sleep's wake-up measures that delay from inside. The last `KEEP` samples
(a minute at 10 per second) give the percentiles the snapshot shows.
"""

from __future__ import annotations

import asyncio
from collections import deque

from daetui.control.periodic import LoopTask

INTERVAL = 0.1
KEEP = 600


class LoopLag(LoopTask):
    """A task waking every `interval`; `p99()` and `max()` are its lateness over the last KEEP wake-ups (s)."""

    TASK_NAME = "daetui-loop-lag"

    def __init__(self, interval: float = INTERVAL, keep: int = KEEP) -> None:
        self.interval = interval
        self.samples: deque[float] = deque(maxlen=keep)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.samples.append(max(0.0, loop.time() - due))

    def quantile(self, q: float) -> float:
        """The q-quantile of the kept samples (seconds; 0 with none)."""
        if not self.samples:
            return 0.0
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def p99(self) -> float:
        return self.quantile(0.99)

    def max(self) -> float:
        return max(self.samples, default=0.0)
