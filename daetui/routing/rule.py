"""The routing rule as a tree: what the parser produces and everything else reads.

A rule is `cond && cond ... -> outbound`, where each condition is a function
call such as `dport(80, 8000-9000)`, possibly negated with `!`. Values inside
one function are OR-ed; functions are AND-ed. `str(rule)` prints the
canonical form, which parses back to an equal rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# A value printed bare must not contain what the parser splits on.
_BARE_VALUE = re.compile(r"^[^\s,()'\":]+$")


def format_value(value: str) -> str:
    """Quote a value when it would not survive being printed bare (IPv6, MACs)."""
    if _BARE_VALUE.match(value):
        return value
    if "'" not in value:
        return f"'{value}'"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Param:
    """One argument of a function: `value` or `key: value`."""

    value: str
    key: str | None = None
    # Positions in the rule text, for error messages: the whole parameter
    # (key included) and where its value begins.
    start: int = field(default=0, compare=False)
    end: int = field(default=0, compare=False)
    value_start: int = field(default=0, compare=False)

    def __str__(self) -> str:
        v = format_value(self.value)
        if not self.key:
            return v
        # dae's idiom: tag references glued (geosite:cn), the rest spaced (suffix: a.com).
        return f"{self.key}:{v}" if self.key in ("geosite", "geoip", "ext") else f"{self.key}: {v}"


@dataclass(frozen=True)
class Condition:
    """A function of a rule, e.g. `!dport(80, 443)`."""

    name: str
    params: tuple[Param, ...]
    negate: bool = False
    start: int = field(default=0, compare=False)
    end: int = field(default=0, compare=False)

    def __str__(self) -> str:
        inner = ", ".join(str(p) for p in self.params)
        return f"{'!' if self.negate else ''}{self.name}({inner})"


@dataclass(frozen=True)
class Outbound:
    """Where a rule sends a flow: `direct`, `block`, a group, `must_<x>`, `direct(mark: 0x1)`."""

    name: str
    params: tuple[Param, ...] = ()

    @property
    def must(self) -> bool:
        """`must_x` or `x(must)`: the flow's DNS is not hijacked (dae's meaning)."""
        if self.name.startswith("must_") and self.name != "must_rules":
            return True
        return any(p.key is None and p.value == "must" for p in self.params)

    @property
    def target(self) -> str:
        """The outbound without its `must_` prefix (must_rules is its own thing)."""
        if self.name.startswith("must_") and self.name != "must_rules":
            return self.name[5:]
        return self.name

    @property
    def mark(self) -> int:
        """The packet mark a `direct(mark: 0x..)` sets; 0 when none."""
        for p in self.params:
            if p.key == "mark":
                return int(p.value, 0)
        return 0

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}({', '.join(str(p) for p in self.params)})"


@dataclass(frozen=True)
class Rule:
    """A parsed rule. `text` is what the user wrote; `str()` is canonical."""

    conditions: tuple[Condition, ...]
    outbound: Outbound
    text: str = field(default="", compare=False)

    def __str__(self) -> str:
        return " && ".join(str(c) for c in self.conditions) + f" -> {self.outbound}"
