"""A node's stream transport (tcp, ws, h2, grpc) and the one function that opens a proxy server's stream with it.

Shared by trojan.py, vless.py and vmess.py. What runs over the transport
(the protocol's request, then its framing) does not change with it:

- tcp: the server's connection itself, in TLS when the node has it (session.open_session, unchanged);
- ws: TLS when the node has it (ALPN http/1.1 unless the link names others), then a WebSocket
  upgrade to `path` with `host` as the Host header (net/websocket.py); the request rides
  in the upgrade's early data when `early_data` > 0 (Xray's `?ed=N`), else in the first message;
- h2: TLS always (ALPN h2 unless the link names others), then one HTTP/2 `PUT path` to a host
  picked from `host` (comma-separated; net/http2.py), the request as the start of its body;
- grpc ("gun"): TLS (ALPN h2) or cleartext HTTP/2, then one gRPC call `POST /<serviceName>/Tun`
  (`path` holds the service name, `host` the `:authority`, by default the SNI or the server's
  address; net/grpc.py), the request as its first message. Tested against mihomo; its "multi"
  mode (which mihomo does not serve) is refused.

Transports with no server here to test against (quic, kcp, xhttp/splithttp, httpupgrade,
tcp's HTTP header obfuscation, REALITY) are refused when a link is parsed; see `parse_type`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from daetui.net.grpc import open_grpc
from daetui.net.http2 import open_http2
from daetui.net.stream import Dialer, DialError, Stream
from daetui.net.tls import client_context, server_name, start_tls
from daetui.net.websocket import EARLY_DATA_HEADER, open_websocket, split_early_data
from daetui.outbound import _share
from daetui.outbound.session import node_context, open_session

TransportKind = Literal["tcp", "ws", "h2", "grpc"]
KINDS: tuple[TransportKind, ...] = ("tcp", "ws", "h2", "grpc")
SUPPORTED = "tcp, ws, h2 (also called http), grpc"
DEFAULT_ALPN: dict[str, tuple[str, ...]] = {"tcp": (), "ws": ("http/1.1",), "h2": ("h2",), "grpc": ("h2",)}
GRPC_MODES = ("", "gun")  # "multi" (TunMulti) has no server here: refused in parse_type
# What links name that no server here can test: refused with the reason rather than half-accepted.
UNSUPPORTED = {
    "quic": "quic", "kcp": "mkcp", "mkcp": "mkcp", "xhttp": "xhttp",
    "splithttp": "xhttp (splithttp)", "httpupgrade": "httpupgrade", "domainsocket": "domainsocket",
}


@dataclass(frozen=True)
class Transport:
    """How a node's stream travels: plain tcp, a WebSocket, an HTTP/2 request or a gRPC call.

    `path` is the ws/h2 path as sent (no `?ed=`), or grpc's service name; `host`
    the ws Host header, the h2 hosts (comma-separated) or grpc's authority;
    `early_data` the most ws early data bytes (0: none) and `early_data_header`
    its header ("": Sec-WebSocket-Protocol).
    """

    kind: TransportKind = "tcp"
    path: str = ""
    host: str = ""
    early_data: int = 0
    early_data_header: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"transport {self.kind!r} is not supported ({SUPPORTED})")
        if self.kind != "ws" and (self.early_data or self.early_data_header):
            raise ValueError("early data (ed=) is a ws setting")
        if self.kind == "tcp" and (self.path or self.host):
            raise ValueError("path and host are ws/h2/grpc settings")

    def link_params(self) -> list[tuple[str, str]]:
        """The transport as a vless/trojan share link's parameters (grpc: `serviceName`, `authority`)."""
        if self.kind == "grpc":
            return [("type", "grpc"), ("serviceName", self.path), ("authority", self.host)]
        return [("type", self.kind), ("host", self.host), ("path", self.link_path)]

    @property
    def hosts(self) -> tuple[str, ...]:
        """The h2 hosts, or the ws Host header alone."""
        return tuple(h.strip() for h in self.host.split(",") if h.strip())

    @property
    def link_path(self) -> str:
        """The path as a share link writes it: with `?ed=N` (and `eh=`) for early data, as Xray's links do."""
        if not self.early_data:
            return self.path
        extra = f"ed={self.early_data}" + (f"&eh={self.early_data_header}" if self.early_data_header else "")
        return f"{self.path or '/'}{'&' if '?' in self.path else '?'}{extra}"


TCP = Transport()  # plain tcp: what a node has unless its link names another


def parse_type(kind: str, *, path: str = "", host: str = "", ed: str = "", header_type: str = "",
               tls: bool, key: str = "type", header_key: str = "headerType", service_name: str = "",
               authority: str = "", mode: str = "", mode_key: str = "mode") -> Transport:
    """The Transport a link names (`type=`/`net=`, `path`, `host`, `ed`, `headerType`); ValueError with the reason.

    `key` and `header_key` are the link's names for the transport and tcp's
    header type (vmess's JSON: `net` and `type`), so that a refusal quotes the link.
    grpc's service name is `service_name` (vless/trojan's `serviceName`) or else
    `path` (vmess's JSON), its authority `authority` or else `host`, its `mode`
    (`mode_key`) gun or none.
    """
    kind = (kind or "tcp").strip().lower()
    if kind in ("grpc", "gun"):
        mode = (mode or "").strip().lower()
        if mode not in GRPC_MODES and mode != "none":
            what = "multi (TunMulti), which no server here serves" if mode == "multi" else repr(mode)
            raise ValueError(f"{mode_key}={mode} is not supported: grpc mode {what} (only gun)")
        if ed:
            raise ValueError("early data (ed=) is a ws setting, not grpc's")
        return Transport("grpc", service_name or path, authority or host)
    if kind in UNSUPPORTED:
        raise ValueError(f"{key}={kind} is not supported: no {UNSUPPORTED[kind]} transport "
                         f"(supported: {SUPPORTED})")
    if kind == "http":
        kind = "h2"  # v2ray's name for its HTTP/2 transport
    if kind not in KINDS:
        raise ValueError(f"{key}={kind} is not supported (supported transports: {SUPPORTED})")
    header_type = (header_type or "none").strip().lower()
    if header_type != "none":
        what = "HTTP header obfuscation of tcp" if header_type == "http" else f"{header_type} header of tcp"
        raise ValueError(f"{header_key}={header_type} ({what}) is not supported (only none)")
    if kind == "tcp":
        return TCP
    if kind == "h2" and not tls:
        raise ValueError("transport h2 needs tls (v2ray's h2 runs over TLS only); set security=tls")
    path_only, path_ed, eh = split_early_data(path)
    if ed:
        try:
            path_ed = int(ed)
        except ValueError:
            raise ValueError(f"ed={ed!r} is not a number") from None
        if path_ed < 0:
            raise ValueError(f"ed={path_ed} is negative")
    if kind == "h2":
        if path_ed or eh:
            raise ValueError("early data (ed=) is a ws setting, not h2's")
        return Transport("h2", path or "/", host)
    if eh and not all(c.isalnum() or c in "-_" for c in eh):
        raise ValueError(f"eh={eh!r} is not a header name")
    if eh == EARLY_DATA_HEADER:
        eh = ""
    return Transport("ws", path_only or "/", host, path_ed, eh if path_ed else "")


def tls_context(node: object, transport: Transport, allow_insecure: bool, ca_file: str | Path | None,
                ssl_context: ssl.SSLContext | None) -> ssl.SSLContext:
    """A TLS node's client context, as session.node_context makes it, with the transport's ALPN by default."""
    if ssl_context is not None or transport.kind == "tcp" or getattr(node, "alpn", ()):
        return node_context(node, allow_insecure, ca_file, ssl_context)
    return client_context(allow_insecure=allow_insecure or bool(getattr(node, "allow_insecure", False)),
                          ca_file=ca_file, alpn=DEFAULT_ALPN[transport.kind])


def _alpn(stream: Stream) -> str | None:
    """The ALPN protocol a TlsStream's server chose (None: none, or no TLS)."""
    tls = getattr(stream, "_tls", None)  # TlsStream's SSLObject: tls.py has no accessor of its own
    return tls.selected_alpn_protocol() if tls is not None else None


async def open_stream(via: Dialer, host: str, port: int, transport: Transport, ctx: ssl.SSLContext | None,
                      sni: str, timeout: float, half_close: bool, request: bytes, protocol: str) -> Stream:
    """A proxy server's stream for one request, `request` sent first: through `via`, in TLS when `ctx`
    is given, over the transport; closed again if any of it fails.

    `half_close` is TLS's (session.open_session) and matters for tcp only:
    ws has no half-close and h2 and grpc carry their own (the end of the request body).
    """
    if transport.kind == "tcp":
        return await open_session(via, host, port, ctx, sni, timeout, half_close, request, protocol)
    if transport.kind == "h2" and ctx is None:
        raise DialError(f"{protocol}: the h2 transport needs TLS")
    stream = await via.connect(host, port)
    if ctx is not None:
        stream = await start_tls(stream, ctx, server_name(host, sni), timeout, False)
    try:
        chosen = _alpn(stream)
        if transport.kind == "ws" and chosen == "h2":
            # A link's alpn=h2,http/1.1 on a ws node: the server (a CDN, often) took HTTP/2,
            # where no WebSocket upgrade of HTTP/1.1 can follow.
            raise DialError("the server chose HTTP/2 (ALPN h2), which cannot carry this WebSocket: "
                            "leave h2 out of the node's alpn")
        if transport.kind in ("h2", "grpc") and chosen not in (None, "h2"):
            raise DialError(f"the server chose ALPN {chosen}, not h2")
        if transport.kind == "ws":
            return await open_websocket(
                stream, host=transport.host or _share.netloc(host, port), path=transport.path or "/",
                early_data=request, max_early_data=transport.early_data,
                early_data_header=transport.early_data_header or EARLY_DATA_HEADER, timeout=timeout)
        if transport.kind == "grpc":
            return await open_grpc(stream, authority=transport.host or sni or _share.netloc(host, port),
                                   service_name=transport.path, timeout=timeout, tls=ctx is not None,
                                   early_data=request)
        return await open_http2(stream, hosts=transport.hosts, path=transport.path or "/", timeout=timeout,
                                early_data=request)
    except DialError as e:
        stream.close()
        raise DialError(f"{protocol} over {transport.kind}: {e}") from None
    except OSError as e:
        stream.close()
        raise DialError(f"{protocol} over {transport.kind}: {e.strerror or e}") from None
