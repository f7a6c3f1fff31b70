"""Domain sniffing: the host name behind a flow, learnt from its first bytes.

A transparent proxy only sees addresses; routing by domain needs the name the
client asked for. It is in the first bytes of most flows: the server_name
extension of a TLS ClientHello (TCP), the Host header of an HTTP/1.x request
(TCP), or the same ClientHello inside a QUIC Initial packet (UDP), which is
encrypted with keys anyone can derive from the packet itself (RFC 9001 5.2).

Every sniffer is a pure function of the bytes seen so far and never raises on
any input. Its `SniffResult` holds exactly one of:

- `name`: the host name, lower-case, without a trailing dot, checked to be a
  plausible DNS name (ASCII letters, digits, hyphens; labels of 1..63, at most
  253 in all; IDNA "xn--" labels are returned as sent). An IP literal (which
  RFC 6066 forbids in SNI but clients send anyway, and which is common in
  Host) is returned as the address in canonical text form -- dotted IPv4 or
  compressed IPv6, no brackets, no port; `SniffResult.is_ip` tells it apart,
  and callers routing by domain may ignore it.
- `need_more`: the bytes are a plausible prefix of a ClientHello or request,
  too short to reach the name; call again with more bytes (the caller bounds
  the wait with its own timeout and byte limit).
- `error`: why there is no name: not the protocol, malformed, or well-formed
  but carrying no name (a ClientHello without server_name, a request without
  Host).

`protocol` ("tls" | "http" | "quic") is set as soon as the bytes are
recognised as that protocol (so also with `need_more` or `error`), and is None
when they are not.

A ClientHello may be cut anywhere: over several TLS records, TCP segments or
QUIC packets. A name is returned as soon as the server_name extension is
complete, without waiting for the rest. A ClientHello that no longer fits in
one QUIC packet (post-quantum key shares make it ~1.5 KB) can span several
Initial datagrams: `sniff_quic_datagrams` takes them all.

Encrypted Client Hello (ECH) is not undone: with ECH the name found is the
outer, public name.
"""

from __future__ import annotations

from daetui.sniff.common import SniffResult, failed
from daetui.sniff.http import MAX_HTTP_FIELDS, MAX_HTTP_HEAD, MAX_HTTP_LINE, sniff_http_host
from daetui.sniff.quic import sniff_quic_datagrams, sniff_quic_sni
from daetui.sniff.tls import MAX_CLIENT_HELLO, MAX_TLS_EXTENSIONS, MAX_TLS_RECORDS, sniff_tls_sni

__all__ = [
    "MAX_CLIENT_HELLO",
    "MAX_HTTP_FIELDS",
    "MAX_HTTP_HEAD",
    "MAX_HTTP_LINE",
    "MAX_TLS_EXTENSIONS",
    "MAX_TLS_RECORDS",
    "SniffResult",
    "sniff",
    "sniff_http_host",
    "sniff_quic_datagrams",
    "sniff_quic_sni",
    "sniff_tls_sni",
]


def sniff(data: bytes, proto: str) -> SniffResult:
    """The name behind a flow from its first bytes: TLS then HTTP for "tcp", QUIC for "udp"."""
    if proto == "tcp":
        tls = sniff_tls_sni(data)
        if tls.name is not None or tls.need_more or tls.protocol is not None:
            return tls
        http = sniff_http_host(data)
        if http.name is not None or http.need_more or http.protocol is not None:
            return http
        return failed(f"neither TLS ({tls.error}) nor HTTP ({http.error})")
    if proto == "udp":
        return sniff_quic_sni(data)
    return failed(f"no sniffer for protocol {proto!r}")
