"""What every pane of the console is; the registry (panes/__init__.py) builds the tabs, keys, palette and
help from it.

A pane draws from the snapshots the app hands it and says what the operator
asks for by posting messages (its own classes, `RulesPane.EditRequested`...),
which the app answers through the control socket: a pane never calls the app.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from textual.visual import VisualType
from textual.widget import Widget
from textual.widgets import Static

from daetui.control.state import Snapshot

if TYPE_CHECKING:
    from textual.widget import Widget as _Widget
else:
    _Widget = object

# When the app hands a pane the snapshots:
#   "always": every one, shown or not (cheap; some keep a history or must show a check's result);
#   "shown":  every one while the pane is shown, and the latest when it is opened;
#   "tick":   the latest when it is opened, then only its `tick` while shown (drawing it is costly).
Feed = Literal["always", "shown", "tick"]


@dataclass(frozen=True)
class PaletteEntry:
    """A command palette entry that runs one of the pane's actions, from wherever the operator is."""

    name: str
    help: str
    action: str          # the pane's `action_<action>()`
    show: bool = False   # switch to the pane first (the action needs it in sight)


class Pane(_Widget):
    """A tab of the console. Mixed into the Textual container it is: `class RulesPane(Pane, Vertical)`."""

    ID: ClassVar[str]                                # the tab's id: `initial_pane`, `action_pane('dns')`
    TITLE: ClassVar[str]                             # its name on the tab, in the palette, in the help
    HELP: ClassVar[str]                              # markdown for `?`: what it shows and its keys
    PALETTE: ClassVar[tuple[PaletteEntry, ...]] = ()
    FEED: ClassVar[Feed] = "shown"
    FOCUS: ClassVar[str | None] = None               # the widget its keys act on, focused when it is shown

    def update(self, snapshot: Snapshot) -> None:
        """A new snapshot (see FEED). Runs on the UI's loop: keep it cheap."""

    async def tick(self, snapshot: Snapshot, count: int) -> None:
        """Once per refresh while the pane is shown, after the snapshot (the `count`th) is handed out."""

    def opened(self, snapshot: Snapshot | None) -> None:
        """The pane became the one shown: bring it up to date (one fed "always" is), focus where its keys act."""
        if snapshot is not None and self.FEED != "always":
            self.update(snapshot)
        if self.FOCUS is not None:
            self.query_one(self.FOCUS).focus()

    def action_filter(self) -> None:
        """`/`: open the pane's filter line (a pane without one has nothing to do)."""

    def leave_filter(self) -> bool:
        """`esc`: leave the filter line, or clear it; False when there was nothing to leave."""
        return False


def show_text(widget: Static, content: VisualType) -> None:
    """`widget.update(content)`, laying the screen out again only if the widget is on it. The panes fed every
    snapshot update their widgets while another pane is shown, and a layout is of the whole screen: once a
    refresh, for nothing (showing the pane lays the screen out anyway, measuring the widget as it is then)."""
    node: object = widget
    while isinstance(node, Widget):
        if not node.display:
            widget.update(content, layout=False)
            return
        node = node.parent
    widget.update(content)
