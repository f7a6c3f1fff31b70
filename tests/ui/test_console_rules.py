"""The Rules pane against a real daemon: every edit lands in the file, comments kept, and routes the next flow."""

from __future__ import annotations

import difflib

import pytest
from drive import app_text, make_app, until
from helpers import Daemon, tcp_echo

from daetui.lab.topology import ADDR
from daetui.ui.panes.connections import ConnectionsPane
from daetui.ui.panes.rules import RulesPane

pytestmark = pytest.mark.kernel

# Comments in every place a person puts them: the file's head, above a key,
# after a value, inside the rules array, after a rule.
CONFIG = """\
# The lab router. Edited by hand and by the console.
[global]
lan_interface = ["lan0"]   # the lab's LAN side
log_level = "info"

[group.proxy]
# no nodes: relays through the direct dialer

[routing]
# First match wins.
rules = [
  # the lab's echo host goes through the proxy
  "dip(203.0.113.10, '2001:db8:3::10') -> proxy",   # host 0
  { rule = "dip(203.0.113.12) -> block", name = "blackhole" },
  # ssh never proxied
  "dport(22) -> direct",
]
fallback = "direct"  # everything else
"""


def comments(text: str) -> list[str]:
    return [line[line.index("#"):] for line in text.splitlines() if "#" in line]


@pytest.fixture
def daemon(lab, tmp_path):
    cfg = tmp_path / "rules.toml"
    cfg.write_text(CONFIG)
    d = Daemon(lab, cfg, tmp_path / "run")
    d.start()
    yield d
    assert d.stop() == 0


async def test_toggle_edit_move_remove_keep_every_comment_and_route_the_next_flow(daemon, lab):
    cfg = daemon.config_path
    app = make_app(daemon)
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.snapshot is not None)
        await pilot.press("3")
        pane = app.query_one(RulesPane)
        await until(pilot, lambda: len(pane.table.rows) == 4)   # three rules and the fallback
        assert "dip(203.0.113.10, '2001:db8:3::10') -> proxy" in app_text(app)

        # Before: a flow to host 0 takes rule #1 and is relayed.
        assert tcp_echo(lab, ADDR.hosts4[0], b"before", sport=45401) == b"before"
        conns = app.query_one(ConnectionsPane)
        await pilot.press("2")
        row = await until(pilot, lambda: next((r for r in conns.shown if r.sport == 45401), None))
        assert (row.rule_index, row.outbound, row.path) == (0, "proxy", "relay")
        hits = await until(pilot, lambda: app.snapshot.rules[0].hits)

        # space on rule #1: off, in the file and in the kernel.
        await pilot.press("3")
        assert pane.table.cursor == 0
        await pilot.press("space")
        await until(pilot, lambda: not app.snapshot.rules[0].enabled)
        toggled = cfg.read_text()
        diff = [d for d in difflib.ndiff(CONFIG.splitlines(), toggled.splitlines()) if d[:1] in "+-"]
        assert diff == [
            "-   \"dip(203.0.113.10, '2001:db8:3::10') -> proxy\",   # host 0",
            "+   { rule = \"dip(203.0.113.10, '2001:db8:3::10') -> proxy\", enabled = false },   # host 0",
        ], diff
        assert comments(toggled) == comments(CONFIG)
        assert cfg.with_name(cfg.name + ".bak").read_text() == CONFIG
        assert app.snapshot.rules[0].hits == hits   # the rule kept its counter across the reload

        # After: the next flow to host 0 matches nothing and goes direct in the kernel.
        assert tcp_echo(lab, ADDR.hosts4[0], b"after", sport=45402) == b"after"
        await pilot.press("2")
        row = await until(pilot, lambda: next((r for r in conns.shown if r.sport == 45402), None))
        assert (row.rule_index, row.outbound, row.path) == (None, "direct", "kernel")

        # space again: back on, and the file is byte for byte what it was.
        await pilot.press("3")
        await pilot.press("space")
        await until(pilot, lambda: app.snapshot.rules[0].enabled)
        assert cfg.read_text() == CONFIG

        # enter edits: a bad rule cannot be saved and writes nothing; a good one is saved and applied.
        await pilot.press("down", "down", "enter")
        await pilot.pause(0.2)
        await pilot.press("home", "ctrl+k", *"dport(99999) -> direct", "enter")
        await pilot.pause(0.3)
        assert "port 99999 is out of range" in app_text(app)
        assert cfg.read_text() == CONFIG
        await pilot.press("ctrl+k", "home", "ctrl+k", *"dport(2222) -> direct", "enter")
        await until(pilot, lambda: app.snapshot.rules[2].text == "dport(2222) -> direct")
        text = cfg.read_text()
        assert comments(text) == comments(CONFIG)
        assert '  "dport(2222) -> direct",\n' in text and "dport(22)" not in text

        # K moves the rule up, its comment with it; a added below; x deletes (asks first).
        await pilot.press("K")
        await until(pilot, lambda: app.snapshot.rules[1].text == "dport(2222) -> direct")
        text = cfg.read_text()
        assert text.index("# ssh never proxied") < text.index("dport(2222)") < text.index("blackhole")
        assert comments(text) == comments(CONFIG)
        await pilot.press("a")
        await pilot.pause(0.2)
        await pilot.press(*"l4proto(udp) && dport(53) -> direct", "enter")
        await until(pilot, lambda: len(app.snapshot.rules) == 4 and app.snapshot.rules[2].text.startswith("l4proto"))
        await pilot.press("down", "x")
        await pilot.pause(0.2)
        assert "Delete rule #3?" in app_text(app)
        await pilot.press("y")
        await until(pilot, lambda: len(app.snapshot.rules) == 3)
        assert [r.text for r in app.snapshot.rules] == [
            "dip(203.0.113.10, '2001:db8:3::10') -> proxy", "dport(2222) -> direct",
            "dip(203.0.113.12) -> block"]
        assert comments(cfg.read_text()) == comments(CONFIG)
