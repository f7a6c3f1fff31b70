"""Health checks through a node: an HTTP request (TCP) and a DNS query (UDP), per IP family.

dae's settings: `tcp_check_url = ["http://host/path", "v4 address", "v6 address"]`
(the addresses save a lookup: one is dialled, per family) and
`udp_check_dns = ["dns.host:53", "v4 address", "v6 address"]`. A check's
latency is the time to the HTTP status line or the DNS answer, through the
node, connection included; a failure says why.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import struct
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import dns.message

from daetui.net.stream import Dialer, DialError, Stream
from daetui.net.tls import start_tls

CHECK_TIMEOUT = 5.0


def _family_address(values: tuple[str, ...], family: int) -> str | None:
    for v in values[1:]:
        try:
            if ipaddress.ip_address(v.strip("[]")).version == family:
                return v.strip("[]")
        except ValueError:
            continue
    return None


async def _ask(stream: Stream, request: str) -> bytes:
    """Send an HTTP request; what came back up to its status line's end (at most 1 KiB read)."""
    await stream.write(request.encode())
    head = b""
    while b"\r\n" not in head and len(head) < 1024:
        chunk = await stream.read(1024)
        if not chunk:
            break
        head += chunk
    return head


async def tcp_check(dialer: Dialer, check_url: tuple[str, ...], family: int, method: str = "HEAD",
                    timeout: float = CHECK_TIMEOUT) -> float:
    """Seconds to an HTTP status line through `dialer`; DialError (or TimeoutError) says why not."""
    url = urlsplit(check_url[0])
    host = url.hostname or ""
    addr = _family_address(check_url, family) or host
    port = url.port or 80
    t0 = time.monotonic()
    async with asyncio.timeout(timeout):
        stream = await dialer.connect(addr, port)
        try:
            head = await _ask(stream, f"{method} {url.path or '/'} HTTP/1.1\r\nHost: {host}\r\n"
                                      f"Connection: close\r\nUser-Agent: daetui-check\r\n\r\n")
        finally:
            stream.close()
    parts = head.split(b"\r\n", 1)[0].split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or parts[1][:1] not in (b"2", b"3"):
        raise DialError(f"check answer {head[:40]!r}" if head else "check: closed without an answer")
    return time.monotonic() - t0


async def udp_check(dialer: Dialer, check_dns: tuple[str, ...], family: int,
                    timeout: float = CHECK_TIMEOUT) -> float:
    """Seconds to a DNS answer through `dialer` (UDP); DialError (or TimeoutError) says why not."""
    name, _, port = check_dns[0].rpartition(":")
    if not name:
        name, port = check_dns[0], "53"
    addr = _family_address(check_dns, family)
    if addr is None:
        raise DialError(f"udp_check_dns gives no IPv{family} address")
    q = dns.message.make_query(name, "A")
    t0 = time.monotonic()
    async with asyncio.timeout(timeout):
        d = await dialer.datagrams()
        try:
            await d.send(q.to_wire(), addr, int(port or 53))
            while True:
                data, _, _ = await d.recv()
                if len(data) >= 2 and struct.unpack("!H", data[:2])[0] == q.id:
                    break
        finally:
            d.close()
    return time.monotonic() - t0


async def url_check(dialer: Dialer, url: str, timeout: float = CHECK_TIMEOUT, *, method: str = "HEAD",
                    expected: Callable[[int], bool] | None = None, tls: ssl.SSLContext | None = None) -> float:
    """Seconds to the status line of `url` (http:// or https://) through `dialer`: mihomo's delay test.

    As tcp_check, but for any URL a dashboard names: the node is asked for the URL's own host (the proxy
    server resolves a name), TLS runs through the node for https:// (verified by `tls`), and any status
    counts unless `expected` (a status -> bool) says which. Connection and TLS are in the time.
    DialError (or TimeoutError) says why not.
    """
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise DialError("bad port in the test URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DialError("the test URL must be http:// or https:// with a host")
    https = parts.scheme == "https"
    if https and tls is None:
        raise DialError("an https:// test needs a TLS context")
    host = parts.hostname
    port = port or (443 if https else 80)
    shown = f"[{host}]" if ":" in host else host
    authority = shown if port == (443 if https else 80) else f"{shown}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    t0 = time.monotonic()
    async with asyncio.timeout(timeout):
        stream: Stream = await dialer.connect(host, port)
        if https:
            assert tls is not None
            stream = await start_tls(stream, tls, host, None, half_close=False)  # closes the stream if it fails
        try:
            head = await _ask(stream, f"{method} {target} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n"
                                      f"User-Agent: daetui-check\r\nAccept: */*\r\n\r\n")
        finally:
            stream.close()
    elapsed = time.monotonic() - t0
    words = head.split(b"\r\n", 1)[0].split()
    if len(words) < 2 or not words[0].startswith(b"HTTP/") or not words[1].isdigit():
        raise DialError(f"check answer {head[:40]!r}" if head else "check: closed without an answer")
    status = int(words[1])
    if expected is not None and not expected(status):
        raise DialError(f"check answer: status {status}, not the one expected")
    return elapsed
