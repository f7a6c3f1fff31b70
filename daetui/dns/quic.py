"""DNS over QUIC (RFC 9250, `quic://`) and DNS over HTTP/3 (RFC 8484 over RFC 9114, `h3://`).

One QUIC connection per upstream, opened when the first query needs it and
kept while it lives: QUIC's own idle timeout (the smaller of ours and the
server's) ends it, and the next query opens a new one. Each query is one
bidirectional stream:

    DoQ   the message with a 2-byte length in front, ID 0, the stream's end after it (RFC 9250 4.2);
          the answer the same way on the same stream
    DoH3  POST path, content-type application/dns-message, the message (ID 0) as the body;
          the answer is the body of a 200 response

At most MAX_STREAMS queries are on one connection at a time; more wait their
turn. A handshake has the upstream's timeout and is shared by the queries
that wait for it (one is opened at a time). An answer that breaks the framing
(a length that does not match, more than a DNS message, a stream reset, an
HTTP status other than 200) fails its query with `MalformedAnswer`, which the
upstream counts; the connection stays for the other queries.

The UDP socket is ours (aioquic's `connect` makes its own): it carries
daetui's SO_MARK and is connected, so an ICMP "port unreachable" from a
server that is down ends the handshake at once instead of at the timeout.
aioquic is sans-IO: the QUIC state machine is `QuicConnection`, fed here by
an asyncio datagram protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from dataclasses import dataclass, field

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent, StreamDataReceived, StreamReset

from daetui.config.dns_upstream import UpstreamSpec
from daetui.dns.upstream import MalformedAnswer, UpstreamError
from daetui.net.quic import ConnectedTransport, system_ca

DOQ_ALPN = ["doq"]
# RFC 9250 4.3 error codes.
DOQ_NO_ERROR = 0x0
DOQ_PROTOCOL_ERROR = 0x2
DOQ_REQUEST_CANCELLED = 0x3
H3_REQUEST_CANCELLED = 0x10C    # RFC 9114 8.1
MAX_STREAMS = 32                # queries in flight on one connection
IDLE_TIMEOUT = 30.0             # the idle timeout we offer; the server's, when smaller, wins
MAX_MESSAGE = 65535
DNS_MESSAGE = "application/dns-message"


@dataclass
class _Ask:
    """One query's stream: what has come back so far."""

    future: asyncio.Future[bytes]
    body: bytearray = field(default_factory=bytearray)
    status: int | None = None        # DoH3: the response's :status
    content_type: str = ""


class _Client(QuicConnectionProtocol):
    """The asyncio side of one QUIC connection: streams out, events in."""

    def __init__(self, quic: QuicConnection, h3: bool, authority: bytes, path: bytes) -> None:
        super().__init__(quic)
        self._h3 = H3Connection(quic) if h3 else None
        self._authority, self._path = authority, path
        self._asks: dict[int, _Ask] = {}
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ended = ""                  # why the connection ended ("" while it lives)
        self.last = time.monotonic()
        self.answered = 0

    @property
    def alive(self) -> bool:
        return not self.ended

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(ConnectedTransport(transport))  # type: ignore[arg-type]

    # -- asking ---------------------------------------------------------------------------
    async def ask(self, wire: bytes) -> bytes:
        """The answer to `wire` (ID 0) on a stream of its own."""
        if self.ended:
            raise UpstreamError(self.ended)
        sid = self._quic.get_next_available_stream_id()
        ask = _Ask(asyncio.get_running_loop().create_future())
        self._asks[sid] = ask
        if self._h3 is not None:
            self._h3.send_headers(sid, [
                (b":method", b"POST"), (b":scheme", b"https"), (b":authority", self._authority),
                (b":path", self._path), (b"content-type", DNS_MESSAGE.encode()),
                (b"accept", DNS_MESSAGE.encode()), (b"content-length", str(len(wire)).encode()),
            ])
            self._h3.send_data(sid, wire, end_stream=True)
        else:
            self._quic.send_stream_data(sid, struct.pack("!H", len(wire)) + wire, end_stream=True)
        self.transmit()
        try:
            data = await ask.future
        finally:
            if self._asks.pop(sid, None) is not None and not self.ended:
                # Given up on (timeout, cancelled): tell the server to stop working on it (RFC 9250 4.3).
                code = H3_REQUEST_CANCELLED if self._h3 is not None else DOQ_REQUEST_CANCELLED
                with contextlib.suppress(Exception):
                    self._quic.reset_stream(sid, code)
                    self._quic.stop_stream(sid, code)
                    self.transmit()
        self.last = time.monotonic()
        self.answered += 1
        return data

    # -- events ---------------------------------------------------------------------------
    def quic_event_received(self, event: QuicEvent) -> None:
        # Not the base class's handling: it makes a StreamReader per stream, with no bound on what it buffers.
        if isinstance(event, HandshakeCompleted):
            if not self.ready.done():
                self.ready.set_result(None)
        elif isinstance(event, ConnectionTerminated):
            reason = event.reason_phrase or "no reason given"
            self._end(f"QUIC connection closed: {reason} (error {event.error_code:#x})")
        elif isinstance(event, StreamReset):
            self._fail(event.stream_id, f"the server reset the query's stream (error {event.error_code:#x})",
                       malformed=False)
        elif self._h3 is not None:
            for e in self._h3.handle_event(event):
                self._h3_event(e)
        elif isinstance(event, StreamDataReceived):
            self._doq_data(event.stream_id, event.data, event.end_stream)

    def _doq_data(self, sid: int, data: bytes, end: bool) -> None:
        ask = self._asks.get(sid)
        if ask is None:
            if sid % 4 != 0:  # RFC 9250 4.2: a server may open no stream
                self._protocol_error("the server opened a stream")
            return  # an answer to a query given up on
        ask.body += data
        if len(ask.body) > 2 + MAX_MESSAGE:
            self._fail(sid, "an answer longer than a DNS message")
            return
        if end:
            body = ask.body
            n = struct.unpack_from("!H", body)[0] if len(body) >= 2 else -1
            if n != len(body) - 2:
                self._fail(sid, f"an answer of {len(body) - 2} bytes whose length prefix says {n}")
            elif not ask.future.done():
                ask.future.set_result(bytes(body[2:]))

    def _h3_event(self, e: H3Event) -> None:
        if not isinstance(e, HeadersReceived | DataReceived):
            return
        ask = self._asks.get(e.stream_id)
        if ask is None:
            return
        if isinstance(e, HeadersReceived):
            if ask.status is None:  # the first HEADERS; a later one is trailers
                fields = dict(e.headers)
                try:
                    ask.status = int(fields.get(b":status", b""))
                except ValueError:
                    ask.status = 0
                ask.content_type = fields.get(b"content-type", b"").decode("latin-1").lower()
        else:
            ask.body += e.data
            if len(ask.body) > MAX_MESSAGE:
                self._fail(e.stream_id, "an answer longer than a DNS message")
                return
        if e.stream_ended:
            if ask.status != 200:
                self._fail(e.stream_id, f"HTTP {ask.status}", malformed=ask.status is None or ask.status == 0)
            elif not ask.content_type.startswith(DNS_MESSAGE):
                self._fail(e.stream_id, f"an answer of content-type {ask.content_type or 'none'!r}")
            elif not ask.future.done():
                ask.future.set_result(bytes(ask.body))

    def error_received(self, exc: Exception) -> None:
        # ICMP for our connected socket: port or host unreachable. Nothing will come back.
        self._end(f"{type(exc).__name__}: {exc.strerror if isinstance(exc, OSError) else exc}")
        self.abort()

    # -- failing --------------------------------------------------------------------------
    def _fail(self, sid: int, why: str, malformed: bool = True) -> None:
        ask = self._asks.pop(sid, None)
        if ask is None:
            return
        if not ask.future.done():
            ask.future.set_exception(MalformedAnswer(why) if malformed else UpstreamError(why))
        code = H3_REQUEST_CANCELLED if self._h3 is not None else DOQ_REQUEST_CANCELLED
        with contextlib.suppress(Exception):  # the rest of the stream is not wanted
            self._quic.stop_stream(sid, code)
            self.transmit()

    def _protocol_error(self, why: str) -> None:
        self._end(f"QUIC connection closed: {why}")
        with contextlib.suppress(Exception):
            self._quic.close(error_code=DOQ_PROTOCOL_ERROR, reason_phrase=why)
            self.transmit()

    def _end(self, why: str) -> None:
        if self.ended:
            return
        self.ended = why
        if not self.ready.done():
            self.ready.set_exception(UpstreamError(why))
            self.ready.exception()  # retrieved: nobody may be waiting any more
        for ask in self._asks.values():
            if not ask.future.done():
                ask.future.set_exception(UpstreamError(why))
        self._asks.clear()

    def abort(self) -> None:
        """Close the connection (CONNECTION_CLOSE, no error) and its socket now, without the draining wait."""
        self._end("closed")
        with contextlib.suppress(Exception):
            self._quic.close(error_code=DOQ_NO_ERROR)
            self.transmit()
        # The base class's timer would go on firing into a closed transport.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()


class QuicChannel:
    """One upstream's QUIC connection: opened once, shared by its queries, opened again when it ended."""

    def __init__(self, spec: UpstreamSpec, mark: int = 0, ca_file: str = "", timeout: float = 2.0) -> None:
        self.spec = spec
        self.mark = mark
        self.timeout = timeout
        self.ca_file = ca_file or system_ca()
        self.h3 = spec.scheme == "h3"
        self._client: _Client | None = None
        self._opening: asyncio.Task[_Client] | None = None
        self._slots = asyncio.Semaphore(MAX_STREAMS)
        self.handshakes = 0

    async def exchange(self, ip: str, wire: bytes) -> bytes:
        """The answer to `wire` (its ID set to 0 here, as both RFCs want) from the upstream at `ip`."""
        wire = b"\x00\x00" + wire[2:]
        async with self._slots:
            client = await self._connection(ip)
            try:
                return await client.ask(wire)
            except MalformedAnswer:
                raise
            except UpstreamError:
                if client.answered == 0 or client.alive:
                    raise
            # A kept connection that ended under this query (the server closed it while idle): once more, anew.
            client = await self._connection(ip)
            return await client.ask(wire)

    async def _connection(self, ip: str) -> _Client:
        c = self._client
        if c is not None and c.alive:
            return c
        if self._opening is None:
            self._opening = asyncio.get_running_loop().create_task(self._open(ip))
            # Retrieved even when every query that waited for it has given up.
            self._opening.add_done_callback(lambda t: t.cancelled() or t.exception())
        task = self._opening
        try:
            # Shielded: one waiter's timeout does not end the handshake the others wait for.
            return await asyncio.shield(task)
        finally:
            if task.done() and self._opening is task:
                self._opening = None

    async def _open(self, ip: str) -> _Client:
        spec = self.spec
        cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN if self.h3 else DOQ_ALPN,
                                idle_timeout=IDLE_TIMEOUT, server_name=spec.host)
        if self.ca_file:
            cfg.load_verify_locations(cafile=self.ca_file)
        quic = QuicConnection(configuration=cfg)
        sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if self.mark:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
            sock.setblocking(False)
            sock.connect((ip, spec.port))
            peer = sock.getpeername()  # the form datagrams arrive from: QUIC's path is matched against it
        except BaseException:
            sock.close()
            raise
        authority = spec.host if spec.port == 443 else f"{spec.host}:{spec.port}"
        if ":" in spec.host:
            authority = f"[{spec.host}]" if spec.port == 443 else f"[{spec.host}]:{spec.port}"
        loop = asyncio.get_running_loop()
        _, client = await loop.create_datagram_endpoint(
            lambda: _Client(quic, self.h3, authority.encode(), spec.path.encode()), sock=sock)
        try:
            client.connect(peer)
            async with asyncio.timeout(self.timeout):
                await client.ready
        except TimeoutError:
            client.abort()
            raise UpstreamError(f"QUIC handshake with {spec.host}:{spec.port}: no answer in {self.timeout:g}s") \
                from None
        except BaseException:
            client.abort()
            raise
        self.handshakes += 1
        if self._client is not None:
            self._client.abort()
        self._client = client
        return client

    async def close(self) -> None:
        """Close the connection (and a handshake under way)."""
        if self._opening is not None:
            self._opening.cancel()
            with contextlib.suppress(BaseException):
                await self._opening
            self._opening = None
        if self._client is not None:
            self._client.abort()
            self._client = None
