"""UDP through the control plane: the listener, the NAT table and the reply path.

Each (client, original destination) pair is one NAT entry with its own
upstream socket. Replies go back to the client from the original
destination's address, through a transparent socket bound to it (shared by
every client of that destination). Entries end after `idle_timeout`
without traffic; the table holds at most `max_entries`, evicting the least
recently used, and each entry is a flow of the client's budget (budget.py).

Datagrams wait in memory in two places: while a flow's proxy session opens
(a handshake that may never finish), and in a proxied entry's outbox while
the proxy's stream is slow. Both are held to a byte budget per flow
(`flow_buffer_bytes`) and for all flows (`buffer_bytes`); what does not fit
is dropped, as a router's full queue would, and counted (`buffer_drops`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from daetui.control.budget import FlowBudget
from daetui.control.connections import Connection, Endpoint
from daetui.net.sockopts import parse_origdst, reply_socket
from daetui.net.stream import Datagrams, DialError

log = logging.getLogger("daetui.udp")

MAX_DATAGRAM = 65535
BATCH = 64  # datagrams read per wake-up, so one busy socket cannot starve the loop
OPENING_MAX = 64  # datagrams held while a flow opens, whatever their size


@dataclass
class _ReplySocket:
    sock: socket.socket
    users: int = 0


@dataclass
class NatEntry:
    """One client talking to one destination: through a socket of its own, or a proxy's datagrams."""

    client: Endpoint
    dst: Endpoint
    upstream: socket.socket | None
    reply: _ReplySocket
    conn: Connection
    last: float = field(default_factory=time.monotonic)
    datagrams: Datagrams | None = None
    outbox: deque[bytes] | None = None     # to the proxy, in order
    outbox_bytes: int = 0                  # held in the outbox (the one being sent included)
    wake: asyncio.Event | None = None      # set when the outbox gets a datagram
    tasks: tuple[asyncio.Task[None], ...] = ()


@dataclass
class _Opening:
    """The datagrams of a flow whose upstream is not ready yet."""

    datagrams: list[bytes]
    size: int


# Opens a flow, given its first datagram: returns the upstream socket and the
# connection record, or None to drop it.
Opener = Callable[[Endpoint, Endpoint, bytes], Awaitable[tuple[socket.socket | Datagrams, Connection] | None]]
Closer = Callable[[Connection, str | None], None]


class UdpNat:
    """The NAT table of relayed UDP flows."""

    def __init__(self, opener: Opener, closer: Closer, idle_timeout: float = 30.0,
                 max_entries: int = 16384, budget: FlowBudget | None = None,
                 buffer_bytes: int = 32 << 20, flow_buffer_bytes: int = 256 << 10) -> None:
        self.opener = opener
        self.closer = closer
        self.idle_timeout = idle_timeout
        self.max_entries = max_entries
        self.budget = budget
        self.buffer_bytes = buffer_bytes
        self.flow_buffer_bytes = flow_buffer_bytes
        self.buffered = 0          # bytes held now, opening and in outboxes
        self.buffer_drops = 0      # datagrams dropped for a byte budget
        self.refused = 0           # datagrams dropped because the flow budget refused their flow
        self.entries: OrderedDict[tuple[Endpoint, Endpoint], NatEntry] = OrderedDict()
        self._replies: dict[Endpoint, _ReplySocket] = {}
        self._opening: dict[tuple[Endpoint, Endpoint], _Opening] = {}
        self._listeners: list[socket.socket] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped = 0
        self.evicted = 0

    def configure(self, buffer_bytes: int, flow_buffer_bytes: int) -> None:
        """New byte budgets (a reload); what is held already stays."""
        self.buffer_bytes, self.flow_buffer_bytes = buffer_bytes, flow_buffer_bytes

    def _fits(self, held: int, n: int) -> bool:
        """Whether `n` more bytes fit a flow holding `held`, and all flows; a drop is counted if not."""
        if held + n > self.flow_buffer_bytes or self.buffered + n > self.buffer_bytes:
            self.buffer_drops += 1
            return False
        return True

    def _send(self, entry: NatEntry, data: bytes) -> None:
        """To the destination: at once through the entry's socket, else into its outbox (within budget)."""
        if entry.upstream is not None:
            entry.upstream.send(data)
        elif entry.outbox is not None and entry.wake is not None:
            if not self._fits(entry.outbox_bytes, len(data)):
                return
            entry.outbox.append(data)
            entry.outbox_bytes += len(data)
            self.buffered += len(data)
            entry.wake.set()
        entry.conn.up += len(data)

    def _give(self, client: Endpoint) -> None:
        if self.budget is not None:
            self.budget.give(client[0])

    # -- lifecycle ----------------------------------------------------------------
    def start(self, listeners: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        for sock in listeners:
            loop.add_reader(sock.fileno(), self._on_listener, sock)
            self._listeners.append(sock)
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._listeners:
            loop.remove_reader(sock.fileno())
        self._listeners.clear()
        if self._sweeper:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for key in list(self.entries):
            self._close(key, None)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- client -> destination ------------------------------------------------------
    def _on_listener(self, sock: socket.socket) -> None:
        for _ in range(BATCH):
            try:
                data, anc, _flags, addr = sock.recvmsg(MAX_DATAGRAM, 256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("udp listener: %s", e)
                return
            dst = parse_origdst(anc)
            if dst is None:
                self.dropped += 1  # not a handed-off datagram (no original destination)
                continue
            client: Endpoint = (addr[0], addr[1])
            self._from_client(client, dst, data)

    def _from_client(self, client: Endpoint, dst: Endpoint, data: bytes) -> None:
        key = (client, dst)
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
            entry.last = time.monotonic()
            try:
                self._send(entry, data)
            except OSError as e:
                log.debug("udp %s -> %s: %s", client, dst, e)
            return
        opening = self._opening.get(key)
        if opening is not None:
            # Held until the flow's upstream is ready: a few, within the byte budgets.
            if len(opening.datagrams) < OPENING_MAX and self._fits(opening.size, len(data)):
                opening.datagrams.append(data)
                opening.size += len(data)
                self.buffered += len(data)
            elif len(opening.datagrams) >= OPENING_MAX:
                self.buffer_drops += 1
            return
        if self.budget is not None and not self.budget.take(client[0]):
            self.refused += 1
            return
        if not self._fits(0, len(data)):
            self._give(client)
            return
        self._opening[key] = _Opening([data], len(data))
        self.buffered += len(data)
        task = asyncio.ensure_future(self._open(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, key: tuple[Endpoint, Endpoint]) -> None:
        client, dst = key
        opened = None
        try:
            opening = self._opening.get(key)
            opened = await self.opener(client, dst, opening.datagrams[0] if opening else b"")
        except Exception as e:
            log.info("udp %s -> %s: %s", client, dst, e)
        finally:
            held = self._opening.pop(key, None)
            queued = held.datagrams if held else []
            self.buffered -= held.size if held else 0
            if opened is None:
                self.dropped += len(queued)
                self._give(client)
        if opened is None:
            return
        upstream, conn = opened
        try:
            reply = self._reply_socket(dst)
        except OSError as e:
            upstream.close()
            self._give(client)
            self.closer(conn, f"reply socket: {e}")
            return
        while len(self.entries) >= self.max_entries:
            oldest = next(iter(self.entries))
            self.evicted += 1
            self._close(oldest, None)
        if isinstance(upstream, socket.socket):
            entry = NatEntry(client, dst, upstream, reply, conn)
            asyncio.get_running_loop().add_reader(upstream.fileno(), self._on_upstream, key)
        else:
            entry = NatEntry(client, dst, None, reply, conn, datagrams=upstream, outbox=deque(),
                             wake=asyncio.Event())
            entry.tasks = (asyncio.ensure_future(self._to_proxy(key, entry)),
                           asyncio.ensure_future(self._from_proxy(key, entry)))
        self.entries[key] = entry
        for data in queued:
            with contextlib.suppress(OSError):
                self._send(entry, data)

    def _reply_socket(self, dst: Endpoint) -> _ReplySocket:
        rs = self._replies.get(dst)
        if rs is None:
            rs = _ReplySocket(reply_socket(dst))
            self._replies[dst] = rs
        rs.users += 1
        return rs

    # -- destination -> client --------------------------------------------------------
    def _on_upstream(self, key: tuple[Endpoint, Endpoint]) -> None:
        entry = self.entries.get(key)
        if entry is None:
            return
        for _ in range(BATCH):
            try:
                data = entry.upstream.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                # ICMP unreachable and friends: the flow is over.
                self._close(key, str(e))
                return
            entry.last = time.monotonic()
            try:
                entry.reply.sock.sendto(data, entry.client)
                entry.conn.down += len(data)
            except OSError as e:
                log.debug("udp reply to %s: %s", entry.client, e)

    async def _to_proxy(self, key: tuple[Endpoint, Endpoint], entry: NatEntry) -> None:
        assert entry.outbox is not None and entry.datagrams is not None and entry.wake is not None
        outbox = entry.outbox
        try:
            while True:
                while not outbox:
                    entry.wake.clear()
                    await entry.wake.wait()
                data = outbox[0]  # counted in the budget until it is sent
                await entry.datagrams.send(data, entry.dst[0], entry.dst[1])
                outbox.popleft()
                entry.outbox_bytes -= len(data)
                self.buffered -= len(data)
        except (OSError, DialError) as e:
            self._close(key, str(e))

    async def _from_proxy(self, key: tuple[Endpoint, Endpoint], entry: NatEntry) -> None:
        assert entry.datagrams is not None
        try:
            while True:
                data, _host, _port = await entry.datagrams.recv()
                entry.last = time.monotonic()
                try:
                    entry.reply.sock.sendto(data, entry.client)
                    entry.conn.down += len(data)
                except OSError as e:
                    log.debug("udp reply to %s: %s", entry.client, e)
        except (OSError, DialError, EOFError) as e:
            self._close(key, str(e) or type(e).__name__)

    def close_conn(self, conn_id: int) -> bool:
        """End the NAT entry of a connection (closed from the console)."""
        for key, entry in list(self.entries.items()):
            if entry.conn.id == conn_id:
                self._close(key, "closed from the console")
                return True
        return False

    # -- expiry --------------------------------------------------------------------------
    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.idle_timeout / 2))
            now = time.monotonic()
            for key, entry in list(self.entries.items()):
                if now - entry.last > self.idle_timeout:
                    self._close(key, None)

    def _close(self, key: tuple[Endpoint, Endpoint], error: str | None) -> None:
        entry = self.entries.pop(key, None)
        if entry is None:
            return
        if entry.upstream is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(entry.upstream.fileno())
            entry.upstream.close()
        if entry.datagrams is not None:
            entry.datagrams.close()
        for t in entry.tasks:
            if t is not asyncio.current_task():
                t.cancel()
        if entry.outbox is not None:
            self.buffered -= entry.outbox_bytes
            entry.outbox.clear()
            entry.outbox_bytes = 0
        self._give(entry.client)
        entry.reply.users -= 1
        if entry.reply.users <= 0:
            entry.reply.sock.close()
            self._replies.pop(entry.dst, None)
        self.closer(entry.conn, error)
