"""A client of the control socket: what the console and `daetui status` use.

All of the console's knowledge of the control plane comes through here. The
commands and their types are declared in commands.py; this is the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from daetui.control import wire
from daetui.control.commands import DEFAULT_TIMEOUT, SUBSCRIBE, ControlApi
from daetui.control.events import Event

MAX_LINE = 256 << 20
T = TypeVar("T")


class ControlError(RuntimeError):
    """The daemon answered with an error, or is not there."""


class ControlClient(ControlApi):
    """One connection to a daemon's control socket; its command methods are ControlApi's."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._events: asyncio.Queue[Event] = asyncio.Queue(maxsize=10000)
        self._reader_task: asyncio.Task[None] | None = None
        self._subscribed = False
        self.connected = False

    async def connect(self, timeout: float = 5.0) -> None:
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.path), limit=MAX_LINE), timeout)
        except (OSError, TimeoutError) as e:
            raise ControlError(f"no daetui answers on {self.path}: {e}") from None
        self.connected = True
        self._reader_task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self._reader is not None
        try:
            while line := await self._reader.readline():
                msg = json.loads(line)
                if "event" in msg:
                    ev = wire.decode(Event, msg["event"])
                    if self._events.full():
                        self._events.get_nowait()
                    self._events.put_nowait(ev)
                    continue
                fut = self._pending.pop(msg.get("id"), None)
                if fut is not None and not fut.done():
                    if "error" in msg:
                        fut.set_exception(ControlError(msg["error"]))
                    else:
                        fut.set_result(msg.get("result"))
        except (ConnectionError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            self.connected = False
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ControlError("the daemon went away"))
            self._pending.clear()

    async def call(self, cmd: str, timeout: float = DEFAULT_TIMEOUT, **args: Any) -> Any:
        """Send one request and wait for its result (raw JSON values)."""
        if self._writer is None or not self.connected:
            raise ControlError("not connected")
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self._writer.write(json.dumps({"id": rid, "cmd": cmd, "args": args}).encode() + b"\n")
        await self._writer.drain()
        return await asyncio.wait_for(fut, timeout)

    async def events(self) -> AsyncIterator[Event]:
        """The daemon's events from now on (log lines, connections opened and closed)."""
        if not self._subscribed:
            await self.call(SUBSCRIBE)
            self._subscribed = True
        while self.connected or not self._events.empty():
            try:
                yield await asyncio.wait_for(self._events.get(), 1.0)
            except TimeoutError:
                continue

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self.connected = False


def call_once(path: Path, fn: Callable[[ControlClient], Awaitable[T]]) -> T:
    """Connect, run `fn` with the client, close: the one-shot commands (stop, status, reload, explain)."""
    async def go() -> T:
        c = ControlClient(path)
        await c.connect()
        try:
            return await fn(c)
        finally:
            await c.close()
    return asyncio.run(go())


async def wait_for_daemon(path: Path, timeout: float = 90.0, alive: Any = None) -> ControlClient:
    """Connect as soon as a (starting) daemon answers; `alive()` False means it died."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Exception | None = None
    while asyncio.get_running_loop().time() < deadline:
        if alive is not None and not alive():
            raise ControlError("the daemon exited before it answered")
        client = ControlClient(path)
        try:
            await client.connect(timeout=1.0)
            await client.ping()
            return client
        except ControlError as e:
            last = e
            await client.close()
        await asyncio.sleep(0.2)
    raise ControlError(f"daetui did not answer within {timeout:.0f}s: {last}")
