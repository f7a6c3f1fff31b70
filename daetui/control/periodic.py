"""A task of the control plane's loop that runs until stopped: the shape shared by its sweeps and pulses."""

from __future__ import annotations

import asyncio
import contextlib


class LoopTask:
    """Runs `self._run()` on the running loop from `start()` until `stop()` cancels it.

    Subclasses set `TASK_NAME` and write `_run`, which loops until cancelled.
    """

    TASK_NAME = "daetui-task"
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the task (call on the control plane's loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.TASK_NAME)

    async def stop(self) -> None:
        """Cancel the task and wait for it to end; nothing if it never started."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        raise NotImplementedError
