"""The pane registry and the panes' messages, on the recorded daemon.

daetui/ui/panes/__init__.py lists the panes; the tabs, their keys, the palette
and the help are built from it. A pane says what the operator asks for with a
message that the app answers through the control socket: what the recording
is asked to do is how the tests see the messages arrive.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from daetui.ui.panes import PANES, keyed
from daetui.ui.screens.modals import ConfirmScreen, HelpScreen

PANES_DIR = Path(__file__).resolve().parents[2] / "daetui" / "ui" / "panes"

# The palette, in order: the panes (registry), the themes, what the panes offer (in tab order), leaving, help.
PALETTE = [
    ("Show Overview", "switch to the overview pane"),
    ("Show Connections", "switch to the connections pane"),
    ("Show Rules", "switch to the rules pane"),
    ("Show Maps", "switch to the maps pane"),
    ("Show Logs", "switch to the logs pane"),
    ("Show DNS", "switch to the dns pane"),
    ("Show Dialers", "switch to the dialers pane"),
    ("Theme: dark", "the dark theme"),
    ("Theme: light", "the light theme"),
    ("Theme: basic", "the basic theme"),
    ("Close all shown relayed connections", "as X in Connections"),
    ("Reload the config file", "as R in Rules: shows what changes first"),
    ("Pause or resume the log", "as p in Logs"),
    ("Resolve a name through daetui's DNS", "as l in DNS"),
    ("Flush the DNS cache", "as f in DNS: asks first"),
    ("Check every group's nodes now", "as c on a group in Dialers"),
    ("Stop daetui (stop routing) and quit", "undoes every change daetui made"),
    ("Leave daetui running and quit", "daetui attach comes back"),
    ("Help", "keys of the current pane"),
]


async def settled(pilot) -> None:
    for _ in range(50):
        await pilot.pause(0.05)
        if pilot.app.snapshot is not None:
            break
    await pilot.pause(0.1)


def test_the_registry_gives_each_pane_a_key_and_its_actions_exist() -> None:
    assert [(key, p.ID) for key, p in keyed()] == [
        ("1", "overview"), ("2", "connections"), ("3", "rules"), ("4", "maps"), ("5", "logs"), ("6", "dns"),
        ("7", "dialers")]
    for pane in PANES:
        assert pane.HELP.startswith(f"### {pane.TITLE}\n"), pane.ID
        for entry in pane.PALETTE:
            assert callable(getattr(pane, f"action_{entry.action}", None)), (pane.ID, entry.action)


def test_a_pane_asks_the_app_nothing_but_to_notify_and_show_a_screen() -> None:
    """Panes post messages; `self.app.<anything else>` would be a call the type checker cannot follow."""
    allowed = {"notify", "push_screen"}
    for path in sorted(PANES_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                    and node.value.attr == "app" and isinstance(node.value.value, ast.Name)
                    and node.value.value.id == "self"):
                assert node.attr in allowed, f"{path.name}:{node.lineno}: self.app.{node.attr}"


async def test_each_key_shows_its_pane_and_help_shows_its_keys(frozen_app) -> None:
    app = frozen_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await settled(pilot)
        for key, pane in keyed():
            await pilot.press(key)
            await pilot.pause(0.05)
            assert app.active_pane == pane.ID
            if pane.FOCUS is not None:
                assert app.focused is app.panes[pane.ID].query_one(pane.FOCUS)
            await pilot.press("question_mark")
            await pilot.pause(0.1)
            assert isinstance(app.screen, HelpScreen)
            assert app.screen.pane_help == pane.HELP
            assert "| `1` … `7` | Overview, Connections, Rules, Maps, Logs, DNS, Dialers |" in app.screen.everywhere
            await pilot.press("escape")
            await pilot.pause(0.05)


async def test_the_palette_is_built_from_the_panes(frozen, frozen_app) -> None:
    app = frozen_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await settled(pilot)
        entries = {name: run for name, _, run in app.palette()}
        assert [(name, help_text) for name, help_text, _ in app.palette()] == PALETTE

        entries["Show DNS"]()
        await pilot.pause(0.1)
        assert app.active_pane == "dns"

        # A pane's entry runs its action wherever the operator is: the message it posts reaches the daemon.
        entries["Show Overview"]()
        await pilot.pause(0.1)
        entries["Check every group's nodes now"]()
        await pilot.pause(0.3)
        assert frozen.checks == [["proxy", "media"]]
        entries["Flush the DNS cache"]()
        await pilot.pause(0.2)
        assert isinstance(app.screen, ConfirmScreen) and "(9 entries)" in app.screen.question
        await pilot.press("y")
        await pilot.pause(0.2)
        assert frozen.flushed


async def test_rules_keys_reach_the_daemon_as_edits(frozen, frozen_app) -> None:
    app = frozen_app("rules")
    async with app.run_test(size=(120, 36)) as pilot:
        await settled(pilot)
        first = "dip(224.0.0.0/3, 'ff00::/8') -> direct"
        await pilot.press("space")
        await pilot.pause(0.2)
        assert frozen.edits == [("toggle", 0, {"enabled": False, "expect": first})]
        await pilot.press("J")
        await pilot.pause(0.2)
        assert frozen.edits[-1] == ("move", 0, {"to": 1, "expect": first})
        # Deleting asks first; no is nothing sent.
        second = "dip(203.0.113.10, '2001:db8:3::10') -> proxy"
        await pilot.press("x")
        await pilot.pause(0.2)
        assert isinstance(app.screen, ConfirmScreen) and second in app.screen.question
        await pilot.press("n")
        await pilot.pause(0.1)
        assert len(frozen.edits) == 2
        await pilot.press("x", "y")
        await pilot.pause(0.2)
        assert frozen.edits[-1] == ("remove", 1, {"expect": second})


@pytest.mark.parametrize("keys", [("x",), ("X", "y")], ids=["x", "X"])
async def test_connections_close_keys_reach_the_daemon(frozen, frozen_app, keys: tuple[str, ...]) -> None:
    app = frozen_app("connections")
    async with app.run_test(size=(160, 36)) as pilot:
        await settled(pilot)
        pane = app.panes["connections"]
        relayed = [r.conn_id for r in pane.shown if r.conn_id is not None and not r.closed]
        assert len(relayed) > 1
        # x closes the selected flow; X every open relayed one shown, once confirmed.
        pane.table.cursor = pane.shown.index(next(r for r in pane.shown if r.conn_id == relayed[0]))
        await pilot.press(*keys)
        await pilot.pause(0.3)
        assert frozen.closed == (relayed[:1] if keys == ("x",) else relayed)


@pytest.mark.parametrize("pane", ["overview", "dialers", "rules"])
async def test_a_pane_fed_while_hidden_shows_as_if_fed_while_shown(frozen_app, pane: str) -> None:
    """The panes fed every snapshot do not lay the screen out while hidden (show_text): once shown, their
    widgets are laid out and drawn as those of a pane that was on the screen all along."""
    async def drawn(start: str) -> list[tuple[str | None, object, list[str]]]:
        app = frozen_app(start)
        async with app.run_test(size=(120, 36)) as pilot:
            await settled(pilot)
            app.action_pane(pane)
            await pilot.pause(0.2)
            return [(w.id, w.region, ["".join(s.text for s in line) for line in w.render_lines(w.region.reset_offset)])
                    for w in app.panes[pane].query("Static")]

    assert await drawn("connections") == await drawn(pane)
