"""The controller API's /configs against the real daemon: mihomo's shape answered from daetui's config, the log
level changed at runtime (its debug lines appear and go), other keys answered honestly, reloads from the file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import wait_for

from daetui.config.load import load_config
from daetui.control.state import Snapshot
from daetui.lab.topology import ADDR
from testkit.api import SECRET, ApiLab, api_config

pytestmark = [pytest.mark.kernel]

RULES = f"""
  "dip({ADDR.hosts4[1]}) -> direct",
"""


@pytest.fixture(scope="module")
def api(lab, tmp_path_factory) -> Iterator[ApiLab]:
    a = ApiLab(lab, tmp_path_factory.mktemp("api-configs"), api_config(rules=RULES))
    a.start()
    try:
        yield a
    finally:
        a.stop()



def snapshot(api: ApiLab) -> Snapshot:
    return api.snapshot(flows=False, dns=False)


def configs(api: ApiLab) -> dict[str, Any]:
    r = api.curl("GET", "/configs")
    assert r.status == 200
    return r.json


def test_get_answers_mihomos_shape_from_the_config(api):
    cfg = load_config(api.daemon.config_path)
    doc = configs(api)
    assert doc["tproxy-port"] == cfg.global_.tproxy_port
    assert doc["routing-mark"] == cfg.global_.so_mark_from_dae
    for key in ("port", "socks-port", "redir-port", "mixed-port"):
        assert doc[key] == 0                      # no such inbound in daetui
    assert doc["tun"]["enable"] is False and doc["mode"] == "rule"
    assert doc["log-level"] == {"warn": "warning"}.get(cfg.global_.log_level, cfg.global_.log_level)
    assert doc["allow-lan"] is bool(cfg.global_.lan_interface)
    assert doc["daetui"]["config"] == cfg.source
    assert SECRET not in json.dumps(doc)


def debug_probe(api: ApiLab, n: int) -> None:
    assert api.curl("DELETE", f"/connections/debug-probe-{n}").status == 204


LOG_CLIENT = """
import asyncio, json
import aiohttp

async def main():
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {SECRET}"}) as session:
        async with session.ws_connect(BASE + f"/logs?level=debug&token={SECRET}") as ws:
            await asyncio.sleep(0.3)
            async with session.delete(BASE + "/connections/debug-probe-" + PROBE) as r:
                assert r.status == 204
            async with session.delete(BASE + "/connections") as r:      # an info line: the stream's end mark
                assert r.status == 204
            got = []
            try:
                async with asyncio.timeout(5):
                    async for msg in ws:
                        got.append(json.loads(msg.data))
                        if "closed 0 relayed" in got[-1]["payload"]:
                            break
            except TimeoutError:
                pass
    print(json.dumps(got))

asyncio.run(main())
"""


def streamed_debug(api: ApiLab, probe: str) -> list[dict[str, Any]]:
    """The debug lines /logs?level=debug streams while an unknown id is closed (logged at debug)."""
    r = api.python(f"PROBE = {probe!r}\n" + LOG_CLIENT)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert any("closed 0 relayed" in m["payload"] for m in got), got     # the stream itself worked
    return [m for m in got if f"debug-probe-{probe}" in m["payload"]]


def test_the_log_level_changes_at_runtime(api):
    assert configs(api)["log-level"] == "info"
    assert streamed_debug(api, "a") == []
    assert "debug-probe-a" not in api.daemon.log()
    try:
        r = api.curl("PATCH", "/configs", {"log-level": "debug"})
        assert r.status == 204 and "x-daetui-ignored" not in r.headers
        assert configs(api)["log-level"] == "debug"
        lines = streamed_debug(api, "b")
        assert lines and lines[0]["type"] == "debug"
        wait_for(lambda: "debug-probe-b" in api.daemon.log())
    finally:
        assert api.curl("PATCH", "/configs", {"log-level": "INFO"}).status == 204   # mihomo's decoder: any case
    assert configs(api)["log-level"] == "info"
    assert streamed_debug(api, "c") == []
    assert "debug-probe-c" not in api.daemon.log()


def test_keys_daetui_cannot_apply_are_named_and_logged(api):
    r = api.curl("PATCH", "/configs", {"mode": "global", "mixed-port": 7890, "tun": {"enable": True},
                                       "some-future-key": 1})
    assert r.status == 204
    named = {k.strip() for k in r.headers["x-daetui-ignored"].split(",")}
    assert named == {"mode", "mixed-port", "tun", "some-future-key"}
    wait_for(lambda: "not applicable to daetui" in api.daemon.log() and '"global"' in api.daemon.log())
    doc = configs(api)
    assert doc["mode"] == "rule" and doc["mixed-port"] == 0 and doc["tun"]["enable"] is False
    # What daetui already is changes nothing, and says nothing.
    cfg = load_config(api.daemon.config_path)
    r = api.curl("PATCH", "/configs", {"mode": "Rule", "tproxy-port": cfg.global_.tproxy_port,
                                       "tun": {"enable": False}, "ipv6": True, "allow-lan": True})
    assert r.status == 204 and "x-daetui-ignored" not in r.headers


@pytest.mark.parametrize("body", ["not json", "[1, 2]", '"log-level"', '{"log-level": "loud"}',
                                  '{"log-level": 5}', '{"port": "7890"}', '{"allow-lan": "yes"}',
                                  '{"mode": "sideways"}', '{"lan-allowed-ips": ["not a prefix"]}'])
def test_a_malformed_patch_is_body_invalid_and_changes_nothing(api, body):
    r = api.curl("PATCH", "/configs", raw_body=body)
    assert r.status == 400 and r.json == {"message": "Body invalid"}
    assert configs(api)["log-level"] == "info"


def test_put_reloads_the_file_and_a_broken_file_changes_nothing(api):
    path = api.daemon.config_path
    text = path.read_text()
    before = snapshot(api)
    added = f'"dip({ADDR.hosts4[2]}) -> direct"'
    try:
        path.write_text(text.replace(RULES, RULES + f"  {added},\n"))
        r = api.curl("PUT", "/configs?force=true", raw_body="")
        assert r.status == 204, r.text
        after = snapshot(api)
        assert after.health.generation != before.health.generation
        assert any(rule.text == added.strip('"') for rule in after.rules)
        assert configs(api)["daetui"]["generation"] == after.health.generation
        # mihomo's body naming the daemon's own file: the same.
        assert api.curl("PUT", "/configs", {"path": str(path), "payload": ""}).status == 204
        # A file that does not load: mihomo's 400 with the reason; the running config stays.
        path.write_text(text.replace(RULES, '  "dip(nonsense -> direct",\n'))
        running = snapshot(api)
        r = api.curl("PUT", "/configs", raw_body="{}")
        assert r.status == 400 and "daetui.toml" in r.json["message"]
        now = snapshot(api)
        assert now.health.generation == running.health.generation
        assert [x.text for x in now.rules] == [x.text for x in running.rules]
    finally:
        path.write_text(text)
        assert api.curl("PUT", "/configs").status == 204


@pytest.mark.parametrize(("body", "word"), [('{"path": "relative.toml"}', "absolute"),
                                            ('{"path": "/etc/other.toml"}', "own config file"),
                                            ('{"payload": "mixed-port: 7890"}', "payload"),
                                            ('{"path": 5}', "Body invalid"), ("[", "Body invalid")])
def test_put_refuses_what_daetui_cannot_load(api, body, word):
    generation = snapshot(api).health.generation
    r = api.curl("PUT", "/configs", raw_body=body)
    assert r.status == 400 and word in r.json["message"]
    assert snapshot(api).health.generation == generation
