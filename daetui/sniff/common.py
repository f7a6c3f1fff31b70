"""What every sniffer returns, and the checks of a host name they share."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SniffResult:
    """What a sniffer learnt. Exactly one of `name`, `need_more`, `error` is set."""

    name: str | None = None
    protocol: str | None = None  # "tls" | "http" | "quic"
    need_more: bool = False
    error: str | None = None

    @property
    def is_ip(self) -> bool:
        """Whether `name` is an IP literal (canonical text form) rather than a domain name."""
        # Host names never end in an all-numeric label (see normalize_host): only IPv4 does.
        return self.name is not None and (":" in self.name or self.name.rpartition(".")[2].isdigit())


class Malformed(Exception):
    """Definitely not a valid message: the reason is the argument."""


class Truncated(Exception):
    """Valid so far, but the bytes end before the part we need."""


def more_needed(protocol: str | None) -> SniffResult:
    return SniffResult(protocol=protocol, need_more=True)


def failed(reason: str, protocol: str | None = None) -> SniffResult:
    return SniffResult(protocol=protocol, error=reason)


# --- host names --------------------------------------------------------------------------------------------------

_HOSTNAME = re.compile(r"(?:[a-z0-9-]{1,63}\.)*[a-z0-9-]{1,63}")


def normalize_host(host: str) -> str:
    """The canonical form of a host name or IP literal; raises Malformed if it is neither."""
    if ":" in host:
        # Only an IPv6 literal has colons here (ports are cut off by the caller).
        if "%" in host:  # a zone id means nothing to anyone but the sender
            raise Malformed("IPv6 literal with a zone id")
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise Malformed("invalid IPv6 literal") from None
    if host.endswith("."):
        host = host[:-1]
    if host.rpartition(".")[2].isdigit():
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            # Not an address, and a numeric top-level label is not a DNS name either: "127.1",
            # "010.0.0.1", "1.2.3.256" are IPs mangled for inet_aton, not names to route by.
            raise Malformed("invalid host name (numeric last label)") from None
    host = host.lower()
    if len(host) > 253 or not _HOSTNAME.fullmatch(host):
        raise Malformed("invalid host name")
    return host


def named(raw: bytes, protocol: str) -> SniffResult:
    """A result for the raw name bytes from the wire, or an error if they are not a host name."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return failed("non-ASCII host name", protocol)
    if not text:
        return failed("empty host name", protocol)
    try:
        return SniffResult(name=normalize_host(text), protocol=protocol)
    except Malformed as e:
        return failed(str(e.args[0]), protocol)
