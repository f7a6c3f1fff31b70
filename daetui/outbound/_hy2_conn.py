"""One QUIC connection to a Hysteria2 server: authentication, TCP streams and UDP sessions over it.

aioquic is sans-IO: `QuicConnection` is the state machine, fed here by an
asyncio datagram protocol on our own UDP socket (it carries daetui's SO_MARK
and is connected, so an ICMP "port unreachable" ends a handshake at once).
Salamander, when set, wraps each UDP datagram both ways, below QUIC.

The HTTP/3 layer is used for one request only, the authentication
(`POST /auth`, status 233 is success); aioquic's H3Connection sees that
stream and the server's unidirectional ones (control, QPACK), never the
streams that carry TCP, which are raw after their TCPRequest.

Bounds: a TCP stream's receive window follows what its reader took
(STREAM_WINDOW ahead of it, never more: aioquic would grant credit as data
arrives, whatever the reader does); a writer waits while more than
SEND_BUFFER bytes it wrote are not yet acknowledged; UDP sessions, their
reassembly and their queues are bounded, and datagrams beyond a full QUIC
queue are dropped as a full socket would drop them.

Congestion control is aioquic's own (Reno): Hysteria's Brutal is a sender's
choice each side makes, and the server's `Hysteria-CC-RX` is only advice.

Used by hysteria2.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic.events import (
    ConnectionTerminated,
    DatagramFrameReceived,
    HandshakeCompleted,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)

from daetui.net.quic import ConnectedTransport, PacedQuic
from daetui.net.stream import DialError
from daetui.outbound._hy2_wire import (
    MAX_PADDING,
    Reassembler,
    Salamander,
    UdpMessage,
    padding,
    parse_tcp_response,
    parse_udp_message,
    tcp_request,
    udp_messages,
)

AUTH_OK = 233
STREAM_WINDOW = 2 << 20        # what a TCP stream may have received beyond what its reader took
SEND_BUFFER = 1 << 20          # unacknowledged bytes a writer may have on its stream
# Our QUIC packets are at most 1200 bytes (aioquic's default: no path MTU discovery, so the size every path
# carries); a DATAGRAM frame fits one packet with a 20-byte connection id, a 4-byte packet number and the
# 16-byte tag: 1200 - 1 - 20 - 4 - 16 - 3 (frame type and length).
MAX_DATAGRAM_FRAME = 1156
MAX_QUEUED_DATAGRAMS = 512     # QUIC datagrams waiting for the congestion window; more are dropped
MAX_SESSIONS = 4096            # UDP sessions on one connection (one per relayed UDP flow)
# A PING this often while streams or sessions are open: a quiet TCP connection (an idle SSH session) must
# not end with the QUIC connection at the idle timeout (hysteria's own client keeps alive every 10 s).
KEEPALIVE = 10.0
QUEUE_SIZE = 64                # datagrams received and not yet read, per session (the relay reads on)
H3_NO_ERROR = 0x100
H3_REQUEST_CANCELLED = 0x10C


class _Quic(PacedQuic):
    """aioquic's connection with paced TCP streams, and who closed it."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)
        self.closed_by_peer = False

    def _handle_connection_close_frame(self, context, frame_type, buf) -> None:  # type: ignore[no-untyped-def]
        # aioquic's ConnectionTerminated does not say who closed: an idle timeout or our own TLS check
        # must not read as "the server closed".
        self.closed_by_peer = True
        super()._handle_connection_close_frame(context, frame_type, buf)


class Hy2Connection(QuicConnectionProtocol):
    """The asyncio side of one connection to the server: streams and sessions out, events in."""

    def __init__(self, quic: _Quic, where: str, password: str, obfs: Salamander | None) -> None:
        super().__init__(quic)
        self._quic: _Quic = quic
        self.where = where
        self._password = password
        self._obfs = obfs
        self._h3: H3Connection | None = None
        self._auth_stream = -1
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.authed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()   # result: UDP allowed
        self.ended = ""                # why the connection ended ("" while it lives)
        self.streams: dict[int, Hy2Stream] = {}
        self.sessions: dict[int, Hy2Datagrams] = {}
        self.udp = False
        self._writers: list[asyncio.Future[None]] = []
        self._keepalive: asyncio.TimerHandle | None = None

    @property
    def alive(self) -> bool:
        return not self.ended

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(ConnectedTransport(transport, self._obfs.obfuscate if self._obfs else None))  # type: ignore[arg-type]

    def datagram_received(self, data: bytes | str, addr: object) -> None:
        if self._obfs is not None:
            plain = self._obfs.deobfuscate(bytes(data))  # type: ignore[arg-type]
            if plain is None:
                return
            data = plain
        super().datagram_received(data, addr)  # type: ignore[arg-type]
        self._wake_writers()

    def error_received(self, exc: Exception) -> None:
        # ICMP for our connected socket (port or host unreachable): nothing will come back.
        self._end(f"{exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}")
        self.abort()

    # -- authentication ---------------------------------------------------------------------
    def authenticate(self) -> None:
        """Send `POST /auth` (once the handshake is done); `authed` gets the answer."""
        self._h3 = H3Connection(self._quic)
        sid = self._auth_stream = self._quic.get_next_available_stream_id()
        self._h3.send_headers(sid, [
            (b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"hysteria"), (b":path", b"/auth"),
            (b"hysteria-auth", self._password.encode()),
            (b"hysteria-cc-rx", b"0"),   # our receive rate is unknown: the server picks its own congestion control
            (b"hysteria-padding", padding(64, 512)),
        ], end_stream=True)
        self.transmit()

    def _auth_answer(self, headers: list[tuple[bytes, bytes]]) -> None:
        fields = dict(headers)
        try:
            status = int(fields.get(b":status", b"0"))
        except ValueError:
            status = 0
        if self.authed.done():
            return
        if status != AUTH_OK:
            why = f"authentication failed: the server answered HTTP {status} (wrong password?)"
            self.authed.set_exception(DialError(f"{self.where}: {why}"))
            self._close(why)
            return
        self.udp = fields.get(b"hysteria-udp", b"").lower() == b"true"
        self.authed.set_result(self.udp)
        self._keepalive = self._loop.call_later(KEEPALIVE, self._keep_alive)

    def _keep_alive(self) -> None:
        if self.ended:
            return
        if self.streams or self.sessions:
            # Only while in use: a connection nobody uses is left to its idle timeout, and opened again later.
            self._quic.send_ping(0)
            self.transmit()
        self._keepalive = self._loop.call_later(KEEPALIVE, self._keep_alive)

    # -- events -----------------------------------------------------------------------------
    def quic_event_received(self, event: QuicEvent) -> None:
        # Not the base class's handling: it makes a StreamReader per stream, with no bound on what it buffers.
        if isinstance(event, DatagramFrameReceived):
            self._datagram(event.data)
        elif isinstance(event, StreamDataReceived | StreamReset | StopSendingReceived) \
                and event.stream_id in self.streams:
            self.streams[event.stream_id].event(event)
        elif isinstance(event, HandshakeCompleted):
            if not self.handshake.done():
                self.handshake.set_result(None)
        elif isinstance(event, ConnectionTerminated):
            reason = f"{event.reason_phrase or 'no reason given'} (error {event.error_code:#x})"
            self._end(f"the server closed the connection: {reason}" if self._quic.closed_by_peer
                      else f"the connection ended: {reason}")
            if self._transport is not None:
                self._transport.close()
        elif self._h3 is not None and isinstance(event, StreamDataReceived | StreamReset) and (
                event.stream_id == self._auth_stream or event.stream_id % 4 == 3):
            # Only the auth request's stream and the server's unidirectional ones (control, QPACK) are HTTP/3;
            # a TCP stream's late data, after we closed it, must not be read as HTTP/3 frames.
            for e in self._h3.handle_event(event):
                if isinstance(e, HeadersReceived) and e.stream_id == self._auth_stream:
                    self._auth_answer(e.headers)
            if isinstance(event, StreamReset) and event.stream_id == self._auth_stream and not self.authed.done():
                self.authed.set_exception(DialError(f"{self.where}: the server reset the authentication request"))

    def _datagram(self, data: bytes) -> None:
        try:
            msg = parse_udp_message(data)
        except ValueError:
            return  # not one of ours: dropped, as UDP would
        session = self.sessions.get(msg.session)
        if session is not None:
            session.received(msg)

    # -- TCP --------------------------------------------------------------------------------
    def open_stream(self, host: str, port: int) -> Hy2Stream:
        """A stream to host:port through the server, its request sent.

        The server's answer is read by the stream's first read, not waited for here: mihomo's server
        (sing-quic) sends it with the destination's first bytes, and a destination that waits for
        the client to speak first would wait for ever.
        """
        if self.ended:
            raise DialError(f"{self.where}: {self.ended}")
        sid = self._quic.get_next_available_stream_id()
        self._quic.pace(sid, STREAM_WINDOW)
        stream = self.streams[sid] = Hy2Stream(self, sid, f"{self.where} to {host}:{port}")
        try:
            self._quic.send_stream_data(sid, tcp_request(host, port, padding(64, 512)))
            self.transmit()
        except BaseException:
            stream.close()
            raise
        return stream

    def forget(self, sid: int) -> None:
        self.streams.pop(sid, None)
        self._quic.forget(sid)

    def unacked(self, sid: int) -> int:
        """Bytes written on the stream the server has not acknowledged yet."""
        return self._quic.unacked(sid)

    async def drained(self) -> None:
        """Wait for the next acknowledgements (or the end)."""
        fut = asyncio.get_running_loop().create_future()
        self._writers.append(fut)
        await fut

    def _wake_writers(self) -> None:
        writers, self._writers = self._writers, []
        for fut in writers:
            if not fut.done():
                fut.set_result(None)

    # -- UDP --------------------------------------------------------------------------------
    def open_session(self) -> Hy2Datagrams:
        if self.ended:
            raise DialError(f"{self.where}: {self.ended}")
        if not self.udp:
            raise DialError(f"{self.where}: the server does not allow UDP")
        if len(self.sessions) >= MAX_SESSIONS:
            raise DialError(f"{self.where}: {MAX_SESSIONS} UDP sessions on one connection already")
        while True:
            sid = secrets.randbits(32)
            if sid not in self.sessions:
                break
        session = self.sessions[sid] = Hy2Datagrams(self, sid)
        return session

    def max_datagram(self) -> int:
        peer = self._quic._remote_max_datagram_frame_size or 0  # no public accessor in aioquic
        return min(MAX_DATAGRAM_FRAME, peer)

    def send_datagrams(self, frames: list[bytes]) -> bool:
        """Queue the frames of one UDP message and send; False (nothing queued) when the queue is full."""
        pending = self._quic._datagrams_pending  # aioquic's queue: unbounded, and it is ours to bound
        if len(pending) + len(frames) > MAX_QUEUED_DATAGRAMS:
            return False
        for frame in frames:
            self._quic.send_datagram_frame(frame)
        self.transmit()
        return True

    # -- ending -----------------------------------------------------------------------------
    def _end(self, why: str) -> None:
        if self.ended:
            return
        self.ended = why
        if self._keepalive is not None:
            self._keepalive.cancel()
        err = DialError(f"{self.where}: {why}")
        for fut in (self.handshake, self.authed):
            if not fut.done():
                fut.set_exception(err)
                fut.exception()  # retrieved: nobody may be waiting any more
        for stream in list(self.streams.values()):
            stream.fail(why)
        for session in list(self.sessions.values()):
            session.fail(why)
        self._wake_writers()

    def _close(self, why: str) -> None:
        self._end(why)
        with contextlib.suppress(Exception):
            self._quic.close(error_code=H3_NO_ERROR, reason_phrase="")
            self.transmit()

    def abort(self) -> None:
        """Close the connection (CONNECTION_CLOSE) and its socket now, without the draining wait."""
        self._close("closed")
        # The base class's timer would go on firing into a closed transport.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()


class Hy2Stream:
    """A TCP connection through the server: one QUIC stream, raw bytes after the request and response."""

    raw: socket.socket | None = None   # bytes go through Python: never spliced

    def __init__(self, conn: Hy2Connection, sid: int, where: str) -> None:
        self.conn = conn
        self.sid = sid
        self.where = where
        self.buf = bytearray()
        self.eof = False
        self.error = ""
        self.answered = False
        self.closed = False
        self.write_ended = False
        self.consumed = 0               # bytes of the stream the reader took (the response's included)
        self.write_error = ""
        self._waiter: asyncio.Future[None] | None = None

    # -- from the connection ----------------------------------------------------------------
    def event(self, e: QuicEvent) -> None:
        if isinstance(e, StreamDataReceived):
            self.buf += e.data
            self.eof = self.eof or e.end_stream
        elif isinstance(e, StreamReset):
            self.error = f"the server reset the stream (error {e.error_code:#x})"
        elif isinstance(e, StopSendingReceived):
            self.write_error = f"the server stopped reading the stream (error {e.error_code:#x})"
        self._wake()

    def fail(self, why: str) -> None:
        self.error = self.error or why
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _took(self, n: int) -> None:
        self.consumed += n
        if self.conn._quic.took(self.sid, n):
            self.conn.transmit()

    # -- the response -----------------------------------------------------------------------
    async def response(self) -> None:
        """Wait for the server's TCPResponse; DialError when it refused or ended."""
        while True:
            resp = parse_tcp_response(self.buf)
            if resp is not None:
                break
            if self.error:
                raise DialError(f"{self.where}: {self.error}")
            if self.eof:
                raise DialError(f"{self.where}: the server ended the stream without a response "
                               "(it could not reach the destination?)")
            if len(self.buf) > 16 + 2048 + MAX_PADDING:
                raise DialError(f"{self.where}: malformed response")
            await self._wait()
        del self.buf[:resp.size]
        self._took(resp.size)
        if resp.status != 0:
            raise DialError(f"{self.where}: the server refused: {resp.message or f'status {resp.status}'}")
        self.answered = True

    # -- Stream -----------------------------------------------------------------------------
    async def read(self, n: int) -> bytes:
        """Up to n bytes; b"" at the end of the stream; DialError when the server refused the destination,
        reset the stream, or the connection ended."""
        if not self.answered:
            await self.response()
        while not self.buf:
            if self.error:
                raise DialError(f"{self.where}: {self.error}")
            if self.eof or self.closed:
                return b""
            await self._wait()
        data = bytes(self.buf[:n])
        del self.buf[:len(data)]
        self._took(len(data))
        return data

    async def write(self, data: bytes) -> None:
        if self.error or self.write_error:
            raise DialError(f"{self.where}: {self.error or self.write_error}")
        if self.closed or self.write_ended:
            raise DialError(f"{self.where}: the stream is closed")
        conn = self.conn
        try:
            conn._quic.send_stream_data(self.sid, bytes(data))
        except (ValueError, RuntimeError) as e:  # aioquic's words for a stream that can take no more
            raise DialError(f"{self.where}: {e}") from None
        conn.transmit()
        # Back-pressure: what the server has not acknowledged yet is held here; wait while that is much.
        while conn.unacked(self.sid) > SEND_BUFFER and not (self.error or self.write_error or self.closed):
            await conn.drained()
        if self.error or self.write_error:
            raise DialError(f"{self.where}: {self.error or self.write_error}")

    async def write_eof(self) -> None:
        """Half-close: the stream's FIN; the destination may still answer."""
        if self.write_ended or self.closed or self.error:
            return
        self.write_ended = True
        with contextlib.suppress(Exception):
            self.conn._quic.send_stream_data(self.sid, b"", end_stream=True)
            self.conn.transmit()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        conn = self.conn
        conn.forget(self.sid)
        if not conn.ended and not (self.eof and self.write_ended and not self.buf):
            # Not both ends finished: the server is told to stop both ways.
            with contextlib.suppress(Exception):
                if not self.write_ended:
                    conn._quic.reset_stream(self.sid, H3_REQUEST_CANCELLED)
                if not self.eof:
                    conn._quic.stop_stream(self.sid, H3_REQUEST_CANCELLED)
                conn.transmit()
        self._wake()


class Hy2Datagrams:
    """A UDP session through the server: datagrams to and from any destination, fragmented as needed."""

    def __init__(self, conn: Hy2Connection, session: int) -> None:
        self.conn = conn
        self.session = session
        self.packet = 0
        self.reassembler = Reassembler()
        self.queue: asyncio.Queue[tuple[bytes, str, int] | None] = asyncio.Queue(QUEUE_SIZE)
        self.error = ""
        self.dropped = 0

    def received(self, msg: UdpMessage) -> None:
        whole = self.reassembler.add(msg)
        if whole is None:
            return
        if self.queue.full():
            self.dropped += 1  # nobody reads: dropped, as a full socket buffer would
            return
        self.queue.put_nowait((whole.data, whole.host, whole.port))

    def fail(self, why: str) -> None:
        if not self.error:
            self.error = why
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(None)

    async def send(self, data: bytes, host: str, port: int) -> None:
        """Send to host:port (dropped, as UDP may, when the connection's queue is full)."""
        if self.error:
            raise DialError(f"{self.conn.where}: {self.error}")
        size = self.conn.max_datagram()
        if size <= 0:
            raise DialError(f"{self.conn.where}: the server takes no QUIC datagrams")
        self.packet = (self.packet + 1) & 0xFFFF
        if not self.conn.send_datagrams(udp_messages(self.session, self.packet, host, port, data, size)):
            self.dropped += 1

    async def recv(self) -> tuple[bytes, str, int]:
        """The next datagram and its sender; DialError when the session or the connection ended."""
        if self.error and self.queue.empty():
            raise DialError(f"{self.conn.where}: {self.error}")
        item = await self.queue.get()
        if item is None:
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(None)  # for any other waiter
            raise DialError(f"{self.conn.where}: {self.error}")
        return item

    def close(self) -> None:
        # Hysteria2 has no message that ends a session: the server forgets it when it idles.
        if self.conn.sessions.get(self.session) is self:
            del self.conn.sessions[self.session]
        self.fail("UDP session closed")

