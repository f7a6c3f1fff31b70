"""gRPC's "gun" tunnel as a Stream: v2ray/Xray's and mihomo's `grpc` transport, client side.

    g = await open_grpc(tls_stream, authority="cdn.example", service_name="svc", timeout=10, tls=True)

One call of the streaming method `Tun` of the service `service_name`, as
v2ray's GunService: one HTTP/2 request per connection (net/http2.py),

    POST /<service_name>/Tun    content-type: application/grpc, te: trailers

and each direction a sequence of gRPC messages (a write's data in messages
of at most MESSAGE_DATA bytes), each

    compressed flag (0) | length (4, big-endian) | protobuf Hunk { bytes data = 1; }

(the Hunk: tag 0x0A, the data's length as a varint, the data). A service
name that starts with "/" is a whole path (`/my/path/Tun`), as mihomo and
Xray read it; Xray's `|`-separated stream names keep the first.

The response's gRPC messages are read as they come, in any slices
(HunkDecoder); their data is the stream's. The response's end is the
destination's: with a trailer (or a trailers-only response) whose
`grpc-status` is not 0 it is a DialError naming the status and its message;
a 404 names the service as the likely mistake. `write_eof` ends the
request (END_STREAM), which servers pass on as the end of the upload.

Only "gun" mode is spoken: "multi" (`TunMulti`, a repeated `data` per
message) is refused when a link is parsed, since mihomo, the lab's server,
does not serve it. Like h2, no framed relay: flow control may hold writes back.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from urllib.parse import quote, unquote

from daetui.net.http2 import Http2Stream, open_http2
from daetui.net.stream import DialError, Stream

READ_SIZE = 1 << 16
MESSAGE_DATA = 1 << 15  # the most data per message we send: a server's message limit (4 MiB in grpc-go) is far
USER_AGENT = b"grpc-go/1.36.0"  # what mihomo's client sends: a name of our own would single our requests out
DATA_TAG = 0x0A  # field 1, wire type 2 (length-delimited): Hunk.data
STATUS_NAMES = {
    1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
    10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
    15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}


def tun_path(service_name: str) -> str:
    """The request's path: `/<service_name>/Tun`, or the service name itself when it starts with "/"."""
    name = service_name or "GunService"  # v2ray's default service
    if name.startswith("/"):
        return name.split("|", 1)[0]
    return f"/{quote(name, safe='')}/Tun"


def varint(n: int) -> bytes:
    """n as a protobuf varint (7 bits a byte, low first, the top bit saying more follow)."""
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def message(data: bytes | bytearray | memoryview) -> bytes:
    """One gRPC message holding a Hunk of `data`."""
    hunk_head = bytes((DATA_TAG,)) + varint(len(data))
    return b"\x00" + struct.pack("!I", len(hunk_head) + len(data)) + hunk_head + bytes(data)


def _read_varint(buf: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """(value, position after it) of the varint at `pos`, None when `buf` ends inside it."""
    value = shift = 0
    for i in range(pos, min(len(buf), pos + 10)):
        value |= (buf[i] & 0x7F) << shift
        if buf[i] < 0x80:
            return value, i + 1
        shift += 7
    if len(buf) - pos >= 10:
        raise DialError("grpc: a varint longer than 10 bytes: not a gRPC tunnel")
    return None


class HunkDecoder:
    """The response body's gRPC messages in, in any slices; their Hunks' data out.

    Fields other than `data` (none in a Hunk; a server's own additions) are
    skipped, as protobuf readers do; a repeated `data` (Xray's MultiHunk) is
    data too. A message is never held whole: its data passes through as it comes.
    """

    def __init__(self) -> None:
        self.pending = b""  # a message prefix or a field header cut by the end of a slice
        self.message_left = 0  # bytes of the current message not yet parsed
        self.data_left = 0  # of them, bytes of the current data field
        self.skip_left = 0  # of them, bytes of a field that is not data

    @property
    def at_boundary(self) -> bool:
        """True between messages: where the body may end."""
        return not self.pending and self.message_left == 0

    def feed(self, chunk: bytes) -> bytes:
        """The data that `chunk`, the next slice of the body, completes; DialError when it is not gRPC."""
        buf = self.pending + chunk if self.pending else chunk
        self.pending = b""
        out: list[bytes] = []
        pos, end = 0, len(buf)
        while pos < end:
            if self.data_left or self.skip_left:
                n = min(self.data_left or self.skip_left, end - pos)
                if self.data_left:
                    out.append(buf[pos:pos + n])
                    self.data_left -= n
                else:
                    self.skip_left -= n
                self.message_left -= n
                pos += n
            elif self.message_left:
                field = self._field(buf, pos)
                if field is None:
                    break
                pos = field
            else:
                if end - pos < 5:
                    break
                flag, length = buf[pos], struct.unpack_from("!I", buf, pos + 1)[0]
                if flag != 0:
                    raise DialError("grpc: the server sent a compressed message, which was not asked for"
                                    if flag == 1 else f"grpc: message flag {flag}: not a gRPC tunnel")
                self.message_left = length
                pos += 5
        self.pending = bytes(buf[pos:])
        return b"".join(out)

    def _field(self, buf: bytes, pos: int) -> int | None:
        """Parse the field header at `pos` (setting data_left or skip_left); the position after it, None if cut."""
        tag = _read_varint(buf, pos)
        if tag is None:
            return None
        key, after = tag
        wire = key & 7
        if wire == 2:  # length-delimited: data (field 1) or another field
            length = _read_varint(buf, after)
            if length is None:
                return None
            size, after = length
        elif wire == 0:  # a varint: skipped whole once all of it is here
            value = _read_varint(buf, after)
            if value is None:
                return None
            size, after = 0, value[1]
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
        else:
            raise DialError(f"grpc: protobuf wire type {wire} in a message: not a gRPC tunnel")
        header = after - pos
        if header + size > self.message_left:
            raise DialError("grpc: a field longer than its message: not a gRPC tunnel")
        self.message_left -= header
        if key == DATA_TAG:
            self.data_left = size
        else:
            self.skip_left = size
        if size == 0:  # an empty field: nothing more of it to pass or skip
            self.data_left = self.skip_left = 0
        return after


def _named(e: DialError) -> DialError:
    """An HTTP/2 layer's DialError as this transport's, so that a grpc node's errors say grpc."""
    return DialError("grpc: " + str(e).removeprefix("h2: "))


def status_error(fields: dict[bytes, bytes]) -> DialError | None:
    """The DialError a `grpc-status` other than 0 in these headers or trailers stands for (None: 0 or none)."""
    raw = fields.get(b"grpc-status")
    if raw is None or raw.strip() == b"0":
        return None
    try:
        code = int(raw)
    except ValueError:
        return DialError(f"grpc: the server ended the call with grpc-status {raw!r}")
    name = STATUS_NAMES.get(code, "unknown code")
    text = unquote(fields.get(b"grpc-message", b"").decode("utf-8", "replace"))
    hint = " (wrong serviceName?)" if code == 12 else ""
    return DialError(f"grpc: the server ended the call with grpc-status {code} ({name}){hint}"
                     + (f": {text}" if text else ""))


class GrpcStream:
    """The data of one `Tun` call: ours in the request's messages, the server's in the response's."""

    raw: socket.socket | None = None  # bytes go through Python (and no framed relay: see the module's docstring)

    def __init__(self, h2s: Http2Stream) -> None:
        self.h2s = h2s
        self.decoder = HunkDecoder()
        self.out = b""  # decoded data not yet read
        self._checked = False  # the response's headers were checked
        self._ended = False

    def _check_headers(self) -> None:
        if self._checked or self.h2s.status is None:
            return
        self._checked = True
        if error := status_error(self.h2s.headers):  # a trailers-only response: the call refused at once
            raise error
        kind = self.h2s.headers.get(b"content-type", b"")
        if kind and not kind.startswith(b"application/grpc"):
            raise DialError(f"grpc: the server answered with content-type {kind.decode('latin-1')!r}, "
                            "not a gRPC call (wrong serviceName, or not a gRPC server?)")

    async def read(self, n: int) -> bytes:
        """Up to n bytes of the server's data; b"" at the call's end; DialError for an error status or breakage."""
        while not self.out:
            if self._ended:
                return b""
            try:
                data = await self.h2s.read(READ_SIZE)
            except DialError as e:
                raise _named(e) from None
            self._check_headers()
            if not data:
                self._ended = True
                if error := status_error(self.h2s.trailers):
                    raise error
                if not self.decoder.at_boundary:
                    raise DialError("grpc: the server ended the call within a message")
                return b""
            self.out = self.decoder.feed(data)
        out, self.out = self.out[:n], self.out[n:]
        return out

    async def write(self, data: bytes) -> None:
        """`data` as messages of at most MESSAGE_DATA bytes each, in one write to the request."""
        if len(data) <= MESSAGE_DATA:
            out = message(data)
        else:
            view = memoryview(data)
            out = b"".join(message(view[i:i + MESSAGE_DATA]) for i in range(0, len(view), MESSAGE_DATA))
        try:
            await self.h2s.write(out)
        except DialError as e:
            raise _named(e) from None

    async def write_eof(self) -> None:
        """End the request (the server ends the upload and keeps answering)."""
        await self.h2s.write_eof()

    def close(self) -> None:
        self.h2s.close()


async def open_grpc(stream: Stream, *, authority: str, service_name: str, timeout: float, tls: bool,
                    early_data: bytes = b"") -> GrpcStream:
    """A `Tun` call over `stream` (TLS with ALPN h2, or cleartext HTTP/2 when `tls` is False), `early_data` its
    first message; DialError when the request cannot be sent within `timeout` (`stream` closed then)."""
    try:
        h2s = await open_http2(
            stream, hosts=(authority,), path=tun_path(service_name), timeout=timeout, method="POST",
            scheme="https" if tls else "http", not_found="wrong serviceName?",
            headers=((b"content-type", b"application/grpc"), (b"te", b"trailers"), (b"user-agent", USER_AGENT)))
    except DialError as e:
        raise _named(e) from None
    g = GrpcStream(h2s)
    if early_data:
        try:
            async with asyncio.timeout(timeout):
                await g.write(early_data)
        except TimeoutError:
            g.close()
            raise DialError(f"grpc: the request could not be sent in {timeout:g}s") from None
        except BaseException:
            g.close()
            raise
    return g
