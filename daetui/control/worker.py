"""A relay worker: a process of its own that accepts and relays TCP flows the kernel hands to it.

    python -m daetui.control.worker CHANNEL_FD INDEX LISTENER_FD...

One Python process is one core; the main process (plane.py) starts
`global.relay_workers` of these (workers.py), each with its own listeners in
the kernel's sockmap, and the kernel spreads new TCP flows over the live ones.
A worker holds no rules, names or health: for each flow it asks the main
process, over its channel (workerwire.py), what to do — which keeps the
route, the connection table and the console's view in one place — and does the
per-connection work itself: accept, sniff, dial, relay. It reports each flow's
bytes while it runs and its end, and closes what the main process asks it to.

The main process going away (its end of the channel closes) ends the worker:
its flows end with it, as they would in a single process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import pickle
import signal
import socket
import sys
import time
from typing import Any

from daetui.control.budget import pipe_bound, raise_nofile_limit
from daetui.control.connections import Connection
from daetui.control.flowio import accept_loop, sniff_first
from daetui.control.relay import HAVE_SPLICE, PipePool, relay
from daetui.control.workerwire import Channel
from daetui.net.sockopts import reset_on_close
from daetui.net.stream import DialError, Stream
from daetui.outbound.direct import DirectDialer
from daetui.outbound.manager import NamedDirect

log = logging.getLogger("daetui.worker")

# Flows waiting for the main process's answer, at once and from one LAN address: the flows' budgets
# (max_flows, max_flows_per_client; the main process sends them) bound them as they bound open flows, so
# a burst the budgets admit waits rather than being reset, and one device cannot take every slot.
MAX_WAITING = 16384
MAX_WAITING_CLIENT = 4096
EARLY_CLOSES = 4096    # closes kept for flows whose plan has not reached their task yet
ANSWER_TIMEOUT = 30.0  # the main process did not answer (hung: the kernel fails new flows open meanwhile)
COUNTS_EVERY = 0.5     # how often the byte counts of open flows go to the main process (its idle watch, the console)


class Worker:
    """The worker's state: its channel, listeners, flows and the dialers of the nodes it was given."""

    def __init__(self, channel_sock: socket.socket, index: int, listeners: list[socket.socket]) -> None:
        self.index = index
        self.channel_sock = channel_sock
        self.listeners = listeners
        self.channel: Channel | None = None
        self.direct = DirectDialer(mark=0)
        self.sniffing_timeout = 0.1
        self.use_splice = HAVE_SPLICE
        self.max_waiting, self.max_waiting_client = MAX_WAITING, MAX_WAITING_CLIENT
        self.pipes = PipePool()
        self._tags = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[tuple[Any, ...]]] = {}
        self._asked: dict[int, float] = {}     # tag -> when asked (loop time)
        self._flows: dict[int, tuple[asyncio.Task[None], Connection]] = {}   # by the main process's conn id
        self._tasks: set[asyncio.Task[None]] = set()
        self._ending: dict[int, str] = {}
        self._specs: dict[str, tuple[Any, bool]] = {}   # node name -> (the node the main process sent, via_main)
        self._dialers: dict[str, Any] = {}     # node name -> its dialer (made from the spec, then kept)
        self._early: dict[int, str] = {}       # conn id -> why: closed before its task took its plan
        self._waiting_by: dict[str, int] = {}  # LAN address -> its flows waiting for a plan
        self._sent_counts: dict[int, int] = {}
        self._done = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        limit, _ = raise_nofile_limit()
        self.pipes = PipePool(pipe_bound(limit))
        self.channel = await Channel.open(self.channel_sock, self._message, lambda exc: self._done.set())
        loop.add_signal_handler(signal.SIGTERM, self._done.set)
        accepting = [asyncio.ensure_future(accept_loop(s, self._accepted)) for s in self.listeners]
        counts = asyncio.ensure_future(self._report_counts())
        expiry = asyncio.ensure_future(self._expire_questions())
        self.channel.send(("ready", os.getpid()))
        try:
            await self._done.wait()
        finally:
            for t in [*accepting, counts, expiry]:
                t.cancel()
            for task, _ in list(self._flows.values()):
                task.cancel()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*accepting, counts, expiry, *self._tasks, return_exceptions=True)
            self.pipes.close()
            self.channel.close()

    # -- from the main process -------------------------------------------------------------------
    def _message(self, m: tuple[Any, ...]) -> None:
        kind = m[0]
        if kind == "plan" or kind == "resolved":
            if kind == "plan" and m[3] == "dial" and m[7] is not None:
                # A node, new or changed: kept whether or not the flow that asked still waits for it.
                self._specs[m[4]] = (pickle.loads(m[7]), m[8])
                self._dialers.pop(m[4], None)
            fut = self._waiting.pop(m[1], None)
            if fut is not None and not fut.done():
                fut.set_result(m)
            elif kind == "plan" and m[2] and m[3] in ("dial", "sniff") and self.channel is not None:
                # Its flow gave up waiting (the main process was stalled): the row ends there.
                self.channel.send(("done", m[2], 0, 0, "", "the main process answered too late"))
        elif kind == "close":
            for conn_id, why in m[1]:
                held = self._flows.get(conn_id)
                if held is not None and not held[0].done():
                    self._ending[conn_id] = why
                    held[0].cancel()
                elif held is None:
                    # Its plan is on its way to the flow's task, or in this very frame: closed when it lands.
                    if len(self._early) >= EARLY_CLOSES:
                        self._early.pop(next(iter(self._early)))
                    self._early[conn_id] = why
        elif kind == "settings":
            _, so_mark, self.sniffing_timeout, self.use_splice, self.max_waiting, self.max_waiting_client = m
            if so_mark != self.direct.mark:
                self.direct = DirectDialer(mark=so_mark)
                self._dialers.clear()   # made again from their specs, on the new direct dialer
        elif kind == "ping":
            if self.channel is not None:
                self.channel.send(("pong",))
        elif kind == "stop":
            self._done.set()

    async def _ask(self, message: tuple[Any, ...]) -> tuple[Any, ...]:
        """Send a request carrying a fresh tag (its second item) and wait for the answer with that tag."""
        assert self.channel is not None
        if self.channel.closed:
            raise ConnectionError("the main process is gone")
        tag = next(self._tags)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[Any, ...]] = loop.create_future()
        self._waiting[tag] = fut
        self._asked[tag] = loop.time()
        self.channel.send((message[0], tag, *message[1:]))
        try:
            return await fut
        finally:
            self._waiting.pop(tag, None)
            self._asked.pop(tag, None)

    async def _expire_questions(self) -> None:
        """Fail what the main process left unanswered for ANSWER_TIMEOUT (one sweep for every question)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(ANSWER_TIMEOUT / 4)
            late = loop.time() - ANSWER_TIMEOUT
            for tag in [t for t, at in self._asked.items() if at < late]:
                fut = self._waiting.pop(tag, None)
                self._asked.pop(tag, None)
                if fut is not None and not fut.done():
                    fut.set_exception(TimeoutError("the main process did not answer"))

    # -- flows ------------------------------------------------------------------------------------
    def _accepted(self, sock: socket.socket, client: tuple[str, int]) -> None:
        who = client[0]
        if len(self._waiting) >= self.max_waiting or self._waiting_by.get(who, 0) >= self.max_waiting_client:
            reset_on_close(sock)
            sock.close()
            return
        task = asyncio.get_running_loop().create_task(self._flow(sock, client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _plan_of(self, client: tuple[str, int], message: tuple[Any, ...]) -> tuple[Any, ...]:
        """Ask for a flow's plan, counted against its client's share of the waiting slots."""
        who = client[0]
        self._waiting_by[who] = self._waiting_by.get(who, 0) + 1
        try:
            return await self._ask(message)
        finally:
            left = self._waiting_by[who] - 1
            if left:
                self._waiting_by[who] = left
            else:
                del self._waiting_by[who]

    async def _flow(self, sock: socket.socket, client: tuple[str, int]) -> None:
        sock.setblocking(False)
        conn: Connection | None = None
        upstream: Stream | None = None
        try:
            name = sock.getsockname()
            dst = (name[0], name[1])
            plan = await self._plan_of(client, ("open", client, dst))
            _, _, conn_id, action, *args = plan
            if conn_id:
                conn = Connection(conn_id, "tcp", client, dst, time.time(), None, "", "", "")
                self._flows[conn_id] = (asyncio.current_task(), conn)  # type: ignore[assignment]
                self._closed_early(conn_id)
            first = b""
            if action == "sniff":
                first, sniffed = await sniff_first(sock, self.sniffing_timeout)
                plan = await self._plan_of(client, ("named", conn_id, sniffed.name, sniffed.protocol))
                _, _, _, action, *args = plan
                self._closed_early(conn_id)
            if action != "dial" or conn is None:
                # Refused (a budget), blocked, or no node to dial: the main process has ended the flow.
                reset_on_close(sock)
                if conn is not None:
                    conn.state = "closed"
                return
            node, host, port, _blob, _via_main, mark = args
            dialer = self._dialer(node, mark)
            try:
                upstream = await dialer.connect(host, port)
            except DialError as e:
                if node is not None and self.channel is not None:
                    self.channel.send(("failed", node, 6 if ":" in dst[0] else 4, str(e)))
                raise
            if first:
                await upstream.write(first)
                conn.up += len(first)
            self._finish(conn, await relay(sock, upstream, conn, self.use_splice, self.pipes))
        except asyncio.CancelledError:
            reset_on_close(sock)
            why = self._ending.pop(conn.id, None) if conn is not None else None
            self._finish(conn, why or "daetui stopped")
            if why is None:
                raise
        except Exception as e:
            reset_on_close(sock)
            self._finish(conn, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
        finally:
            if conn is not None:
                self._flows.pop(conn.id, None)
                self._ending.pop(conn.id, None)
                self._sent_counts.pop(conn.id, None)
            sock.close()
            if upstream is not None:
                upstream.close()

    def _finish(self, conn: Connection | None, error: str | None) -> None:
        """Tell the main process a flow ended (once): its bytes, how it was relayed, and why, if it failed."""
        if conn is None or conn.state != "open" or self.channel is None:
            return
        conn.state = "closed"
        self.channel.send(("done", conn.id, conn.up, conn.down, conn.relay, error))

    def _closed_early(self, conn_id: int) -> None:
        """A close that came before this flow's task took its plan: carried out now (as a cancel would be)."""
        why = self._early.pop(conn_id, None)
        if why is not None:
            self._ending[conn_id] = why
            raise asyncio.CancelledError

    def _dialer(self, node: str | None, mark: int = 0) -> Any:
        """The direct dialer (with a direct(mark: ..) rule's mark), or the dialer of a node (made from the node the
        main process sent, then kept)."""
        if node is None:
            return dataclasses.replace(self.direct, mark=mark) if mark else self.direct
        d = self._dialers.get(node)
        if d is None:
            held = self._specs.get(node)
            if held is None:
                # Not sent, or lost with a worker restart of the main process's bookkeeping: ask again.
                if self.channel is not None:
                    self.channel.send(("unknown_node", node))
                raise DialError(f"node {node}: not known to this relay worker yet")
            spec, via_main = held
            via: Any = self.direct
            if via_main:
                via = NamedDirect(self.direct, lambda host: self._resolve(node, host))
            d = self._dialers[node] = spec.dialer(via)
        return d

    async def _resolve(self, node: str, host: str) -> str:
        """A node server's name, looked up by the main process (dae v2's node() DNS rules)."""
        _, _, addr, error = await self._ask(("resolve", node, host))
        if addr is None:
            raise OSError(error)
        return addr

    async def _report_counts(self) -> None:
        """The byte counts of open flows that moved, every COUNTS_EVERY seconds, in one message."""
        while True:
            await asyncio.sleep(COUNTS_EVERY)
            moved = []
            if self.channel is None or self.channel.congested():
                continue   # the main process is not reading (stopped): a later report carries the totals
            for conn_id, (_, conn) in self._flows.items():
                total = conn.up + conn.down
                if self._sent_counts.get(conn_id) != total:
                    self._sent_counts[conn_id] = total
                    moved.append((conn_id, conn.up, conn.down, conn.relay))
            if moved:
                self.channel.send(("counts", moved))


def main(argv: list[str]) -> int:
    """The worker's entry: its channel's fd, its index, then its listeners' fds."""
    from daetui import aio
    from daetui.logsetup import setup_logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)   # a terminal's ^C is for the main process, which stops us
    channel_fd, index, *listener_fds = (int(a) for a in argv)
    setup_logging(os.environ.get("DAETUI_LOG_LEVEL", "warn"))
    channel = socket.socket(fileno=channel_fd)
    listeners = [socket.socket(fileno=fd) for fd in listener_fds]
    for s in listeners:
        s.setblocking(False)
    with contextlib.suppress(KeyboardInterrupt):
        aio.run(Worker(channel, index, listeners).run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
