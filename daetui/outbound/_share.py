"""Pieces of share links common to trojan://, vless:// and vmess://: host and port, flags, query text.

Shared by trojan.py, vless.py and vmess.py.
"""

from __future__ import annotations

import ipaddress
import uuid as uuidlib
from urllib.parse import SplitResult, parse_qsl, quote, urlsplit

TRUE = ("1", "true", "yes")
FALSE = ("0", "false", "no", "")


def split(link: str, scheme: str) -> SplitResult:
    """The link cut into its parts; ValueError when it is not `scheme://...@host:port`."""
    if not link.lower().startswith(scheme + "://"):
        raise ValueError(f"not a {scheme}:// link")
    try:
        parts = urlsplit(link.strip())
        port = parts.port
    except ValueError as e:
        raise ValueError(f"bad host or port: {e}") from None
    if not parts.hostname:
        raise ValueError("no server host")
    if port is None:
        raise ValueError("no server port")
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return parts


def host_of(parts: SplitResult) -> str:
    """The server's host as written (without IPv6 brackets); IPv6 literals in their short form."""
    host = parts.hostname or ""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def query(parts: SplitResult) -> dict[str, str]:
    """The query's parameters (the last of repeated ones)."""
    return dict(parse_qsl(parts.query, keep_blank_values=True))


def flag(params: dict[str, str], key: str) -> bool:
    """A boolean parameter: 1/true/yes or 0/false/no (absent: false)."""
    value = params.get(key, "").strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ValueError(f"{key}={params[key]!r}: expected 1 or 0")


def netloc(host: str, port: int) -> str:
    """host:port for a link, IPv6 in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def fragment(name: str) -> str:
    """`#name` for a link, percent-encoded; empty for no name."""
    return f"#{quote(name, safe='')}" if name else ""


def query_text(params: list[tuple[str, str]]) -> str:
    """`?k=v&...` of the parameters that are set (empty values left out)."""
    text = "&".join(f"{k}={quote(v, safe='')}" for k, v in params if v)
    return f"?{text}" if text else ""


def canonical_uuid(text: str) -> str:
    """A UUID in its canonical lower-case form; ValueError names the problem."""
    try:
        return str(uuidlib.UUID(text.strip()))
    except ValueError:
        raise ValueError(f"id {text!r} is not a UUID") from None


def alpn_list(text: str) -> tuple[str, ...]:
    """ALPN protocols from a comma-separated parameter."""
    return tuple(p.strip() for p in text.split(",") if p.strip())
