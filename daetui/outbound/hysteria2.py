"""Hysteria2 nodes: TCP and UDP through a QUIC connection to the server.

    hysteria2://PASSWORD@HOST:PORT/?sni=NAME&insecure=1&obfs=salamander&obfs-password=KEY&pinSHA256=HEX#NAME
    hy2://USER:PASS@HOST/                          (the same; the port defaults to 443)

(the link form is v2.hysteria.network/docs/developers/URI-Scheme/). A
password of the `user:pass` form is sent as it is: that is what a server
with userpass authentication reads. Port hopping (`HOST:443,5000-6000`, or
`mport=5000-6000` as v2rayN writes it) sends to a random port of those,
another every 30 seconds (_hy2_hop.py).

The protocol (v2.hysteria.network/docs/developers/Protocol/): QUIC with TLS
1.3 and ALPN h3 to the server, then an HTTP/3 `POST /auth` with the
password in `Hysteria-Auth`; status 233 means authenticated (anything else
is the server posing as a web server: a wrong password). Each TCP
connection is then a new bidirectional QUIC stream (a request naming
`host:port`, the server's status, then the destination's bytes), UDP goes
in QUIC datagrams (_hy2_wire.py has the messages, _hy2_conn.py the
connection).

One QUIC connection per dialer, opened by the first dial and shared by the
streams and UDP sessions after it; one that ended (idle, the server gone)
is opened again by the next dial. The server is reached over a UDP socket
of the router's own (`via` must be the direct dialer: QUIC cannot run
through another node here).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import re
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qsl, quote, unquote

from aioquic.quic.configuration import QuicConfiguration
from cryptography.hazmat.primitives.serialization import Encoding

from daetui.net.quic import KeptConnection, system_ca
from daetui.net.stream import Dialer, DialError
from daetui.outbound import _share
from daetui.outbound._hy2_conn import STREAM_WINDOW, Hy2Connection, Hy2Datagrams, Hy2Stream, _Quic
from daetui.outbound._hy2_hop import HOP_INTERVAL, Hopper, parse_ports
from daetui.outbound._hy2_wire import Salamander
from daetui.outbound.state import NodeProtocol

SCHEMES = ("hysteria2", "hy2")
ALPN = ["h3"]
DEFAULT_PORT = 443
HANDSHAKE_TIMEOUT = 10.0     # the QUIC handshake and the authentication together
IDLE_TIMEOUT = 30.0          # QUIC's idle timeout we offer (the server's, when smaller, wins)
MAX_DATAGRAM_FRAME = 65535   # the DATAGRAM frames we take (offering any makes QUIC datagrams possible)


@dataclass(frozen=True)
class Hysteria2Node:
    """A Hysteria2 server and how to reach it."""

    protocol: ClassVar[NodeProtocol] = "hysteria2"

    name: str
    host: str
    port: int
    password: str = field(repr=False)
    sni: str = ""
    allow_insecure: bool = False
    pin_sha256: str = ""            # hex SHA-256 of the server's certificate (DER), checked besides the chain
    obfs: str = ""                  # "" or "salamander"
    obfs_password: str = field(default="", repr=False)
    hop_ports: str = ""             # port hopping: the ports to hop between ("443,5000-6000"); "" for `port` only

    def link(self) -> str:
        """The share link of this node (parse_link(link()) == self)."""
        params = [("obfs", self.obfs), ("obfs-password", self.obfs_password), ("sni", self.sni),
                  ("insecure", "1" if self.allow_insecure else ""), ("pinSHA256", self.pin_sha256)]
        netloc = _share.netloc(self.host, self.port)
        if self.hop_ports and parse_ports(self.hop_ports)[0][0] == self.port:
            netloc = f"{netloc.rpartition(':')[0]}:{self.hop_ports}"  # the spec's multi-port form
        elif self.hop_ports:
            params.append(("mport", self.hop_ports))
        return (f"hysteria2://{quote(self.password, safe=':')}@{netloc}/"
                f"{_share.query_text(params)}{_share.fragment(self.name)}")

    def dialer(self, via: Dialer, *, allow_insecure: bool = False, ca_file: str | Path | None = None,
               handshake_timeout: float = HANDSHAKE_TIMEOUT, hop_interval: float = HOP_INTERVAL
               ) -> Hysteria2Dialer:
        """A Dialer through this node, its UDP socket made by `via` (the direct dialer).

        `allow_insecure` (daetui's global setting, or the link's `insecure`) accepts any
        certificate; `ca_file` trusts those CAs instead of the system's.
        """
        return Hysteria2Dialer(self, via, allow_insecure=allow_insecure or self.allow_insecure, ca_file=ca_file,
                               handshake_timeout=handshake_timeout, hop_interval=hop_interval)


def _split_netloc(netloc: str) -> tuple[str, str, str]:
    """userinfo, host, port text of `user@host:port` (port "" when absent)."""
    userinfo, _, hostport = netloc.rpartition("@")
    if hostport.startswith("["):
        host, sep, rest = hostport[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad host {hostport!r}")
        return userinfo, host, rest[1:]
    host, _, port = hostport.partition(":")
    return userinfo, host, port


def _pin(text: str) -> str:
    pin = text.replace(":", "").replace("-", "").strip().lower()
    if len(pin) != 64 or any(c not in "0123456789abcdef" for c in pin):
        raise ValueError(f"pinSHA256={text!r}: expected the 64 hex digits of a SHA-256")
    return pin


def parse_link(link: str, name: str = "") -> Hysteria2Node:
    """The node a hysteria2:// (or hy2://) link describes; ValueError says what is wrong with it."""
    scheme, sep, rest = link.strip().partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise ValueError("not a hysteria2:// link")
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    netloc = rest.partition("/")[0]
    userinfo, host, port_text = _split_netloc(netloc)
    if not host:
        raise ValueError("no server host")
    params = dict(parse_qsl(query, keep_blank_values=True))
    hop_ports = ""
    if port_text and not port_text.isdigit():
        if not re.fullmatch(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*", port_text):
            raise ValueError(f"bad port {port_text!r}")
        ranges = parse_ports(port_text)
        hop_ports = port_text
        port_text = str(ranges[0][0])
    if params.get("mport"):
        if hop_ports:
            raise ValueError(f"ports {hop_ports} and mport={params['mport']}: one of them")
        parse_ports(params["mport"])
        hop_ports = params["mport"].replace(" ", "")
    port = int(port_text) if port_text else DEFAULT_PORT
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    # user:pass is one authentication string ("user:pass"), each half percent-decoded.
    password = ":".join(unquote(part) for part in userinfo.split(":", 1)) if userinfo else ""
    if not password:
        raise ValueError("no password (hysteria2://PASSWORD@host:port)")
    obfs = params.get("obfs", "").strip().lower()
    obfs_password = params.get("obfs-password", "")
    if obfs not in ("", "salamander"):
        raise ValueError(f"obfs={obfs} is not supported (only salamander)")
    if obfs:
        Salamander(obfs_password)  # its own check of the password
    elif obfs_password:
        obfs_password = ""  # without obfs it means nothing (and would not survive link())
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        pass
    return Hysteria2Node(
        name=name or unquote(fragment),
        host=host,
        port=port,
        password=password,
        sni=params.get("sni", ""),
        allow_insecure=_share.flag(params, "insecure"),
        pin_sha256=_pin(params["pinSHA256"]) if params.get("pinSHA256") else "",
        obfs=obfs,
        obfs_password=obfs_password,
        hop_ports=hop_ports,
    )


class Hysteria2Dialer:
    """Dials destinations through a Hysteria2 server, over one shared QUIC connection."""

    def __init__(self, node: Hysteria2Node, via: Dialer, *, allow_insecure: bool = False,
                 ca_file: str | Path | None = None, handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 hop_interval: float = HOP_INTERVAL) -> None:
        self.node = node
        self.name = node.name
        self.via = via
        self.allow_insecure = allow_insecure
        self.ca_file = str(ca_file) if ca_file else None
        self.handshake_timeout = handshake_timeout
        self.hop_interval = hop_interval
        netloc = _share.netloc(node.host, node.port)
        self.where = f"hysteria2 {netloc.rpartition(':')[0]}:{node.hop_ports}" if node.hop_ports \
            else f"hysteria2 {netloc}"
        self._kept: KeptConnection[Hy2Connection] = KeptConnection(self._open)
        self.hopper: Hopper | None = None      # the port hopping of the last connection opened, if it hops
        self.handshakes = 0

    async def connect(self, host: str, port: int) -> Hy2Stream:
        """A stream to host:port through the server, on the dialer's QUIC connection.

        Its first read raises DialError when the server could not reach the destination.
        """
        conn = await self._connection()
        return conn.open_stream(host, port)

    async def datagrams(self) -> Hy2Datagrams:
        """A UDP session through the server, on the dialer's QUIC connection."""
        return (await self._connection()).open_session()

    @property
    def connection(self) -> Hy2Connection | None:
        """The connection kept to the server (None before the first dial), alive or not."""
        return self._kept.current

    async def _connection(self) -> Hy2Connection:
        """The live connection: the kept one, or a new one."""
        return await self._kept.get()

    def _config(self) -> QuicConfiguration:
        node = self.node
        cfg = QuicConfiguration(is_client=True, alpn_protocols=ALPN, server_name=node.sni or node.host,
                                idle_timeout=IDLE_TIMEOUT, max_datagram_frame_size=MAX_DATAGRAM_FRAME,
                                max_stream_data=STREAM_WINDOW)
        if self.allow_insecure:
            cfg.verify_mode = ssl.CERT_NONE
        else:
            ca = self.ca_file or system_ca()
            if ca:
                cfg.load_verify_locations(cafile=ca)
        return cfg

    async def _open(self) -> Hy2Connection:
        node = self.node
        udp_socket = getattr(self.via, "udp_socket", None)
        if udp_socket is None:
            raise DialError(f"{self.where}: reached through {self.via.name}: QUIC needs a UDP socket of the "
                            "router's own (a hysteria2 node cannot follow another node in a chain)")
        try:
            # The manager's NamedDirect answers by node() DNS rules; a DirectDialer by the system's resolver.
            ip = await self.via.udp_address(node.host, node.port)  # type: ignore[attr-defined]
        except DialError as e:
            raise DialError(f"{self.where}: {e}") from None
        obfs = Salamander(node.obfs_password) if node.obfs == "salamander" else None
        quic = _Quic(configuration=self._config())
        try:
            if node.hop_ports:
                conn = Hy2Connection(quic, self.where, node.password, obfs)
                hopper = self.hopper = Hopper(lambda port: udp_socket(ip, port), parse_ports(node.hop_ports),
                                              self.hop_interval)
                peer = await hopper.start(conn.datagram_received)
                conn.connection_made(hopper)
            else:
                conn, peer = await self._endpoint(udp_socket(ip, node.port), obfs, quic)
        except OSError as e:
            raise DialError(f"{self.where}: {e.strerror or e}") from None
        step = "QUIC handshake"
        try:
            async with asyncio.timeout(self.handshake_timeout):
                conn.connect(peer)
                try:
                    await conn.handshake
                except DialError as e:
                    raise DialError(f"{self.where}: QUIC handshake: {str(e).removeprefix(self.where + ': ')}") \
                        from None
                self._check_pin(quic)
                step = "authentication"
                conn.authenticate()
                await conn.authed
        except TimeoutError:
            conn.abort()
            raise DialError(f"{self.where}: {step}: no answer in {self.handshake_timeout:g}s") from None
        except BaseException:
            conn.abort()
            raise
        self.handshakes += 1
        return conn

    async def _endpoint(self, sock: socket.socket, obfs: Salamander | None, quic: _Quic
                        ) -> tuple[Hy2Connection, object]:
        """The connection on its one socket, and the peer address datagrams come from."""
        try:
            peer = sock.getpeername()  # the form datagrams arrive from: QUIC's path is matched against it
            _, conn = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: Hy2Connection(quic, self.where, self.node.password, obfs), sock=sock)
        except BaseException:
            sock.close()
            raise
        return conn, peer

    def _check_pin(self, quic: _Quic) -> None:
        pin = self.node.pin_sha256
        if not pin:
            return
        cert = quic.tls._peer_certificate  # aioquic keeps the leaf certificate here, with no public accessor
        got = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest() if cert is not None else "none"
        if got != pin:
            raise DialError(f"{self.where}: the server's certificate is not the pinned one (pinSHA256 {pin[:16]}..., "
                            f"got {got[:16]}...)")

    def close(self) -> None:
        """Close the connection (and a handshake under way)."""
        self._kept.close()

