"""The functions of the rule language: their names, keys and values.

Each function turns its parameters into typed values once, here, so the
kernel compiler and the user-space matcher agree on what a value means.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daetui.routing.domains import DomainSet
from daetui.routing.errors import RuleError
from daetui.routing.rule import Condition, Param

if TYPE_CHECKING:
    from daetui.routing.geodata import GeoData

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class PortRange:
    """An inclusive range of ports; a single port has lo == hi."""

    lo: int
    hi: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.lo <= port <= self.hi


L4PROTOS = ("tcp", "udp")
IPVERSIONS = ("4", "6")
_MAC = re.compile(r"^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$")


def _ip(p: Param) -> IPNetwork:
    try:
        return ipaddress.ip_network(p.value, strict=False)
    except ValueError:
        raise RuleError(f"{p.value!r} is not an IP address or CIDR prefix (e.g. 10.0.0.0/8, '2001:db8::/32')",
                        p.value_start, p.end) from None


def _port(p: Param) -> PortRange:
    m = re.fullmatch(r"(\d{1,5})(?:-(\d{1,5}))?", p.value)
    if not m:
        raise RuleError(f"{p.value!r} is not a port or a port range (e.g. 443, 8000-9000)", p.value_start, p.end)
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) else lo
    if hi > 65535 or lo > 65535:
        raise RuleError(f"port {max(lo, hi)} is out of range 0-65535", p.value_start, p.end)
    if lo > hi:
        raise RuleError(f"port range {p.value!r} runs backwards", p.value_start, p.end)
    return PortRange(lo, hi)


def _l4proto(p: Param) -> str:
    v = p.value.lower()
    if v not in L4PROTOS:
        raise RuleError(f"{p.value!r} is not an l4proto; expected tcp or udp", p.value_start, p.end)
    return v


def _ipversion(p: Param) -> int:
    if p.value not in IPVERSIONS:
        raise RuleError(f"{p.value!r} is not an ipversion; expected 4 or 6", p.value_start, p.end)
    return int(p.value)


def _mac(p: Param) -> bytes:
    if not _MAC.match(p.value):
        raise RuleError(f"{p.value!r} is not a MAC address; expected 'aa:bb:cc:dd:ee:ff'", p.value_start, p.end)
    return bytes(int(x, 16) for x in re.split("[:-]", p.value))


def _text(p: Param) -> str:
    return p.value


def _dscp(p: Param) -> int:
    try:
        v = int(p.value, 0)
    except ValueError:
        v = -1
    if not 0 <= v <= 63:
        raise RuleError(f"{p.value!r} is not a DSCP value; expected 0 to 63 (e.g. 0x4 or 46)", p.value_start, p.end)
    return v


COMM_LEN = 15  # what the kernel keeps of a process name (TASK_COMM_LEN - 1)


def comm_of(name: str) -> bytes:
    """A process name as the kernel holds it (its first 15 bytes): what pname() compares."""
    return name.encode("utf-8", "surrogateescape")[:COMM_LEN]


def _pname(p: Param) -> str:
    if "/" in p.value:
        raise RuleError(f"{p.value!r}: a process name, not a path (e.g. dnsmasq)", p.value_start, p.end)
    if not p.value:
        raise RuleError("an empty process name", p.value_start, p.end)
    return p.value


@dataclass(frozen=True)
class Interface:
    """interface(lan: eth1) or interface(wan: eth0)."""

    side: str      # "lan": the interface a flow came in on; "wan": the one it would leave by
    name: str


@dataclass(frozen=True)
class FunctionSpec:
    """What one function of the language accepts."""

    name: str
    value: Callable[[Param], Any]
    keys: frozenset[str] = frozenset()
    expects: str = ""


# dae's AliasOptimizer (component/routing/optimizer.go) reads `contains:` as keyword and `domain:` as suffix.
DOMAIN_KEY_ALIASES = {"contains": "keyword", "domain": "suffix"}
DOMAIN_KEYS = frozenset({"suffix", "full", "keyword", "regex", "geosite", "ext", *DOMAIN_KEY_ALIASES})

FUNCTIONS: dict[str, FunctionSpec] = {
    s.name: s
    for s in (
        FunctionSpec("dip", _ip, frozenset({"geoip", "ext"}), expects="IP addresses or CIDR prefixes"),
        FunctionSpec("sip", _ip, frozenset({"geoip", "ext"}), expects="IP addresses or CIDR prefixes"),
        FunctionSpec("dport", _port, expects="ports or port ranges"),
        FunctionSpec("sport", _port, expects="ports or port ranges"),
        FunctionSpec("l4proto", _l4proto, expects="tcp, udp"),
        FunctionSpec("ipversion", _ipversion, expects="4, 6"),
        FunctionSpec("mac", _mac, expects="MAC addresses"),
        FunctionSpec("domain", _text, DOMAIN_KEYS, expects="domains"),
        FunctionSpec("pname", _pname, expects="process names"),
        FunctionSpec("dscp", _dscp, expects="DSCP values (0-63)"),
        FunctionSpec("interface", _text, frozenset({"lan", "wan"}), expects="lan: or wan: interface names"),
    )
}

# The functions of DNS rules (request: qname, qtype, interface; response: those and ip, upstream),
# compiled by daetui.routing.dns_rules.
DNS_REQUEST_FUNCTIONS: dict[str, FunctionSpec] = {
    s.name: s
    for s in (
        FunctionSpec("qname", _text, DOMAIN_KEYS, expects="domains"),
        FunctionSpec("qtype", _text, expects="query types (a, aaaa, cname, ... or numbers)"),
        # Where the query came in (lan:) or the router's own (wan:), as in routing rules.
        FunctionSpec("interface", _text, frozenset({"lan", "wan"}),
                     expects="lan: or wan: interface names"),
    )
}
# dae v2's selectors of dae's own lookups (request rules only): which upstream resolves a subscription's
# host (sub), a node's host (node), a host of a node that came from a subscription (subnode). Keys as
# dae's component/daedns/router.go reads them; a bare value is a tag (sub, subnode) or a name (node).
_NODE_KEYS = frozenset({"name", "name_keyword", "name_regex", "link_keyword", "link_regex"})
INTERNAL_SELECTORS: dict[str, FunctionSpec] = {
    s.name: s
    for s in (
        FunctionSpec("sub", _text, frozenset({"tag", "tag_regex", "regex", "link_keyword", "link_regex"}),
                     expects="subscription tags"),
        FunctionSpec("node", _text, _NODE_KEYS, expects="node names"),
        FunctionSpec("subnode", _text, _NODE_KEYS | {"subtag", "subtag_regex", "regex"},
                     expects="subscription tags"),
    )
}
DNS_REQUEST_RULE_FUNCTIONS: dict[str, FunctionSpec] = {**DNS_REQUEST_FUNCTIONS, **INTERNAL_SELECTORS}
DNS_RESPONSE_FUNCTIONS: dict[str, FunctionSpec] = {
    **DNS_REQUEST_FUNCTIONS,
    "ip": FunctionSpec("ip", _ip, frozenset({"geoip", "ext"}), expects="IP addresses"),
    "upstream": FunctionSpec("upstream", _text, expects="upstream names"),
}

# dae's other spellings.
ALIASES = {"ip": "dip", "port": "dport"}

OUTBOUND_KEYS = frozenset({"mark"})
OUTBOUND_FLAGS = frozenset({"must"})   # bare parameters of an outbound: direct(must)
RESERVED_OUTBOUNDS = ("direct", "block", "must_rules")  # not group names


def lookup(name: str, table: dict[str, FunctionSpec] | None = None) -> FunctionSpec | None:
    """The spec of a function by any of its names (routing's functions unless `table` is given)."""
    if table is not None:
        return table.get(name)
    return FUNCTIONS.get(ALIASES.get(name, name))


def typed_values(cond: Condition, geo: GeoData | None = None) -> list[Any]:
    """The condition's values as the types the matcher and compiler use.

    dip/sip: networks (geoip: and ext: expanded); domain: one DomainSet;
    interface: Interface values; dscp: ints; ports: PortRange; the rest: text.
    Raises RuleError for a value, key or function this version cannot use.
    """
    spec = lookup(cond.name)
    if spec is None:
        raise RuleError(f"unknown function {cond.name!r}", cond.start, cond.end)
    if spec.name == "domain":
        return [_domain_set(cond, geo)]
    if spec.name == "interface":
        return _interfaces(cond)
    out: list[Any] = []
    for p in cond.params:
        if p.key is None:
            out.append(spec.value(p))
        elif spec.name in ("dip", "sip"):
            out.extend(_geo(geo, p, "ip"))
        else:  # pragma: no cover - the parser only admits a function's own keys
            raise RuleError(f"{spec.name}() takes no {p.key}:", p.start, p.end)
    return out


def _geo(geo: GeoData | None, p: Param, kind: str) -> tuple[Any, ...]:
    from daetui.routing.geodata import GeoData, GeoDataError

    try:
        return (geo or GeoData()).resolve(p.key or "", p.value, kind)  # type: ignore[arg-type]
    except GeoDataError as e:
        raise RuleError(str(e), p.start, p.end) from None


def _domain_set(cond: Condition, geo: GeoData | None) -> DomainSet:
    entries: list[tuple[str, str]] = []
    for p in cond.params:
        key = DOMAIN_KEY_ALIASES.get(p.key or "suffix", p.key or "suffix")  # dae: a bare value is a suffix
        if key in ("geosite", "ext"):
            entries.extend((e.kind, e.value) for e in _geo(geo, p, "site"))
        elif key == "regex":
            try:
                re.compile(p.value)
            except re.error as e:
                raise RuleError(f"bad regular expression {p.value!r}: {e}", p.value_start, p.end) from None
            entries.append(("regex", p.value))
        else:
            if not p.value or any(c.isspace() for c in p.value):
                raise RuleError(f"{p.value!r} is not a domain", p.value_start, p.end)
            entries.append((key, p.value))
    try:
        return DomainSet.build(entries)
    except re.error as e:  # a regex from geosite data: the rule is wrong, not daetui
        raise RuleError(f"{cond.name}(): geosite data holds a bad regular expression: {e}", cond.start, cond.end) \
            from None


def _interfaces(cond: Condition) -> list[Interface]:
    out, side = [], None
    for p in cond.params:
        side = p.key or side  # interface(lan: eth1, eth2): eth2 is a LAN interface too
        if side is None:
            raise RuleError("say which side: interface(lan: eth1) or interface(wan: eth0)", p.start, p.end)
        if not p.value or len(p.value) > 15 or "/" in p.value:
            raise RuleError(f"{p.value!r} is not an interface name", p.value_start, p.end)
        out.append(Interface(side, p.value))
    return out
