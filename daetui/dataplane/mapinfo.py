"""What the Maps pane shows of a map: plain values, no BCC."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MapInfo:
    """One eBPF map: what it is and how full."""

    name: str
    type: str
    max_entries: int
    key_size: int
    value_size: int
    entries: int            # -1: not countable
    purpose: str


@dataclass(frozen=True)
class MapEntries:
    """Decoded entries of one map."""

    name: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    total: int              # entries before search and limit
