"""The controller API's /proxies, /group and /providers/proxies against a daemon with real nodes in the lab.

Two ss-servers on the lab's internet: one behind the config's own nodes (over IPv4 and IPv6), one behind
the node a subscription serves over HTTP there. Beside them, nodes that cannot work: one at a port where
nothing listens (refused at once), one with a wrong password (ss-server holds such a connection open and
silent), and a vless node nothing answers (never checked: it is in no group). Clients are curl in the
router's namespace; the pins are checked on the control socket too. The answers must have mihomo's
field names and types and must never carry a password, a UUID or the subscription's token.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from daetui.control.client import call_once
from daetui.lab.topology import ADDR, HTTP_PORT
from daetui.outbound.shadowsocks import SsNode
from daetui.outbound.vless import VlessNode
from testkit.api import Answer, ApiLab, api_config
from testkit.peers.shadowsocks import SsServer

pytestmark = [pytest.mark.kernel, pytest.mark.peer]

METHOD = "aes-256-gcm"
PASSWORD = "api-proxies ss passw0rd"
SUB_PASSWORD = "api-proxies sub-node passw0rd"
WRONG_PASSWORD = "api-proxies not-the-passw0rd"
UID = "5f0c7a3e-61d2-4b9e-8a47-2c9d0e1b3f68"
TOKEN = "t0ken-d0a8f1c3e5b7"
SS_PORT, SUB_SS_PORT, DEAD_PORT, SERVE_PORT = 8411, 8412, 8413, 8082
SERVE_HOST = ADDR.hosts4[1]
TEST_URL = f"http://{ADDR.hosts4[0]}:{HTTP_PORT}/"      # the lab's web server, through the node under test
LIVE6 = "live6"
SUB1, SUB2 = "東京 sub/01", "東京 sub/02"                 # names a path must escape
GROUPS = """
[group.auto]
policy = "min_moving_avg"
filter = ["name(keyword: live)", "name(dead)"]

[group.pick]
policy = "fixed(0)"
filter = ["name(keyword: live)"]

[group.spread]
policy = "random"
filter = ["name(keyword: live)"]

[group.broken]
policy = "min"
filter = ["name(dead)"]

[group.subs]
filter = ["subtag(mine)"]
"""
NODE_KEYS = {"name": str, "type": str, "id": str, "udp": bool, "uot": bool, "xudp": bool, "tfo": bool,
             "mptcp": bool, "smux": bool, "interface": str, "dialer-proxy": str, "routing-mark": int,
             "alive": bool, "history": list, "extra": dict}
GROUP_KEYS = NODE_KEYS | {"all": list, "hidden": bool, "icon": str}


class ProxiesLab:
    """What the tests share: the daemon's API, the links (secrets) and the subscription's served directory."""

    def __init__(self, api: ApiLab, links: list[str], served: Path, second: str) -> None:
        self.api = api
        self.links = links
        self.served = served
        self.second = second           # another link of the subscription's server, for the update test
        self.answers: list[str] = []   # every answer's text, for the secrets test

    def curl(self, method: str, path: str, body: Any = None, **kw: Any) -> Answer:
        r = self.api.curl(method, path, body, **kw)
        self.answers.append(r.text)
        return r

    def get(self, path: str) -> Any:
        r = self.curl("GET", path)
        assert r.status == 200, (path, r.status, r.text)
        return r.json

    def proxies(self) -> dict[str, Any]:
        return self.get("/proxies")["proxies"]

    def pinned(self, group: str) -> str | None:
        snap = call_once(self.api.daemon.control_path, lambda c: c.snapshot(flows=False))
        return next(g.pinned for g in snap.groups if g.name == group)


def until(fn: Callable[[], Any], what: str, timeout: float = 40.0) -> Any:
    """Ask `fn` until it gives something true (the daemon's checks run on their own time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"still not: {what}")


def p(name: str) -> str:
    return quote(name, safe="")


@pytest.fixture(scope="module")
def lab_api(lab, tmp_path_factory) -> Iterator[ProxiesLab]:
    tmp = tmp_path_factory.mktemp("api-proxies")
    with ExitStack() as stack:
        ss = SsServer(lab, METHOD, PASSWORD, port=SS_PORT)
        sub_ss = SsServer(lab, METHOD, SUB_PASSWORD, port=SUB_SS_PORT)
        for server in (ss, sub_ss):
            stack.callback(server.stop)
            server.start()
        served = tmp / "served"
        (served / "s" / TOKEN).mkdir(parents=True)
        sub_link, second = sub_ss.node(4, SUB1).link(), sub_ss.node(4, SUB2).link()
        (served / "s" / TOKEN / "sub.txt").write_text(sub_link + "\n")
        http = subprocess.Popen(["ip", "netns", "exec", lab.wan, "python3", "-m", "http.server", str(SERVE_PORT),
                                 "--bind", SERVE_HOST, "--directory", str(served)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(http.wait)
        stack.callback(http.kill)
        nodes = {
            "live": ss.node(4, "live"),
            LIVE6: ss.node(6, LIVE6),
            "dead": SsNode("dead", ss.address4, DEAD_PORT, METHOD, PASSWORD),
            "silent": SsNode("silent", ss.address4, SS_PORT, METHOD, WRONG_PASSWORD),
            "vl": VlessNode("vl", ss.address4, DEAD_PORT, UID),
        }
        links = [n.link() for n in nodes.values()] + [sub_link, second]
        node_lines = "\n".join(f'"{name}" = "{n.link()}"' for name, n in nodes.items())
        base = f"http://{SERVE_HOST}:{SERVE_PORT}/s/{TOKEN}"
        config = api_config(nodes=node_lines, groups=GROUPS,
                            subscriptions=f'mine = "{base}/sub.txt"\ngone = "{base}/missing.txt"')
        api = ApiLab(lab, tmp / "daemon", config).start()
        stack.callback(api.stop)
        shared = ProxiesLab(api, links, served, second)

        def checked() -> bool:
            px = shared.proxies()
            return (SUB1 in px and px["live"]["alive"] and px["live"]["history"]
                    and not px["dead"]["alive"] and px[SUB1]["history"])
        until(checked, "the first checks done (live alive, dead not, the subscription's node in)")
        yield shared


def types_of(obj: dict[str, Any], keys: dict[str, type]) -> dict[str, type]:
    return {k: type(obj[k]) for k in keys if k in obj}


def test_every_node_group_and_builtin_with_mihomos_fields(lab_api: ProxiesLab) -> None:
    px = lab_api.proxies()
    assert list(px) == sorted(px)                          # as mihomo's map comes out (Go sorts the keys)
    for name in ("DIRECT", "REJECT", "GLOBAL", "live", LIVE6, "dead", "silent", "vl", SUB1,
                 "auto", "pick", "spread", "broken", "subs"):
        assert px[name]["name"] == name
        assert types_of(px[name], NODE_KEYS) == NODE_KEYS, name
    assert {px[n]["type"] for n in ("live", LIVE6, "dead", "silent", SUB1)} == {"Shadowsocks"}
    assert px["vl"]["type"] == "Vless"
    assert (px["DIRECT"]["type"], px["REJECT"]["type"]) == ("Direct", "Reject")
    assert px["live"]["udp"] is True and px["vl"]["xudp"] is False
    for entry in px["live"]["history"]:
        assert set(entry) == {"time", "delay"} and isinstance(entry["delay"], int)
        datetime.fromisoformat(entry["time"])
    assert px["live"]["history"][-1]["delay"] > 0
    assert px["dead"]["history"][-1]["delay"] == 0     # mihomo's "failed"
    ids = [px[n]["id"] for n in px]
    assert len(set(ids)) == len(ids)

    # Groups: the type says the policy; `now` the node in use, a member; `all` the members.
    assert {n: px[n]["type"] for n in ("auto", "pick", "spread", "broken", "subs")} == {
        "auto": "URLTest", "pick": "Selector", "spread": "LoadBalance", "broken": "URLTest", "subs": "URLTest"}
    for name in ("auto", "pick", "spread", "broken", "subs", "GLOBAL"):
        assert types_of(px[name], GROUP_KEYS) == GROUP_KEYS, name
    assert set(px["auto"]["all"]) == {"live", LIVE6, "dead"}
    assert px["auto"]["now"] in {"live", LIVE6}            # the dead one is never the lowest latency
    assert px["auto"]["fixed"] == "" and isinstance(px["auto"]["testUrl"], str)
    assert px["pick"]["now"] == px["pick"]["all"][0]      # fixed(0)
    assert "now" not in px["spread"] and "fixed" not in px["spread"]   # random: no one node
    assert px["broken"]["now"] == "REJECT" and px["broken"]["alive"] is False   # global.dead_group's default
    assert px["subs"]["all"] == [SUB1]

    # GLOBAL: mihomo's order (DIRECT, REJECT, the config's nodes, the groups); now: the routing's fallback.
    g = px["GLOBAL"]
    assert g["type"] == "Selector" and g["now"] == "DIRECT"
    assert g["all"][:2] == ["DIRECT", "REJECT"]
    assert set(g["all"]) == {"DIRECT", "REJECT", "live", LIVE6, "dead", "silent", "vl",
                             "auto", "pick", "spread", "broken", "subs"}
    assert g["all"].index("vl") < g["all"].index("auto")


def test_one_proxy_by_name_and_404_for_an_unknown_one(lab_api: ProxiesLab) -> None:
    one = lab_api.get(f"/proxies/{p(LIVE6)}")
    assert one["name"] == LIVE6 and one["type"] == "Shadowsocks"
    assert lab_api.get("/proxies/pick")["all"] == lab_api.proxies()["pick"]["all"]
    for path in ("/proxies/nope", f"/proxies/{p('live ')}", "/proxies/nope/delay?url=http://x/&timeout=100",
                 "/group/nope", "/group/live", "/providers/proxies/nope", "/providers/proxies/mine/live"):
        r = lab_api.curl("GET", path)
        assert (r.status, r.json) == (404, {"message": "Resource not found"}), path
    r = lab_api.curl("PUT", "/proxies/nope", {"name": "live"})
    assert (r.status, r.json) == (404, {"message": "Resource not found"})


@pytest.mark.parametrize("group", ["pick", "auto"])
def test_a_pin_changes_now_and_the_daemon_has_it_until_deleted(lab_api: ProxiesLab, group: str) -> None:
    before = lab_api.get(f"/proxies/{group}")
    other = next(m for m in before["all"] if m != before["now"] and lab_api.proxies()[m]["alive"])
    r = lab_api.curl("PUT", f"/proxies/{group}", {"name": other})
    assert r.status == 204 and r.text == ""
    after = lab_api.get(f"/proxies/{group}")
    assert after["now"] == other
    if after["type"] == "URLTest":
        assert after["fixed"] == other
    assert lab_api.pinned(group) == other
    assert lab_api.proxies()[group]["now"] == other

    assert lab_api.curl("DELETE", f"/proxies/{group}").status == 204
    assert lab_api.pinned(group) is None
    assert lab_api.get(f"/proxies/{group}").get("fixed", "") == ""
    if group == "pick":
        assert lab_api.get("/proxies/pick")["now"] == before["now"]   # fixed(0) again


def test_a_random_group_can_be_pinned_too(lab_api: ProxiesLab) -> None:
    assert lab_api.curl("PUT", "/proxies/spread", {"name": "live"}).status == 204
    try:
        assert lab_api.get("/proxies/spread")["now"] == "live" and lab_api.pinned("spread") == "live"
    finally:
        lab_api.curl("DELETE", "/proxies/spread")
    assert "now" not in lab_api.get("/proxies/spread")


@pytest.mark.parametrize("raw", ["{", "[]", '{"name": 5}', "", "\xff"])
def test_a_malformed_pin_is_400_body_invalid(lab_api: ProxiesLab, raw: str) -> None:
    r = lab_api.curl("PUT", "/proxies/pick", raw_body=raw)
    assert (r.status, r.json) == (400, {"message": "Body invalid"})
    assert lab_api.pinned("pick") is None


def test_pins_refused_as_mihomo_refuses_them(lab_api: ProxiesLab) -> None:
    r = lab_api.curl("PUT", "/proxies/pick", {"name": "dead"})          # not a member
    assert (r.status, r.json) == (400, {"message": "Selector update error: proxy not exist"})
    r = lab_api.curl("PUT", "/proxies/live", {"name": "live"})          # not a group
    assert (r.status, r.json) == (400, {"message": "Must be a Selector"})
    r = lab_api.curl("PUT", "/proxies/GLOBAL", {"name": "DIRECT"})      # daetui has no global mode
    assert r.status == 400 and "GLOBAL" in r.json["message"]
    assert lab_api.curl("DELETE", "/proxies/live").status == 400
    assert lab_api.pinned("pick") is None and lab_api.get("/proxies/GLOBAL")["now"] == "DIRECT"


def test_a_delay_test_goes_through_the_node_now(lab_api: ProxiesLab) -> None:
    url = quote(TEST_URL, safe="")
    for name in ("live", LIVE6, "pick", "DIRECT", "GLOBAL"):
        r = lab_api.curl("GET", f"/proxies/{p(name)}/delay?url={url}&timeout=5000")
        assert r.status == 200, (name, r.text)
        assert set(r.json) == {"delay"} and isinstance(r.json["delay"], int) and r.json["delay"] > 0
        got = lab_api.get(f"/proxies/{p(name)}")           # recorded as mihomo records it
        assert got["history"][-1]["delay"] == r.json["delay"]
        assert got["extra"][TEST_URL]["history"][-1]["delay"] == r.json["delay"]

    r = lab_api.curl("GET", f"/proxies/dead/delay?url={url}&timeout=5000")
    assert (r.status, r.json) == (503, {"message": "An error occurred in the delay test"})
    assert lab_api.get("/proxies/dead")["extra"][TEST_URL]["alive"] is False
    r = lab_api.curl("GET", f"/proxies/REJECT/delay?url={url}&timeout=5000")
    assert r.status == 503
    # ss-server holds a connection it cannot decrypt open and silent: the test's time runs out.
    r = lab_api.curl("GET", f"/proxies/silent/delay?url={url}&timeout=300")
    assert (r.status, r.json) == (504, {"message": "Timeout"})


def test_the_status_counts_only_when_expected_names_it(lab_api: ProxiesLab) -> None:
    url = quote(TEST_URL, safe="")
    ask = f"import urllib.request as u; print(u.build_opener(u.ProxyHandler({{}})).open({TEST_URL!r}).status)"
    status = int(lab_api.api.python(ask).stdout)                 # what the lab's web server answers
    r = lab_api.curl("GET", f"/proxies/live/delay?url={url}&timeout=5000&expected={status}")
    assert r.status == 200
    r = lab_api.curl("GET", f"/proxies/live/delay?url={url}&timeout=5000&expected={status + 1}-{status + 99}")
    assert (r.status, r.json) == (503, {"message": "An error occurred in the delay test"})


@pytest.mark.parametrize("query", ["", "?timeout=1000", f"?url={quote(TEST_URL)}", f"?url={quote(TEST_URL)}&timeout=x",
                                   f"?url={quote(TEST_URL)}&timeout=0", f"?url={quote(TEST_URL)}&timeout=40000",
                                   "?url=ftp://x/&timeout=100", "?url=nonsense&timeout=100",
                                   f"?url={quote(TEST_URL)}&timeout=100&expected=2xx"])
def test_delay_without_a_good_url_or_timeout_is_400(lab_api: ProxiesLab, query: str) -> None:
    r = lab_api.curl("GET", f"/proxies/live/delay{query}")
    assert (r.status, r.json) == (400, {"message": "Body invalid"})


def test_a_groups_delay_test_answers_for_the_members_that_answered(lab_api: ProxiesLab) -> None:
    r = lab_api.curl("GET", f"/group/auto/delay?url={quote(TEST_URL, safe='')}&timeout=5000")
    assert r.status == 200
    assert set(r.json) == {"live", LIVE6}                 # not the dead one
    assert all(isinstance(v, int) and v > 0 for v in r.json.values())
    r = lab_api.curl("GET", f"/group/broken/delay?url={quote(TEST_URL, safe='')}&timeout=2000")
    assert (r.status, r.json) == (504, {"message": "get delay: all proxies timeout"})
    assert lab_api.curl("GET", "/group/live/delay?url=http://x/&timeout=100").status == 404
    groups = lab_api.get("/group")["proxies"]
    assert {g["name"] for g in groups} == {"auto", "pick", "spread", "broken", "subs", "GLOBAL"}
    assert lab_api.get("/group/auto")["all"] == lab_api.proxies()["auto"]["all"]


def test_subscriptions_are_providers_and_the_config_nodes_mihomos_default(lab_api: ProxiesLab) -> None:
    providers = lab_api.get("/providers/proxies")["providers"]
    assert set(providers) == {"default", "mine", "gone"}
    for prov in providers.values():
        assert types_of(prov, {"name": str, "type": str, "vehicleType": str, "proxies": list, "testUrl": str,
                               "expectedStatus": str, "updatedAt": str}) == {
            "name": str, "type": str, "vehicleType": str, "proxies": list, "testUrl": str, "expectedStatus": str,
            "updatedAt": str}
        assert prov["type"] == "Proxy"
        for proxy in prov["proxies"]:
            assert types_of(proxy, NODE_KEYS) == NODE_KEYS
    default = providers["default"]
    assert default["vehicleType"] == "Compatible"
    assert [x["name"] for x in default["proxies"]][:2] == ["DIRECT", "REJECT"]
    assert {"live", LIVE6, "dead", "silent", "vl", "auto"} <= {x["name"] for x in default["proxies"]}
    assert SUB1 not in {x["name"] for x in default["proxies"]}
    mine = providers["mine"]
    assert mine["vehicleType"] == "HTTP" and [x["name"] for x in mine["proxies"]] == [SUB1]
    assert datetime.fromisoformat(mine["updatedAt"]).year > 2000
    assert providers["gone"]["proxies"] == []
    assert lab_api.get("/providers/proxies/mine")["name"] == "mine"
    assert lab_api.get(f"/providers/proxies/mine/{p(SUB1)}")["name"] == SUB1


def test_a_provider_update_fetches_now_and_its_new_node_is_there(lab_api: ProxiesLab) -> None:
    sub = lab_api.served / "s" / TOKEN / "sub.txt"
    first = sub.read_text()
    sub.write_text(first + lab_api.second + "\n")
    try:
        r = lab_api.curl("PUT", "/providers/proxies/mine")
        assert r.status == 204
        names = [x["name"] for x in lab_api.get("/providers/proxies/mine")["proxies"]]
        assert names == [SUB1, SUB2]
        assert lab_api.get("/proxies/subs")["all"] == names
    finally:
        sub.write_text(first)
        lab_api.curl("PUT", "/providers/proxies/mine")
    r = lab_api.curl("PUT", "/providers/proxies/gone")   # its URL answers 404: mihomo's 503 with the reason
    assert r.status == 503 and "404" in r.json["message"]
    assert lab_api.curl("PUT", "/providers/proxies/default").status == 204
    assert lab_api.curl("PUT", "/providers/proxies/nope").status == 404


def test_a_provider_healthcheck_checks_its_nodes_now(lab_api: ProxiesLab) -> None:
    before = lab_api.get(f"/proxies/{p(SUB1)}")["history"]
    r = lab_api.curl("GET", "/providers/proxies/mine/healthcheck")
    assert r.status == 204
    after = lab_api.get(f"/proxies/{p(SUB1)}")
    newest = max(datetime.fromisoformat(h["time"]) for h in after["history"])
    assert after["alive"] is True and newest > max(datetime.fromisoformat(h["time"]) for h in before)
    assert lab_api.curl("GET", "/providers/proxies/nope/healthcheck").status == 404
    r = lab_api.curl("GET", f"/providers/proxies/mine/{p(SUB1)}/healthcheck?url={quote(TEST_URL, safe='')}"
                            "&timeout=5000")
    assert r.status == 200 and r.json["delay"] > 0


def test_no_answer_carries_a_secret(lab_api: ProxiesLab) -> None:
    """Everything asked in this module, and once more every listing: no password, UUID, token or link."""
    for path in ("/proxies", "/group", "/providers/proxies", "/providers/proxies/mine", "/proxies/vl",
                 "/proxies/silent", "/proxies/vl/delay?url=http://x/&timeout=500"):
        lab_api.curl("GET", path)
    lab_api.curl("PUT", "/providers/proxies/gone")
    text = "\n".join(lab_api.answers)
    assert SUB1 in text and "Shadowsocks" in text   # the answers were read
    for secret in (PASSWORD, SUB_PASSWORD, WRONG_PASSWORD, UID, UID.replace("-", ""), TOKEN, *lab_api.links):
        assert secret not in text, secret
