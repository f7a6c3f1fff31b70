"""The DNS controller's sockets: the LAN's hijacked DNS, and `dns.bind`.

The kernel hands the LAN's port-53 flows to dedicated transparent listeners
(`Listeners.dns_udp`/`dns_tcp`), so what arrives there is DNS. A UDP reply
must come from the server the client asked: it leaves through a transparent
socket bound to that address (one per server, shared, closed when idle).
The interface a UDP query came in on is read from IP_PKTINFO; for TCP it is
asked of the kernel's flow table once per connection.

A cache hit is answered in the read callback itself; only misses become
tasks, at most MAX_PENDING at once (beyond that, queries are dropped and
counted, as a busy resolver does, and the clients retry).
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

from daetui.dns.controller import ClientInfo, DnsController, Pending
from daetui.net.sockopts import SOL_IPV6, parse_origdst, reply_socket

log = logging.getLogger("daetui.dns")

Endpoint = tuple[str, int]
IfnameOf = Callable[[Endpoint, Endpoint], "str | None"]   # (client, server) of a TCP flow -> interface

IP_PKTINFO = 8
IPV6_RECVPKTINFO = 49
IPV6_PKTINFO = 50
BATCH = 64
MAX_PENDING = 1024
MAX_REPLY_SOCKETS = 256
REPLY_IDLE = 60.0
TCP_IDLE = 10.0          # a TCP client silent this long is closed (RFC 7766 suggests seconds)
TCP_MAX_QUERIES = 1000   # per connection


def _ifindex(anc: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in anc:
        if level == socket.SOL_IP and kind == IP_PKTINFO and len(data) >= 4:
            return struct.unpack_from("i", data)[0]
        if level == SOL_IPV6 and kind == IPV6_PKTINFO and len(data) >= 20:
            return struct.unpack_from("i", data, 16)[0]
    return None


def _link_local(addr: str) -> bool:
    return addr[:4].lower() == "fe80"


class DnsServer:
    """Reads queries, hands them to the controller, sends the replies."""

    def __init__(self, controller: DnsController, ifname_of: IfnameOf | None = None) -> None:
        self.dns = controller
        self.ifname_of = ifname_of or (lambda c, s: None)
        self._udp: list[tuple[socket.socket, bool]] = []
        self._accepts: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._replies: OrderedDict[tuple[str, int, int], tuple[socket.socket, float]] = OrderedDict()
        self._ifnames: dict[int, str | None] = {}
        self.dropped = 0          # queries not taken: too many pending
        self.send_errors = 0

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
        self._accepts.append(asyncio.ensure_future(self._accept(sock, hijacked)))

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for sock, _ in self._udp:
            with contextlib.suppress(Exception):
                loop.remove_reader(sock.fileno())
        self._udp.clear()
        for t in [*self._accepts, *self._tasks]:
            t.cancel()
        for t in [*self._accepts, *self._tasks]:
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
                if len(self._tasks) >= MAX_PENDING:
                    self.dropped += 1
                    continue
                task = asyncio.ensure_future(self._complete_udp(r, client, sock))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
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
        to: tuple[str, int] | tuple[str, int, int, int] = (client.addr, client.port)
        if ":" in client.addr:
            to = (client.addr, client.port, 0, client.scope if _link_local(client.addr) else 0)
        try:
            if client.server is None:
                sock.sendto(data, to)
            else:
                self._reply_socket(client.server, client.scope).sendto(data, to)
        except OSError as e:
            self.send_errors += 1
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
            task = asyncio.ensure_future(self._tcp_client(sock, (addr[0], addr[1]), hijacked))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _tcp_client(self, sock: socket.socket, peer: Endpoint, hijacked: bool) -> None:
        sock.setblocking(False)
        try:
            reader, writer = await asyncio.open_connection(sock=sock)
        except OSError:
            sock.close()
            return
        try:
            name = sock.getsockname()
            server = (name[0], name[1]) if hijacked else None
            client = ClientInfo(peer[0], peer[1], self.ifname_of(peer, server) if server else None, server, tcp=True)
            for _ in range(TCP_MAX_QUERIES):
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                    data = await asyncio.wait_for(reader.readexactly(struct.unpack("!H", head)[0]), TCP_IDLE)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                r = await self.dns.handle(data, client)
                if r is None:
                    return  # unreadable: a TCP stream cannot be resynchronised
                writer.write(struct.pack("!H", len(r)) + r)
                await writer.drain()
        except (ConnectionError, OSError) as e:
            log.debug("dns tcp %s: %s", peer[0], e)
        finally:
            writer.close()
