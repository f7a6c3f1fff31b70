"""TUIC v5 nodes: commands over one QUIC connection per node (github.com/EAimTY/tuic, SPEC.md).

    tuic://UUID:PASSWORD@HOST:PORT?sni=NAME&alpn=h3&congestion_control=bbr&udp_relay_mode=native#NAME

This module holds the node, its link and the dialer; _tuic_wire.py has the
commands on the wire (addresses, fragments, reassembly, the TLS exporter),
_tuic_conn.py the QUIC connection, its streams and UDP associations.

One QUIC connection per dialer carries every stream and association; a
connection that ended (idle, the server closed it, a lost network) is
replaced on the next dial, the streams on the old one failing with its
reason. The UDP socket comes from `via.udp_socket()` (a direct dialer: the
node cannot be reached through another proxy node). The congestion control
of the link is accepted; aioquic has reno and cubic only, so bbr runs as cubic.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, unquote

from aioquic.quic.configuration import QuicConfiguration

from daetui.net.quic import KeptConnection, system_ca
from daetui.net.stream import Dialer, DialError
from daetui.outbound import _share
from daetui.outbound._tuic_conn import IDLE_TIMEOUT, TuicDatagrams, TuicStream, _Connection, _Quic
from daetui.outbound._tuic_wire import MAX_DATAGRAM, connect_header
from daetui.outbound.state import NodeProtocol

RELAY_MODES = ("native", "quic")
# The link's congestion control -> aioquic's algorithm (it has no BBR).
CONGESTION = {"bbr": "cubic", "cubic": "cubic", "new_reno": "reno", "reno": "reno"}
DEFAULT_ALPN = ("h3",)          # what mihomo and tuic-client offer when the link names none

HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class TuicNode:
    """A TUIC v5 server and how to reach it (QUIC, so TLS 1.3 always)."""

    protocol: ClassVar[NodeProtocol] = "tuic"

    name: str
    host: str
    port: int
    uuid: str
    password: str = field(repr=False)
    sni: str = ""
    alpn: tuple[str, ...] = ()
    congestion_control: str = ""    # as the link names it ("" = not named: cubic)
    udp_relay_mode: str = "native"
    allow_insecure: bool = False

    def link(self) -> str:
        """The share link of this node (parse_link(link()) == self)."""
        params = [("sni", self.sni), ("alpn", ",".join(self.alpn)),
                  ("congestion_control", self.congestion_control),
                  ("udp_relay_mode", self.udp_relay_mode if self.udp_relay_mode != "native" else ""),
                  ("allow_insecure", "1" if self.allow_insecure else "")]
        return (f"tuic://{self.uuid}:{quote(self.password, safe='')}@{_share.netloc(self.host, self.port)}"
                f"{_share.query_text(params)}{_share.fragment(self.name)}")

    def dialer(self, via: Dialer, *, allow_insecure: bool = False, ca_file: str | Path | None = None,
               handshake_timeout: float = HANDSHAKE_TIMEOUT, **_: Any) -> TuicDialer:
        """A Dialer through this node, its QUIC connection from `via`'s UDP socket.

        `allow_insecure` (daetui's global setting) or the link's accepts any certificate;
        `ca_file` trusts those CAs instead of the system's (as node_context does for TLS nodes).
        """
        return TuicDialer(self, via, allow_insecure=allow_insecure or self.allow_insecure, ca_file=ca_file,
                          handshake_timeout=handshake_timeout)


def parse_link(link: str, name: str = "") -> TuicNode:
    """The node a tuic:// link describes; ValueError says what is wrong with it."""
    parts = _share.split(link, "tuic")
    userinfo = parts.netloc.rpartition("@")[0]
    uid, colon, password = userinfo.partition(":")
    if not colon:
        raise ValueError("no password: TUIC v4's token-only links are not supported (v5: tuic://UUID:PASSWORD@...)")
    uid = _share.canonical_uuid(unquote(uid))
    password = unquote(password)
    params = _share.query(parts)
    version = params.get("version", "5").strip() or "5"
    if version != "5":
        raise ValueError(f"version={version}: only TUIC v5 is supported")
    mode = params.get("udp_relay_mode", "native").strip().lower() or "native"
    if mode not in RELAY_MODES:
        raise ValueError(f"udp_relay_mode={mode}: expected native or quic")
    cc = params.get("congestion_control", params.get("congestion_controller", "")).strip().lower()
    if cc and cc not in CONGESTION:
        raise ValueError(f"congestion_control={cc}: expected bbr, cubic or new_reno")
    if "disable_sni" in params and _share.flag(params, "disable_sni"):
        raise ValueError("disable_sni=1 is not supported (the server name is always sent)")
    insecure = next((k for k in ("allow_insecure", "allowInsecure", "insecure") if k in params), "")
    return TuicNode(
        name=name or unquote(parts.fragment),
        host=_share.host_of(parts),
        port=parts.port or 0,
        uuid=uid,
        password=password,
        sni=params.get("sni") or params.get("peer", ""),
        alpn=_share.alpn_list(params.get("alpn", "")),
        congestion_control=cc,
        udp_relay_mode=mode,
        allow_insecure=_share.flag(params, insecure) if insecure else False,
    )



class TuicDialer:
    """Dials destinations through a TUIC server, every stream and association on one QUIC connection."""

    def __init__(self, node: TuicNode, via: Dialer, *, allow_insecure: bool = False,
                 ca_file: str | Path | None = None, handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.node = node
        self.name = node.name
        self.via = via
        self.allow_insecure = allow_insecure
        self.ca_file = str(ca_file) if ca_file is not None else system_ca()
        self.handshake_timeout = handshake_timeout
        host = f"[{node.host}]" if ":" in node.host else node.host
        self.where = f"{node.name} ({host}:{node.port})" if node.name else f"{host}:{node.port}"
        self._kept: KeptConnection[_Connection] = KeptConnection(self._open)
        self.handshakes = 0

    async def connect(self, host: str, port: int) -> TuicStream:
        """A stream to host:port (an address, or a name the server resolves)."""
        header = connect_header(host, port)   # a bad destination fails before any connection
        return (await self._connection()).open_stream(header)

    async def datagrams(self) -> TuicDatagrams:
        """A UDP association: datagrams to any destination (the link's udp_relay_mode)."""
        return TuicDatagrams(await self._connection(), self.node.udp_relay_mode == "native")

    @property
    def connection(self) -> _Connection | None:
        """The connection kept to the server (None before the first dial), alive or not."""
        return self._kept.current

    async def _connection(self) -> _Connection:
        return await self._kept.get()

    def _configuration(self) -> QuicConfiguration:
        node = self.node
        cfg = QuicConfiguration(is_client=True, alpn_protocols=list(node.alpn or DEFAULT_ALPN),
                                idle_timeout=IDLE_TIMEOUT, server_name=node.sni or node.host,
                                max_datagram_frame_size=MAX_DATAGRAM)
        if hasattr(cfg, "congestion_control_algorithm"):  # aioquic 1.2 on; before it, reno only
            cfg.congestion_control_algorithm = CONGESTION.get(node.congestion_control, "cubic")
        if self.allow_insecure:
            cfg.verify_mode = ssl.CERT_NONE
        elif self.ca_file:
            # Read and checked here: aioquic would only open it inside the handshake, failing there unworded.
            try:
                cadata = Path(self.ca_file).read_bytes()
                # Not parsed with cryptography: the system's bundle holds certificates (serial 0) it
                # warns about, and will refuse; aioquic's verification reads them as OpenSSL does.
                if b"-----BEGIN CERTIFICATE-----" not in cadata:
                    raise ValueError("no PEM certificate in it")
            except (OSError, ValueError) as e:
                raise DialError(f"CA file {self.ca_file}: {getattr(e, 'strerror', None) or e}") from None
            cfg.load_verify_locations(cadata=cadata)
        return cfg

    async def _open(self) -> _Connection:
        node = self.node
        udp_socket = getattr(self.via, "udp_socket", None)
        if udp_socket is None:
            raise DialError(f"tuic {self.where}: reaching the server through {self.via.name} is not supported "
                            "(QUIC needs a UDP socket of its own)")
        try:
            ip = await self.via.udp_address(node.host, node.port)  # type: ignore[attr-defined]  (node() DNS rules)
        except DialError as e:
            raise DialError(f"tuic {self.where}: {e}") from None
        cfg = self._configuration()
        try:
            sock = udp_socket(ip, node.port)
        except OSError as e:
            raise DialError(f"tuic {self.where}: {e.strerror or e}") from None
        try:
            peer = sock.getpeername()  # the form datagrams arrive from: QUIC's path is matched against it
            _, conn = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _Connection(_Quic(configuration=cfg), node, self.where), sock=sock)
        except BaseException:
            sock.close()
            raise
        try:
            conn.connect(peer)
            async with asyncio.timeout(self.handshake_timeout):
                await conn.ready
        except TimeoutError:
            conn.abort()
            raise DialError(f"tuic {self.where}: QUIC handshake timeout (no answer in {self.handshake_timeout:g}s)") \
                from None
        except DialError:
            conn.abort()
            raise
        except BaseException:
            conn.abort()
            raise
        self.handshakes += 1
        return conn

    def close(self) -> None:
        """Close the connection (and a handshake under way)."""
        self._kept.close()
