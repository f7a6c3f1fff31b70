"""The DNS controller and its sockets on loopback, against a DNS server played here: real sockets, no kernel.

What one client does must cost only that client: DNS-over-TCP connections
have bounds of their own (per client, overall, idle, queries in flight, a
write timeout), apart from UDP's pending queries; a UDP reply is cut to the
size the client can take; an `asis` answer serves no query to another server
and names nothing in the kernel. Clients are told apart by address: each
test's clients bind 127.0.0.x addresses of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.rdatatype
import dns.rrset
import pytest

from daetui.config.errors import ConfigError
from daetui.config.load import parse_config
from daetui.config.model import DnsConfig
from daetui.dns import serve
from daetui.dns.controller import ClientInfo, DnsController
from daetui.dns.serve import DnsServer
from daetui.dns.upstream import UpstreamRoute
from testkit.sockets import udp_and_tcp_on_one_port

GOOD = "192.0.2.1"
BIG_A = 100        # A records of big.test: ~1.7 KB, more than 1232
HUGE_TXT = 240     # TXT strings of 250 bytes in huge.test: ~62 KB, as much as DNS over TCP carries
# The defaults of dns.tcp_write_timeout, tcp_connections_per_client and tcp_pipeline (checked by each test).
WRITE_TIMEOUT = 5.0
PER_CLIENT = 32
PIPELINE = 16


# -- a DNS server played here ---------------------------------------------------------------

@dataclass
class FakeServer:
    """UDP and TCP on one loopback port: big.test (many A), huge.test (a big TXT), any other name -> `address`."""

    host: str = "127.0.0.1"
    address: str = GOOD
    delay: float = 0.0
    ttl: int = 300
    port: int = 0
    queries: int = 0
    active: int = 0
    peak: int = 0                       # queries being answered at once, at most
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _udp: asyncio.DatagramTransport | None = None
    _tcp: asyncio.Server | None = None

    async def start(self) -> FakeServer:
        loop = asyncio.get_running_loop()
        server = self

        class Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                t = loop.create_task(server._udp_answer(data, addr))
                server._tasks.add(t)
                t.add_done_callback(server._tasks.discard)

        # Both sockets bound before either serves: the UDP port the kernel picks may be
        # held by another test's TCP socket (it was, once, in CI).
        u, t = udp_and_tcp_on_one_port(self.host)
        self.port = u.getsockname()[1]
        self._udp, _ = await loop.create_datagram_endpoint(Proto, sock=u)
        self._tcp = await asyncio.start_server(self._tcp_client, sock=t)
        return self

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()

    @property
    def url(self) -> str:
        return f"udp://{self.host}:{self.port}"

    async def _answer(self, data: bytes) -> bytes:
        self.queries += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            q = dns.message.from_wire(data)
            r = dns.message.make_response(q)
            name = q.question[0].name
            text = name.to_text(omit_final_dot=True)
            if text == "big.test":
                r.answer.append(dns.rrset.from_text(name, self.ttl, "IN", "A",
                                                    *(f"10.0.{i // 250}.{i % 250}" for i in range(BIG_A))))
            elif text == "huge.test":
                r.answer.append(dns.rrset.from_text(name, self.ttl, "IN", "TXT",
                                                    *(f'"{i:03d}{"x" * 247}"' for i in range(HUGE_TXT))))
            elif q.question[0].rdtype == dns.rdatatype.A:
                r.answer.append(dns.rrset.from_text(name, self.ttl, "IN", "A", self.address))
            return r.to_wire(max_size=65535)
        finally:
            self.active -= 1

    async def _udp_answer(self, data: bytes, addr: tuple[str, int]) -> None:
        out = await self._answer(data)
        assert self._udp is not None
        self._udp.sendto(out, addr)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                n = struct.unpack("!H", await reader.readexactly(2))[0]
                out = await self._answer(await reader.readexactly(n))
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


# -- the controller and its server -------------------------------------------------------------

@dataclass
class Served:
    """A DnsController and DnsServer answering on 127.0.0.1 (UDP and TCP, one port), not hijacked."""

    controller: DnsController
    server: DnsServer
    port: int
    fed: list[tuple[tuple[str, ...], tuple[object, ...]]]
    socks: list[socket.socket]


def _direct(ip: str, port: int, proto: str) -> UpstreamRoute:
    return UpstreamRoute("direct", "fallback")


@contextlib.asynccontextmanager
async def served(config: DnsConfig) -> AsyncIterator[Served]:
    fed: list[tuple[tuple[str, ...], tuple[object, ...]]] = []
    controller = DnsController(config, route=_direct, feed=lambda names, ips, _deadline: fed.append((names, ips)))
    controller.start()
    server = DnsServer(controller)
    u, t = udp_and_tcp_on_one_port()
    port = u.getsockname()[1]
    server.serve_udp(u, hijacked=False)
    server.serve_tcp(t, hijacked=False)
    try:
        yield Served(controller, server, port, fed, [u, t])
    finally:
        await server.stop()
        await controller.stop()
        u.close()
        t.close()


@contextlib.asynccontextmanager
async def fake(**kw: object) -> AsyncIterator[FakeServer]:
    f = await FakeServer(**kw).start()  # type: ignore[arg-type]
    try:
        yield f
    finally:
        await f.stop()


def query(name: str, rdtype: str = "A", payload: int | None = None, qid: int = 1) -> bytes:
    q = dns.message.make_query(name, rdtype, use_edns=0 if payload else False, payload=payload or 1232)
    q.id = qid
    return q.to_wire()


async def udp_ask(port: int, wire: bytes, source: str = "127.0.0.1", timeout: float = 3.0) -> bytes:
    loop = asyncio.get_running_loop()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((source, 0))
        s.setblocking(False)
        s.connect(("127.0.0.1", port))
        await loop.sock_sendall(s, wire)
        return await asyncio.wait_for(loop.sock_recv(s, 65535), timeout)
    finally:
        s.close()


async def tcp_open(port: int, source: str = "127.0.0.1", rcvbuf: int = 0) -> socket.socket:
    loop = asyncio.get_running_loop()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((source, 0))
    s.setblocking(False)
    await loop.sock_connect(s, ("127.0.0.1", port))
    return s


async def tcp_send(s: socket.socket, *wires: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(s, b"".join(struct.pack("!H", len(w)) + w for w in wires))


async def tcp_read(s: socket.socket, timeout: float = 3.0) -> bytes | None:
    """One message; None when the server closed the connection."""
    loop = asyncio.get_running_loop()

    async def exactly(n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            try:
                chunk = await loop.sock_recv(s, n - len(buf))
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    async def one() -> bytes | None:
        head = await exactly(2)
        return None if head is None else await exactly(struct.unpack("!H", head)[0])

    return await asyncio.wait_for(one(), timeout)


def addresses(wire: bytes) -> list[str]:
    m = dns.message.from_wire(wire)
    return sorted(rd.address for rr in m.answer if rr.rdtype == dns.rdatatype.A for rd in rr)


def tcp_state(s: socket.socket) -> int:
    """The kernel's TCP state of the socket (1: established, 7: closed)."""
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


async def tcp_closed_within(s: socket.socket, seconds: float) -> bool:
    """Whether the server ends `s` within `seconds`, seen by the socket's state (nothing is read)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        if tcp_state(s) != 1:
            return True
        await asyncio.sleep(0.05)
    return False


async def closed_by_server(s: socket.socket, timeout: float = 3.0) -> bool:
    """Whether the server closes `s` (it sends nothing first) within `timeout`."""
    try:
        return await tcp_read(s, timeout) is None
    except TimeoutError:
        return False


# -- UDP: the reply's size ---------------------------------------------------------------------

async def test_a_udp_reply_is_cut_at_the_size_the_client_takes_and_at_most_ours():
    async with fake() as up, served(DnsConfig(upstream={"up": f"tcp://127.0.0.1:{up.port}"})) as s:
        # The upstream's 1.7 KB answer, whole over TCP.
        c = await tcp_open(s.port)
        try:
            await tcp_send(c, query("big.test", payload=4096))
            whole = await tcp_read(c)
        finally:
            c.close()
        assert whole is not None and len(addresses(whole)) == BIG_A and len(whole) > 1232
        # A client advertising 4096 bytes gets at most the 1232 we advertise over UDP (no fragments), TC set.
        for payload in (4096, 1400):
            r = await udp_ask(s.port, query("big.test", payload=payload))
            m = dns.message.from_wire(r)
            assert m.flags & dns.flags.TC and len(r) <= 1232, (payload, len(r))
            assert m.edns == 0 and m.payload == 1232 and not m.answer
        # Without EDNS: 512 bytes (RFC 1035).
        r = await udp_ask(s.port, query("big.test"))
        assert dns.message.from_wire(r).flags & dns.flags.TC and len(r) <= 512
        # What fits goes whole.
        assert addresses(await udp_ask(s.port, query("www.test", payload=4096))) == [GOOD]
        assert s.controller.state().serving.udp_truncated == 3


# -- TCP: bounds of its own ----------------------------------------------------------------------

async def test_idle_tcp_connections_do_not_take_udp_pending_slots(monkeypatch):
    monkeypatch.setattr(serve, "MAX_PENDING", 8)
    async with fake(delay=1.0) as up, served(DnsConfig(upstream={"up": up.url})) as s:
        idle = [await tcp_open(s.port, "127.0.0.2") for _ in range(12)]
        try:
            await asyncio.sleep(0.2)  # all accepted
            # A UDP miss of another client is resolved: the TCP connections are not in UDP's pool.
            assert addresses(await udp_ask(s.port, query("a.test"), "127.0.0.3")) == [GOOD]
            st = s.controller.state().serving
            assert st.tcp_open == 12 and st.udp_dropped == 0
            # UDP's own bound holds: 8 slow misses pending, the rest dropped and counted.
            socks = []
            for i in range(12):
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.sendto(query(f"n{i}.test"), ("127.0.0.1", s.port))
                socks.append(u)
            await asyncio.sleep(0.2)
            st = s.controller.state().serving
            assert (st.udp_pending, st.udp_pending_max, st.udp_dropped) == (8, 8, 4)
            for u in socks:
                u.close()
        finally:
            for c in idle:
                c.close()


async def test_a_client_that_never_reads_is_closed_after_the_write_timeout_and_others_are_served():
    async with fake() as up, served(DnsConfig(upstream={"up": f"tcp://127.0.0.1:{up.port}"})) as s:
        # Replies of ~62 KB to a client with the smallest receive buffer that reads none of them.
        stuck = await tcp_open(s.port, "127.0.0.2", rcvbuf=1)
        try:
            await tcp_send(stuck, *(query("huge.test", "TXT", qid=i) for i in range(200)))
            await asyncio.sleep(0.5)
            # Meanwhile others are answered, over UDP and TCP.
            assert addresses(await udp_ask(s.port, query("x.test"), "127.0.0.3")) == [GOOD]
            other = await tcp_open(s.port, "127.0.0.3")
            try:
                await tcp_send(other, query("y.test"))
                r = await tcp_read(other)
                assert r is not None and addresses(r) == [GOOD]
            finally:
                other.close()
            # The stuck one is closed once a reply waits longer than tcp_write_timeout.
            assert await tcp_closed_within(stuck, WRITE_TIMEOUT + 10.0), \
                "a client that never reads still holds its connection"
        finally:
            stuck.close()
        assert s.controller.config.tcp_write_timeout == WRITE_TIMEOUT
        for _ in range(50):
            st = s.controller.state().serving
            if st.tcp_open == 0:
                break
            await asyncio.sleep(0.1)
        assert st.tcp_write_timeouts == 1 and st.tcp_open == 0


async def test_connections_per_client_are_bounded_and_other_clients_still_connect():
    async with fake() as up, served(DnsConfig(upstream={"up": up.url})) as s:
        limit = PER_CLIENT
        held = [await tcp_open(s.port, "127.0.0.2") for _ in range(limit)]
        try:
            extra = await tcp_open(s.port, "127.0.0.2")
            held.append(extra)
            assert await closed_by_server(extra), "a client beyond its bound still got a connection"
            # The ones it holds still work, and another client connects.
            await tcp_send(held[0], query("a.test"))
            r = await tcp_read(held[0])
            assert r is not None and addresses(r) == [GOOD]
            other = await tcp_open(s.port, "127.0.0.3")
            held.append(other)
            await tcp_send(other, query("b.test"))
            r = await tcp_read(other)
            assert r is not None and addresses(r) == [GOOD]
            st = s.controller.state().serving
            assert (st.tcp_open, st.tcp_refused, st.tcp_per_client_max) == (limit + 1, 1, limit)
            assert s.controller.config.tcp_connections_per_client == PER_CLIENT
        finally:
            for c in held:
                c.close()


async def test_at_the_overall_bound_the_client_holding_most_makes_room():
    cfg = DnsConfig(upstream={"up": "udp://127.0.0.1:9"}, tcp_connections=8, tcp_connections_per_client=6)
    async with served(cfg) as s:
        a = [await tcp_open(s.port, "127.0.0.2") for _ in range(6)]
        b = [await tcp_open(s.port, "127.0.0.3") for _ in range(2)]
        try:
            await asyncio.sleep(0.2)
            c1 = await tcp_open(s.port, "127.0.0.4")
            await asyncio.sleep(0.2)
            # C got in; one of A's six (the least recently active: the first) made room.
            assert await closed_by_server(a[0], 1.0)
            st = s.controller.state().serving
            assert (st.tcp_open, st.tcp_evicted, st.tcp_refused) == (8, 1, 0)
            # A, now the client with the most (5), asks for more: the bound is full and A holds most: refused.
            a6 = await tcp_open(s.port, "127.0.0.2")
            assert await closed_by_server(a6, 1.0)
            assert s.controller.state().serving.tcp_refused == 1
            # B (2) may still open: A (5) has more than B would (3).
            b3 = await tcp_open(s.port, "127.0.0.3")
            await asyncio.sleep(0.2)
            st = s.controller.state().serving
            assert (st.tcp_open, st.tcp_evicted) == (8, 2)
            for c in (c1, a6, b3):
                c.close()
        finally:
            for c in a + b:
                c.close()


async def test_pipelined_queries_are_resolved_together_up_to_the_bound():
    async with fake(delay=1.0) as up, served(DnsConfig(upstream={"up": up.url})) as s:
        bound = PIPELINE
        c = await tcp_open(s.port, "127.0.0.2")
        try:
            await tcp_send(c, *(query(f"p{i}.test", qid=100 + i) for i in range(bound + 4)))
            ids = set()
            for _ in range(bound + 4):
                r = await tcp_read(c, 10.0)
                assert r is not None
                ids.add(dns.message.from_wire(r).id)
        finally:
            c.close()
        assert ids == set(range(100, 100 + bound + 4))
        # Resolved at once, as many as the bound, no more (the rest waited in the socket).
        assert up.peak == bound
        assert s.controller.config.tcp_pipeline == PIPELINE


async def test_an_idle_tcp_client_is_closed_but_not_one_waiting_for_its_answer():
    async with fake(delay=1.5) as up:
        cfg = DnsConfig(upstream={"up": up.url}, tcp_idle_timeout=0.5)
        async with served(cfg) as s:
            idle = await tcp_open(s.port, "127.0.0.2")
            busy = await tcp_open(s.port, "127.0.0.3")
            try:
                await tcp_send(busy, query("slow.test"))
                assert await closed_by_server(idle, 3.0)
                r = await tcp_read(busy, 5.0)  # 1.5 s upstream > 0.5 s idle: still answered
                assert r is not None and addresses(r) == [GOOD]
                assert await closed_by_server(busy, 3.0)  # then idle
            finally:
                idle.close()
                busy.close()
            assert s.controller.state().serving.tcp_idle_closed == 2


# -- asis: whose answer a query gets ---------------------------------------------------------------

async def test_an_asis_answer_is_kept_for_the_server_asked_and_names_nothing():
    async with fake(host="127.0.0.2", address="203.0.113.66", ttl=604800) as own, \
            fake(host="127.0.0.3", port=0) as configured:
        cfg = DnsConfig(upstream={"up": configured.url})  # request fallback: asis
        fed: list[tuple[tuple[str, ...], tuple[object, ...]]] = []
        c = DnsController(cfg, route=_direct, feed=lambda n, ips, _d: fed.append((n, ips)))
        a = ClientInfo("192.0.2.10", 1000, "lan0", ("127.0.0.2", own.port))
        b = ClientInfo("192.0.2.11", 1000, "lan0", ("127.0.0.3", configured.port))
        # A asks its own server: its answer, named nowhere.
        assert addresses(await c.handle(query("www.test"), a)) == ["203.0.113.66"]
        assert fed == []
        # B asks the configured upstream at its address: that upstream's answer, named in the kernel.
        assert addresses(await c.handle(query("www.test"), b)) == [GOOD]
        assert [ips for _, ips in fed] == [(ipaddress.ip_address(GOOD),)]
        # The console (no server of its own) gets the configured upstream's too.
        assert addresses(await c.handle(query("www.test"), ClientInfo("console"))) == [GOOD]
        # Another client asking A's server gets that server's answer from its cache: what it would say anyway.
        c2 = ClientInfo("192.0.2.12", 1000, "lan0", ("127.0.0.2", own.port))
        assert addresses(await c.handle(query("www.test"), c2)) == ["203.0.113.66"]
        assert own.queries == 1 and configured.queries == 1
        rows = {r.upstream: r for r in c.state().cache}
        assert rows[f"asis 127.0.0.2:{own.port}"].scope == f"asis 127.0.0.2:{own.port}"
        assert not rows[f"asis 127.0.0.2:{own.port}"].kernel and rows["up"].kernel and rows["up"].scope == ""
        assert c.state().counters.asis_scoped == 1
        assert len(fed) == 2 and all(ips == (ipaddress.ip_address(GOOD),) for _, ips in fed)
        await c.stop()


# -- the config keys -------------------------------------------------------------------------------

def test_the_tcp_bounds_are_config_keys_and_zero_is_refused_where_it_is_written():
    cfg = parse_config('[dns]\ntcp_connections = 64\ntcp_connections_per_client = 4\ntcp_idle_timeout = "3s"\n'
                       'tcp_write_timeout = "2s"\ntcp_pipeline = 2\n[routing]\nfallback = "direct"\n', "c.toml")
    d = cfg.dns
    assert (d.tcp_connections, d.tcp_connections_per_client, d.tcp_idle_timeout, d.tcp_write_timeout,
            d.tcp_pipeline) == (64, 4, 3.0, 2.0, 2)
    for line in ('tcp_write_timeout = "0s"', 'tcp_idle_timeout = "0"', "tcp_connections = 0", "tcp_pipeline = 0",
                 "tcp_connections_per_client = -1"):
        with pytest.raises(ConfigError) as e:
            parse_config(f"# dns\n[dns]\n{line}\n[routing]\nfallback = \"direct\"\n", "c.toml")
        assert "c.toml:3:" in str(e.value) and "expected" in str(e.value), str(e.value)
