"""`daetui explain`: why a flow goes where it goes, rule by rule.

The same matcher the daemon uses. Run against a daemon, it also knows what
DNS told the daemon about the address (its names, and the kernel's bits).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from daetui.routing.matcher import Decision, FlowFacts, decide
from daetui.routing.ruleset import RuleSet

_MAC = re.compile(r"^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$")


class ExplainError(ValueError):
    """A target or option that cannot be a flow."""


@dataclass(frozen=True)
class Query:
    """What the user asked about: `explain www.example.test:443 --proto udp`."""

    target: str
    port: int | None = None
    proto: str = "tcp"
    mac: str | None = None
    iface: str | None = None      # the LAN interface it comes in on
    wan: str | None = None        # the interface it would leave by
    pname: str | None = None
    src: str | None = None
    dscp: int = 0
    sport: int | None = None


@dataclass(frozen=True)
class ExplainResult:
    """The decision and its trace, as the daemon sends it back."""

    outbound: str | None
    rule_index: int | None
    text: str


def split_target(target: str) -> tuple[str | None, str | None, int | None]:
    """(address, domain, port) of `1.2.3.4`, `1.2.3.4:443`, `[2001:db8::1]:443`, `example.com:443`."""
    t = target.strip()
    port = None
    if t.startswith("["):
        host, _, rest = t[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:])
        t = host
    elif t.count(":") == 1:
        t, p = t.split(":")
        port = _port(p)
    try:
        return str(ipaddress.ip_address(t)), None, port
    except ValueError:
        pass
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", t) or "." not in t.strip("."):
        raise ExplainError(f"{target!r} is not an address, address:port or domain name")
    return None, t.rstrip(".").lower(), port


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ExplainError(f"{text!r} is not a port")
    return int(text)


def facts_for(q: Query, addr: str | None = None, names: list[str] | None = None,
              domain_bits: int | None = None) -> FlowFacts:
    """The flow `q` describes. `addr` fills in an address for a domain target (from DNS)."""
    ip, domain, port = split_target(q.target)
    if q.proto not in ("tcp", "udp"):
        raise ExplainError(f"--proto {q.proto!r}: tcp or udp")
    mac = None
    if q.mac:
        if not _MAC.match(q.mac):
            raise ExplainError(f"--mac {q.mac!r} is not a MAC address")
        mac = bytes(int(x, 16) for x in re.split("[:-]", q.mac))
    dip = ipaddress.ip_address(ip or addr) if (ip or addr) else None
    sip = ipaddress.ip_address(q.src) if q.src else None
    return FlowFacts(sip, dip, q.sport, q.port or port, q.proto, mac, q.dscp, q.iface, q.wan, q.pname,
                     domain or (names[0] if names else None), domain_bits)


def render(ruleset: RuleSet, facts: FlowFacts, d: Decision, names: list[str] | None = None,
           without_name: Decision | None = None) -> str:
    """The trace, one line per rule considered, then the outcome."""
    dst = str(facts.dip) if facts.dip is not None else "(any address)"
    if facts.dport is not None:
        dst = f"[{dst}]:{facts.dport}" if ":" in dst else f"{dst}:{facts.dport}"
    about = f" ({facts.domain})" if facts.domain else ""
    lines = [f"{facts.l4proto} -> {dst}{about}"]
    if names:
        lines.append(f"  DNS gave this address the name{'s' if len(names) > 1 else ''}: {', '.join(names)}")
    traced = {t.index: t for t in d.trace}
    for e in ruleset.entries:
        if d.rule_index is not None and e.index > d.rule_index:
            break
        label = f"#{e.index + 1}" + (f" {e.name}" if e.name else "")
        if not e.enabled:
            lines.append(f"  {label:6} {e.rule}\n           skipped: disabled")
            continue
        t = traced.get(e.index)
        if t is None:
            continue
        lines.append(f"  {label:6} {e.rule}")
        for c in t.conditions:
            verdict = {True: "matches", False: "does not match", None: "unknown"}[c.matched]
            lines.append(f"           {c.text}: {verdict}" + (f" ({c.why})" if c.why else ""))
    if d.undecided:
        lines.append(f"=> the kernel cannot decide at rule #{(d.rule_index or 0) + 1}: it has no name for this "
                     "address. The flow goes to daetui, which sniffs the name from its first bytes (TLS, HTTP, "
                     "QUIC) and decides from this rule on.")
        if without_name is not None:
            rule = "the fallback" if without_name.rule_index is None else f"rule #{without_name.rule_index + 1}"
            lines.append(f"=> with no name found: {without_name.outbound} ({rule})")
    elif d.rule_index is None:
        lines.append(f"=> {d.outbound} (no rule matched: the fallback)")
    else:
        lines.append(f"=> {d.outbound} (rule #{d.rule_index + 1})" + (" [must]" if d.must else ""))
    return "\n".join(lines)


def explain(ruleset: RuleSet, q: Query, addr: str | None = None, names: list[str] | None = None,
            domain_bits: int | None = None, unknown_domain: str = "sniff") -> ExplainResult:
    """What the daemon would do with the flow `q` describes (facts not given are taken as not matching).

    `unknown_domain` is global.unknown_domain: with "no_match" the kernel takes a domain() function of an
    address with no known name as false, and decides on."""
    facts = facts_for(q, addr, names, domain_bits)
    no_match = unknown_domain == "no_match"
    d = decide(ruleset, facts, unknown_name_matches=False if no_match else None, unknown_facts_match=False)
    without = decide(ruleset, facts, d.rule_index or 0, unknown_name_matches=False, unknown_facts_match=False) \
        if d.undecided else None
    return ExplainResult(d.outbound if not d.undecided else None, d.rule_index,
                         render(ruleset, facts, d, names, without))
