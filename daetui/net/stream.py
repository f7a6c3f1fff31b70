"""What every outbound offers: a TCP stream to a destination, and UDP datagrams to destinations.

A destination is a host (an IP literal, or a domain name when dial_mode
gives one) and a port. A dialer that needs a connection of its own (to a
proxy server) makes it through `via`, another dialer: that is how chains
`A -> B` work (B's server is reached through A), and how every socket ends
up carrying daetui's SO_MARK (the chain starts at a DirectDialer).

A stream whose bytes, after the handshake, are the destination's own bytes
(direct, socks5, http CONNECT) exposes its socket as `raw`, so the relay can
splice it; an encrypting one (shadowsocks, vmess, trojan's TLS) has
`raw = None` and is copied through Python. One whose framing is plain calls
over a socket (shadowsocks, TLS as trojan uses it) also offers `framed()`: the socket and its
`Codec`, so the relay can run both sockets on the loop's transports and
frame each chunk in a callback, with no task or await per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Protocol, runtime_checkable


class DialError(Exception):
    """A dial that failed, with the reason in words a log line can carry."""


@runtime_checkable
class Stream(Protocol):
    """A connected byte stream."""

    raw: socket.socket | None

    async def read(self, n: int) -> bytes:
        """Up to n bytes; b"" at the end of the stream."""
        ...

    async def write(self, data: bytes) -> None:
        ...

    async def write_eof(self) -> None:
        """Half-close: the peer reads the end of the stream, and may still answer."""
        ...

    def close(self) -> None:
        ...


class Codec(Protocol):
    """A stream's framing as plain calls, for a relay that moves the bytes on the socket below itself.

    Errors are DialError, as the stream's read() raises them.
    """

    error: DialError | None  # set when a decode gave the good bytes before a bad frame: fail after them

    def encode(self, data: bytes | bytearray | memoryview) -> bytes | bytearray:
        """What to send for `data`; b"" (nothing to send yet) for b"" unless a header is still owed."""
        ...

    def encode_eof(self) -> tuple[bytes | bytearray, bool]:
        """The client ended its side: what to send for that, and whether to end TCP towards the server."""
        ...

    def decode(self, data: bytes) -> bytes | bytearray:
        """The destination's bytes in what the server sent (b"" while a frame is incomplete)."""
        ...

    def reply(self) -> bytes:
        """What decoding made that goes back to the server (a TLS key update's answer); mostly b""."""
        ...

    @property
    def server_ended(self) -> bool:
        """The server ended the destination's side inside the stream (TLS close_notify), before TCP did."""
        ...

    def decode_eof(self) -> None:
        """The server ended its side: raises when that cut a frame short or nothing came."""
        ...

    def overdue(self, idle: float) -> str | None:
        """Why the server is too late, silent for `idle` seconds of being read, with bytes it owes; or None."""
        ...

    @property
    def watch_interval(self) -> float | None:
        """How often overdue() is worth asking (None: never)."""
        ...


class PlainCodec:
    """The Codec of a socket whose bytes are the destination's own: for a stream that only adds a header."""

    error: DialError | None = None
    watch_interval: float | None = None
    server_ended = False

    def encode(self, data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
        return data

    def encode_eof(self) -> tuple[bytes, bool]:
        return b"", True

    def decode(self, data: bytes) -> bytes:
        return data

    def reply(self) -> bytes:
        return b""

    def decode_eof(self) -> None:
        pass

    def overdue(self, idle: float) -> str | None:
        return None


class CodecOver:
    """A Codec over another one: every call passes to the one below; subclasses change what they frame."""

    def __init__(self, below: Codec) -> None:
        self.below = below
        self.reply = below.reply
        self.overdue = below.overdue
        self.watch_interval = below.watch_interval

    @property
    def error(self) -> DialError | None:
        return self.below.error

    @property
    def server_ended(self) -> bool:
        return self.below.server_ended

    def encode(self, data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
        return self.below.encode(data)

    def encode_eof(self) -> tuple[bytes | bytearray | memoryview, bool]:
        return self.below.encode_eof()

    def decode(self, data: bytes) -> bytes | bytearray:
        return self.below.decode(data)

    def decode_eof(self) -> None:
        self.below.decode_eof()


def framing_of(stream: Stream) -> tuple[socket.socket, Codec] | None:
    """A stream's socket and Codec for the framed relay (see `Codec`), or None when it has none."""
    framed = getattr(stream, "framed", None)
    if framed is not None:
        return framed()
    return (stream.raw, PlainCodec()) if stream.raw is not None else None


class Datagrams(Protocol):
    """A UDP association through an outbound: datagrams to and from any destination."""

    async def send(self, data: bytes, host: str, port: int) -> None:
        ...

    async def recv(self) -> tuple[bytes, str, int]:
        """The next datagram and who sent it (the destination, not the proxy)."""
        ...

    def close(self) -> None:
        ...


class Dialer(Protocol):
    """An outbound: direct, a proxy node, or a chain of them."""

    name: str

    async def connect(self, host: str, port: int) -> Stream:
        ...

    async def datagrams(self) -> Datagrams:
        """Raises DialError when the protocol has no UDP."""
        ...


class SocketStream:
    """A Stream over a plain connected socket (non-blocking)."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.raw: socket.socket | None = sock
        self.sock = sock
        self.loop = loop or asyncio.get_running_loop()

    async def read(self, n: int) -> bytes:
        return await self.loop.sock_recv(self.sock, n)


    async def write(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def write_eof(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


class WrappedStream:
    """A Stream over another one: reads, writes, half-close and close pass through.

    Subclasses change what they must (a prefix put back, a header read first).
    """

    raw: socket.socket | None = None  # bytes go through Python: never spliced

    def __init__(self, inner: Stream) -> None:
        self.inner = inner

    async def read(self, n: int) -> bytes:
        return await self.inner.read(n)

    async def write(self, data: bytes) -> None:
        await self.inner.write(data)

    async def write_eof(self) -> None:
        await self.inner.write_eof()

    def close(self) -> None:
        self.inner.close()
