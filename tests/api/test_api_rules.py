"""The controller API's /rules against the real daemon: mihomo's rule list with the kernel's hit counts, and
its rule toggle, at runtime (the file untouched) or written to the file (comments kept)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from helpers import echoes, http_get, lan_connect, wait_for

from daetui.config.load import load_config
from daetui.control.state import Snapshot
from daetui.lab.topology import ADDR
from testkit.api import ApiLab, api_config

pytestmark = [pytest.mark.kernel]

RELAYED, TOGGLED, DIRECT = ADDR.hosts4        # rule 0's host, rule 1's host, the fallback's
RULES = f"""
  # the echo port of the first host, relayed through the group (no nodes: the control plane's direct dialer)
  "dip({RELAYED}) && dport(7) -> proxy",
  # the second host: toggled by the tests
  {{ rule = "dip({TOGGLED}) -> proxy", name = "second" }},
  # never matched by the tests' flows (written as dae allows: no spaces around the arrow)
  "dport(9, 19)->block",
"""
COMMENTS = [line.strip() for line in RULES.splitlines() if line.strip().startswith("#")]


@pytest.fixture(scope="module")
def api(lab, tmp_path_factory) -> Iterator[ApiLab]:
    a = ApiLab(lab, tmp_path_factory.mktemp("api-rules"), api_config(groups="[group.proxy]\n", rules=RULES)).start()
    try:
        yield a
    finally:
        a.stop()


def snapshot(api: ApiLab, flows: bool = False) -> Snapshot:
    return api.snapshot(flows=flows)


def rules(api: ApiLab) -> list[dict[str, Any]]:
    r = api.curl("GET", "/rules")
    assert r.status == 200, r.text
    return r.json["rules"]


def echo_flow(api: ApiLab, host: str) -> int:
    """One echoed TCP flow from the LAN client to host:7; its source port."""
    s = lan_connect(api.lab, host, 7)
    try:
        sport = s.getsockname()[1]
        assert echoes(s, b"where do I go? " * 100)
    finally:
        s.close()
    return sport


def route_of(api: ApiLab, sport: int) -> tuple[str, int | None, bool]:
    """(outbound, rule index, relayed) of the LAN client's flow from `sport`, as the daemon holds it."""
    def find() -> tuple[str, int | None, bool] | None:
        snap = snapshot(api, flows=True)
        for c in snap.connections:
            if c.src[1] == sport:
                return c.outbound, c.rule_index, True
        for f in snap.kernel_flows:
            if f.key.sport == sport and not f.to_control_plane:
                return snap.outbounds[f.outbound], f.rule_index, False
        return None
    return wait_for(find, timeout=10)


def test_the_rules_as_mihomo_lists_them(api):
    got = rules(api)
    snap = snapshot(api)
    assert [r["index"] for r in got] == list(range(len(snap.rules) + 1))
    for r in got:
        assert set(r) >= {"type", "payload", "proxy", "size", "index", "extra"}
        assert set(r["extra"]) == {"disabled", "hitCount", "hitAt", "missCount", "missAt"}
    # one function with one value: mihomo's type and its payload; more: AND, with the dae text
    assert (got[0]["type"], got[0]["payload"], got[0]["proxy"]) == ("AND", f"dip({RELAYED}) && dport(7)", "proxy")
    assert (got[1]["type"], got[1]["payload"]) == ("IPCIDR", f"{TOGGLED}/32")
    assert (got[2]["type"], got[2]["payload"], got[2]["proxy"]) == ("DstPort", "9/19", "block")
    # the fallback last, as mihomo's MATCH
    assert (got[-1]["type"], got[-1]["payload"], got[-1]["proxy"]) == ("Match", "", snap.health.fallback)
    assert [r["extra"]["disabled"] for r in got[:-1]] == [not r.enabled for r in snap.rules]


def test_hit_counts_are_the_snapshots(api):
    before = {r["index"]: r["extra"]["hitCount"] for r in rules(api)}
    for _ in range(2):
        echo_flow(api, RELAYED)
    http_get(api.lab, DIRECT)
    wait_for(lambda: rules(api)[0]["extra"]["hitCount"] >= before[0] + 2 or None)
    # The flows are done: the counters hold still between the two snapshots around the answer.
    snap0 = snapshot(api)
    got = rules(api)
    snap1 = snapshot(api)
    assert [r.hits for r in snap0.rules] == [r.hits for r in snap1.rules]
    assert snap0.fallback_hits == snap1.fallback_hits
    for info in snap1.rules:
        assert got[info.index]["extra"]["hitCount"] == info.hits
    assert got[-1]["extra"]["hitCount"] == snap1.fallback_hits
    assert got[0]["extra"]["hitCount"] >= before[0] + 2
    assert got[-1]["extra"]["hitCount"] > before[len(got) - 1]
    assert got[0]["extra"]["hitAt"] > "1970-01-01T00:00:00Z"
    # Rules match first to last: rule 0 was passed by every flow a later rule or the fallback decided.
    later = sum(r.hits for r in snap1.rules[1:] if r.enabled) + snap1.fallback_hits
    assert got[0]["extra"]["missCount"] == later


def test_a_runtime_toggle_moves_the_next_flow_and_leaves_the_file(api):
    path = api.daemon.config_path
    text = path.read_bytes()
    assert route_of(api, echo_flow(api, TOGGLED)) == ("proxy", 1, True)
    held = lan_connect(api.lab, TOGGLED, 7)   # relayed, and open across the toggle
    try:
        assert echoes(held, b"before")
        r = api.curl("PATCH", "/rules/disable", {"1": True})
        assert r.status == 204, r.text
        assert rules(api)[1]["extra"]["disabled"] is True
        assert snapshot(api).rules[1].enabled is False
        # The next flow to that host: past the disabled rule, to the fallback, forwarded by the kernel.
        assert route_of(api, echo_flow(api, TOGGLED)) == (snapshot(api).health.fallback, None, False)
        assert path.read_bytes() == text
        assert echoes(held, b"after: the flow decided before is kept")

        assert api.curl("PATCH", "/rules/disable", {"1": False}).status == 204
        assert rules(api)[1]["extra"]["disabled"] is False
        assert route_of(api, echo_flow(api, TOGGLED)) == ("proxy", 1, True)
        assert path.read_bytes() == text
        assert echoes(held, b"still")
    finally:
        held.close()


def test_a_toggle_to_the_state_in_force_reloads_nothing(api):
    gen = snapshot(api).health.generation
    assert api.curl("PATCH", "/rules/disable", {"0": False, str(len(snapshot(api).rules)): False}).status == 204
    assert snapshot(api).health.generation == gen


def test_a_reload_of_the_file_ends_a_runtime_toggle(api):
    assert api.curl("PATCH", "/rules/disable", {"0": True}).status == 204
    assert rules(api)[0]["extra"]["disabled"] is True
    out = api.daemon.cli("reload")
    assert out.returncode == 0, out.stderr
    assert rules(api)[0]["extra"]["disabled"] is False


def test_persist_writes_the_toggle_to_the_file_with_its_comments(api):
    path = api.daemon.config_path
    original = path.read_text()
    try:
        r = api.curl("PATCH", "/rules/disable?persist=true", {"2": True})
        assert r.status == 204, r.text
        text = path.read_text()
        assert text != original
        for comment in COMMENTS:
            assert comment in text
        assert [e.enabled for e in load_config(str(path)).routing.entries] == [True, True, False]
        assert rules(api)[2]["extra"]["disabled"] is True
        # The file is what is in force: a reload of it keeps the rule off.
        assert api.daemon.cli("reload").returncode == 0
        assert rules(api)[2]["extra"]["disabled"] is True

        assert api.curl("PATCH", "/rules/disable?persist=1", {"2": False}).status == 204
        assert [e.enabled for e in load_config(str(path)).routing.entries] == [True, True, True]
        assert rules(api)[2]["extra"]["disabled"] is False
        for comment in COMMENTS:
            assert comment in path.read_text()
    finally:
        path.write_text(original)
        assert api.daemon.cli("reload").returncode == 0


@pytest.mark.parametrize("body", ["", "nope", "[1]", '{"x": true}', '{"0": "yes"}', '{"0": 1}', '{"1.5": true}'])
def test_a_body_that_is_no_index_map_is_400(api, body):
    before = rules(api)
    r = api.curl("PATCH", "/rules/disable", raw_body=body)
    assert r.status == 400 and r.json == {"message": "Body invalid"}
    assert [x["extra"]["disabled"] for x in rules(api)] == [x["extra"]["disabled"] for x in before]


def test_an_unknown_index_is_404_and_changes_nothing(api):
    n = len(snapshot(api).rules)
    gen = snapshot(api).health.generation
    for index in (n + 1, -1, 10_000):
        r = api.curl("PATCH", "/rules/disable", {"0": True, str(index): True})
        assert r.status == 404, r.text
        assert str(index) in r.json["message"]
    assert [x["extra"]["disabled"] for x in rules(api)] == [False] * (n + 1)
    assert snapshot(api).health.generation == gen


def test_the_fallback_cannot_be_disabled(api):
    n = len(snapshot(api).rules)
    r = api.curl("PATCH", "/rules/disable", {str(n): True})
    assert r.status == 400 and "fallback" in r.json["message"]
    assert rules(api)[n]["extra"]["disabled"] is False


def test_persist_takes_only_true_or_false(api):
    r = api.curl("PATCH", "/rules/disable?persist=maybe", {"0": False})
    assert r.status == 400 and "persist" in r.json["message"]


def test_rules_need_the_secret(api):
    assert api.curl("GET", "/rules", token="").status == 401
    assert api.curl("PATCH", "/rules/disable", {"0": True}, token="wrong").status == 401
    assert rules(api)[0]["extra"]["disabled"] is False


def test_the_dashboards_time_format(api):
    for r in rules(api):
        for key in ("hitAt", "missAt"):
            at = r["extra"][key]
            assert at.endswith("Z") and at[4] == "-" and at[10] == "T", at

