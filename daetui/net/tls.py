"""TLS to a proxy server over any Stream (a socket, or another node's stream in a chain).

The TLS engine runs over memory BIOs (as asyncio's own TLS transport does),
so the layer below need only be a Stream: a DirectDialer's socket, or a
vmess/trojan stream when nodes are chained `A -> B`.

Trust, in order: `allow_insecure` (the node's link or daetui's global
`allow_insecure`) accepts any certificate; otherwise the server's certificate
must chain to `ca_file` when given (a PEM bundle, e.g. the lab's CA), else to
the system's CAs, and must name the SNI (or the server's address when the
node has no SNI and is given by address).

Used by the nodes that speak TLS (trojan, vless, vmess, https proxies) and by DNS over TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path

from daetui.net.stream import DialError, Stream

READ_SIZE = 1 << 16
DECODE_SIZE = 1 << 18  # a read asks for more than a record holds: OpenSSL hands out one record per call


def client_context(*, allow_insecure: bool = False, ca_file: str | Path | None = None,
                   alpn: Sequence[str] = ()) -> ssl.SSLContext:
    """A client context: verifying against `ca_file` (or the system's CAs), or accepting anything."""
    if allow_insecure:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        try:
            ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
        except (OSError, ssl.SSLError) as e:
            raise DialError(f"CA file {ca_file}: {e}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def server_name(host: str, sni: str) -> str:
    """The name TLS sends (SNI) and checks the certificate against: `sni`, else the server's host.

    An IP literal is not sent as SNI (Python leaves it out) but is still
    checked against the certificate's IP addresses.
    """
    if sni:
        return sni
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host.strip("[]")))
    return host


class TlsStream:
    """A TLS client session over another Stream."""

    raw = None

    def __init__(self, inner: Stream, ctx: ssl.SSLContext, hostname: str, half_close: bool = True) -> None:
        self.inner = inner
        self.half_close = half_close
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(self._incoming, self._outgoing, server_side=False, server_hostname=hostname)
        # A read may have to send (TLS 1.3 key updates) while a write sends: one sender at a time,
        # so records leave in the order the engine made them.
        self._send_lock = asyncio.Lock()
        self._eof_sent = False
        self._server_ended = False

    async def _flush(self) -> None:
        if not self._outgoing.pending:
            return
        async with self._send_lock:
            data = self._outgoing.read()
            if data:
                await self.inner.write(data)

    async def _receive(self) -> None:
        data = await self.inner.read(READ_SIZE)
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    async def handshake(self, timeout: float | None) -> None:
        """The TLS handshake, within `timeout` seconds (None: the caller bounds it); DialError says why it failed."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        self._tls.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        await self._flush()
                        if self._incoming.eof:
                            raise DialError("TLS handshake: the server closed the connection") from None
                        await self._receive()
                await self._flush()
        except TimeoutError:
            raise DialError(f"TLS handshake: no answer in {timeout:g}s") from None
        except ssl.SSLCertVerificationError as e:
            raise DialError(f"TLS handshake: certificate not accepted: {e.verify_message}") from None
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            raise DialError("TLS handshake: the server closed the connection") from None
        except ssl.SSLError as e:
            if e.reason == "WRONG_VERSION_NUMBER":
                raise DialError("TLS handshake: the server does not speak TLS (WRONG_VERSION_NUMBER)") from None
            raise DialError(f"TLS handshake: {e.reason or e}") from None
        except OSError as e:
            raise DialError(f"TLS handshake: {e.strerror or e}") from None

    async def read(self, n: int) -> bytes:
        while True:
            try:
                data = self._tls.read(n)
            except ssl.SSLWantReadError:
                await self._flush()
                if self._incoming.eof:
                    return b""
                await self._receive()
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                # close_notify, or the server closing without one (common): the end either way.
                return b""
            except ssl.SSLError as e:
                raise DialError(f"TLS: {e.reason or e}") from None
            if self._outgoing.pending:
                await self._flush()
            return data

    async def write(self, data: bytes) -> None:
        self._seal(data)
        await self._flush()

    def _seal(self, data: bytes | bytearray | memoryview) -> None:
        """Hand `data` to the session: its records wait in the outgoing buffer."""
        if self._eof_sent:
            raise DialError("TLS: write after the end of the stream was sent")
        try:
            view = memoryview(data)
            while view:
                n = self._tls.write(view)
                view = view[n:]
        except ssl.SSLError as e:
            raise DialError(f"TLS: {e.reason or e}") from None

    async def write_eof(self) -> None:
        """Send close_notify, after which a TLS 1.3 server may still answer (a half-close).

        With `half_close` off this does nothing: for servers that end the
        whole session on close_notify, the answer matters more than the EOF.
        """
        if self._eof_sent or not self.half_close:
            return
        self._eof_sent = True
        with contextlib.suppress(ssl.SSLError):
            self._tls.unwrap()
        await self._flush()

    def close(self) -> None:
        self.inner.close()

    # -- the Codec: the session as plain calls, for a relay that owns the socket below --------------
    error: DialError | None = None
    watch_interval: float | None = None  # TLS owes nothing on a timer: a silent server is the destination's

    def framed(self) -> tuple[socket.socket, TlsStream] | None:
        """The socket to the server and this session as its Codec, when TLS runs right on that socket."""
        raw = self.inner.raw
        if raw is None or self._incoming.pending or self._outgoing.pending or self._tls.pending():
            return None  # bytes in flight inside the session: the stream's own reads and writes finish them
        return raw, self

    def encode(self, data: bytes | bytearray | memoryview) -> bytes:
        """The records carrying `data`."""
        self._seal(data)
        return self._outgoing.read()

    def encode_eof(self) -> tuple[bytes, bool]:
        """close_notify (with `half_close`), never TCP's FIN: the server may still answer."""
        if self._eof_sent or not self.half_close:
            return b"", False
        self._eof_sent = True
        with contextlib.suppress(ssl.SSLError):
            self._tls.unwrap()
        return self._outgoing.read(), False

    def decode(self, data: bytes) -> bytes:
        """The plaintext of every whole record now received."""
        self._incoming.write(data)
        out = []
        read = self._tls.read
        while not self._server_ended:
            try:
                chunk = read(DECODE_SIZE)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._server_ended = True  # close_notify: the destination's end, as read() takes it
                break
            except ssl.SSLError as e:
                raise DialError(f"TLS: {e.reason or e}") from None
            if not chunk:
                self._server_ended = True
                break
            out.append(chunk)
        return out[0] if len(out) == 1 else b"".join(out)

    def reply(self) -> bytes:
        """Records the session made while reading (a key update's answer)."""
        return self._outgoing.read() if self._outgoing.pending else b""

    @property
    def server_ended(self) -> bool:
        """close_notify came: the destination's side is over."""
        return self._server_ended

    def decode_eof(self) -> None:
        """TCP's end: the end of the stream, with or without close_notify (as read() takes it)."""
        self._server_ended = True

    def overdue(self, idle: float) -> str | None:
        return None


async def start_tls(inner: Stream, ctx: ssl.SSLContext, hostname: str, timeout: float | None,
                    half_close: bool = True) -> TlsStream:
    """A TLS session over `inner`, handshake done; `inner` is closed if it fails."""
    tls = TlsStream(inner, ctx, hostname, half_close)
    try:
        await tls.handshake(timeout)
    except BaseException:
        inner.close()
        raise
    return tls
