"""The DNS controller's sockets: the LAN's hijacked DNS, and `dns.bind`.

The kernel hands the LAN's port-53 flows to dedicated transparent listeners
(`Listeners.dns_udp`/`dns_tcp`), so what arrives there is DNS. A UDP reply
must come from the server the client asked: it leaves through a transparent
socket bound to that address (one per server, shared, closed when idle).
The interface a UDP query came in on is read from IP_PKTINFO; for TCP it is
asked of the kernel's flow table once per connection.

A cache hit is answered in the read callback itself; only UDP misses become
tasks, at most MAX_PENDING at once (beyond that, queries are dropped and
counted, as a busy resolver does, and the clients retry). A UDP reply is cut
to the size the client can take (`Query.max_udp`), with TC set.

DNS over TCP has bounds of its own, apart from UDP's pending queries, so
that a client holding connections, or one that never reads, costs only
itself (the [dns] tcp_* keys): connections per client address and overall
(at the overall bound, the idlest connection of the client holding the most
makes room for a client holding fewer, as RFC 7766 lets a server under
pressure do); an idle timeout; queries resolved at once per connection
(pipelined, answered as they complete, RFC 7766); and a write timeout: a
reply the client does not take in time closes its connection. Every refusal
and timeout is counted (`DnsServing`, in the DNS state).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from daetui.dns.controller import ClientInfo, DnsController, Pending
from daetui.dns.state import DnsServing
from daetui.dns.wire import FLAG_TC
from daetui.net.sockopts import SOL_IPV6, parse_origdst, reply_socket

log = logging.getLogger("daetui.dns")

Endpoint = tuple[str, int]
IfnameOf = Callable[[Endpoint, Endpoint], "str | None"]   # (client, server) of a TCP flow -> interface

IP_PKTINFO = 8
IPV6_RECVPKTINFO = 49
IPV6_PKTINFO = 50
BATCH = 64
MAX_PENDING = 1024       # UDP misses resolved at once
MAX_REPLY_SOCKETS = 256
REPLY_IDLE = 60.0
TCP_MAX_QUERIES = 1000   # per connection; then it is closed (the client opens another)


def _ifindex(anc: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in anc:
        if level == socket.SOL_IP and kind == IP_PKTINFO and len(data) >= 4:
            return struct.unpack_from("i", data)[0]
        if level == SOL_IPV6 and kind == IPV6_PKTINFO and len(data) >= 20:
            return struct.unpack_from("i", data, 16)[0]
    return None


def _link_local(addr: str) -> bool:
    return addr[:4].lower() == "fe80"


@dataclass
class _Counts:
    udp_dropped: int = 0
    udp_truncated: int = 0
    send_errors: int = 0
    tcp_queries: int = 0
    tcp_refused: int = 0
    tcp_evicted: int = 0
    tcp_idle_closed: int = 0
    tcp_write_timeouts: int = 0


@dataclass(eq=False)
class _TcpConn:
    """One DNS-over-TCP connection of a client."""

    addr: str
    sock: socket.socket
    last: float = field(default_factory=time.monotonic)  # when it last read a query or sent a reply
    inflight: int = 0
    writer: asyncio.StreamWriter | None = None
    closed: bool = False

    def close(self, reset: bool = False) -> None:
        """Close it now (its task sees the stream end); queries in flight are not answered.

        `reset`: with a reset, dropping what it did not take. A plain close would queue the FIN behind
        replies a client that never reads never takes: its socket would outlive it, unbounded.
        """
        if self.closed:
            return
        self.closed = True
        if reset:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if self.writer is not None:
            self.writer.transport.abort()
        else:
            self.sock.close()


class DnsServer:
    """Reads queries, hands them to the controller, sends the replies."""

    def __init__(self, controller: DnsController, ifname_of: IfnameOf | None = None) -> None:
        self.dns = controller
        self.ifname_of = ifname_of or (lambda c, s: None)
        self._udp: list[tuple[socket.socket, bool]] = []
        self._accepts: dict[int, asyncio.Task[None]] = {}  # by the listening socket's descriptor
        self._pending: set[asyncio.Task[None]] = set()   # UDP misses being resolved
        self._tcp_tasks: set[asyncio.Task[None]] = set()  # one per TCP connection
        self._clients: dict[str, set[_TcpConn]] = {}      # open TCP connections by client address
        self._tcp_open = 0
        self._replies: OrderedDict[tuple[str, int, int], tuple[socket.socket, float]] = OrderedDict()
        self._ifnames: dict[int, str | None] = {}
        self.c = _Counts()
        controller.serving = self.serving

    def serving(self) -> DnsServing:
        """The sockets' figures, for the DNS state."""
        c, cfg = self.c, self.dns.config
        return DnsServing(len(self._pending), MAX_PENDING, c.udp_dropped, c.udp_truncated, c.send_errors,
                          self._tcp_open, cfg.tcp_connections, cfg.tcp_connections_per_client, c.tcp_queries,
                          c.tcp_refused, c.tcp_evicted, c.tcp_idle_closed, c.tcp_write_timeouts)

    # -- lifecycle ---------------------------------------------------------------------------
    def serve_udp(self, sock: socket.socket, hijacked: bool) -> None:
        """Answer the queries arriving on `sock` (hijacked: from the kernel, reply as their server)."""
        if sock.family == socket.AF_INET:
            sock.setsockopt(socket.SOL_IP, IP_PKTINFO, 1)
        else:
            sock.setsockopt(SOL_IPV6, IPV6_RECVPKTINFO, 1)
        sock.setblocking(False)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_udp, sock, hijacked)
        self._udp.append((sock, hijacked))

    def serve_tcp(self, sock: socket.socket, hijacked: bool) -> None:
        sock.setblocking(False)
        self._accepts[sock.fileno()] = asyncio.ensure_future(self._accept(sock, hijacked))

    def unserve(self, socks: list[socket.socket]) -> None:
        """Stop serving these sockets (dns.bind's, before they are closed); connections they took stay."""
        loop = asyncio.get_running_loop()
        fds = {s.fileno() for s in socks}
        for sock, hijacked in list(self._udp):
            if sock.fileno() in fds:
                with contextlib.suppress(Exception):
                    loop.remove_reader(sock.fileno())
                self._udp.remove((sock, hijacked))
        for fd in fds:
            t = self._accepts.pop(fd, None)
            if t is not None:
                t.cancel()

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for sock, _ in self._udp:
            with contextlib.suppress(Exception):
                loop.remove_reader(sock.fileno())
        self._udp.clear()
        tasks = [*self._accepts.values(), *self._pending, *self._tcp_tasks]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        self._accepts.clear()
        for s, _ in self._replies.values():
            s.close()
        self._replies.clear()

    # -- UDP --------------------------------------------------------------------------------------
    def _on_udp(self, sock: socket.socket, hijacked: bool) -> None:
        for _ in range(BATCH):
            try:
                data, anc, _flags, addr = sock.recvmsg(65535, 512)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("dns udp: %s", e)
                return
            server = parse_origdst(anc) if hijacked else None
            if hijacked and server is None:
                continue  # not handed over by the kernel
            index = _ifindex(anc)
            scope = addr[3] if len(addr) > 3 and addr[3] else (index or 0)
            client = ClientInfo(addr[0], addr[1], self._ifname(index), server, scope=scope)
            try:
                r = self.dns.begin(data, client)
            except Exception:  # a bug must cost one query, never the listener
                log.exception("dns: query from %s", addr[0])
                continue
            if isinstance(r, Pending):
                if len(self._pending) >= MAX_PENDING:
                    self.c.udp_dropped += 1
                    continue
                task = asyncio.ensure_future(self._complete_udp(r, client, sock))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
            elif r is not None:
                self._send_udp(sock, client, r)

    async def _complete_udp(self, p: Pending, client: ClientInfo, sock: socket.socket) -> None:
        try:
            r = await self.dns.complete(p, client)
        except Exception:
            log.exception("dns: query from %s", client.addr)
            return
        self._send_udp(sock, client, r)

    def _send_udp(self, sock: socket.socket, client: ClientInfo, data: bytes) -> None:
        if len(data) > 3 and data[2] & (FLAG_TC >> 8):
            self.c.udp_truncated += 1
        to: tuple[str, int] | tuple[str, int, int, int] = (client.addr, client.port)
        if ":" in client.addr:
            to = (client.addr, client.port, 0, client.scope if _link_local(client.addr) else 0)
        try:
            if client.server is None:
                sock.sendto(data, to)
            else:
                self._reply_socket(client.server, client.scope).sendto(data, to)
        except OSError as e:
            self.c.send_errors += 1
            log.debug("dns reply to %s: %s", client.addr, e)

    def _reply_socket(self, server: Endpoint, scope: int = 0) -> socket.socket:
        now = time.monotonic()
        # A link-local server address exists once per interface: the scope is part of it.
        scope = scope if _link_local(server[0]) else 0
        key = (server[0], server[1], scope)
        hit = self._replies.get(key)
        if hit is not None:
            self._replies[key] = (hit[0], now)
            self._replies.move_to_end(key)
            return hit[0]
        for old, (s, last) in list(self._replies.items()):
            if now - last > REPLY_IDLE or len(self._replies) >= MAX_REPLY_SOCKETS:
                s.close()
                del self._replies[old]
        s = reply_socket(server, scope)
        self._replies[key] = (s, now)
        return s

    def _ifname(self, index: int | None) -> str | None:
        if index is None:
            return None
        if index not in self._ifnames:
            try:
                self._ifnames[index] = socket.if_indextoname(index)
            except OSError:
                return None
        return self._ifnames[index]

    # -- TCP ---------------------------------------------------------------------------------------
    async def _accept(self, lsock: socket.socket, hijacked: bool) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, addr = await loop.sock_accept(lsock)
            except OSError as e:
                log.error("dns accept: %s", e)
                await asyncio.sleep(0.1)
                continue
            conn = self._admit(sock, addr[0])
            if conn is None:
                sock.close()
                continue
            t = asyncio.ensure_future(self._tcp_client(conn, (addr[0], addr[1]), hijacked))
            self._tcp_tasks.add(t)
            t.add_done_callback(self._tcp_tasks.discard)

    def _admit(self, sock: socket.socket, addr: str) -> _TcpConn | None:
        """A new connection from `addr` within the bounds (making room if another client holds most), or None."""
        cfg = self.dns.config
        mine = self._clients.get(addr, set())
        if len(mine) >= cfg.tcp_connections_per_client:
            self.c.tcp_refused += 1
            log.debug("dns tcp from %s refused: %d connections open", addr, len(mine))
            return None
        if self._tcp_open >= cfg.tcp_connections:
            holder, theirs = max(self._clients.items(), key=lambda kv: len(kv[1]))
            if len(theirs) <= len(mine) + 1:
                self.c.tcp_refused += 1  # everyone holds about as many: first come, first served
                return None
            # The least recently active of them, preferring one with nothing in flight.
            victim = min(theirs, key=lambda c: (c.inflight > 0, c.last))
            self.c.tcp_evicted += 1
            log.debug("dns tcp: closing an idle connection of %s (%d open) for %s", holder, len(theirs), addr)
            self._forget(victim)
            victim.close(reset=True)
        conn = _TcpConn(addr, sock)
        self._clients.setdefault(addr, set()).add(conn)
        self._tcp_open += 1
        return conn

    def _forget(self, conn: _TcpConn) -> None:
        mine = self._clients.get(conn.addr)
        if mine is None or conn not in mine:
            return
        mine.discard(conn)
        self._tcp_open -= 1
        if not mine:
            del self._clients[conn.addr]

    async def _tcp_client(self, conn: _TcpConn, peer: Endpoint, hijacked: bool) -> None:
        sock = conn.sock
        sock.setblocking(False)
        inflight: set[asyncio.Task[None]] = set()
        try:
            try:
                reader, writer = await asyncio.open_connection(sock=sock)
            except OSError:
                conn.close()
                return
            conn.writer = writer
            if conn.closed:  # evicted while it was being set up
                writer.transport.abort()
                return
            name = sock.getsockname()
            server = (name[0], name[1]) if hijacked else None
            client = ClientInfo(peer[0], peer[1], self.ifname_of(peer, server) if server else None, server, tcp=True)
            slots = asyncio.Semaphore(self.dns.config.tcp_pipeline)
            lock = asyncio.Lock()
            for _ in range(TCP_MAX_QUERIES):
                data = await self._read_query(conn, reader)
                if data is None:
                    break
                await slots.acquire()  # at most tcp_pipeline in flight: the rest wait in the socket
                self.c.tcp_queries += 1
                try:
                    r = self.dns.begin(data, client)
                except Exception:  # a bug must cost one query, never the connection's client
                    log.exception("dns: query from %s", peer[0])
                    slots.release()
                    continue
                if r is None:
                    slots.release()
                    break  # unreadable: a TCP stream cannot be resynchronised
                if isinstance(r, Pending):
                    conn.inflight += 1
                    t = asyncio.ensure_future(self._tcp_answer(conn, writer, lock, slots, r, client))
                    inflight.add(t)
                    t.add_done_callback(inflight.discard)
                    continue
                sent = await self._tcp_send(conn, writer, lock, r)
                slots.release()
                if not sent:
                    break
            # The client said all it had to (or its budget is spent): its answers still go out.
            if inflight and not conn.closed:
                await asyncio.gather(*inflight, return_exceptions=True)
        except (ConnectionError, OSError) as e:
            log.debug("dns tcp %s: %s", peer[0], e)
        finally:
            for t in inflight:
                t.cancel()
            self._forget(conn)
            conn.close()

    async def _read_query(self, conn: _TcpConn, reader: asyncio.StreamReader) -> bytes | None:
        """The next query of a connection; None when it ends, is cut or idles (nothing in flight)."""
        idle = self.dns.config.tcp_idle_timeout
        while True:
            try:
                head = await asyncio.wait_for(reader.readexactly(2), idle)
                break
            except TimeoutError:
                if conn.inflight and not conn.closed:
                    continue  # answers still to come: not idle
                self.c.tcp_idle_closed += 1
                return None
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
        try:
            # The rest of a message started: it gets the idle time once more, then the stream is given up.
            data = await asyncio.wait_for(reader.readexactly(struct.unpack("!H", head)[0]), idle)
        except TimeoutError:
            self.c.tcp_idle_closed += 1
            return None
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        conn.last = time.monotonic()
        return data

    async def _tcp_answer(self, conn: _TcpConn, writer: asyncio.StreamWriter, lock: asyncio.Lock,
                          slots: asyncio.Semaphore, p: Pending, client: ClientInfo) -> None:
        try:
            r = await self.dns.complete(p, client)
            await self._tcp_send(conn, writer, lock, r)
        except Exception:
            log.exception("dns: query from %s", client.addr)
        finally:
            conn.inflight -= 1
            slots.release()

    async def _tcp_send(self, conn: _TcpConn, writer: asyncio.StreamWriter, lock: asyncio.Lock,
                        data: bytes) -> bool:
        """Send one reply within dns.tcp_write_timeout; False (and the connection closed) when it cannot."""
        async with lock:  # replies of pipelined queries leave whole, one after the other
            if conn.closed or writer.is_closing():
                return False
            writer.write(struct.pack("!H", len(data)) + data)
            try:
                await asyncio.wait_for(writer.drain(), self.dns.config.tcp_write_timeout)
            except TimeoutError:
                self.c.tcp_write_timeouts += 1
                log.debug("dns tcp %s: reply not taken in time; closed", conn.addr)
                conn.close(reset=True)
                return False
            except (ConnectionError, OSError):
                conn.close()
                return False
        conn.last = time.monotonic()
        return True
