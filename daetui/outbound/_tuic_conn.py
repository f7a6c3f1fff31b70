"""One QUIC connection to a TUIC v5 server: authentication, TCP streams and UDP associations over it.

After the handshake the Authenticate command carries the token (the TLS
exporter, _tuic_wire.py) of this connection. The server never answers a
command; a wrong token makes it close the connection (mihomo:
"AuthenticationFailed"), which every stream and association on it then
reports as a DialError saying so.

UDP: one association (ASSOC_ID) per `datagrams()`, its Packets sent as QUIC
datagrams (udp_relay_mode=native; fragmented to fit a QUIC packet of 1200
bytes) or each on a unidirectional stream of its own (quic); the server
answers in the same mode. Fragments are put back together per association,
a bounded number of packets at a time. Known limits of mihomo's side (quic
mode has neither): it reassembles each QUIC datagram in a goroutine of its
own, so fragments of packets sent back to back may race there and lose the
packet, as they do from mihomo's own client; and it sizes its fragments to
the packets its path MTU discovery aims at, so a long answer in the first
moments of a connection may be lost. (Offering smaller DATAGRAM frames than
65535 does not help: with 1160, mihomo lost every fragmented answer from IPv6.)

Each stream's receive window moves with what its reader took (aioquic's own
grows with what arrived, without bound), and a writer waits while more than
SEND_BUFFER of its bytes are unacknowledged.

Used by tuic.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import uuid as uuidlib
from typing import TYPE_CHECKING, Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.events import (
    ConnectionTerminated,
    DatagramFrameReceived,
    HandshakeCompleted,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from aioquic.tls import Epoch
from cryptography.hazmat.primitives import hashes

from daetui.net.quic import ConnectedTransport, PacedQuic
from daetui.net.stream import DialError
from daetui.outbound._tuic_wire import (
    HEARTBEAT,
    MAX_DATAGRAM,
    PACKET_HEADER,
    VERSION,
    Packet,
    Reassembly,
    authenticate,
    dissociate,
    exporter,
    heartbeat,
    packets,
    parse_packet,
)

if TYPE_CHECKING:
    from daetui.outbound.tuic import TuicNode

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 30.0             # QUIC's idle timeout we offer (the server's, when smaller, wins)
HEARTBEAT_INTERVAL = 10.0       # while anything is relayed (less when the server's idle timeout is short)
QUIC_PACKET = 1200              # QUIC's smallest max datagram size: fits every path
DATAGRAM_ROOM = QUIC_PACKET - 64  # a DATAGRAM frame's share of one packet (header, AEAD tag, frame header)
STREAM_WINDOW = 2 << 20         # bytes a stream's server may send beyond what its reader took
SEND_BUFFER = 1 << 20           # unacknowledged bytes a stream's writer may have before write() waits
MAX_QUEUED_DATAGRAMS = 256      # QUIC datagrams waiting for the congestion window; more are dropped
MAX_STREAMS = 1024              # QUIC streams of a connection (UDP packets on streams beyond it are dropped)
QUEUE_SIZE = 1024               # datagrams received and not yet read, per association
# mihomo's QUIC application error codes (transport/tuic/v5); any close whose reason names
# authentication counts too (other servers word it their own way).
AUTH_ERRORS = {0xFFFFFFF1: "AuthenticationFailed", 0xFFFFFFF2: "AuthenticationTimeout"}


class _Quic(PacedQuic):
    """aioquic's connection, keeping what TUIC needs of it: the TLS exporter secret, bounded receive windows."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.exporter_secret: bytes | None = None
        self.exporter_hash: hashes.HashAlgorithm | None = None

    def _update_traffic_key(self, direction: Any, epoch: Epoch, cipher_suite: Any, secret: bytes) -> None:
        # The first 1-RTT key is made right after the server's Finished, when the key schedule holds the
        # master secret and the transcript up to that Finished: exactly what exporter_master_secret is
        # derived from (RFC 8446 7.1). Later the client's Finished joins the transcript: too late.
        if epoch == Epoch.ONE_RTT and self.exporter_secret is None:
            schedule = self.tls.key_schedule
            self.exporter_secret = schedule.derive_secret(b"exp master")
            self.exporter_hash = schedule.algorithm
        super()._update_traffic_key(direction, epoch, cipher_suite, secret)


def token(quic: _Quic, uid: str, password: str) -> bytes:
    """The Authenticate command's token for this connection (its handshake done)."""
    if quic.exporter_secret is None or quic.exporter_hash is None:
        raise DialError("tuic: the TLS handshake left no exporter secret")
    return exporter(quic.exporter_hash, quic.exporter_secret, uuidlib.UUID(uid).bytes, password.encode(), 32)



class _Connection(QuicConnectionProtocol):
    """One QUIC connection to the server: its streams and associations, authenticated once, kept alive."""

    _quic: _Quic

    def __init__(self, quic: _Quic, node: TuicNode, where: str) -> None:
        super().__init__(quic)
        self.node = node
        self.where = where
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ended = ""                  # why the connection ended ("" while it lives)
        self.streams: dict[int, TuicStream] = {}
        self.assocs: dict[int, TuicDatagrams] = {}
        self.incoming: dict[int, bytearray] = {}    # the server's unidirectional streams (quic-mode packets)
        self.progress = asyncio.Event()             # set whenever the server was heard from (acks: writers go on)
        self._beat: asyncio.TimerHandle | None = None

    @property
    def alive(self) -> bool:
        return not self.ended

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(ConnectedTransport(transport))  # type: ignore[arg-type]

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        super().datagram_received(data, addr)
        self.progress.set()

    def error_received(self, exc: Exception) -> None:
        # ICMP for our connected socket (port or host unreachable): nothing will come back.
        self._end(f"tuic {self.where}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}")
        self.abort()

    # -- events ---------------------------------------------------------------------------
    def quic_event_received(self, event: QuicEvent) -> None:
        # Not the base class's handling: it makes an unbounded StreamReader per stream.
        if isinstance(event, StreamDataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.feed(event.data, event.end_stream)
            elif event.stream_id % 4 == 3:
                self._incoming(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, DatagramFrameReceived):
            self._packet(event.data)
        elif isinstance(event, StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.fail(f"tuic {self.where}: the server reset the stream (error {event.error_code:#x}): "
                            "the destination refused or closed it")
            self.incoming.pop(event.stream_id, None)
        elif isinstance(event, StopSendingReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:  # the destination's side is gone: writes fail, reads may still finish
                stream.write_error = (f"tuic {self.where}: the server stopped taking the stream's bytes "
                                      f"(error {event.error_code:#x})")
        elif isinstance(event, HandshakeCompleted):
            self._authenticate()
        elif isinstance(event, ConnectionTerminated):
            self._end(self._why_closed(event))

    def _why_closed(self, event: ConnectionTerminated) -> str:
        phrase = event.reason_phrase or ""
        if event.error_code == 0xFFFFFFF2:
            return (f"tuic {self.where}: the server waited for our authentication in vain "
                    f"({phrase or AUTH_ERRORS[event.error_code]})")
        if event.error_code in AUTH_ERRORS or "auth" in phrase.lower():
            what = phrase or AUTH_ERRORS[event.error_code]
            return (f"tuic {self.where}: authentication rejected by the server ({what}): "
                    "wrong uuid or password")
        what = "QUIC handshake failed" if not self.ready.done() else "QUIC connection closed"
        return f"tuic {self.where}: {what}: {phrase or 'no reason given'} (error {event.error_code:#x})"

    def _authenticate(self) -> None:
        try:
            command = authenticate(self.node.uuid, token(self._quic, self.node.uuid, self.node.password))
        except DialError as e:
            self._end(str(e))
            self.abort()
            return
        sid = self._quic.get_next_available_stream_id(is_unidirectional=True)
        self._quic.send_stream_data(sid, command, end_stream=True)
        self.transmit()
        if not self.ready.done():
            self.ready.set_result(None)
        self._beat = self._loop.call_later(self._beat_interval(), self._heartbeat)

    def _beat_interval(self) -> float:
        # A third of the idle timeout both sides agreed on, when the server's is short (mihomo's default: 15 s).
        idle = min(IDLE_TIMEOUT, self._quic._remote_max_idle_timeout or IDLE_TIMEOUT)
        return max(1.0, min(HEARTBEAT_INTERVAL, idle / 3))

    def _heartbeat(self) -> None:
        self._beat = None
        if self.ended:
            return
        if self.streams or self.assocs:
            # A datagram when the server takes them (TUIC's heartbeat), else a QUIC PING: either keeps it alive.
            if self._quic._remote_max_datagram_frame_size is not None:
                self._quic.send_datagram_frame(heartbeat())
            else:
                self._quic.send_ping(0)
            self.transmit()
        self._beat = self._loop.call_later(self._beat_interval(), self._heartbeat)

    def _incoming(self, sid: int, data: bytes, end: bool) -> None:
        buf = self.incoming.setdefault(sid, bytearray())
        buf += data
        if len(buf) > PACKET_HEADER + 1 + 255 + 2 + MAX_DATAGRAM:
            del self.incoming[sid]
            with contextlib.suppress(Exception):
                self._quic.stop_stream(sid, 0)
            return
        if end:
            del self.incoming[sid]
            self._packet(bytes(buf))

    def _packet(self, data: bytes) -> None:
        try:
            if len(data) >= 2 and data[1] == HEARTBEAT and data[0] == VERSION:
                return
            p = parse_packet(data)
        except ValueError as e:
            log.debug("tuic %s: a malformed packet from the server dropped: %s", self.where, e)
            return
        assoc = self.assocs.get(p.assoc_id)
        if assoc is not None:
            assoc.deliver(p)

    # -- what streams and associations ask ------------------------------------------------------
    def open_stream(self, header: bytes) -> TuicStream:
        """A new bidirectional stream, its Connect header sent."""
        if self.ended:
            raise DialError(self.ended)
        sid = self._quic.get_next_available_stream_id()
        stream = TuicStream(self, sid)
        self.streams[sid] = stream
        self._quic.pace(sid, STREAM_WINDOW)
        self._quic.send_stream_data(sid, header)
        self.transmit()
        return stream

    def forget_stream(self, sid: int) -> None:
        self.streams.pop(sid, None)
        self._quic.forget(sid)

    def unacked(self, sid: int) -> int:
        """Bytes written to the stream the server has not acknowledged yet."""
        return self._quic.unacked(sid)

    def send_packets(self, commands: list[bytes], native: bool) -> None:
        """Packet commands as QUIC datagrams (native) or each on a unidirectional stream of its own;
        dropped, as a full socket buffer would drop them, when those queues are full."""
        if self.ended:
            raise DialError(self.ended)
        quic = self._quic
        if native:
            if len(quic._datagrams_pending) + len(commands) > MAX_QUEUED_DATAGRAMS:
                return  # the congestion window is full
            for c in commands:
                quic.send_datagram_frame(c)
        else:
            if len(quic._streams) >= MAX_STREAMS:
                return
            for c in commands:
                quic.send_stream_data(quic.get_next_available_stream_id(is_unidirectional=True), c,
                                      end_stream=True)
        self.transmit()

    def send_command(self, command: bytes) -> None:
        """A command on a unidirectional stream of its own (Dissociate)."""
        if self.ended:
            return
        self._quic.send_stream_data(self._quic.get_next_available_stream_id(is_unidirectional=True), command,
                                    end_stream=True)
        self.transmit()

    def datagram_room(self) -> int:
        """How long a Packet command sent as a QUIC datagram may be."""
        peer = self._quic._remote_max_datagram_frame_size
        if peer is None:
            raise DialError(f"tuic {self.where}: the server takes no QUIC datagrams (udp_relay_mode=native): "
                            "try udp_relay_mode=quic")
        return min(DATAGRAM_ROOM, peer - 8)

    def new_assoc_id(self) -> int:
        for _ in range(64):
            candidate = random.getrandbits(16)
            if candidate not in self.assocs:
                return candidate
        raise DialError(f"tuic {self.where}: no free association id")

    # -- ending ---------------------------------------------------------------------------
    def _end(self, why: str) -> None:
        if self.ended:
            return
        self.ended = why
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        if not self.ready.done():
            self.ready.set_exception(DialError(why))
            self.ready.exception()  # retrieved: nobody may be waiting any more
        for stream in list(self.streams.values()):
            stream.fail(why)
        for assoc in list(self.assocs.values()):
            assoc.fail(why)
        self.progress.set()

    def abort(self) -> None:
        """Close the connection (CONNECTION_CLOSE, no error) and its socket now, without the draining wait."""
        self._end(f"tuic {self.where}: connection closed")
        with contextlib.suppress(Exception):
            self._quic.close(error_code=0)
            self.transmit()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()


class TuicStream:
    """A stream to the destination: a bidirectional QUIC stream after its Connect command."""

    raw: socket.socket | None = None  # bytes go through Python (QUIC): never spliced

    def __init__(self, conn: _Connection, sid: int) -> None:
        self.conn = conn
        self.sid = sid
        self.buf = bytearray()
        self.eof = False
        self.error = ""
        self.write_error = ""
        self.eof_sent = False
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None

    def feed(self, data: bytes, end: bool) -> None:
        self.buf += data
        self.eof = self.eof or end
        self._wake()

    def fail(self, why: str) -> None:
        if not self.error:
            self.error = why
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self, n: int) -> bytes:
        while not self.buf:
            if self.eof:
                return b""
            if self.error:
                raise DialError(self.error)
            if self.closed:
                raise DialError("tuic: stream closed")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = bytes(self.buf[:n])
        del self.buf[:n]
        if self.conn._quic.took(self.sid, len(data)):
            self.conn.transmit()  # the server gets the window the reader made
        return data

    async def write(self, data: bytes) -> None:
        if self.error or self.write_error:
            raise DialError(self.error or self.write_error)
        if self.closed:
            raise DialError("tuic: stream closed")
        conn = self.conn
        try:
            conn._quic.send_stream_data(self.sid, data)
        except (ValueError, RuntimeError) as e:  # after our end, after a reset: aioquic's own words
            raise DialError(f"tuic {conn.where}: {e}") from None
        conn.transmit()
        # Wait while too much is unacknowledged: QUIC would buffer whatever it is given.
        while conn.unacked(self.sid) > SEND_BUFFER and not self.error:
            conn.progress.clear()
            try:
                async with asyncio.timeout(IDLE_TIMEOUT):
                    await conn.progress.wait()
            except TimeoutError:
                raise DialError(f"tuic {conn.where}: the server acknowledged nothing for {IDLE_TIMEOUT:g}s") \
                    from None
        if self.error:
            raise DialError(self.error)

    async def write_eof(self) -> None:
        if self.error or self.write_error or self.closed:
            return
        with contextlib.suppress(ValueError, RuntimeError):
            self.conn._quic.send_stream_data(self.sid, b"", end_stream=True)
            self.eof_sent = True
            self.conn.transmit()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        conn = self.conn
        conn.forget_stream(self.sid)
        self._wake()
        if conn.ended:
            return
        with contextlib.suppress(Exception):
            # Both ways ended now (the server drops the destination's connection). Our side, once ended
            # with FIN, is left to QUIC to deliver: a reset would drop what is not acknowledged yet.
            stream = conn._quic._streams.get(self.sid)
            if stream is not None and not self.eof_sent and not stream.sender.is_finished:
                conn._quic.reset_stream(self.sid, 0)
            if stream is not None and not stream.receiver.is_finished:
                conn._quic.stop_stream(self.sid, 0)
            conn.transmit()


class TuicDatagrams:
    """A UDP association over the dialer's connection: datagrams to and from any destination."""

    def __init__(self, conn: _Connection, native: bool) -> None:
        self.conn = conn
        self.native = native
        self.assoc_id = conn.new_assoc_id()
        self.pkt_id = 0
        self.reassembly = Reassembly()
        # None wakes a waiting recv() when the association ends.
        self.queue: asyncio.Queue[tuple[bytes, str, int] | None] = asyncio.Queue(QUEUE_SIZE)
        self.error = ""
        self.room = conn.datagram_room() if native else None
        conn.assocs[self.assoc_id] = self

    async def send(self, data: bytes, host: str, port: int) -> None:
        if self.error:
            raise DialError(self.error)
        self.pkt_id = (self.pkt_id + 1) & 0xFFFF
        self.conn.send_packets(packets(self.assoc_id, self.pkt_id, data, host, port, self.room), self.native)

    def deliver(self, p: Packet) -> None:
        whole = self.reassembly.feed(p)
        if whole is not None and not self.queue.full():  # nobody reads: dropped, as a full socket buffer would
            self.queue.put_nowait(whole)

    async def recv(self) -> tuple[bytes, str, int]:
        """The next datagram from any destination, and which one; DialError once the association ended."""
        if self.error:
            raise DialError(self.error)
        item = await self.queue.get()
        if item is None:
            self.queue.put_nowait(None)  # for any other waiter
            raise DialError(self.error)
        return item

    def fail(self, why: str) -> None:
        if self.error:
            return
        self.error = why
        self.conn.assocs.pop(self.assoc_id, None)
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)

    def close(self) -> None:
        if self.error:
            return
        self.conn.send_command(dissociate(self.assoc_id))
        self.fail("tuic: UDP association closed")
