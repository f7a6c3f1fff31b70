"""An HTTP/2 request as a Stream: v2ray's "h2" (a.k.a. "http") transport, client side.

    h2 = await open_http2(tls_stream, host="cdn.example", path="/ray", timeout=10)

One request per connection, as v2ray's client makes it: `PUT path` to
`:authority host` (one picked at random from the node's host list), with
`accept-encoding: identity`; the request body is the upload, the response
body the download. The stream's bytes start right away: the response's
status is checked on the first read (v2ray sends its headers at once, then
the destination's bytes), so a wrong path or host (404) is a DialError
there, and a write after the server ended the request is one too.

`write_eof` ends the request body (END_STREAM): v2ray passes that on as the
end of the upload and keeps sending the download, a real half-close.

The h2 state machine is the `h2` library's. One task reads the connection
for the stream's lifetime, so that WINDOW_UPDATEs reach a writer waiting for
flow control even when nobody reads the response; what it receives is held
until read, and acknowledged (re-opening the server's window) only as it is
read: the receive buffer never holds more than WINDOW bytes of body.
There is no framed relay for this transport (the relay copies through reads and writes):
flow control can hold back what is sent, which a Codec, plain calls, could only buffer without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Sequence

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from daetui.net.stream import DialError, Stream

READ_SIZE = 1 << 16
WINDOW = 1 << 20  # what the server may send before we read it: the bound on the receive buffer
STREAM_ID = 1


class Http2Stream:
    """The body of one HTTP/2 request (our upload) and of its response (the download)."""

    raw: socket.socket | None = None

    def __init__(self, inner: Stream, conn: h2.connection.H2Connection) -> None:
        self.inner = inner
        self.conn = conn
        self.buf = bytearray()  # response body received, not yet read
        self.unacked = 0  # of it, bytes whose flow-control credit is returned as they are read
        self.status: int | None = None
        self.headers: dict[bytes, bytes] = {}  # the response's headers (grpc.py reads its content-type, grpc-status)
        self.trailers: dict[bytes, bytes] = {}  # the response's trailers, if it had any
        self.not_found = "wrong path or host?"  # the hint to a 404: what the caller's request named
        self.ended = False  # the response body is complete
        self.error: DialError | None = None
        self._changed = asyncio.Event()  # something for a reader or a blocked writer
        self._send_lock = asyncio.Lock()
        self._eof_sent = False
        self._pump: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start reading the connection (from here on only the pump task reads `inner`)."""
        self._pump = asyncio.get_running_loop().create_task(self._read_connection())

    async def _flush(self) -> None:
        async with self._send_lock:
            data = self.conn.data_to_send()
            if data:
                await self.inner.write(data)

    def _fail(self, reason: str) -> None:
        if self.error is None and not self.ended:
            self.error = DialError(reason)
        self._changed.set()

    async def _read_connection(self) -> None:
        try:
            while not self.ended and self.error is None:
                data = await self.inner.read(READ_SIZE)
                if not data:
                    self._fail("h2: the server closed the connection " + (
                        "before the response ended" if self.status is not None else "without a response"))
                    return
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError as e:
                    self._fail(f"h2: protocol error from the server: {e}")
                    return
                for event in events:
                    self._handle(event)
                await self._flush()  # settings and ping acks, window updates
        except DialError as e:
            self._fail(str(e))
        except OSError as e:
            self._fail(f"h2: {e.strerror or e}")

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            headers = self.headers = dict(event.headers or [])
            status = headers.get(b":status", b"")
            try:
                self.status = int(status)
            except ValueError:
                self._fail(f"h2: the response's status {status!r} is not a number")
                return
            if self.status != 200:
                hint = f" ({self.not_found})" if self.status == 404 else ""
                self._fail(f"h2: the server answered HTTP {self.status}{hint}")
        elif isinstance(event, h2.events.DataReceived):
            if event.stream_id != STREAM_ID:
                return
            # Padding is never read: its credit goes back at once.
            padding = (event.flow_controlled_length or 0) - len(event.data or b"")
            if padding:
                self.conn.acknowledge_received_data(padding, STREAM_ID)
            if self.status == 200:
                self.buf += event.data or b""
                self.unacked += len(event.data or b"")
        elif isinstance(event, h2.events.TrailersReceived):
            self.trailers = dict(event.headers or [])
        elif isinstance(event, h2.events.StreamEnded):
            if self.status is None:
                self._fail("h2: the server ended the request without a response")
            self.ended = True
        elif isinstance(event, h2.events.StreamReset) and not self.ended:
            self._fail(f"h2: the server reset the request (error {event.error_code!s})")
        elif isinstance(event, h2.events.ConnectionTerminated) and not self.ended:
            self._fail(f"h2: the server ended the connection (GOAWAY, error {event.error_code!s})")
        self._changed.set()

    async def read(self, n: int) -> bytes:
        """Up to n bytes of the response body; b"" at its end; DialError for a refusal or a broken connection."""
        while not self.buf:
            if self.error is not None:
                raise self.error
            if self.ended:
                return b""
            self._changed.clear()
            await self._changed.wait()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        acked, self.unacked = min(self.unacked, len(out)), self.unacked - min(self.unacked, len(out))
        if acked and not self.ended:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.acknowledge_received_data(acked, STREAM_ID)
            try:
                await self._flush()
            except OSError:
                pass  # the pump sees the connection's end
        return out

    async def write(self, data: bytes) -> None:
        """Send `data` as request body, as fast as the server's flow-control window lets."""
        view = memoryview(data)
        while view:
            if self.error is not None:
                raise self.error
            if self._eof_sent:
                raise DialError("h2: write after the end of the request was sent")
            try:
                window = self.conn.local_flow_control_window(STREAM_ID)
            except h2.exceptions.StreamClosedError:
                raise self.error or DialError("h2: the server ended the request") from None
            if window <= 0:
                self._changed.clear()
                await self._changed.wait()  # a WINDOW_UPDATE, or the end
                continue
            n = min(window, self.conn.max_outbound_frame_size, len(view))
            try:
                self.conn.send_data(STREAM_ID, bytes(view[:n]))
            except h2.exceptions.StreamClosedError:
                raise self.error or DialError("h2: the server ended the request") from None
            except h2.exceptions.ProtocolError as e:
                raise DialError(f"h2: {e}") from None
            view = view[n:]
            await self._flush()

    async def write_eof(self) -> None:
        """End the request body: the server ends the upload and keeps sending the response."""
        if self._eof_sent or self.error is not None:
            return
        self._eof_sent = True
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.end_stream(STREAM_ID)
            await self._flush()

    def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        self.inner.close()


async def open_http2(stream: Stream, *, hosts: Sequence[str], path: str, timeout: float,
                     early_data: bytes = b"", method: str = "PUT", scheme: str = "https",
                     headers: Sequence[tuple[bytes, bytes]] = ((b"accept-encoding", b"identity"),),
                     not_found: str = "wrong path or host?") -> Http2Stream:
    """A `PUT path` request over `stream` (TLS, ALPN h2), to a host picked from `hosts`; `early_data` sent with it.

    Only the connection preface and the request go out within `timeout`: the
    answer is read with the stream (see the module's docstring). DialError
    when that fails; `stream` is closed then. `method`, `scheme`, `headers`
    (after the pseudo-headers) and `not_found` (the hint to a 404) are for
    other requests than v2ray's h2 (grpc.py: a POST, over TLS or not).
    """
    config = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_inbound_headers=True)
    conn = h2.connection.H2Connection(config)
    conn.local_settings = h2.settings.Settings(client=True, initial_values={
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
        h2.settings.SettingCodes.ENABLE_PUSH: 0,
    })
    conn.initiate_connection()
    conn.increment_flow_control_window(WINDOW - 65535)  # the connection's window, to match the stream's
    host = random.choice(list(hosts)) if hosts else "www.example.com"  # v2ray's own default host
    target = path if path.startswith("/") else "/" + path
    try:
        conn.send_headers(STREAM_ID, [
            (b":method", method.encode("ascii")), (b":scheme", scheme.encode("ascii")),
            (b":authority", host.encode("idna")), (b":path", target.encode("ascii")), *headers,
        ])
    except (h2.exceptions.ProtocolError, UnicodeError, ValueError) as e:
        stream.close()
        raise DialError(f"h2: cannot make the request: {e}") from None
    h2s = Http2Stream(stream, conn)
    h2s.not_found = not_found
    try:
        async with asyncio.timeout(timeout):
            await h2s._flush()
            h2s.start()
            if early_data:
                await h2s.write(early_data)
    except TimeoutError:
        h2s.close()
        raise DialError(f"h2: the request could not be sent in {timeout:g}s") from None
    except OSError as e:
        h2s.close()
        raise DialError(f"h2: sending the request: {e.strerror or e}") from None
    except BaseException:
        h2s.close()
        raise
    return h2s
