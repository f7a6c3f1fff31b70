"""Rules: the routing rules with their hits; toggle, edit, add, move, reload."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Static

from daetui.control.state import RuleInfo, Snapshot
from daetui.ui import fmt
from daetui.ui.panes.base import PaletteEntry, Pane, show_text
from daetui.ui.widgets.vtable import Cell, Column, VirtualTable

COLUMNS = [
    Column("index", "#", 4, align="right"),
    Column("on", "On", 3),
    Column("hits", "Hits", 7, align="right"),
    Column("last", "Last hit", 9, align="right", priority=2),
    Column("name", "Name", 12, priority=3),
    Column("rule", "Rule", 30, flex=1),
]


@dataclass(frozen=True)
class RuleRow:
    """A rule, or the fallback (index None)."""

    index: int | None
    text: str
    enabled: bool
    name: str
    hits: int
    last_hit: float | None
    now: float


def rule_cell(r: RuleRow, key: str) -> Cell:
    dim = None if r.enabled else "dim"
    if key == "index":
        return ("" if r.index is None else str(r.index + 1)), "dim"
    if key == "on":
        if r.index is None:
            return "", None
        return ("✓" if r.enabled else "✗"), ("good" if r.enabled else "bad")
    if key == "hits":
        return fmt.count(r.hits), dim
    if key == "last":
        return (fmt.duration(r.now - r.last_hit) + " ago" if r.last_hit else ""), "dim"
    if key == "name":
        return r.name, dim
    if key == "rule":
        return r.text, dim or ("accent" if r.index is None else None)
    return "", None


class RulesPane(Pane, Vertical):
    """The rules in order, as the kernel evaluates them."""

    ID = "rules"
    TITLE = "Rules"
    FEED = "always"
    FOCUS = "#rules"
    PALETTE = (PaletteEntry("Reload the config file", "as R in Rules: shows what changes first", "reload"),)

    HELP = """\
### Rules

The routing rules in the order they are tried (first match wins), with how many
new flows each decided and when it last did; the fallback is last. Every change
is written to the config file -- its comments and layout kept, the previous
version saved as `<file>.bak` -- and applied at once with a hot reload: flows
already running keep their route.

| key | |
|---|---|
| `space` | turn the rule on or off |
| `enter` | edit the rule (checked as you type) |
| `a` | add a rule below this one |
| `K` / `J` | move the rule up / down |
| `x` | delete the rule (asks first) |
| `R` | reload the config file from disk: shows what changes, then applies it |
"""
    BINDINGS = [
        Binding("space", "toggle", "On/off"),
        Binding("enter", "edit", "Edit"),
        Binding("a", "add", "Add"),
        Binding("K,shift+up", "move(-1)", "Up", show=False),
        Binding("J,shift+down", "move(1)", "Down", show=False),
        Binding("x,delete", "remove", "Delete", show=False),
        Binding("R", "reload", "Reload"),
    ]

    @dataclass
    class EditRequested(Message):
        """Change rule #index+1 in the config file: toggle, set, insert, remove, move (ControlApi.edit_rules)."""

        op: str
        index: int
        args: dict[str, Any] = field(default_factory=dict)

    @dataclass
    class EditorRequested(Message):
        """`enter` / `a`: the rule editor on `text`; what is saved goes as an EditRequested(op, index)."""

        title: str
        text: str
        op: str
        index: int
        expect: str | None = None

    @dataclass
    class RemoveRequested(Message):
        """`x`: delete rule #index+1 (`text`), once the operator confirms."""

        index: int
        text: str

    class ReloadRequested(Message):
        """`R`: show what reloading the config file would change, and apply it if the operator says so."""

    def __init__(self) -> None:
        super().__init__()
        self.table = VirtualTable(COLUMNS, rule_cell, row_key=lambda r: (r.index, r.text), id="rules")
        self.table.empty_text = "no rules: every flow takes the fallback"
        self.rules: tuple[RuleInfo, ...] = ()

    def compose(self) -> ComposeResult:
        yield self.table
        yield Static("", id="rules-status", classes="pane-status")

    def update(self, snap: Snapshot) -> None:
        self.rules = snap.rules
        rows = [RuleRow(r.index, r.text, r.enabled, r.name or "", r.hits, r.last_hit, snap.time) for r in snap.rules]
        rows.append(RuleRow(None, f"fallback -> {snap.health.fallback}", True, "", snap.fallback_hits, None,
                            snap.time))
        self.table.set_rows(rows)
        on = sum(1 for r in snap.rules if r.enabled)
        show_text(self.query_one("#rules-status", Static),
                  f"{len(snap.rules)} rules ({on} on) · generation {snap.health.generation} · "
                  f"{snap.health.match_sets} match sets in the kernel · config {fmt.markup(snap.health.config)}")

    def _current(self) -> RuleRow | None:
        row = self.table.current
        if row is None or row.index is None:
            self.app.notify("That is the fallback: set it in [routing] fallback.", severity="warning")
            return None
        return row

    def action_toggle(self) -> None:
        row = self._current()
        if row is not None:
            self.post_message(self.EditRequested("toggle", row.index, {"enabled": not row.enabled,
                                                                       "expect": row.text}))

    def action_edit(self) -> None:
        row = self._current()
        if row is not None:
            self.post_message(self.EditorRequested(f"Edit rule #{row.index + 1}", row.text, "set", row.index,
                                                   expect=row.text))

    def action_add(self) -> None:
        row = self.table.current
        at = (row.index + 1) if row is not None and row.index is not None else len(self.rules)
        self.post_message(self.EditorRequested(f"New rule #{at + 1}", "", "insert", at))

    def action_move(self, step: int) -> None:
        row = self._current()
        if row is None or row.index is None:
            return
        to = row.index + step
        if not 0 <= to < len(self.rules):
            return
        self.table.cursor = to
        self.post_message(self.EditRequested("move", row.index, {"to": to, "expect": row.text}))

    def action_remove(self) -> None:
        row = self._current()
        if row is not None:
            self.post_message(self.RemoveRequested(row.index, row.text))

    def action_reload(self) -> None:
        self.post_message(self.ReloadRequested())

    @on(VirtualTable.Selected, "#rules")
    def _selected(self) -> None:
        self.action_edit()

