"""SOCKS5 nodes: TCP CONNECT and UDP ASSOCIATE (RFC 1928), username/password auth (RFC 1929).

    socks5://[user:password@]host:port[#name]

After the handshake a CONNECT stream carries the destination's own bytes,
so the stream `via` gave is handed back as it is (a SocketStream stays one,
and the relay can splice it). A UDP association is a UDP socket to the
relay address from the server's reply, every datagram behind the RFC 1928
header, and the TCP control connection kept open for as long as the
association lives (the server ends the association when it closes).

The link helpers at the bottom (`split_link`, `format_link`, `read_exactly`)
are shared with the http(s) nodes of `http_proxy`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import re
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import quote, unquote

from daetui.net.address import is_address, resolve
from daetui.net.stream import Datagrams, Dialer, DialError, Stream
from daetui.outbound.direct import DirectDialer
from daetui.outbound.state import NodeProtocol

DEFAULT_PORT = 1080
HANDSHAKE_TIMEOUT = 10.0  # seconds from the server's TCP connection to its CONNECT/ASSOCIATE reply

VERSION = 5
AUTH_VERSION = 1  # RFC 1929's sub-negotiation version
METHOD_NONE, METHOD_USERPASS, METHOD_REFUSED = 0x00, 0x02, 0xFF
CMD_CONNECT, CMD_UDP_ASSOCIATE = 0x01, 0x03
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 0x01, 0x03, 0x04

REPLIES = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}

UDP_QUEUE = 1024  # datagrams from the relay waiting for recv(); beyond that they are dropped, as UDP would


# -- the node ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Socks5Node:
    """A SOCKS5 server: where it is, and the credentials it wants (none when `username` is empty)."""

    name: str
    host: str
    port: int
    username: str = ""
    password: str = ""
    protocol: ClassVar[NodeProtocol] = "socks5"

    def __post_init__(self) -> None:
        check_host(self.host)
        check_port(self.port)
        if bool(self.username) != bool(self.password):
            raise ValueError("socks5 username/password auth needs both a username and a password")
        for what, value in (("username", self.username), ("password", self.password)):
            if len(value.encode()) > 255:
                raise ValueError(f"socks5 {what} is longer than 255 bytes")

    def link(self) -> str:
        """The share link, read back by `parse_link` into an equal node."""
        return format_link("socks5", self.host, self.port, self.username, self.password, {}, self.name)

    def dialer(self, via: Dialer, *, timeout: float = HANDSHAKE_TIMEOUT) -> Socks5Dialer:
        """A dialer through this server, whose own connection is made by `via`."""
        return Socks5Dialer(self, via, timeout)


def parse_link(link: str, name: str = "") -> Socks5Node:
    """`socks5://[user:password@]host[:port][#name]`; `name`, when given, wins over the fragment.

    The credentials are percent-encoded, or (as some subscriptions write
    them) base64 of `user:password`.
    """
    parts = split_link(link, ("socks5",), DEFAULT_PORT)
    # Parameters (`?remarks=...` of some apps) mean nothing to a socks5 node: ignored, as dae's
    # ParseSocksURL and daetui's http:// links ignore them; but one asking for TLS is never half-accepted.
    if parts.query.get("tls", "").lower() in ("1", "true") or parts.query.get("security", "").lower() == "tls":
        raise ValueError("socks5 over TLS is not supported (plain socks5 only)")
    return Socks5Node(name or parts.name or f"{parts.host_text}:{parts.port}", parts.host, parts.port,
                      parts.username, parts.password)


# -- the dialer -------------------------------------------------------------------------

@dataclass
class Socks5Dialer:
    """Streams and datagrams through one SOCKS5 server."""

    node: Socks5Node
    via: Dialer
    timeout: float = HANDSHAKE_TIMEOUT
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.node.name

    @property
    def server(self) -> str:
        return f"socks5 server {host_port(self.node.host, self.node.port)}"

    async def connect(self, host: str, port: int) -> Stream:
        """A stream to host:port (an IP literal or a name the server resolves)."""
        request = encode_request(CMD_CONNECT, host, port)  # a bad destination fails before any connection
        stream = await self.via.connect(self.node.host, self.node.port)
        try:
            await self._negotiate(stream, request, f"CONNECT {host_port(host, port)}")
        except BaseException:
            stream.close()
            raise
        return stream

    async def datagrams(self) -> Socks5Datagrams:
        """A UDP association: datagrams to any destination through the server's UDP relay."""
        if not isinstance(self.via, DirectDialer):
            raise DialError(f"{self.server}: UDP through a chain is not supported (reached through {self.via.name})")
        control = await self.via.connect(self.node.host, self.node.port)
        try:
            # Zeros: the address we will send from is not known before the relay's is (RFC 1928 section 6).
            server_family = _peer_family(control)
            zero = "::" if server_family == socket.AF_INET6 else "0.0.0.0"
            relay_host, relay_port = await self._negotiate(control, encode_request(CMD_UDP_ASSOCIATE, zero, 0),
                                                           "UDP ASSOCIATE")
            relay_host = _relay_address(relay_host, control, self.node.host)
            try:
                relay_host = await resolve(relay_host, relay_port, socket.SOCK_DGRAM)
            except DialError as e:
                raise DialError(f"{self.server}: UDP relay {e}") from None
            try:
                sock = self.via.udp_socket(relay_host, relay_port)
            except OSError as e:
                raise DialError(f"{self.server}: UDP relay {host_port(relay_host, relay_port)}: "
                                f"{e.strerror or e}") from None
            assoc = Socks5Datagrams(control, (relay_host, relay_port), self.server)
            await assoc.start(sock)
            return assoc
        except BaseException:
            control.close()
            raise

    async def _negotiate(self, stream: Stream, request: bytes, what: str) -> tuple[str, int]:
        """Method selection, auth, then `request`; the reply's bound address. Every failure a DialError."""
        step = "method selection"
        try:
            async with asyncio.timeout(self.timeout):
                method = await self._select_method(stream)
                if method == METHOD_USERPASS:
                    step = "authentication"
                    await self._authenticate(stream)
                step = what
                await _write(stream, request)
                return await read_reply(stream, what)
        except TimeoutError:
            raise DialError(f"{self.server}: no answer to {step} within {self.timeout:g}s") from None
        except DialError as e:
            raise DialError(f"{self.server}: {e}") from None
        except ValueError as e:  # a reply that is not SOCKS5
            raise DialError(f"{self.server}: {e} during {step}") from None

    async def _select_method(self, stream: Stream) -> int:
        offered = [METHOD_NONE, METHOD_USERPASS] if self.node.username else [METHOD_NONE]
        await _write(stream, bytes([VERSION, len(offered), *offered]))
        version, method = await read_exactly(stream, 2, "method selection")
        if version != VERSION:
            raise ValueError(f"answered version {version}, not 5 (not a SOCKS5 server?)")
        if method == METHOD_REFUSED:
            if not self.node.username:
                raise DialError("server requires authentication (no username/password in the link)")
            raise DialError("server accepts neither no authentication nor username/password")
        if method not in offered:
            raise ValueError(f"chose method {method:#04x}, which was not offered")
        return method

    async def _authenticate(self, stream: Stream) -> None:
        user, password = self.node.username.encode(), self.node.password.encode()
        await _write(stream, bytes([AUTH_VERSION, len(user)]) + user + bytes([len(password)]) + password)
        _version, status = await read_exactly(stream, 2, "authentication")
        # Some servers answer the sub-negotiation with version 5: only the status matters.
        if status != 0:
            raise DialError(f"authentication failed for user {self.node.username!r} (status {status})")


async def read_reply(stream: Stream, what: str) -> tuple[str, int]:
    """A CONNECT/ASSOCIATE reply: the bound address, or DialError naming the server's refusal."""
    version, rep, _rsv, atyp = await read_exactly(stream, 4, f"the reply to {what}")
    if version != VERSION:
        raise ValueError(f"answered version {version}, not 5")
    if rep != 0:
        reason = REPLIES.get(rep, "unassigned reply code")
        raise DialError(f"server refused {what}: {reason} ({rep})")
    host = await _read_address(stream, atyp, what)
    (port,) = struct.unpack("!H", await read_exactly(stream, 2, f"the reply to {what}"))
    return host, port


async def _read_address(stream: Stream, atyp: int, what: str) -> str:
    if atyp == ATYP_IPV4:
        return socket.inet_ntop(socket.AF_INET, await read_exactly(stream, 4, f"the reply to {what}"))
    if atyp == ATYP_IPV6:
        return socket.inet_ntop(socket.AF_INET6, await read_exactly(stream, 16, f"the reply to {what}"))
    if atyp == ATYP_DOMAIN:
        (n,) = await read_exactly(stream, 1, f"the reply to {what}")
        return (await read_exactly(stream, n, f"the reply to {what}")).decode("ascii", "replace")
    raise ValueError(f"unknown address type {atyp} in the reply")


def _peer_family(stream: Stream) -> socket.AddressFamily:
    return stream.raw.family if stream.raw is not None else socket.AF_INET


def _relay_address(bound: str, control: Stream, server_host: str) -> str:
    """Where to send datagrams: the bound address, unless it is unspecified (then the server's own)."""
    try:
        unspecified = ipaddress.ip_address(bound).is_unspecified
    except ValueError:
        return bound
    if not unspecified:
        return bound
    if control.raw is not None:
        with contextlib.suppress(OSError):
            return str(control.raw.getpeername()[0])
    return server_host


# -- wire format ------------------------------------------------------------------------

def encode_address(host: str, port: int) -> bytes:
    """ATYP, address and port as in requests and UDP headers; DialError for a destination that cannot be sent."""
    if not 0 <= port <= 0xFFFF:
        raise DialError(f"destination port {port} out of range")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            name = host.encode() if host.isascii() else host.encode("idna")
        except UnicodeError:
            raise DialError(f"destination name {host!r} cannot be encoded") from None
        if not 0 < len(name) <= 255:
            raise DialError(f"destination name of {len(name)} bytes (1-255 allowed)") from None
        return bytes([ATYP_DOMAIN, len(name)]) + name + struct.pack("!H", port)
    atyp = ATYP_IPV4 if ip.version == 4 else ATYP_IPV6
    return bytes([atyp]) + ip.packed + struct.pack("!H", port)


def encode_request(cmd: int, host: str, port: int) -> bytes:
    """A CONNECT or UDP ASSOCIATE request."""
    return bytes([VERSION, cmd, 0]) + encode_address(host, port)


def encode_udp(data: bytes, host: str, port: int) -> bytes:
    """A datagram for the relay: RSV(2) FRAG(1)=0, the destination, the payload."""
    return b"\0\0\0" + encode_address(host, port) + data


def decode_udp(packet: bytes) -> tuple[bytes, str, int]:
    """A datagram from the relay: (payload, source host, source port). ValueError when malformed or fragmented."""
    if len(packet) < 4:
        raise ValueError(f"{len(packet)}-byte datagram is shorter than a SOCKS5 UDP header")
    if packet[2] != 0:
        raise ValueError(f"fragment {packet[2]} (fragmented datagrams are not supported)")
    atyp, at = packet[3], 4
    if atyp == ATYP_IPV4:
        end = at + 4
        host = socket.inet_ntop(socket.AF_INET, packet[at:end]) if len(packet) >= end else ""
    elif atyp == ATYP_IPV6:
        end = at + 16
        host = socket.inet_ntop(socket.AF_INET6, packet[at:end]) if len(packet) >= end else ""
    elif atyp == ATYP_DOMAIN:
        n = packet[at] if len(packet) > at else 0
        end = at + 1 + n
        host = packet[at + 1:end].decode("ascii", "replace")
    else:
        raise ValueError(f"unknown address type {atyp}")
    if len(packet) < end + 2:
        raise ValueError("datagram ends inside its header")
    (port,) = struct.unpack_from("!H", packet, end)
    return packet[end + 2:], host, port


# -- UDP association --------------------------------------------------------------------

class _RelayProtocol(asyncio.DatagramProtocol):
    """Datagrams from the relay into a bounded queue; malformed ones and overflow are counted and dropped."""

    def __init__(self, queue: asyncio.Queue[tuple[bytes, str, int] | None]) -> None:
        self.queue = queue
        self.dropped = 0
        self.error: OSError | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        try:
            item = decode_udp(data)
        except ValueError:
            self.dropped += 1
            return
        # The queue itself is unbounded so that the end-of-association marker always fits.
        if self.queue.qsize() >= UDP_QUEUE:
            self.dropped += 1
            return
        self.queue.put_nowait(item)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for an earlier datagram (the relay port closed): remembered, not fatal by itself.
        self.error = exc if isinstance(exc, OSError) else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.queue.put_nowait(None)


class Socks5Datagrams:
    """A live UDP association; ends when closed, or when the server closes the control connection."""

    def __init__(self, control: Stream, relay: tuple[str, int], server: str) -> None:
        self.control = control
        self.relay = relay
        self.server = server
        self.queue: asyncio.Queue[tuple[bytes, str, int] | None] = asyncio.Queue()
        self.protocol = _RelayProtocol(self.queue)
        self.transport: asyncio.DatagramTransport | None = None
        self.closed: str | None = None  # why the association ended
        self._watch: asyncio.Task[None] | None = None

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.transport, _ = await loop.create_datagram_endpoint(lambda: self.protocol, sock=sock)
        except BaseException:
            sock.close()
            raise
        self._watch = asyncio.ensure_future(self._watch_control())

    async def _watch_control(self) -> None:
        """The association lives as long as the control connection: its end ends recv()."""
        reason = "the server closed the association's control connection"
        try:
            while await self.control.read(4096):
                pass  # nothing is expected on it; whatever comes is ignored
        except OSError as e:
            reason = f"the association's control connection failed: {e.strerror or e}"
        finally:
            # Closed here, once no read is pending on it: closing a socket under a
            # pending read would leave the loop watching a dead (or reused) fd.
            self.control.close()
        self._end(reason)

    def _end(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        if self.transport is not None:
            self.transport.close()  # its connection_lost wakes recv()

    async def send(self, data: bytes, host: str, port: int) -> None:
        """One datagram to host:port (an IP literal or a name the server resolves)."""
        if self.closed is not None or self.transport is None:
            raise DialError(f"{self.server}: UDP association ended: {self.closed or 'not started'}")
        self.transport.sendto(encode_udp(data, host, port))

    async def recv(self) -> tuple[bytes, str, int]:
        """The next datagram and the destination it came from."""
        item = await self.queue.get()
        if item is None:
            self.queue.put_nowait(None)  # every later recv() ends the same way
            raise DialError(f"{self.server}: UDP association ended: {self.closed or 'closed'}")
        return item

    @property
    def dropped(self) -> int:
        """Datagrams from the relay dropped: malformed, fragmented, or while the queue was full."""
        return self.protocol.dropped

    def close(self) -> None:
        self._end("closed")
        if self._watch is not None:
            self._watch.cancel()  # and the watcher closes the control connection
        else:
            self.control.close()


_check: type[Datagrams] = Socks5Datagrams  # a type checker proves it offers the interface


# -- shared helpers: links, addresses, exact reads ------------------------------------------

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}[A-Za-z0-9_])?"
                       r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}[A-Za-z0-9_])?)*\.?$")


def check_host(host: str) -> None:
    """ValueError unless `host` is an IP literal or a hostname."""
    if not (is_address(host) or _HOSTNAME.match(host)):
        raise ValueError(f"host {host!r} is neither an IP address nor a hostname")


def check_port(port: int) -> None:
    if not 1 <= port <= 0xFFFF:
        raise ValueError(f"port {port} out of range 1-65535")


def host_port(host: str, port: int) -> str:
    """`host:port`, IPv6 in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class LinkParts:
    """A share link taken apart: `scheme://[user:password@]host[:port][?query][#name]`."""

    scheme: str
    host: str
    port: int
    username: str
    password: str
    query: Mapping[str, str]
    name: str

    @property
    def host_text(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host


def split_link(link: str, schemes: tuple[str, ...], default_port: int,
               default_ports: Mapping[str, int] | None = None) -> LinkParts:
    """Take a link apart, with a ValueError that says what is wrong.

    The host is lowercased (IPv6 compressed), credentials and name
    percent-decoded; a userinfo without ':' is read as base64 of
    `user:password`. `default_ports` gives a default per scheme.
    """
    scheme, sep, rest = link.strip().partition("://")
    if not sep or scheme.lower() not in schemes:
        raise ValueError(f"expected {' or '.join(s + '://' for s in schemes)}, got {link[:16]!r}")
    scheme = scheme.lower()
    rest, _, fragment = rest.partition("#")
    rest, _, query_text = rest.partition("?")
    netloc, _, path = rest.partition("/")
    if path:
        raise ValueError(f"unexpected path /{path}")
    userinfo, at, hostport = netloc.rpartition("@")
    if at and not userinfo:
        raise ValueError("empty credentials before '@'")
    username, password = _split_userinfo(userinfo) if userinfo else ("", "")
    port_default = (default_ports or {}).get(scheme, default_port)
    host, port = _split_hostport(hostport, port_default)
    return LinkParts(scheme, host, port, username, password, _split_query(query_text), unquote(fragment))


def _split_userinfo(userinfo: str) -> tuple[str, str]:
    if ":" not in userinfo:
        token = unquote(userinfo)  # '/' and '=' come percent-encoded in a URL's userinfo
        padded, decoded = token + "=" * (-len(token) % 4), ""
        for altchars in (b"+/", b"-_"):  # either alphabet is met in subscriptions
            try:
                decoded = base64.b64decode(padded, altchars=altchars, validate=True).decode()
                break
            except (binascii.Error, UnicodeDecodeError):
                continue
        if ":" not in decoded:
            raise ValueError("credentials must be user:password (percent-encoded, or base64 of user:password)")
        user, _, password = decoded.partition(":")
        return user, password
    user, _, password = userinfo.partition(":")
    return unquote(user), unquote(password)


def _split_hostport(hostport: str, default_port: int) -> tuple[str, int]:
    if not hostport:
        raise ValueError("no host")
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in {hostport!r}")
        host, after = hostport[1:end], hostport[end + 1:]
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"[{host}] is not an IPv6 address") from None
        if after and not after.startswith(":"):
            raise ValueError(f"unexpected {after!r} after [{host}]")
        port_text = after[1:] if after else None
    else:
        if hostport.count(":") > 1:
            raise ValueError(f"an IPv6 address goes in brackets: [{hostport}] (with :port after them)")
        host, colon, port_text_ = hostport.partition(":")
        port_text = port_text_ if colon else None
        host = host.lower()
        if is_address(host):
            host = str(ipaddress.ip_address(host))
        check_host(host)
    if port_text is None:
        return host, default_port
    if not port_text.isdigit() or not port_text.isascii():
        raise ValueError(f"port {port_text!r} is not a number")
    port = int(port_text)
    check_port(port)
    return host, port


def _split_query(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split("&"):
        if not item:
            continue
        key, _, value = item.partition("=")
        key = unquote(key)
        if key in out:
            raise ValueError(f"parameter {key!r} given twice")
        out[key] = unquote(value)
    return out


def format_link(scheme: str, host: str, port: int, username: str, password: str,
                query: Mapping[str, str], name: str) -> str:
    """The share link for these parts (the inverse of `split_link`)."""
    userinfo = f"{quote(username, safe='')}:{quote(password, safe='')}@" if username or password else ""
    text = f"{scheme}://{userinfo}{host_port(host, port)}"
    if query:
        text += "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query.items())
    if name:
        text += "#" + quote(name, safe="")
    return text


async def read_exactly(stream: Stream, n: int, what: str) -> bytes:
    """Exactly n bytes of a handshake (never more: what follows belongs to the destination)."""
    out = b""
    try:
        while len(out) < n:
            chunk = await stream.read(n - len(out))
            if not chunk:
                raise DialError(f"connection closed during {what} (after {len(out)} of {n} bytes)")
            out += chunk
    except OSError as e:
        raise DialError(f"connection lost during {what}: {e.strerror or e}") from None
    return out


async def _write(stream: Stream, data: bytes) -> None:
    try:
        await stream.write(data)
    except OSError as e:
        raise DialError(f"connection lost while sending: {e.strerror or e}") from None
