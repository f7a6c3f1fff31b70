"""The UDP NAT table over loopback: replies from the original destination, idle expiry, size bound."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from daetui.control.connections import ConnectionTable
from daetui.control.udp import UdpNat

# The reply socket is transparent (IP_TRANSPARENT needs CAP_NET_ADMIN).
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for IP_TRANSPARENT")

# The flow's original destination, which the reply socket binds (as it binds a
# remote address on a router), and where the "remote" server really listens.
ORIG_DST = ("127.0.0.2", 5555)
SERVER_HOST = "127.0.0.3"


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.t = transport

    def datagram_received(self, data, addr):
        self.t.sendto(data, addr)


@pytest.fixture
async def echo():
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((SERVER_HOST, 0))
    transport, _ = await loop.create_datagram_endpoint(Echo, sock=sock)
    yield sock.getsockname()
    transport.close()


def make_nat(table: ConnectionTable, closed: list, server, **kw) -> UdpNat:
    async def opener(client, dst, first):
        up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        up.setblocking(False)
        up.connect(server)  # the "remote" end of the flow to dst
        conn = table.add(proto="udp", src=client, dst=dst, rule_index=None, rule="fallback", outbound="x",
                         stage="userspace")
        return up, conn

    def closer(conn, error):
        table.finish(conn, error)
        closed.append(conn)
    return UdpNat(opener, closer, **kw)


def client_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


async def test_reply_comes_from_the_original_destination_and_idle_entries_expire(echo):
    loop = asyncio.get_running_loop()
    table, closed = ConnectionTable(), []
    nat = make_nat(table, closed, echo, idle_timeout=0.4)
    nat.start([])
    c = client_socket()
    nat._from_client(c.getsockname(), ORIG_DST, b"hello")
    data, addr = await asyncio.wait_for(loop.sock_recvfrom(c, 100), 5)
    assert (data, addr) == (b"hello", ORIG_DST)
    nat._from_client(c.getsockname(), ORIG_DST, b"again")
    assert await asyncio.wait_for(loop.sock_recv(c, 100), 5) == b"again"
    assert len(nat.entries) == 1
    conn = next(iter(table.open.values()))
    assert (conn.up, conn.down) == (10, 10)
    await asyncio.sleep(1.5)
    assert nat.entries == {} and closed == [conn] and conn.state == "closed"
    await nat.stop()
    c.close()


async def test_the_table_is_bounded_and_evicts_the_least_recent(echo):
    table, closed = ConnectionTable(), []
    nat = make_nat(table, closed, echo, max_entries=2)
    nat.start([])
    clients = [client_socket() for _ in range(3)]
    for c in clients:
        nat._from_client(c.getsockname(), ORIG_DST, b"x")
        await asyncio.sleep(0.05)
    assert len(nat.entries) == 2 and nat.evicted == 1
    assert [x.src for x in closed] == [clients[0].getsockname()]
    await nat.stop()
    assert len(closed) == 3 and not nat._replies
    for c in clients:
        c.close()


# -- byte budgets: a black-holed proxy (issue 11, fix 5) ----------------------------------

BIG = 60_000  # a 60 KB datagram, as the memory test sends


class BlackHole:
    """A proxy's datagrams whose sends never complete (a stalled stream to a black-holed node)."""

    def __init__(self) -> None:
        self.closed = False

    async def send(self, data: bytes, host: str, port: int) -> None:
        await asyncio.Event().wait()

    async def recv(self) -> tuple[bytes, str, int]:
        await asyncio.Event().wait()
        raise EOFError

    def close(self) -> None:
        self.closed = True


def held_in_openings(nat: UdpNat) -> list[int]:
    return [o.size for o in nat._opening.values()]


async def test_datagrams_held_while_a_session_opens_stay_within_the_byte_budgets():
    never = asyncio.Event()

    async def opener(client, dst, first):
        await never.wait()  # the node is black-holed: its session never opens
        return None

    nat = UdpNat(opener, lambda conn, error: None, buffer_bytes=1 << 20, flow_buffer_bytes=256 << 10)
    nat.start([])
    sent = 0
    for round_ in range(10):
        for port in range(40000, 40040):  # 40 tuples, 10 datagrams of 60 KB each
            nat._from_client(("192.0.2.10", port), ORIG_DST, bytes([round_]) * BIG)
            sent += 1
        await asyncio.sleep(0)
    assert nat.buffered <= 1 << 20
    assert all(size <= 256 << 10 for size in held_in_openings(nat))
    assert nat.buffered == sum(held_in_openings(nat))
    held = sum(size // BIG for size in held_in_openings(nat))
    assert nat.buffer_drops == sent - held > 0
    await nat.stop()
    assert nat.buffered == 0 and nat._opening == {}


async def test_a_proxied_flows_outbox_stays_within_its_budget_and_drops_are_counted():
    table, closed = ConnectionTable(), []
    hole = BlackHole()

    async def opener(client, dst, first):
        conn = table.add(proto="udp", src=client, dst=dst, rule_index=None, rule="fallback", outbound="x",
                         stage="userspace")
        return hole, conn

    def closer(conn, error):
        table.finish(conn, error)
        closed.append(conn)

    nat = UdpNat(opener, closer, buffer_bytes=1 << 20, flow_buffer_bytes=256 << 10)
    nat.start([])
    client = ("192.0.2.10", 40000)
    nat._from_client(client, ORIG_DST, b"x" * BIG)
    for _ in range(50):
        await asyncio.sleep(0.01)
        if nat.entries:
            break
    for _ in range(100):
        nat._from_client(client, ORIG_DST, b"y" * BIG)
    entry = nat.entries[(client, ORIG_DST)]
    assert entry.outbox_bytes <= 256 << 10 and nat.buffered == entry.outbox_bytes
    assert nat.buffer_drops == 101 - entry.outbox_bytes // BIG > 0
    await nat.stop()
    assert nat.buffered == 0 and hole.closed


async def test_udp_flows_count_in_the_clients_flow_budget():
    from daetui.control.budget import FlowBudget

    never = asyncio.Event()

    async def opener(client, dst, first):
        await never.wait()
        return None

    budget = FlowBudget(max_flows=100, max_flows_per_client=4)
    nat = UdpNat(opener, lambda conn, error: None, budget=budget)
    nat.start([])
    for port in range(40000, 40010):
        nat._from_client(("192.0.2.10", port), ORIG_DST, b"q")
    nat._from_client(("192.0.2.11", 40000), ORIG_DST, b"q")  # another client still opens a flow
    assert budget.by_client == {"192.0.2.10": 4, "192.0.2.11": 1}
    assert nat.refused == 6 and budget.refused_client == 6
    await nat.stop()
    assert budget.flows == 0 and budget.by_client == {}
