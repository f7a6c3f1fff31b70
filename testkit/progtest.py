"""Run daetui's kernel programs on crafted packets, without a lab: BPF_PROG_TEST_RUN.

The kernel runs a loaded program on a buffer we give it, with an
`struct __sk_buff` context we may fill (mark, ifindex, ingress_ifindex...),
and reports the return value, the packet and context as the program left
them, and the mean time per run. dae's `control/kern/tests` and katran's test
fixtures test their programs this way.

Three layers:

- `prog_test_run()`: the syscall, through ctypes (libbcc has no wrapper).
- `Netns`: a throwaway network namespace with LAN and WAN veth pairs,
  addresses and routes, so the context's `ifindex` names a real device
  (the kernel looks it up in the caller's namespace) and the FIB lookup
  behind `interface(wan: ...)` has an answer. Nothing in it reaches the host.
- `RouteHarness`: `lan_ingress` loaded once, as the daemon loads it, rules
  written into the generations as the dataplane writes them (and swapped
  without recompiling), a packet run, and the decision read back from
  `routing_tuples` with the product's own decoding.
"""

from __future__ import annotations

import atexit
import ctypes as ct
import ipaddress
import json
import os
import platform
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from daetui.abi.constants import ABI
from daetui.abi.flowrecord import KernelFlow
from daetui.config.load import parse_config
from daetui.dataplane.bpflink import _SYS_BPF
from daetui.net.netns import netns
from daetui.routing.compile import KernelRules, compile_rules, domain_bitmap
from daetui.routing.matcher import Decision, FlowFacts, decide
from daetui.routing.ruleset import RuleSet
from testkit.packets import Packet

BPF_PROG_TEST_RUN = 10
TC_ACT_OK = 0
TC_ACT_SHOT = 2
TPROXY_MARK = 0x2000000  # what the harness's params say the control plane's mark is (any non-zero value)

_libc = ct.CDLL(None, use_errno=True)


class SkBuff(ct.Structure):
    """`struct __sk_buff` (linux/bpf.h, 192 bytes). test_run takes only mark, priority,
    ingress_ifindex, ifindex, cb, tstamp, wire_len, gso_segs and gso_size from it (the rest must
    be zero) and gives back the context as the program left it."""

    _fields_ = [("len", ct.c_uint32), ("pkt_type", ct.c_uint32), ("mark", ct.c_uint32),
                ("queue_mapping", ct.c_uint32), ("protocol", ct.c_uint32), ("vlan_present", ct.c_uint32),
                ("vlan_tci", ct.c_uint32), ("vlan_proto", ct.c_uint32), ("priority", ct.c_uint32),
                ("ingress_ifindex", ct.c_uint32), ("ifindex", ct.c_uint32), ("tc_index", ct.c_uint32),
                ("cb", ct.c_uint32 * 5), ("hash", ct.c_uint32), ("tc_classid", ct.c_uint32),
                ("data", ct.c_uint32), ("data_end", ct.c_uint32), ("napi_id", ct.c_uint32),
                ("family", ct.c_uint32), ("remote_ip4", ct.c_uint32), ("local_ip4", ct.c_uint32),
                ("remote_ip6", ct.c_uint32 * 4), ("local_ip6", ct.c_uint32 * 4), ("remote_port", ct.c_uint32),
                ("local_port", ct.c_uint32), ("data_meta", ct.c_uint32), ("flow_keys", ct.c_uint64),
                ("tstamp", ct.c_uint64), ("wire_len", ct.c_uint32), ("gso_segs", ct.c_uint32),
                ("sk", ct.c_uint64), ("gso_size", ct.c_uint32), ("tstamp_type", ct.c_uint8),
                ("_pad", ct.c_uint8 * 3), ("hwtstamp", ct.c_uint64)]


assert ct.sizeof(SkBuff) == 192 and SkBuff.ifindex.offset == 40 and SkBuff.hwtstamp.offset == 184


class _TestRunAttr(ct.Structure):
    # union bpf_attr, its `test` member (linux/bpf.h); the rest of the union zero.
    _fields_ = [("prog_fd", ct.c_uint32), ("retval", ct.c_uint32), ("data_size_in", ct.c_uint32),
                ("data_size_out", ct.c_uint32), ("data_in", ct.c_uint64), ("data_out", ct.c_uint64),
                ("repeat", ct.c_uint32), ("duration", ct.c_uint32), ("ctx_size_in", ct.c_uint32),
                ("ctx_size_out", ct.c_uint32), ("ctx_in", ct.c_uint64), ("ctx_out", ct.c_uint64),
                ("flags", ct.c_uint32), ("cpu", ct.c_uint32), ("batch_size", ct.c_uint32),
                ("_zero", ct.c_uint8 * 16)]


@dataclass(frozen=True)
class TestRun:
    """What one BPF_PROG_TEST_RUN gave back."""

    __test__ = False  # not a pytest test class, whatever its name

    retval: int               # the program's return value (the last run's)
    duration_ns: int          # mean time per run, as the kernel measured it
    data: bytes               # the packet as the program left it
    ctx: SkBuff | None        # the context as the program left it (None: none was passed)


def prog_test_run(prog_fd: int, data: bytes, repeat: int = 1, ctx: SkBuff | None = None) -> TestRun:
    """Run the program `repeat` times on `data` (with `ctx` as its `__sk_buff`, if given).

    Runs in the calling thread's network namespace: that is where the kernel
    looks up `ctx.ifindex`, and what the program's socket and FIB lookups see.
    """
    buf_in = ct.create_string_buffer(data, len(data))
    buf_out = ct.create_string_buffer(len(data) + 256)  # room for a program that grows the packet
    attr = _TestRunAttr(prog_fd=prog_fd, data_size_in=len(data), data_size_out=len(buf_out),
                        data_in=ct.addressof(buf_in), data_out=ct.addressof(buf_out), repeat=repeat)
    ctx_out = None
    if ctx is not None:
        ctx_in = SkBuff.from_buffer_copy(ctx)
        ctx_out = SkBuff()
        attr.ctx_in, attr.ctx_size_in = ct.addressof(ctx_in), ct.sizeof(ctx_in)
        attr.ctx_out, attr.ctx_size_out = ct.addressof(ctx_out), ct.sizeof(ctx_out)
    if _libc.syscall(_SYS_BPF[platform.machine()], BPF_PROG_TEST_RUN, ct.byref(attr), ct.sizeof(attr)) != 0:
        err = ct.get_errno()
        raise OSError(err, f"BPF_PROG_TEST_RUN: {os.strerror(err)}")
    return TestRun(attr.retval, attr.duration, buf_out.raw[:attr.data_size_out], ctx_out)


# -- a namespace to run in ------------------------------------------------------------

def _ip(*argv: str) -> str:
    proc = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass(frozen=True)
class Link:
    """An interface of the harness's namespace: a veth whose peer (`<name>p`) stays beside it."""

    name: str
    addresses: tuple[str, ...]        # with prefix length
    gateways: tuple[str, ...] = ()    # default routes via these (the WAN side)


# Two LAN ports (interface(lan: ...) must tell them apart) and a WAN port the default routes leave by.
LINKS = (
    Link("lan0", ("192.0.2.1/25", "2001:db8:1::1/64")),
    Link("lan1", ("192.0.2.129/25", "2001:db8:4::1/64")),
    Link("wan0", ("198.51.100.1/24", "2001:db8:2::1/64"), ("198.51.100.254", "2001:db8:2::254")),
)


class Netns:
    """A network namespace of our own, made with `ip netns`, deleted on close (or at exit).

    Only what is created here lives here: veth pairs whose both ends stay in
    it, their addresses and routes, forwarding on (the FIB lookup of a
    forwarded packet needs it). Nothing is linked to the host.
    """

    _made = 0

    def __init__(self, name: str | None = None, links: tuple[Link, ...] = LINKS) -> None:
        Netns._made += 1
        self.name = name or f"dtk{os.getpid()}n{Netns._made}"
        _ip("netns", "add", self.name)
        atexit.register(self.close)
        self._closed = False
        self.links = links
        self._routes: dict[str, str | None] = {}
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
            for link in links:
                _ip("-n", self.name, "link", "add", link.name, "type", "veth", "peer", "name", f"{link.name}p")
                for end in (link.name, f"{link.name}p"):
                    _ip("-n", self.name, "link", "set", end, "up")
                for a in link.addresses:
                    extra = ("nodad",) if ":" in a else ()
                    _ip("-n", self.name, "addr", "add", a, "dev", link.name, *extra)
                for gw in link.gateways:
                    _ip("-n", self.name, "-6" if ":" in gw else "-4", "route", "add", "default", "via", gw,
                        "dev", link.name, "onlink")
            for key in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"):
                with self.entered(), open(f"/proc/sys/{key}", "w") as f:  # this namespace's own sysctl
                    f.write("1")
            shown = json.loads(_ip("-n", self.name, "-j", "link", "show"))
            self.ifindex: dict[str, int] = {link["ifname"]: link["ifindex"] for link in shown}
            self.mac: dict[str, str] = {link["ifname"]: link.get("address", "") for link in shown}
        except BaseException:
            self.close()
            raise

    @contextmanager
    def entered(self) -> Iterator[None]:
        """The calling thread inside the namespace for the body (the rest of the process stays out)."""
        with netns(self.name):
            yield

    def route_out(self, dst: str) -> str | None:
        """The interface this namespace would send a packet for `dst` out of (`ip route get`), or None."""
        if dst not in self._routes:  # the routes never change: ask once per address
            try:
                routes = json.loads(_ip("-n", self.name, "-j", "route", "get", dst))
            except RuntimeError:
                routes = []
            self._routes[dst] = routes[0].get("dev") if routes else None
        return self._routes[dst]

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        atexit.unregister(self.close)
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, timeout=30)


# -- lan_ingress, with rules ----------------------------------------------------------

def _counters_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


@dataclass(frozen=True)
class Verdict:
    """What `lan_ingress` did with one packet, and the decision it filed for the flow."""

    retval: int                    # TC_ACT_OK (passed or assigned) or TC_ACT_SHOT (dropped)
    flow: KernelFlow | None        # the flow's routing_tuples entry, decoded by daetui.flowrecord
    outbound: str | None           # the entry's outbound by name ("direct", a group, "(dns)"...); None: no entry
    skb_mark: int                  # the packet's mark as the program left it
    counters: dict[str, int]       # what this packet added to the global counters (CNT_* names, no prefix)
    duration_ns: int

    @property
    def rule_index(self) -> int | None:
        """The deciding rule's index (None: the fallback; also None with no entry)."""
        return self.flow.rule_index if self.flow else None

    @property
    def must(self) -> bool:
        return bool(self.flow and self.flow.flags & ABI.FLOW_MUST)

    @property
    def dropped(self) -> bool:
        return self.retval == TC_ACT_SHOT


class RouteHarness:
    """`lan_ingress` and the routing programs loaded once (BCC compiles for seconds), rules swapped at will.

        h = RouteHarness()                         # compiles, loads, makes a namespace
        h.load('''[routing]\\nrules = ["dport(53) -> block"]\\nfallback = "direct"''')
        pk = Packet("192.0.2.10", "203.0.113.10", dport=53, proto="udp")
        v = h.run(pk)                              # lan_ingress on it, as if it came in on lan0
        assert (v.outbound, v.rule_index, v.dropped) == ("block", 0, True)
        assert v.outbound == h.expected(pk).outbound   # the user-space matcher agrees

    Rules are written the way the dataplane writes them: compiled by
    `compile_rules` (interface names resolved in the harness's namespace) into
    the inactive generation by the program's own `write_inactive`, which one
    `params` write (`activate`) then makes active.
    """

    def __init__(self, max_match_sets: int = ABI.MAX_MATCH_SETS, fail_open: bool = True,
                 links: tuple[Link, ...] = LINKS) -> None:
        from daetui.dataplane.program import KernelProgram

        self.ns = Netns(links=links)
        try:
            self.program = KernelProgram(max_match_sets)
        except BaseException:
            self.ns.close()
            raise
        self.fail_open = fail_open
        self.program.set_params(tproxy_mark=TPROXY_MARK, fail_open=fail_open, active_gen=0)
        self.ruleset: RuleSet | None = None
        self.kernel_rules: KernelRules | None = None
        self.generation = 0
        self._loaded = False
        self._pending: tuple[int, RuleSet, KernelRules] | None = None
        self._names: dict[Any, str] = {}
        self._health: set[int] = set()       # group_health entries written (to zero on reset)
        self._listeners: set[int] = set()    # sockmap slots filled

    def reset(self, fail_open: bool = True) -> None:
        """Back to a just-loaded state, rules aside: no flows, names, dead groups or listeners; classified."""
        self.set_walk(False)
        self.program.set_domain_no_match(False)
        self.forget_flows()
        for ip in list(self._names):
            self.forget_name(str(ip))
        for key in self._health:
            self.program.bpf[b"group_health"][ct.c_int(key)] = ct.c_uint8(0)
        self._health.clear()
        for slot in self._listeners:
            self.program.clear_listener(slot)
        self._listeners.clear()
        self.set_fail_open(fail_open)

    def set_fail_open(self, fail_open: bool) -> None:
        """params.fail_open: pass (True) or drop a packet for the control plane when no listener is there."""
        p = self.program.params[ct.c_int(0)]
        p.fail_open = int(fail_open)
        self.program.params[ct.c_int(0)] = p
        self.fail_open = fail_open

    # -- rules ----------------------------------------------------------------------
    def load(self, config: str | RuleSet, forget_flows: bool = True) -> KernelRules:
        """Write a rule set (a config's text, or a RuleSet) into the inactive generation and flip to it.

        `forget_flows` empties routing_tuples, so the next packet of any flow is
        decided afresh by these rules.
        """
        rules = self.write_inactive(config)
        self.flip()
        if forget_flows:
            self.forget_flows()
        return rules

    def write_inactive(self, config: str | RuleSet) -> KernelRules:
        """Write rules into the inactive generation, not yet seen by packets; `flip()` shows them.

        Names taught with `learn_name` get their bits for the new rules, as the
        control plane writes them before a flip.
        """
        ruleset, rules = self._compile(config)
        gen = self.program.write_inactive(rules, initial=not self._loaded)
        for addr, name in self._names.items():
            self._write_bits(addr, {gen: domain_bitmap(rules.domain_functions, name)})
        self._pending = (gen, ruleset, rules)
        return rules

    def flip(self) -> int:
        """Make the generation `write_inactive` wrote the active one (one params write); returns it."""
        assert self._pending is not None, "write_inactive() first"
        gen, self.ruleset, self.kernel_rules = self._pending
        self.program.activate(gen)
        self.generation, self._loaded, self._pending = gen, True, None
        return gen

    def _compile(self, config: str | RuleSet) -> tuple[RuleSet, KernelRules]:
        ruleset = parse_config(config, "harness.toml").routing if isinstance(config, str) else config
        # interface() names resolve in the harness's namespace, where the packets come in.
        return ruleset, compile_rules(ruleset, self.program.max_match_sets, lambda n: self.ns.ifindex.get(n, 0))

    def set_walk(self, walk: bool) -> None:
        """Decide new flows by the rule walk (True) or, where the generation has one, the classifier."""
        self.program.set_walk(walk)

    @property
    def classified(self) -> bool:
        """Whether the active generation's new flows are decided by the classifier (not the walk)."""
        cls = self.program.classifiers.get(self.generation)
        return bool(cls and cls.ok and not self.program.walk)

    def forget_flows(self) -> None:
        """Empty routing_tuples and relayed_tuples: every flow is new again."""
        self.program.tuples.clear()
        self.program.relayed.clear()

    def learn_name(self, addr: str, name: str) -> None:
        """`addr` answers to `name`: write its domain bits for every generation, as the DNS side does."""
        assert self.kernel_rules is not None, "load() rules first"
        ip = ipaddress.ip_address(addr)
        self._names[ip] = name
        self._write_bits(ip, {self.generation: domain_bitmap(self.kernel_rules.domain_functions, name)})

    def forget_name(self, addr: str) -> None:
        ip = ipaddress.ip_address(addr)
        self._names.pop(ip, None)
        self.program.forget_domain(ip)

    def _write_bits(self, ip: Any, bits: dict[int, int]) -> None:
        old = self.program.domain_bits(ip) or {}
        self.program.set_domain_bits(ip, {**old, **bits})

    def domain_bits(self, addr: str) -> int | None:
        """The active generation's bits the kernel holds for `addr` (None: no name known)."""
        bits = self.program.domain_bits(ipaddress.ip_address(addr))
        return None if bits is None else bits[self.generation]

    def set_group_health(self, group: str, value: int) -> None:
        """group_health of `group` in the active generation: GROUP_DEAD4/6 | a GROUP_DEAD_* action."""
        assert self.ruleset is not None
        index = self.ruleset.groups.index(group)
        self.program.set_group_health(self.generation, index, value)
        self._health.add(self.generation * ABI.MAX_GROUPS + index)

    # -- sockets for the listeners sockmap ---------------------------------------------
    def socket(self, family: socket.AddressFamily, kind: socket.SocketKind) -> socket.socket:
        """A socket made inside the harness's namespace (where lan_ingress's lookups run)."""
        with self.ns.entered():
            return socket.socket(family, kind)

    def set_listener(self, slot: int, sock: socket.socket) -> None:
        """Put `sock` into listeners[slot] (LISTENER_*), as the control plane puts its listeners there."""
        self.program.set_listener(slot, sock)
        self._listeners.add(slot)

    def clear_listener(self, slot: int) -> None:
        self.program.clear_listener(slot)
        self._listeners.discard(slot)

    # -- packets --------------------------------------------------------------------
    def run(self, packet: Packet | bytes, iface: str = "lan0", mark: int = 0, keep_flow: bool = False,
            repeat: int = 1, ingress_ifindex: int | None = None) -> Verdict:
        """Run lan_ingress on `packet` as if it came in on `iface` (a link of the harness's namespace).

        The flow's earlier decision is forgotten first (unless `keep_flow`), so
        the packet is decided by the loaded rules. Returns the decision filed in
        routing_tuples (None for raw bytes, which have no flow key to look up).
        The kernel refuses (EINVAL) a frame shorter than Ethernet + its IP header.
        """
        data = packet.build() if isinstance(packet, Packet) else packet
        key = packet.flow_key() if isinstance(packet, Packet) else None
        if key is not None and not keep_flow:
            self.program.forget_flow(key)
            self.program.forget_relayed([self.program.relayed_key(key)])
        ifindex = self.ns.ifindex[iface]
        ctx = SkBuff(mark=mark, ifindex=ifindex,
                     ingress_ifindex=ifindex if ingress_ifindex is None else ingress_ifindex)
        before = self.program.counters()
        with self.ns.entered():
            r = prog_test_run(self.program.ingress.fd, data, repeat, ctx)
        counters = _counters_delta(before, self.program.counters())
        flow = self.program.flow(key) if key is not None else None
        name = None
        if flow is not None:
            name = self.ruleset.outbound_name(flow.outbound) if self.ruleset else str(flow.outbound)
        assert r.ctx is not None
        return Verdict(r.retval, flow, name, r.ctx.mark, counters, r.duration_ns)

    # -- the user-space matcher, for comparison -----------------------------------------
    def facts(self, packet: Packet, iface: str = "lan0") -> FlowFacts:
        """What the control plane would know of the packet's flow: its interfaces from this namespace's
        links and routes, and the name bits the kernel holds for its destination."""
        return packet.facts(iface, self.ns.route_out(packet.dst), self.domain_bits(packet.dst))

    def expected(self, packet: Packet, iface: str = "lan0") -> Decision:
        """The user-space matcher's decision for the packet's flow, on the loaded rules."""
        assert self.ruleset is not None
        return decide(self.ruleset, self.facts(packet, iface))

    def close(self) -> None:
        self.program.close()
        self.ns.close()


_shared: RouteHarness | None = None


def shared_harness() -> RouteHarness:
    """One RouteHarness for the whole process, made on first use and closed at exit.

    BCC compiles for seconds; test modules share one program and each loads
    its own rules (`reset()` first: a module must not see another's state).
    """
    global _shared
    if _shared is None:
        _shared = RouteHarness()
        atexit.register(_shared.close)
    return _shared
