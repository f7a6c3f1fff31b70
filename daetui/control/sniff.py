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

import functools
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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

# Real ClientHellos are 0.5-2 KB; beyond this the sender is not a browser and a
# caller buffering "need_more" bytes would only be holding garbage.
MAX_CLIENT_HELLO = 1 << 16
# nginx's defaults (large_client_header_buffers 4 8k): what a real server accepts.
MAX_HTTP_LINE = 8192
MAX_HTTP_HEAD = 16384
# Apache's LimitRequestFields. The caps on counts keep the work per call small whatever the bytes:
# callers sniff again each time more arrive.
MAX_HTTP_FIELDS = 100
# Browsers send about 20 extensions; the IANA registry has fewer than 100 types.
MAX_TLS_EXTENSIONS = 128
# A ClientHello fits one record; clients that fragment it on purpose (to evade DPI) use a few to a few
# hundred. Past this, the name must already have been reached.
MAX_TLS_RECORDS = 256


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
        # Host names never end in an all-numeric label (see _normalize_host): only IPv4 does.
        return self.name is not None and (":" in self.name or self.name.rpartition(".")[2].isdigit())


class _Malformed(Exception):
    """Definitely not a valid message: the reason is the argument."""


class _Truncated(Exception):
    """Valid so far, but the bytes end before the part we need."""


def _need_more(protocol: str | None) -> SniffResult:
    return SniffResult(protocol=protocol, need_more=True)


def _error(reason: str, protocol: str | None = None) -> SniffResult:
    return SniffResult(protocol=protocol, error=reason)


# --- host names --------------------------------------------------------------------------------------------------

_HOSTNAME = re.compile(r"(?:[a-z0-9-]{1,63}\.)*[a-z0-9-]{1,63}")


def _normalize_host(host: str) -> str:
    """The canonical form of a host name or IP literal; raises _Malformed if it is neither."""
    if ":" in host:
        # Only an IPv6 literal has colons here (ports are cut off by the caller).
        if "%" in host:  # a zone id means nothing to anyone but the sender
            raise _Malformed("IPv6 literal with a zone id")
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise _Malformed("invalid IPv6 literal") from None
    if host.endswith("."):
        host = host[:-1]
    if host.rpartition(".")[2].isdigit():
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            # Not an address, and a numeric top-level label is not a DNS name either: "127.1",
            # "010.0.0.1", "1.2.3.256" are IPs mangled for inet_aton, not names to route by.
            raise _Malformed("invalid host name (numeric last label)") from None
    host = host.lower()
    if len(host) > 253 or not _HOSTNAME.fullmatch(host):
        raise _Malformed("invalid host name")
    return host


def _named(raw: bytes, protocol: str) -> SniffResult:
    """A result for the raw name bytes from the wire, or an error if they are not a host name."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return _error("non-ASCII host name", protocol)
    if not text:
        return _error("empty host name", protocol)
    try:
        return SniffResult(name=_normalize_host(text), protocol=protocol)
    except _Malformed as e:
        return _error(str(e.args[0]), protocol)


# --- TLS ClientHello --------------------------------------------------------------------------------------------


class _Cursor:
    """Reads big-endian fields of `buf` between `pos` and a declared `end`.

    `end` comes from an enclosing length field and may lie past the bytes we
    have: reading past `end` is a malformed message (lengths that disagree),
    reading past the bytes is a truncated one (wait for more).
    """

    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: bytes, pos: int, end: int) -> None:
        self.buf = buf
        self.pos = pos
        self.end = end

    def _advance(self, n: int, what: str) -> int:
        start = self.pos
        stop = start + n
        if stop > self.end:
            raise _Malformed(f"{what} runs past its enclosing length")
        if stop > len(self.buf):
            raise _Truncated
        self.pos = stop
        return start

    def u8(self, what: str) -> int:
        return self.buf[self._advance(1, what)]

    def u16(self, what: str) -> int:
        i = self._advance(2, what)
        return self.buf[i] << 8 | self.buf[i + 1]

    def take(self, n: int, what: str) -> bytes:
        i = self._advance(n, what)
        return self.buf[i:i + n]

    def skip(self, n: int, what: str) -> None:
        # Skipped bytes need not have arrived: only the next read does.
        if self.pos + n > self.end:
            raise _Malformed(f"{what} runs past its enclosing length")
        self.pos += n

    def sub(self, n: int, what: str) -> _Cursor:
        """A cursor over the next n bytes, which this one skips."""
        start = self.pos
        self.skip(n, what)
        return _Cursor(self.buf, start, start + n)

    def at_end(self) -> bool:
        return self.pos >= self.end

    def expect_end(self, what: str) -> None:
        if self.pos != self.end:
            raise _Malformed(f"trailing bytes after {what}")


_EXT_SERVER_NAME = 0
_NAME_TYPE_HOST = 0


def _walk_client_hello(hs: bytes, found: list[bytes]) -> None:
    """Check a (possibly partial) ClientHello handshake message, appending its host name to `found`.

    Raises _Malformed, or _Truncated if `hs` ends before the message does.
    """
    if not hs:
        raise _Truncated
    if hs[0] != 1:
        raise _Malformed("handshake message is not a ClientHello")
    if len(hs) < 4:
        raise _Truncated
    length = int.from_bytes(hs[1:4])
    if length > MAX_CLIENT_HELLO:
        raise _Malformed("ClientHello longer than the limit")
    body = _Cursor(hs, 4, 4 + length)
    if body.u8("legacy_version") != 3:
        raise _Malformed("ClientHello version is not 3.x")
    body.skip(1 + 32, "random")
    session_id = body.u8("legacy_session_id length")
    if session_id > 32:
        raise _Malformed("session id longer than 32 bytes")
    body.skip(session_id, "legacy_session_id")
    suites = body.u16("cipher_suites length")
    if suites < 2 or suites % 2:
        raise _Malformed("bad cipher_suites length")
    body.skip(suites, "cipher_suites")
    compression = body.u8("compression_methods length")
    if compression < 1:
        raise _Malformed("empty compression_methods")
    body.skip(compression, "compression_methods")
    if body.at_end():
        return  # a pre-TLS-1.2 style hello without extensions: no SNI
    extensions = body.sub(body.u16("extensions length"), "extensions")
    body.expect_end("extensions")
    seen: set[int] = set()
    while not extensions.at_end():
        ext_type = extensions.u16("extension type")
        ext = extensions.sub(extensions.u16("extension length"), "extension")
        if ext_type in seen:
            raise _Malformed(f"duplicate extension {ext_type}")
        seen.add(ext_type)
        if len(seen) > MAX_TLS_EXTENSIONS:
            raise _Malformed("too many extensions")
        if ext_type == _EXT_SERVER_NAME:
            _walk_server_name(ext, found)


def _walk_server_name(ext: _Cursor, found: list[bytes]) -> None:
    names = ext.sub(ext.u16("server_name list length"), "server_name list")
    ext.expect_end("server_name list")
    if names.at_end():
        raise _Malformed("empty server_name list")
    while not names.at_end():
        name_type = names.u8("server name type")
        if name_type != _NAME_TYPE_HOST:
            # RFC 6066 defines no other type, and an unknown one's layout cannot be skipped reliably.
            raise _Malformed(f"unknown server name type {name_type}")
        name = names.take(names.u16("host name length"), "host name")
        if found:
            raise _Malformed("more than one host_name in server_name")
        found.append(name)


def _sni_from_handshake(hs: bytes, protocol: str) -> SniffResult:
    """The result for the ClientHello handshake bytes reassembled so far."""
    found: list[bytes] = []
    try:
        _walk_client_hello(hs, found)
    except _Truncated:
        # The name, once complete, is all we need: the rest may come later or not at all.
        if not found:
            return _need_more(protocol)
    except _Malformed as e:
        return _error(str(e.args[0]), protocol)
    if not found:
        return _error("ClientHello without server_name", protocol)
    return _named(found[0], protocol)


_CONTENT_HANDSHAKE = 22
_MAX_RECORD = 1 << 14


def _sniff_tls(data: bytes) -> SniffResult:
    if not data:
        return _need_more(None)
    hs = bytearray()
    pos = 0
    count = 0
    while pos < len(data):
        count += 1
        if count > MAX_TLS_RECORDS:
            result = _sni_from_handshake(bytes(hs), "tls")
            return _error("ClientHello split over too many records", "tls") if result.need_more else result
        header = data[pos:pos + 5]
        if header[0] != _CONTENT_HANDSHAKE:
            if pos == 0:
                return _error("not a TLS handshake record")
            return _error(f"record of type {header[0]} before the ClientHello was complete", "tls")
        if header[1:2] not in (b"", b"\x03") or header[2:3] > b"\x04":
            return _error("not a TLS record version", None if pos == 0 else "tls")
        if len(header) < 5:
            break
        length = header[3] << 8 | header[4]
        if length == 0 or length > _MAX_RECORD:
            return _error(f"bad TLS record length {length}", "tls")
        hs += data[pos + 5:pos + 5 + length]
        pos += 5 + length
        if len(hs) >= 4 and len(hs) >= 4 + int.from_bytes(hs[1:4]):
            break  # the whole ClientHello is in; whatever follows is not ours to judge
    return _sni_from_handshake(bytes(hs), "tls")


def sniff_tls_sni(data: bytes) -> SniffResult:
    """The server_name of the TLS ClientHello at the start of a TCP stream.

    `data` is what the client sent so far: one or more TLS records, possibly
    ending mid-record. Returns the name once the server_name extension is
    complete, `need_more` while the bytes are a valid prefix that does not
    reach it, and an error otherwise.
    """
    try:
        return _sniff_tls(bytes(data))
    except Exception as e:  # a parser bug must fail the sniff, never the relay
        return _error(f"internal error: {type(e).__name__}")


# --- HTTP/1.x ---------------------------------------------------------------------------------------------------

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
        return _error("non-ASCII Host", "http")
    if not text:
        return _error("empty Host", "http")
    if text.startswith("["):
        literal, bracket, port = text[1:].partition("]")
        if not bracket or not literal or (port and not port.startswith(":")):
            return _error("malformed IPv6 literal in Host", "http")
        port = port[1:]
        host = literal
        if ":" not in host:
            return _error("malformed IPv6 literal in Host", "http")
    else:
        host, _, port = text.partition(":")
        if ":" in port:  # an IPv6 literal must be bracketed in Host
            return _error("malformed Host", "http")
    if not _PORT.fullmatch(port) or (port and int(port) > 65535):
        return _error("bad port in Host", "http")
    if not host or "@" in host:
        return _error("malformed Host", "http")
    try:
        return SniffResult(name=_normalize_host(host), protocol="http")
    except _Malformed as e:
        return _error(str(e.args[0]), "http")


def _sniff_http(data: bytes) -> SniffResult:
    if not data:
        return _need_more(None)
    end = data.find(b"\n", 0, MAX_HTTP_LINE + 1)
    if end < 0:
        if len(data) > MAX_HTTP_LINE:
            return _error("request line too long", "http" if _request_line_prefix_ok(data[:64]) else None)
        if _request_line_prefix_ok(data):
            # One uppercase letter is a weak sign: only claim HTTP once a method and a space are in.
            return _need_more("http" if b" " in data else None)
        return _error("not an HTTP request")
    line = data[:end]
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        if _REQUEST_LINE_NO_VERSION.fullmatch(line):
            return _error("request line without HTTP version (HTTP/0.9)", "http")
        return _error("not an HTTP request")
    if match.group(3) != b"1":
        return _error(f"not HTTP/1.x (HTTP/{match.group(3).decode()}.{match.group(4).decode()})", "http")
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
                return _error("request header too long", "http")
            # An unfinished header line must still look like one.
            colon = rest.find(b":")
            if colon < 0:
                ok = rest == b"\r" or bool(_HEADER_PREFIX.fullmatch(rest))
            else:
                ok = bool(_HEADER_PREFIX.fullmatch(rest, 0, colon)) and colon > 0 \
                    and not _HEADER_VALUE_BAD.search(rest.rstrip(b"\r"), colon + 1)
            if not ok:
                return _error("malformed header line", "http")
            if host is not None:
                break
            return _need_more("http")
        line = data[pos:end]
        pos = end + 1
        if line in (b"", b"\r"):
            if host is None:
                return _error("request without Host", "http")
            break
        fields += 1
        if fields > MAX_HTTP_FIELDS:
            if host is not None:
                break
            return _error("too many header fields", "http")
        if line[0] in b" \t":
            # Obsolete line folding: servers reject it (RFC 9112 5.2), so may we.
            return _error("obsolete line folding", "http")
        # No regex over the whole line: a value's inner whitespace would make backtracking quadratic.
        if line.endswith(b"\r"):
            line = line[:-1]
        colon = line.find(b":")
        if colon <= 0 or not _HEADER_NAME.fullmatch(line, 0, colon) or _HEADER_VALUE_BAD.search(line, colon + 1):
            return _error("malformed header line", "http")
        if colon == 4 and line[:4].lower() == b"host":
            if host is not None:
                return _error("more than one Host", "http")
            host = line[5:].strip(b" \t")
    # Every way out of the loop above without a Host has returned already.
    return _host_from_header(host) if host is not None else _error("request without Host", "http")


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
        return _error(f"internal error: {type(e).__name__}")


# --- QUIC Initial -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _QuicVersion:
    salt: bytes
    key_label: bytes
    iv_label: bytes
    hp_label: bytes
    initial: int  # the long-header packet type bits of Initial
    retry: int  # ... and of Retry, which has no Length field


_QUIC_VERSIONS = {
    0x00000001: _QuicVersion(  # RFC 9001 5.2
        bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"), b"quic key", b"quic iv", b"quic hp", 0, 3),
    0x6B3343CF: _QuicVersion(  # RFC 9369 3.3
        bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"), b"quicv2 key", b"quicv2 iv", b"quicv2 hp", 1, 0),
}


def _hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label with SHA-256 and an empty context, for length <= 32 (one HMAC block)."""
    full = b"tls13 " + label
    info = length.to_bytes(2) + bytes([len(full)]) + full + b"\x00"
    return hmac.digest(secret, info + b"\x01", hashlib.sha256)[:length]


@dataclass(frozen=True, slots=True)
class _InitialKeys:
    aead: AESGCM
    iv: int
    hp: Cipher[modes.ECB]

    def mask(self, sample: bytes) -> bytes:
        encryptor = self.hp.encryptor()
        return encryptor.update(sample) + encryptor.finalize()


# Keyed by attacker-chosen connection ids, so bounded; it saves the derivation when the
# caller sniffs the same connection again with more datagrams.
@functools.lru_cache(maxsize=256)
def _initial_keys(version: int, dcid: bytes) -> _InitialKeys:
    """The client's Initial keys for a connection (RFC 9001 5.2, RFC 9369 3.3.1)."""
    v = _QUIC_VERSIONS[version]
    initial_secret = hmac.digest(v.salt, dcid, hashlib.sha256)  # HKDF-Extract
    client_secret = _hkdf_expand_label(initial_secret, b"client in", 32)
    return _InitialKeys(
        aead=AESGCM(_hkdf_expand_label(client_secret, v.key_label, 16)),
        iv=int.from_bytes(_hkdf_expand_label(client_secret, v.iv_label, 12)),
        hp=Cipher(algorithms.AES(_hkdf_expand_label(client_secret, v.hp_label, 16)), modes.ECB()),
    )


def _varint(buf: bytes, pos: int, what: str) -> tuple[int, int]:
    """A QUIC variable-length integer at `pos`, and the position after it."""
    if pos >= len(buf):
        raise _Malformed(f"truncated {what}")
    first = buf[pos]
    n = 1 << (first >> 6)
    if pos + n > len(buf):
        raise _Malformed(f"truncated {what}")
    return int.from_bytes(buf[pos:pos + n]) & ((1 << (8 * n - 2)) - 1), pos + n


_FRAME_PADDING = 0x00
_FRAME_PING = 0x01
_FRAME_ACK = 0x02
_FRAME_ACK_ECN = 0x03
_FRAME_CRYPTO = 0x06
_FRAME_CONNECTION_CLOSE = 0x1C
_NONZERO = re.compile(rb"[^\x00]")
# A client coalesces at most an Initial, a 0-RTT and a Handshake packet; past a few, a datagram
# of many tiny valid Initials is only there to make us decrypt them all.
_MAX_PACKETS_PER_DATAGRAM = 8
# Chrome scatters its ClientHello over a few CRYPTO frames among PING and PADDING ("chaos protection");
# thousands of one-byte frames in a 64 KB datagram are only there to make us loop.
_MAX_FRAMES_PER_PACKET = 512


def _crypto_frames(payload: bytes, chunks: list[tuple[int, bytes]]) -> None:
    """Append the (offset, data) of each CRYPTO frame of an Initial packet's payload to `chunks`."""
    pos = 0
    n = len(payload)
    for _ in range(_MAX_FRAMES_PER_PACKET):
        if pos >= n:
            return
        frame, pos = _varint(payload, pos, "frame type")
        if frame == _FRAME_PADDING:
            # Padding fills most of the packet: skip the run at C speed (and without copying the rest,
            # which alternating PADDING and PING frames would make quadratic).
            nonzero = _NONZERO.search(payload, pos)
            pos = n if nonzero is None else nonzero.start()
        elif frame == _FRAME_PING:
            pass
        elif frame == _FRAME_CRYPTO:
            offset, pos = _varint(payload, pos, "CRYPTO offset")
            length, pos = _varint(payload, pos, "CRYPTO length")
            if pos + length > n:
                raise _Malformed("CRYPTO frame runs past the packet")
            chunks.append((offset, payload[pos:pos + length]))
            pos += length
        elif frame in (_FRAME_ACK, _FRAME_ACK_ECN):
            # Not in a first flight, but a client that has heard the server acks in Initials.
            _, pos = _varint(payload, pos, "ACK largest")
            _, pos = _varint(payload, pos, "ACK delay")
            ranges, pos = _varint(payload, pos, "ACK range count")
            for _ in range(min(1 + 2 * ranges, n)):  # each field is at least a byte: bounded by the payload
                _, pos = _varint(payload, pos, "ACK range")
            if frame == _FRAME_ACK_ECN:
                for _ in range(3):
                    _, pos = _varint(payload, pos, "ACK ECN count")
        elif frame == _FRAME_CONNECTION_CLOSE:
            _, pos = _varint(payload, pos, "CONNECTION_CLOSE error code")
            _, pos = _varint(payload, pos, "CONNECTION_CLOSE frame type")
            length, pos = _varint(payload, pos, "CONNECTION_CLOSE reason length")
            if pos + length > n:
                raise _Malformed("CONNECTION_CLOSE reason runs past the packet")
            pos += length
        else:
            raise _Malformed(f"frame type {frame:#x} not allowed in an Initial packet")
    if pos < n:
        raise _Malformed("too many frames in an Initial packet")


def _reassemble(chunks: list[tuple[int, bytes]]) -> bytes:
    """The CRYPTO stream from offset 0 up to its first gap."""
    stream = bytearray()
    for offset, data in sorted(chunks, key=lambda c: c[0]):
        if offset > len(stream) or len(stream) > MAX_CLIENT_HELLO + 4:
            break
        # Retransmitted or overlapping data repeats what we have: keep only what is new.
        stream += data[len(stream) - offset:]
    return bytes(stream)


class _QuicConnection:
    """What the Initial packets seen so far carry for one connection."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.dcid: bytes | None = None
        self.chunks: list[tuple[int, bytes]] = []

    def datagram(self, dgram: bytes, first: bool) -> None:
        """Take the client Initial packets of one datagram. Raises _Malformed only for a first packet."""
        pos = 0
        for _ in range(_MAX_PACKETS_PER_DATAGRAM):
            if pos >= len(dgram):
                return
            try:
                pos = self._packet(dgram, pos)
            except _Malformed:
                # The first packet decides whether this is QUIC at all. A bad packet after it is
                # dropped, as a QUIC endpoint would (RFC 9000 12.2), and ends the datagram.
                if first and pos == 0:
                    raise
                return
            if pos < 0:
                return

    def _packet(self, dgram: bytes, pos: int) -> int:
        """Take the packet at `pos`; the position after it, or -1 if nothing else can be parsed."""
        first = dgram[pos]
        if not first & 0x80:
            if pos == 0:
                raise _Malformed("not a QUIC long header packet")
            return -1  # a short-header packet is last in a datagram, and 1-RTT keys are not ours
        if len(dgram) < pos + 7:
            raise _Malformed("truncated QUIC long header")
        version = int.from_bytes(dgram[pos + 1:pos + 5])
        params = _QUIC_VERSIONS.get(version)
        if params is None:
            if version == 0:
                raise _Malformed("QUIC version negotiation packet")
            raise _Malformed(f"unsupported QUIC version {version:#010x}")
        p = pos + 5
        dcid_len = dgram[p]
        if dcid_len > 20:
            raise _Malformed("QUIC connection id longer than 20 bytes")
        dcid = dgram[p + 1:p + 1 + dcid_len]
        p += 1 + dcid_len
        if p >= len(dgram) or dgram[p] > 20:
            raise _Malformed("bad QUIC source connection id")
        p += 1 + dgram[p]
        packet_type = first >> 4 & 3
        if packet_type == params.retry:
            raise _Malformed("QUIC Retry packet")
        if packet_type == params.initial:
            token_len, p = _varint(dgram, p, "token length")
            p += token_len
        length, p = _varint(dgram, p, "packet length")
        packet_end = p + length
        if packet_end > len(dgram):
            raise _Malformed("QUIC packet runs past the datagram")
        if packet_type != params.initial:
            if pos == 0:
                raise _Malformed("not a QUIC Initial packet")
            return packet_end  # 0-RTT or Handshake, coalesced after the Initial
        if self.version is not None and (version, dcid) != (self.version, self.dcid):
            return packet_end  # another connection's packet (RFC 9000 12.2: ignore it)
        self._initial(dgram, pos, p, packet_end, _initial_keys(version, dcid))
        self.version, self.dcid = version, dcid
        return packet_end

    def _initial(self, dgram: bytes, pos: int, pn_offset: int, end: int, keys: _InitialKeys) -> None:
        """Remove header protection, decrypt and collect the CRYPTO frames of one Initial packet."""
        # The sample assumes a 4-byte packet number (RFC 9001 5.4.2).
        sample = dgram[pn_offset + 4:pn_offset + 20]
        if len(sample) < 16 or pn_offset + 20 > end:
            raise _Malformed("QUIC Initial too short for its header protection sample")
        mask = keys.mask(sample)
        first = dgram[pos] ^ (mask[0] & 0x0F)
        pn_len = (first & 3) + 1
        pn_bytes = bytes(a ^ b for a, b in zip(dgram[pn_offset:pn_offset + pn_len], mask[1:], strict=False))
        # The first packets of a connection have small numbers: the truncated number is the number.
        nonce = (keys.iv ^ int.from_bytes(pn_bytes)).to_bytes(12)
        header = bytes([first]) + dgram[pos + 1:pn_offset] + pn_bytes
        try:
            payload = keys.aead.decrypt(nonce, dgram[pn_offset + pn_len:end], header)
        except InvalidTag:
            raise _Malformed("QUIC Initial fails authentication") from None
        if first & 0x0C:
            raise _Malformed("QUIC reserved header bits set")
        if not payload:
            raise _Malformed("QUIC Initial without frames")
        chunks: list[tuple[int, bytes]] = []
        _crypto_frames(payload, chunks)
        self.chunks += chunks


def _sniff_quic(datagrams: Iterable[bytes]) -> SniffResult:
    conn = _QuicConnection()
    for i, dgram in enumerate(datagrams):
        if not dgram:
            if i == 0:
                return _error("empty datagram")
            continue
        try:
            conn.datagram(bytes(dgram), first=i == 0)
        except _Malformed as e:
            return _error(str(e.args[0]))
    if conn.version is None:
        return _error("no QUIC Initial packet")
    stream = _reassemble(conn.chunks)
    return _sni_from_handshake(stream, "quic")


def sniff_quic_datagrams(datagrams: Iterable[bytes]) -> SniffResult:
    """The SNI of the ClientHello in a client's first QUIC datagrams, in the order received.

    The first datagram must start with a QUIC v1 or v2 Initial packet that
    decrypts, or the result is an error. Its connection's Initial packets in
    all the datagrams (coalesced ones too) are decrypted and their CRYPTO
    frames reassembled in offset order; packets that fail, belong to other
    connections or are of other types are skipped. `need_more` means the
    ClientHello continues in a datagram not given yet.
    """
    try:
        return _sniff_quic(datagrams)
    except Exception as e:  # a parser bug must fail the sniff, never the relay
        return _error(f"internal error: {type(e).__name__}")


def sniff_quic_sni(datagram: bytes) -> SniffResult:
    """The SNI of the ClientHello in a client's first QUIC datagram: `sniff_quic_datagrams([datagram])`.

    On `need_more` the ClientHello spans datagrams: pass this one and the
    next ones to `sniff_quic_datagrams`.
    """
    return sniff_quic_datagrams((datagram,))


# --- dispatch ---------------------------------------------------------------------------------------------------


def sniff(data: bytes, proto: str) -> SniffResult:
    """The name behind a flow from its first bytes: TLS then HTTP for "tcp", QUIC for "udp"."""
    if proto == "tcp":
        tls = sniff_tls_sni(data)
        if tls.name is not None or tls.need_more or tls.protocol is not None:
            return tls
        http = sniff_http_host(data)
        if http.name is not None or http.need_more or http.protocol is not None:
            return http
        return _error(f"neither TLS ({tls.error}) nor HTTP ({http.error})")
    if proto == "udp":
        return sniff_quic_sni(data)
    return _error(f"no sniffer for protocol {proto!r}")
