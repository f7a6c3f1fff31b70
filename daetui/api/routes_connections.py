"""The controller API's /connections and /traffic, as mihomo's hub/route (connections.go, server.go).

- `GET /connections`: the flows now (flowview.py: relayed ones and the
  kernel's direct ones), mihomo's snapshot JSON. Upgraded to a websocket (as
  dashboards open it: `/connections?token=...&interval=1000`), the same JSON
  every `interval` ms (default 1000). Without an upgrade but with
  `?interval=`, the same as mihomo's other streams: chunked HTTP, one JSON a
  line. A view is built at most twice a second, in a thread, whoever asks:
  a thousand dashboards cost what one does.
- `DELETE /connections`: closes every relayed connection (its client sees a
  reset); 204. The kernel's direct flows are not daetui's to close.
- `DELETE /connections/{id}`: 204 once a relayed connection is closed, and
  for an id that names nothing (mihomo's answer: it may have just ended).
  A kernel-direct flow's id is a 400 saying why: the kernel forwards it
  without daetui, which holds no socket of it.
- `GET /traffic`: `{"up": B/s, "down": B/s}` every second (relayed and
  kernel-direct flows together), a websocket or chunked HTTP as mihomo's.
  The rates are the view's totals' growth per second; the first is 0.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from daetui.api.context import ApiContext, Shared
from daetui.api.errors import ApiError
from daetui.api.flowview import FlowEncoder, FlowView, relayed_conn_id
from daetui.api.stream import serve_stream, wants_websocket

log = logging.getLogger("daetui.api")

DEFAULT_INTERVAL_MS = 1000
MIN_INTERVAL_MS = 100        # a client asking for less gets this: views are built at most every VIEW_AGE anyway
MAX_INTERVAL_MS = 3600_000
VIEW_AGE = 0.5               # seconds a view is shared before the next one is built
MAX_SAMPLE_GAP = 2.0         # seconds between /traffic samples above which the bytes are averaged over the gap
TRAFFIC_AGE = 0.9            # seconds a /traffic sample is shared (clients tick each second, each at its phase)


def interval_of(request: web.Request) -> float:
    """`?interval=` in seconds (mihomo's milliseconds); 400 for anything but a whole number."""
    text = request.query.get("interval", "")
    if not text:
        return DEFAULT_INTERVAL_MS / 1000
    try:
        ms = int(text)
    except ValueError:
        raise ApiError(400, f"interval must be a whole number of milliseconds, not {text!r}") from None
    if ms <= 0:
        raise ApiError(400, f"interval must be positive, not {ms}")
    return min(max(ms, MIN_INTERVAL_MS), MAX_INTERVAL_MS) / 1000


async def stream(request: web.Request, ctx: ApiContext, messages: Callable[[], AsyncIterator[Any]]
                 ) -> web.StreamResponse:
    """serve_stream with the API's stream counters (stream.py bounds what a client leaves unread)."""
    return await serve_stream(request, ctx.counters.streams, messages)


class Traffic:
    """mihomo's /traffic figure: the bytes moved since the last sample, taken about once a second."""

    def __init__(self, views: Shared[FlowView]) -> None:
        self.views = views
        self._last: FlowView | None = None
        self._rate = {"up": 0, "down": 0}

    async def sample(self) -> dict[str, int]:
        # A view of now, not one shared for up to VIEW_AGE: consecutive samples then span about a second
        # each, so the rates add up to the bytes (a view half a second old would put them in the next one).
        view = await self.views.get(0.0)
        last = self._last
        if last is not None and view.at > last.at:
            dt = view.at - last.at
            # As mihomo's: the bytes moved since the last sample (about a second ago), so that a client's
            # samples add up to the bytes moved whatever the samples' jitter. After a gap (nobody asked
            # for a while) the bytes of the whole gap are spread over it instead.
            per = dt if dt > MAX_SAMPLE_GAP else 1.0
            self._rate = {"up": round((view.upload_total - last.upload_total) / per),
                          "down": round((view.download_total - last.download_total) / per)}
        self._last = view
        return self._rate


def routes(ctx: ApiContext) -> list[web.RouteDef]:
    """`/connections` (GET, DELETE, DELETE /{id}) and `/traffic`."""
    plane = ctx.plane
    tag = int((plane.started or time.time()) * 1000)   # the daemon's start: relayed ids name it
    encoder = FlowEncoder(tag, plane.names_of)

    async def build_view() -> FlowView:
        # A snapshot of now (its kernel flows read off the loop), then every flow walked in a thread.
        snap = await ctx.build(flows=True, dns=False)
        rulesets = plane.kernel_rulesets()
        tcp_idle = plane.config.global_.tcp_idle_timeout
        return await asyncio.get_running_loop().run_in_executor(None, encoder.build, snap, rulesets, tcp_idle)

    views: Shared[FlowView] = Shared(build_view, VIEW_AGE)
    traffic = Traffic(views)
    samples: Shared[dict[str, int]] = Shared(traffic.sample, TRAFFIC_AGE)

    async def get_connections(request: web.Request) -> web.StreamResponse:
        if not wants_websocket(request) and "interval" not in request.query:
            view = await views.get()
            return web.Response(text=view.text, content_type="application/json")
        interval = interval_of(request)

        async def messages() -> AsyncIterator[str]:
            while True:
                yield (await views.get()).text
                await asyncio.sleep(interval)
        return await stream(request, ctx, messages)

    async def close_all(request: web.Request) -> web.Response:
        snap = await ctx.snapshot(fresh=True)
        ids = [c.id for c in snap.connections if c.state == "open"]
        n = plane.close_connections(ids)
        log.info("controller API: closed %d relayed connection%s (kernel-direct flows are the kernel's: left)",
                 n, "" if n == 1 else "s")
        return web.Response(status=204)

    async def close_one(request: web.Request) -> web.Response:
        fid = request.match_info["id"]
        cid = relayed_conn_id(tag, fid)
        if cid is not None:
            if plane.close_connections([cid]):
                log.info("controller API: closed connection %d", cid)
            else:
                log.debug("controller API: connection %d was not open", cid)
            return web.Response(status=204)
        view = await views.get()
        what = view.kernel.get(fid)
        if what is not None:
            raise ApiError(400, f"{what} is a kernel-direct flow: the kernel forwards it by itself and daetui "
                                "holds no socket of it to close")
        log.debug("controller API: no connection %s to close", fid[:64])
        return web.Response(status=204)

    async def get_traffic(request: web.Request) -> web.StreamResponse:
        async def messages() -> AsyncIterator[dict[str, int]]:
            while True:
                yield await samples.get()
                await asyncio.sleep(1.0)
        return await stream(request, ctx, messages)

    return [web.get("/connections", get_connections), web.delete("/connections", close_all),
            web.delete("/connections/{id}", close_one), web.get("/traffic", get_traffic)]
