"""Loopback socket pairs and what reads them: for tests of the relays and the protocol streams."""

from __future__ import annotations

import asyncio
import socket


def tcp_pair(server_timeout: float | None = None) -> tuple[socket.socket, socket.socket]:
    """Two connected TCP sockets over loopback, (client end, server end), both non-blocking.

    With `server_timeout` the server end blocks instead, for at most that long:
    for a test that plays the server with plain calls.
    """
    with socket.create_server(("127.0.0.1", 0)) as ls:
        a = socket.create_connection(ls.getsockname())
        b, _ = ls.accept()
    a.setblocking(False)
    if server_timeout is None:
        b.setblocking(False)
    else:
        b.settimeout(server_timeout)
    return a, b


async def read_all(sock: socket.socket) -> bytes:
    """What a non-blocking socket receives until EOF, read on the running loop."""
    loop = asyncio.get_running_loop()
    out = bytearray()
    while data := await loop.sock_recv(sock, 1 << 16):
        out += data
    return bytes(out)


class ByteCounter:
    """A relay's byte counter (called with each count): the total is `n`."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, k: int) -> None:
        self.n += k
