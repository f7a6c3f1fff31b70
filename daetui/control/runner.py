"""Running a control plane on a thread of its own, with its own event loop.

The console runs on the main thread; the control plane's relays run here,
so a slow terminal never delays a byte. Tests use the same runner to put a
control plane inside the lab's router namespace (`netns=`) while the test
itself stays outside.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from daetui import aio
from daetui.config.load import Config
from daetui.control.plane import ControlPlane
from daetui.net.netns import enter_netns
from daetui.paths import RunPaths

T = TypeVar("T")


class ControlPlaneThread:
    """A ControlPlane living on its own thread and loop."""

    def __init__(self, config: Config, run_dir: str | None = None, netns: str | None = None,
                 kernel: bool = True) -> None:
        self.config = config
        self.run_dir = run_dir
        self.netns = netns
        self.kernel = kernel
        self.loop: asyncio.AbstractEventLoop | None = None
        self.plane: ControlPlane | None = None
        self._thread = threading.Thread(target=self._main, name="daetui-control", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._done = threading.Event()

    def start(self, timeout: float = 120.0) -> ControlPlane:
        """Start the thread and wait until the plane runs (or failed: re-raised here)."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("control plane did not start in time")
        if self._error is not None:
            raise self._error
        assert self.plane is not None
        return self.plane

    def _main(self) -> None:
        try:
            if self.netns:
                enter_netns(self.netns)
            aio.run(self._run())
        except BaseException as e:
            if not self._ready.is_set():
                self._error = e
                self._ready.set()
        finally:
            self._done.set()

    async def _run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        run = RunPaths.for_here(self.run_dir)
        self.plane = ControlPlane(self.config, run, kernel=self.kernel)
        await self.plane.start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.plane.stop()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Run a coroutine on the plane's loop."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Call a function on the plane's loop and wait for its result."""
        async def wrapper() -> T:
            return fn()
        return self.submit(wrapper()).result(timeout)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the plane (undoing its system changes) and end the thread."""
        if self.loop is not None and self._stop is not None and not self._done.is_set():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._done.wait(timeout)
        self._thread.join(timeout)
