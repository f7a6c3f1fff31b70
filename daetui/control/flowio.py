"""The socket work every relay process does the same way: accepting, and reading a flow's first bytes.

The main process's pipeline and each relay worker (worker.py) use these, so a
connection is accepted and sniffed alike wherever the kernel hands it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

from daetui.sniff import SniffResult, sniff

log = logging.getLogger("daetui.control")

SNIFF_MAX = 16384  # a ClientHello or a request head fits; more is not waited for

Accepted = Callable[[socket.socket, tuple[str, int]], None]


async def accept_loop(lsock: socket.socket, accepted: Accepted) -> None:
    """Accept on `lsock` until cancelled, calling `accepted(sock, (host, port))` for each connection.

    The listener stays registered with the loop, whose callback accepts: no future, task step
    or wake-up of a task per connection, and no EAGAIN (an exception, as costly as the accept)
    after each, as draining the backlog in a task had. Connections still waiting keep the
    listener readable, so each loop turn takes the next between the relays' work.
    """
    loop = asyncio.get_running_loop()
    fd = lsock.fileno()
    accept = lsock._accept  # type: ignore[attr-defined]  # fd and address: accept() builds enums per call
    family = lsock.family
    paused: asyncio.TimerHandle | None = None

    def resume() -> None:
        nonlocal paused
        paused = None
        loop.add_reader(fd, ready)

    def ready() -> None:
        nonlocal paused
        try:
            cfd, addr = accept()
        except (BlockingIOError, InterruptedError):
            return  # gone (reset) before it was taken
        except OSError as e:
            log.error("accept: %s", e)
            # E.g. EMFILE: the waiting connections keep the listener readable, so it leaves
            # the loop for the pause, or the loop would spin on it.
            loop.remove_reader(fd)
            paused = loop.call_later(0.1, resume)
            return
        try:
            sock = socket.socket(family, socket.SOCK_STREAM, 0, cfd)
        except OSError as e:
            os.close(cfd)
            log.error("accept: %s", e)
            return
        accepted(sock, (addr[0], addr[1]))

    loop.add_reader(fd, ready)
    try:
        await loop.create_future()  # until cancelled
    finally:
        if paused is not None:
            paused.cancel()
        else:
            loop.remove_reader(fd)


async def sniff_first(sock: socket.socket, timeout: float) -> tuple[bytes, SniffResult]:
    """A client's first bytes (kept, to send on) and the name in them, within `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    data = b""
    result = SniffResult(need_more=True)
    while result.need_more and len(data) < SNIFF_MAX:
        left = deadline - loop.time()
        if left <= 0:
            break
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, SNIFF_MAX - len(data)), left)
        except TimeoutError:
            break  # the client waits for the server (SSH, SMTP): no name to find
        if not chunk:
            break
        data += chunk
        result = sniff(data, "tcp")
    return data, result
