"""Relaying a TCP connection through a framed proxy stream on the loop's own transports.

`relay_stream` moves every chunk with two tasks and an await per read and
write. When a stream's framing is plain calls over a socket (`Stream.framed()`:
shadowsocks, and TLS as trojan uses it), both sockets become the event loop's
transports instead and the codec runs in `data_received`: no task, no await,
no future per chunk (bench/proxy_path.py: half the CPU per Gbit/s, a quarter
more new connections per second).

Kept as `relay` and `relay_stream` keep them: half-close (EOF one way is
write_eof the other way), a failure ends both sides with a reset to the
client, and the error comes back as text. Backpressure: a side whose send
buffer is over the high-water mark pauses reading on the other side. One
timer per connection asks the codec whether the server is overdue (a stall
in the middle of a frame).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

from daetui.net.sockopts import reset_on_close
from daetui.net.stream import Codec, DialError

Counter = Callable[[int], None]
FIRST_READ = 1 << 16
# After a reset, the transports report connection_lost on the next loop turns; this bounds the wait.
LOST_WAIT = 5.0
# Before a reset, what the client's transport still holds may drain for up to DRAIN_STEPS * DRAIN_STEP s.
DRAIN_STEP = 0.01
DRAIN_STEPS = 100


class _Side(asyncio.Protocol):
    """One socket's transport: its events go to the relay, writes to it may come before it exists."""

    def __init__(self, relay: _Relay, name: str) -> None:
        self.relay = relay
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes | bytearray] = []  # written before connection_made
        self.eof_owed = False
        self.abort_owed = False
        self.reset_owed = False
        self.paused = False  # its reading paused, for the other side's full send buffer
        self.peer: _Side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        for data in self.early:
            self.transport.write(data)  # type: ignore[union-attr]
        self.early.clear()
        if self.abort_owed:
            transport.abort()  # type: ignore[attr-defined]
        elif self.reset_owed:
            self.relay.reset_client()
        elif self.eof_owed:
            self.write_eof()

    def write(self, data: bytes | bytearray) -> None:
        if self.transport is None:
            self.early.append(data)
        elif data:
            self.transport.write(data)

    def write_eof(self) -> None:
        if self.transport is None:
            self.eof_owed = True
        elif not self.transport.is_closing():
            self.transport.write_eof()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is None:
            self.abort_owed = True
        else:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.relay.received(self, data)

    def eof_received(self) -> bool:
        self.relay.ended(self)
        return True  # keep the transport: the other direction may still be going

    def pause_writing(self) -> None:
        if self.peer.transport is not None:
            self.peer.transport.pause_reading()
            self.peer.paused = True

    def resume_writing(self) -> None:
        if self.peer.transport is not None and not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()
            self.peer.paused = False
            self.relay.progress = self.relay.loop.time()  # a pause is not the server's silence

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.lost(self, exc)


class _Relay:
    """The connection's state: which sides ended or went, the first error, when it is all over."""

    def __init__(self, client: socket.socket, codec: Codec, on_up: Counter, on_down: Counter,
                 done: asyncio.Future[str | None]) -> None:
        self.client_sock = client
        self.loop = done.get_loop()
        self.codec = codec
        self.on_up, self.on_down = on_up, on_down
        self.done = done
        self.client = _Side(self, "client")
        self.destination = _Side(self, "destination")
        self.client.peer, self.destination.peer = self.destination, self.client
        self.ended_sides: set[str] = set()
        self.lost_sides: set[str] = set()
        self.error: str | None = None
        self.watch: asyncio.TimerHandle | None = None
        self.progress = self.loop.time()  # when the server last sent something, or reading resumed

    def received(self, side: _Side, data: bytes) -> None:
        try:
            if side is self.client:
                self.destination.write(self.codec.encode(data))
                self.on_up(len(data))
                return
            self.progress = self.loop.time()
            codec = self.codec
            plain = codec.decode(data)
            if plain:
                self.client.write(plain)
                self.on_down(len(plain))
            if codec.error is not None:
                raise codec.error
            reply = codec.reply()
            if reply:
                self.destination.write(reply)
            if codec.server_ended:
                self.ended(side)
        except Exception as e:  # whatever the codec raises ends this connection only
            self.fail(side.name, e)

    def ended(self, side: _Side) -> None:
        if side.name in self.ended_sides:
            return
        try:
            if side is self.client:
                data, fin = self.codec.encode_eof()
                self.destination.write(data)
                if fin:
                    self.destination.write_eof()
            else:
                self.codec.decode_eof()
                self.client.write_eof()
        except Exception as e:
            self.fail(side.name, e)
            return
        self.ended_sides.add(side.name)
        if len(self.ended_sides) == 2:
            self.client.close()  # close() sends what is still buffered first
            self.destination.close()

    def fail(self, name: str, e: BaseException) -> None:
        """End both sides, the client's with a reset (as relay_stream passes a failure on).

        Bytes already handed to the client's transport (the good chunks before a bad one) go
        first: a reset throws away whatever is still unsent.
        """
        if self.error is None:
            self.error = f"{name}: {e}" if str(e) else f"{name}: {type(e).__name__}"
        self.destination.abort()
        self.reset_client()

    def reset_client(self) -> None:
        t = self.client.transport
        if t is None:
            self.client.reset_owed = True  # done once the transport exists, after the bytes owed to it
            reset_on_close(self.client_sock)  # and if it never does, the caller's close resets
            return
        if t.is_closing():
            self._reset_client(0)
            return
        # A step's wait even with nothing buffered: uvloop sends a write at the end of the loop's turn.
        t.pause_reading()
        self.loop.call_later(DRAIN_STEP, self._reset_client, DRAIN_STEPS)

    def _reset_client(self, steps: int) -> None:
        t = self.client.transport
        if t is not None and steps > 0 and not t.is_closing() and t.get_write_buffer_size():
            self.loop.call_later(DRAIN_STEP, self._reset_client, steps - 1)
            return
        reset_on_close(self.client_sock)  # once its transport has closed it, there is nothing to reset
        self.client.abort()

    def lost(self, side: _Side, exc: Exception | None) -> None:
        self.lost_sides.add(side.name)
        if exc is not None:
            self.fail(side.name, exc)
        elif self.error is None and len(self.ended_sides) < 2:
            side.peer.close()  # gone without both ends done (closed by us, or by the kernel)
        if len(self.lost_sides) == 2:
            if self.watch is not None:
                self.watch.cancel()
                self.watch = None  # it holds this relay's method
            if not self.done.done():
                self.done.set_result(self.error)

    def unlink(self) -> None:
        """Drop the references that make cycles (the relay and its sides, each side and its transport),
        once both transports have reported their end: the connection's objects then go by reference
        counting as it ends, instead of piling up for the cycle collector, whose passes a stream of
        short connections would make frequent. Nothing calls a side after its connection_lost; a
        timer still pending (the client's reset) finds no transport and touches no socket of another."""
        for side in (self.client, self.destination):
            side.transport = None
            del side.relay, side.peer

    def watch_codec(self, interval: float) -> None:
        """Ask the codec every `interval` seconds whether the server is overdue.

        The server's silence counts only while its side is read: while the client's full
        buffer holds reading back, the server is not late.
        """
        self.watch = self.loop.call_later(interval, self._tick, interval)

    def _tick(self, interval: float) -> None:
        idle = 0.0 if self.destination.paused else self.loop.time() - self.progress
        reason = self.codec.overdue(idle)
        if reason is not None:
            self.fail("destination", DialError(reason))
        elif len(self.lost_sides) < 2:
            self.watch = self.loop.call_later(interval, self._tick, interval)


async def relay_framed(client: socket.socket, server: socket.socket, codec: Codec, on_up: Counter,
                       on_down: Counter) -> str | None:
    """Relay between the client's socket and a proxy server's socket framed by `codec`; an error text or None.

    Both sockets belong to the loop's transports from here on: they are closed when this returns.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[str | None] = loop.create_future()
    relay = _Relay(client, codec, on_up, on_down, done)
    # What the client has sent already goes in the same chunk (and packet) as the header; with
    # nothing yet, the header goes alone, so that a server-first destination is reached at once.
    client_ended = False
    try:
        first = client.recv(FIRST_READ)
        client_ended = not first
    except (BlockingIOError, InterruptedError):
        first = b""
    except OSError as e:
        return f"client: {e}"
    head = codec.encode(first)
    if first:
        on_up(len(first))
    if head:
        # Sent now rather than on the transport's first turn: the server is at work on it (on the
        # other core) while the transports are made. Whatever does not fit goes through the transport.
        try:
            sent = server.send(head, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as e:
            sent = len(head)
            relay.fail("destination", e)  # carried out once the transports exist
        if sent < len(head):
            relay.destination.write(head[sent:])
    try:
        made: list[_Side] = []
        try:
            await loop.connect_accepted_socket(lambda: relay.destination, server)
            made.append(relay.destination)
            await loop.connect_accepted_socket(lambda: relay.client, client)
            made.append(relay.client)
        except BaseException:
            # A transport whose making failed or was cancelled may never report connection_lost
            # (uvloop closes it quietly): every side not fully made counts as gone.
            relay.lost_sides.update(side.name for side in (relay.destination, relay.client) if side not in made)
            raise
        if client_ended:
            relay.ended(relay.client)
        interval = codec.watch_interval
        if interval is not None:
            relay.watch_codec(interval)
        # Shielded: cancelling this task must not cancel `done`, which the transports resolve.
        error = await asyncio.shield(done)
        relay.unlink()
        return error
    except BaseException as e:
        relay.fail("relay", e if isinstance(e, Exception) else asyncio.CancelledError("closed"))
        if len(relay.lost_sides) < 2:
            # The transports own the sockets: they close them before the caller closes its objects
            # (a descriptor closed under a live transport could be another connection's by then).
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(done), LOST_WAIT)
        raise
