"""Pictures of every pane at 80x24 and 160x48, from a recorded real snapshot.

Regenerate after an intended change of the console's look:
    .venv/bin/python -m pytest tests/ui/test_snapshots.py --snapshot-update
and look at the SVGs in tests/ui/__snapshots__ before committing them.
"""

from __future__ import annotations

import pytest

SIZES = [(80, 24), (160, 48)]
PANES = ["overview", "connections", "rules", "maps", "logs", "dns", "dialers"]


def hold_cursors(pilot) -> None:
    """Stop the text boxes' cursors blinking: whether one is drawn would depend on when the picture
    is taken (CI, under load, once caught it off)."""
    for box in pilot.app.query("Input"):
        box.cursor_blink = False


async def settle(pilot) -> None:
    app = pilot.app
    for _ in range(50):
        await pilot.pause(0.05)
        if app.snapshot is not None:
            break
    await pilot.pause(0.2)
    if app.active_pane == "logs":
        for _ in range(50):
            await pilot.pause(0.05)
            if app.query_one("LogsPane").lines:
                break
    if app.active_pane == "maps":
        for _ in range(50):
            await pilot.pause(0.05)
            if app.query_one("MapsPane").last is not None:
                break
    await pilot.wait_for_scheduled_animations()
    await pilot.pause(0.1)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("pane", PANES)
def test_pane_snapshot(snap_compare, frozen_app, pane: str, size: tuple[int, int]) -> None:
    app = frozen_app(pane)

    async def before(pilot) -> None:
        await settle(pilot)
        app.action_pane(pane)
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=before)


def test_basic_theme_snapshot(snap_compare, frozen_app) -> None:
    """The 16-colour theme for basic terminals."""
    app = frozen_app("connections", theme="basic")
    assert snap_compare(app, terminal_size=(80, 24), run_before=settle)


def test_rule_editor_marks_the_error(snap_compare, frozen_app) -> None:
    """The rule editor, typed into: the faulty part of the rule marked, Save disabled."""
    app = frozen_app("rules")

    async def before(pilot) -> None:
        await settle(pilot)
        await pilot.press("down", "enter")
        await pilot.pause(0.1)
        await pilot.press("home", "ctrl+k", *"l4proto(tcp) && dport(99999) -> proxy")
        hold_cursors(pilot)
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=(100, 30), run_before=before)


def test_reload_preview(snap_compare, frozen_app) -> None:
    """R in Rules: what reloading the file would change, before it is applied."""
    app = frozen_app("rules")

    async def before(pilot) -> None:
        await settle(pilot)
        await pilot.press("R")
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=(100, 30), run_before=before)


def test_dns_lookup(snap_compare, frozen_app) -> None:
    """The query box in DNS: a name resolved, its answers (40, cut short) and the route it took."""
    app = frozen_app("dns")

    async def before(pilot) -> None:
        await settle(pilot)
        await pilot.press("l", *"big.example.test", "enter")
        hold_cursors(pilot)
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=(100, 30), run_before=before)


def test_maps_domain_routing(snap_compare, frozen_app) -> None:
    """domain_routing in Maps: each named address, its names and the domain functions its bits stand for."""
    app = frozen_app("maps")

    async def before(pilot) -> None:
        await settle(pilot)
        await pilot.press("down", "down", "down", "enter")
        for _ in range(50):
            await pilot.pause(0.05)
            last = app.query_one("MapsPane").last
            if last is not None and last.name == "domain_routing":
                break
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=(100, 30), run_before=before)
