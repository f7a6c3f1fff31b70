"""Streams to dashboards: a websocket, or mihomo's chunked HTTP of one JSON object per line.

mihomo answers `/traffic`, `/memory`, `/logs` and `/connections` both ways:
a websocket when the request asks to upgrade, else a chunked response that
never ends. Either way a client that does not read must not cost the
daemon anything but its own buffer: a message is dropped (and counted)
while the client has `MAX_UNSENT` bytes unread, and the number of streams
open at once is bounded (`MAX_STREAMS`; one more is refused with 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from daetui.api.errors import ApiError

MAX_STREAMS = 2048          # websockets and chunked streams open at once, all clients together
MAX_UNSENT = 1 << 20        # bytes a client may leave unread before its messages are dropped
MAX_INBOUND = 64 << 10      # a dashboard sends nothing but pings; a bigger message closes its socket


@dataclass
class StreamStats:
    """What the streams did: the console and /metrics show it."""

    open: int = 0
    opened: int = 0
    refused: int = 0        # refused for MAX_STREAMS
    dropped: int = 0        # messages dropped for clients that do not read


def wants_websocket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


class Stream:
    """One client's stream; `send` never waits on the client (see the module's docstring)."""

    def __init__(self, request: web.Request, stats: StreamStats) -> None:
        self.request = request
        self.stats = stats
        self.ws: web.WebSocketResponse | None = None
        self.http: web.StreamResponse | None = None
        self.closed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        if self.stats.open >= MAX_STREAMS:
            self.stats.refused += 1
            raise ApiError(503, f"too many streams open ({MAX_STREAMS})")
        transport = self.request.transport
        if transport is not None:
            # asyncio pauses a transport at 64 KiB unsent and aiohttp then waits for the client: a
            # non-reader would hold its stream in that wait and `send` would never see MAX_UNSENT, above
            # which it drops (and counts) messages instead. The pause goes above MAX_UNSENT plus a message.
            transport.set_write_buffer_limits(high=4 * MAX_UNSENT, low=MAX_UNSENT)
        if wants_websocket(self.request):
            # No per-message compression: /connections with 10k flows is megabytes a second of CPU for it.
            self.ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=MAX_INBOUND, compress=False)
            await self.ws.prepare(self.request)
            self._reader = asyncio.ensure_future(self._read())
        else:
            self.http = web.StreamResponse(headers={"Content-Type": "application/json"})
            self.http.enable_chunked_encoding()
            await self.http.prepare(self.request)
        self.stats.open += 1
        self.stats.opened += 1

    async def _read(self) -> None:
        # The client's side: pings are answered by aiohttp; a close (or anything broken) ends the stream.
        assert self.ws is not None
        with contextlib.suppress(Exception):
            async for msg in self.ws:
                if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
        self.closed.set()

    def _unsent(self) -> int:
        transport = self.request.transport
        if transport is None or transport.is_closing():
            self.closed.set()
            return 0
        return transport.get_write_buffer_size()

    async def send(self, payload: Any) -> bool:
        """Send one JSON value (or pre-encoded text); False once the client is gone."""
        if self.closed.is_set():
            return False
        if self._unsent() > MAX_UNSENT:
            self.stats.dropped += 1
            return not self.closed.is_set()
        text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
        try:
            if self.ws is not None:
                # aiohttp waits for the socket to drain past its own limit: bounded by MAX_UNSENT above.
                await asyncio.wait_for(self.ws.send_str(text), 10)
            elif self.http is not None:
                await asyncio.wait_for(self.http.write((text + "\n").encode()), 10)
        except (TimeoutError, ConnectionError, RuntimeError):
            self.closed.set()
            return False
        return True

    async def close(self) -> web.StreamResponse:
        self.stats.open -= 1
        if self._reader is not None:
            self._reader.cancel()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 2)
            return self.ws
        assert self.http is not None
        return self.http


async def serve_stream(request: web.Request, stats: StreamStats,
                       messages: Callable[[], AsyncIterator[Any]]) -> web.StreamResponse:
    """Answer `request` with a stream of what `messages()` yields, until the client goes."""
    stream = Stream(request, stats)
    await stream.open()
    try:
        async for payload in messages():
            if not await stream.send(payload):
                break
    except (ConnectionError, asyncio.CancelledError):
        pass
    return await stream.close()


async def ticks(interval: float, stop: asyncio.Event | None = None) -> AsyncIterator[int]:
    """0, 1, 2, ... every `interval` seconds (the first at once)."""
    n = 0
    while stop is None or not stop.is_set():
        yield n
        n += 1
        await asyncio.sleep(interval)
