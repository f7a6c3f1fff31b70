"""A Source that replays a real daemon's recorded answers (tests/ui/fixtures/lab.json).

Used only where the point is how the console draws, not what it fetches: the
snapshot tests need the same data every run. The live tests use the daemon.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

from daetui.control import wire
from daetui.control.events import Event
from daetui.control.state import LogLine, MapEntries, MapInfo, ReloadResult, Snapshot
from daetui.dns.state import DnsTrace
from daetui.routing.explain import ExplainResult

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lab.json"


class FrozenSource:
    def __init__(self, path: Path = FIXTURE) -> None:
        self.data = json.loads(path.read_text())
        self.closed: list[int] = []
        self.stopped = False
        self.edits: list[tuple[str, int, dict]] = []
        self.flushed = False
        self.pins: list[tuple[str, str | None]] = []
        self.checks: list[list[str]] = []

    async def snapshot(self, flows: bool = True) -> Snapshot:
        return wire.decode(Snapshot, self.data["snapshot"])

    async def events(self) -> AsyncIterator[Event]:
        while True:
            await asyncio.sleep(3600)
            yield Event("none", {})

    async def logs(self) -> list[LogLine]:
        return wire.decode(list[LogLine], self.data["logs"])

    async def maps(self) -> list[MapInfo]:
        return wire.decode(list[MapInfo], self.data["maps"])

    async def map_entries(self, name: str, search: str = "", limit: int = 5000) -> MapEntries:
        raw = self.data["entries"].get(name, {"name": name, "columns": ["note"], "rows": [["not recorded"]],
                                               "total": 1})
        e = wire.decode(MapEntries, raw)
        rows = tuple(r for r in e.rows if not search or any(search.lower() in c.lower() for c in r))
        return MapEntries(e.name, e.columns, rows, e.total)

    async def close_connections(self, ids: list[int]) -> int:
        self.closed += ids
        return len(ids)

    async def stop_daemon(self) -> None:
        self.stopped = True

    async def close(self) -> None:
        pass

    # A recording has no daemon to change: edits are kept for the test to look at.
    async def reload(self, abort: bool = False) -> ReloadResult:
        return ReloadResult(False, "frozen source: nothing to reload")

    async def reload_preview(self) -> ReloadResult:
        return ReloadResult(True, "preview", 1, added=("dport(8443) -> proxy",), toggled=("dport(22) -> direct",))

    async def edit_rules(self, op: str, index: int, **args: object) -> ReloadResult:
        self.edits.append((op, index, args))
        return ReloadResult(False, "frozen source: nothing written")

    async def explain(self, **query: object) -> ExplainResult:
        return ExplainResult(None, None, "frozen source: no trace recorded")

    async def dns_lookup(self, name: str, qtype: str = "A") -> DnsTrace:
        raw = self.data.get("dns_lookups", {}).get(f"{name} {qtype.upper()}")
        if raw is None:
            return DnsTrace(name, qtype.upper(), "", (), 0.0, "", "", False, 0.0, "frozen source: not recorded")
        return wire.decode(DnsTrace, raw)

    async def dns_flush(self) -> int:
        self.flushed = True
        return 0

    async def pin_node(self, group: str, node: str | None) -> None:
        self.pins.append((group, node))

    async def check_nodes(self, names: list[str]) -> None:
        self.checks.append(list(names))
