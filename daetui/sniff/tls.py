"""The server name (SNI) in a TLS ClientHello, over however many records and segments it spans."""

from __future__ import annotations

from daetui.sniff.common import Malformed, SniffResult, Truncated, failed, more_needed, named

# Real ClientHellos are 0.5-2 KB; beyond this the sender is not a browser and a
# caller buffering "need_more" bytes would only be holding garbage.
MAX_CLIENT_HELLO = 1 << 16
# Browsers send about 20 extensions; the IANA registry has fewer than 100 types.
MAX_TLS_EXTENSIONS = 128
# A ClientHello fits one record; clients that fragment it on purpose (to evade DPI) use a few to a few
# hundred. Past this, the name must already have been reached.
MAX_TLS_RECORDS = 256


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
            raise Malformed(f"{what} runs past its enclosing length")
        if stop > len(self.buf):
            raise Truncated
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
            raise Malformed(f"{what} runs past its enclosing length")
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
            raise Malformed(f"trailing bytes after {what}")


_EXT_SERVER_NAME = 0
_NAME_TYPE_HOST = 0


def _walk_client_hello(hs: bytes, found: list[bytes]) -> None:
    """Check a (possibly partial) ClientHello handshake message, appending its host name to `found`.

    Raises Malformed, or Truncated if `hs` ends before the message does.
    """
    if not hs:
        raise Truncated
    if hs[0] != 1:
        raise Malformed("handshake message is not a ClientHello")
    if len(hs) < 4:
        raise Truncated
    length = int.from_bytes(hs[1:4])
    if length > MAX_CLIENT_HELLO:
        raise Malformed("ClientHello longer than the limit")
    body = _Cursor(hs, 4, 4 + length)
    if body.u8("legacy_version") != 3:
        raise Malformed("ClientHello version is not 3.x")
    body.skip(1 + 32, "random")
    session_id = body.u8("legacy_session_id length")
    if session_id > 32:
        raise Malformed("session id longer than 32 bytes")
    body.skip(session_id, "legacy_session_id")
    suites = body.u16("cipher_suites length")
    if suites < 2 or suites % 2:
        raise Malformed("bad cipher_suites length")
    body.skip(suites, "cipher_suites")
    compression = body.u8("compression_methods length")
    if compression < 1:
        raise Malformed("empty compression_methods")
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
            raise Malformed(f"duplicate extension {ext_type}")
        seen.add(ext_type)
        if len(seen) > MAX_TLS_EXTENSIONS:
            raise Malformed("too many extensions")
        if ext_type == _EXT_SERVER_NAME:
            _walk_server_name(ext, found)


def _walk_server_name(ext: _Cursor, found: list[bytes]) -> None:
    names = ext.sub(ext.u16("server_name list length"), "server_name list")
    ext.expect_end("server_name list")
    if names.at_end():
        raise Malformed("empty server_name list")
    while not names.at_end():
        name_type = names.u8("server name type")
        if name_type != _NAME_TYPE_HOST:
            # RFC 6066 defines no other type, and an unknown one's layout cannot be skipped reliably.
            raise Malformed(f"unknown server name type {name_type}")
        name = names.take(names.u16("host name length"), "host name")
        if found:
            raise Malformed("more than one host_name in server_name")
        found.append(name)


def sni_from_handshake(hs: bytes, protocol: str) -> SniffResult:
    """The result for the ClientHello handshake bytes reassembled so far."""
    found: list[bytes] = []
    try:
        _walk_client_hello(hs, found)
    except Truncated:
        # The name, once complete, is all we need: the rest may come later or not at all.
        if not found:
            return more_needed(protocol)
    except Malformed as e:
        return failed(str(e.args[0]), protocol)
    if not found:
        return failed("ClientHello without server_name", protocol)
    return named(found[0], protocol)


_CONTENT_HANDSHAKE = 22
_MAX_RECORD = 1 << 14


def _sniff_tls(data: bytes) -> SniffResult:
    if not data:
        return more_needed(None)
    hs = bytearray()
    pos = 0
    count = 0
    while pos < len(data):
        count += 1
        if count > MAX_TLS_RECORDS:
            result = sni_from_handshake(bytes(hs), "tls")
            return failed("ClientHello split over too many records", "tls") if result.need_more else result
        header = data[pos:pos + 5]
        if header[0] != _CONTENT_HANDSHAKE:
            if pos == 0:
                return failed("not a TLS handshake record")
            return failed(f"record of type {header[0]} before the ClientHello was complete", "tls")
        if header[1:2] not in (b"", b"\x03") or header[2:3] > b"\x04":
            return failed("not a TLS record version", None if pos == 0 else "tls")
        if len(header) < 5:
            break
        length = header[3] << 8 | header[4]
        if length == 0 or length > _MAX_RECORD:
            return failed(f"bad TLS record length {length}", "tls")
        hs += data[pos + 5:pos + 5 + length]
        pos += 5 + length
        if len(hs) >= 4 and len(hs) >= 4 + int.from_bytes(hs[1:4]):
            break  # the whole ClientHello is in; whatever follows is not ours to judge
    return sni_from_handshake(bytes(hs), "tls")


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
        return failed(f"internal error: {type(e).__name__}")
