"""The controller API's small routes: `/` and `/version`."""

from __future__ import annotations

from importlib import metadata

from aiohttp import web

from daetui.api.context import ApiContext


def daetui_version() -> str:
    try:
        return metadata.version("daetui")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def routes(ctx: ApiContext) -> list[web.RouteDef]:
    """`GET /` (mihomo's hello) and `GET /version`."""

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": "mihomo"})

    async def version(request: web.Request) -> web.Response:
        # "meta": true is what dashboards read to enable mihomo's extra features (rule toggling, group delay).
        return web.json_response({"meta": True, "version": f"daetui {daetui_version()}"})

    return [web.get("/", hello), web.get("/version", version)]
