"""Where a flow goes: the one owner of "kernel record -> rule -> user-space decision".

A flow that reaches the control plane was routed by the kernel, which wrote
its decision into `routing_tuples`: that record is read and decoded with the
rules of the generation that made it. With no record (evicted, or no kernel
side) the same rules decide here. A flow the kernel left undecided (a domain
rule, and no name for its address) or one that dial_mode wants named is
sniffed, and decided again from the rule the kernel stopped at with the name.
The router's own connections to DNS upstreams, and a reload's question "would
the new rules route this flow elsewhere?", are answered by the same rules.

No I/O happens here: the callers own the sockets; this module only reads the
kernel's record and evaluates rules (routing.matcher).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from daetui.abi.flowrecord import FlowKey, KernelFlow
from daetui.control.connections import Connection, Endpoint
from daetui.control.kernel_sync import KernelSync
from daetui.control.names import NameBook
from daetui.dns.upstream import UpstreamRoute
from daetui.net.address import ip_of, is_address
from daetui.routing.matcher import FlowFacts, decide
from daetui.routing.ruleset import BLOCK, DIRECT, USERSPACE, RuleSet
from daetui.sniff import SniffResult

MAX_UPSTREAM_ROUTES = 256   # the routes of DNS upstreams kept (a config names a handful)


@dataclass(frozen=True)
class Route:
    """A flow's route as the connection table records it."""

    rule_index: int | None   # None: the fallback
    rule: str                # the rule's text, or "fallback"
    outbound: str
    stage: str               # "kernel" (read from routing_tuples) | "userspace" (decided here)
    mac: str | None = None   # the LAN client's MAC, as the kernel saw it
    pid: int | None = None   # the router's own flow: its process, as the cgroup hooks saw it
    process: str | None = None
    mark: int = 0            # direct(mark: ..): the mark of its direct dial


def facts_of(conn: Connection, domain: str | None = None) -> FlowFacts:
    """What the rules see of a relayed flow (and of the name it was found to have)."""
    return FlowFacts(ipaddress.ip_address(conn.src[0]), ipaddress.ip_address(conn.dst[0]), conn.src[1],
                     conn.dst[1], conn.proto, bytes.fromhex(conn.mac.replace(":", "")) if conn.mac else None,
                     domain=domain, pname=conn.process)


def key_facts(key: FlowKey, mac: bytes | None = None, pname: str | None = None) -> FlowFacts:
    """What the rules see of a flow known by its 5-tuple (and the MAC it came from, or its process)."""
    return FlowFacts(key.src, key.dst, key.sport, key.dport, key.proto, mac, pname=pname)


def kernel_facts(flow: KernelFlow) -> FlowFacts:
    """What the rules see of a flow the kernel recorded."""
    return key_facts(flow.key, flow.mac, flow.process or None)


def mac_text(mac: bytes) -> str | None:
    """A MAC as the kernel records it, as text (aa:bb:..); None when it is all zero (no MAC: an L3 link)."""
    return ":".join(f"{b:02x}" for b in mac) if any(mac) else None


# Per relayed flow: a LAN has few MACs, and the join is a few microseconds (bounded).
_flow_mac_text = functools.lru_cache(maxsize=1024)(mac_text)


class Decider:
    """Routes flows by the kernel's records and the rules in force; `configure` takes a reload's."""

    def __init__(self, sync: KernelSync, names: NameBook, dial_mode: str) -> None:
        self.sync = sync
        self.names = names
        self.dial_mode = dial_mode
        self._upstream_routes: dict[tuple[str, int, str], UpstreamRoute] = {}

    @property
    def ruleset(self) -> RuleSet:
        return self.sync.current

    def configure(self, dial_mode: str) -> None:
        """A reload: the rules changed (through `sync`), and maybe dial_mode; upstreams are routed anew."""
        self.dial_mode = dial_mode
        self._upstream_routes.clear()

    def _route(self, ruleset: RuleSet, rule_index: int | None, outbound: str, stage: str,
               mac: str | None = None, pid: int | None = None, process: str | None = None, mark: int = 0) -> Route:
        entry = ruleset.by_index(rule_index) if rule_index is not None else None
        return Route(rule_index, entry.text if entry else "fallback", outbound, stage, mac, pid, process, mark)

    def first(self, proto: str, client: Endpoint, dst: Endpoint) -> Route:
        """The route of a flow that just reached the control plane."""
        key = FlowKey(ip_of(client[0]), client[1], ip_of(dst[0]), dst[1], proto)
        kflow = self.sync.flow(key)
        if kflow is not None:
            ruleset = self.sync.ruleset(kflow.generation)
            return self._route(ruleset, kflow.rule_index, ruleset.outbound_name(kflow.outbound), "kernel",
                               _flow_mac_text(kflow.mac), kflow.pid or None, kflow.process or None, kflow.mark)
        d = decide(self.ruleset, key_facts(key), with_trace=False)
        # Undecided (a domain rule, and no name for the address) as the kernel leaves it: sniffed, then
        # decided from that rule (with_name).
        return self._route(self.ruleset, d.rule_index, USERSPACE if d.outbound is None else d.outbound, "userspace",
                           mark=d.mark)

    def wants_name(self, conn: Connection) -> bool:
        """Sniff this flow? When the kernel could not decide, or dial_mode wants the name of a proxied flow."""
        if conn.outbound == USERSPACE:
            return True
        return conn.outbound not in (DIRECT, BLOCK) and self.dial_mode != "ip"

    def with_name(self, conn: Connection, result: SniffResult) -> None:
        """Note the name sniffed from a flow, and route it again by it where that is called for.

        An undecided flow goes on from the rule the kernel stopped at (a name not
        found matches nothing); with dial_mode `domain++`, a named flow is routed
        again from the first rule.
        """
        if result.name is not None and is_address(result.name.strip("[]")):
            result = SniffResult(None, result.protocol)  # Host: 203.0.113.12 names nothing
        conn.domain, conn.sniffed = result.name, result.protocol
        undecided = conn.outbound == USERSPACE
        if not undecided and not (self.dial_mode == "domain++" and result.name):
            return
        start = (conn.rule_index or 0) if undecided else 0
        d = decide(self.ruleset, facts_of(conn, result.name), start, unknown_name_matches=False, with_trace=False)
        r = self._route(self.ruleset, d.rule_index, d.outbound or self.ruleset.fallback, "userspace", mark=d.mark)
        conn.rule_index, conn.rule, conn.outbound, conn.stage = r.rule_index, r.rule, r.outbound, r.stage
        conn.mark = r.mark

    def dial_host(self, conn: Connection, node: str | None) -> str:
        """What a proxied flow asks its node for: the address, or (dial_mode) the sniffed name.

        `domain` dials the name only when DNS gave that name to the address (so a client cannot
        send a flow elsewhere by lying in its SNI); `domain+` and `domain++` always do.
        """
        if node is None or not conn.domain or self.dial_mode == "ip":
            return conn.dst[0]
        if self.dial_mode == "domain" and conn.domain not in self.names.names(ipaddress.ip_address(conn.dst[0])):
            return conn.dst[0]
        return conn.domain

    def upstream(self, ip: str, port: int, proto: str) -> UpstreamRoute:
        """How the rules send the router's own connection to a DNS upstream (kept until a reload)."""
        key = (ip, port, proto)
        hit = self._upstream_routes.get(key)
        if hit is None:
            if len(self._upstream_routes) > MAX_UPSTREAM_ROUTES:
                self._upstream_routes.clear()
            d = decide(self.ruleset, FlowFacts(None, ipaddress.ip_address(ip), None, port, proto),
                       unknown_name_matches=False, with_trace=False)
            entry = self.ruleset.by_index(d.rule_index) if d.rule_index is not None else None
            rule = f"rule #{entry.index + 1} {entry.rule}" if entry else "fallback"
            outbound = d.outbound or self.ruleset.fallback
            # The route is shown, a `block` refuses the upstream, and a group's node carries it.
            hit = self._upstream_routes[key] = UpstreamRoute(outbound, rule, blocked=outbound == BLOCK)
        return hit


def outbound_under(ruleset: RuleSet, facts: FlowFacts) -> str | None:
    """Where `ruleset` would send a flow with these facts (a reload's abort asks)."""
    return decide(ruleset, facts, unknown_name_matches=False, with_trace=False).outbound
