"""The Host of an HTTP/1.x request, from its head, checked as a real server would."""

from __future__ import annotations

import re

from daetui.sniff.common import Malformed, SniffResult, failed, more_needed, normalize_host

# nginx's defaults (large_client_header_buffers 4 8k): what a real server accepts.
MAX_HTTP_LINE = 8192
MAX_HTTP_HEAD = 16384
# Apache's LimitRequestFields. The caps on counts keep the work per call small whatever the bytes:
# callers sniff again each time more arrive.
MAX_HTTP_FIELDS = 100


_METHOD = rb"[A-Z_-]{1,20}"
_REQUEST_LINE = re.compile(rb"(" + _METHOD + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])\r?")
_REQUEST_LINE_NO_VERSION = re.compile(_METHOD + rb" [\x21-\x7e]+\r?")
_METHOD_PREFIX = re.compile(rb"[A-Z_-]{0,20}")
_TARGET_PREFIX = re.compile(rb"[\x21-\x7e]*")
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_HEADER_NAME = re.compile(_TOKEN + rb"+")
_HEADER_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HEADER_PREFIX = re.compile(_TOKEN + rb"*")
_PORT = re.compile(r"[0-9]{0,5}")


def _request_line_prefix_ok(line: bytes) -> bool:
    """Whether an unfinished request line can still become `METHOD target HTTP/1.x`."""
    parts = line.split(b" ")
    if len(parts) > 3 or not _METHOD_PREFIX.fullmatch(parts[0]):
        return False
    if len(parts) > 1 and (not parts[0] or not _TARGET_PREFIX.fullmatch(parts[1])):
        return False
    if len(parts) == 3:
        if not parts[1]:
            return False
        version = parts[2]
        if len(version) <= 7:
            return b"HTTP/1.".startswith(version)
        return (version[:7] == b"HTTP/1." and version[7:8].isdigit()
                and (len(version) == 8 or version[8:] == b"\r"))
    return True


def _host_from_header(value: bytes) -> SniffResult:
    """The result for a Host header's value: `host[:port]` or `[ipv6]:port`."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return failed("non-ASCII Host", "http")
    if not text:
        return failed("empty Host", "http")
    if text.startswith("["):
        literal, bracket, port = text[1:].partition("]")
        if not bracket or not literal or (port and not port.startswith(":")):
            return failed("malformed IPv6 literal in Host", "http")
        port = port[1:]
        host = literal
        if ":" not in host:
            return failed("malformed IPv6 literal in Host", "http")
    else:
        host, _, port = text.partition(":")
        if ":" in port:  # an IPv6 literal must be bracketed in Host
            return failed("malformed Host", "http")
    if not _PORT.fullmatch(port) or (port and int(port) > 65535):
        return failed("bad port in Host", "http")
    if not host or "@" in host:
        return failed("malformed Host", "http")
    try:
        return SniffResult(name=normalize_host(host), protocol="http")
    except Malformed as e:
        return failed(str(e.args[0]), "http")


def _sniff_http(data: bytes) -> SniffResult:
    if not data:
        return more_needed(None)
    end = data.find(b"\n", 0, MAX_HTTP_LINE + 1)
    if end < 0:
        if len(data) > MAX_HTTP_LINE:
            return failed("request line too long", "http" if _request_line_prefix_ok(data[:64]) else None)
        if _request_line_prefix_ok(data):
            # One uppercase letter is a weak sign: only claim HTTP once a method and a space are in.
            return more_needed("http" if b" " in data else None)
        return failed("not an HTTP request")
    line = data[:end]
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        if _REQUEST_LINE_NO_VERSION.fullmatch(line):
            return failed("request line without HTTP version (HTTP/0.9)", "http")
        return failed("not an HTTP request")
    if match.group(3) != b"1":
        return failed(f"not HTTP/1.x (HTTP/{match.group(3).decode()}.{match.group(4).decode()})", "http")
    host: bytes | None = None
    pos = end + 1
    fields = 0
    while True:
        end = data.find(b"\n", pos, min(pos + MAX_HTTP_LINE + 1, MAX_HTTP_HEAD + 1))
        if end < 0:
            rest = data[pos:MAX_HTTP_HEAD + 1]
            if len(data) > MAX_HTTP_HEAD or len(rest) > MAX_HTTP_LINE:
                if host is not None:
                    break
                return failed("request header too long", "http")
            # An unfinished header line must still look like one.
            colon = rest.find(b":")
            if colon < 0:
                ok = rest == b"\r" or bool(_HEADER_PREFIX.fullmatch(rest))
            else:
                ok = bool(_HEADER_PREFIX.fullmatch(rest, 0, colon)) and colon > 0 \
                    and not _HEADER_VALUE_BAD.search(rest.rstrip(b"\r"), colon + 1)
            if not ok:
                return failed("malformed header line", "http")
            if host is not None:
                break
            return more_needed("http")
        line = data[pos:end]
        pos = end + 1
        if line in (b"", b"\r"):
            if host is None:
                return failed("request without Host", "http")
            break
        fields += 1
        if fields > MAX_HTTP_FIELDS:
            if host is not None:
                break
            return failed("too many header fields", "http")
        if line[0] in b" \t":
            # Obsolete line folding: servers reject it (RFC 9112 5.2), so may we.
            return failed("obsolete line folding", "http")
        # No regex over the whole line: a value's inner whitespace would make backtracking quadratic.
        if line.endswith(b"\r"):
            line = line[:-1]
        colon = line.find(b":")
        if colon <= 0 or not _HEADER_NAME.fullmatch(line, 0, colon) or _HEADER_VALUE_BAD.search(line, colon + 1):
            return failed("malformed header line", "http")
        if colon == 4 and line[:4].lower() == b"host":
            if host is not None:
                return failed("more than one Host", "http")
            host = line[5:].strip(b" \t")
    # Every way out of the loop above without a Host has returned already.
    return _host_from_header(host) if host is not None else failed("request without Host", "http")


def sniff_http_host(data: bytes) -> SniffResult:
    """The Host of the HTTP/1.x request at the start of a TCP stream.

    The header name is matched case-insensitively, a port is removed, and an
    IPv6 literal loses its brackets. Returns the name once its header line is
    complete (duplicates are caught in as much of the head as has arrived),
    `need_more` while the bytes are a valid prefix of a request head, and an
    error otherwise: not a request line, HTTP/0.9 or 2, no Host, several
    Hosts, an invalid Host, or a head longer than `MAX_HTTP_HEAD` bytes,
    `MAX_HTTP_LINE` bytes a line or `MAX_HTTP_FIELDS` fields before the Host.
    """
    try:
        return _sniff_http(bytes(data))
    except Exception as e:  # a parser bug must fail the sniff, never the relay
        return failed(f"internal error: {type(e).__name__}")
