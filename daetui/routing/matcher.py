"""The user-space matcher: the same rules, evaluated in Python, with a trace.

The control plane uses it where the kernel cannot decide (a domain rule for
an address whose name the kernel does not know: it sniffs the name and
decides here) or has no decision; `explain` uses it to show why a flow goes
where it goes. Tests hold it to the kernel: the same table of cases must give
the same outbound in both.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from daetui.net.ifnames import matching
from daetui.routing.compile import domain_functions
from daetui.routing.functions import comm_of
from daetui.routing.ruleset import MUST_RULES, CheckedCondition, RuleSet

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class FlowFacts:
    """What is known of a flow when it is routed."""

    sip: IPAddress | None        # None: not given (explain); a function on it is "unknown"
    dip: IPAddress | None
    sport: int | None
    dport: int | None
    l4proto: str                 # "tcp" | "udp"
    mac: bytes | None = None
    dscp: int = 0
    iface_in: str | None = None  # the LAN interface it came in on
    iface_out: str | None = None  # the interface the router would send it out of
    pname: str | None = None     # a process on the router (never, for LAN flows)
    domain: str | None = None    # its name: sniffed, or given to explain
    domain_bits: int | None = None  # what DNS told the kernel of dip's name (bit per domain function)

    @property
    def ipversion(self) -> int | None:
        return _plain(self.dip).version if self.dip is not None else None


@dataclass(frozen=True)
class ConditionTrace:
    text: str
    matched: bool | None         # the condition's verdict, negation applied; None: unknown (no name)
    why: str = ""


@dataclass(frozen=True)
class RuleTrace:
    index: int
    text: str
    conditions: tuple[ConditionTrace, ...]   # up to the first that failed
    matched: bool | None


@dataclass(frozen=True)
class Decision:
    """Where a flow goes and why."""

    outbound: str | None         # None: undecided (a domain rule, and no name known)
    rule_index: int | None       # the rule that decided (or where it stopped); None: the fallback
    mark: int
    trace: tuple[RuleTrace, ...]
    must: bool = False

    @property
    def undecided(self) -> bool:
        return self.outbound is None


def _plain(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address as the IPv4 address it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def condition_matches(cc: CheckedCondition, f: FlowFacts, domain_bit: int | None = None) -> bool | None:
    """One function's verdict for the flow, negation applied; None when it needs what is not known
    (a name nobody knows, or, for explain, a fact not given)."""
    fn = cc.function
    if fn in ("dip", "sip"):
        raw = f.dip if fn == "dip" else f.sip
        if raw is None:
            return None
        addr = _plain(raw)
        hit = any(addr.version == n.version and addr in n for n in cc.values)
    elif fn in ("dport", "sport"):
        port = f.dport if fn == "dport" else f.sport
        if port is None:
            return None
        hit = any(port in r for r in cc.values)
    elif fn == "l4proto":
        hit = f.l4proto in cc.values
    elif fn == "ipversion":
        if f.ipversion is None:
            return None
        hit = f.ipversion in cc.values
    elif fn == "mac":
        hit = f.mac is not None and f.mac in cc.values
    elif fn == "dscp":
        hit = f.dscp in cc.values
    elif fn == "interface":
        hit = any(matching((i.name,), name) is not None for i in cc.values
                  if (name := f.iface_in if i.side == "lan" else f.iface_out) is not None)
    elif fn == "pname":
        # The kernel keeps 15 bytes of a process name: "systemd-resolved" runs as "systemd-resolve".
        hit = f.pname is not None and any(comm_of(f.pname) == comm_of(v) for v in cc.values)
    elif fn == "domain":
        if f.domain is not None:
            hit = cc.values[0].matches(f.domain)
        elif f.domain_bits is not None and domain_bit is not None:
            hit = bool(f.domain_bits >> domain_bit & 1)
        else:
            return None
    else:
        hit = False
    return hit != cc.condition.negate


def _needs(function: str) -> str:
    return {"dip": "destination address", "sip": "source address", "dport": "destination port",
            "sport": "source port", "ipversion": "address"}.get(function, function)


def decide(ruleset: RuleSet, facts: FlowFacts, start: int = 0, unknown_name_matches: bool | None = None,
           unknown_facts_match: bool | None = None, with_trace: bool = True) -> Decision:
    """First enabled rule (from index `start`) whose every function matches; else the fallback.

    A domain function with no name known stops the evaluation (undecided), as
    the kernel stops -- unless `unknown_name_matches` says what to assume (the
    control plane, once sniffing found nothing, assumes False). A function on
    a fact not given (explain) stops it too, unless `unknown_facts_match` says.
    `with_trace` off (the daemon's own decisions) leaves out the why of every
    rule passed: with thousands of rules, writing it out took milliseconds.
    """
    # The kernel's domain bits matter only for a flow with bits and no name (explain).
    bits = {(d.rule_index, d.position): d.bit for d in domain_functions(ruleset)} \
        if facts.domain is None and facts.domain_bits is not None else {}
    trace: list[RuleTrace] = []
    must = False
    for entry in ruleset.enabled:
        if entry.index < start:
            continue
        conds = []
        ok: bool | None = True
        for pos, cc in entry.ordered:
            m = condition_matches(cc, facts, bits.get((entry.index, pos)))
            why = ""
            if m is None:
                assume = unknown_name_matches if cc.function == "domain" else unknown_facts_match
                if with_trace:
                    why = "no name known" if cc.function == "domain" else f"{_needs(cc.function)} not given"
                if assume is not None:
                    m = assume != cc.condition.negate
                    if with_trace:
                        why += f"; taken as {'matching' if assume else 'not matching'}"
            if with_trace:
                conds.append(ConditionTrace(str(cc.condition), m, why))
            if not m:
                ok = m
                break
        if with_trace:
            trace.append(RuleTrace(entry.index, entry.text, tuple(conds), ok))
        if ok is None:
            return Decision(None, entry.index, 0, tuple(trace), must)
        if ok:
            out = entry.rule.outbound
            if out.name == MUST_RULES:
                must = True  # dae: keep DNS of such flows un-hijacked, and go on matching
                continue
            return Decision(out.target, entry.index, out.mark, tuple(trace), must or out.must)
    return Decision(ruleset.fallback, None, 0, tuple(trace), must)
