"""What the outbounds tell the console: plain dataclasses (they cross the control socket)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeState:
    """A node as the console shows it."""

    name: str
    protocol: str
    address: str
    alive4: bool
    alive6: bool
    latencies4: tuple[float | None, ...]   # seconds; None a failed check; oldest first
    latencies6: tuple[float | None, ...]
    last_error: str


@dataclass(frozen=True)
class GroupState:
    """A group as the console shows it."""

    name: str
    policy: str
    members: tuple[str, ...]
    selected4: str | None
    selected6: str | None
    pinned: str | None
