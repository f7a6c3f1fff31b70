"""The control plane's pulse in the kernel.

A daemon that is stopped (SIGSTOP) or whose event loop hangs still holds its
listeners, so the kernel would keep handing new flows to sockets nobody
accepts from. The beat is written from the event loop itself, every quarter
of `global.heartbeat_timeout`: when the loop stops running, the beat stops,
and `lan_ingress` fails new flows open (or closed) as if the daemon were gone
(bpf/daetui.h, struct heartbeat).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from daetui.control.periodic import LoopTask

log = logging.getLogger("daetui.control")


class Heartbeat(LoopTask):
    """Writes `beat(timeout)` now and then every `timeout / 4` seconds from the running loop."""

    TASK_NAME = "daetui-heartbeat"

    def __init__(self, beat: Callable[[float], None], timeout: float) -> None:
        self._beat = beat
        self.timeout = timeout          # a reload may change it; the next beat writes it
        self.beats = 0
        self.failures = 0

    @property
    def interval(self) -> float:
        return max(0.1, self.timeout / 4)

    def beat(self) -> None:
        """One beat; a failure is logged once, never raised (the kernel then fails open after the timeout)."""
        try:
            self._beat(self.timeout)
        except Exception as e:  # BCC's map writes raise a bare Exception
            self.failures += 1
            if self.failures == 1:
                log.error("heartbeat: could not write the kernel's heartbeat map (%s): new flows will pass as if "
                          "daetui were stopped", e)
            return
        self.beats += 1

    def start(self) -> None:
        """Beat now and from now on (call on the control plane's loop)."""
        self.beat()
        super().start()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.beat()

