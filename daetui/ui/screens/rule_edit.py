"""Editing one rule: an input line checked as you type, with the error under it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static

from daetui.routing.errors import RuleError
from daetui.routing.geodata import GeoData, default_search_path
from daetui.routing.parser import parse_rule
from daetui.routing.ruleset import MUST_RULES, check_rule

EXAMPLES = "e.g.  domain(geosite:cn) -> direct   ·   dport(443) && l4proto(udp) -> block   ·   " \
           "mac(aa:bb:cc:dd:ee:ff) -> proxy"


@dataclass(frozen=True)
class RuleCheck:
    """The verdict on a rule's text: fine, or what is wrong and where (character offsets)."""

    ok: bool
    message: str
    start: int = 0
    end: int = 0


def check_rule_text(text: str, outbounds: Iterable[str] = (), geo: GeoData | None = None) -> RuleCheck:
    """Check a rule as the daemon will: syntax, every value's type, geo tags, the outbound's name.

    `outbounds` are the names the running config knows (groups, direct,
    block); empty means "do not check the name" and the daemon decides.
    """
    if not text.strip():
        return RuleCheck(False, "type a rule: conditions && ... -> outbound")
    try:
        rule = parse_rule(text)
        check_rule(rule, geo)
    except RuleError as e:
        return RuleCheck(False, e.message, e.start, e.end)
    known = set(outbounds)
    target = rule.outbound.target
    if known and target not in known and target != MUST_RULES:
        at = text.rfind(rule.outbound.name)
        return RuleCheck(False, f"no outbound or group named {target!r} (known: {', '.join(sorted(known))})",
                         at, at + len(rule.outbound.name))
    conds = " and ".join(c.name for c in rule.conditions)
    return RuleCheck(True, f"ok: flows matching {conds} go to {rule.outbound}")


class RuleEditScreen(ModalScreen[str | None]):
    """Type a rule; enter saves it only when it checks out. Dismisses with the text, or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, text: str, outbounds: Iterable[str] = (), config: str | None = None) -> None:
        super().__init__()
        self.title_text = title
        self.text = text
        self.outbounds = tuple(outbounds)
        # geoip/geosite tags resolve next to the config, as the daemon resolves them.
        self.geo = GeoData(default_search_path(Path(config).parent if config else None))
        self.verdict = RuleCheck(False, "")

    def compose(self) -> ComposeResult:
        with Vertical(id="rule-box", classes="dialog"):
            yield Static(f"[b]{self.title_text}[/]")
            yield Input(self.text, placeholder="conditions && ... -> outbound", id="rule-input")
            yield Static("", id="rule-verdict")
            yield Static(f"[dim]{EXAMPLES}[/]")
            with Horizontal(classes="buttons"):
                yield Button("Save (enter)", id="save", variant="primary")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self._check(self.text)
        self.query_one(Input).focus()

    @on(Input.Changed, "#rule-input")
    def _changed(self, event: Input.Changed) -> None:
        self._check(event.value)

    def _check(self, text: str) -> None:
        self.verdict = check_rule_text(text, self.outbounds, self.geo)
        v = self.verdict
        out = self.query_one("#rule-verdict", Static)
        if v.ok:
            out.update(Text("✓ " + v.message, style="green"))
        elif text.strip():
            # The rule again with the faulty part marked: a caret under the
            # input would drift as soon as the input scrolls.
            shown = Text(text if v.start < len(text) else text + " ")
            shown.stylize("bold red reverse", v.start, max(v.end, v.start + 1))
            out.update(Text.assemble(shown, "\n", ("✗ " + v.message, "red")))
        else:
            out.update(Text(v.message, style="yellow"))
        self.query_one("#save", Button).disabled = not v.ok

    @on(Input.Submitted, "#rule-input")
    def _submitted(self, event: Input.Submitted) -> None:
        self._save(event.value)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self._save(self.query_one(Input).value)
        else:
            self.dismiss(None)

    def _save(self, text: str) -> None:
        self._check(text)
        if self.verdict.ok:
            self.dismiss(text.strip())
        else:
            self.app.bell()

    def action_cancel(self) -> None:
        self.dismiss(None)
