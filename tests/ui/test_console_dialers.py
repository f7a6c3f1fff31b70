"""The Dialers pane driven by Pilot against a real daemon whose group has two real SOCKS5 nodes (danted).

Both danted instances run on the lab's "internet"; the group's checks fetch
the lab's web server through them (and ask its unbound, over UDP ASSOCIATE).
The second node's filter line adds 500 ms, so `min` picks the first until the
console pins the second; which node a flow went through is the daemon's own
record of it (`Connection.node`).
"""

from __future__ import annotations

import asyncio
import re

import pytest
from drive import app_text, line_text, make_app, until
from helpers import Daemon, tcp_echo

from daetui.control.client import ControlClient
from daetui.control.state import Snapshot
from daetui.lab.topology import ADDR
from daetui.ui.panes.connections import ConnectionsPane
from daetui.ui.panes.dialers import DialersPane, GroupRow, NodeRow
from testkit.peers.dnsmasq import dns_peers
from testkit.peers.socks_http import PROXY4, Danted

pytestmark = [pytest.mark.kernel, pytest.mark.peer]

PORTS = {"s1": 1080, "s2": 1090}
WEB4, WEB6 = ADDR.hosts4[0], ADDR.hosts6[0]

CONFIG = f"""
[global]
lan_interface = ["lan0"]

[node]
s1 = "socks5://{PROXY4}:{PORTS['s1']}"
s2 = "socks5://{PROXY4}:{PORTS['s2']}"

[group.proxy]
filter = ["name(s1)", "name(s2) [add_latency: 500ms]"]
policy = "min"
tcp_check_url = ["http://{WEB4}/", "{WEB4}", "{WEB6}"]
udp_check_dns = ["dns.lab.test:53", "{ADDR.dns4[0]}", "{ADDR.dns6[0]}"]
# Checked once at the start; every later check in these tests is one the console asked for.
check_interval = "10m"

[routing]
rules = ["dip({WEB4}, '{WEB6}') -> proxy"]
fallback = "direct"
"""


@pytest.fixture(scope="module")
def daemon(lab, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dialers-console")
    cfg = tmp / "dialers.toml"
    cfg.write_text(CONFIG)
    with dns_peers(lab), Danted(lab, PORTS["s1"]), Danted(lab, PORTS["s2"]):
        d = Daemon(lab, cfg, tmp / "run")
        d.start()
        yield d
        assert d.stop() == 0


async def daemon_snapshot(daemon: Daemon) -> Snapshot:
    """The daemon's own word, on a connection of the test's (not the console's)."""
    c = ControlClient(daemon.run_dir / "control.sock")
    await c.connect()
    try:
        return await c.snapshot(flows=False)
    finally:
        await c.close()


async def relay_a_flow(lab, daemon: Daemon, sport: int) -> str | None:
    """A LAN client's TCP flow to the web host (routed to the group): the node the daemon says it went through."""
    payload = f"through the group from {sport}".encode()
    assert await asyncio.to_thread(tcp_echo, lab, WEB4, payload, sport=sport) == payload
    for _ in range(20):
        snap = await daemon_snapshot(daemon)
        conn = next((c for c in snap.connections if c.src[1] == sport and c.state != "open"), None)
        if conn is not None:
            assert conn.outbound == "proxy" and conn.state == "closed", conn
            return conn.node
        await asyncio.sleep(0.1)
    raise AssertionError(f"no closed connection from port {sport} in the daemon's table")


async def open_pane(pilot) -> DialersPane:
    app = pilot.app
    await until(pilot, lambda: app.snapshot is not None and app.snapshot.groups)
    await pilot.press("7")
    pane = app.query_one(DialersPane)
    await until(pilot, lambda: len(pane.table.rows) == 3)
    return pane


def row_of(pane: DialersPane, node: str) -> NodeRow:
    return next(r for r in pane.table.rows if isinstance(r, NodeRow) and r.node.name == node)


async def test_c_checks_the_group_and_both_nodes_show_alive_with_latencies(daemon, lab):
    app = make_app(daemon)
    async with app.run_test(size=(120, 36)) as pilot:
        pane = await open_pane(pilot)
        assert isinstance(pane.table.rows[0], GroupRow) and pane.table.cursor == 0
        assert "proxy  min · 2 nodes" in app_text(app)
        before = {n: len(row_of(pane, n).node.latencies4) for n in PORTS}

        # c on the group's line: the daemon checks both members over both families, now.
        await pilot.press("c")
        await until(pilot, lambda: all(len(row_of(pane, n).node.latencies4) > before[n] for n in PORTS)
                    and not pane.checking, timeout=20)
        for name, port in PORTS.items():
            node = row_of(pane, name).node
            assert node.alive4 and node.alive6, node
            assert node.latencies4[-1] is not None and node.latencies6[-1] is not None, node
            assert len(node.latencies4) == before[name] + 1   # one check, the console's
            assert node.protocol == "socks5" and node.address == f"{PROXY4}:{port}"
            text = line_text(pane.table, row_of(pane, name))
            assert "v4✓ v6✓" in text and "socks5" in text, text
            # A bar for each check, and the last and average latency in ms.
            assert re.search(r"[▁▂▃▄▅▆▇█]+\s+\d+(\.\d)? ms\s+\d+(\.\d)? ms", text), text

        # c on one node checks that node alone.
        counts = {n: len(row_of(pane, n).node.latencies4) for n in PORTS}
        await pilot.press("down", "down", "c")
        await until(pilot, lambda: len(row_of(pane, "s2").node.latencies4) > counts["s2"] and not pane.checking,
                    timeout=20)
        assert len(row_of(pane, "s1").node.latencies4) == counts["s1"]


async def test_p_pins_the_second_node_and_the_next_flow_goes_through_it_then_u_unpins(daemon, lab):
    # min over the lab's sub-millisecond checks, and s2 500 ms worse by its filter line: s1.
    assert await relay_a_flow(lab, daemon, 46101) == "s1"
    app = make_app(daemon)
    async with app.run_test(size=(160, 40)) as pilot:
        pane = await open_pane(pilot)
        await pilot.press("down", "down")
        assert row_of(pane, "s2") is pane.table.current

        await pilot.press("p")
        await until(pilot, lambda: row_of(pane, "s2").pinned and "pinned s2" in app_text(app))
        assert line_text(pane.table, row_of(pane, "s2")).split()[1] == "pin"
        assert (await daemon_snapshot(daemon)).groups[0].pinned == "s2"
        assert await relay_a_flow(lab, daemon, 46102) == "s2"
        assert await relay_a_flow(lab, daemon, 46103) == "s2"

        # Connections shows the node each flow went through.
        await pilot.press("2")
        flows = app.query_one(ConnectionsPane)
        row = await until(pilot, lambda: next((r for r in flows.shown if r.sport == 46102 and r.closed), None))
        assert row.node == "s2" and "node" in flows.table.visible_columns()
        assert re.search(r" proxy +s2 ", line_text(flows.table, row))
        before = next(r for r in flows.shown if r.sport == 46101)
        assert before.node == "s1"
        await pilot.press("7")
        await until(pilot, lambda: app.focused is pane.table)
        pane.table.cursor = pane.table.rows.index(row_of(pane, "s2"))

        # u (on the node's line or the group's) unpins: min picks s1 again.
        await pilot.press("u")
        await until(pilot, lambda: not row_of(pane, "s2").pinned and "pinned" not in app_text(app))
        assert (await daemon_snapshot(daemon)).groups[0].pinned is None
        assert await relay_a_flow(lab, daemon, 46104) == "s1"
