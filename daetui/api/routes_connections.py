"""The controller API's /connections routes (to be filled in)."""

from __future__ import annotations

from aiohttp import web

from daetui.api.context import ApiContext


def routes(ctx: ApiContext) -> list[web.RouteDef]:
    """No routes yet."""
    return []
