"""A table that renders only the lines on screen, for tens of thousands of rows.

Rows are any objects; a `cell(row, column_key)` function turns one into text
and an optional style name, or into a list of such pieces when one cell needs
several styles (a sparkline with its failed points marked). A `span(row)`
function may draw a row across the whole width instead (a section heading).
Columns have priorities: on a narrow terminal the least important go first,
and one flexible column takes the spare width. The header stays on top while
the rows scroll under it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from daetui.termtext import printable

Cell = tuple[str, str | None]  # text, style name ("dim", "good", "warn", "bad", "accent") or None
Pieces = list[Cell]            # one cell in several styles


@dataclass(frozen=True)
class Column:
    """One column: preferred width, whether it stretches, and how soon it is dropped."""

    key: str
    title: str
    width: int
    align: str = "left"      # "left" | "right"
    flex: int = 0            # share of the spare width (0: fixed)
    priority: int = 0        # higher: dropped earlier on narrow screens; 0: never dropped
    min_width: int = 0       # may shrink to this before a column is dropped (0: width)
    keep_end: bool = False   # too long: the start goes, not the end (a history's newest checks stay in sight)


def _cut(text: str, width: int) -> str:
    """`text` cut to `width` cells, its last one an ellipsis."""
    if width <= 1:
        return "…"[:width]
    out, used = [], 0
    for ch in text:
        w = cell_len(ch)
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…" + " " * (width - 1 - used)


def fit(text: str, width: int, align: str) -> str:
    """Pad or cut `text` to exactly `width` cells, its control characters escaped (every cell and title of
    every table passes here: names from the network are shown, never obeyed by the terminal)."""
    text = printable(text)
    n = cell_len(text)
    if n > width:
        return text[:width] if width <= 1 else _cut(text, width)
    pad = " " * (width - n)
    return pad + text if align == "right" else text + pad


def _tail(text: str, width: int) -> str:
    """The end of `text` that fits in `width` cells."""
    out, used = [], 0
    for ch in reversed(text):
        w = cell_len(ch)
        if used + w > width:
            break
        out.append(ch)
        used += w
    return " " * (width - used) + "".join(reversed(out))


def fit_pieces(pieces: Pieces, width: int, align: str, keep_end: bool = False) -> Pieces:
    """Pad or cut styled pieces to exactly `width` cells, as `fit` does one text."""
    pieces = [(printable(t), style) for t, style in pieces]
    n = sum(cell_len(t) for t, _ in pieces)
    if n <= width:
        pad = (" " * (width - n), None)
        return [pad, *pieces] if align == "right" else [*pieces, pad]
    if keep_end:
        # The last pieces whole, the one before them cut from its start; no ellipsis (nothing is cut short).
        tail: Pieces = []
        room = width
        for text, style in reversed(pieces):
            if cell_len(text) <= room:
                tail.append((text, style))
                room -= cell_len(text)
                continue
            if room:
                tail.append((_tail(text, room), style))
            break
        return tail[::-1]
    # Too long: whole pieces while they leave a cell for the ellipsis, then the first that does not, cut.
    out: Pieces = []
    room = width
    for text, style in pieces:
        if cell_len(text) < room:
            out.append((text, style))
            room -= cell_len(text)
            continue
        out.append((_cut(text, room), style))
        break
    return out


class VirtualTable(ScrollView, can_focus=True):
    """Rows on demand: render_line() draws one visible line at a time."""

    COMPONENT_CLASSES = {"vtable--header", "vtable--cursor", "vtable--dim", "vtable--good", "vtable--warn",
                         "vtable--bad", "vtable--accent", "vtable--sorted"}
    DEFAULT_CSS = """
    VirtualTable { background: $surface; }
    VirtualTable > .vtable--header { color: $text; background: $panel; text-style: bold; }
    VirtualTable > .vtable--sorted { color: $accent; background: $panel; text-style: bold; }
    VirtualTable > .vtable--cursor {
        color: $block-cursor-blurred-foreground; background: $block-cursor-blurred-background;
    }
    VirtualTable:focus > .vtable--cursor {
        color: $block-cursor-foreground; background: $block-cursor-background;
    }
    VirtualTable > .vtable--dim { color: $text-muted; }
    VirtualTable > .vtable--good { color: $success; }
    VirtualTable > .vtable--warn { color: $warning; }
    VirtualTable > .vtable--bad { color: $error; }
    VirtualTable > .vtable--accent { color: $accent; }
    """
    BINDINGS = [
        Binding("up,k", "move(-1)", "Up", show=False),
        Binding("down,j", "move(1)", "Down", show=False),
        Binding("pageup,ctrl+b", "page(-1)", "Page up", show=False),
        Binding("pagedown,ctrl+f", "page(1)", "Page down", show=False),
        Binding("home,g", "edge(0)", "Top", show=False),
        Binding("end,G", "edge(1)", "Bottom", show=False),
        Binding("enter", "select", "Detail", show=False),
    ]

    cursor: reactive[int] = reactive(0, always_update=True)

    class Selected(Message):
        """Enter on a row."""

        def __init__(self, table: VirtualTable, row: Any) -> None:
            super().__init__()
            self.table = table
            self.row = row

        @property
        def control(self) -> VirtualTable:
            return self.table

    class HeaderClicked(Message):
        def __init__(self, table: VirtualTable, column: str) -> None:
            super().__init__()
            self.table = table
            self.column = column

        @property
        def control(self) -> VirtualTable:
            return self.table

    def __init__(self, columns: Sequence[Column], cell: Callable[[Any, str], Cell | Pieces],
                 row_key: Callable[[Any], Hashable] | None = None, *, id: str | None = None,
                 classes: str | None = None, span: Callable[[Any], Pieces | None] | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.columns = list(columns)
        self.cell = cell
        self.span = span
        self.row_key = row_key
        self.rows: Sequence[Any] = ()
        self.sort_column: str | None = None
        self.sort_descending = False
        self.empty_text = "nothing to show"
        self._layout: list[tuple[Column, int]] = []
        self._layout_width = -1

    # -- data ---------------------------------------------------------------------------
    def set_rows(self, rows: Sequence[Any]) -> None:
        """Replace the rows, keeping the cursor on the same row (by key) if it is still there."""
        keep = None
        if self.row_key is not None and 0 <= self.cursor < len(self.rows):
            keep = self.row_key(self.rows[self.cursor])
        self.rows = rows
        if keep is not None:
            assert self.row_key is not None
            for i, r in enumerate(rows):
                if self.row_key(r) == keep:
                    self.cursor = i
                    break
            else:
                self.cursor = min(self.cursor, max(0, len(rows) - 1))
        else:
            self.cursor = min(self.cursor, max(0, len(rows) - 1))
        self._update_virtual_size()
        self.refresh()

    def set_columns(self, columns: Sequence[Column]) -> None:
        """Change the columns (nothing happens when they are the same)."""
        if list(columns) != self.columns:
            self.columns = list(columns)
            self._layout_width = -1
            self._update_virtual_size()
            self.refresh()

    @property
    def current(self) -> Any | None:
        return self.rows[self.cursor] if 0 <= self.cursor < len(self.rows) else None

    @property
    def _width(self) -> int:
        """Columns available for cells: the widget minus its scrollbar."""
        return self.scrollable_content_region.width

    def _update_virtual_size(self) -> None:
        width = sum(w for _, w in self._columns_for(self._width)) + len(self._layout)
        self.virtual_size = Size(max(width, self._width), len(self.rows) + 1)

    def on_resize(self, event: events.Resize) -> None:
        self._layout_width = -1
        self._update_virtual_size()

    # -- layout -------------------------------------------------------------------------
    def _columns_for(self, width: int) -> list[tuple[Column, int]]:
        if width == self._layout_width:
            return self._layout
        # Drop the optional columns, least important first, then shrink the
        # shrinkable ones towards their minimum; whatever is left over goes to
        # the flexible columns.
        cols = list(self.columns)
        while sum(c.width + 1 for c in cols) > width and any(c.priority > 0 for c in cols):
            cols.remove(max((c for c in cols if c.priority > 0), key=lambda c: (c.priority, cols.index(c))))
        widths = {c.key: c.width for c in cols}
        excess = sum(widths.values()) + len(cols) - width
        while excess > 0:
            room = [c for c in cols if widths[c.key] > (c.min_width or c.width)]
            if not room:
                break
            for c in room:
                if excess <= 0:
                    break
                widths[c.key] -= 1
                excess -= 1
        spare = max(0, -excess)
        total = sum(c.flex for c in cols)
        out = []
        given = 0
        flexed = [c for c in cols if c.flex]
        for c in cols:
            w = widths[c.key]
            if c.flex and total:
                extra = spare - given if c is flexed[-1] else spare * c.flex // total
                given += extra
                w += extra
            out.append((c, w))
        self._layout, self._layout_width = out, width
        return out

    def visible_columns(self) -> list[str]:
        return [c.key for c, _ in self._columns_for(self._width)]

    # -- rendering --------------------------------------------------------------------------
    def _style(self, name: str | None) -> Style:
        if name is None:
            return self.rich_style
        return self.get_component_rich_style(f"vtable--{name}")

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self._width
        cols = self._columns_for(width)
        if y == 0:
            segs = []
            for c, w in cols:
                title = c.title
                if c.key == self.sort_column:
                    title += " ▼" if self.sort_descending else " ▲"
                style = self._style("sorted" if c.key == self.sort_column else "header")
                segs.append(Segment(fit(title, w, c.align) + " ", style))
            strip = Strip(segs)
            return strip.crop_extend(scroll_x, scroll_x + width, self._style("header"))
        index = scroll_y + y - 1
        if index >= len(self.rows):
            if index == 0 and not self.rows:
                return Strip([Segment(fit(f"  {self.empty_text}", width, "left"), self._style("dim"))])
            return Strip.blank(width, self.rich_style)
        row = self.rows[index]
        base = self.rich_style
        if index == self.cursor:
            base = base + self._style("cursor")
        segs = []
        whole = self.span(row) if self.span is not None else None
        if whole is not None:
            for text, style_name in fit_pieces(whole, width, "left"):
                segs.append(Segment(text, self._cell_style(base, style_name, index)))
            return Strip(segs).crop_extend(scroll_x, scroll_x + width, base)
        for c, w in cols:
            out = self.cell(row, c.key)
            if isinstance(out, list):
                for text, style_name in fit_pieces(out, w, c.align, c.keep_end):
                    segs.append(Segment(text, self._cell_style(base, style_name, index)))
                segs.append(Segment(" ", base))
                continue
            text, style_name = out
            segs.append(Segment(fit(text, w, c.align) + " ", self._cell_style(base, style_name, index)))
        return Strip(segs).crop_extend(scroll_x, scroll_x + width, base)

    def _cell_style(self, base: Style, name: str | None, index: int) -> Style:
        style = base + self._style(name) if name else base
        if index == self.cursor:
            style = style + self._style("cursor")
        return style

    # -- cursor ---------------------------------------------------------------------------------
    def watch_cursor(self, old: int, new: int) -> None:
        self._scroll_to_cursor()
        self.refresh()

    def _scroll_to_cursor(self) -> None:
        visible = max(1, self.size.height - 1)
        top = self.scroll_offset.y
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= top + visible:
            self.scroll_to(y=self.cursor - visible + 1, animate=False)

    def action_move(self, delta: int) -> None:
        if self.rows:
            self.cursor = max(0, min(len(self.rows) - 1, self.cursor + delta))

    def action_page(self, direction: int) -> None:
        self.action_move(direction * max(1, self.size.height - 2))

    def action_edge(self, end: int) -> None:
        if self.rows:
            self.cursor = len(self.rows) - 1 if end else 0

    def action_select(self) -> None:
        if self.current is not None:
            self.post_message(self.Selected(self, self.current))

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            x = event.x + self.scroll_offset.x
            pos = 0
            for c, w in self._columns_for(self._width):
                if pos <= x < pos + w + 1:
                    self.post_message(self.HeaderClicked(self, c.key))
                    return
                pos += w + 1
            return
        index = self.scroll_offset.y + event.y - 1
        if 0 <= index < len(self.rows):
            if index == self.cursor and event.chain == 2:
                self.action_select()
            self.cursor = index
