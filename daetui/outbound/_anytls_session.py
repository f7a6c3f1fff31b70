"""AnyTLS sessions: one TLS connection carrying streams, its reader, its shaped writes, and the pool of them.

A `Session` owns the TLS stream to the server. One task reads frames and
hands each stream its bytes; writes go one at a time (a lock), the first
`stop` of them shaped by the padding scheme. A stream's received bytes wait
in a bounded buffer: when one is full the reader waits for its stream to be
read, so the whole session waits -- anytls has no flow control of its own,
and anytls-go's pipes block the same way. That is why a session carries one
stream at a time by default (`max_streams`), as anytls-go's client does;
more share one connection's handshake at the price of one slow reader
holding up the others.

A `SessionPool` (one per dialer: anytls' "client") hands out the newest
session that has room, else opens one; a session with no stream left is
idle, closed after `idle_timeout` unless it is one of the `min_idle` newest,
and never more than `max_idle` idle ones are kept. A padding scheme the
server sends is kept by the pool for its next sessions, as the spec asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from daetui.net.buffered import Buffered
from daetui.net.stream import DialError, Stream
from daetui.outbound import _anytls_wire as wire
from daetui.outbound._address import socks_address

log = logging.getLogger(__name__)

STREAM_BUFFER = 256 << 10    # a stream's unread bytes before the session's reader waits for it
CONTROL_TIMEOUT = 5.0        # a FIN or heartbeat answer not written by then: the connection is stuck
MAX_SESSIONS = 256           # open sessions per pool; a dial past that fails rather than opening more


class AnyStream:
    """One anytls stream: a Stream over its session's frames.

    No half-close: cmdFIN ends the stream both ways (the server closes its
    connection to the destination), so write_eof does nothing and the
    destination's answer still comes; close() sends the FIN.
    """

    raw = None

    def __init__(self, session: Session, sid: int, what: str) -> None:
        self.session = session
        self.sid = sid
        self.what = what                    # "host:port", for errors
        self._buf = bytearray()
        self._readable = asyncio.Event()    # bytes, the end, or an error wait in _buf
        self._room = asyncio.Event()        # _buf has room again
        self._room.set()
        self._ended = False                 # the server's FIN, or the session's end
        self._error: DialError | None = None
        self._closed = False
        self.opened = asyncio.Event()       # the server's SYNACK (or the stream's first bytes, or its end)
        self.refusal: str | None = None     # the SYNACK's error text

    # -- the session's side --

    async def feed(self, data: bytes) -> None:
        """The server's bytes for this stream; waits while the buffer is full (the whole session with it)."""
        self.opened.set()
        if self._closed:
            return
        while len(self._buf) >= STREAM_BUFFER and not self._closed:
            self._room.clear()
            await self._room.wait()
        if not self._closed:
            self._buf += data
            self._readable.set()

    def synack(self, refusal: str | None) -> None:
        if refusal is not None:
            self.refusal = refusal
            self.end(DialError(f"anytls: the server could not reach {self.what}: {refusal}"))
        self.opened.set()

    def end(self, error: DialError | None = None) -> None:
        """The stream ends: a FIN (error None) or the session's end (error: why)."""
        if not self._ended:
            self._ended = True
            self._error = error
        self.opened.set()
        self._readable.set()
        self._room.set()

    def failure(self) -> DialError | None:
        """Why the stream ended before giving any byte (a refusal, the session's end); else None."""
        return self._error if self._error is not None and not self._buf else None

    # -- the Stream --

    async def read(self, n: int) -> bytes:
        while not self._buf:
            if self._ended:
                if self._error is not None:
                    raise self._error
                return b""
            self._readable.clear()
            await self._readable.wait()
        out = bytes(self._buf[:n])
        del self._buf[:n]
        if len(self._buf) < STREAM_BUFFER:
            self._room.set()
        return out

    async def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self._ended or self._closed:
            raise DialError(f"anytls: the stream to {self.what} has ended")
        if data:
            await self.session.send(wire.psh_frames(self.sid, data))

    async def write_eof(self) -> None:
        """Nothing: a FIN would end the destination's side too (see the class)."""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._buf.clear()
        self._room.set()
        self.session.stream_closed(self, send_fin=not self._ended)


@dataclass
class Padding:
    """The padding scheme of a pool's next sessions (the server may replace it)."""

    scheme: wire.PaddingScheme = wire.DEFAULT_SCHEME


class Session:
    """One TLS connection to the server and the streams on it."""

    def __init__(self, tls: Stream, seq: int, padding: Padding, client: str,
                 on_idle: Callable[[Session], None], on_end: Callable[[Session], None]) -> None:
        self.tls = tls
        self.seq = seq
        self.padding = padding
        self.scheme = padding.scheme          # this session's own: a server's update is for the next ones
        self.client = client
        self.on_idle = on_idle                # its last stream ended
        self.on_end = on_end                  # it ended (the pool forgets it)
        self.loop = asyncio.get_running_loop()
        self.streams: dict[int, AnyStream] = {}
        self.next_sid = 1
        self.peer_version = 0                 # 0 until cmdServerSettings says (v1 servers never do)
        self.heard = False                    # any frame from the server yet
        self.padding_updates = 0              # cmdUpdatePaddingScheme received (the md5 we sent was not the server's)
        self.error: DialError | None = None   # why the session ended; None while it runs
        self.idle_since = time.monotonic()
        self._send_lock = asyncio.Lock()
        self._writes = 0                      # shaped writes so far (the padding's packet counter)
        self._pending = wire.frame(wire.SETTINGS, 0, wire.client_settings(client, self.scheme.md5))
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader = asyncio.ensure_future(self._read_loop())

    @property
    def alive(self) -> bool:
        """Running, and on the loop that runs now (a session cannot outlive its loop)."""
        try:
            return self.error is None and asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    # -- writing --

    async def send(self, data: bytes) -> None:
        """One write of the session (frames), shaped while the padding scheme says so."""
        if self.error is not None:
            raise self.error
        async with self._send_lock:
            if self.error is not None:
                raise self.error
            if self._pending:  # cmdSettings goes with the first stream's SYN: write 1 of the scheme
                data, self._pending = self._pending + data, b""
            self._writes += 1
            pieces = [data]
            if self._writes < self.scheme.stop:
                pieces = wire.shape(data, self.scheme.sizes(self._writes))
            try:
                for piece in pieces:
                    await self.tls.write(piece)
            except DialError as e:  # the layer below's own words (a chain's stream that ended)
                self.fail(e)
                raise
            except OSError as e:
                error = DialError(f"anytls: writing to the server: {e.strerror or e}")
                self.fail(error)
                raise error from None

    def _control(self, data: bytes) -> None:
        """Send a control frame from code that cannot wait (close(), the reader): in a task, bounded."""
        async def run() -> None:
            try:
                async with asyncio.timeout(CONTROL_TIMEOUT):
                    await self.send(data)
            except TimeoutError:
                self.fail(DialError(f"anytls: the server took no bytes for {CONTROL_TIMEOUT:g} s"))
            except DialError:
                pass  # the session is over already: nothing left to tell the server

        task = self.loop.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- streams --

    async def open_stream(self, first: bytes, what: str) -> AnyStream:
        """A new stream, its SYN and its first PSH (the destination) written in one go."""
        sid = self.next_sid
        self.next_sid += 1
        stream = AnyStream(self, sid, what)
        self.streams[sid] = stream
        try:
            await self.send(wire.frame(wire.SYN, sid) + wire.psh_frames(sid, first))
        except BaseException:
            self.streams.pop(sid, None)
            raise
        return stream

    def stream_closed(self, stream: AnyStream, send_fin: bool) -> None:
        if self.streams.pop(stream.sid, None) is None:
            return
        if send_fin and self.alive:
            self._control(wire.frame(wire.FIN, stream.sid))
        if not self.streams and self.alive:
            self.idle_since = time.monotonic()
            self.on_idle(self)

    # -- reading --

    async def _read_loop(self) -> None:
        buf = Buffered(self.tls)
        try:
            while True:
                parsed = wire.parse_frame(buf.buf)
                if parsed is None:
                    try:
                        more = await buf.fill()
                    except ConnectionError as e:
                        raise DialError(f"anytls: the server's connection failed: {e.strerror or e}") from None
                    if not more:
                        raise DialError(self._ended_why(bool(buf.buf)))
                    continue
                command, sid, data, used = parsed
                del buf.buf[:used]
                self.heard = True
                await self._on_frame(command, sid, data)
        except DialError as e:
            self.fail(e)
        except (OSError, ValueError) as e:  # a TLS error (ssl.SSLError is an OSError) or a bad frame
            self.fail(DialError(f"anytls: reading from the server: {e}"))
        except asyncio.CancelledError:
            self.fail(DialError("anytls: the session was closed"))
            raise
        except Exception as e:  # a bug here must not leave the streams waiting forever
            log.exception("anytls: the session's reader failed")
            self.fail(DialError(f"anytls: the session failed: {e!r}"))

    def _ended_why(self, partial: bool) -> str:
        if not self.heard:
            return ("anytls: the server closed the connection without answering "
                    "(it does this for a wrong password?)")
        if partial:
            return "anytls: the server closed the connection in the middle of a frame"
        return "anytls: the server closed the session"

    async def _on_frame(self, command: int, sid: int, data: bytes) -> None:
        if command == wire.PSH:
            stream = self.streams.get(sid)
            if stream is not None and data:
                await stream.feed(data)
        elif command == wire.SYNACK:
            stream = self.streams.get(sid)
            if stream is not None:
                stream.synack(data.decode("utf-8", "replace") if data else None)
                if data:
                    self.streams.pop(sid, None)
                    if not self.streams:
                        self.idle_since = time.monotonic()
                        self.on_idle(self)
        elif command == wire.FIN:
            stream = self.streams.pop(sid, None)
            if stream is not None:
                stream.end()
                if not self.streams:
                    self.idle_since = time.monotonic()
                    self.on_idle(self)
        elif command == wire.ALERT:
            raise DialError(f"anytls: the server's alert: {data.decode('utf-8', 'replace')}")
        elif command == wire.UPDATE_PADDING:
            self.padding_updates += 1
            try:
                self.padding.scheme = wire.parse_padding(data)
            except ValueError as e:
                log.warning("anytls: the server's padding scheme is not used: %s", e)
        elif command == wire.SERVER_SETTINGS:
            with contextlib.suppress(ValueError):
                self.peer_version = int(wire.parse_settings(data).get("v", "1"))
        elif command == wire.HEART_REQUEST:
            self._control(wire.frame(wire.HEART_RESPONSE, sid))
        # WASTE, HEART_RESPONSE, and what a server has no business sending (SYN, SETTINGS) or this
        # client does not know: read (the length said how much) and dropped.

    # -- the end --

    def fail(self, error: DialError) -> None:
        """The session ends: every stream on it ends with `error`, the connection is closed."""
        if self.error is not None:
            return
        self.error = error
        for stream in list(self.streams.values()):
            stream.end(error)
        self.streams.clear()
        self.tls.close()
        self.on_end(self)
        if self._reader is not asyncio.current_task() and not self._reader.done():
            with contextlib.suppress(RuntimeError):  # its loop is gone: nothing to cancel
                self._reader.cancel()

    def close(self) -> None:
        self.fail(DialError("anytls: the session was closed"))


@dataclass
class _Opening:
    """A session being opened, and how many dials will take a stream on it."""

    future: asyncio.Future[Session]
    takers: int = 1


class SessionPool:
    """The sessions of one dialer (anytls' client): reused newest first, idle ones closed in time."""

    def __init__(self, connect: Callable[[wire.PaddingScheme], Awaitable[Stream]], *, client: str,
                 max_streams: int = 1, idle_timeout: float = 30.0, min_idle: int = 0,
                 max_idle: int = 8) -> None:
        self.connect = connect        # the server's TLS stream, the password (and padding0 of the scheme) sent
        self.client = client
        self.max_streams = max(1, max_streams)
        self.idle_timeout = idle_timeout
        self.min_idle = min_idle
        self.max_idle = max(max_idle, min_idle)
        self.padding = Padding()
        self.sessions: list[Session] = []   # oldest first
        self.seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._opening: list[_Opening] = []

    def _prune(self) -> None:
        """Forget sessions that ended, and close those of another event loop (a test's earlier run)."""
        loop = asyncio.get_running_loop()
        keep = []
        for s in self.sessions:
            if s.loop is not loop:
                s.error = s.error or DialError("anytls: the session's event loop is gone")
                with contextlib.suppress(Exception):
                    s.tls.close()
            elif s.error is None:
                keep.append(s)
        self.sessions = keep

    async def session(self) -> Session:
        """The newest session with room for a stream, else one being opened with room, else a new one."""
        self._prune()
        for s in reversed(self.sessions):
            if len(s.streams) < self.max_streams:
                return s
        for opening in self._opening:
            if opening.takers < self.max_streams:  # dials at once share a session as they would an open one
                opening.takers += 1
                return await asyncio.shield(opening.future)
        if len(self.sessions) + len(self._opening) >= MAX_SESSIONS:
            raise DialError(f"anytls: {MAX_SESSIONS} sessions open to the server already")
        opening = _Opening(asyncio.ensure_future(self._new()))
        # Its error is every taker's; retrieved here too, so that one with no taker left is no warning.
        opening.future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._opening.append(opening)
        try:
            return await asyncio.shield(opening.future)
        finally:
            self._opening.remove(opening)

    async def _new(self) -> Session:
        tls = await self.connect(self.padding.scheme)
        self.seq += 1
        s = Session(tls, self.seq, self.padding, self.client, self._idle, self._ended)
        self.sessions.append(s)
        return s

    def _ended(self, session: Session) -> None:
        with contextlib.suppress(ValueError):
            self.sessions.remove(session)

    def _idle(self, session: Session) -> None:
        """A session's last stream ended: keep it for a while, within max_idle."""
        idle = [s for s in self.sessions if s.error is None and not s.streams]
        for s in idle[:max(0, len(idle) - self.max_idle)]:  # the oldest go first
            s.close()
        self._arm()

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        if self._timer is None or self._timer_loop is not loop:  # a timer of a loop that is gone never fires
            self._timer = loop.call_later(self.idle_timeout, self._reap)
            self._timer_loop = loop

    def _reap(self) -> None:
        """Close sessions idle for idle_timeout, but the min_idle newest of them."""
        self._timer = None
        self._prune()
        now = time.monotonic()
        idle = [s for s in self.sessions if not s.streams]
        kept = 0
        for s in reversed(idle):
            if now - s.idle_since < self.idle_timeout:
                kept += 1
            elif kept < self.min_idle:
                kept += 1
                s.idle_since = now
            else:
                s.close()
        self.sessions = [s for s in self.sessions if s.error is None]
        if any(not s.streams for s in self.sessions):
            self._arm()

    def close(self) -> None:
        """Close every session (and the streams on them)."""
        for s in list(self.sessions):  # each one leaves the list as it ends
            s.close()
        self.sessions = []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def destination(host: str, port: int) -> bytes:
    """A stream's first bytes: where to, as a SOCKS address."""
    return socks_address(host, port)
