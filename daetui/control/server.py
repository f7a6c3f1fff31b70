"""The control socket: the ControlPlane's API over a Unix socket, for the console,
`daetui attach`, `status` and `stop`.

Protocol: one JSON object per line. A request `{"id": 1, "cmd": "snapshot",
"args": {}}` gets `{"id": 1, "result": ...}` or `{"id": 1, "error": "..."}`;
the commands, their arguments and results are declared in commands.py.
After `subscribe`, event lines `{"event": {...}}` arrive between responses.
The socket is root-only (0600 in a 0700 directory). A client too slow for
the event stream loses events, never the daemon's time: nothing here waits
on a client except that client's own task.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from daetui.control import wire
from daetui.control.commands import COMMANDS, SUBSCRIBE
from daetui.control.events import Event, Subscription
from daetui.control.plane import ControlPlane
from daetui.control.state import Snapshot

log = logging.getLogger("daetui.control")

MAX_IN_FLIGHT = 16  # requests answered at once per connection
PROTOCOL_VERSION = 1
MAX_REQUEST = 1 << 20            # a request line longer than this closes the connection
MAX_CLIENT_BUFFER = 32 << 20     # events are dropped while a client has this much unread
# Events go to a client in one write at most this often: two a relayed connection (opened, closed)
# were two writes and two wake-ups each (a console attached: ~60 µs of the daemon's CPU a connection).
EVENT_BATCH = 0.02


class ControlServer:
    """Serves one ControlPlane on `path`."""

    def __init__(self, plane: ControlPlane, path: Path) -> None:
        self.plane = plane
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self.bad_requests = 0

    async def start(self) -> None:
        if self.path.exists():
            # Left by a daemon that died: nobody answers on it any more.
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._client, str(self.path), limit=MAX_REQUEST)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        for t in list(self._clients):
            t.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        if me is not None:
            self._clients.add(me)  # type: ignore[arg-type]
        sub: Subscription | None = None
        forward: asyncio.Task[None] | None = None
        answering: set[asyncio.Task[None]] = set()
        busy = asyncio.Semaphore(MAX_IN_FLIGHT)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    self.bad_requests += 1
                    break
                if not line:
                    break
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                        raise ValueError("a request is {\"id\": n, \"cmd\": \"...\", \"args\": {...}}")
                except ValueError as e:
                    self.bad_requests += 1
                    writer.write(wire.dumps({"id": None, "error": f"bad request: {e}"}))
                    continue
                rid, cmd, args = req.get("id"), req["cmd"], req.get("args") or {}
                if cmd == SUBSCRIBE:
                    if sub is None:
                        sub = self.plane.events.subscribe(maxsize=5000)
                        forward = asyncio.ensure_future(self._forward(sub, writer))
                    writer.write(wire.dumps({"id": rid, "result": True}))
                    continue
                # Each request is answered on its own, so a slow one (a DNS lookup, a node check)
                # does not hold back the snapshots behind it; the client matches answers by id.
                await busy.acquire()
                task = asyncio.ensure_future(self._answer(rid, cmd, args, writer))
                answering.add(task)
                task.add_done_callback(answering.discard)
                task.add_done_callback(lambda _: busy.release())
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for t in answering:
                t.cancel()
            if forward is not None:
                forward.cancel()
            if sub is not None:
                sub.close()
            writer.close()
            if me is not None:
                self._clients.discard(me)  # type: ignore[arg-type]

    async def _answer(self, rid: Any, cmd: str, args: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        try:
            result = await self._dispatch(cmd, args)
            out = await asyncio.get_running_loop().run_in_executor(None, wire.dumps, {"id": rid, "result": result})
        except Exception as e:
            out = wire.dumps({"id": rid, "error": f"{type(e).__name__}: {e}"})
        with contextlib.suppress(ConnectionError):
            writer.write(out)
            await writer.drain()

    async def _forward(self, sub: Subscription, writer: asyncio.StreamWriter) -> None:
        """The subscription's events to the client, those that come within EVENT_BATCH of each other in one write."""
        while True:
            events: list[Event] = [await sub.get()]
            await asyncio.sleep(EVENT_BATCH)
            events += sub.get_waiting()
            if writer.transport.get_write_buffer_size() > MAX_CLIENT_BUFFER:
                sub.dropped += len(events)
                continue
            writer.write(b"".join(wire.dumps({"event": ev}) for ev in events))

    async def _dispatch(self, cmd: str, args: dict[str, Any]) -> Any:
        command = COMMANDS.get(cmd)
        if command is None:
            raise ValueError(f"unknown command {cmd!r}")
        kwargs = command.arguments(args)
        if command.serves is None:
            result = await self.OWN[cmd](self, **kwargs)
        else:
            method = getattr(self.plane, command.serves)
            if command.blocking:
                result = await asyncio.get_running_loop().run_in_executor(None, partial(method, **kwargs))
            else:
                result = method(**kwargs)
                if inspect.isawaitable(result):
                    result = await result
        # A command with nothing to say answers that it is done.
        return True if command.result is None else result

    # -- the commands that are more than one call of the plane --------------------------------------
    async def _ping(self) -> dict[str, Any]:
        plane = self.plane
        return {"version": PROTOCOL_VERSION, "pid": os.getpid(), "started": plane.started,
                "config": plane.config.source, "running": plane.running}

    async def _snapshot(self, flows: bool = True, dns: bool = True) -> Snapshot:
        # The batch read is a syscall with the GIL released: off the loop.
        raw = await asyncio.get_running_loop().run_in_executor(None, self.plane.raw_flows) if flows else None
        return self.plane.snapshot(raw_flows=raw, with_kernel_flows=False, with_dns=dns)

    async def _stop(self) -> None:
        log.info("stop requested over the control socket")
        asyncio.get_running_loop().call_soon(self.plane.request_stop)

    # The commands declared with serves=None, by name (tests/unit/test_control_commands.py checks the two agree).
    OWN: ClassVar[dict[str, Callable[..., Awaitable[Any]]]] = {
        "ping": _ping, "snapshot": _snapshot, "stop": _stop}
