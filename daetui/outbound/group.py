"""Groups: their nodes (filters, in daetui.routing.node_filters), how one is picked, and health.

Policies: `random` (a live node per connection), `fixed(N)` (the Nth node of
the group, live or not), `min` (lowest last latency), `min_avg10` (lowest
average of the last 10 checks), `min_moving_avg` (lowest moving average).
`check_tolerance` keeps the current node until another is better by more
than that. A pinned node (from the console) wins while it is alive.
Health is per IP family: a node is alive for a family when its last check
over it succeeded (unchecked counts as alive, so a fresh start dials).
"""

from __future__ import annotations

import random
import re
import time
from collections import deque
from dataclasses import dataclass, field

from daetui.routing.node_filters import FilterLine, NodeRef, members, parse_filter

__all__ = ["FilterLine", "Group", "NodeHealth", "NodeRef", "members", "parse_filter", "parse_policy"]

POLICIES = ("random", "fixed", "min", "min_avg10", "min_moving_avg")
HISTORY = 32           # checks kept per node and family
MOVING_WEIGHT = 0.3    # weight of the newest check in the moving average


def parse_policy(text: str) -> tuple[str, int]:
    """`fixed(2)` -> ("fixed", 2); the others take no argument. ValueError says what is expected."""
    t = text.strip()
    m = re.fullmatch(r"fixed\(\s*(\d+)\s*\)", t)
    if m:
        return "fixed", int(m.group(1))
    if t in POLICIES and t != "fixed":
        return t, 0
    raise ValueError(f"unknown policy {text!r}: expected random, fixed(N), min, min_avg10 or min_moving_avg")


@dataclass
class FamilyHealth:
    """One node's checks over one IP family."""

    latencies: deque[float | None] = field(default_factory=lambda: deque(maxlen=HISTORY))  # None: failed
    moving: float | None = None
    last_error: str = ""
    checked_at: float | None = None

    @property
    def alive(self) -> bool:
        return not self.latencies or self.latencies[-1] is not None

    def record(self, latency: float | None, error: str = "") -> None:
        self.latencies.append(latency)
        self.checked_at = time.time()
        if latency is None:
            self.last_error = error
            return
        self.last_error = ""
        self.moving = latency if self.moving is None else (1 - MOVING_WEIGHT) * self.moving + MOVING_WEIGHT * latency

    def last(self) -> float | None:
        return self.latencies[-1] if self.latencies else None

    def avg10(self) -> float | None:
        ok = [x for x in list(self.latencies)[-10:] if x is not None]
        return sum(ok) / len(ok) if ok else None


@dataclass
class NodeHealth:
    """A node's health per family (4, 6)."""

    name: str
    families: dict[int, FamilyHealth] = field(default_factory=lambda: {4: FamilyHealth(), 6: FamilyHealth()})

    def alive(self, family: int) -> bool:
        return self.families[family].alive


class Group:
    """One group's members and its choice among them."""

    def __init__(self, name: str, policy: str, tolerance: float = 0.0) -> None:
        self.name = name
        self.policy, self.fixed = parse_policy(policy)
        self.tolerance = tolerance
        self.members: list[tuple[str, float]] = []      # (node name, added latency in seconds)
        self.pinned: str | None = None
        self._current: dict[int, str | None] = {4: None, 6: None}

    def set_members(self, members: list[tuple[str, float]]) -> None:
        self.members = members
        names = {m for m, _ in members}
        if self.pinned not in names:
            self.pinned = None
        for fam, cur in self._current.items():
            if cur not in names:
                self._current[fam] = None

    def _score(self, h: FamilyHealth, add: float) -> float | None:
        if self.policy == "min":
            v = h.last()
        elif self.policy == "min_avg10":
            v = h.avg10()
        else:
            v = h.moving
        return None if v is None else v + add

    def select(self, health: dict[str, NodeHealth], family: int = 4) -> str | None:
        """The node for a new connection over `family`, or None when the group has no live node."""
        names = [m for m, _ in self.members]
        if not names:
            return None

        def alive(n: str) -> bool:
            h = health.get(n)
            return h is None or h.alive(family)

        if self.pinned is not None and alive(self.pinned):
            return self.pinned
        if self.policy == "fixed":
            return names[self.fixed] if self.fixed < len(names) else None
        live = [(n, add) for n, add in self.members if alive(n)]
        if not live:
            return None
        if self.policy == "random":
            return random.choice(live)[0]
        scored = []
        for n, add in live:
            h = health.get(n)
            s = self._score(h.families[family], add) if h is not None else None
            scored.append((float("inf") if s is None else s, n))
        best_score, best = min(scored)
        cur = self._current.get(family)
        cur_score = next((s for s, n in scored if n == cur), None)
        if cur_score is not None and cur_score - best_score <= self.tolerance:
            return cur  # not better by more than check_tolerance: stay
        self._current[family] = best
        return best
