"""A checked set of routing rules: what the compiler and the matcher both take."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daetui.abi.constants import ABI
from daetui.routing.errors import RuleError
from daetui.routing.functions import RESERVED_OUTBOUNDS, lookup, typed_values
from daetui.routing.rule import Condition, Rule

if TYPE_CHECKING:
    from daetui.routing.geodata import GeoData

DIRECT = "direct"
BLOCK = "block"
MUST_RULES = "must_rules"
USERSPACE = "(user space)"   # the name of OUTBOUND_USERSPACE: the control plane decides
DNS = "(dns)"                # the name of OUTBOUND_DNS: the DNS controller answers the flow


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

    @functools.cached_property
    def text(self) -> str:
        """The rule as written (str(rule)), made once: every connection and snapshot shows it."""
        return str(self.rule)

    @functools.cached_property
    def ordered(self) -> list[tuple[int, CheckedCondition]]:
        """The functions in evaluation order (see evaluation_order), worked out once."""
        return evaluation_order(self.conditions)


def evaluation_order(conditions: tuple[CheckedCondition, ...]) -> list[tuple[int, CheckedCondition]]:
    """A rule's functions in the order they are evaluated: (position as written, function).

    AND does not care about order, so domain functions go last: a flow that
    another function already rules out never needs its name, and the kernel
    decides it without handing it to user space.
    """
    indexed = list(enumerate(conditions))
    return [x for x in indexed if x[1].function != "domain"] + [x for x in indexed if x[1].function == "domain"]


def check_rule(rule: Rule, geo: GeoData | None = None) -> tuple[CheckedCondition, ...]:
    """Type every value of the rule (geoip/geosite read through `geo`); RuleError for anything unusable."""
    out = []
    for cond in rule.conditions:
        spec = lookup(cond.name)
        assert spec is not None  # the parser only admits known names
        out.append(CheckedCondition(cond, spec.name, tuple(typed_values(cond, geo))))
    name = rule.outbound.name
    at = max(0, rule.text.rfind(name))
    if rule.outbound.target == BLOCK and rule.outbound.must:
        raise RuleError("block cannot be must: a blocked flow has no DNS to keep", at, at + len(name))
    if name == MUST_RULES and rule.outbound.params:
        raise RuleError("must_rules takes no parameters", at, at + len(name))
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

    # Worked out once per rule set (it never changes): each connection decided asks for them.
    @functools.cached_property
    def enabled(self) -> tuple[RuleEntry, ...]:
        return tuple(e for e in self.entries if e.enabled)

    @functools.cached_property
    def _ids(self) -> dict[str, int]:
        ids = {DIRECT: ABI.OUTBOUND_DIRECT, BLOCK: ABI.OUTBOUND_BLOCK, MUST_RULES: ABI.OUTBOUND_MUST_RULES,
               USERSPACE: ABI.OUTBOUND_USERSPACE, DNS: ABI.OUTBOUND_DNS}
        for i, g in enumerate(self.groups[:ABI.MAX_GROUPS]):
            ids[g] = ABI.OUTBOUND_FIRST_GROUP + i
        return ids

    @functools.cached_property
    def _names(self) -> dict[int, str]:
        return {i: name for name, i in self._ids.items()}

    def outbound_ids(self) -> dict[str, int]:
        """Kernel ids: direct 0, block 1, then each group in order (a copy: the rule set's stays as it is)."""
        return dict(self._ids)

    def outbound_name(self, outbound_id: int) -> str:
        """The name behind a kernel outbound id (for decoding routing_tuples)."""
        return self._names.get(outbound_id, f"outbound#{outbound_id}")

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
