"""The controller API's small routes: `/`, `/version`, `/memory`, `/logs` and `/configs`, as mihomo's.

- `GET /memory`: `{"inuse": RSS bytes, "oslimit": the cgroup's memory limit or 0}` every second,
  a websocket or chunked HTTP (mihomo's hub/route/server.go).
- `GET /logs?level=info&format=`: the daemon's log lines from now on, as they are logged, at `level`
  (debug, info, warning, error; silent: none) or above: `{"type": "info", "payload": "..."}`, or with
  `format=structured` `{"time": "15:04:05", "level": "warn", "message": "...", "fields": [...]}`.
  Another level is mihomo's 400. A line is logged only at the daemon's own level or above (PATCH
  /configs' `log-level` changes it). The lines are the log's: secrets masked, control characters escaped.
- `GET /configs`, `PATCH /configs`, `PUT /configs`: see configs.py. PUT reloads the daemon's config
  file (mihomo's body `{"path": ..., "payload": ...}` or none; `?force` changes nothing here): 204 once
  the new config is in force, else mihomo's 400 with the reason, and the running config unchanged. A
  `path` must be the daemon's own config file; a `payload` (mihomo's YAML) daetui cannot take.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from datetime import datetime
from importlib import metadata
from typing import Any

from aiohttp import web

from daetui.api import configs
from daetui.api.context import ApiContext, Shared
from daetui.api.errors import ApiError, bad_request, json_object
from daetui.api.procinfo import memory_limit, rss_bytes
from daetui.api.routes_connections import stream
from daetui.control.state import LogLine

log = logging.getLogger("daetui.api")

# mihomo's levels in order; daetui's lines carry "warn" where mihomo says "warning".
_RANK = {"debug": 0, "info": 1, "warning": 2, "error": 3, "silent": 4}
_LINE_RANK = {"debug": 0, "info": 1, "warn": 2, "error": 3}
ALIVE_CHECK = 1.0   # seconds: how often a quiet /logs stream looks whether its client is still there


def daetui_version() -> str:
    try:
        return metadata.version("daetui")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def log_message(line: LogLine, structured: bool) -> dict[str, Any]:
    """One log line as mihomo's /logs sends it."""
    short = line.logger.removeprefix("daetui.")
    if structured:
        return {"time": datetime.fromtimestamp(line.time).strftime("%H:%M:%S"), "level": line.level,
                "message": line.message, "fields": [{"key": "logger", "value": line.logger}]}
    return {"type": configs.FROM_DAETUI.get(line.level, "info"), "payload": f"[{short}] {line.message}"}


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def routes(ctx: ApiContext) -> list[web.RouteDef]:
    """`GET /`, `/version`, `/memory`, `/logs`, and `/configs` (GET, PATCH, PUT)."""
    plane = ctx.plane
    memory: Shared[dict[str, int]] = Shared(lambda: _memory(), 0.9)

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": "mihomo"})

    async def version(request: web.Request) -> web.Response:
        # "meta": true is what dashboards read to enable mihomo's extra features (rule toggling, group delay).
        return web.json_response({"meta": True, "version": f"daetui {daetui_version()}"})

    async def get_memory(request: web.Request) -> web.StreamResponse:
        async def messages() -> AsyncIterator[dict[str, int]]:
            while True:
                yield await memory.get()
                await asyncio.sleep(1.0)
        return await stream(request, ctx, messages)

    async def get_logs(request: web.Request) -> web.StreamResponse:
        level = request.query.get("level", "") or "info"
        if level not in _RANK:
            raise ApiError(400, f"level must be one of {', '.join(_RANK)}, not {level[:32]!r}")
        least = _RANK[level]
        structured = request.query.get("format", "") == "structured"

        async def messages() -> AsyncIterator[dict[str, Any]]:
            sub = plane.events.subscribe(maxsize=1000)
            try:
                while not _gone(request):
                    try:
                        event = await asyncio.wait_for(sub.get(), ALIVE_CHECK)
                    except TimeoutError:
                        continue   # a quiet log: look whether the client is still there
                    line = event.data.get("line") if event.kind == "log" else None
                    if isinstance(line, LogLine) and _LINE_RANK.get(line.level, 1) >= least:
                        yield log_message(line, structured)
            finally:
                sub.close()
        return await stream(request, ctx, messages)

    async def get_configs(request: web.Request) -> web.Response:
        return web.json_response(configs.general(plane))

    async def patch_configs(request: web.Request) -> web.Response:
        level, ignored = configs.plan_patch(plane, await request.read())
        if level is not None and level != plane.log_level:
            plane.set_log_level(level)
        resp = web.Response(status=204)
        if ignored:
            log.warning("controller API: PATCH /configs: %s: not applicable to daetui, ignored",
                        ", ".join(f"{k[:64]}={configs.short(v)}" for k, v in ignored.items()))
            resp.headers["X-Daetui-Ignored"] = configs.ignored_header(ignored)
        return resp

    async def put_configs(request: web.Request) -> web.Response:
        body = json_object(await request.read(), empty_ok=True)
        path, payload = body.get("path", ""), body.get("payload", "")
        if not isinstance(path, str) or not isinstance(payload, str):
            raise bad_request()
        if payload:
            raise ApiError(400, "daetui takes no config payload: its config is the TOML file "
                                f"{plane.config.source}; edit it and PUT /configs without one")
        if path:
            if not os.path.isabs(path):
                raise ApiError(400, "path is not a absolute path")   # mihomo's words
            if os.path.realpath(path) != os.path.realpath(plane.config.source):
                raise ApiError(400, f"daetui reloads its own config file, {plane.config.source}, not {path[:200]}")
        result = await plane.reload_from_file()
        if not result.ok:
            log.warning("controller API: PUT /configs: reload refused: %s", result.message)
            raise ApiError(400, result.message)
        log.info("controller API: PUT /configs: %s reloaded (generation %d)", plane.config.source,
                 result.generation)
        return web.Response(status=204)

    return [web.get("/", hello), web.get("/version", version), web.get("/memory", get_memory),
            web.get("/logs", get_logs), web.get("/configs", get_configs), web.patch("/configs", patch_configs),
            web.put("/configs", put_configs)]


async def _memory() -> dict[str, int]:
    # Two small reads of /proc and /sys: cheaper on the loop than a thread hop.
    return {"inuse": rss_bytes(), "oslimit": memory_limit()}
