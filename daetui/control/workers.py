"""Relay workers, from the main process's side: start them, answer them, and start again one that died.

`global.relay_workers` processes (worker.py) each accept and relay the TCP
flows the kernel hands to their listeners, which sit in the sockmap at
WORKER_SLOT0 + 2*index (+1 for IPv6); the kernel picks a live worker per new
flow by a hash of its tuple (bpf/lan.c, tcp_listener). The main process keeps
what a flow's route needs — rules, names, group health, budgets — and the
connection table: a worker asks it for each flow's plan (`_open`, `_named`)
and reports the flow's bytes and end, so the console sees every flow, and
closing one from the console, a reload's abort or the idle timeout reach it
here (`close`).

A worker that dies loses its own flows only (they end, saying so): its
listeners close with it, which takes them out of the sockmap, so new flows
go to the other workers (or to the main process's listeners when none is
left) while it is started again, after a back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import pickle
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import daetui
from daetui.abi.constants import ABI
from daetui.config.model import GlobalConfig
from daetui.control.connections import Connection
from daetui.control.listeners import make_listener
from daetui.control.pipeline import Pipeline
from daetui.control.workerwire import Channel
from daetui.logsetup import LEVELS
from daetui.net.address import resolve as resolve_name
from daetui.net.stream import DialError
from daetui.routing.ruleset import BLOCK
from daetui.sniff import SniffResult

log = logging.getLogger("daetui.control")

READY_TIMEOUT = 10.0      # a worker that says nothing for this long after it was started is ended
STOP_TIMEOUT = 3.0        # after "stop", before it is killed
BACKOFF_FIRST = 0.5       # a dead worker is started again after this, doubled after each death in a row
BACKOFF_MAX = 30.0
STEADY = 60.0             # a worker that lived this long resets the back-off
PULSE = 0.5               # how often each worker is pinged; one silent for heartbeat_timeout is ended
MIN_SILENCE = 2.0         # but never sooner: a busy worker's loop may run a few pulses late


class Slots(Protocol):
    """What the workers need of the kernel side (KernelProgram)."""

    def set_listener(self, slot: int, sock: socket.socket) -> None: ...
    def set_own_process(self, pid: int, own: bool) -> None: ...


def worker_slot(index: int, version: int) -> int:
    """The sockmap slot of worker `index`'s TCP listener for IP `version`."""
    return ABI.WORKER_SLOT0 + 2 * index + (version == 6)


@dataclass
class WorkerLink:
    """One worker process as the main process sees it."""

    index: int
    proc: asyncio.subprocess.Process
    channel: Channel | None = None
    pid: int = 0
    ready: bool = False
    started: float = field(default_factory=time.monotonic)
    listeners: dict[int, socket.socket] = field(default_factory=dict)   # by IP version, held until it is ready
    pinged: float | None = None     # when the ping it has not answered yet was sent
    conns: dict[int, Connection] = field(default_factory=dict)          # its open flows, by conn id
    sent: dict[str, Any] = field(default_factory=dict)                  # node name -> the node object it was sent


class RelayWorkers:
    """The relay workers of a control plane; `start`, `stop`, `close` a flow, `configure` on a reload."""

    def __init__(self, pipeline: Pipeline, slots: Slots, count: int, versions: list[int], g: GlobalConfig) -> None:
        self.pipeline = pipeline
        self.slots = slots
        self.count = min(count, ABI.MAX_WORKERS)
        self.versions = versions     # the IP versions the main process listens on: the workers do the same
        self.links: dict[int, WorkerLink] = {}
        self.running = False
        self.deaths = 0
        self._settings = self._settings_of(g, pipeline.use_splice)
        self.hang_timeout = max(MIN_SILENCE, g.heartbeat_timeout or 5.0)
        self._backoff = dict.fromkeys(range(self.count), BACKOFF_FIRST)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ready_waits: dict[int, asyncio.Future[None]] = {}

    @staticmethod
    def _settings_of(g: GlobalConfig, use_splice: bool) -> tuple[Any, ...]:
        return ("settings", g.so_mark_from_dae, g.sniffing_timeout, use_splice, g.max_flows, g.max_flows_per_client)

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every worker and wait (bounded) until each is ready: its listeners in the sockmap."""
        self.running = True
        await asyncio.gather(*(self._spawn(i) for i in range(self.count)))
        self._task(self._pulse(), "daetui-worker-pulse")
        waits = list(self._ready_waits.values())
        if waits:
            _, pending = await asyncio.wait(waits, timeout=READY_TIMEOUT)
            if pending:
                log.error("%d relay worker(s) not ready after %.0fs: the main process relays their share",
                          len(pending), READY_TIMEOUT)

    async def stop(self) -> None:
        """Stop every worker (their flows end: "daetui stopped")."""
        self.running = False
        for t in list(self._tasks):
            if t.get_name().startswith(("daetui-worker-respawn", "daetui-worker-pulse")):
                t.cancel()
        links = list(self.links.values())
        for link in links:
            if link.channel is not None:
                link.channel.send(("stop",))
        for link in links:
            try:
                await asyncio.wait_for(asyncio.shield(link.proc.wait()), STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    link.proc.kill()
                await link.proc.wait()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def configure(self, g: GlobalConfig) -> None:
        """A reload: the settings workers use (sniffing_timeout), and how long one may be silent."""
        self._settings = self._settings_of(g, self.pipeline.use_splice)
        self.hang_timeout = max(MIN_SILENCE, g.heartbeat_timeout or 5.0)
        for link in self.links.values():
            if link.channel is not None:
                link.channel.send(self._settings)

    def live(self) -> int:
        """Workers ready now (their listeners in the kernel's choice)."""
        return sum(link.ready for link in self.links.values())

    def held_slots(self) -> dict[int, str]:
        """The sockmap slots the live workers' listeners hold, and what sits there (the map view)."""
        return {worker_slot(link.index, v): f"worker {link.index} (pid {link.pid})"
                for link in self.links.values() if link.ready for v in self.versions}

    def close(self, conn_id: int, why: str) -> bool:
        """Close a worker's flow (with a reset to its client); False when no worker holds it."""
        for link in self.links.values():
            if conn_id in link.conns and link.channel is not None:
                link.channel.send(("close", [(conn_id, why)]))
                return True
        return False

    def holds(self, conn_id: int) -> bool:
        return any(conn_id in link.conns for link in self.links.values())

    def _task(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _spawn(self, index: int) -> None:
        listeners: dict[int, socket.socket] = {}
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            for v in self.versions:
                listeners[v] = make_listener(v, socket.SOCK_STREAM, 0)
            fds = [s.fileno() for s in listeners.values()]
            env = dict(os.environ, DAETUI_LOG_LEVEL=_level_name())
            # The package's own directory first: the worker imports this very daetui, installed or not.
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(daetui.__file__).parent.parent),
                                                              env.get("PYTHONPATH")]))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "daetui.control.worker", str(child.fileno()), str(index), *map(str, fds),
                pass_fds=(child.fileno(), *fds), env=env, stdin=asyncio.subprocess.DEVNULL)
        except BaseException as e:
            for s in (parent, *listeners.values()):
                s.close()
            if isinstance(e, Exception):
                log.error("relay worker %d: could not start: %s", index, e)
                self._respawn_later(index)
                return
            raise
        finally:
            child.close()
        link = WorkerLink(index, proc, listeners=listeners)
        self.links[index] = link
        self._ready_waits[index] = asyncio.get_running_loop().create_future()
        link.channel = await Channel.open(parent, functools.partial(self._message, link),
                                          lambda exc: None)
        link.channel.send(self._settings)
        self._task(self._watch(link), f"daetui-worker-{index}")

    async def _watch(self, link: WorkerLink) -> None:
        """Until the worker's process ends (or is not ready in time); then its flows end and it starts again."""
        try:
            code = await asyncio.wait_for(asyncio.shield(link.proc.wait()), READY_TIMEOUT)
        except TimeoutError:
            if not link.ready:
                log.error("relay worker %d (pid %d) not ready: ending it", link.index, link.proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    link.proc.kill()
            code = await link.proc.wait()
        self._ended(link, code)

    def _ended(self, link: WorkerLink, code: int) -> None:
        if self.links.get(link.index) is link:
            del self.links[link.index]
        if link.channel is not None:
            link.channel.close()
        for s in link.listeners.values():
            s.close()
        if link.pid:
            with contextlib.suppress(Exception):
                self.slots.set_own_process(link.pid, False)
        wait = self._ready_waits.pop(link.index, None)
        if wait is not None and not wait.done():
            wait.set_result(None)
        how = f"killed by {_signal_name(-code)}" if code < 0 else f"exit code {code}"
        why = "daetui stopped" if not self.running else f"relay worker {link.index} ended ({how})"
        lost = list(link.conns.values())
        for conn in lost:
            self._forget(link, conn)
            self.pipeline.finish(conn, why)
        if not self.running:
            return
        self.deaths += 1
        log.error("relay worker %d (pid %d) ended (%s): %s; its listeners left the kernel's choice",
                  link.index, link.proc.pid, how, f"{len(lost)} flows lost" if lost else "no flow lost")
        if time.monotonic() - link.started >= STEADY:
            self._backoff[link.index] = BACKOFF_FIRST
        self._respawn_later(link.index)

    async def _pulse(self) -> None:
        """Ping every ready worker; end one silent for heartbeat_timeout (stopped, hung): its listeners leave
        the sockmap with it, so it no longer takes new flows it cannot serve, and it is started again."""
        last = time.monotonic()
        while self.running:
            await asyncio.sleep(PULSE)
            now = time.monotonic()
            # This loop itself ran late (the main process stopped or stalled): no worker's silence is judged.
            late, last = now - last > 4 * PULSE, now
            for link in list(self.links.values()):
                if not link.ready or link.channel is None:
                    continue
                if late or link.pinged is None:
                    link.pinged = now
                    link.channel.send(("ping",))
                elif now - link.pinged > self.hang_timeout:
                    log.error("relay worker %d (pid %d) silent for %.1fs: ending it", link.index, link.pid,
                              now - link.pinged)
                    link.ready = False
                    with contextlib.suppress(ProcessLookupError):
                        link.proc.kill()

    def _respawn_later(self, index: int) -> None:
        if not self.running:
            return
        delay = self._backoff.get(index, BACKOFF_FIRST)
        self._backoff[index] = min(BACKOFF_MAX, delay * 2)

        async def again() -> None:
            await asyncio.sleep(delay)
            if self.running and index not in self.links:
                await self._spawn(index)
        self._task(again(), f"daetui-worker-respawn-{index}")

    # -- from a worker ------------------------------------------------------------------------------
    def _message(self, link: WorkerLink, m: tuple[Any, ...]) -> None:
        kind = m[0]
        if kind == "open":
            self._guarded(link, m[1], None, self._open, link, m[1], m[2], m[3])
        elif kind == "named":
            self._guarded(link, m[1], m[2], self._named, link, m[1], m[2], m[3], m[4])
        elif kind == "counts":
            for conn_id, up, down, relay_kind in m[1]:
                conn = link.conns.get(conn_id)
                if conn is not None:
                    conn.up, conn.down, conn.relay = up, down, relay_kind or conn.relay
        elif kind == "done":
            _, conn_id, up, down, relay_kind, error = m
            conn = link.conns.get(conn_id)
            if conn is not None:
                conn.up, conn.down, conn.relay = up, down, relay_kind or conn.relay
                self._forget(link, conn)
                self.pipeline.finish(conn, error)
        elif kind == "unknown_node":
            link.sent.pop(m[1], None)   # sent with the next plan through it
        elif kind == "failed":
            _, node, family, error = m
            self.pipeline.outbounds.failed(node, family, error)
        elif kind == "resolve":
            self._task(self._resolve(link, m[1], m[2], m[3]), "daetui-worker-resolve")
        elif kind == "pong":
            link.pinged = None
        elif kind == "ready":
            self._ready(link, m[1])

    def _ready(self, link: WorkerLink, pid: int) -> None:
        link.pid = pid
        try:
            self.slots.set_own_process(pid, True)   # its dials are daetui's own: never caught
            for v, s in link.listeners.items():
                self.slots.set_listener(worker_slot(link.index, v), s)
        except Exception as e:
            log.error("relay worker %d: its listeners could not join the kernel's choice: %s", link.index, e)
            with contextlib.suppress(ProcessLookupError):
                link.proc.kill()
            return
        # Only the worker holds them now: they close (and leave the sockmap) when it ends.
        for s in link.listeners.values():
            s.close()
        link.listeners.clear()
        link.ready = True
        log.info("relay worker %d ready (pid %d)", link.index, pid)
        wait = self._ready_waits.pop(link.index, None)
        if wait is not None and not wait.done():
            wait.set_result(None)

    def _guarded(self, link: WorkerLink, tag: int, conn_id: int | None, step: Any, *args: Any) -> None:
        """Run a planning step; if it fails, the flow ends (row finished, budget given back, the worker told),
        as a flow in the main process would, and is not left waiting."""
        before = set(link.conns)
        try:
            step(*args)
        except Exception as e:
            log.error("relay worker %d: planning a flow: %s: %s", link.index, type(e).__name__, e)
            ids = ({conn_id} if conn_id else set(link.conns) - before)
            for cid in ids:
                conn = link.conns.get(cid)
                if conn is not None:
                    self._forget(link, conn)
                    self.pipeline.finish(conn, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
            if link.channel is not None:
                link.channel.send(("plan", tag, next(iter(ids), 0), "fail"))

    def _forget(self, link: WorkerLink, conn: Connection) -> None:
        if link.conns.pop(conn.id, None) is not None:
            self.pipeline.budget.give(conn.src[0])

    def _open(self, link: WorkerLink, tag: int, client: tuple[str, int], dst: tuple[str, int]) -> None:
        """A worker accepted a flow: its row, then its plan (or "sniff" first)."""
        p, channel = self.pipeline, link.channel
        assert channel is not None
        if not p.budget.take(client[0]):
            channel.send(("plan", tag, 0, "refuse"))
            return
        try:
            conn = p.open_conn("tcp", client, dst, "splice" if p.use_splice else "copy")
        except Exception as e:
            p.budget.give(client[0])
            log.error("tcp from %s: %s", client, e)
            channel.send(("plan", tag, 0, "refuse"))
            return
        conn.worker = link.index
        link.conns[conn.id] = conn
        if p.decider.wants_name(conn):
            channel.send(("plan", tag, conn.id, "sniff"))
            return
        self._plan(link, tag, conn)

    def _named(self, link: WorkerLink, tag: int, conn_id: int, name: str | None, protocol: str | None) -> None:
        conn = link.conns.get(conn_id)
        if conn is None:   # closed meanwhile
            if link.channel is not None:
                link.channel.send(("plan", tag, conn_id, "gone"))
            return
        self.pipeline.decider.with_name(conn, SniffResult(name, protocol))
        self._plan(link, tag, conn)

    def _plan(self, link: WorkerLink, tag: int, conn: Connection) -> None:
        """What the worker does with a routed flow: block it, or dial (the node, and what to ask it for)."""
        p, channel = self.pipeline, link.channel
        assert channel is not None
        p.announce(conn)
        if conn.outbound == BLOCK:
            self._forget(link, conn)
            p.finish(conn, "blocked")
            channel.send(("plan", tag, conn.id, "block"))
            return
        family = 6 if ":" in conn.dst[0] else 4
        try:
            _, node = p.outbounds.dialer(conn.outbound, family, conn.mark)
        except DialError as e:
            self._forget(link, conn)
            p.finish(conn, str(e))
            channel.send(("plan", tag, conn.id, "fail"))
            return
        conn.node = node
        blob, via_main = None, False
        if node is not None:
            spec = p.outbounds.nodes[node]
            via_main = p.outbounds.node_resolver(node) is not None
            if link.sent.get(node) is not spec:   # new to this worker, or changed by a reload or a subscription
                blob = pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL)
                link.sent[node] = spec
        channel.send(("plan", tag, conn.id, "dial", node, p.decider.dial_host(conn, node), conn.dst[1], blob,
                      via_main, p.outbounds.dial_mark(conn.mark)))

    async def _resolve(self, link: WorkerLink, tag: int, node: str, host: str) -> None:
        """A worker's node server name, looked up as the main process would (node() DNS rules, else the system)."""
        addr, error = None, ""
        try:
            resolver = self.pipeline.outbounds.node_resolver(node) if node in self.pipeline.outbounds.nodes else None
            addr = await (resolver(host) if resolver is not None else resolve_name(host, 0))
        except Exception as e:
            error = str(e) or type(e).__name__
        if link.channel is not None:
            link.channel.send(("resolved", tag, addr, error))


def _level_name() -> str:
    """The daemon's log level by its config name (logsetup.LEVELS), for the workers it starts."""
    level = logging.getLogger().level
    return next((name for name, n in LEVELS.items() if n == level), "warn")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:   # a realtime signal has no name here
        return f"signal {number}"
