"""The upstream UDP sockets (daetui.dns.udp): reused a bounded number of times, replies matched, errors contained.

The upstream is a DNS server played here on loopback; it notes the source port and ID of
every query, and can stay silent, answer late, or send forgeries before the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import dns.message
import dns.rrset
import pytest

from daetui.config.dns_upstream import parse_upstream
from daetui.dns import udp
from daetui.dns.controller import question_bytes
from daetui.dns.upstream import Upstream, UpstreamError, UpstreamRoute

Q = question_bytes("www.example.test", 1)


def _direct(ip: str, port: int, proto: str) -> UpstreamRoute:
    return UpstreamRoute("direct", "fallback")


def a_of(wire: bytes) -> list[str]:
    return [rd.to_text() for rr in dns.message.from_wire(wire).answer for rd in rr]


def answer(data: bytes, address: str = "192.0.2.1") -> bytes:
    q = dns.message.from_wire(data)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(q.question[0].name, 300, "IN", "A", address))
    return r.to_wire()


@dataclass
class Server:
    """Plain DNS over UDP on 127.0.0.1; `reply` makes the datagrams sent back for a query (default: its answer)."""

    reply: Callable[[bytes], list[bytes]] = lambda data: [answer(data)]
    delay: float = 0.0
    seen: list[tuple[int, int]] = field(default_factory=list)   # (source port, query ID)
    port: int = 0
    _transport: asyncio.DatagramTransport | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> Server:
        loop = asyncio.get_running_loop()
        me = self

        class Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                me.seen.append((addr[1], struct.unpack_from("!H", data)[0]))
                t = loop.create_task(me._answer(data, addr))
                me._tasks.add(t)
                t.add_done_callback(me._tasks.discard)

        self._transport, _ = await loop.create_datagram_endpoint(Proto, local_addr=("127.0.0.1", self.port))
        self.port = self._transport.get_extra_info("sockname")[1]
        return self

    def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        for out in self.reply(data):
            if self._transport is not None:
                self._transport.sendto(out, addr)

    @property
    def ports(self) -> list[int]:
        return [p for p, _ in self.seen]


@contextlib.asynccontextmanager
async def upstream(server: Server, timeout: float = 1.0, mark: int = 0) -> AsyncIterator[Upstream]:
    up = Upstream(parse_upstream("u", f"udp://127.0.0.1:{server.port}"), _direct, mark=mark, timeout=timeout)
    try:
        yield up
    finally:
        await up.close()


@contextlib.asynccontextmanager
async def serving(**kw: object) -> AsyncIterator[Server]:
    s = await Server(**kw).start()  # type: ignore[arg-type]
    try:
        yield s
    finally:
        s.stop()


def pool(up: Upstream) -> udp.UdpPool:
    assert up._udp_pool is not None
    return up._udp_pool


async def test_a_socket_is_reused_then_replaced_after_its_uses():
    async with serving() as server, upstream(server) as up:
        for _ in range(udp.SOCKET_USES):
            assert a_of(await up.query(Q)) == ["192.0.2.1"]
        assert len(set(server.ports)) == 1 and pool(up).opened == 1
        ids = [qid for _, qid in server.seen]
        assert len(set(ids)) == len(ids)  # never an ID twice on one socket
        assert a_of(await up.query(Q)) == ["192.0.2.1"]
        assert pool(up).opened == 2 and server.ports[-1] != server.ports[0]  # a new source port
        assert pool(up).sockets == 1  # the used-up one is closed
        assert up.stats.mismatched == 0


async def test_a_socket_is_replaced_after_its_age(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(udp, "SOCKET_AGE", 0.05)
    async with serving() as server, upstream(server) as up:
        await up.query(Q)
        await up.query(Q)
        assert pool(up).opened == 1
        await asyncio.sleep(0.1)
        await up.query(Q)
        assert pool(up).opened == 2 and pool(up).sockets == 1


async def test_queries_at_once_share_sockets_within_the_bounds(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(udp, "SOCKET_USES", 4)
    monkeypatch.setattr(udp, "MAX_SOCKETS", 2)
    names = [f"n{i}.example.test" for i in range(20)]

    def numbered(data: bytes) -> list[bytes]:  # n<i>.example.test is 192.0.2.<i + 1>
        i = int(dns.message.from_wire(data).question[0].name.labels[0][1:])
        return [answer(data, f"192.0.2.{i + 1}")]

    async with serving(delay=0.02, reply=numbered) as server, upstream(server) as up:
        most = 0

        async def watch() -> None:
            nonlocal most
            while True:
                if up._udp_pool is not None:
                    most = max(most, up._udp_pool.sockets)
                await asyncio.sleep(0.001)

        w = asyncio.ensure_future(watch())
        got = await asyncio.gather(*(up.query(question_bytes(n, 1)) for n in names))
        w.cancel()
        # Each query its own answer, though up to 4 shared a socket and 20 waited for 2 sockets.
        assert [a_of(g) for g in got] == [[f"192.0.2.{i + 1}"] for i in range(20)]
        assert most <= 2 and pool(up).opened == 5
        assert up.stats.mismatched == 0


async def test_forged_and_stray_replies_are_counted_and_ignored():
    def forgeries(data: bytes) -> list[bytes]:
        real = answer(data)
        other_id = struct.pack("!H", struct.unpack_from("!H", real)[0] ^ 1) + real[2:]
        q = dns.message.from_wire(data)
        q.question[0].name = dns.name.from_text("evil.example.test")  # type: ignore[misc]
        other_question = answer(q.to_wire(), "198.51.100.66")
        return [other_id, other_question, b"\x00", real]

    async with serving(reply=forgeries) as server, upstream(server) as up:
        assert a_of(await up.query(Q)) == ["192.0.2.1"]
        assert up.stats.mismatched == 3  # wrong ID, wrong question, too short: the answer still taken
        assert up.stats.errors == 0


async def test_a_datagram_from_another_address_never_reaches_the_socket():
    async with serving(delay=0.1) as server, upstream(server) as up:
        task = asyncio.ensure_future(up.query(Q))
        while not server.seen:
            await asyncio.sleep(0.005)
        port, qid = server.seen[0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as liar:  # right port and ID, wrong source
            forged = dns.message.from_wire(answer(dns.message.make_query("www.example.test", "A").to_wire(),
                                                  "198.51.100.66"))
            forged.id = qid
            liar.sendto(forged.to_wire(), ("127.0.0.1", port))
        assert a_of(await task) == ["192.0.2.1"]  # the connected socket takes only the upstream's datagrams


async def test_a_timeout_then_a_late_reply_is_dropped_uncounted():
    async with serving(delay=0.3) as server, upstream(server, timeout=0.1) as up:
        with pytest.raises(UpstreamError, match=r"no answer in 0\.1s"):
            await up.query(Q)
        assert (up.stats.timeouts, up.stats.errors) == (1, 1)
        server.delay = 0.0
        assert a_of(await up.query(Q)) == ["192.0.2.1"]  # the same socket, a new ID
        await asyncio.sleep(0.35)  # the first query's answer arrives now
        assert up.stats.mismatched == 0
        assert len(set(server.ports)) == 1 and len({qid for _, qid in server.seen}) == 2


async def test_a_caller_s_deadline_before_the_upstream_s_timeout_is_not_the_upstream_s_fault():
    async with serving(delay=0.5) as server, upstream(server, timeout=2.0) as up:
        with pytest.raises(TimeoutError):
            await up.query(Q, deadline=asyncio.get_running_loop().time() + 0.05)
        assert (up.stats.timeouts, up.stats.errors) == (0, 0)


async def test_a_socket_error_fails_its_queries_and_the_next_query_gets_a_new_socket():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens there: the port unreachable comes back as a socket error.
    server = Server(port=port)
    async with upstream(server) as up:
        with pytest.raises(UpstreamError, match="Connection refused"):
            await up.query(Q)
        assert pool(up).sockets == 0 and pool(up).opened == 1  # closed at once
        await server.start()
        try:
            assert a_of(await up.query(Q)) == ["192.0.2.1"]
            assert pool(up).opened == 2
        finally:
            server.stop()


async def test_an_error_fails_every_query_waiting_on_the_socket():
    async with serving(delay=0.2) as server, upstream(server) as up:
        tasks = [asyncio.ensure_future(up.query(question_bytes(f"n{i}.test", 1))) for i in range(3)]
        while len(server.seen) < 3:
            await asyncio.sleep(0.005)
        s = next(iter(pool(up)._open))
        pool(up)._broken(s, ConnectionRefusedError(111, "Connection refused"))
        for r in await asyncio.gather(*tasks, return_exceptions=True):
            assert isinstance(r, UpstreamError) and "Connection refused" in str(r)
        assert up.stats.errors == 3 and pool(up).sockets == 0
        await asyncio.sleep(0.25)  # their answers come to a closed socket: nothing to count
        assert up.stats.mismatched == 0


async def test_every_socket_carries_the_mark():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 0x1234)
        except PermissionError:
            pytest.skip("setting SO_MARK needs CAP_NET_ADMIN")
    async with serving() as server, upstream(server, mark=0x1234) as up:
        marks = set()
        for _ in range(udp.SOCKET_USES + 1):
            await up.query(Q)
            marks |= {s.sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) for s in pool(up)._open}
        assert marks == {0x1234} and pool(up).opened == 2


async def test_closing_the_upstream_lets_queries_in_flight_finish():
    async with serving(delay=0.1) as server, upstream(server) as up:
        await up.query(Q)
        first = pool(up)
        task = asyncio.ensure_future(up.query(Q))
        await asyncio.sleep(0.02)
        await up.close()
        assert a_of(await task) == ["192.0.2.1"]  # answered on its retired socket, which then closes
        assert first.sockets == 0
        assert a_of(await up.query(Q)) == ["192.0.2.1"]  # and the upstream still works


def test_under_uvloop_too():
    # daetui's own loops are uvloop's: its readers, and its socket errors, behave as the stdlib loop's.
    uvloop = pytest.importorskip("uvloop")

    async def run() -> tuple[list[str], str, int]:
        async with serving() as server, upstream(server) as up:
            got = [a_of(await up.query(Q)) for _ in range(udp.SOCKET_USES + 1)][-1]
            server.stop()
            await asyncio.sleep(0.01)  # its socket closes
            with pytest.raises(UpstreamError) as e:
                await up.query(Q)
            return got, str(e.value), pool(up).opened

    got, error, opened = uvloop.run(run())
    assert got == ["192.0.2.1"] and "Connection refused" in error and opened == 2
