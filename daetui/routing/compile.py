"""Rules -> the kernel's match sets and ip sets.

Layout, per rule: its functions in order, each function a run of match sets
(one per value, or one for a whole set: an ip set, a protocol mask, a domain
function's bit in domain_routing). The last
match set of a function carries MS_FUNC_END and the negation; the last of the
rule MS_RULE_END and the outbound. `next` lets the kernel jump past the rest
of a rule as soon as one function fails; `func_end` past a function's other
values as soon as one matches.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from daetui.abi.constants import ABI
from daetui.net.ifnames import is_pattern, matching
from daetui.routing.functions import IPNetwork, PortRange, comm_of
from daetui.routing.ruleset import CheckedCondition, RuleSet, evaluation_order


@dataclass
class MatchSet:
    """The values of one `struct match_set` (field names as in bpf/daetui.h)."""

    type: int
    rule_index: int
    negate: int = 0
    flags: int = 0
    outbound: int = 0
    next: int = 0
    func_end: int = 0
    port_lo: int = 0
    port_hi: int = 0
    mask: int = 0
    mac: bytes = b""
    ip_set: int = 0
    mark: int = 0
    must: int = 0
    dscp: int = 0
    ifindex: int = 0
    domain_bit: int = 0
    pname: bytes = b""         # PNAME: the first 15 bytes of the process name


@dataclass
class KernelRules:
    """One generation of rules, ready to be written to the maps."""

    match_sets: list[MatchSet] = field(default_factory=list)
    ip_sets: dict[int, tuple[IPNetwork, ...]] = field(default_factory=dict)  # id -> prefixes
    fallback_outbound: int = 0
    fallback_mark: int = 0
    domain_functions: list[DomainFunction] = field(default_factory=list)    # bit i -> function
    unresolved_interfaces: set[str] = field(default_factory=set)            # named, not present
    interface_patterns: set[str] = field(default_factory=set)  # interface() wildcards: compiled as of now
    interface_names: set[str] = field(default_factory=set)     # interface() names: indices as of now

    def names_interface(self, name: str) -> bool:
        """Whether interface() in these rules names `name` (so its appearing or going changes them)."""
        return name in self.interface_names or matching(self.interface_patterns, name) is not None

    @property
    def ip_set_entries(self) -> int:
        return sum(len(v) for v in self.ip_sets.values())


class CompileError(ValueError):
    """The rules do not fit the kernel's limits."""


@dataclass(frozen=True)
class DomainFunction:
    """A domain() function of an enabled rule, and the bit it has in domain_routing."""

    bit: int
    rule_index: int
    position: int            # which function of the rule
    condition: CheckedCondition


def domain_functions(ruleset: RuleSet) -> list[DomainFunction]:
    """Every domain function of the enabled rules, numbered as the kernel numbers them."""
    out = []
    for entry in ruleset.enabled:
        for pos, cc in enumerate(entry.conditions):
            if cc.function == "domain":
                out.append(DomainFunction(len(out), entry.index, pos, cc))
    return out


def domain_bitmap(functions: list[DomainFunction], name: str) -> int:
    """Which domain functions a name matches: the bits the DNS side writes for its addresses."""
    bits = 0
    for f in functions:
        if f.condition.values[0].matches(name):
            bits |= 1 << f.bit
    return bits


def _ifindex(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0


def _ifindices(name: str, ifindex: Callable[[str], int]) -> list[int]:
    """The indices an interface() value names here: one name's, or every present match of a wildcard."""
    if not is_pattern(name):
        idx = ifindex(name)
        return [idx] if idx else []
    return sorted(i for i, n in socket.if_nameindex() if matching((name,), n))


_MATCH = {
    "dip": ABI.MATCH_DIP,
    "sip": ABI.MATCH_SIP,
    "dport": ABI.MATCH_DPORT,
    "sport": ABI.MATCH_SPORT,
    "l4proto": ABI.MATCH_L4PROTO,
    "ipversion": ABI.MATCH_IPVERSION,
    "mac": ABI.MATCH_MAC,
    "dscp": ABI.MATCH_DSCP,
    "domain": ABI.MATCH_DOMAIN,
}
_L4 = {"tcp": ABI.L4_TCP, "udp": ABI.L4_UDP}
_IPV = {4: ABI.IPV_4, 6: ABI.IPV_6}


def _merge_ports(ranges: tuple[PortRange, ...]) -> list[PortRange]:
    """Overlapping and adjacent ranges as few ranges (dae merges them too)."""
    out: list[PortRange] = []
    for r in sorted(ranges, key=lambda r: r.lo):
        if out and r.lo <= out[-1].hi + 1:
            out[-1] = PortRange(out[-1].lo, max(out[-1].hi, r.hi))
        else:
            out.append(r)
    return out


def _collapse(nets: tuple[IPNetwork, ...]) -> tuple[IPNetwork, ...]:
    v4 = ipaddress.collapse_addresses(n for n in nets if n.version == 4)
    v6 = ipaddress.collapse_addresses(n for n in nets if n.version == 6)
    return (*v4, *v6)


def compile_rules(ruleset: RuleSet, max_match_sets: int = ABI.MAX_MATCH_SETS,
                  ifindex: Callable[[str], int] = _ifindex) -> KernelRules:
    """Lay the enabled rules out as match sets; identical ip sets are shared.

    `ifindex` turns interface() names into indices in the namespace the rules
    run in (0, never matching, for one that is not there yet).
    """
    ids = ruleset.outbound_ids()
    out = KernelRules(fallback_outbound=ids[ruleset.fallback])
    out.domain_functions = domain_functions(ruleset)
    if len(out.domain_functions) > ABI.MAX_DOMAIN_FUNCTIONS:
        raise CompileError(f"the rules have {len(out.domain_functions)} domain() functions; the kernel holds "
                           f"{ABI.MAX_DOMAIN_FUNCTIONS} (merge values into fewer functions)")
    bits = {(f.rule_index, f.position): f.bit for f in out.domain_functions}
    if len(ruleset.groups) > ABI.MAX_GROUPS:
        raise CompileError(f"{len(ruleset.groups)} groups; the kernel holds {ABI.MAX_GROUPS}")
    set_ids: dict[tuple[IPNetwork, ...], int] = {}
    for entry in ruleset.enabled:
        if entry.index >= ABI.MAX_RULES:
            raise CompileError(f"rule {entry.label}: the kernel holds at most {ABI.MAX_RULES} rules")
        first = len(out.match_sets)
        for pos, cc in evaluation_order(entry.conditions):
            func_first = len(out.match_sets)
            mtype = _MATCH.get(cc.function, 0)
            if cc.function in ("dip", "sip"):
                nets = _collapse(cc.values)
                if nets not in set_ids:
                    set_ids[nets] = len(set_ids) + 1
                    out.ip_sets[set_ids[nets]] = nets
                out.match_sets.append(MatchSet(mtype, entry.index, ip_set=set_ids[nets]))
            elif cc.function in ("dport", "sport"):
                for r in _merge_ports(cc.values):
                    out.match_sets.append(MatchSet(mtype, entry.index, port_lo=r.lo, port_hi=r.hi))
            elif cc.function == "l4proto":
                mask = 0
                for v in cc.values:
                    mask |= _L4[v]
                out.match_sets.append(MatchSet(mtype, entry.index, mask=mask))
            elif cc.function == "ipversion":
                mask = 0
                for v in cc.values:
                    mask |= _IPV[v]
                out.match_sets.append(MatchSet(mtype, entry.index, mask=mask))
            elif cc.function == "mac":
                for mac in dict.fromkeys(cc.values):
                    out.match_sets.append(MatchSet(mtype, entry.index, mac=mac))
            elif cc.function == "dscp":
                for v in dict.fromkeys(cc.values):
                    out.match_sets.append(MatchSet(mtype, entry.index, dscp=v))
            elif cc.function == "interface":
                for iface in dict.fromkeys(cc.values):
                    kind = ABI.MATCH_IFACE_LAN if iface.side == "lan" else ABI.MATCH_IFACE_WAN
                    indices = _ifindices(iface.name, ifindex)
                    if is_pattern(iface.name):
                        out.interface_patterns.add(iface.name)
                    else:
                        out.interface_names.add(iface.name)
                        if not indices:
                            out.unresolved_interfaces.add(iface.name)
                    # None here yet: one value that matches nothing (index 0), so the function stays whole.
                    for idx in indices or [0]:
                        out.match_sets.append(MatchSet(kind, entry.index, ifindex=idx))
            elif cc.function == "domain":
                out.match_sets.append(MatchSet(mtype, entry.index, domain_bit=bits[(entry.index, pos)]))
            elif cc.function == "pname":
                # The router's own flows only (wan_egress): a LAN flow has no process here.
                for name in dict.fromkeys(comm_of(v) for v in cc.values):
                    out.match_sets.append(MatchSet(ABI.MATCH_PNAME, entry.index, pname=name))
            else:  # pragma: no cover - typed_values admits only the functions above
                raise CompileError(f"{cc.function}() cannot be compiled for the kernel")
            end = len(out.match_sets) - 1
            for ms in out.match_sets[func_first:]:
                ms.func_end = end
            out.match_sets[end].flags |= ABI.MS_FUNC_END
            out.match_sets[end].negate = int(cc.condition.negate)
        last = out.match_sets[-1]
        last.flags |= ABI.MS_RULE_END
        last.outbound = ids[entry.rule.outbound.target]
        last.mark = entry.rule.outbound.mark
        last.must = int(entry.rule.outbound.must)
        for ms in out.match_sets[first:]:
            ms.next = len(out.match_sets)
        if len(out.match_sets) > max_match_sets:
            raise CompileError(f"the rules need more than {max_match_sets} match sets "
                               f"(reached at rule {entry.label})")
    if out.ip_set_entries > ABI.MAX_IP_SET_ENTRIES // 2:
        raise CompileError(f"the rules hold {out.ip_set_entries} IP prefixes; "
                           f"the kernel holds {ABI.MAX_IP_SET_ENTRIES // 2} per generation")
    return out
