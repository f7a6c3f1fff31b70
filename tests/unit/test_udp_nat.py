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
