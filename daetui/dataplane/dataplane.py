"""The kernel side of daetui in one network namespace.

Compiles and loads the programs, writes the rules, sets up the policy
routing that delivers handed-off packets locally, and binds the programs to
the LAN interfaces. Every change goes through the journal, so `stop()`,
the next start after a crash, and `daetui cleanup` leave the system as it
was. All methods are blocking (BCC compiles, netlink round trips): the
control plane calls them from its netlink thread, never from its event loop.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute

from daetui.config.schema import TPROXY_MARK
from daetui.dataplane.journal import Journal
from daetui.dataplane.program import KernelProgram
from daetui.dataplane.system import SystemChanges, read_sysctl
from daetui.routing.compile import KernelRules, compile_rules
from daetui.routing.ruleset import RuleSet

log = logging.getLogger("daetui.dataplane")


@dataclass
class Binding:
    """The programs attached to one interface."""

    ifname: str
    ifindex: int
    since: float
    programs: tuple[str, ...] = ("lan_ingress", "lan_egress")
    side: str = "lan"          # "lan": its clients' flows; "wan": the router's own flows out of it


@dataclass
class DataplaneState:
    """What the console's Overview shows of the kernel side."""

    bindings: dict[str, Binding] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)   # configured, not present
    generation: int = 0
    match_sets: int = 0


class Dataplane:
    """Programs, maps and system changes for the LAN interfaces of this namespace."""

    def __init__(self, state_file: Path, tproxy_mark: int = TPROXY_MARK) -> None:
        self.state_file = state_file
        self.tproxy_mark = tproxy_mark
        self.program: KernelProgram | None = None
        self.changes: SystemChanges | None = None
        self.state = DataplaneState()
        self.wanted: tuple[str, ...] = ()
        self.ruleset: RuleSet | None = None
        self.kernel_rules: KernelRules | None = None

    # -- lifecycle --------------------------------------------------------------
    def start(self, ruleset: RuleSet, lan_interfaces: tuple[str, ...], listeners: dict[int, socket.socket],
              fail_open: bool = True, auto_config: bool = True, heartbeat_timeout: float = 0.0,
              flow_table_size: int | None = None, domain_table_size: int | None = None) -> None:
        """Load, write the rules, route, then attach. On any failure, undo and raise.

        With `heartbeat_timeout`, the first beat is written before any packet is seen: the
        caller must go on beating (control/heartbeat.py) or new flows fail open after it.
        """
        journal = Journal(self.state_file)
        self.changes = SystemChanges(journal)
        try:
            sizes = {k: v for k, v in (("max_flows", flow_table_size), ("max_domain_ips", domain_table_size)) if v}
            self.program = KernelProgram(**sizes)
            self.program.set_params(self.tproxy_mark, fail_open, active_gen=0)
            if heartbeat_timeout:
                self.program.beat(heartbeat_timeout)
            self.load_rules(ruleset, initial=True)
            for slot, sock in listeners.items():
                self.program.set_listener(slot, sock)
            self.program.attach_lookup()
            if auto_config:
                self._kernel_parameters(lan_interfaces)
            for family in (4, 6):
                if family == 6 and not socket.has_ipv6:
                    continue
                self.changes.add_mark_rule(family, self.tproxy_mark)
                self.changes.add_local_route(family)
            self.wanted = lan_interfaces
            for name in lan_interfaces:
                self.bind(name)
        except BaseException:
            self.stop()
            raise

    def _kernel_parameters(self, lan_interfaces: tuple[str, ...]) -> None:
        assert self.changes is not None
        self.changes.set_sysctl("net.ipv4.ip_forward", "1")
        # Redirects would tell LAN clients to bypass the router, and daetui with it.
        self.changes.set_sysctl("net.ipv4.conf.all.send_redirects", "0")
        for name in lan_interfaces:
            if os.path.exists(f"/proc/sys/net/ipv4/conf/{name}"):
                self.changes.set_sysctl(f"net.ipv4.conf.{name}.send_redirects", "0")
        if read_sysctl("net.ipv6.conf.all.forwarding") == "0":
            # Turning it on would stop accepting router advertisements on the WAN
            # (accept_ra=1) and could cut the router off: the user decides.
            log.warning("IPv6 forwarding is off (net.ipv6.conf.all.forwarding=0): direct IPv6 flows will not "
                        "be forwarded; enable it (with accept_ra=2 on the WAN) to route IPv6")

    def stop(self) -> list[str]:
        """Detach, unroute, restore sysctls, unload. Returns what could not be undone."""
        problems: list[str] = []
        if self.changes is not None:
            problems = self.changes.undo_all()
            self.changes.journal.close()
            self.changes.close()
            self.changes = None
        if self.program is not None:
            self.program.close()
            self.program = None
        self.state.bindings.clear()
        return problems

    # -- interfaces -------------------------------------------------------------------
    def bind(self, ifname: str) -> bool:
        """Attach to `ifname` if it exists; False (and noted as missing) if not."""
        assert self.changes is not None and self.program is not None
        if ifname in self.state.bindings:
            return True
        idx = self.changes.ipr.link_lookup(ifname=ifname)
        if not idx:
            if ifname not in self.state.missing:
                self.state.missing.append(ifname)
                log.warning("LAN interface %s does not exist (yet); it will be bound when it appears", ifname)
            return False
        ifindex = idx[0]
        self.changes.attach(ifindex, ifname, "ingress", self.program.ingress.fd, "lan_ingress")
        self.changes.attach(ifindex, ifname, "egress", self.program.egress.fd, "lan_egress")
        self.state.bindings[ifname] = Binding(ifname, ifindex, time.time())
        if ifname in self.state.missing:
            self.state.missing.remove(ifname)
        log.info("bound lan_ingress and lan_egress to %s (ifindex %d)", ifname, ifindex)
        return True

    def forget(self, ifname: str) -> None:
        """An interface went away: drop its binding (the kernel dropped the filters)."""
        b = self.state.bindings.pop(ifname, None)
        if b is None:
            return
        if self.changes is not None:
            for change in [c for c in self.changes.journal.changes if c.get("ifindex") == b.ifindex]:
                self.changes.journal.forget(change)
        if ifname in self.wanted and ifname not in self.state.missing:
            self.state.missing.append(ifname)
        log.warning("LAN interface %s disappeared; it will be bound again if it returns", ifname)

    def unbind(self, ifname: str) -> None:
        """Detach from an interface that is no longer a LAN interface (its filters removed, the journal told)."""
        b = self.state.bindings.pop(ifname, None)
        if b is None:
            return
        assert self.changes is not None
        self.changes.detach_interface(b.ifindex)
        log.info("unbound %s (no longer a LAN interface)", ifname)

    def rebind(self, lan_interfaces: tuple[str, ...]) -> None:
        """Take a new list of LAN interfaces: unbind the ones left out, bind the new ones (or note them missing)."""
        before, self.wanted = self.wanted, lan_interfaces
        if before == lan_interfaces:
            return
        for name in before:
            if name not in lan_interfaces:
                self.unbind(name)
        self.state.missing = [m for m in self.state.missing if m in lan_interfaces]
        for name in lan_interfaces:
            if name not in before:
                self.bind(name)

    def link_changed(self, ifname: str, appeared: bool) -> None:
        """The interface monitor saw `ifname` appear (perhaps under a new index) or go."""
        if ifname not in self.wanted:
            return
        self.forget(ifname)  # a new index under a known name: the old binding is gone
        if appeared:
            self.bind(ifname)

    # -- rules ------------------------------------------------------------------------
    def compile(self, ruleset: RuleSet) -> KernelRules:
        """Compile for this namespace (interface names resolved here). CompileError if it does not fit."""
        assert self.program is not None
        return compile_rules(ruleset, self.program.max_match_sets)

    def load_rules(self, ruleset: RuleSet, initial: bool = False, compiled: KernelRules | None = None,
                   before_flip: Callable[[int, KernelRules], None] | None = None) -> int:
        """Write the rules into the inactive generation, then flip to it.

        `before_flip(gen, rules)` runs once the generation is written and before
        packets see it (the control plane recomputes the names' bitmaps there).
        A packet sees one whole generation or the other: the flip is one write.
        """
        assert self.program is not None
        kernel_rules = compiled or self.compile(ruleset)
        gen = self.program.write_inactive(kernel_rules, initial)
        if before_flip is not None:
            before_flip(gen, kernel_rules)
        # The old generation's ip sets stay until it is next written: a packet
        # still being routed on it must see it whole.
        self.program.activate(gen)
        self.state.generation = gen
        self.state.match_sets = len(kernel_rules.match_sets)
        self.ruleset = ruleset
        self.kernel_rules = kernel_rules
        if kernel_rules.unresolved_interfaces:
            log.warning("interface() names interfaces that are not here (yet): %s; those values match nothing "
                        "until they appear", ", ".join(sorted(kernel_rules.unresolved_interfaces)))
        log.info("rules: %d enabled, %d match sets, %d ip prefixes, %d domain functions, generation %d",
                 len(ruleset.enabled), len(kernel_rules.match_sets), kernel_rules.ip_set_entries,
                 len(kernel_rules.domain_functions), gen)
        return gen


def interface_names(ipr: IPRoute | None = None) -> dict[int, str]:
    """Index -> name of every interface in this namespace."""
    own = ipr is None
    ipr = ipr or IPRoute()
    try:
        return {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    finally:
        if own:
            ipr.close()

