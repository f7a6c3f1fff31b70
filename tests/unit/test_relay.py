"""The TCP relay, over real loopback sockets: exact bytes, half-close, resets."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest

from daetui.control.relay import HAVE_SPLICE, relay_sockets
from testkit.sockets import ByteCounter, read_all, tcp_pair

MODES = [pytest.param(True, id="splice", marks=pytest.mark.skipif(not HAVE_SPLICE, reason="no os.splice")),
         pytest.param(False, id="copy")]


@pytest.mark.parametrize("use_splice", MODES)
async def test_bytes_arrive_exactly_both_ways_with_half_close(use_splice):
    loop = asyncio.get_running_loop()
    client, relay_client_side = tcp_pair()
    relay_server_side, server = tcp_pair()
    up_data, down_data = os.urandom(5_000_003), os.urandom(2_000_001)
    up, down = ByteCounter(), ByteCounter()
    task = asyncio.ensure_future(relay_sockets(relay_client_side, relay_server_side, up, down, use_splice))

    async def serve() -> bytes:
        got = await read_all(server)          # the client's EOF arrives as EOF here
        await loop.sock_sendall(server, down_data)  # and the server can still answer
        server.shutdown(socket.SHUT_WR)
        return got

    async def use() -> bytes:
        await loop.sock_sendall(client, up_data)
        client.shutdown(socket.SHUT_WR)
        return await read_all(client)

    got_up, got_down = await asyncio.gather(serve(), use())
    assert await asyncio.wait_for(task, 10) is None
    assert hashlib.sha256(got_up).digest() == hashlib.sha256(up_data).digest()
    assert got_down == down_data
    assert (up.n, down.n) == (len(up_data), len(down_data))
    for s in (client, server, relay_client_side, relay_server_side):
        s.close()


@pytest.mark.parametrize("use_splice", MODES)
async def test_a_reset_ends_both_directions(use_splice):
    loop = asyncio.get_running_loop()
    client, relay_client_side = tcp_pair()
    relay_server_side, server = tcp_pair()
    task = asyncio.ensure_future(relay_sockets(relay_client_side, relay_server_side, ByteCounter(), ByteCounter(),
                                               use_splice))
    await loop.sock_sendall(client, b"hello")
    assert await loop.sock_recv(server, 5) == b"hello"
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    server.close()  # RST
    error = await asyncio.wait_for(task, 10)
    assert error is not None and "destination" in error
    relay_client_side.close()
    relay_server_side.close()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(read_all(client), 5)
    client.close()
