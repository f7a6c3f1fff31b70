"""The console's dialogs: help, a flow's details, quitting, confirming."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Markdown, Static

from daetui.ui import fmt
from daetui.ui.flows import FlowRow


def global_help(panes: Sequence[str]) -> str:
    """The keys that work everywhere; `panes` are the panes' titles, in the order of their keys."""
    return f"""\
### Everywhere

| key | |
|---|---|
| `1` … `{len(panes)}` | {", ".join(panes)} |
| `?` or `F1` | this help (for the pane you are on) |
| `ctrl+p` | command palette: panes, themes, stop or detach |
| `esc` | leave a filter line, close a dialog |
| `q` | quit: stop routing, or leave daetui running headless |
"""


class HelpScreen(ModalScreen[None]):
    """Keys of the current pane and of the whole console."""

    BINDINGS = [Binding("escape,q,question_mark,f1", "dismiss", "Close")]

    def __init__(self, pane_help: str, everywhere: str) -> None:
        super().__init__()
        self.pane_help = pane_help
        self.everywhere = everywhere

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box", classes="dialog"):
            yield Markdown(self.pane_help + "\n" + self.everywhere)
            yield Static("[dim]esc closes[/]")


class FlowScreen(ModalScreen[None]):
    """Everything known of one flow."""

    BINDINGS = [Binding("escape,q,enter", "dismiss", "Close")]

    def __init__(self, row: FlowRow, ifnames: dict[int, str]) -> None:
        super().__init__()
        self.row = row
        self.ifnames = ifnames
        self.trace: str | None = None

    def compose(self) -> ComposeResult:
        r = self.row
        t = Table(box=None, show_header=False, padding=(0, 1), expand=True)
        t.add_column(style="bold", no_wrap=True)
        t.add_column(ratio=1)
        rows = [
            ("flow", f"{r.proto} {fmt.endpoint(r.src, r.sport)} → {fmt.endpoint(r.dst, r.dport)}"),
            ("state", r.state + (f" ({r.error})" if r.error else "")),
            ("started", f"{fmt.clock(r.start)} · {fmt.duration(r.duration)}"),
            ("client", f"{r.mac or '?'}" + (f" · {r.device}" if r.device else "")),
            ("interface", self.ifnames.get(r.ifindex, str(r.ifindex)) if r.ifindex else "—"),
            ("rule", f"{r.rule_label} {r.rule}"),
            ("decided by", f"{r.stage} stage" + (f" (rule generation {r.generation})" if r.stage == "kernel"
                                                 else "")),
            ("outbound", r.outbound + (f" via node {r.node}" if r.node else "")),
            ("path", "kernel only: forwarded or dropped, never in user space" if r.path == "kernel"
             else "handed to the control plane and relayed" + (f" (connection {r.conn_id})" if r.conn_id
                                                               else "")),
            ("up", f"{fmt.size(r.up)}" + (f" · {r.packets} packets" if r.packets else "")
             + (f" · {fmt.rate(r.up_rate)}" if r.up_rate else "")),
            ("down", f"{fmt.size(r.down)}" + (f" · {r.rx_packets} packets" if r.rx_packets else "")
             + (f" · {fmt.rate(r.down_rate)}" if r.down_rate else "")),
        ]
        if r.domain:
            rows.insert(1, ("domain", r.domain))
        if r.process:
            # The router's own flow: the process that opened it, named as it named itself (escaped below).
            i = next(i for i, (k, _) in enumerate(rows) if k == "client")
            rows[i] = ("process", f"{r.process} · pid {r.pid}" if r.pid else r.process)
            if r.mac or r.device:
                rows.insert(i + 1, ("client", f"{r.mac or '?'}" + (f" · {r.device}" if r.device else "")))
        for k, v in rows:
            # A Text, not a str: a str cell is read as markup, and the domain, the error, the device's label
            # come from outside; their controls escaped.
            t.add_row(k, fmt.safe(v))
        with Vertical(id="flow-box", classes="dialog"):
            yield Static("[b]Flow[/]")
            yield Static(t)
            yield Static("[b]Why[/] [dim](the rules now, as daetui explain)[/]")
            yield Static(fmt.safe(self.trace) if self.trace is not None else "[dim]asking the daemon…[/]",
                         id="flow-trace")
            yield Static("[dim]esc closes[/]")

    def show_trace(self, text: str) -> None:
        """The rule trace for this flow, once the daemon has answered (it may answer before the screen is
        composed: then compose shows it)."""
        self.trace = text
        found = self.query("#flow-trace")
        if found:
            found.first(Static).update(fmt.safe(text))


class QuitScreen(ModalScreen[str | None]):
    """Quitting on purpose: stop routing, or leave the daemon running headless."""

    BINDINGS = [
        Binding("s", "choose('stop')", "Stop routing"),
        Binding("d,l", "choose('detach')", "Leave running"),
        Binding("escape,n", "choose(None)", "Cancel"),
    ]

    def __init__(self, pid: int | None) -> None:
        super().__init__()
        self.pid = pid

    def compose(self) -> ComposeResult:
        who = f"daetui (pid {self.pid})" if self.pid else "daetui"
        with Vertical(id="quit-box", classes="dialog"):
            yield Static(f"[b]Quit the console[/]\n\n{who} routes this router's traffic. Stop it, or leave it "
                         "running headless (come back with [b]daetui attach[/])?")
            with Horizontal(classes="buttons"):
                yield Button("Stop routing (s)", id="stop", variant="error")
                yield Button("Leave running (d)", id="detach", variant="primary")
                yield Button("Cancel (esc)", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "cancel" else event.button.id)

    def action_choose(self, what: str | None) -> None:
        self.dismiss(what)


class ConfirmScreen(ModalScreen[bool]):
    """Yes or no."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("escape,n", "answer(False)", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box", classes="dialog"):
            yield Static(fmt.safe(self.question))  # it may quote a rule: shown as written
            with Horizontal(classes="buttons"):
                yield Button("Yes (y)", id="yes", variant="error")
                yield Button("No (esc)", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
