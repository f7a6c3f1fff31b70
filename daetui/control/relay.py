"""Relaying a TCP connection: `relay()` picks the way the upstream allows.

Where the upstream's bytes are the destination's own (direct, socks5, http
CONNECT: the stream shows its socket as `raw`), the two sockets are relayed
by `relay_sockets`: the bytes never enter Python, `os.splice` moves them
socket -> pipe -> socket inside the kernel (where splice is not available, a
copy loop with one reused buffer per direction). Pipes come from a bounded
pool and are held only while bytes are in flight (`PipePool`). Where the upstream frames
them as plain calls over a socket (shadowsocks, trojan's TLS, vless, vmess:
`framed()`), both sockets run on the loop's transports (relay_framed.py).
Any other stream is copied by two tasks (`relay_stream`).

Kept by all three: half-close (EOF from one side becomes shutdown(SHUT_WR) on
the other), and a failure on either side ends both with a reset to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Callable

from daetui.control.connections import Connection
from daetui.control.relay_framed import relay_framed
from daetui.net.sockopts import reset_on_close
from daetui.net.stream import DialError, Stream, framing_of

PIPE_SIZE = 1 << 20
COPY_CHUNK = 1 << 16
STREAM_READ = 1 << 18   # what relay_stream asks a proxy's stream for at once (nothing is kept between reads)
F_SETPIPE_SZ = 1031
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
HAVE_SPLICE = hasattr(os, "splice")

Counter = Callable[[int], None]


async def _wait(loop: asyncio.AbstractEventLoop, fd: int, write: bool) -> None:
    fut = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    if write:
        loop.add_writer(fd, ready)
    else:
        loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


def _make_pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    with contextlib.suppress(OSError):  # a smaller pipe still works, with more round trips
        fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
    return r, w


class PipePool:
    """Splice pipes, pooled and bounded: a relay holds one only while bytes are in flight.

    An idle relay (the usual state of most of them) holds no pipe: its pump gives
    the pipe back before it waits for its source, so thousands of idle flows cost
    two descriptors each, not six. At most `bound` pipes exist at once (in use
    and kept); a pump that finds none copies that chunk instead (`fallbacks`).
    """

    def __init__(self, bound: int = 256, keep: int = 32) -> None:
        self.bound = bound
        self.keep = keep              # empty pipes kept for the next pump
        self.free: list[tuple[int, int]] = []
        self.held = 0
        self.fallbacks = 0

    @property
    def total(self) -> int:
        return self.held + len(self.free)

    def take(self) -> tuple[int, int] | None:
        """An empty pipe (read end, write end), or None when the bound is reached (or pipes cannot be made)."""
        if self.free:
            self.held += 1
            return self.free.pop()
        if self.total >= self.bound:
            self.fallbacks += 1
            return None
        try:
            pipe = _make_pipe()
        except OSError:  # out of descriptors: copying needs none
            self.fallbacks += 1
            return None
        self.held += 1
        return pipe

    def give(self, pipe: tuple[int, int], empty: bool = True) -> None:
        """A pipe back; kept if it is empty and the pool wants it, else closed."""
        self.held -= 1
        if empty and len(self.free) < self.keep:
            self.free.append(pipe)
            return
        for fd in pipe:
            os.close(fd)

    def close(self) -> None:
        """Close the kept pipes (those in use are closed by their pumps)."""
        while self.free:
            for fd in self.free.pop():
                os.close(fd)


PIPES = PipePool()  # the pool of relays not given one (tests, benchmarks)


async def _splice_pump(src: socket.socket, dst: socket.socket, count: Counter, pipes: PipePool) -> None:
    loop = asyncio.get_running_loop()
    sfd, dfd = src.fileno(), dst.fileno()
    pipe: tuple[int, int] | None = None
    buf: bytearray | None = None
    pending = 0
    eof = False
    try:
        while not eof or pending:
            if pipe is None:
                pipe = pipes.take()
                if pipe is None:
                    # Every pipe is in use: this chunk is copied (nothing is pending here).
                    buf = buf or bytearray(COPY_CHUNK)
                    n = await loop.sock_recv_into(src, buf)
                    if n == 0:
                        eof = True
                    else:
                        await loop.sock_sendall(dst, memoryview(buf)[:n])
                        count(n)
                    continue
            r, w = pipe
            if not eof:
                try:
                    n = os.splice(sfd, w, PIPE_SIZE, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    n = -1
                if n == 0:
                    eof = True
                elif n > 0:
                    pending += n
                elif not pending:
                    # Nothing in flight: the pipe goes back while the source is quiet.
                    pipes.give(pipe)
                    pipe = None
                    await _wait(loop, sfd, write=False)
                    continue
            while pending:
                try:
                    m = os.splice(r, dfd, pending, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    await _wait(loop, dfd, write=True)
                    continue
                pending -= m
                count(m)
                if pending and not eof:
                    break  # pull more while the destination drains
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
    finally:
        if pipe is not None:
            pipes.give(pipe, empty=not pending)


async def _copy_pump(src: socket.socket, dst: socket.socket, count: Counter, pipes: PipePool) -> None:
    loop = asyncio.get_running_loop()
    buf = bytearray(COPY_CHUNK)
    view = memoryview(buf)
    while True:
        n = await loop.sock_recv_into(src, buf)
        if n == 0:
            break
        await loop.sock_sendall(dst, view[:n])
        count(n)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _is_reset(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT,
                                                  errno.EHOSTUNREACH, errno.ENETUNREACH)


async def relay(client: socket.socket, upstream: Stream, conn: Connection,
                use_splice: bool = HAVE_SPLICE, pipes: PipePool | None = None) -> str | None:
    """Relay a flow's client and upstream until both directions are done, the fastest way the upstream
    allows; `conn.relay` says which way, and its byte counts grow as bytes pass. An error text, or None."""
    up, down = _adder(conn, "up"), _adder(conn, "down")
    if upstream.raw is not None:
        conn.relay = "splice" if use_splice else "copy"
        return await relay_sockets(client, upstream.raw, up, down, use_splice, pipes)
    framing = framing_of(upstream)
    if framing is not None:
        conn.relay = "framed"
        return await relay_framed(client, framing[0], framing[1], up, down)
    conn.relay = "stream"
    return await relay_stream(client, upstream, up, down)


def _adder(conn: Connection, attr: str) -> Counter:
    def add(n: int) -> None:
        setattr(conn, attr, getattr(conn, attr) + n)
    return add


async def relay_sockets(client: socket.socket, upstream: socket.socket, on_up: Counter, on_down: Counter,
                        use_splice: bool = HAVE_SPLICE, pipes: PipePool | None = None) -> str | None:
    """Relay two sockets until both directions are done; returns an error text or None.

    A reset on either side ends both directions (and is passed on as a
    reset, so the peer sees what happened).
    """
    pump = _splice_pump if use_splice else _copy_pump
    pool = pipes if pipes is not None else PIPES
    up = asyncio.ensure_future(pump(client, upstream, on_up, pool))
    down = asyncio.ensure_future(pump(upstream, client, on_down, pool))
    error: str | None = None
    try:
        done, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if t.exception() is not None:
                exc = t.exception()
                error = f"{'client' if t is up else 'destination'}: {exc}"
                assert exc is not None
                if not _is_reset(exc):
                    raise exc
        if pending:
            if error:
                for t in pending:
                    t.cancel()
                # Pass the reset on: abortive close of both sides.
                reset_on_close(client)
                reset_on_close(upstream)
            await asyncio.gather(*pending, return_exceptions=True)
    finally:
        for t in (up, down):
            if not t.done():
                t.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
    return error


async def relay_stream(client: socket.socket, upstream: Stream, on_up: Counter, on_down: Counter) -> str | None:
    """Relay between the client's socket and an outbound's stream (a proxy's, encrypted or framed).

    Bytes go through Python here; half-close and resets are kept as `relay` keeps them.
    """
    loop = asyncio.get_running_loop()

    async def up() -> None:
        # A fresh bytes per read: the stream may keep it (TLS, queues), so no buffer is reused.
        while data := await loop.sock_recv(client, COPY_CHUNK):
            await upstream.write(data)
            on_up(len(data))
        await upstream.write_eof()

    async def down() -> None:
        # Large reads: an encrypting stream opens more chunks per call (the profile's biggest cost).
        while data := await upstream.read(STREAM_READ):
            await loop.sock_sendall(client, data)
            on_down(len(data))
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)

    tasks = {asyncio.ensure_future(up()): "client", asyncio.ensure_future(down()): "destination"}
    error: str | None = None
    try:
        pending = set(tasks)
        while pending and error is None:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                exc = t.exception()
                if exc is None:
                    continue
                error = f"{tasks[t]}: {exc}" if str(exc) else f"{tasks[t]}: {type(exc).__name__}"
                if not (_is_reset(exc) or isinstance(exc, (DialError, ConnectionError, EOFError))):
                    raise exc
        if error is not None:
            # Pass the failure on to the client as a reset, as `relay_sockets` does.
            reset_on_close(client)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return error
