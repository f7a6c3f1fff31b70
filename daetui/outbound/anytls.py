"""AnyTLS nodes (anytls-go, sing-box, mihomo): streams multiplexed in a TLS session, first writes padded.

    anytls://PASSWORD@HOST[:PORT]/?sni=NAME&insecure=1#NAME     (PORT 443 when left out)

Per anytls-go's docs/uri_scheme.md; `alpn=h2,http/1.1` is read too, and
daetui's own `idleSessionTimeout=SECONDS&minIdleSession=N` (mihomo's
`idle-session-timeout` / `min-idle-session`) when not the defaults.

The protocol (docs/protocol.md): TLS to the server, the password's sha256
and padding, then a session of frames (_anytls_wire.py) in which each
connection is a stream: cmdSYN, the destination as a SOCKS address in the
first cmdPSH, then the bytes both ways, cmdFIN to end it. A v2 server answers
each SYN with cmdSYNACK once it reached the destination (data: why not), which
connect() waits for, so that an unreachable destination is a DialError at dial.
A v1 server never answers: connect() gives the stream after
`handshake_timeout`, and the session's later streams go without waiting.

Sessions are reused (_anytls_session.py): the newest one with room takes the
next stream, idle ones are closed after `idle_timeout`. A reused session whose
server does not answer a SYN is taken for dead and the dial tried once more on
a new one. A wrong password shows as the server closing the connection
without a word.

UDP is sing's UDP-over-TCP v2 in a stream to `sp.v2.udp-over-tcp.arpa`, one
stream per association, each datagram naming its destination.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote, unquote, urlsplit

from daetui.net.buffered import Buffered
from daetui.net.stream import Dialer, DialError, Stream
from daetui.outbound import _anytls_wire as wire
from daetui.outbound import _share
from daetui.outbound._anytls_session import AnyStream, Session, SessionPool, destination
from daetui.outbound.session import node_context, open_session
from daetui.outbound.state import NodeProtocol

DEFAULT_PORT = 443
HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 30.0      # anytls-go's default (and its least: it takes 30 s for anything up to 5 s)
MAX_IDLE = 8


def _client_name() -> str:
    """`daetui/VERSION` for cmdSettings: the spec asks third-party clients for their real name."""
    try:
        return f"daetui/{metadata.version('daetui')}"
    except metadata.PackageNotFoundError:
        return "daetui/0"


CLIENT = _client_name()


@dataclass(frozen=True)
class AnyTlsNode:
    """An AnyTLS server and how to reach it (TLS always), and how long its idle sessions are kept."""

    protocol: ClassVar[NodeProtocol] = "anytls"

    name: str
    host: str
    port: int
    password: str = field(repr=False)
    sni: str = ""
    allow_insecure: bool = False
    alpn: tuple[str, ...] = ()
    idle_timeout: float = IDLE_TIMEOUT
    min_idle: int = 0

    def link(self) -> str:
        """The share link of this node (parse_link(link()) == self)."""
        params = [("sni", self.sni), ("insecure", "1" if self.allow_insecure else ""), ("alpn", ",".join(self.alpn)),
                  ("idleSessionTimeout", f"{self.idle_timeout:g}" if self.idle_timeout != IDLE_TIMEOUT else ""),
                  ("minIdleSession", str(self.min_idle) if self.min_idle else "")]
        return (f"anytls://{quote(self.password, safe='')}@{_share.netloc(self.host, self.port)}/"
                f"{_share.query_text(params)}{_share.fragment(self.name)}")

    def dialer(self, via: Dialer, *, allow_insecure: bool = False, ca_file: str | Path | None = None,
               ssl_context: ssl.SSLContext | None = None, handshake_timeout: float = HANDSHAKE_TIMEOUT,
               max_streams: int = 1, max_idle: int = MAX_IDLE) -> AnyTlsDialer:
        """A Dialer through this node, its sessions' connections made through `via` (TLS settings as
        session.node_context takes them). `max_streams`: streams at once on one session (see
        _anytls_session.py); `max_idle`: idle sessions kept at most."""
        ctx = node_context(self, allow_insecure, ca_file, ssl_context)
        return AnyTlsDialer(self, via, ctx, handshake_timeout, max_streams, max_idle)


def parse_link(link: str, name: str = "") -> AnyTlsNode:
    """The node an anytls:// link describes; ValueError says what is wrong with it."""
    if not link.lower().startswith("anytls://"):
        raise ValueError("not an anytls:// link")
    try:
        parts = urlsplit(link.strip())
        port = parts.port
    except ValueError as e:
        raise ValueError(f"bad host or port: {e}") from None
    if not parts.hostname:
        raise ValueError("no server host")
    port = DEFAULT_PORT if port is None else port
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    password = unquote(parts.netloc.rpartition("@")[0])
    if not password:
        raise ValueError("no password (anytls://PASSWORD@host:port)")
    params = _share.query(parts)
    insecure = _share.flag(params, "insecure") if "insecure" in params else _share.flag(params, "allowInsecure")
    try:
        idle_timeout = float(params.get("idleSessionTimeout") or IDLE_TIMEOUT)
        min_idle = int(params.get("minIdleSession") or 0)
    except ValueError:
        raise ValueError("idleSessionTimeout (seconds) and minIdleSession (a count) take numbers") from None
    if not 0 < idle_timeout <= 86400 or not 0 <= min_idle <= 64:
        raise ValueError("idleSessionTimeout: 0 to 86400 seconds, minIdleSession: 0 to 64")
    return AnyTlsNode(
        name=name or unquote(parts.fragment),
        host=_share.host_of(parts),
        port=port,
        password=password,
        sni=params.get("sni") or params.get("peer", ""),
        allow_insecure=insecure,
        alpn=_share.alpn_list(params.get("alpn", "")),
        idle_timeout=idle_timeout,
        min_idle=min_idle,
    )


class AnyTlsDialer:
    """Dials destinations through an AnyTLS server, on sessions it keeps (one pool per dialer)."""

    def __init__(self, node: AnyTlsNode, via: Dialer, ctx: ssl.SSLContext,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT, max_streams: int = 1, max_idle: int = MAX_IDLE) -> None:
        self.node = node
        self.name = node.name
        self.via = via
        self.ctx = ctx
        self.handshake_timeout = handshake_timeout
        self.pool = SessionPool(self._connect, client=CLIENT, max_streams=max_streams,
                                idle_timeout=node.idle_timeout, min_idle=node.min_idle, max_idle=max_idle)

    async def _connect(self, scheme: wire.PaddingScheme) -> Stream:
        """A new session's connection: TLS, then the password and padding0 in one write."""
        node = self.node
        padding0 = next((n for n in scheme.sizes(0) if n > 0), 0)
        return await open_session(self.via, node.host, node.port, self.ctx, node.sni, self.handshake_timeout,
                                  False, wire.auth_request(node.password, padding0), "anytls")

    async def _open(self, first: bytes, what: str) -> AnyStream:
        """A stream whose first bytes are `first`, acknowledged by a v2 server (see the module's docstring)."""
        for attempt in (1, 2):
            session = await self.pool.session()
            reused = session.next_sid > 1
            stream = await session.open_stream(first, what)
            try:
                await self._acknowledged(session, stream)
            except TimeoutError:
                if session.peer_version < 2 and session.error is None:
                    session.peer_version = 1  # a v1 server never acknowledges: later streams go at once
                    return stream
                stream.close()
                error = DialError(f"anytls: no answer from the server in {self.handshake_timeout:g} s "
                                  f"(opening {what})")
                session.fail(error)
                if reused and attempt == 1:
                    continue  # a reused session's connection may have died silently: once more, on a new one
                raise error from None
            return stream
        raise AssertionError("unreachable")

    async def _acknowledged(self, session: Session, stream: AnyStream) -> None:
        """Wait for the SYNACK (v2), the stream's first bytes or its end; DialError for a refusal."""
        if session.peer_version == 1:
            return
        async with asyncio.timeout(self.handshake_timeout):
            await stream.opened.wait()
        error = stream.failure()
        if error is not None:
            stream.close()
            raise error

    async def connect(self, host: str, port: int) -> Stream:
        """A stream to host:port through the server."""
        return await self._open(destination(host, port), f"{host}:{port}")

    async def datagrams(self) -> AnyTlsDatagrams:
        """A UDP association (UoT v2): datagrams to any destination, in one stream."""
        stream = await self._open(destination(wire.UOT_MAGIC, 0) + wire.uot_request(), "UDP over TCP")
        return AnyTlsDatagrams(stream)

    def close(self) -> None:
        """Close every session of this dialer."""
        self.pool.close()


class AnyTlsDatagrams:
    """Datagrams to and from any destination over one UoT v2 stream."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.reader = Buffered(stream)

    async def send(self, data: bytes, host: str, port: int) -> None:
        # One write: the session writes it whole (frames of one write are never interleaved with others).
        await self.stream.write(wire.uot_packet(data, host, port))

    async def recv(self) -> tuple[bytes, str, int]:
        """The next datagram and its sender; DialError when the stream ends or is not packets."""
        buf = self.reader
        while (parsed := wire.parse_uot_packet(buf.buf)) is None:
            if len(buf.buf) > 2 + 255 + 4 + wire.MAX_DATAGRAM:
                raise DialError("anytls: malformed UDP packet")
            if not await buf.fill():
                raise DialError("anytls: the server closed the UDP association")
        data, host, port, used = parsed
        del buf.buf[:used]
        return data, host, port

    def close(self) -> None:
        self.stream.close()
