"""The control plane: the owner of one namespace's daetui, its wiring and its lifecycle.

    plane = ControlPlane(config, RunPaths(run_dir))
    await plane.start()      # claims the run dir, loads the kernel side, listens
    plane.snapshot()         # the state of every pane (cheap; see Snapshot)
    await plane.stop()       # undoes every system change

Its parts, each in a module of its own:

- pipeline.py: every relayed flow from accept to finish (one TcpFlow per connection; UDP's first datagram);
- decision.py: where a flow goes (the kernel's record, else the rules here; again by a sniffed name);
- kernel_sync.py: the kernel's copy of names' domain bits, group health and rule generations;
- workers.py: the relay worker processes (global.relay_workers), which carry TCP flows the pipeline plans;
- dns_service.py: the DNS controller, its listeners and `dns.bind`;
- reload.py: a new config (reload, rule edits, their preview, the abort of flows);
- snapshot.py: what the console shows, as plain values.

The methods below are the plane's API: the control socket (server.py) serves
them, and the console and the CLI reach the plane only through it.

Threads: relays run on the event loop; netlink and BCC work (blocking) on
the single `daetui-netlink` thread; the interface monitor on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from daetui.abi.flowrecord import RawFlows
from daetui.config.load import Config
from daetui.control.budget import release_freed_memory
from daetui.control.connections import ConnectionTable
from daetui.control.decision import Decider
from daetui.control.dns_service import DnsService
from daetui.control.events import EventBus
from daetui.control.heartbeat import Heartbeat
from daetui.control.kernel_sync import KernelSync
from daetui.control.listeners import Listeners, open_listeners
from daetui.control.logbridge import EventLogHandler
from daetui.control.names import NameBook
from daetui.control.pipeline import Pipeline
from daetui.control.relayed import RelayedSweep
from daetui.control.reload import Reloader
from daetui.control.snapshot import build_snapshot, map_view
from daetui.control.state import ApiStatus, LogLine, MapEntries, MapInfo, ReloadResult, Snapshot
from daetui.control.udp import UdpNat
from daetui.control.workers import RelayWorkers
from daetui.dataplane.cleanup import cleanup_leftovers
from daetui.dataplane.dataplane import Dataplane
from daetui.dataplane.monitor import InterfaceMonitor, Link
from daetui.dns.controller import ClientInfo, Pending
from daetui.dns.state import DnsTrace
from daetui.logsetup import LEVELS
from daetui.outbound.direct import DirectDialer
from daetui.outbound.manager import Outbounds
from daetui.paths import RunPaths, pid_is_daetui
from daetui.routing.explain import ExplainResult, Query, split_target
from daetui.routing.explain import explain as explain_rules
from daetui.routing.ruleset import RuleSet
from daetui.service import notify

__all__ = ["ControlPlane", "Snapshot", "StartError"]

log = logging.getLogger("daetui.control")


class StartError(RuntimeError):
    """The control plane could not start; nothing it did is left behind."""


class ControlPlane:
    """Owns the listeners, relays, connection table, DNS, outbounds and the dataplane of one namespace."""

    def __init__(self, config: Config, run: RunPaths, kernel: bool = True) -> None:
        g = config.global_
        self.config = config
        self.run = run
        self.events = EventBus()
        self.connections = ConnectionTable()
        self.dataplane: Dataplane | None = Dataplane(run.state) if kernel else None
        self.dialer = DirectDialer(mark=g.so_mark_from_dae)
        self.outbounds = Outbounds(config, self.dialer)
        self.names = NameBook()
        self.sync = KernelSync(self.dataplane, self.names, self.outbounds, config.routing, g.dead_group)
        self.outbounds.on_health = self.sync.write_group_health
        self.decider = Decider(self.sync, self.names, g.dial_mode)
        self.dns = DnsService(config, self.sync, self.decider, self.outbounds)
        self.outbounds.resolve = self.dns.bootstrap_resolve
        self.outbounds.resolve_own = self.dns.resolve_own
        self.pipeline = Pipeline(self.decider, self.outbounds, self.dialer, self.connections, self.events,
                                 g.sniffing_timeout)
        self.reloader = Reloader(self)
        self.listeners: Listeners | None = None
        self.udp: UdpNat | None = None
        self.monitor: InterfaceMonitor | None = None
        self.heartbeat: Heartbeat | None = None
        self.relayed: RelayedSweep | None = None
        self.workers: RelayWorkers | None = None
        self.log_handler: EventLogHandler | None = None
        self.netlink = ThreadPoolExecutor(1, thread_name_prefix="daetui-netlink")
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started = 0.0
        self.running = False
        self.on_stop_request: Callable[[], None] | None = None
        # The controller API (daetui/api, above this layer) reports itself here for the snapshot.
        self.api_status: Callable[[], ApiStatus] | None = None
        self._claimed = False

    @property
    def ruleset(self) -> RuleSet:
        """The rules in force."""
        return self.sync.current

    @property
    def generation(self) -> int:
        return self.sync.generation

    # -- lifecycle ------------------------------------------------------------------
    async def claim(self) -> None:
        """Take the run dir: refuse if a daemon runs there, clean up after one that crashed."""
        if self._claimed:
            return
        loop = self._loop = asyncio.get_running_loop()
        if self.log_handler is None:
            self.log_handler = EventLogHandler(self.events, loop)
            logging.getLogger().addHandler(self.log_handler)
        # Netlink work (pyroute2) runs on its own thread, never on this loop.
        await loop.run_in_executor(self.netlink, self._claim_run_dir)
        self._claimed = True

    def _claim_run_dir(self) -> None:
        self.run.ensure()
        try:
            pid = int(self.run.pid.read_text().strip())
        except (OSError, ValueError):
            pid = 0
        if pid_is_daetui(pid):
            raise StartError(f"daetui is already running here (pid {pid}, run dir {self.run.root})")
        if self.dataplane is not None:
            undone = cleanup_leftovers(self.run.state, discard_foreign=self.run.per_netns)
            for line in undone:
                log.warning("cleaned up after a daemon that did not stop: %s", line)
        tmp = self.run.pid.with_suffix(".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, self.run.pid)

    async def start(self) -> None:
        """Claim the run dir (if not yet), listen, load and attach."""
        await self.claim()
        loop = asyncio.get_running_loop()
        g = self.config.global_
        try:
            self.pipeline.start(g)  # the descriptor limit raised, the relay path's budgets set
            self.listeners = open_listeners(g.tproxy_port)
            if self.dataplane is not None:
                dp, slots = self.dataplane, self.listeners.slots()
                await loop.run_in_executor(self.netlink, lambda: dp.start(
                    self.ruleset, g.lan_interface, slots, fail_open=g.fail_open,
                    auto_config=g.auto_config_kernel_parameter, heartbeat_timeout=g.heartbeat_timeout,
                    flow_table_size=g.flow_table_size, domain_table_size=g.domain_table_size,
                    wan_interfaces=g.wan_interface, so_mark=g.so_mark_from_dae, bypass_marks=g.bypass_marks,
                    cgroup=g.cgroup, domain_no_match=g.unknown_domain == "no_match", workers=g.relay_workers))
                assert dp.program is not None
                self.outbounds.marks_on_dials = dp.own_sockets_known
                if not dp.own_sockets_known and any(e.rule.outbound.mark for e in self.ruleset.entries):
                    log.warning("direct(mark: ..) rules: the flows daetui dials itself carry so_mark_from_dae, not "
                                "the rule's mark (wan_egress could not tell them from the router's own flows)")
                self.heartbeat = Heartbeat(dp.program.beat, g.heartbeat_timeout)
                self.heartbeat.start()
                self.relayed = RelayedSweep(dp.program, lambda: self.connections.open.values(), self.netlink)
                self.relayed.start()
                self.sync.loaded(dp.kernel_rules)
                release_freed_memory()  # what compiling the programs took and freed
                self.monitor = InterfaceMonitor(self._link_changed, on_default_route=self._default_route_changed
                                                if "auto" in g.wan_interface else None)
                self.monitor.start()
            self.pipeline.accept(list(self.listeners.tcp.values()))
            if self.dataplane is not None and self.dataplane.program is not None and g.relay_workers:
                self.workers = self.pipeline.workers = RelayWorkers(
                    self.pipeline, self.dataplane.program, g.relay_workers, list(self.listeners.tcp), g)
                await self.workers.start()
            self.udp = self.pipeline.udp = UdpNat(self.pipeline.open_udp, self.pipeline.finish,
                                                  idle_timeout=g.udp_timeout, budget=self.pipeline.budget,
                                                  buffer_bytes=g.udp_buffer_bytes,
                                                  flow_buffer_bytes=g.udp_flow_buffer_bytes)
            self.udp.start(list(self.listeners.udp.values()))
            self.dns.start(self.listeners)
            self.outbounds.start()
        except BaseException as e:
            await self._teardown()
            if isinstance(e, Exception):
                raise StartError(str(e)) from e
            raise
        self.started = time.time()
        self.running = self.pipeline.running = True
        bound = ", ".join(self.dataplane.state.bindings) if self.dataplane else "none (no kernel side)"
        log.info("daetui started: tproxy port %d, interfaces bound: %s", g.tproxy_port, bound or "none")
        self.events.publish("started", port=g.tproxy_port)

    async def stop(self) -> None:
        """Stop relaying and undo every change to the system."""
        if not self.running:
            return
        self.running = self.pipeline.running = False
        log.info("daetui stopping")
        self.events.publish("stopping")
        await self._teardown()
        log.info("daetui stopped; system changes undone")

    def request_stop(self) -> None:
        """Ask whoever runs this plane to stop it (the control socket's `stop`)."""
        if self.on_stop_request is not None:
            self.on_stop_request()

    async def _teardown(self) -> None:
        if self.heartbeat is not None:
            await self.heartbeat.stop()
            self.heartbeat = None
        if self.relayed is not None:
            await self.relayed.stop()
            self.relayed = None
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None
        # Detach first: from here on the LAN's traffic no longer comes to us.
        if self.dataplane is not None:
            loop = asyncio.get_running_loop()
            problems = await loop.run_in_executor(self.netlink, self.dataplane.stop)
            for p in problems:
                log.error("could not undo: %s", p)
        await self.pipeline.stop_accepting()
        if self.workers is not None:
            await self.workers.stop()
        if self.udp is not None:
            await self.udp.stop()
        await self.dns.stop()
        await self.outbounds.stop()
        await self.pipeline.stop()
        if self.listeners is not None:
            self.listeners.close()
        self.netlink.shutdown(wait=True)
        with contextlib.suppress(OSError):
            if self.run.pid.read_text().strip() == str(os.getpid()):
                self.run.pid.unlink()
        if self.log_handler is not None:
            logging.getLogger().removeHandler(self.log_handler)

    def _link_changed(self, what: str, link: Link) -> None:
        """From the monitor thread: bind a configured interface that appeared, forget one that went."""
        dp, loop = self.dataplane, self._loop
        if dp is None or loop is None:
            return

        def apply() -> None:
            try:
                dp.link_changed(link.name, appeared=what == "new")
            except Exception as e:
                log.error("binding %s: %s", link.name, e)
            if dp.kernel_rules is not None and dp.kernel_rules.names_interface(link.name):
                # interface() holds indices: an interface it names came or went, so compile again.
                loop.call_soon_threadsafe(lambda: self.running and loop.create_task(self._interfaces_changed(link)))

        def schedule() -> None:
            if self.running:
                loop.run_in_executor(self.netlink, apply)
        loop.call_soon_threadsafe(schedule)

    async def _interfaces_changed(self, link: Link) -> None:
        result = await self.reload(self.config)
        if not result.ok:
            log.error("interface %s came or went: the rules naming it could not be compiled again: %s", link.name,
                      result.message)

    def _default_route_changed(self) -> None:
        """From the monitor thread: a default route came or went; `auto` WAN interfaces follow."""
        dp, loop = self.dataplane, self._loop
        if dp is None or loop is None:
            return

        def apply() -> None:
            try:
                dp.routes_changed()
            except Exception as e:
                log.error("following the default routes: %s", e)

        loop.call_soon_threadsafe(lambda: self.running and loop.run_in_executor(self.netlink, apply))

    # -- the API: flows, groups, DNS ----------------------------------------------------------
    def close_connections(self, ids: list[int]) -> int:
        """Close relayed connections (with a reset to the client); returns how many were open."""
        return self.pipeline.close(ids)

    def pin_node(self, group: str, node: str | None) -> None:
        """Make `group` use `node` for new flows while it is alive (None: its policy again)."""
        self.outbounds.pin(group, node)
        log.info("group %s: %s", group, f"pinned to {node}" if node else "unpinned")

    async def check_nodes(self, names: list[str]) -> None:
        """Check these nodes now (all of a group's when a group is named)."""
        todo = []
        for n in names:
            g = self.outbounds.groups.get(n)
            todo += [m for m, _ in g.members] if g is not None else [n]
        await asyncio.gather(*(self.outbounds.check_node(n) for n in dict.fromkeys(todo) if n in self.outbounds.nodes))

    async def dns_lookup(self, name: str, qtype: str = "A") -> DnsTrace:
        """Resolve through the DNS controller (the console's query box)."""
        return await self.dns.lookup(name, qtype)

    def dns_flush(self) -> int:
        return self.dns.flush()

    async def dns_exchange(self, query: bytes) -> bytes | None:
        """One DNS query (wire format) answered as a client's would be (rules, cache, upstreams): the reply's
        wire, or None if the controller drops it. The controller API's /dns/query."""
        controller, client = self.dns.controller, ClientInfo("api")
        reply = controller.begin(query, client)
        return await controller.complete(reply, client) if isinstance(reply, Pending) else reply

    def names_of(self, addr: str) -> list[str]:
        """The names DNS gave `addr`, the most recent last. Safe from a thread: one read of the book's entry."""
        try:
            return self.names.names(ipaddress.ip_address(addr))
        except ValueError:
            return []

    def learn_name(self, addr: str, name: str) -> None:
        """`addr` answers to `name` (no expiry): from now on the kernel routes its flows by domain rules.

        For tests and the control socket; the DNS controller feeds answers with their TTL.
        """
        self.sync.learn(addr, name)

    def explain(self, target: str, port: int | None = None, proto: str = "tcp", mac: str | None = None,
                iface: str | None = None, pname: str | None = None, src: str | None = None,
                sport: int | None = None, dscp: int = 0, wan: str | None = None) -> ExplainResult:
        """explain, with what this daemon knows: the names DNS gave the address, the kernel's bits."""
        q = Query(target, port, proto, mac, iface, wan, pname, src, dscp, sport)
        addr, domain, _ = split_target(target)
        names: list[str] = []
        bits = None
        if addr is None and domain is not None:
            # A name: if DNS gave it an address, explain the flow to that address.
            for ip in self.names.addresses():
                if domain in self.names.names(ip):
                    addr = str(ip)
                    break
        if addr is not None:
            ip = ipaddress.ip_address(addr)
            names = self.names.names(ip)
            bits = self.sync.domain_bits(ip)
        return explain_rules(self.ruleset, q, addr, names, bits, self.config.global_.unknown_domain)

    # -- the API: reload ------------------------------------------------------------------------
    async def reload_from_file(self, abort: bool = False) -> ReloadResult:
        """Read the config file again and reload it (SIGUSR1, `daetui reload`, the console)."""
        told = self.running and notify.reloading()  # systemd shows "reloading" until READY=1
        try:
            return await self.reloader.from_file(abort)
        finally:
            if told:
                notify.ready()

    async def reload(self, new: Config, abort: bool = False) -> ReloadResult:
        """Apply a new config without dropping a flow; on any problem change nothing and say why."""
        return await self.reloader.apply(new, abort)

    async def edit_rules(self, op: str, index: int = 0, text: str = "", to: int = 0, enabled: bool = True,
                         expect: str | None = None) -> ReloadResult:
        """Change a rule in the config file (comments kept), then reload it (see Reloader.edit)."""
        return await self.reloader.edit(op, index, text, to, enabled, expect)

    async def preview_reload(self) -> ReloadResult:
        """What reloading the file would change (nothing is applied)."""
        return await self.reloader.preview()

    async def set_rules_enabled(self, changes: dict[int, bool], persist: bool = False) -> ReloadResult:
        """Turn rules on (True) or off by index, flows kept: until the next reload, or in the file too with
        `persist` (see Reloader.set_enabled). The controller API's PATCH /rules/disable."""
        return await self.reloader.set_enabled(changes, persist)

    def rules_in_force(self) -> tuple[RuleSet, dict[int | None, tuple[int, float | None]]]:
        """The rules in force and each one's (hits, last hit) by index, None the fallback's: read together,
        as the snapshot reads them (one batch read of the kernel's counters)."""
        sync = self.sync
        return sync.ruleset(sync.generation), sync.rule_hits()

    def reload_counts(self) -> tuple[int, int]:
        """Configs put in force since start (reloads, rule edits and toggles), and reloads refused."""
        return self.reloader.applied, self.reloader.refused

    # -- the API: state -------------------------------------------------------------------------
    def raw_flows(self) -> RawFlows | None:
        """The kernel's flows as raw records (one batch syscall; safe from any thread)."""
        prog = self.sync.program
        return prog.raw_flows() if prog is not None else None

    def snapshot(self, raw_flows: RawFlows | None = None, with_kernel_flows: bool = True,
                 with_dns: bool = True) -> Snapshot:
        """Everything the console shows, as plain values. Call on the plane's loop.

        The kernel flows are passed in when read elsewhere (the control server
        reads them off the loop); otherwise they are read here.
        """
        if raw_flows is None and with_kernel_flows:
            raw_flows = self.raw_flows()
        return build_snapshot(self, raw_flows, with_dns)

    def recent_logs(self) -> list[LogLine]:
        return list(self.log_handler.recent) if self.log_handler else []

    @property
    def log_level(self) -> str:
        """The daemon's log level now: error, warn, info, debug, or silent."""
        level = logging.getLogger().level
        if level > logging.CRITICAL:
            return "silent"
        return next((name for name, n in LEVELS.items() if n == level), "info")

    def set_log_level(self, level: str) -> None:
        """Log at `level` from now on (global.log_level's names, or silent: nothing); the controller API's
        PATCH /configs. The config file is not changed: a restart logs at its level again."""
        root = logging.getLogger()
        if level != "silent":
            root.setLevel(LEVELS[level])
            log.info("log level: %s", level)
        else:
            log.warning("log level: silent (nothing more is logged)")
            root.setLevel(logging.CRITICAL + 1)
        for name in ("pyroute2", "asyncio"):  # chatty at debug: their warnings only, as setup_logging keeps them
            logging.getLogger(name).setLevel(max(logging.WARNING, root.level))

    def kernel_rulesets(self) -> dict[int, RuleSet]:
        """The rule set each kernel generation was written from: what a flow record's rule_index means."""
        return {gen: self.sync.ruleset(gen) for gen in range(2)}

    def maps_info(self) -> list[MapInfo]:
        """Every map with type, size and fill. Blocking (syscalls): call off the loop."""
        mv = map_view(self)
        return mv.maps_info() if mv else []

    def map_entries(self, name: str, search: str = "", limit: int = 5000) -> MapEntries:
        """One map's entries, decoded. Blocking: call off the loop."""
        mv = map_view(self)
        if mv is None:
            return MapEntries(name, ("note",), (("no kernel side",),), 0)
        return mv.entries(name, search, limit)
