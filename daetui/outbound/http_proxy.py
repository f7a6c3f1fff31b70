"""HTTP and HTTPS proxy nodes: a tunnel by CONNECT (RFC 9110 section 9.3.6), Basic auth (RFC 7617).

    http://[user:password@]host[:port][#name]
    https://[user:password@]host[:port][?sni=name&allow_insecure=1][#name]

An https node speaks TLS to the proxy itself (v2ray/clash write
`allowInsecure`, `skip-cert-verify`, `peer` for the same parameters; all are
read). The proxy's answer is read strictly: an HTTP/1.x status line and
header lines ending in an empty line, at most `MAX_HEAD` bytes; anything
else is a DialError saying what came. Bytes the proxy sent after its header
block are the destination's and stay in the stream: over a plain socket the
head is read with MSG_PEEK so that not one byte past it leaves the kernel
(and the stream handed back is still a SocketStream, for splicing); over
other streams the rest is kept in front of the stream.

HTTP proxies have no UDP: `datagrams()` raises DialError.
"""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import ssl
from dataclasses import dataclass, field
from typing import ClassVar

from daetui.net.stream import Datagrams, Dialer, DialError, Stream, WrappedStream
from daetui.net.tls import TlsStream, start_tls
from daetui.outbound.state import NodeProtocol

__all__ = ["HttpDialer", "HttpNode", "PrefixedStream", "TlsStream", "parse_link"]
from daetui.net.address import is_address
from daetui.outbound.socks5 import check_host, check_port, format_link, host_port, split_link

DEFAULT_PORTS = {"http": 80, "https": 443}
HANDSHAKE_TIMEOUT = 10.0  # seconds from the proxy's TCP connection to the end of its answer (TLS included)
MAX_HEAD = 16384  # bytes of status line and headers a proxy may answer with
MAX_INFORMATIONAL = 4  # 1xx answers skipped before the final one

TRUE, FALSE = ("1", "true", "yes"), ("0", "false", "no", "")
INSECURE_KEYS = ("allow_insecure", "allowInsecure", "skip-cert-verify", "insecure")
SNI_KEYS = ("sni", "peer", "servername")

_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_STATUS = re.compile(rb"^HTTP/1\.[01] ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?$")
_DEST_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,253}$")


# -- the node ---------------------------------------------------------------------------

@dataclass(frozen=True)
class HttpNode:
    """An HTTP proxy (`tls` False) or an HTTPS one (TLS to the proxy, verified unless `allow_insecure`)."""

    name: str
    host: str
    port: int
    username: str = ""
    password: str = ""
    tls: bool = False
    sni: str = ""  # the name sent and verified in TLS; empty: the host
    allow_insecure: bool = False

    schemes: ClassVar[tuple[str, ...]] = ("http", "https")

    def __post_init__(self) -> None:
        check_host(self.host)
        check_port(self.port)
        if ":" in self.username:
            raise ValueError("a Basic auth username cannot contain ':'")
        if self.password and not self.username:
            raise ValueError("a password without a username")
        if not self.tls and (self.sni or self.allow_insecure):
            raise ValueError("sni and allow_insecure are for https:// nodes only")
        if self.sni:
            check_host(self.sni)

    @property
    def protocol(self) -> NodeProtocol:
        return "https" if self.tls else "http"

    def link(self) -> str:
        """The share link, read back by `parse_link` into an equal node."""
        query = {}
        if self.sni:
            query["sni"] = self.sni
        if self.allow_insecure:
            query["allow_insecure"] = "1"
        return format_link(self.protocol, self.host, self.port, self.username, self.password, query, self.name)

    def dialer(self, via: Dialer, *, timeout: float = HANDSHAKE_TIMEOUT,
               ssl_context: ssl.SSLContext | None = None) -> HttpDialer:
        """A dialer through this proxy, whose own connection is made by `via`.

        `ssl_context` replaces the default one (the system's CAs, or no
        verification with `allow_insecure`): tests pass one trusting their CA.
        """
        return HttpDialer(self, via, timeout, ssl_context)


def parse_link(link: str, name: str = "") -> HttpNode:
    """`http(s)://[user:password@]host[:port][?sni=...&allow_insecure=1][#name]`; `name` wins over the fragment."""
    parts = split_link(link, HttpNode.schemes, 80, DEFAULT_PORTS)
    tls = parts.scheme == "https"
    sni, insecure = "", False
    for key, value in parts.query.items():
        if key in SNI_KEYS:
            if sni and value != sni:
                raise ValueError(f"two different SNI parameters ({sni!r}, {value!r})")
            sni = value
        elif key in INSECURE_KEYS:
            if value.lower() not in TRUE + FALSE:
                raise ValueError(f"{key}={value!r}: expected 1/true or 0/false")
            insecure = insecure or value.lower() in TRUE
        # Other parameters (tfo, udp, ...) are for other clients' options: ignored.
    if not tls and (sni or insecure):
        raise ValueError("sni and allow_insecure are for https:// links only")
    if sni == parts.host:
        sni = ""  # the default anyway: keeps link() and equality canonical
    return HttpNode(name or parts.name or f"{parts.host_text}:{parts.port}", parts.host, parts.port,
                    parts.username, parts.password, tls, sni, insecure)


# -- the dialer -------------------------------------------------------------------------

@dataclass
class HttpDialer:
    """Streams through one HTTP(S) proxy by CONNECT."""

    node: HttpNode
    via: Dialer
    timeout: float = HANDSHAKE_TIMEOUT
    ssl_context: ssl.SSLContext | None = None
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.node.name

    @property
    def server(self) -> str:
        return f"{self.node.protocol} proxy {host_port(self.node.host, self.node.port)}"

    def context(self) -> ssl.SSLContext:
        """The TLS client context for an https node (made once: loading the CA store takes milliseconds)."""
        if self.ssl_context is None:
            ctx = ssl.create_default_context()
            if self.node.allow_insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self.ssl_context = ctx
        return self.ssl_context

    def request(self, host: str, port: int) -> bytes:
        """The CONNECT request for host:port."""
        if not (is_address(host) or _DEST_NAME.match(host)):
            # A sniffed name goes into a request line: nothing but a hostname may.
            raise DialError(f"destination {host!r} is not a hostname or an IP address")
        if not 0 < port <= 0xFFFF:
            raise DialError(f"destination port {port} out of range")
        target = host_port(host, port).encode()
        lines = [b"CONNECT " + target + b" HTTP/1.1", b"Host: " + target]
        if self.node.username:
            token = base64.b64encode(f"{self.node.username}:{self.node.password}".encode())
            lines.append(b"Proxy-Authorization: Basic " + token)
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def connect(self, host: str, port: int) -> Stream:
        """A stream to host:port (an IP literal or a name the proxy resolves)."""
        request = self.request(host, port)
        stream = await self.via.connect(self.node.host, self.node.port)
        step = "TLS handshake" if self.node.tls else "CONNECT"
        try:
            async with asyncio.timeout(self.timeout):
                if self.node.tls:
                    stream = await self._tls(stream)
                    step = "CONNECT"
                await stream.write(request)
                return await self._answer(stream, host_port(host, port))
        except TimeoutError:
            stream.close()
            raise DialError(f"{self.server}: no answer to {step} within {self.timeout:g}s") from None
        except OSError as e:
            stream.close()
            raise DialError(f"{self.server}: connection lost during {step}: {e.strerror or e}") from None
        except DialError as e:
            stream.close()
            raise DialError(f"{self.server}: {e}") from None
        except BaseException:
            stream.close()
            raise

    async def datagrams(self) -> Datagrams:
        """HTTP proxies carry no UDP."""
        raise DialError(f"{self.server}: HTTP proxies have no UDP")

    async def _tls(self, stream: Stream) -> Stream:
        # The one TLS client of the outbounds (as trojan's): over a socket, its session is a codec for
        # the framed relay. No half-close (CONNECT tunnels end with TCP's); connect() bounds the time.
        return await start_tls(stream, self.context(), self.node.sni or self.node.host, None, half_close=False)

    async def _answer(self, stream: Stream, target: str) -> Stream:
        """Read the proxy's answer to CONNECT; the stream positioned at the destination's first byte."""
        for _ in range(MAX_INFORMATIONAL + 1):
            head, stream = await read_head(stream)
            status, reason, _headers = parse_head(head)
            if 100 <= status < 200 and status != 101:
                continue  # informational; the final answer follows
            if 200 <= status < 300:
                return stream
            raise DialError(self._refusal(status, reason, target))
        raise DialError(f"more than {MAX_INFORMATIONAL} informational answers to CONNECT")

    def _refusal(self, status: int, reason: str, target: str) -> str:
        said = f"{status} {reason}".rstrip()
        if status in (401, 407):
            if self.node.username:
                return f"authentication failed for user {self.node.username!r} ({said})"
            return f"requires authentication, and the link has no user:password ({said})"
        return f"refused CONNECT {target}: {said}"


# -- reading the answer ------------------------------------------------------------------

def parse_head(head: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    """(status, reason, headers) from a response head ending in CRLF CRLF; ValueError says what is wrong."""
    if not head.endswith(b"\r\n\r\n"):
        raise ValueError("answer head does not end with an empty line")
    lines = head[:-4].split(b"\r\n")
    status_line = lines[0]
    m = _STATUS.match(status_line)
    if m is None:
        raise ValueError(f"not an HTTP/1.x status line: {_show(status_line)}")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            raise ValueError(f"malformed header line: {_show(line)}")
        if any((b < 0x20 and b != 0x09) or b == 0x7F for b in value):
            raise ValueError(f"control character in header {name.decode()}")
        headers.append((name.decode(), value.strip(b" \t").decode("latin-1")))
    return int(m.group(1)), (m.group(2) or b"").decode("latin-1"), headers


def _show(data: bytes, limit: int = 48) -> str:
    text = repr(data[:limit])
    return text + ("..." if len(data) > limit else "")


def _head_end(buf: bytes, start: int) -> int:
    """The index just past CRLF CRLF in buf (searching from `start`), or -1."""
    i = buf.find(b"\r\n\r\n", max(0, start - 3))
    return -1 if i < 0 else i + 4


async def read_head(stream: Stream) -> tuple[bytes, Stream]:
    """The answer head (through its empty line) and the stream to read what follows from.

    Two ways, so that no byte past the head is lost: a socket is peeked first
    and only the head taken from the kernel; any other stream (TLS) gets the
    rest put in front.
    """
    if stream.raw is not None and stream.raw.type == socket.SOCK_STREAM:
        return await _read_head_socket(stream.raw), stream
    head, rest = await _read_head_stream(stream)
    return head, (PrefixedStream(stream, rest) if rest else stream)


def _early_end(got: int) -> DialError:
    if got == 0:
        return DialError("connection closed with no answer to CONNECT")
    return DialError(f"connection closed inside the answer head (after {got} bytes)")


def _too_long() -> DialError:
    return DialError(f"answer head longer than {MAX_HEAD} bytes (not an HTTP proxy?)")


async def _read_head_socket(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    head = b""
    while True:
        peeked = await _peek(loop, sock, MAX_HEAD + 1 - len(head))
        if not peeked:
            raise _early_end(len(head))
        end = _head_end(head + peeked, len(head))
        # Take from the kernel only what belongs to the head: up to its end, else all that was peeked
        # (none of it can be past an end not yet seen).
        take = end - len(head) if end >= 0 else len(peeked)
        head += _recv_exactly(sock, take)
        if end >= 0:
            _check_head(head)
            return head
        if len(head) > MAX_HEAD:
            raise _too_long()


async def _peek(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    """Bytes waiting on a non-blocking socket, left there; waits until there are some (b"" at the end)."""
    while True:
        try:
            return sock.recv(n, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            pass
        readable = loop.create_future()
        loop.add_reader(sock.fileno(), readable.set_result, None)
        try:
            await readable
        finally:
            loop.remove_reader(sock.fileno())


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    """n bytes just peeked: they are in the socket's buffer, so a non-blocking recv takes them at once."""
    out = b""
    while len(out) < n:
        out += sock.recv(n - len(out))
    return out


async def _read_head_stream(stream: Stream) -> tuple[bytes, bytes]:
    buf = b""
    while True:
        chunk = await stream.read(4096)
        if not chunk:
            raise _early_end(len(buf))
        start, buf = len(buf), buf + chunk
        end = _head_end(buf, start)
        if end >= 0 and end <= MAX_HEAD:
            head = buf[:end]
            _check_head(head)
            return head, buf[end:]
        if len(buf) > MAX_HEAD:
            raise _too_long()


def _check_head(head: bytes) -> None:
    try:
        parse_head(head)
    except ValueError as e:
        raise DialError(str(e)) from None


class PrefixedStream(WrappedStream):
    """A stream with bytes already read from it put back in front."""

    def __init__(self, inner: Stream, prefix: bytes) -> None:
        super().__init__(inner)
        self.prefix = prefix

    async def read(self, n: int) -> bytes:
        if self.prefix:
            out, self.prefix = self.prefix[:n], self.prefix[n:]
            return out
        return await self.inner.read(n)


