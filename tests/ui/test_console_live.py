"""The console driven by Pilot against a real daemon in the lab.

The daemon runs as a process in the router namespace; the app connects to its
control socket exactly as `daetui attach` does; flows are made by real sockets
in the LAN namespace.
"""

from __future__ import annotations

import os
import socket

import pytest
from drive import app_text, line_text, make_app, until
from helpers import Daemon, lan_socket, tcp_echo, udp_exchange

from daetui.lab.topology import ADDR
from daetui.ui.panes.connections import ConnectionsPane
from daetui.ui.panes.logs import LogsPane
from daetui.ui.panes.maps import MapsPane

pytestmark = pytest.mark.kernel

CONFIG = """
[global]
lan_interface = ["lan0", "lan9"]

[device]
"02:00:5e:00:02:10" = "lab-laptop"

[group.proxy]
# No nodes yet: a group relays through the direct dialer until proxy nodes exist.

[routing]
rules = [
  "dip(203.0.113.10, '2001:db8:3::10') -> proxy",
  "dip(203.0.113.12) -> block",
]
fallback = "direct"
"""


@pytest.fixture(scope="module")
def daemon(lab, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console")
    cfg = tmp / "console.toml"
    cfg.write_text(CONFIG)
    d = Daemon(lab, cfg, tmp / "run")
    d.start()
    yield d
    assert d.stop() == 0


async def test_a_relayed_flow_shows_with_rule_stage_log_and_map_entry(daemon, lab):
    app = make_app(daemon)
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.snapshot is not None)
        await pilot.press("2")
        payload = os.urandom(20000)
        assert tcp_echo(lab, ADDR.hosts4[0], payload, sport=45111) == payload

        pane = app.query_one(ConnectionsPane)
        row = await until(pilot, lambda: next((r for r in pane.shown if r.sport == 45111 and r.closed), None))
        assert (row.dst, row.dport, row.proto) == (ADDR.hosts4[0], 7, "tcp")
        assert row.rule_index == 0 and row.rule == "dip(203.0.113.10, '2001:db8:3::10') -> proxy"
        assert row.stage == "kernel" and row.outbound == "proxy" and row.path == "relay"
        assert (row.up, row.down) == (len(payload), len(payload))
        assert row.device == "lab-laptop"
        text = line_text(pane.table, row)
        assert "lab-laptop" in text and "203.0.113.10:7" in text and "#1 dip(203.0.113.10" in text
        assert "proxy" in text and "kernel" in text

        # Its line in Logs.
        await pilot.press("5")
        logs = app.query_one(LogsPane)
        await until(pilot, lambda: any(":45111 -> 203.0.113.10:7" in ln.message and "closed" in ln.message
                                       for ln in logs.lines))

        # Its routing_tuples entry, decoded, in Maps.
        await pilot.press("4")
        maps = app.query_one(MapsPane)
        await until(pilot, lambda: maps.last is not None and maps.last.name == "routing_tuples")
        entry = await until(pilot, lambda: next((r for r in maps.last.rows if r[1] == "192.0.2.10:45111"), None))
        cols = maps.last.columns
        assert entry[cols.index("destination")] == "203.0.113.10:7"
        assert entry[cols.index("outbound")] == "proxy" and entry[cols.index("rule")] == "#1"
        assert entry[cols.index("mac")] == "02:00:5e:00:02:10"


async def test_a_kernel_direct_flow_shows_too(daemon, lab):
    app = make_app(daemon)
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.snapshot is not None)
        await pilot.press("2")
        assert udp_exchange(lab, ADDR.hosts6[1], b"direct", sport=45222, count=2) == [b"direct"] * 2
        pane = app.query_one(ConnectionsPane)
        row = await until(pilot, lambda: next((r for r in pane.shown if r.sport == 45222), None))
        assert row.path == "kernel" and row.outbound == "direct" and row.rule_index is None
        assert row.stage == "kernel" and row.conn_id is None
        assert row.packets == 2 and row.rx_packets == 2
        text = line_text(pane.table, row)
        assert "[2001:db8:3::11]:7" in text and "fallback" in text and "direct" in text


async def test_overview_shows_the_lab_interfaces_and_their_programs(daemon, lab):
    app = make_app(daemon)
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.snapshot is not None)
        snap = app.snapshot
        lan0 = next(i for i in snap.interfaces if i.name == "lan0")
        assert lan0.bound and lan0.programs == ("lan_ingress (ingress)", "lan_egress (egress)")
        assert {i.name for i in snap.interfaces} >= {"lo", "lan0", "wan0"}
        assert snap.missing_interfaces == ("lan9",)
        screen = await until(pilot, lambda: "lan_ingress (ingress)" in app_text(app) and app_text(app))
        assert "bound" in screen and "wan0" in screen and "lan9" in screen and "missing" in screen


async def test_filter_then_close_one_relayed_connection(daemon, lab):
    app = make_app(daemon)
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.snapshot is not None)
        await pilot.press("2")
        held = lan_socket(lab, ADDR.hosts4[0])
        held.settimeout(5)
        held.bind(("0.0.0.0", 45333))
        held.connect((ADDR.hosts4[0], 7))
        held.sendall(b"hold")
        assert held.recv(10) == b"hold"
        pane = app.query_one(ConnectionsPane)
        await until(pilot, lambda: any(r.sport == 45333 and r.state == "open" for r in pane.shown))
        await pilot.press("slash")
        for ch in "sport:45333":
            await pilot.press(ch)
        await pilot.press("enter")
        await until(pilot, lambda: len(pane.shown) == 1 and pane.shown[0].sport == 45333)
        await pilot.press("x")
        await until(pilot, lambda: pane.shown and pane.shown[0].state == "failed")
        assert pane.shown[0].error == "closed from the console"
        with pytest.raises((ConnectionResetError, socket.timeout)):
            held.sendall(b"more")
            data = held.recv(10)
            if data == b"":
                raise ConnectionResetError
        held.close()
