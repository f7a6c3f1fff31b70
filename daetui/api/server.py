"""The controller API's HTTP server: aiohttp on the daemon's loop, mihomo's auth, CORS and errors.

Every route module under daetui/api exposes `routes(ctx) -> list[web.RouteDef]`;
ROUTE_MODULES lists them. A handler raises ApiError (errors.py) for mihomo's
error answers; anything else it raises is a 500 with the redacted reason.
Heavy work (encoding 10k connections) goes to a thread, so the relays on the
same loop never wait for a dashboard.
"""

from __future__ import annotations

import hmac
import importlib
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from daetui.api.context import ApiContext
from daetui.api.errors import UNAUTHORIZED, ApiError, error
from daetui.control.plane import ControlPlane
from daetui.control.state import ApiStatus
from daetui.redact import redact

log = logging.getLogger("daetui.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The modules whose `routes(ctx)` make up the API, in the order their routes are added.
ROUTE_MODULES = (
    "daetui.api.routes_basic",
    "daetui.api.routes_proxies",
    "daetui.api.routes_rules",
    "daetui.api.routes_connections",
    "daetui.api.routes_dns",
    "daetui.api.metrics",
)

MAX_BODY = 1 << 20   # a PATCH /configs or PUT /proxies body is a few bytes; more is refused (413)
CORS_METHODS = "GET, POST, PUT, PATCH, DELETE"
CORS_HEADERS = "Content-Type, Authorization"


def split_address(address: str) -> tuple[str, int]:
    """`127.0.0.1:9090` / `[::1]:9090` -> (host, port); the schema checked the form."""
    host, _, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") else host
    ipaddress.ip_address(host)
    return host, int(port)


class ApiServer:
    """The controller API of one ControlPlane, listening on `address` (host:port)."""

    def __init__(self, plane: ControlPlane, address: str, secret: str = "",
                 cors_origins: tuple[str, ...] = ("*",)) -> None:
        self.address = address
        self.ctx = ApiContext(plane, secret)
        self.cors_origins = cors_origins
        self.error = ""
        self._runner: web.AppRunner | None = None
        self.app = self._app()

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._cors, self._errors, self._auth], client_max_size=MAX_BODY)
        for name in ROUTE_MODULES:
            module = importlib.import_module(name)
            app.add_routes(module.routes(self.ctx))
        return app

    async def start(self) -> None:
        """Listen; a failure (address in use) is logged and shown, never stops the daemon."""
        host, port = split_address(self.address)
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, reuse_address=True).start()
        except OSError as e:
            self.error = f"cannot listen on {self.address}: {e.strerror or e}"
            log.error("controller API: %s", self.error)
            await runner.cleanup()
            return
        self._runner = runner
        self.ctx.plane.api_status = self.status
        if not self.ctx.secret and not ipaddress.ip_address(host).is_loopback:
            log.warning("controller API on %s without external_controller_secret: anyone who reaches it "
                        "controls daetui", self.address)
        log.info("controller API on http://%s", self.address)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def status(self) -> ApiStatus:
        c = self.ctx.counters
        return ApiStatus(address=self.address, error=self.error, clients=c.streams.open, requests=c.requests,
                         unauthorized=c.unauthorized, dropped=c.streams.dropped)

    # -- middlewares, outermost first ----------------------------------------------------------------
    def _allowed_origin(self, origin: str) -> str | None:
        if "*" in self.cors_origins:
            return "*"
        return origin if origin in self.cors_origins else None

    @web.middleware
    async def _cors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """CORS as mihomo's (rs/cors): preflights answered before auth, the origin echoed when allowed."""
        origin = request.headers.get("Origin")
        allowed = self._allowed_origin(origin) if origin else None
        if request.method == "OPTIONS" and origin and "Access-Control-Request-Method" in request.headers:
            resp = web.Response(status=204)
            if allowed is not None and request.headers["Access-Control-Request-Method"].upper() in CORS_METHODS:
                resp.headers["Access-Control-Allow-Origin"] = allowed
                resp.headers["Access-Control-Allow-Methods"] = request.headers["Access-Control-Request-Method"]
                if "Access-Control-Request-Headers" in request.headers:
                    resp.headers["Access-Control-Allow-Headers"] = request.headers["Access-Control-Request-Headers"]
                resp.headers["Access-Control-Max-Age"] = "300"
                if request.headers.get("Access-Control-Request-Private-Network") == "true":
                    resp.headers["Access-Control-Allow-Private-Network"] = "true"
            resp.headers["Vary"] = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
            return resp
        resp = await handler(request)
        if allowed is not None and not resp.prepared:
            resp.headers["Access-Control-Allow-Origin"] = allowed
            resp.headers["Vary"] = "Origin"
        return resp

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        counters = self.ctx.counters
        counters.requests += 1
        try:
            resp = await handler(request)
        except ApiError as e:
            counters.errors += 1
            return error(e.status, e.message)
        except web.HTTPException as e:
            if e.status == 401:
                raise
            counters.errors += 1
            if e.status < 400:
                raise
            text = {404: "Resource not found", 405: "Method not allowed", 413: "Body too large"}.get(e.status, e.reason)
            return error(e.status, text)
        except json.JSONDecodeError:
            counters.errors += 1
            return error(400, "Body invalid")
        except Exception as e:
            counters.errors += 1
            log.warning("controller API: %s %s failed: %s", request.method, request.path,
                        redact(f"{type(e).__name__}: {e}"))
            return error(500, f"{type(e).__name__}: {e}")
        return resp

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """mihomo's: `Authorization: Bearer SECRET`, or `?token=SECRET` on a websocket upgrade."""
        secret = self.ctx.secret
        if secret:
            token = request.query.get("token", "")
            if request.headers.get("Upgrade", "").lower() == "websocket" and token:
                ok = hmac.compare_digest(token.encode(), secret.encode())
            else:
                scheme, _, given = request.headers.get("Authorization", "").partition(" ")
                ok = scheme == "Bearer" and hmac.compare_digest(given.encode(), secret.encode())
            if not ok:
                self.ctx.counters.unauthorized += 1
                return error(401, UNAUTHORIZED)
        return await handler(request)
