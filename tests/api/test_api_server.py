"""The controller API's server: it listens where the config says, asks for the secret, answers CORS and errors
as mihomo does, and the console's snapshot says it is on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from drive import app_text, until

from daetui.control.client import ControlClient, call_once
from daetui.ui.app import DaetuiApp
from testkit.api import ADDRESS, SECRET, ApiLab, api_config

pytestmark = [pytest.mark.kernel]


@pytest.fixture(scope="module")
def api(lab, tmp_path_factory) -> Iterator[ApiLab]:
    a = ApiLab(lab, tmp_path_factory.mktemp("api-server"), api_config()).start()
    try:
        yield a
    finally:
        a.stop()


def test_version_and_hello_with_the_secret(api):
    r = api.curl("GET", "/version")
    assert r.status == 200 and r.headers["content-type"].startswith("application/json")
    assert r.json["meta"] is True and r.json["version"].startswith("daetui ")
    assert api.curl("GET", "/").json == {"hello": "mihomo"}


@pytest.mark.parametrize("token", ["", "wrong-secret", SECRET[:-1]])
def test_without_the_secret_401_and_nothing_else(api, token):
    r = api.curl("GET", "/version", token=token)
    assert r.status == 401
    assert r.json == {"message": "Unauthorized"}
    assert "daetui" not in r.text


def test_a_token_in_the_query_counts_only_for_websockets(api):
    assert api.curl("GET", f"/version?token={SECRET}", token="").status == 401
    r = api.curl("GET", f"/version?token={SECRET}", token="", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert r.status != 401   # past auth: /version is no websocket, so aiohttp answers it as a plain GET


def test_cors_preflight_needs_no_secret_and_names_what_is_allowed(api):
    r = api.curl("OPTIONS", "/proxies", token="", headers={
        "Origin": "http://dashboard.lab", "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "authorization,content-type",
        "Access-Control-Request-Private-Network": "true"})
    assert r.status == 204
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.headers["access-control-allow-methods"] == "PUT"
    assert r.headers["access-control-allow-headers"] == "authorization,content-type"
    assert r.headers["access-control-allow-private-network"] == "true"
    r = api.curl("GET", "/version", headers={"Origin": "http://dashboard.lab"})
    assert r.headers["access-control-allow-origin"] == "*"


def test_unknown_path_and_wrong_method_answer_json(api):
    r = api.curl("GET", "/no/such/thing")
    assert r.status == 404 and r.json == {"message": "Resource not found"}
    r = api.curl("DELETE", "/version")
    assert r.status == 405 and r.json == {"message": "Method not allowed"}


def test_the_snapshot_says_where_the_api_listens_and_counts_refusals(api):
    before = call_once(api.daemon.control_path, lambda c: c.snapshot(flows=False)).api
    api.curl("GET", "/version", token="nope")
    snap = call_once(api.daemon.control_path, lambda c: c.snapshot(flows=False))
    assert snap.api.address == ADDRESS and snap.api.error == ""
    assert snap.api.unauthorized == before.unauthorized + 1
    assert snap.api.requests > before.requests


def test_the_console_shows_where_the_api_listens(api):
    async def console() -> str:
        async def connect() -> ControlClient:
            c = ControlClient(api.daemon.control_path)
            await c.connect()
            return c
        app = DaetuiApp(connect, refresh=0.3)
        async with app.run_test(size=(200, 50)) as pilot:
            return await until(pilot, lambda: (t := app_text(app)) and f"API http://{ADDRESS}" in t and t)

    text = asyncio.run(console())
    line = next(ln for ln in text.splitlines() if f"API http://{ADDRESS}" in ln)
    assert "requests" in line and "streams" in line
