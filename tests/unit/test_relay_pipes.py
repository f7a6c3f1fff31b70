"""Splice pipes are pooled and bounded (issue 11, fix 2): an idle relay holds none.

Each splice relay used to hold a pipe per direction for its whole life: two
descriptors each, four per flow on top of its two sockets, so 2000 idle
flows held 8000 pipe descriptors. Counted here in /proc/self/fd.
"""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from daetui.control.relay import HAVE_SPLICE, relay_sockets
from testkit.sockets import ByteCounter, tcp_pair

pytestmark = pytest.mark.skipif(not HAVE_SPLICE, reason="no os.splice")

FLOWS = 50


def pipe_fds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
        except OSError:
            continue
    return n


async def exchange(client, server) -> None:  # type: ignore[no-untyped-def]
    """A byte each way through the relay."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(client, b"u")
    assert await asyncio.wait_for(loop.sock_recv(server, 1), 5) == b"u"
    await loop.sock_sendall(server, b"d")
    assert await asyncio.wait_for(loop.sock_recv(client, 1), 5) == b"d"


async def test_idle_splice_relays_hold_no_pipes():
    before = pipe_fds()
    ends, relays = [], []
    try:
        for _ in range(FLOWS):
            client, relay_client = tcp_pair()
            relay_server, server = tcp_pair()
            ends += [client, relay_client, relay_server, server]
            relays.append(asyncio.ensure_future(
                relay_sockets(relay_client, relay_server, ByteCounter(), ByteCounter(), True)))
            await exchange(client, server)
        await asyncio.sleep(0.1)  # every relay idle now, waiting for its sockets
        held = pipe_fds() - before
        # The pool keeps a few empty pipes for the next bytes; 4 descriptors per relay was 200 here.
        assert held <= 2 * 32, f"{held} pipe descriptors held by {FLOWS} idle relays"
    finally:
        for t in relays:
            t.cancel()
        await asyncio.gather(*relays, return_exceptions=True)
        for s in ends:
            s.close()


async def test_over_the_pipe_bound_bytes_are_copied_and_still_arrive_exactly():
    from daetui.control.relay import PipePool

    loop = asyncio.get_running_loop()
    pool = PipePool(bound=2, keep=1)
    ends, relays = [], []
    try:
        pairs = []
        for _ in range(6):
            client, relay_client = tcp_pair()
            relay_server, server = tcp_pair()
            ends += [client, relay_client, relay_server, server]
            # Small buffers toward the server: a relay blocks on it, holding its pipe, until it reads.
            relay_server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            pairs.append((client, server))
            relays.append(asyncio.ensure_future(
                relay_sockets(relay_client, relay_server, ByteCounter(), ByteCounter(), True, pool)))
        data = os.urandom(3_000_000)

        async def send_and_check(client, server) -> None:  # type: ignore[no-untyped-def]
            async def read() -> bytes:
                await asyncio.sleep(0.3)  # the servers read late: the relays hold their pipes meanwhile
                got = bytearray()
                while len(got) < len(data):
                    got += await loop.sock_recv(server, 1 << 16)
                return bytes(got)
            _, got = await asyncio.gather(loop.sock_sendall(client, data), read())
            assert got == data

        await asyncio.wait_for(asyncio.gather(*(send_and_check(c, s) for c, s in pairs)), 60)
        assert pool.total <= 2 and pool.fallbacks > 0
    finally:
        for t in relays:
            t.cancel()
        await asyncio.gather(*relays, return_exceptions=True)
        for s in ends:
            s.close()
    assert pool.held == 0
