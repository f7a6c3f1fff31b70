"""The kernel side of daetui in one network namespace.

Compiles and loads the programs, writes the rules, sets up the policy
routing that delivers handed-off packets locally, and binds the programs to
the LAN interfaces (lan_ingress, lan_egress) and the WAN interfaces
(wan_egress: the router's own flows). The own flows for the control plane
enter through daetui0, a veth pair made for that (see own_path). Every change goes through the journal, so `stop()`,
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
from daetui.dataplane.cgroups import cgroup2_root, holds_self
from daetui.dataplane.defaultroute import default_route_interfaces
from daetui.dataplane.journal import Journal
from daetui.dataplane.program import KernelProgram
from daetui.dataplane.system import SystemChanges, SystemError_, read_sysctl
from daetui.net.ifnames import AUTO, is_pattern, matching
from daetui.routing.compile import KernelRules, compile_rules
from daetui.routing.ruleset import RuleSet

log = logging.getLogger("daetui.dataplane")

# The veth pair the router's own flows for the control plane enter by (wan_egress redirects
# them into OWN_IF's ingress). Never bound as a LAN or WAN interface, whatever the patterns say.
OWN_IF, OWN_PEER = "daetui0", "daetui0p"
ARPHRD_ETHER, ARPHRD_LOOPBACK = 1, 772


@dataclass
class Binding:
    """The programs attached to one interface."""

    ifname: str
    ifindex: int
    since: float
    programs: tuple[str, ...] = ("lan_ingress", "lan_egress")
    side: str = "lan"          # "lan": its clients' flows; "wan": the router's own flows out of it
    matched: str | None = None  # the pattern of the config that named it (veth*, auto), when not its name


@dataclass
class DataplaneState:
    """What the console's Overview shows of the kernel side."""

    bindings: dict[str, Binding] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)   # configured by name, not present
    generation: int = 0
    match_sets: int = 0


class Dataplane:
    """Programs, maps and system changes for the LAN interfaces of this namespace."""

    def __init__(self, state_file: Path, tproxy_mark: int = TPROXY_MARK) -> None:
        self.state_file = state_file
        self.tproxy_mark = tproxy_mark
        self.program: KernelProgram | None = None
        # wan_egress tells daetui's own sockets by their process (not only by so_mark_from_dae): true unless
        # the router's own flows are steered and the socket hooks are missing or miss daetui's cgroup. Only
        # then may a dial carry another mark (a direct(mark: ..) rule's) without being caught again.
        self.own_sockets_known = True
        self.changes: SystemChanges | None = None
        self.state = DataplaneState()
        self.wanted: tuple[str, ...] = ()        # lan_interface: names and wildcards
        self.wan_wanted: tuple[str, ...] = ()    # wan_interface: names, wildcards, auto
        self.auto_wan: frozenset[str] = frozenset()
        self.ruleset: RuleSet | None = None
        self.kernel_rules: KernelRules | None = None

    # -- lifecycle --------------------------------------------------------------
    def start(self, ruleset: RuleSet, lan_interfaces: tuple[str, ...], listeners: dict[int, socket.socket],
              fail_open: bool = True, auto_config: bool = True, heartbeat_timeout: float = 0.0,
              flow_table_size: int | None = None, domain_table_size: int | None = None,
              wan_interfaces: tuple[str, ...] = (), so_mark: int = 0, bypass_marks: tuple[int, ...] = (),
              cgroup: str | None = None, domain_no_match: bool = False, workers: int = 0) -> None:
        """Load, write the rules, route, then attach. On any failure, undo and raise.

        With `heartbeat_timeout`, the first beat is written before any packet is seen: the
        caller must go on beating (control/heartbeat.py) or new flows fail open after it.
        """
        journal = Journal(self.state_file)
        self.changes = SystemChanges(journal)
        try:
            sizes = {k: v for k, v in (("max_flows", flow_table_size), ("max_domain_ips", domain_table_size)) if v}
            self.program = KernelProgram(**sizes)
            self.program.set_params(self.tproxy_mark, fail_open, active_gen=0, so_mark=so_mark,
                                    domain_no_match=domain_no_match, workers=workers)
            self.program.set_bypass_marks(bypass_marks)
            if heartbeat_timeout:
                self.program.beat(heartbeat_timeout)
            self.load_rules(ruleset, initial=True)
            for slot, sock in listeners.items():
                self.program.set_listener(slot, sock)
            self.program.attach_lookup()
            if auto_config and lan_interfaces:  # a desktop or server (WAN only) forwards nothing for anyone
                self._kernel_parameters(lan_interfaces)
            for family in (4, 6):
                if family == 6 and not socket.has_ipv6:
                    continue
                self.changes.add_mark_rule(family, self.tproxy_mark)
                self.changes.add_local_route(family)
            if wan_interfaces:
                self._own_path(cgroup, so_mark)
            self.wanted, self.wan_wanted = lan_interfaces, wan_interfaces
            self._reconcile()
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

    def _own_path(self, cgroup: str | None, so_mark: int) -> None:
        """daetui0 for the router's own flows, and the socket hooks that name their processes.

        A veth, not lo: the redirected packets keep the router's own source address,
        which only an interface with accept_local takes in (lo would need it on lo,
        for everything), and daetui0 is daetui's to set so, and to remove.
        """
        assert self.changes is not None and self.program is not None
        ifindex, mac = self.changes.add_veth(OWN_IF, OWN_PEER)
        self.changes.set_sysctl(f"net.ipv4.conf.{OWN_IF}.accept_local", "1")
        self.changes.set_sysctl(f"net.ipv4.conf.{OWN_IF}.rp_filter", "0")
        self.changes.attach(ifindex, OWN_IF, "ingress", self.program.own_in.fd, "own_ingress")
        self.program.set_own_path(ifindex, mac)
        cgroup = cgroup or "/"
        try:
            root = cgroup2_root() or self.changes.mount_cgroup2(str(self.state_file.parent / "cgroup2"))
            self.program.attach_cgroup(os.path.join(root, cgroup.lstrip("/")))
        except OSError as e:
            if not so_mark:
                raise SystemError_(f"so_mark_from_dae is 0 and the socket hooks could not be attached to cgroup "
                                   f"{cgroup} ({e}): daetui could not tell its own dials from the router's and "
                                   "would catch them; set so_mark_from_dae") from None
            log.warning("socket hooks not attached to cgroup %s (%s): pname() will match nothing and the "
                        "console shows no process for the router's own flows", cgroup, e)
            self.own_sockets_known = False
            return
        if not holds_self(cgroup):
            if not so_mark:
                raise SystemError_(f"so_mark_from_dae is 0 and daetui does not run inside cgroup {cgroup}: its own "
                                   "dials could not be told from the router's; set so_mark_from_dae or a cgroup "
                                   "that holds it")
            self.own_sockets_known = False

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
    def side_of(self, ifname: str) -> tuple[str, str] | None:
        """("lan" | "wan", the pattern that names it), or None: not an interface of ours."""
        if ifname in (OWN_IF, OWN_PEER, "lo"):
            return None
        p = matching(self.wanted, ifname)
        if p is not None:
            return "lan", p
        p = matching(self.wan_wanted, ifname, self.auto_wan)
        if p is not None:
            return "wan", p
        return None

    def _bind_wanted(self, present: set[str]) -> None:
        """Bind every interface the lists name among `present`; note the literal names that are not here."""
        for name in sorted(present):
            if self.side_of(name) is not None:
                self.bind(name)
        for name in (*self.wanted, *self.wan_wanted):
            if not is_pattern(name) and name not in present:
                self.bind(name)   # notes it missing

    def bind(self, ifname: str) -> bool:
        """Attach to `ifname` as its list says if it exists; False (and noted as missing) if not."""
        assert self.changes is not None and self.program is not None
        if ifname in self.state.bindings:
            return True
        side = self.side_of(ifname)
        if side is None:
            return False
        idx = self.changes.ipr.link_lookup(ifname=ifname)
        links = self.changes.ipr.get_links(idx[0]) if idx else []
        if not links:
            if ifname not in self.state.missing:
                self.state.missing.append(ifname)
                log.warning("%s interface %s does not exist (yet); it will be bound when it appears",
                            side[0].upper(), ifname)
            return False
        ifindex = links[0]["index"]
        # WireGuard, tun, PPP: no Ethernet header; their programs start at the IP header.
        l3 = links[0]["ifi_type"] not in (ARPHRD_ETHER, ARPHRD_LOOPBACK)
        sfx = "_l3" if l3 else ""
        p = self.program
        if side[0] == "lan":
            hooks = [("ingress", p.ingress_l3 if l3 else p.ingress, f"lan_ingress{sfx}"),
                     ("egress", p.egress_l3 if l3 else p.egress, f"lan_egress{sfx}")]
        else:
            hooks = [("egress", p.wan_l3 if l3 else p.wan, f"wan_egress{sfx}")]
        for direction, fn, name in hooks:
            self.changes.attach(ifindex, ifname, direction, fn.fd, name)
        self.state.bindings[ifname] = Binding(ifname, ifindex, time.time(),
                                              tuple(f"{name} ({d})" for d, _, name in hooks), side[0],
                                              None if side[1] == ifname else side[1])
        if ifname in self.state.missing:
            self.state.missing.remove(ifname)
        log.info("bound %s to %s (ifindex %d%s)", " and ".join(n for _, _, n in hooks), ifname, ifindex,
                 "" if side[1] == ifname else f", by {side[1]}")
        return True

    def forget(self, ifname: str) -> None:
        """An interface went away: drop its binding (the kernel dropped the filters)."""
        b = self.state.bindings.pop(ifname, None)
        if b is None:
            return
        if self.changes is not None:
            for change in [c for c in self.changes.journal.changes if c.get("ifindex") == b.ifindex]:
                self.changes.journal.forget(change)
        if ifname in (*self.wanted, *self.wan_wanted) and ifname not in self.state.missing:
            self.state.missing.append(ifname)
        log.warning("%s interface %s disappeared; it will be bound again if it returns", b.side.upper(), ifname)

    def unbind(self, ifname: str) -> None:
        """Detach from an interface no longer named (its filters removed, the journal told)."""
        b = self.state.bindings.pop(ifname, None)
        if b is None:
            return
        assert self.changes is not None
        self.changes.detach_interface(b.ifindex)
        log.info("unbound %s (no longer a %s interface)", ifname, b.side.upper())

    def rebind(self, lan_interfaces: tuple[str, ...], wan_interfaces: tuple[str, ...] | None = None) -> None:
        """Take new interface lists: unbind what they no longer name, bind what they name now."""
        wan = self.wan_wanted if wan_interfaces is None else wan_interfaces
        if (lan_interfaces, wan) == (self.wanted, self.wan_wanted):
            return
        self.wanted, self.wan_wanted = lan_interfaces, wan
        self._reconcile()

    def _reconcile(self, auto: frozenset[str] | None = None) -> None:
        """Bind what the lists name now and unbind what they no longer do (`auto`: the default routes' interfaces,
        when the caller has them)."""
        assert self.changes is not None
        names = interface_names(self.changes.ipr)
        if AUTO in self.wan_wanted:
            self.auto_wan = auto if auto is not None else default_route_interfaces(self.changes.ipr, names)
        for name, b in list(self.state.bindings.items()):
            side = self.side_of(name)
            if side is None or side[0] != b.side:
                self.unbind(name)
        named = {n for n in (*self.wanted, *self.wan_wanted) if not is_pattern(n)}
        self.state.missing = [m for m in self.state.missing if m in named]
        self._bind_wanted(set(names.values()))

    def routes_changed(self) -> None:
        """A default route came or went: `auto` WAN interfaces follow."""
        if AUTO in self.wan_wanted and self.changes is not None:
            auto = default_route_interfaces(self.changes.ipr, interface_names(self.changes.ipr))
            if auto != self.auto_wan:
                self._reconcile(auto)

    def link_changed(self, ifname: str, appeared: bool) -> None:
        """The interface monitor saw `ifname` appear (perhaps under a new index) or go."""
        if self.side_of(ifname) is None and ifname not in self.state.bindings:
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

