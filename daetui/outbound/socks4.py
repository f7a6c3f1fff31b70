"""SOCKS4 and SOCKS4a nodes: TCP CONNECT only (the protocols have no UDP).

    socks4://[user@]host[:port][#name]     socks4a://[user@]host[:port][#name]

The request (https://www.openssh.com/txt/socks4.protocol, socks4a.protocol):

    VN=4  CD=1  DSTPORT(2)  DSTIP(4)  USERID  NUL            (socks4)
    VN=4  CD=1  DSTPORT(2)  0.0.0.x   USERID  NUL  HOST NUL  (socks4a: the server resolves HOST)

and the reply is 8 bytes: VN=0, CD (90 granted; 91 rejected or failed; 92, 93 identd), then a
port and an address nobody uses for CONNECT. After it the stream carries the destination's own
bytes, so the stream `via` gave is handed back as it is (a socket stays spliceable).

The user id is no password: servers use it for rules or identd checks, if at all. The protocols
carry IPv4 destinations only: an IPv6 destination is refused; a name is resolved here for
socks4 (as curl's socks4:// does, IPv4 addresses only) and sent to the server as it is for
socks4a. The server itself may be reached over IPv6.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote

from daetui.net.address import is_address
from daetui.net.stream import Datagrams, Dialer, DialError, Stream
from daetui.outbound.socks5 import (
    HANDSHAKE_TIMEOUT,
    check_host,
    check_port,
    host_port,
    read_exactly,
    split_link,
)

DEFAULT_PORT = 1080
VERSION = 4
CMD_CONNECT = 1
REPLY_VERSION = 0
GRANTED = 90
REPLIES = {
    91: "request rejected or failed",
    92: "request rejected: the server cannot reach the client's identd",
    93: "request rejected: identd reports another user id",
}
SOCKS4A_MARKER = "0.0.0.1"  # 0.0.0.x, x != 0: "the name follows"
MAX_FIELD = 255  # a user id or name longer than this is refused by servers that have fixed buffers

Scheme = Literal["socks4", "socks4a"]


@dataclass(frozen=True)
class Socks4Node:
    """A SOCKS4 or SOCKS4a server and the user id to send (empty: none)."""

    name: str
    host: str
    port: int
    user: str = ""
    remote_dns: bool = False  # socks4a: names go to the server

    def __post_init__(self) -> None:
        check_host(self.host)
        check_port(self.port)
        if "\0" in self.user or len(self.user.encode()) > MAX_FIELD:
            raise ValueError(f"socks4 user id must be at most {MAX_FIELD} bytes without NUL")

    @property
    def scheme(self) -> Scheme:
        return "socks4a" if self.remote_dns else "socks4"

    @property
    def protocol(self) -> Scheme:
        """As the console shows it: the link's scheme (state.NodeProtocol must list both)."""
        return self.scheme

    def link(self) -> str:
        """The share link, read back by `parse_link` into an equal node."""
        user = f"{quote(self.user, safe='')}@" if self.user else ""
        name = f"#{quote(self.name, safe='')}" if self.name else ""
        return f"{self.scheme}://{user}{host_port(self.host, self.port)}{name}"

    def dialer(self, via: Dialer, *, timeout: float = HANDSHAKE_TIMEOUT) -> Socks4Dialer:
        """A dialer through this server, whose own connection is made by `via`."""
        return Socks4Dialer(self, via, timeout)


def parse_link(link: str, name: str = "") -> Socks4Node:
    """`socks4://[user@]host[:port][#name]` or `socks4a://...`; `name`, when given, wins over the fragment."""
    scheme, sep, rest = link.strip().partition("://")
    if not sep or scheme.lower() not in ("socks4", "socks4a"):
        raise ValueError(f"expected socks4:// or socks4a://, got {link[:16]!r}")
    # The user id has no password: read `user@` as `user:@` so the shared splitter takes it.
    netloc = rest.partition("#")[0].partition("?")[0]
    userinfo, at, _ = netloc.rpartition("@")
    if at and ":" in userinfo:
        raise ValueError("socks4 has a user id and no password (socks4://user@host:port)")
    if at:
        rest = rest.replace(f"{userinfo}@", f"{userinfo}:@", 1)
    parts = split_link(f"{scheme}://{rest}", ("socks4", "socks4a"), DEFAULT_PORT)
    if parts.query:
        raise ValueError(f"socks4 links take no parameters; got {', '.join(parts.query)}")
    return Socks4Node(name or parts.name or f"{parts.host_text}:{parts.port}", parts.host, parts.port,
                      parts.username, parts.scheme == "socks4a")


def encode_request(host: str, port: int, user: str, remote_dns: bool) -> bytes:
    """The CONNECT request for an IPv4 address, or (socks4a) a name the server resolves."""
    check_port(port)
    userid = user.encode() + b"\0"
    if is_address(host):
        ip = ipaddress.ip_address(host)
        if ip.version != 4:
            raise DialError(f"destination {host}: SOCKS4 carries IPv4 destinations only")
        return struct.pack("!BBH", VERSION, CMD_CONNECT, port) + ip.packed + userid
    if not remote_dns:
        raise DialError(f"destination {host}: socks4 sends addresses only (resolve it first, or use socks4a)")
    name = host.rstrip(".").encode("idna") if not host.isascii() else host.rstrip(".").encode()
    if not 0 < len(name) <= MAX_FIELD:
        raise DialError(f"destination name of {len(name)} bytes (1 to {MAX_FIELD} allowed)")
    return (struct.pack("!BBH", VERSION, CMD_CONNECT, port) + socket.inet_aton(SOCKS4A_MARKER) + userid
            + name + b"\0")


def check_reply(reply: bytes) -> None:
    """DialError unless the 8-byte reply grants the request."""
    version, code = reply[0], reply[1]
    if version != REPLY_VERSION:
        if version == 5:
            raise DialError("answered as SOCKS5 (a SOCKS5-only server?)")
        raise DialError(f"answered version {version}, not 0 (not a SOCKS4 server?)")
    if code != GRANTED:
        raise DialError(REPLIES.get(code, f"unknown reply code {code}"))


@dataclass
class Socks4Dialer:
    """Streams through one SOCKS4/4a server (TCP only)."""

    node: Socks4Node
    via: Dialer
    timeout: float = HANDSHAKE_TIMEOUT
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.node.name

    @property
    def server(self) -> str:
        return f"{self.node.scheme} server {host_port(self.node.host, self.node.port)}"

    async def _address(self, host: str, port: int) -> str:
        """The destination as the request carries it: a name resolved here for socks4 (IPv4 only)."""
        if is_address(host) or self.node.remote_dns:
            return host
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, family=socket.AF_INET,
                                                                 type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise DialError(f"{self.server}: destination {host}: {e.strerror} (socks4 resolves names "
                            "here, IPv4 only; socks4a lets the server)") from None
        return str(infos[0][4][0])

    async def connect(self, host: str, port: int) -> Stream:
        """A stream to host:port: an IPv4 address, or a name (resolved here for socks4, there for socks4a)."""
        address = await self._address(host, port)
        try:
            request = encode_request(address, port, self.node.user, self.node.remote_dns)
        except DialError as e:
            raise DialError(f"{self.server}: {e}") from None
        stream = await self.via.connect(self.node.host, self.node.port)
        what = f"CONNECT {host_port(host, port)}"
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    await stream.write(request)
                except OSError as e:
                    raise DialError(f"connection lost while sending: {e.strerror or e}") from None
                check_reply(await read_exactly(stream, 8, what))
        except TimeoutError:
            stream.close()
            raise DialError(f"{self.server}: no answer to {what} within {self.timeout:g}s") from None
        except DialError as e:
            stream.close()
            raise DialError(f"{self.server}: {what}: {e}") from None
        except BaseException:
            stream.close()
            raise
        return stream

    async def datagrams(self) -> Datagrams:
        """SOCKS4 has no UDP: always a DialError."""
        raise DialError(f"{self.server}: SOCKS4 carries TCP only (no UDP)")
