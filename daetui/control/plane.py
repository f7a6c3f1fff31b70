"""The control plane: listeners, relays, the connection table, and the dataplane.

    plane = ControlPlane(config, RunPaths(run_dir))
    await plane.start()      # claims the run dir, loads the kernel side, listens
    plane.snapshot()         # the state of every pane (cheap; see Snapshot)
    await plane.stop()       # undoes every system change

A flow handed over by the kernel arrives on a transparent listener; its
original destination is the accepted socket's own address. The kernel's
decision is read from `routing_tuples`; if it is not there (evicted, or no
kernel side), the user-space matcher decides with the same rules.

Threads: relays run on the event loop; netlink and BCC work (blocking) on
the single `daetui-netlink` thread; the interface monitor on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from daetui.abi.constants import ABI
from daetui.abi.flowrecord import FlowKey, RawFlows
from daetui.config.edit import EditError, RulesEditor
from daetui.config.errors import ConfigError
from daetui.config.load import Config, load_config
from daetui.control.connections import Connection, ConnectionTable, Endpoint
from daetui.control.events import EventBus
from daetui.control.listeners import Listeners, open_listeners
from daetui.control.logbridge import EventLogHandler
from daetui.control.names import NameBook
from daetui.control.relay import HAVE_SPLICE, relay, relay_stream
from daetui.control.relay_framed import relay_framed
from daetui.control.state import (
    Health,
    InterfaceInfo,
    LogLine,
    MapEntries,
    MapInfo,
    ReloadResult,
    RuleInfo,
    Snapshot,
)
from daetui.control.udp import UdpNat
from daetui.dataplane.cleanup import cleanup_leftovers
from daetui.dataplane.dataplane import Dataplane
from daetui.dataplane.mapview import MapView
from daetui.dataplane.monitor import InterfaceMonitor, Link
from daetui.dns.controller import DnsController
from daetui.dns.serve import DnsServer
from daetui.dns.state import DnsTrace
from daetui.dns.upstream import UpstreamRoute, bootstrap_resolve
from daetui.net.address import is_address
from daetui.net.stream import Datagrams, Dialer, DialError, framing_of
from daetui.outbound.direct import DirectDialer
from daetui.outbound.manager import Outbounds
from daetui.paths import RunPaths, pid_is_daetui
from daetui.routing.compile import CompileError, KernelRules
from daetui.routing.explain import ExplainResult, Query, split_target
from daetui.routing.explain import explain as explain_rules
from daetui.routing.matcher import FlowFacts, decide
from daetui.routing.ruleset import BLOCK, DIRECT, USERSPACE, RuleSet
from daetui.sniff import SniffResult, sniff

log = logging.getLogger("daetui.control")
conn_log = logging.getLogger("daetui.conn")

SNIFF_MAX = 16384  # a ClientHello or a request head fits; more is not waited for


class StartError(RuntimeError):
    """The control plane could not start; nothing it did is left behind."""


def _mac_text(mac: bytes) -> str | None:
    return ":".join(f"{b:02x}" for b in mac) if any(mac) else None


class ControlPlane:
    """Owns the listeners, relays, connection table and the dataplane of one namespace."""

    def __init__(self, config: Config, run: RunPaths, kernel: bool = True) -> None:
        self.config = config
        self.run = run
        self.events = EventBus()
        self.connections = ConnectionTable()
        self.dataplane: Dataplane | None = Dataplane(run.state) if kernel else None
        self.dialer = DirectDialer(mark=config.global_.so_mark_from_dae)
        self.outbounds = Outbounds(config, self.dialer, resolve=self._bootstrap_resolve)
        self.outbounds.on_health = self._write_group_health
        self._group_health_written: dict[tuple[int, int], int] = {}
        self.ruleset: RuleSet = config.routing
        self._rulesets: dict[int, RuleSet] = {0: config.routing, 1: config.routing}
        self.listeners: Listeners | None = None
        self.udp: UdpNat | None = None
        self.monitor: InterfaceMonitor | None = None
        self.log_handler: EventLogHandler | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._accept_tasks: list[asyncio.Task[None]] = []
        self._conn_tasks: dict[int, asyncio.Task[None]] = {}
        self._netlink = ThreadPoolExecutor(1, thread_name_prefix="daetui-netlink")
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started = 0.0
        self.running = False
        self.use_splice = HAVE_SPLICE
        self.on_stop_request: Callable[[], None] | None = None
        self._claimed = False
        self.names = NameBook()
        self._bits_written: dict[Any, dict[int, int]] = {}   # the kernel's domain bits, as last written
        self.dns = DnsController(config.dns, route=self._route_upstream, feed=self._dns_feed,
                                 mark=config.global_.so_mark_from_dae,
                                 bootstrap_resolver=config.global_.fallback_resolver,
                                 kernel_names=lambda: len(self.names), dial=self._upstream_dialer)
        self.dns_server: DnsServer | None = None
        self._upstream_routes: dict[tuple[str, int, str], UpstreamRoute] = {}  # emptied by each reload
        self._dns_bound: list[socket.socket] = []
        self._kernel_rules: dict[int, KernelRules] = {}
        # Rule hits of earlier generations, by rule id: a rule that survives a
        # reload keeps its count.
        self._hits_carry: dict[str, tuple[int, float | None]] = {}
        self._reloading = asyncio.Lock()

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
        await loop.run_in_executor(self._netlink, self._claim_run_dir)
        self._claimed = True

    async def start(self) -> None:
        """Claim the run dir (if not yet), listen, load and attach."""
        await self.claim()
        loop = asyncio.get_running_loop()
        g = self.config.global_
        try:
            self.listeners = open_listeners(g.tproxy_port)
            if self.dataplane is not None:
                dp, slots = self.dataplane, self.listeners.slots()
                await loop.run_in_executor(self._netlink, lambda: dp.start(
                    self.ruleset, g.lan_interface, slots, fail_open=g.fail_open,
                    auto_config=g.auto_config_kernel_parameter))
                if dp.kernel_rules is not None:
                    self._kernel_rules[0] = dp.kernel_rules
                self.monitor = InterfaceMonitor(self._link_changed)
                self.monitor.start()
            for sock in self.listeners.tcp.values():
                self._accept_tasks.append(asyncio.ensure_future(self._accept_loop(sock)))
            self.udp = UdpNat(self._open_udp, self._finish, idle_timeout=g.udp_timeout)
            self.udp.start(list(self.listeners.udp.values()))
            self._start_dns()
            self.outbounds.start()
        except BaseException as e:
            await self._teardown()
            if isinstance(e, Exception):
                raise StartError(str(e)) from e
            raise
        self.started = time.time()
        self.running = True
        bound = ", ".join(self.dataplane.state.bindings) if self.dataplane else "none (no kernel side)"
        log.info("daetui started: tproxy port %d, LAN interfaces bound: %s", g.tproxy_port, bound or "none")
        self.events.publish("started", port=g.tproxy_port)

    def _start_dns(self) -> None:
        assert self.listeners is not None
        self.dns.start()
        self.dns_server = DnsServer(self.dns, self._dns_ifname)
        for sock in self.listeners.dns_udp.values():
            self.dns_server.serve_udp(sock, hijacked=True)
        for sock in self.listeners.dns_tcp.values():
            self.dns_server.serve_tcp(sock, hijacked=True)
        self._bind_dns(self.config.dns.bind)
        self._tasks.add(asyncio.ensure_future(self._expire_names()))

    def _bind_dns(self, bind: str) -> None:
        """Serve plain DNS on `dns.bind` too ("" for none); a failure is logged, not fatal."""
        for s in self._dns_bound:
            s.close()
        self._dns_bound.clear()
        if not bind or self.dns_server is None:
            return
        host, _, port = bind.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            u = socket.socket(family, socket.SOCK_DGRAM)
            self._dns_bound.append(u)
            u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            u.bind((host, int(port)))
            t = socket.socket(family, socket.SOCK_STREAM)
            self._dns_bound.append(t)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            t.bind((host, int(port)))
            t.listen(128)
        except (OSError, ValueError) as e:
            log.error("dns.bind %s: %s", bind, e)
            for s in self._dns_bound:
                s.close()
            self._dns_bound.clear()
            return
        self.dns_server.serve_udp(u, hijacked=False)
        self.dns_server.serve_tcp(t, hijacked=False)
        log.info("dns: serving on %s (UDP and TCP)", bind)

    def _dns_ifname(self, client: Endpoint, server: Endpoint) -> str | None:
        """The LAN interface of a DNS-over-TCP flow, from the kernel's record of it."""
        prog = self.dataplane.program if self.dataplane else None
        if prog is None:
            return None
        key = FlowKey(ipaddress.ip_address(client[0]), client[1], ipaddress.ip_address(server[0]), server[1], "tcp")
        kflow = prog.flow(key)
        if kflow is None:
            return None
        try:
            return socket.if_indextoname(kflow.ifindex)
        except OSError:
            return None

    def _route_upstream(self, ip: str, port: int, proto: str) -> UpstreamRoute:
        """How the routing rules send the router's own connection to a DNS upstream (kept until a reload)."""
        key = (ip, port, proto)
        hit = self._upstream_routes.get(key)
        if hit is None:
            if len(self._upstream_routes) > 256:
                self._upstream_routes.clear()
            hit = self._upstream_routes[key] = self._decide_upstream(ip, port, proto)
        return hit

    async def _bootstrap_resolve(self, host: str) -> str:
        """A name's address from global.fallback_resolver (subscriptions' servers)."""
        g = self.config.global_
        return await bootstrap_resolve(g.fallback_resolver, host, g.so_mark_from_dae, 5.0)

    def _upstream_dialer(self, outbound: str, family: int) -> tuple[Dialer, str] | None:
        """A DNS upstream routed to a proxy group: the group's node now (None: not a group of nodes)."""
        dialer, node = self.outbounds.dialer(outbound, family)
        return (dialer, node) if node is not None else None

    def _decide_upstream(self, ip: str, port: int, proto: str) -> UpstreamRoute:
        d = decide(self.ruleset, FlowFacts(None, ipaddress.ip_address(ip), None, port, proto),
                   unknown_name_matches=False, with_trace=False)
        entry = self.ruleset.by_index(d.rule_index) if d.rule_index is not None else None
        rule = f"rule #{entry.index + 1} {entry.rule}" if entry else "fallback"
        outbound = d.outbound or self.ruleset.fallback
        # The route is shown, a `block` refuses the upstream, and a group's node carries it (_upstream_dialer).
        return UpstreamRoute(outbound, rule, blocked=outbound == BLOCK)

    def _dns_feed(self, names: tuple[str, ...], ips: tuple[Any, ...], deadline: float) -> None:
        """An answer's addresses and names, into the kernel before the reply leaves."""
        for ip in ips:
            changed = False
            for name in names:
                new, dropped = self.names.learn(ip, name, deadline)
                changed |= new
                for old in dropped:
                    self._forget_kernel_name(old)
            if changed:
                self._write_bits(ip)

    async def _expire_names(self) -> None:
        """Names whose TTL ran out leave the kernel's domain map."""
        while True:
            await asyncio.sleep(1.0)
            changed, emptied = self.names.expire(time.monotonic())
            for ip in emptied:
                self._forget_kernel_name(ip)
            for ip in changed:
                self._write_bits(ip)

    async def dns_lookup(self, name: str, qtype: str = "A") -> DnsTrace:
        """Resolve through the controller (the console's query box)."""
        return await self.dns.lookup(name, qtype)

    def dns_flush(self) -> int:
        return self.dns.flush()

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

    async def stop(self) -> None:
        """Stop relaying and undo every change to the system."""
        if not self.running:
            return
        self.running = False
        log.info("daetui stopping")
        self.events.publish("stopping")
        await self._teardown()
        log.info("daetui stopped; system changes undone")

    def request_stop(self) -> None:
        """Ask whoever runs this plane to stop it (the control socket's `stop`)."""
        if self.on_stop_request is not None:
            self.on_stop_request()

    async def _teardown(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None
        # Detach first: from here on the LAN's traffic no longer comes to us.
        if self.dataplane is not None:
            loop = asyncio.get_running_loop()
            problems = await loop.run_in_executor(self._netlink, self.dataplane.stop)
            for p in problems:
                log.error("could not undo: %s", p)
        for t in self._accept_tasks:
            t.cancel()
        await asyncio.gather(*self._accept_tasks, return_exceptions=True)
        self._accept_tasks.clear()
        if self.udp is not None:
            await self.udp.stop()
        if self.dns_server is not None:
            await self.dns_server.stop()
        for s in self._dns_bound:
            s.close()
        self._dns_bound.clear()
        await self.dns.stop()
        await self.outbounds.stop()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.listeners is not None:
            self.listeners.close()
        self._netlink.shutdown(wait=True)
        with contextlib.suppress(OSError):
            if self.run.pid.read_text().strip() == str(os.getpid()):
                self.run.pid.unlink()
        if self.log_handler is not None:
            logging.getLogger().removeHandler(self.log_handler)

    # -- interfaces appearing and going ---------------------------------------------------
    def _link_changed(self, what: str, link: Link) -> None:
        """From the monitor thread: bind a configured interface that appeared, forget one that went."""
        if self._loop is None or link.name not in self.config.global_.lan_interface:
            return
        dp = self.dataplane
        if dp is None:
            return

        def apply() -> None:
            try:
                if what == "new":
                    dp.forget(link.name)  # a new index under a known name: the old binding is gone
                    dp.bind(link.name)
                else:
                    dp.forget(link.name)
            except Exception as e:
                log.error("binding %s: %s", link.name, e)

        def schedule() -> None:
            if self.running:
                self._loop.run_in_executor(self._netlink, apply)  # type: ignore[union-attr]
        self._loop.call_soon_threadsafe(schedule)

    # -- routing lookups ------------------------------------------------------------------
    def _route(self, proto: str, client: Endpoint, dst: Endpoint) -> tuple[int | None, str, str, str, str | None]:
        """(rule index, rule text, outbound, stage, client MAC) for a flow that reached us."""
        key = FlowKey(ipaddress.ip_address(client[0]), client[1], ipaddress.ip_address(dst[0]), dst[1], proto)
        kflow = None
        if self.dataplane is not None and self.dataplane.program is not None:
            kflow = self.dataplane.program.flow(key)
        if kflow is not None:
            ruleset = self._rulesets.get(kflow.generation, self.ruleset)
            entry = ruleset.by_index(kflow.rule_index) if kflow.rule_index is not None else None
            return (kflow.rule_index, entry.text if entry else "fallback",
                    ruleset.outbound_name(kflow.outbound), "kernel", _mac_text(kflow.mac))
        d = decide(self.ruleset, FlowFacts(key.src, key.dst, key.sport, key.dport, proto), with_trace=False)
        entry = self.ruleset.by_index(d.rule_index) if d.rule_index is not None else None
        return d.rule_index, entry.text if entry else "fallback", d.outbound, "userspace", None

    def _open_conn(self, proto: str, client: Endpoint, dst: Endpoint, relay_kind: str) -> Connection:
        rule_index, rule, outbound, stage, mac = self._route(proto, client, dst)
        return self.connections.add(proto=proto, src=client, dst=dst, rule_index=rule_index, rule=rule,
                                    outbound=outbound, stage=stage, mac=mac, relay=relay_kind)

    def _announce(self, conn: Connection) -> None:
        if conn_log.isEnabledFor(logging.INFO):  # describe() is work: skipped when nobody reads it
            conn_log.info("open %s", conn.describe())
        self.events.publish("conn.open", id=conn.id)

    def _wants_name(self, conn: Connection) -> bool:
        """Sniff this flow? When the kernel could not decide, or dial_mode wants the name of a proxied flow."""
        if conn.outbound == USERSPACE:
            return True
        return conn.outbound not in (DIRECT, BLOCK) and self.config.global_.dial_mode != "ip"

    def _decide_with_name(self, conn: Connection, result: SniffResult) -> None:
        """Route a flow again with the name sniffed from it (user-space stage)."""
        if result.name is not None and is_address(result.name.strip("[]")):
            result = SniffResult(None, result.protocol)  # Host: 203.0.113.12 names nothing
        conn.domain, conn.sniffed = result.name, result.protocol
        undecided = conn.outbound == USERSPACE
        if not undecided and not (self.config.global_.dial_mode == "domain++" and result.name):
            return
        facts = FlowFacts(ipaddress.ip_address(conn.src[0]), ipaddress.ip_address(conn.dst[0]), conn.src[1],
                          conn.dst[1], conn.proto, bytes.fromhex(conn.mac.replace(":", "")) if conn.mac else None,
                          domain=result.name)
        # Undecided: from the rule the kernel stopped at, a name not found matching nothing.
        d = decide(self.ruleset, facts, conn.rule_index or 0 if undecided else 0, unknown_name_matches=False,
                   with_trace=False)
        entry = self.ruleset.by_index(d.rule_index) if d.rule_index is not None else None
        conn.rule_index = d.rule_index
        conn.rule = entry.text if entry else "fallback"
        conn.outbound = d.outbound or self.ruleset.fallback
        conn.stage = "userspace"

    async def _sniff_tcp(self, sock: socket.socket) -> tuple[bytes, SniffResult]:
        """The client's first bytes (kept, to send on) and the name in them, within sniffing_timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.global_.sniffing_timeout
        data = b""
        result = SniffResult(need_more=True)
        while result.need_more and len(data) < SNIFF_MAX:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, SNIFF_MAX - len(data)), left)
            except TimeoutError:
                break  # the client waits for the server (SSH, SMTP): no name to find
            if not chunk:
                break
            data += chunk
            result = sniff(data, "tcp")
        return data, result

    def _finish(self, conn: Connection, error: str | None) -> None:
        self.connections.finish(conn, error)
        if conn_log.isEnabledFor(logging.INFO):
            conn_log.info("%s", conn.describe())
        self.events.publish("conn.close", id=conn.id)

    # -- TCP ---------------------------------------------------------------------------------
    async def _accept_loop(self, lsock: socket.socket) -> None:
        """Accept for as long as the listener has connections waiting; a task for each.

        The listener stays registered with the loop, and a wake-up takes every waiting
        connection: sock_accept registered and unregistered it (two epoll_ctl calls) and
        made a future per connection.
        """
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        fd = lsock.fileno()
        loop.add_reader(fd, wake.set)
        try:
            while True:
                try:
                    sock, addr = lsock.accept()
                except (BlockingIOError, InterruptedError):
                    wake.clear()
                    await wake.wait()
                    continue
                except OSError as e:
                    log.error("accept: %s", e)
                    # E.g. EMFILE: the waiting connections keep the listener readable, so it leaves
                    # the loop for the pause, or the loop would spin on it.
                    loop.remove_reader(fd)
                    await asyncio.sleep(0.1)
                    loop.add_reader(fd, wake.set)
                    continue
                task = loop.create_task(self._handle_tcp(sock, (addr[0], addr[1])))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            loop.remove_reader(fd)

    async def _handle_tcp(self, sock: socket.socket, client: Endpoint) -> None:
        sock.setblocking(False)
        try:
            name = sock.getsockname()
            dst: Endpoint = (name[0], name[1])
            conn = self._open_conn("tcp", client, dst, "splice" if self.use_splice else "copy")
        except Exception as e:
            log.error("tcp from %s: %s", client, e)
            sock.close()
            return
        me = asyncio.current_task()
        if me is not None:
            self._conn_tasks[conn.id] = me  # type: ignore[assignment]
        upstream = None
        try:
            first = b""
            if self._wants_name(conn):
                first, sniffed = await self._sniff_tcp(sock)
                self._decide_with_name(conn, sniffed)
            self._announce(conn)
            if conn.outbound == BLOCK:
                _reset(sock)
                self._finish(conn, "blocked")
                return
            family = 6 if ":" in dst[0] else 4
            dialer, node = self.outbounds.dialer(conn.outbound, family)
            conn.node = node
            try:
                upstream = await dialer.connect(self._dial_host(conn, node), dst[1])
            except DialError as e:
                if node is not None:
                    self.outbounds.failed(node, family, str(e))
                raise
            if first:
                await upstream.write(first)
                conn.up += len(first)
            framing = framing_of(upstream) if upstream.raw is None else None
            if upstream.raw is not None:
                error = await relay(sock, upstream.raw, _adder(conn, "up"), _adder(conn, "down"), self.use_splice)
            elif framing is not None:
                conn.relay = "framed"
                error = await relay_framed(sock, framing[0], framing[1], _adder(conn, "up"), _adder(conn, "down"))
            else:
                conn.relay = "stream"
                error = await relay_stream(sock, upstream, _adder(conn, "up"), _adder(conn, "down"))
            self._finish(conn, error)
        except asyncio.CancelledError:
            _reset(sock)
            self._finish(conn, "closed from the console" if self.running else "daetui stopped")
            if self.running and me is not None and me.cancelling():
                me.uncancel()  # closed on request: the plane goes on
                return
            raise
        except Exception as e:
            _reset(sock)
            self._finish(conn, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
        finally:
            self._conn_tasks.pop(conn.id, None)
            sock.close()
            if upstream is not None:
                upstream.close()

    def _dial_host(self, conn: Connection, node: str | None) -> str:
        """What a proxied flow asks its node for: the address, or (dial_mode) the sniffed name.

        `domain` dials the name only when DNS gave that name to the address (so a client cannot
        send a flow elsewhere by lying in its SNI); `domain+` and `domain++` always do.
        """
        mode = self.config.global_.dial_mode
        if node is None or not conn.domain or mode == "ip":
            return conn.dst[0]
        if mode == "domain" and conn.domain not in self.names.names(ipaddress.ip_address(conn.dst[0])):
            return conn.dst[0]
        return conn.domain

    def close_connections(self, ids: list[int]) -> int:
        """Close relayed connections (with a reset to the client); returns how many were open."""
        n = 0
        for cid in ids:
            task = self._conn_tasks.get(cid)
            if task is not None and not task.done():
                task.cancel()
                n += 1
                continue
            if self.udp is not None and self.udp.close_conn(cid):
                n += 1
        return n

    # -- UDP ------------------------------------------------------------------------------------
    async def _open_udp(self, client: Endpoint, dst: Endpoint, first: bytes
                        ) -> tuple[socket.socket | Datagrams, Connection] | None:
        conn = self._open_conn("udp", client, dst, "udp")
        if self._wants_name(conn):
            self._decide_with_name(conn, sniff(first, "udp"))  # a QUIC Initial names its server
        self._announce(conn)
        if conn.outbound == BLOCK:
            self._finish(conn, "blocked")
            return None
        family = 6 if ":" in dst[0] else 4
        try:
            dialer, node = self.outbounds.dialer(conn.outbound, family)
            conn.node = node
            if node is None:
                return self.dialer.udp_socket(*dst), conn
            return await dialer.datagrams(), conn
        except (OSError, DialError) as e:
            if conn.node is not None:
                self.outbounds.failed(conn.node, family, str(e))
            self._finish(conn, str(e))
            return None

    # -- state --------------------------------------------------------------------------------------
    def raw_flows(self) -> RawFlows | None:
        """The kernel's flows as raw records (one batch syscall; safe from any thread)."""
        prog = self.dataplane.program if self.dataplane else None
        return prog.raw_flows() if prog is not None else None

    def snapshot(self, raw_flows: RawFlows | None = None, with_kernel_flows: bool = True,
                 with_dns: bool = True) -> Snapshot:
        """Everything the console shows, as plain values. Call on the plane's loop.

        The kernel flows are passed in when read elsewhere (the control server
        reads them off the loop); otherwise they are read here.
        """
        dp = self.dataplane
        prog = dp.program if dp else None
        if raw_flows is None and with_kernel_flows:
            raw_flows = self.raw_flows()
        gen = dp.state.generation if dp else 0
        rs = self._rulesets.get(gen, self.ruleset)
        hits = prog.rule_hits(gen, len(rs.entries)) if prog is not None else {}
        rules = tuple(RuleInfo(e.index, e.text, e.enabled, e.name, e.id,
                               *self._with_carry(e.id, hits.get(e.index, (0, None))))
                      for e in rs.entries)
        slots = self.listeners.slots() if self.listeners else {}
        names = {v: k.lower() for k, v in ABI.prefixed("LISTENER_").items()}
        groups, nodes = self.outbounds.state()
        health = Health(
            pid=os.getpid(), started=self.started, config=self.config.source,
            tproxy_port=self.config.global_.tproxy_port, generation=gen, fallback=rs.fallback,
            fail_open=self.config.global_.fail_open, listeners=tuple(names[s] for s in sorted(slots)),
            match_sets=dp.state.match_sets if dp else 0,
            kernel_load_seconds=prog.load_seconds if prog is not None else 0.0, kernel=dp is not None)
        return Snapshot(
            time=time.time(), health=health, rules=rules, fallback_hits=hits.get(None, (0, None))[0],
            outbounds={i: n for n, i in rs.outbound_ids().items()}, interfaces=self._interfaces(),
            missing_interfaces=tuple(dp.state.missing) if dp else (), connections=tuple(self.connections.snapshot()),
            raw_flows=raw_flows, counters=prog.counters() if prog is not None else {},
            udp_nat_entries=len(self.udp.entries) if self.udp else 0, total_connections=self.connections.total,
            devices=dict(self.config.devices), dns=self.dns.state() if with_dns else None,
            groups=groups, nodes=nodes)

    def _interfaces(self) -> tuple[InterfaceInfo, ...]:
        dp = self.dataplane
        if dp is None:
            return ()
        stats = dp.program.interface_stats() if dp.program is not None else {}
        links = dict(self.monitor.links) if self.monitor else {}
        bound = {b.ifindex: b for b in dp.state.bindings.values()}
        wanted = set(self.config.global_.lan_interface)
        out = []
        for idx, link in sorted(links.items()):
            b = bound.get(idx)
            s = stats.get(idx, {})
            out.append(InterfaceInfo(
                index=idx, name=link.name, up=link.up, configured=link.name in wanted, bound=b is not None,
                since=b.since if b else None,
                programs=("lan_ingress (ingress)", "lan_egress (egress)") if b else (),
                rx_packets=s.get("rx_packets", 0), rx_bytes=s.get("rx_bytes", 0),
                tx_packets=s.get("tx_packets", 0), tx_bytes=s.get("tx_bytes", 0)))
        return tuple(out)

    def _with_carry(self, rule_id: str, now: tuple[int, float | None]) -> tuple[int, float | None]:
        carried = self._hits_carry.get(rule_id, (0, None))
        return carried[0] + now[0], _later(carried[1], now[1])

    # -- names (the DNS side's hook) ---------------------------------------------------------
    def learn_name(self, addr: str, name: str) -> None:
        """`addr` answers to `name` (no expiry): from now on the kernel routes its flows by domain rules.

        For tests and the control socket; the DNS controller feeds answers through `_dns_feed`, with their TTL.
        """
        ip = ipaddress.ip_address(addr)
        _, dropped = self.names.learn(ip, name)
        for old in dropped:
            self._forget_kernel_name(old)
        self._write_bits(ip)

    def _write_bits(self, ip: Any) -> None:
        dp = self.dataplane
        if dp is None or dp.program is None:
            return
        bits = {gen: self.names.bits(kr.domain_functions, ip) for gen, kr in self._kernel_rules.items()}
        if self._bits_written.get(ip) == bits:
            return  # a name that came and went again (CDNs): the kernel already holds these bits
        dp.program.set_domain_bits(ip, bits)
        self._bits_written[ip] = bits

    def _write_group_health(self, gens: list[int] | None = None, dead_group: str | None = None) -> None:
        """Tell the kernel which groups have no live node (per family), and what to do then."""
        dp = self.dataplane
        if dp is None or dp.program is None:
            return
        dead_group = dead_group or self.config.global_.dead_group
        action = {"reject": ABI.GROUP_DEAD_REJECT, "drop": ABI.GROUP_DEAD_DROP,
                  "direct": ABI.GROUP_DEAD_DIRECT}[dead_group]
        for gen in gens if gens is not None else list(self._kernel_rules):
            rs = self._rulesets.get(gen, self.ruleset)
            for i, group in enumerate(rs.groups[:ABI.MAX_GROUPS]):
                dead = self.outbounds.dead_families(group)
                value = (ABI.GROUP_DEAD4 if 4 in dead else 0) | (ABI.GROUP_DEAD6 if 6 in dead else 0)
                value |= action if value else 0
                if self._group_health_written.get((gen, i)) != value:
                    dp.program.set_group_health(gen, i, value)
                    self._group_health_written[(gen, i)] = value
                    if value:
                        log.warning("group %s has no live node over IPv%s: new flows %s", group,
                                    "/".join(str(f) for f in sorted(dead)),
                                    {"reject": "are reset", "drop": "are dropped", "direct": "go direct"}[dead_group])

    def _forget_kernel_name(self, ip: Any) -> None:
        self._bits_written.pop(ip, None)
        if self.dataplane is not None and self.dataplane.program is not None:
            self.dataplane.program.forget_domain(ip)

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
            prog = self.dataplane.program if self.dataplane else None
            if prog is not None:
                per_gen = prog.domain_bits(ip)
                bits = per_gen.get(self.generation) if per_gen else None
        return explain_rules(self.ruleset, q, addr, names, bits)

    # -- reload -----------------------------------------------------------------------------------
    async def reload_from_file(self, abort: bool = False) -> ReloadResult:
        """Read the config file again and reload it (SIGUSR1, `daetui reload`, the console)."""
        loop = asyncio.get_running_loop()
        try:
            new = await loop.run_in_executor(None, load_config, self.config.source)
        except ConfigError as e:
            log.error("reload refused: %s", e)
            self.events.publish("reload", ok=False, message=str(e))
            return ReloadResult(False, str(e), self.generation)
        return await self.reload(new, abort)

    @property
    def generation(self) -> int:
        return self.dataplane.state.generation if self.dataplane else 0

    async def reload(self, new: Config, abort: bool = False) -> ReloadResult:
        """Apply a new config without dropping a flow; on any problem change nothing and say why.

        The rules are compiled first, then written into the inactive generation,
        the names' bitmaps recomputed for it, and one write flips the kernel to
        it. Flows already decided keep their route; with `abort`, relayed flows
        whose route changed are reset and UDP ones decided again.
        """
        async with self._reloading:
            old = self.config
            problem = self._reload_problem(old, new)
            if problem:
                log.error("reload refused: %s", problem)
                self.events.publish("reload", ok=False, message=problem)
                return ReloadResult(False, problem, self.generation)
            dp = self.dataplane
            loop = asyncio.get_running_loop()
            compiled = None
            if dp is not None and dp.program is not None:
                try:
                    compiled = await loop.run_in_executor(self._netlink, dp.compile, new.routing)
                except CompileError as e:
                    log.error("reload refused: %s", e)
                    self.events.publish("reload", ok=False, message=str(e))
                    return ReloadResult(False, str(e), self.generation)
                old_gen = dp.state.generation
                carry = dp.program.rule_hits(old_gen, len(old.routing.entries))
                for e in old.routing.entries:
                    self._hits_carry[e.id] = self._with_carry(e.id, carry.get(e.index, (0, None)))

                def recompute(gen: int, kr: KernelRules) -> None:
                    # Every known name's bits, and the groups' health, for the new generation before packets see it.
                    self._kernel_rules[gen] = kr
                    self._rulesets[gen] = new.routing
                    for ip in self.names.addresses():
                        self._write_bits(ip)
                    for key in [k for k in self._group_health_written if k[0] == gen]:
                        del self._group_health_written[key]
                    self._write_group_health([gen], new.global_.dead_group)

                self.outbounds.configure(new)  # the new generation's groups, before their health is written
                gen = await loop.run_in_executor(
                    self._netlink, lambda: dp.load_rules(new.routing, compiled=compiled, before_flip=recompute))
                self._rulesets[gen] = new.routing
            self.config = new
            self.ruleset = new.routing
            self._upstream_routes.clear()
            self.dialer.mark = new.global_.so_mark_from_dae
            self.dns.mark = new.global_.so_mark_from_dae
            self.dns.bootstrap_resolver = new.global_.fallback_resolver
            self.dns.configure(new.dns)
            if dp is None or dp.program is None:
                self.outbounds.configure(new)
            if new.dns.bind != old.dns.bind:
                self._bind_dns(new.dns.bind)
            await self._rebind(old.global_.lan_interface, new.global_.lan_interface)
            result = ReloadResult(True, "reloaded", self.generation, *_rule_diff(old.routing, new.routing))
            if abort:
                aborted, kept = self._abort_changed(old.routing, new.routing)
                result = dataclasses.replace(result, aborted=aborted, kept=kept)
            log.info("reloaded %s: generation %d, %d rules added, %d removed, %d toggled%s", new.source,
                     result.generation, len(result.added), len(result.removed), len(result.toggled),
                     f", {result.aborted} flows reset" if abort else "")
            self.events.publish("reload", ok=True, message=result.message)
            return result

    async def edit_rules(self, op: str, index: int = 0, text: str = "", to: int = 0, enabled: bool = True,
                         expect: str | None = None) -> ReloadResult:
        """Change a rule in the config file (comments kept), then reload it.

        `expect` is the rule's text as the caller last saw it: if the file says
        otherwise it was changed by someone else, and nothing is done. An edit
        that would not give a valid config is refused and nothing is written.
        """
        loop = asyncio.get_running_loop()

        def apply() -> Config:
            ed = RulesEditor(self.config.routing_file)
            if expect is not None and op != "insert" and ed.rule_text(index) != expect:
                raise EditError(f"rule #{index + 1} in {ed.path} is now {ed.rule_text(index)!r}, not {expect!r}: "
                                "the file changed; reload it (R) and try again")
            if op == "toggle":
                ed.set_enabled(index, enabled)
            elif op == "set":
                ed.set_rule(index, text)
            elif op == "insert":
                ed.insert(index, text)
            elif op == "remove":
                ed.remove(index)
            elif op == "move":
                ed.move(index, to)
            else:
                raise EditError(f"unknown edit {op!r}")
            return ed.save(self.config.source)

        try:
            new = await loop.run_in_executor(None, apply)
        except EditError as e:
            log.error("rule edit refused: %s", e)
            return ReloadResult(False, str(e), self.generation)
        log.info("rule edit (%s #%d) written to %s", op, index + 1, self.config.routing_file)
        return await self.reload(new)

    async def preview_reload(self) -> ReloadResult:
        """What reloading the file would change (nothing is applied)."""
        loop = asyncio.get_running_loop()
        try:
            new = await loop.run_in_executor(None, load_config, self.config.source)
        except ConfigError as e:
            return ReloadResult(False, str(e), self.generation)
        problem = self._reload_problem(self.config, new)
        if problem:
            return ReloadResult(False, problem, self.generation)
        return ReloadResult(True, "preview", self.generation, *_rule_diff(self.config.routing, new.routing))

    @staticmethod
    def _reload_problem(old: Config, new: Config) -> str | None:
        if old.global_.tproxy_port != new.global_.tproxy_port:
            return "global.tproxy_port cannot change while daetui runs: restart it"
        if old.global_.fail_open != new.global_.fail_open:
            return "global.fail_open cannot change while daetui runs: restart it"
        return None

    async def _rebind(self, before: tuple[str, ...], after: tuple[str, ...]) -> None:
        dp = self.dataplane
        if dp is None or before == after:
            return
        loop = asyncio.get_running_loop()

        def apply() -> None:
            dp.wanted = after
            for name in before:
                if name not in after and name in dp.state.bindings:
                    b = dp.state.bindings[name]
                    assert dp.changes is not None
                    dp.changes.detach_interface(b.ifindex)
                    dp.state.bindings.pop(name, None)
                    log.info("unbound %s (no longer a LAN interface)", name)
            dp.state.missing = [m for m in dp.state.missing if m in after]
            for name in after:
                if name not in before:
                    dp.bind(name)
        await loop.run_in_executor(self._netlink, apply)

    def _abort_changed(self, old: RuleSet, new: RuleSet) -> tuple[int, int]:
        """Reset the flows whose route the new rules change; returns (reset, left running)."""
        aborted = kept = 0
        for conn in list(self.connections.open.values()):
            facts = FlowFacts(ipaddress.ip_address(conn.src[0]), ipaddress.ip_address(conn.dst[0]), conn.src[1],
                              conn.dst[1], conn.proto, bytes.fromhex(conn.mac.replace(":", "")) if conn.mac else None,
                              domain=conn.domain)
            d = decide(new, facts, unknown_name_matches=False, with_trace=False)
            if d.outbound != conn.outbound:
                aborted += self.close_connections([conn.id])
                if conn.proto == "udp" and self.dataplane is not None and self.dataplane.program is not None:
                    # Its next datagram is decided again by the new rules.
                    self.dataplane.program.forget_flow(FlowKey(facts.sip, conn.src[1], facts.dip, conn.dst[1], "udp"))
        prog = self.dataplane.program if self.dataplane else None
        if prog is not None:
            for f in prog.flows():
                if f.to_control_plane:
                    continue  # relayed: handled above
                facts = FlowFacts(f.key.src, f.key.dst, f.key.sport, f.key.dport, f.key.proto, f.mac)
                d = decide(new, facts, unknown_name_matches=False, with_trace=False)
                before = old.outbound_name(f.outbound)
                if d.outbound == before:
                    continue
                if f.key.proto == "udp":
                    prog.forget_flow(f.key)  # its next packet is decided again
                    aborted += 1
                elif not f.closed:
                    kept += 1  # the kernel forwards it; nothing here can reset it
        return aborted, kept

    def recent_logs(self) -> list[LogLine]:
        return list(self.log_handler.recent) if self.log_handler else []

    def _mapview(self) -> MapView | None:
        dp = self.dataplane
        if dp is None or dp.program is None:
            return None
        held = {slot: "{}:{}".format(*sock.getsockname()[:2])
                for slot, sock in (self.listeners.slots().items() if self.listeners else [])}
        links = self.monitor.links if self.monitor else {}
        return MapView(dp.program, lambda g: self._rulesets.get(g, self.ruleset), lambda: held,
                       lambda: {i: lk.name for i, lk in links.items()}, names=self.names.names)

    def maps_info(self) -> list[MapInfo]:
        """Every map with type, size and fill. Blocking (syscalls): call off the loop."""
        mv = self._mapview()
        return mv.maps_info() if mv else []

    def map_entries(self, name: str, search: str = "", limit: int = 5000) -> MapEntries:
        """One map's entries, decoded. Blocking: call off the loop."""
        mv = self._mapview()
        if mv is None:
            return MapEntries(name, ("note",), (("no kernel side",),), 0)
        return mv.entries(name, search, limit)


def _rule_diff(old: RuleSet, new: RuleSet) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Rules added, removed and toggled, by their stable ids."""
    before = {e.id: e for e in old.entries}
    after = {e.id: e for e in new.entries}
    added = tuple(e.text for i, e in after.items() if i not in before)
    removed = tuple(e.text for i, e in before.items() if i not in after)
    toggled = tuple(e.text for i, e in after.items() if i in before and before[i].enabled != e.enabled)
    return added, removed, toggled


def _later(a: float | None, b: float | None) -> float | None:
    return max(x for x in (a, b) if x is not None) if (a is not None or b is not None) else None


def _adder(conn: Connection, attr: str) -> Callable[[int], None]:
    def add(n: int) -> None:
        setattr(conn, attr, getattr(conn, attr) + n)
    return add


def _reset(sock: socket.socket) -> None:
    """Close with RST, so the client sees a refusal rather than a clean end."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
