"""The user-space matcher: the same rules, evaluated in Python, with a trace.

The control plane uses it when the kernel's decision is not available, and
`explain` uses it to show why a flow goes where it goes. Tests hold it to the
kernel: the same table of cases must give the same outbound in both.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from daetui.routing.ruleset import CheckedCondition, RuleSet

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class FlowFacts:
    """What is known of a flow when it is routed."""

    sip: IPAddress
    dip: IPAddress
    sport: int
    dport: int
    l4proto: str                 # "tcp" | "udp"
    mac: bytes | None = None

    @property
    def ipversion(self) -> int:
        return self.dip.version


@dataclass(frozen=True)
class ConditionTrace:
    text: str
    matched: bool                # the condition's verdict, negation applied


@dataclass(frozen=True)
class RuleTrace:
    index: int
    text: str
    conditions: tuple[ConditionTrace, ...]   # up to the first that failed
    matched: bool


@dataclass(frozen=True)
class Decision:
    """Where a flow goes and why."""

    outbound: str
    rule_index: int | None       # None: the fallback
    mark: int
    trace: tuple[RuleTrace, ...]


def _plain(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address as the IPv4 address it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def condition_matches(cc: CheckedCondition, f: FlowFacts) -> bool:
    """One function's verdict for the flow, negation applied."""
    fn = cc.function
    if fn in ("dip", "sip"):
        addr = _plain(f.dip if fn == "dip" else f.sip)
        hit = any(addr.version == n.version and addr in n for n in cc.values)
    elif fn == "dport":
        hit = any(f.dport in r for r in cc.values)
    elif fn == "sport":
        hit = any(f.sport in r for r in cc.values)
    elif fn == "l4proto":
        hit = f.l4proto in cc.values
    elif fn == "ipversion":
        hit = _plain(f.dip).version in cc.values
    elif fn == "mac":
        hit = f.mac is not None and f.mac in cc.values
    else:
        hit = False
    return hit != cc.condition.negate


def decide(ruleset: RuleSet, facts: FlowFacts) -> Decision:
    """First enabled rule whose every function matches; else the fallback."""
    trace: list[RuleTrace] = []
    for entry in ruleset.enabled:
        conds = []
        ok = True
        for cc in entry.conditions:
            m = condition_matches(cc, facts)
            conds.append(ConditionTrace(str(cc.condition), m))
            if not m:
                ok = False
                break
        trace.append(RuleTrace(entry.index, str(entry.rule), tuple(conds), ok))
        if ok:
            out = entry.rule.outbound
            return Decision(out.target, entry.index, out.mark, tuple(trace))
    return Decision(ruleset.fallback, None, 0, tuple(trace))
