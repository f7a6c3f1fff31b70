"""The line at the top: is daetui running, since when, how busy."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from daetui.control.state import Snapshot
from daetui.ui import fmt


class StatusBar(Static):
    """One line of health."""

    def show_connecting(self, what: str) -> None:
        self.update(Text.assemble(("daetui ", "bold"), ("○ ", "yellow"), fmt.printable(what)))

    def show_lost(self, why: str) -> None:
        self.update(Text.assemble(("daetui ", "bold"), ("✕ ", "red"),
                                  f"no connection to the daemon: {fmt.printable(why)}"))

    def show(self, snap: Snapshot) -> None:
        h = snap.health
        bound = [fmt.printable(i.name) for i in snap.bindings]
        up = fmt.duration(snap.time - h.started) if h.started else "starting"
        relayed = sum(1 for c in snap.connections if c.state == "open")
        parts: list[str | tuple[str, str]] = [
            ("daetui ", "bold"), ("● ", "green"), f"pid {h.pid} up {up} │ ",
            (", ".join(bound) or "no LAN bound", "" if bound else "yellow"),
        ]
        if snap.missing_interfaces:
            parts += [" ", (f"missing {fmt.printable(', '.join(snap.missing_interfaces))}", "red")]
        flows = snap.raw_flows.count if snap.raw_flows else 0
        parts += [f" │ {fmt.count(flows)} flows, {relayed} relayed │ gen {h.generation}"]
        if snap.counters.get("FAIL_OPEN"):
            parts += [" │ ", (f"fail-open {fmt.count(snap.counters['FAIL_OPEN'])}", "yellow")]
        # One line high whatever it says (#status): no layout of the screen for it, once a refresh.
        self.update(Text.assemble(*parts), layout=False)
