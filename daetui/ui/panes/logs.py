"""Logs: the daemon's log, live, by level, pausable."""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Input, RichLog, Static

from daetui.control.state import LogLine
from daetui.ui import fmt
from daetui.ui.panes.base import PaletteEntry, Pane
from daetui.ui.widgets.filterline import leave_filter, open_filter

LEVELS = ["debug", "info", "warn", "error"]
LEVEL_STYLE = {"debug": "dim", "info": "", "warn": "yellow", "error": "bold red"}
KEEP = 5000


class LogsPane(Pane, Vertical):
    """A live view of the log with a level floor, a text filter and a pause (fed by the app's event stream)."""

    ID = "logs"
    TITLE = "Logs"
    FOCUS = "#log-view"
    PALETTE = (PaletteEntry("Pause or resume the log", "as p in Logs", "pause"),)

    HELP = """\
### Logs

The daemon's log as it happens: one line per relayed connection (opened and
closed, with its bytes), bindings, warnings.

| key | |
|---|---|
| `e` `w` `i` `d` | show error / warn / info / debug and above |
| `p` or `space` | pause; lines that arrive meanwhile are kept and shown on resume |
| `/` | show only lines containing a text |
| `G` `g` | to the newest / oldest line |
"""
    BINDINGS = [
        Binding("e", "level('error')", "Errors", show=False),
        Binding("w", "level('warn')", "Warn", show=False),
        Binding("i", "level('info')", "Info", show=False),
        Binding("d", "level('debug')", "Debug", show=False),
        Binding("p,space", "pause", "Pause"),
        Binding("slash", "filter", "Filter"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.lines: deque[LogLine] = deque(maxlen=KEEP)
        self.level = "info"
        self.paused = False
        self.held = 0
        self.text_filter = ""

    def compose(self) -> ComposeResult:
        yield RichLog(max_lines=KEEP, wrap=False, markup=False, id="log-view", auto_scroll=True)
        yield Input(placeholder="show lines containing…", id="log-filter", classes="hidden")
        yield Static("", id="log-status", classes="pane-status")

    def on_mount(self) -> None:
        self._status()

    def _shows(self, line: LogLine) -> bool:
        if LEVELS.index(line.level if line.level in LEVELS else "info") < LEVELS.index(self.level):
            return False
        return not self.text_filter or self.text_filter.lower() in line.message.lower()

    def _line_text(self, line: LogLine) -> Text:
        # A log line quotes what the network sent (names, errors): its controls are escaped.
        return Text.assemble((fmt.clock(line.time) + " ", "dim"),
                             (f"{fmt.printable(line.level):<5} ", LEVEL_STYLE.get(line.level, "")),
                             (fmt.printable(line.logger.removeprefix("daetui.")) + ": ", "dim"),
                             fmt.printable(line.message))

    def add(self, lines: list[LogLine]) -> None:
        """New lines from the daemon."""
        view = self.query_one("#log-view", RichLog)
        for line in lines:
            self.lines.append(line)
            if self.paused:
                self.held += 1
            elif self._shows(line):
                view.write(self._line_text(line))
        self._status()

    def _redraw(self) -> None:
        view = self.query_one("#log-view", RichLog)
        view.clear()
        for line in self.lines:
            if self._shows(line):
                view.write(self._line_text(line))
        self._status()

    def _status(self) -> None:
        text = f"level ≥ {self.level}"
        if self.text_filter:
            text += f" · containing {fmt.markup(repr(self.text_filter))}"
        text += f" · {len(self.lines)} lines kept"
        if self.paused:
            text += f" · [b]PAUSED[/] ({self.held} new lines held; p resumes)"
        self.query_one("#log-status", Static).update(text)

    def action_level(self, level: str) -> None:
        self.level = level
        self._redraw()

    def action_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            self.held = 0
            self._redraw()
        self._status()

    def action_filter(self) -> None:
        open_filter(self.query_one("#log-filter", Input))

    @on(Input.Changed, "#log-filter")
    def _changed(self, event: Input.Changed) -> None:
        self.text_filter = event.value.strip()
        self._redraw()

    @on(Input.Submitted, "#log-filter")
    def _done(self) -> None:
        self.query_one("#log-view", RichLog).focus()

    def leave_filter(self) -> bool:
        return leave_filter(self.query_one("#log-filter", Input), self.query_one("#log-view", RichLog))[0]
