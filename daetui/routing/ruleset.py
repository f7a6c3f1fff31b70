"""A checked set of routing rules: what the compiler and the matcher both take."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from daetui.routing.errors import RuleError
from daetui.routing.functions import RESERVED_OUTBOUNDS, lookup, typed_values
from daetui.routing.rule import Condition, Rule

DIRECT = "direct"
BLOCK = "block"


@dataclass(frozen=True)
class CheckedCondition:
    """A condition with its values parsed to types (networks, port ranges, ...)."""

    condition: Condition
    function: str          # canonical name (dport for port, dip for ip)
    values: tuple[Any, ...]


@dataclass(frozen=True)
class RuleEntry:
    """One rule of the config, with its place, state and stable id."""

    index: int             # position in the config's list, enabled or not
    rule: Rule
    conditions: tuple[CheckedCondition, ...]
    enabled: bool = True
    name: str | None = None
    id: str = ""

    @property
    def label(self) -> str:
        """How the console and the logs name the rule: `#3` or `#3 lan-games`."""
        return f"#{self.index + 1}" + (f" {self.name}" if self.name else "")


def check_rule(rule: Rule) -> tuple[CheckedCondition, ...]:
    """Type every value of the rule; RuleError for anything unusable."""
    out = []
    for cond in rule.conditions:
        spec = lookup(cond.name)
        assert spec is not None  # the parser only admits known names
        out.append(CheckedCondition(cond, spec.name, tuple(typed_values(cond))))
    name = rule.outbound.name
    at = max(0, rule.text.rfind(name))
    if name == "must_rules":
        raise RuleError("must_rules is not supported yet by this version of daetui", at, at + len(name))
    if rule.outbound.target == BLOCK and rule.outbound.must:
        raise RuleError("must_block is not an outbound; use block", at, at + len(name))
    return tuple(out)


def rule_id(rule: Rule, name: str | None, seen: dict[str, int]) -> str:
    """A stable id: the rule's name, else a hash of its canonical text.

    Identical rules get `-2`, `-3`... in order, so ids stay stable across
    reloads as long as the rule itself is unchanged.
    """
    base = name or hashlib.sha1(str(rule).encode()).hexdigest()[:10]
    n = seen.get(base, 0) + 1
    seen[base] = n
    return base if n == 1 else f"{base}-{n}"


@dataclass(frozen=True)
class RuleSet:
    """The routing section, checked: rules in order and the fallback outbound."""

    entries: tuple[RuleEntry, ...]
    fallback: str
    groups: tuple[str, ...]   # group names in outbound-id order

    @property
    def enabled(self) -> tuple[RuleEntry, ...]:
        return tuple(e for e in self.entries if e.enabled)

    def outbound_ids(self) -> dict[str, int]:
        """Kernel ids: direct 0, block 1, then each group in order."""
        from daetui.bpfabi import ABI

        ids = {DIRECT: ABI.OUTBOUND_DIRECT, BLOCK: ABI.OUTBOUND_BLOCK}
        for i, g in enumerate(self.groups):
            ids[g] = ABI.OUTBOUND_FIRST_GROUP + i
        return ids

    def outbound_name(self, outbound_id: int) -> str:
        """The name behind a kernel outbound id (for decoding routing_tuples)."""
        for name, i in self.outbound_ids().items():
            if i == outbound_id:
                return name
        return f"outbound#{outbound_id}"

    def by_index(self, index: int) -> RuleEntry | None:
        if 0 <= index < len(self.entries):
            return self.entries[index]
        return None


def groups_of(entries: list[RuleEntry] | tuple[RuleEntry, ...], fallback: str,
              declared: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Group names: those declared first, then any named by a rule or the fallback."""
    out = list(declared)
    for name in [e.rule.outbound.target for e in entries] + [fallback]:
        if name not in RESERVED_OUTBOUNDS and name not in out:
            out.append(name)
    return tuple(out)
