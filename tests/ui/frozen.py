"""A Source that replays a real daemon's recorded answers (tests/ui/fixtures/lab.json).

Used only where the point is how the console draws, not what it fetches: the
snapshot tests need the same data every run. The live tests use the daemon.

It is a ControlApi as the control socket's client is: the console calls the
same command methods, and they decode what `call` answers here as they decode
the daemon's answers. Each command has an answer below (`_<command>`, given
the request's arguments, answering JSON values as the daemon does);
tests/ui/test_frozen.py fails when a command has none.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from daetui.control import wire
from daetui.control.commands import COMMANDS, DEFAULT_TIMEOUT, ControlApi
from daetui.control.events import Event
from daetui.control.state import MapEntries, ReloadResult
from daetui.dns.state import DnsTrace
from daetui.routing.explain import ExplainResult
from daetui.ui.app import DaetuiApp

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lab.json"


class FrozenSource(ControlApi):
    """The recorded answers; what the console asks to change is kept for the test to look at."""

    # Its snapshot is at hand at once, and the pictures show what the console draws from an answer that
    # quick (it lands before the first tab is active): no hop through a thread.
    big_answers_in_thread = False

    def __init__(self, path: Path = FIXTURE) -> None:
        self.data = json.loads(path.read_text())
        self.closed: list[int] = []
        self.stopped = False
        self.edits: list[tuple[str, int, dict]] = []
        self.flushed = False
        self.pins: list[tuple[str, str | None]] = []
        self.checks: list[list[str]] = []
        self.explained: list[dict[str, Any]] = []

    def answer(self, cmd: str) -> Callable[..., Any] | None:
        """The answer to `cmd`, or None for one this source does not know."""
        return getattr(self, f"_{cmd}", None) if cmd in COMMANDS else None

    async def call(self, cmd: str, timeout: float = DEFAULT_TIMEOUT, **args: Any) -> Any:
        answer = self.answer(cmd)
        if answer is None:
            raise ValueError(f"frozen source: no answer for {cmd!r}")
        return answer(**args)

    async def events(self) -> AsyncIterator[Event]:
        while True:
            await asyncio.sleep(3600)
            yield Event("none", {})

    async def close(self) -> None:
        pass

    # -- recorded ---------------------------------------------------------------------------
    def _ping(self) -> dict[str, Any]:
        return {"version": 1, "pid": self.data["snapshot"]["health"]["pid"], "started": 0.0,
                "config": self.data["snapshot"]["health"]["config"], "running": True}

    def _snapshot(self, flows: bool = True, dns: bool = True) -> Any:
        return self.data["snapshot"]

    def _logs(self) -> Any:
        return self.data["logs"]

    def _maps(self) -> Any:
        return self.data["maps"]

    def _map_entries(self, name: str, search: str = "", limit: int = 5000) -> Any:
        raw = self.data["entries"].get(name, {"name": name, "columns": ["note"], "rows": [["not recorded"]],
                                               "total": 1})
        e = wire.decode(MapEntries, raw)
        rows = tuple(r for r in e.rows if not search or any(search.lower() in c.lower() for c in r))
        return wire.encode(MapEntries(e.name, e.columns, rows, e.total))

    def _dns_lookup(self, name: str, qtype: str = "A") -> Any:
        raw = self.data.get("dns_lookups", {}).get(f"{name} {qtype.upper()}")
        if raw is None:
            return wire.encode(DnsTrace(name, qtype.upper(), "", (), 0.0, "", "", False, 0.0,
                                        "frozen source: not recorded"))
        return raw

    def _explain(self, **query: Any) -> Any:
        self.explained.append(query)
        return wire.encode(ExplainResult(None, None, "frozen source: no trace recorded"))

    # -- a recording has no daemon to change: what is asked is kept ------------------------------
    def _close(self, ids: list[int]) -> int:
        self.closed += ids
        return len(ids)

    def _stop(self) -> bool:
        self.stopped = True
        return True

    def _reload(self, abort: bool = False) -> Any:
        return wire.encode(ReloadResult(False, "frozen source: nothing to reload"))

    def _reload_preview(self) -> Any:
        return wire.encode(ReloadResult(True, "preview", 1, added=("dport(8443) -> proxy",),
                                        toggled=("dport(22) -> direct",)))

    def _edit_rules(self, op: str, index: int, **args: Any) -> Any:
        self.edits.append((op, index, args))
        return wire.encode(ReloadResult(False, "frozen source: nothing written"))

    def _learn_name(self, addr: str, name: str) -> bool:
        return True

    def _dns_flush(self) -> int:
        self.flushed = True
        return 0

    def _pin_node(self, group: str, node: str | None) -> bool:
        self.pins.append((group, node))
        return True

    def _check_nodes(self, names: list[str]) -> bool:
        self.checks.append(list(names))
        return True


def frozen_console(source: FrozenSource, pane: str = "overview", theme: str | None = None) -> DaetuiApp:
    """The console on `source`, showing `pane`: one snapshot and no refresh after it, so every picture
    is the same."""

    async def connect() -> FrozenSource:
        return source

    return DaetuiApp(connect, refresh=3600, theme=theme, initial_pane=pane)
