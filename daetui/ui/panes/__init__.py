"""The console's panes, in tab order: the one list the app builds its tabs, keys, palette and help from.

A new pane: a `Pane` (panes/base.py) in a module of its own, added here. Its
key is its place in the list (1 for the first); its tab, its palette entry
"Show …", its line in the help and the snapshots it is fed follow.
"""

from __future__ import annotations

from daetui.ui.panes.base import Pane
from daetui.ui.panes.connections import ConnectionsPane
from daetui.ui.panes.dialers import DialersPane
from daetui.ui.panes.dns import DnsPane
from daetui.ui.panes.logs import LogsPane
from daetui.ui.panes.maps import MapsPane
from daetui.ui.panes.overview import OverviewPane
from daetui.ui.panes.rules import RulesPane

PANES: tuple[type[Pane], ...] = (
    OverviewPane, ConnectionsPane, RulesPane, MapsPane, LogsPane, DnsPane, DialersPane,
)
assert len(PANES) <= 9, "a pane's key is one digit"


def keyed() -> list[tuple[str, type[Pane]]]:
    """Each pane with the key that shows it: "1", "2", … in tab order."""
    return [(str(i), pane) for i, pane in enumerate(PANES, start=1)]
