"""The control socket: the ControlPlane's API over a Unix socket, for the console,
`daetui attach`, `status` and `stop`.

Protocol: one JSON object per line. A request `{"id": 1, "cmd": "snapshot",
"args": {}}` gets `{"id": 1, "result": ...}` or `{"id": 1, "error": "..."}`.
After `subscribe`, event lines `{"event": {...}}` arrive between responses.
The socket is root-only (0600 in a 0700 directory). A client too slow for
the event stream loses events, never the daemon's time: nothing here waits
on a client except that client's own task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from daetui.control import wire
from daetui.control.events import Event, Subscription
from daetui.control.plane import ControlPlane

log = logging.getLogger("daetui.control")

MAX_IN_FLIGHT = 16  # requests answered at once per connection
PROTOCOL_VERSION = 1
MAX_REQUEST = 1 << 20            # a request line longer than this closes the connection
MAX_CLIENT_BUFFER = 32 << 20     # events are dropped while a client has this much unread


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
                if cmd == "subscribe":
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
        while True:
            ev: Event = await sub.get()
            if writer.transport.get_write_buffer_size() > MAX_CLIENT_BUFFER:
                sub.dropped += 1
                continue
            writer.write(wire.dumps({"event": ev}))

    async def _dispatch(self, cmd: str, args: dict[str, Any]) -> Any:
        plane = self.plane
        loop = asyncio.get_running_loop()
        if cmd == "ping":
            return {"version": PROTOCOL_VERSION, "pid": os.getpid(), "started": plane.started,
                    "config": plane.config.source, "running": plane.running}
        if cmd == "snapshot":
            # The batch read is a syscall with the GIL released: off the loop.
            raw = await loop.run_in_executor(None, plane.raw_flows) if args.get("flows", True) else None
            return plane.snapshot(raw_flows=raw, with_kernel_flows=False, with_dns=bool(args.get("dns", True)))
        if cmd == "logs":
            return plane.recent_logs()
        if cmd == "maps":
            return await loop.run_in_executor(None, plane.maps_info)
        if cmd == "map_entries":
            name = str(args.get("name", ""))
            return await loop.run_in_executor(None, plane.map_entries, name, str(args.get("search", "")),
                                              int(args.get("limit", 5000)))
        if cmd == "close":
            ids = [int(i) for i in args.get("ids", [])]
            return plane.close_connections(ids)
        if cmd == "stop":
            log.info("stop requested over the control socket")
            loop.call_soon(plane.request_stop)
            return True
        if cmd == "reload":
            return await plane.reload_from_file(abort=bool(args.get("abort", False)))
        if cmd == "reload_preview":
            return await plane.preview_reload()
        if cmd == "edit_rules":
            keys = ("op", "index", "text", "to", "enabled", "expect")
            return await plane.edit_rules(**{k: args[k] for k in keys if k in args})
        if cmd == "learn_name":
            plane.learn_name(str(args["addr"]), str(args["name"]))
            return True
        if cmd == "dns_lookup":
            return await plane.dns_lookup(str(args["name"]), str(args.get("qtype", "A")))
        if cmd == "dns_flush":
            return plane.dns_flush()
        if cmd == "pin_node":
            plane.pin_node(str(args["group"]), args.get("node"))
            return True
        if cmd == "check_nodes":
            await plane.check_nodes([str(n) for n in args.get("names", [])])
            return True
        if cmd == "explain":
            keys = ("target", "port", "proto", "mac", "iface", "pname", "src", "sport", "dscp", "wan")
            return plane.explain(**{k: args[k] for k in keys if args.get(k) is not None})
        raise ValueError(f"unknown command {cmd!r}")
