"""Driving the console in tests and reading what it shows: the screen as text, one table line, waiting
until something shows, the app on a live daemon's control socket."""

from __future__ import annotations

from helpers import Daemon

from daetui.control.client import ControlClient
from daetui.ui.app import DaetuiApp
from daetui.ui.widgets.vtable import VirtualTable


def make_app(daemon: Daemon) -> DaetuiApp:
    """The console attached to `daemon`, as `daetui attach` attaches it, refreshing often."""
    async def connect() -> ControlClient:
        c = ControlClient(daemon.run_dir / "control.sock")
        await c.connect()
        return c
    return DaetuiApp(connect, refresh=0.3)


async def until(pilot, fn, timeout: float = 10.0):
    """fn()'s first true value, asked every 0.1 s while the app runs; fails after `timeout`."""
    for _ in range(int(timeout / 0.1)):
        v = fn()
        if v:
            return v
        await pilot.pause(0.1)
    raise AssertionError("the console did not show it in time")


def line_text(table: VirtualTable, row) -> str:
    """The text the table draws for a row (the cursor is moved to it)."""
    i = table.rows.index(row)
    table.cursor = i
    y = i - table.scroll_offset.y + 1
    return "".join(seg.text for seg in table.render_line(y))


def app_text(app: DaetuiApp) -> str:
    """Everything on the screen, as text."""
    return "\n".join("".join(seg.text for seg in strip) for strip in app.screen._compositor.render_strips())
