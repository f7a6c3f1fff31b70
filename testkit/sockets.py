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


def udp_and_tcp_on_one_port(host: str = "127.0.0.1", attempts: int = 50) -> tuple[socket.socket, socket.socket]:
    """A bound UDP socket and a listening TCP socket on the same free port of `host`.

    The UDP port the kernel picks may be held by a TCP socket (another test's
    connection), so it retries with a fresh port a bounded number of times.
    """
    for _ in range(attempts):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((host, 0))
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            t.bind((host, u.getsockname()[1]))
        except OSError:
            u.close()
            t.close()
            continue
        t.listen(1024)
        return u, t
    raise OSError(f"no port of {host} free for both UDP and TCP after {attempts} attempts")


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
