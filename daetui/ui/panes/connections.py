"""Connections: every flow, the kernel's and the relayed ones, live."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Static

from daetui.control.state import Snapshot
from daetui.ui import fmt
from daetui.ui.flows import (
    CLOSED_STATES,
    SORT_KEYS,
    FilterError,
    FlowBook,
    FlowRow,
    apply_filter,
    parse_filter,
    sort_rows,
)
from daetui.ui.panes.base import PaletteEntry, Pane
from daetui.ui.widgets.filterline import leave_filter, open_filter
from daetui.ui.widgets.vtable import Cell, Column, VirtualTable

# At 80 columns: protocol, source, destination, rule, outbound, up, down (the
# first four narrowed). Wider, in this order: the process (when the router's own traffic is routed), state,
# start, the proxy node (when there are nodes), rates, stage, time, MAC, domain.
COLUMNS = [
    Column("start", "Start", 8, priority=4),
    Column("proto", "L4", 4),
    Column("src", "Source", 21, min_width=15),
    Column("proc", "Process", 18, priority=2),
    Column("mac", "MAC", 17, priority=8),
    Column("dst", "Destination", 24, min_width=19, flex=1),
    Column("domain", "Domain", 16, priority=9),
    Column("rule", "Rule", 30, min_width=14, flex=2),
    Column("stage", "Stage", 6, priority=6),
    Column("out", "Out", 7),
    Column("node", "Node", 12, priority=4),
    Column("up", "Up", 7, align="right"),
    Column("down", "Down", 7, align="right"),
    Column("up/s", "Up/s", 9, align="right", priority=5),
    Column("down/s", "Down/s", 9, align="right", priority=5),
    Column("time", "Time", 6, align="right", priority=7),
    Column("state", "State", 7, priority=3),
]
SORTABLE = [c.key for c in COLUMNS if c.key in SORT_KEYS]


def columns_for(snap: Snapshot | None) -> list[Column]:
    """The columns worth their width: without proxy nodes in the config no flow has one, and without a WAN
    interface (the router's own traffic) no flow has a process: either column would only take the place
    of others."""
    nodes = snap is not None and bool(snap.nodes)
    own = snap is not None and any(i.side == "wan" for i in snap.interfaces)
    return [c for c in COLUMNS if (c.key != "node" or nodes) and (c.key != "proc" or own)]


STATE_STYLE = {"open": None, "closed": "dim", "idle": "dim", "blocked": "bad", "failed": "bad"}


def flow_cell(r: FlowRow, key: str) -> Cell:
    dim = "dim" if r.closed else None
    if key == "start":
        return fmt.clock(r.start), dim
    if key == "proto":
        return r.proto, dim
    if key == "src":
        return (r.device or fmt.endpoint(r.src, r.sport)), dim
    if key == "proc":
        return r.process_label, dim   # any process names itself: the table escapes its controls
    if key == "mac":
        return r.mac, "dim"
    if key == "dst":
        return fmt.endpoint(r.dst, r.dport), dim
    if key == "domain":
        return r.domain, dim
    if key == "rule":
        return (f"{r.rule_label} {r.rule}" if r.rule else r.rule_label), dim
    if key == "stage":
        return r.stage, dim
    if key == "out":
        style = "bad" if r.outbound == "block" else ("accent" if r.path == "relay" else None)
        return r.outbound, dim or style
    if key == "node":
        return r.node, dim
    if key == "up":
        return fmt.size(r.up), dim
    if key == "down":
        return fmt.size(r.down), dim
    if key == "up/s":
        return fmt.rate(r.up_rate), "good"
    if key == "down/s":
        return fmt.rate(r.down_rate), "good"
    if key == "time":
        return fmt.duration(r.duration), dim
    if key == "state":
        return r.state, STATE_STYLE.get(r.state)
    return "", None


class ConnectionsPane(Pane, Vertical):
    """The flow table with its filter line and status."""

    ID = "connections"
    TITLE = "Connections"
    FEED = "tick"     # thousands of rows: built off the UI's thread, once per refresh
    FOCUS = "#flows"
    PALETTE = (PaletteEntry("Close all shown relayed connections", "as X in Connections", "close_filtered"),)

    HELP = """\
### Connections

Every flow through the router: those the kernel forwards or drops by itself
(**kernel** path, never seen by user space) and those the control plane relays
(**relay**). Stage says which routing stage decided.

| key | |
|---|---|
| `j` `k` `↑` `↓` `PgUp` `PgDn` `g` `G` | move |
| `enter` | details of the flow |
| `/` | filter: `field:pattern`, `!` negates, terms AND-ed |
| `esc` | leave the filter line (a second `esc` clears it) |
| `s` / `S` | sort by the next column / reverse the order |
| `c` | show or hide closed flows |
| `x` | close the selected relayed flow |
| `X` | close every relayed flow the filter shows |

Filter fields: `proto src sport dst dport mac device domain rule out node stage path state proc`;
a bare word matches source, destination, device, rule, outbound, protocol, state or process.
Example: `dst:443 !out:direct`.

The router's own flows (with a `wan_interface` configured) show the process that
opened them, `name[pid]`, in the Process column (blank for LAN clients' flows);
`proc:curl` shows only the flows of processes whose name holds `curl`.
"""

    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("s", "sort(1)", "Sort"),
        Binding("S", "reverse", "Reverse", show=False),
        Binding("c", "toggle_closed", "Closed"),
        Binding("x", "close_one", "Close"),
        Binding("X", "close_filtered", "Close all", show=False),
    ]

    @dataclass
    class CloseRequested(Message):
        """Close these relayed connections: `x` the selected one, `X` every one shown (once confirmed)."""

        ids: list[int]
        confirm: bool = False

    @dataclass
    class DetailsRequested(Message):
        """`enter`: everything known of a flow, and how the rules route it now."""

        row: FlowRow

    def __init__(self) -> None:
        super().__init__()
        self.book = FlowBook()
        self.all_rows: list[FlowRow] = []
        self.shown: list[FlowRow] = []
        self.terms: list = []
        self.filter_text = ""
        self.sort_column = "start"
        self.sort_descending = True
        self.hide_closed = False
        self._status = ""
        self.table = VirtualTable(columns_for(None), flow_cell, row_key=lambda r: r.key, id="flows")
        self.table.sort_column = self.sort_column
        self.table.sort_descending = True
        self.table.empty_text = "no flows yet"

    def compose(self) -> ComposeResult:
        yield self.table
        yield Input(placeholder="filter: dst:443 !proto:udp laptop   (esc to leave)", id="flow-filter",
                    classes="hidden")
        yield Static("", id="flow-status", classes="pane-status")

    # -- data -----------------------------------------------------------------------------
    def update(self, snap: Snapshot) -> None:
        """New data: rebuild rows, filter, sort; only visible lines are drawn."""
        self.all_rows = self.book.rows(snap)
        self.table.set_columns(columns_for(snap))
        self._apply()

    async def refresh_from(self, snap: Snapshot) -> None:
        """As update, with the rows (the costly part) built off the UI's thread."""
        self.all_rows = await asyncio.to_thread(self.book.rows, snap)
        self.table.set_columns(columns_for(snap))
        self._apply()

    async def tick(self, snapshot: Snapshot, count: int) -> None:
        await self.refresh_from(snapshot)

    def _apply(self) -> None:
        rows = apply_filter(self.all_rows, self.terms, self.hide_closed)
        self.shown = sort_rows(rows, self.sort_column, self.sort_descending)
        self.table.set_rows(self.shown)
        relayed = sum(1 for r in self.all_rows if r.path == "relay" and r.state not in CLOSED_STATES)
        status = (f"{len(self.all_rows)} flows ({relayed} relayed open) · {len(self.shown)} shown · "
                  f"sort {self.sort_column} {'▼' if self.sort_descending else '▲'}")
        if self.filter_text:
            status += f" · filter: {fmt.markup(self.filter_text)}"
        if self.hide_closed:
            status += " · closed hidden"
        self._show_status(status)

    def _show_status(self, text: str) -> None:
        """The status line, redrawn only when its text changed, and without a layout of the screen: one line
        high whatever it says (.pane-status), where a layout would lay out every widget once a refresh."""
        if text != self._status:
            self._status = text
            self.query_one("#flow-status", Static).update(text, layout=False)

    # -- actions ------------------------------------------------------------------------------
    def action_filter(self) -> None:
        open_filter(self.query_one("#flow-filter", Input))

    @on(Input.Changed, "#flow-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        try:
            self.terms = parse_filter(event.value)
        except FilterError as e:
            self._show_status(f"[b]filter:[/] {fmt.markup(e)}")
            return
        self.filter_text = event.value.strip()
        self._apply()

    @on(Input.Submitted, "#flow-filter")
    def _filter_done(self) -> None:
        self.table.focus()

    def leave_filter(self) -> bool:
        """esc: leave the filter line; a second esc clears it. True if handled."""
        return leave_filter(self.query_one("#flow-filter", Input), self.table)[0]

    def action_sort(self, step: int) -> None:
        i = SORTABLE.index(self.sort_column) if self.sort_column in SORTABLE else 0
        self.sort_column = SORTABLE[(i + step) % len(SORTABLE)]
        self.table.sort_column = self.sort_column
        self._apply()

    def action_reverse(self) -> None:
        self.sort_descending = not self.sort_descending
        self.table.sort_descending = self.sort_descending
        self._apply()

    @on(VirtualTable.HeaderClicked)
    def _header(self, event: VirtualTable.HeaderClicked) -> None:
        if event.column in SORT_KEYS:
            if event.column == self.sort_column:
                self.action_reverse()
            else:
                self.sort_column = event.column
                self.table.sort_column = event.column
                self._apply()

    def action_toggle_closed(self) -> None:
        self.hide_closed = not self.hide_closed
        self._apply()

    def action_close_one(self) -> None:
        row = self.table.current
        if row is None:
            return
        if row.conn_id is None or row.closed:
            self.app.notify("Only open relayed flows can be closed: the kernel forwards the others by itself.",
                            severity="warning")
            return
        self.post_message(self.CloseRequested([row.conn_id]))

    def action_close_filtered(self) -> None:
        ids = [r.conn_id for r in self.shown if r.conn_id is not None and not r.closed]
        if not ids:
            self.app.notify("No open relayed flow among those shown.", severity="warning")
            return
        self.post_message(self.CloseRequested(ids, confirm=True))

    @on(VirtualTable.Selected, "#flows")
    def _selected(self, event: VirtualTable.Selected) -> None:
        self.post_message(self.DetailsRequested(event.row))
