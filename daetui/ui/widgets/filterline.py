"""The filter line under a pane: `/` opens it, `esc` leaves it, a second `esc` clears it."""

from __future__ import annotations

from textual.widget import Widget
from textual.widgets import Input


def open_filter(box: Input) -> None:
    box.remove_class("hidden")
    box.focus()


def leave_filter(box: Input, back_to: Widget) -> tuple[bool, bool]:
    """esc on a pane with a filter line: (handled, cleared).

    From the line itself: back to the pane (the line stays while it holds a
    filter). From the pane: clear the filter and hide the line.
    """
    if box.has_focus:
        back_to.focus()
        if not box.value:
            box.add_class("hidden")
        return True, False
    if box.value:
        box.value = ""
        box.add_class("hidden")
        back_to.focus()
        return True, True
    return False, False
