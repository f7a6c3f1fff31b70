"""Maps: every eBPF map of the programs, and the decoded entries of the one selected."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Input, Static

from daetui.control.state import MapEntries, MapInfo, Snapshot
from daetui.ui import fmt
from daetui.ui.panes.base import Pane
from daetui.ui.widgets.filterline import leave_filter, open_filter
from daetui.ui.widgets.vtable import Cell, Column, VirtualTable

MAP_COLUMNS = [
    Column("name", "Map", 14, flex=1),
    Column("type", "Type", 12, priority=2),
    Column("fill", "Fill", 12, align="right"),
]


def map_cell(m: MapInfo, key: str) -> Cell:
    if key == "name":
        return m.name, None
    if key == "type":
        return m.type, "dim"
    if key == "fill":
        if m.entries < 0:
            return f"-/{m.max_entries}", "dim"
        pct = 100 * m.entries / m.max_entries if m.max_entries else 0
        # Arrays are always "full"; only a filling hash or trie is news.
        full = pct > 90 and m.type in ("hash", "lru_hash", "percpu_hash", "lpm_trie")
        return f"{m.entries}/{m.max_entries}", "warn" if full else None
    return "", None


class MapsPane(Pane, Horizontal):
    """Map list on the left, entries on the right; the app reads them from the daemon when asked."""

    ID = "maps"
    TITLE = "Maps"
    FOCUS = "#map-list"

    HELP = """\
### Maps

The eBPF maps of daetui's programs, read from the kernel: type, capacity and how
full each is. `enter` on a map shows its entries decoded (flows, rules laid out as
match sets, IP prefixes, counters...); `/` searches them.

`domain_routing` is what DNS taught the kernel: per address, the names it
answers to and which `domain()` functions of the active rules those names
match (`#2 domain(suffix: example.com)`); "none" means the kernel knows the
name and no domain rule wants it.

| key | |
|---|---|
| `j` `k` `enter` | choose a map |
| `tab` | between the map list and its entries |
| `/` | search the entries |
| `r` | read again now |
"""
    BINDINGS = [
        Binding("slash", "filter", "Search"),
        Binding("r", "reload", "Reload"),
    ]

    class RefreshRequested(Message):
        """Read the maps and the selected one's entries again (the app's worker calls update_maps and
        update_entries with them)."""

    def __init__(self) -> None:
        super().__init__()
        self.maps = VirtualTable(MAP_COLUMNS, map_cell, row_key=lambda m: m.name, id="map-list")
        self.entries = VirtualTable([Column("note", "", 20, flex=1)], self._entry_cell, id="map-entries")
        self.entries.empty_text = "choose a map (enter)"
        self.selected = "routing_tuples"
        self.search = ""
        self.last: MapEntries | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="maps-left"):
            yield self.maps
        with Vertical(id="maps-right"):
            yield Static("", id="map-title", classes="pane-status")
            yield self.entries
            yield Input(placeholder="search entries", id="map-search", classes="hidden")

    def opened(self, snapshot: Snapshot | None) -> None:
        super().opened(snapshot)
        self.post_message(self.RefreshRequested())

    async def tick(self, snapshot: Snapshot, count: int) -> None:
        if count % 2 == 0:   # a map dump costs the daemon more than a snapshot: every other refresh
            self.post_message(self.RefreshRequested())

    def _entry_cell(self, row: tuple[str, ...], key: str) -> Cell:
        try:
            i = int(key)
        except ValueError:
            return "", None
        return (row[i] if i < len(row) else ""), None

    def update_maps(self, maps: list[MapInfo]) -> None:
        self.maps.set_rows(maps)
        info = next((m for m in maps if m.name == self.selected), None)
        titles = self.query("#map-title")  # gone when a late answer meets an app that is closing
        if info is not None and titles:
            titles.first(Static).update(
                f"[b]{fmt.markup(info.name)}[/] · {fmt.markup(info.type)} · key {info.key_size} B, "
                f"value {info.value_size} B · {fmt.markup(info.purpose)}")

    def update_entries(self, entries: MapEntries, snap: Snapshot | None = None) -> None:
        if entries.name != self.selected:
            return
        if entries.name == "domain_routing" and snap is not None:
            entries = with_cached_names(entries, snap)
        widths = [min(max(len(c), 3, *(len(r[i]) for r in entries.rows[:200])), 40) for i, c in
                  enumerate(entries.columns)]
        same = self.last is not None and self.last.columns == entries.columns
        if same:
            # Columns only grow (a name learnt later), so they do not jump about.
            widths = [max(w, c.width) for w, c in zip(widths, self.entries.columns, strict=True)]
        if not same or widths != [c.width for c in self.entries.columns]:
            self.entries.columns = [Column(str(i), c, w, flex=int(i == len(widths) - 1))
                                    for i, (c, w) in enumerate(zip(entries.columns, widths, strict=True))]
            self.entries._layout_width = -1
        self.last = entries
        self.entries.empty_text = "no entries" + (" match the search" if self.search else "")
        self.entries.set_rows(list(entries.rows))
        shown = len(entries.rows)
        note = f"{shown} of {entries.total} entries" + (f" matching {fmt.markup(repr(self.search))}"
                                                        if self.search else "")
        self.entries.border_subtitle = note

    @on(VirtualTable.Selected, "#map-list")
    def _choose(self, event: VirtualTable.Selected) -> None:
        self.selected = event.row.name
        self.last = None
        self.entries.set_rows([])
        self.post_message(self.RefreshRequested())
        self.entries.focus()

    def action_filter(self) -> None:
        open_filter(self.query_one("#map-search", Input))

    @on(Input.Submitted, "#map-search")
    def _search(self, event: Input.Submitted) -> None:
        self.search = event.value.strip()
        self.entries.focus()
        self.post_message(self.RefreshRequested())

    def leave_filter(self) -> bool:
        handled, cleared = leave_filter(self.query_one("#map-search", Input), self.entries)
        if cleared and self.search:
            self.search = ""
            self.post_message(self.RefreshRequested())
        return handled

    def action_reload(self) -> None:
        self.post_message(self.RefreshRequested())


def with_cached_names(entries: MapEntries, snap: Snapshot) -> MapEntries:
    """domain_routing rows whose names the daemon left blank, named from the DNS cache the snapshot carries.

    A daemon that does not hand the map view its NameBook leaves the names
    column empty; the cache's answers name most addresses all the same.
    """
    if "names" not in entries.columns or snap.dns is None:
        return entries
    ai, ni = entries.columns.index("address"), entries.columns.index("names")
    known: dict[str, list[str]] = {}
    for row in snap.dns.cache:
        for answer in row.answers:
            names = known.setdefault(answer, [])
            if row.name not in names:
                names.append(row.name)
    rows = tuple((*r[:ni], ", ".join(known.get(r[ai], ())), *r[ni + 1:]) if not r[ni] else r
                 for r in entries.rows)
    return MapEntries(entries.name, entries.columns, rows, entries.total)
