"""Reloading the config file: what would change, then apply or cancel."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from daetui.control.state import ReloadResult
from daetui.ui.fmt import printable, printable_lines

SHOWN = 40  # rules listed per kind; a reload of thousands says how many more


def describe_changes(result: ReloadResult) -> Text:
    """The rules a reload adds, removes and turns on or off, one per line (+, -, ~)."""
    out = Text()
    for mark, style, rules in (("+", "green", result.added), ("-", "red", result.removed),
                               ("~", "yellow", result.toggled)):
        for rule in rules[:SHOWN]:
            out.append(f"{mark} {printable(rule)}\n", style)
        if len(rules) > SHOWN:
            out.append(f"{mark} … and {len(rules) - SHOWN} more\n", style)
    if not out:
        out.append("no rule changes (other settings may still change)\n", "dim")
    return out


class ReloadPreviewScreen(ModalScreen[bool]):
    """The difference between the running rules and the file's; dismisses True to apply it."""

    BINDINGS = [Binding("y,enter", "answer(True)", "Apply"), Binding("escape,n", "answer(False)", "Cancel")]

    def __init__(self, preview: ReloadResult, config: str) -> None:
        super().__init__()
        self.preview = preview
        self.config = config

    def compose(self) -> ComposeResult:
        p = self.preview
        with Vertical(id="reload-box", classes="dialog"):
            yield Static(Text.assemble((f"Reload {printable(self.config)}", "bold"), "\n"))
            if p.ok:
                with VerticalScroll(id="reload-changes"):
                    yield Static(describe_changes(p))
                yield Static("[dim]Flows already running keep their route; new flows follow the new rules.[/]")
                with Horizontal(classes="buttons"):
                    yield Button("Apply (y)", id="yes", variant="primary")
                    yield Button("Cancel (esc)", id="no")
            else:
                yield Static(Text("The file cannot be loaded, so nothing changes:\n\n" + printable_lines(p.message),
                                  "red"))
                with Horizontal(classes="buttons"):
                    yield Button("Close (esc)", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes" and self.preview.ok)

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes and self.preview.ok)
