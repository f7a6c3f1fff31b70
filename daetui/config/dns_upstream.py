"""DNS upstream URLs as the config writes them: `scheme://host[:port][/path]`.

The schemes and their default ports, as dae has them (component/dns/upstream.go:
`http3://` is `h3://`, `udp+tcp://` is `tcp+udp://`); the transports live in
daetui.dns.upstream and daetui.dns.quic (DoQ, DoH3).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

SCHEMES = {"udp": 53, "tcp": 53, "tcp+udp": 53, "tls": 853, "https": 443, "quic": 853, "h3": 443}
ALIASES = {"http3": "h3", "udp+tcp": "tcp+udp"}
WITH_PATH = ("https", "h3")
# Names other programs use that dae does not: say which one it is.
OTHER_NAMES = {"doq": "quic", "doh": "https", "dot": "tls", "doh3": "h3"}


@dataclass(frozen=True)
class UpstreamSpec:
    """An upstream as configured."""

    name: str
    url: str
    scheme: str
    host: str
    port: int
    path: str = "/dns-query"

    @property
    def host_is_address(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
            return True
        except ValueError:
            return False


def parse_upstream(name: str, url: str) -> UpstreamSpec:
    """`scheme://host[:port][/path]`; ValueError says what is wrong."""
    if "://" not in url:
        raise ValueError("expected scheme://host:port")
    scheme = url.split("://", 1)[0].lower()
    scheme = ALIASES.get(scheme, scheme)
    if scheme in OTHER_NAMES:
        raise ValueError(f"unknown scheme {scheme!r}: write {OTHER_NAMES[scheme]}:// as dae does")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}: expected {', '.join(SCHEMES)}")
    parts = urlsplit(url)
    try:
        port = parts.port or SCHEMES[scheme]
    except ValueError:
        raise ValueError("bad port") from None
    host = parts.hostname or ""
    if not host:
        raise ValueError("no host")
    path = parts.path or "/dns-query"
    if scheme not in WITH_PATH and parts.path not in ("", "/"):
        raise ValueError(f"{scheme}:// takes no path")
    return UpstreamSpec(name, url, scheme, host, port, path)
