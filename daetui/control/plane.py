"""The control plane: listeners, relays, the connection table, and the dataplane.

    plane = ControlPlane(config, RunPaths(run_dir))
    await plane.start()      # claims the run dir, loads the kernel side, listens
    plane.snapshot()         # state for the console and `daetui status`
    await plane.stop()       # undoes every system change

A flow handed over by the kernel arrives on a transparent listener; its
original destination is the accepted socket's own address. The kernel's
decision is read from `routing_tuples`; if it is not there (evicted, or no
kernel side), the user-space matcher decides with the same rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from daetui.config.load import Config
from daetui.control.connections import Connection, ConnectionTable, Endpoint
from daetui.control.events import EventBus
from daetui.control.listeners import Listeners, open_listeners
from daetui.control.relay import HAVE_SPLICE, relay
from daetui.control.udp import UdpNat
from daetui.dataplane.cleanup import cleanup_leftovers, pid_is_daetui
from daetui.dataplane.dataplane import Binding, Dataplane
from daetui.dataplane.program import FlowKey, KernelFlow
from daetui.outbound.direct import DirectDialer
from daetui.paths import RunPaths
from daetui.routing.matcher import FlowFacts, decide
from daetui.routing.ruleset import BLOCK, RuleSet

log = logging.getLogger("daetui.control")
conn_log = logging.getLogger("daetui.conn")


class StartError(RuntimeError):
    """The control plane could not start; nothing it did is left behind."""


@dataclass(frozen=True)
class Snapshot:
    """The state of the control plane at one moment, in plain values."""

    time: float
    started: float
    connections: list[Connection]
    kernel_flows: list[KernelFlow]
    counters: dict[str, int]
    bindings: list[Binding]
    missing_interfaces: list[str]
    generation: int
    udp_nat_entries: int = 0
    totals: dict[str, int] = field(default_factory=dict)


@dataclass
class _Route:
    rule_index: int | None
    rule: str
    outbound: str
    stage: str
    mac: str | None


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
        self.ruleset: RuleSet = config.routing
        self._rulesets: dict[int, RuleSet] = {0: config.routing}
        self.listeners: Listeners | None = None
        self.udp: UdpNat | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._accept_tasks: list[asyncio.Task[None]] = []
        self._netlink = ThreadPoolExecutor(1, thread_name_prefix="daetui-netlink")
        self.started = 0.0
        self.running = False
        self.use_splice = HAVE_SPLICE

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        """Claim the run dir (cleaning up after a crash), listen, load and attach."""
        loop = asyncio.get_running_loop()
        # Netlink work (pyroute2) runs on its own thread, never on this loop.
        await loop.run_in_executor(self._netlink, self._claim_run_dir)
        g = self.config.global_
        try:
            self.listeners = open_listeners(g.tproxy_port)
            if self.dataplane is not None:
                await loop.run_in_executor(self._netlink, lambda: self.dataplane.start(  # type: ignore[union-attr]
                    self.ruleset, g.lan_interface, self.listeners.slots(),  # type: ignore[union-attr]
                    fail_open=g.fail_open, auto_config=g.auto_config_kernel_parameter))
            for sock in self.listeners.tcp.values():
                self._accept_tasks.append(asyncio.ensure_future(self._accept_loop(sock)))
            self.udp = UdpNat(self._open_udp, self._finish)
            self.udp.start(list(self.listeners.udp.values()))
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
        await self._teardown()
        log.info("daetui stopped; system changes undone")

    async def _teardown(self) -> None:
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
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.listeners is not None:
            self.listeners.close()
        self._netlink.shutdown(wait=True)
        with contextlib.suppress(OSError):
            if self.run.pid.read_text().strip() == str(os.getpid()):
                self.run.pid.unlink()

    # -- routing lookups ------------------------------------------------------------------
    def _route(self, proto: str, client: Endpoint, dst: Endpoint) -> _Route:
        key = FlowKey(ipaddress.ip_address(client[0]), client[1], ipaddress.ip_address(dst[0]), dst[1], proto)
        kflow = None
        if self.dataplane is not None and self.dataplane.program is not None:
            kflow = self.dataplane.program.flow(key)
        if kflow is not None:
            ruleset = self._rulesets.get(kflow.generation, self.ruleset)
            entry = ruleset.by_index(kflow.rule_index) if kflow.rule_index is not None else None
            return _Route(kflow.rule_index, str(entry.rule) if entry else "fallback",
                          ruleset.outbound_name(kflow.outbound), "kernel", _mac_text(kflow.mac))
        d = decide(self.ruleset, FlowFacts(key.src, key.dst, key.sport, key.dport, proto))
        entry = self.ruleset.by_index(d.rule_index) if d.rule_index is not None else None
        return _Route(d.rule_index, str(entry.rule) if entry else "fallback", d.outbound, "userspace", None)

    def _open_conn(self, proto: str, client: Endpoint, dst: Endpoint, relay_kind: str) -> Connection:
        r = self._route(proto, client, dst)
        conn = self.connections.add(proto=proto, src=client, dst=dst, rule_index=r.rule_index, rule=r.rule,
                                    outbound=r.outbound, stage=r.stage, mac=r.mac, relay=relay_kind)
        conn_log.info("open %s", conn.describe())
        self.events.publish("conn.open", id=conn.id)
        return conn

    def _finish(self, conn: Connection, error: str | None) -> None:
        self.connections.finish(conn, error)
        conn_log.info("%s", conn.describe())
        self.events.publish("conn.close", id=conn.id)

    # -- TCP ---------------------------------------------------------------------------------
    async def _accept_loop(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, addr = await loop.sock_accept(lsock)
            except OSError as e:
                log.error("accept: %s", e)
                await asyncio.sleep(0.1)  # e.g. EMFILE: do not spin
                continue
            task = asyncio.ensure_future(self._handle_tcp(sock, (addr[0], addr[1])))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

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
        if conn.outbound == BLOCK:
            _reset(sock)
            self._finish(conn, "blocked")
            return
        upstream = None
        try:
            # Until proxy groups exist, every outbound (direct or a group) dials directly.
            upstream = await self.dialer.connect_tcp(*dst)
            error = await relay(sock, upstream, _adder(conn, "up"), _adder(conn, "down"), self.use_splice)
            self._finish(conn, error)
        except asyncio.CancelledError:
            self._finish(conn, "daetui stopped")
            raise
        except Exception as e:
            _reset(sock)
            self._finish(conn, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
        finally:
            sock.close()
            if upstream is not None:
                upstream.close()

    # -- UDP ------------------------------------------------------------------------------------
    async def _open_udp(self, client: Endpoint, dst: Endpoint) -> tuple[socket.socket, Connection] | None:
        conn = self._open_conn("udp", client, dst, "udp")
        if conn.outbound == BLOCK:
            self._finish(conn, "blocked")
            return None
        try:
            upstream = self.dialer.udp_socket(*dst)
        except OSError as e:
            self._finish(conn, str(e))
            return None
        return upstream, conn

    # -- state --------------------------------------------------------------------------------------
    def snapshot(self, with_kernel_flows: bool = True) -> Snapshot:
        """Everything the console shows, as plain values. Call on the plane's loop."""
        prog = self.dataplane.program if self.dataplane else None
        flows = prog.flows() if (prog is not None and with_kernel_flows) else []
        counters = prog.counters() if prog is not None else {}
        dp = self.dataplane.state if self.dataplane else None
        return Snapshot(
            time=time.time(), started=self.started, connections=self.connections.snapshot(),
            kernel_flows=flows, counters=counters,
            bindings=list(dp.bindings.values()) if dp else [], missing_interfaces=list(dp.missing) if dp else [],
            generation=dp.generation if dp else 0, udp_nat_entries=len(self.udp.entries) if self.udp else 0,
            totals={"connections": self.connections.total})


def _adder(conn: Connection, attr: str) -> Callable[[int], None]:
    def add(n: int) -> None:
        setattr(conn, attr, getattr(conn, attr) + n)
    return add


def _reset(sock: socket.socket) -> None:
    """Close with RST, so the client sees a refusal rather than a clean end."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")

