"""The functions of the rule language: their names, keys and values.

Each function turns its parameters into typed values once, here, so the
kernel compiler and the user-space matcher agree on what a value means.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daetui.routing.errors import RuleError
from daetui.routing.rule import Condition, Param

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


@dataclass(frozen=True)
class FunctionSpec:
    """What one function of the language accepts."""

    name: str
    value: Callable[[Param], Any]
    keys: frozenset[str] = frozenset()
    kernel: bool = True        # the kernel program can evaluate it
    supported: bool = True     # this version implements it
    expects: str = ""


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
        FunctionSpec("domain", _text, frozenset({"suffix", "full", "keyword", "regex", "geosite", "ext"}),
                     kernel=False, supported=False, expects="domains"),
        FunctionSpec("pname", _text, kernel=False, supported=False, expects="process names"),
        FunctionSpec("dscp", _text, supported=False, expects="DSCP values"),
        FunctionSpec("interface", _text, frozenset({"lan", "wan"}), supported=False, expects="interface names"),
    )
}

# The functions of DNS rules (request: qname, qtype; response: those and ip, upstream).
# Their values are checked for syntax here; the DNS controller gives them meaning.
DNS_REQUEST_FUNCTIONS: dict[str, FunctionSpec] = {
    s.name: s
    for s in (
        FunctionSpec("qname", _text, frozenset({"suffix", "full", "keyword", "regex", "geosite", "ext"}),
                     kernel=False, expects="domains"),
        FunctionSpec("qtype", _text, kernel=False, expects="query types (a, aaaa, cname, ... or numbers)"),
    )
}
DNS_RESPONSE_FUNCTIONS: dict[str, FunctionSpec] = {
    **DNS_REQUEST_FUNCTIONS,
    "ip": FunctionSpec("ip", _ip, frozenset({"geoip", "ext"}), kernel=False, expects="IP addresses"),
    "upstream": FunctionSpec("upstream", _text, kernel=False, expects="upstream names"),
}

# dae's other spellings.
ALIASES = {"ip": "dip", "port": "dport"}

OUTBOUND_KEYS = frozenset({"mark"})
RESERVED_OUTBOUNDS = ("direct", "block", "must_rules")


def lookup(name: str, table: dict[str, FunctionSpec] | None = None) -> FunctionSpec | None:
    """The spec of a function by any of its names (routing's functions unless `table` is given)."""
    if table is not None:
        return table.get(name)
    return FUNCTIONS.get(ALIASES.get(name, name))


def typed_values(cond: Condition) -> list[Any]:
    """The condition's values as the types the matcher and compiler use.

    Raises RuleError for a value, key or function this version cannot use.
    """
    spec = lookup(cond.name)
    if spec is None:
        raise RuleError(f"unknown function {cond.name!r}", cond.start, cond.end)
    if not spec.supported:
        raise RuleError(f"{spec.name}() is not supported yet by this version of daetui", cond.start, cond.end)
    out = []
    for p in cond.params:
        if p.key is not None:
            # geoip:/geosite:/ext: need the .dat readers, which come with the full rule language.
            raise RuleError(f"{spec.name}({p.key}: ...) is not supported yet by this version of daetui",
                            p.start, p.end)
        out.append(spec.value(p))
    return out
