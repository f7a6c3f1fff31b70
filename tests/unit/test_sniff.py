"""The domain sniffers: TLS SNI, HTTP Host and QUIC Initial SNI, on real bytes and on garbage.

TLS ClientHellos come from Python's ssl module (OpenSSL); QUIC packets are the
RFC 9001 / RFC 9369 test vectors, and Initials this file encrypts itself with
a key schedule written independently of the module's (cryptography's HKDF,
checked against the RFC's keys and packet).
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import re
import ssl
import time
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daetui.sniff import (
    MAX_HTTP_FIELDS,
    MAX_HTTP_HEAD,
    MAX_HTTP_LINE,
    MAX_TLS_EXTENSIONS,
    MAX_TLS_RECORDS,
    SniffResult,
    sniff,
    sniff_http_host,
    sniff_quic_datagrams,
    sniff_quic_sni,
    sniff_tls_sni,
)
from daetui.sniff import http as sniff_http
from daetui.sniff import quic as sniff_quic
from daetui.sniff import tls as sniff_tls

HOST = "www.example.test"


def check(result: SniffResult) -> SniffResult:
    """The invariants every result keeps, whatever the input."""
    assert isinstance(result, SniffResult)
    assert (result.name is not None) + result.need_more + (result.error is not None) == 1, result
    assert not (result.error or "").startswith("internal error"), result
    assert result.protocol in (None, "tls", "http", "quic")
    if result.name is not None:
        assert result.protocol is not None
        if result.is_ip:
            assert str(ipaddress.ip_address(result.name)) == result.name
        else:
            assert len(result.name) <= 253
            assert re.fullmatch(r"(?:[a-z0-9-]{1,63}\.)*[a-z0-9-]{1,63}", result.name), result
    return result


def named(result: SniffResult, name: str, protocol: str) -> None:
    check(result)
    assert (result.name, result.protocol) == (name, protocol), result


def failed(result: SniffResult, reason: str = "", protocol: str | None = "") -> None:
    """`result` is an error mentioning `reason` (and of `protocol` unless left as "")."""
    check(result)
    assert result.error is not None, result
    assert reason.lower() in result.error.lower(), result
    if protocol != "":
        assert result.protocol == protocol, result


# --- TLS: real ClientHellos from OpenSSL -------------------------------------------------------------------------


@functools.cache
def openssl_client_hello(server_hostname: str = HOST) -> bytes:
    """The first flight of Python's ssl client: one TLS record holding a ClientHello."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    data = outgoing.read()
    assert data[0] == 22 and len(data) == 5 + int.from_bytes(data[3:5])
    return data


def handshake_of(record_bytes: bytes) -> bytes:
    """The handshake message of a single-record ClientHello."""
    return record_bytes[5:]


def records(hs: bytes, *cuts: int, version: bytes = b"\x03\x01") -> bytes:
    """`hs` framed as TLS handshake records, cut at the given offsets."""
    bounds = [0, *cuts, len(hs)]
    return b"".join(record(hs[a:b], version=version) for a, b in itertools.pairwise(bounds))


def sni_end(data: bytes, name: str = HOST) -> int:
    """The length of the shortest prefix of `data` that holds the whole host name."""
    return data.index(name.encode()) + len(name)


def test_tls_real_client_hello() -> None:
    data = openssl_client_hello()
    named(sniff_tls_sni(data), HOST, "tls")
    named(sniff(data, "tcp"), HOST, "tls")
    # Bytes after the ClientHello (early data, a second flight) are not judged.
    named(sniff_tls_sni(data + b"\x17\x03\x03\x00\x05hello"), HOST, "tls")
    named(sniff_tls_sni(bytearray(data)), HOST, "tls")


def test_tls_every_prefix() -> None:
    data = openssl_client_hello()
    end = sni_end(data)
    for k in range(len(data) + 1):
        result = check(sniff_tls_sni(data[:k]))
        if k < end:
            assert result.need_more, (k, result)
            assert result.protocol == ("tls" if k else None)
        else:
            assert result.name == HOST, (k, result)
        assert sniff(data[:k], "tcp") == result


def test_tls_hello_split_across_two_records() -> None:
    hs = handshake_of(openssl_client_hello())
    for cut in range(1, len(hs)):
        named(sniff_tls_sni(records(hs, cut)), HOST, "tls")
    # Split before the name: the first record alone is not enough, every prefix of both is consistent.
    cut = sni_end(hs) - 8
    two = records(hs, cut)
    assert sniff_tls_sni(two[:5 + cut]).need_more
    end = sni_end(hs) + 10  # the name is cut by the second record's header
    for k in range(len(two) + 1):
        result = check(sniff_tls_sni(two[:k]))
        assert (result.name == HOST) if k >= end else result.need_more, (k, result)


def test_tls_hello_in_many_small_records() -> None:
    hs = handshake_of(openssl_client_hello())
    named(sniff_tls_sni(records(hs, *range(7, len(hs), 7))), HOST, "tls")
    named(sniff_tls_sni(records(hs, *range(1, len(hs)))), HOST, "tls")  # one byte per record


def test_tls_other_server_names() -> None:
    named(sniff_tls_sni(openssl_client_hello("xn--bcher-kva.example")), "xn--bcher-kva.example", "tls")
    named(sniff_tls_sni(openssl_client_hello("a-b.c0.example")), "a-b.c0.example", "tls")


# --- TLS: hand-made ClientHellos, to say exactly what is wrong ---------------------------------------------------


def u8(n: int) -> bytes:
    return n.to_bytes(1)


def u16(n: int) -> bytes:
    return n.to_bytes(2)


def vec8(b: bytes) -> bytes:
    return u8(len(b)) + b


def vec16(b: bytes) -> bytes:
    return u16(len(b)) + b


def record(fragment: bytes, content_type: int = 22, version: bytes = b"\x03\x01") -> bytes:
    return u8(content_type) + version + vec16(fragment)


def ext(ext_type: int, data: bytes) -> bytes:
    return u16(ext_type) + vec16(data)


def sni_ext(*names: bytes, name_type: int = 0) -> bytes:
    return ext(0, vec16(b"".join(u8(name_type) + vec16(n) for n in names)))


SUPPORTED_GROUPS = ext(10, vec16(b"\x00\x1d"))


def hello_body(extensions: bytes | None, *, session_id: bytes = bytes(32), suites: bytes = b"\x13\x01\x13\x02",
               compression: bytes = b"\x00", version: bytes = b"\x03\x03") -> bytes:
    body = version + bytes(range(32)) + vec8(session_id) + vec16(suites) + vec8(compression)
    return body if extensions is None else body + vec16(extensions)


def handshake(body: bytes, msg_type: int = 1) -> bytes:
    return u8(msg_type) + len(body).to_bytes(3) + body


def hello(*names: bytes, extensions: bytes | None = None, **kw: bytes) -> bytes:
    """A ClientHello record naming `names` (default HOST), or with exactly `extensions`."""
    if extensions is None:
        extensions = SUPPORTED_GROUPS + sni_ext(*(names or (HOST.encode(),))) + ext(43, b"\x02\x03\x04")
    return record(handshake(hello_body(extensions, **kw)))


def test_tls_hand_made_hello() -> None:
    named(sniff_tls_sni(hello()), HOST, "tls")
    named(sniff_tls_sni(hello(session_id=b"")), HOST, "tls")
    named(sniff_tls_sni(hello(version=b"\x03\x01")), HOST, "tls")


@pytest.mark.parametrize(("raw", "expected"), [
    (b"WWW.Example.TEST", HOST),
    (b"www.example.test.", HOST),  # the root's dot goes
    (b"localhost", "localhost"),
    (b"xn--n3h.example", "xn--n3h.example"),  # punycode stays punycode
    (b"-odd-.example", "-odd-.example"),  # real names break the hyphen rule; harmless
    (b"a" * 63 + b".example", "a" * 63 + ".example"),
    (b".".join([b"a" * 63] * 3 + [b"b" * 61]), ".".join(["a" * 63] * 3 + ["b" * 61])),  # 253
    # IP literals (forbidden by RFC 6066, sent anyway) come back canonical.
    (b"192.0.2.1", "192.0.2.1"),
    (b"2001:DB8:0::1", "2001:db8::1"),
])
def test_tls_name_normalised(raw: bytes, expected: str) -> None:
    result = sniff_tls_sni(hello(raw))
    named(result, expected, "tls")
    assert result.is_ip == expected[-1].isdigit() or ":" in expected


@pytest.mark.parametrize(("raw", "reason"), [
    (b"", "empty"),
    (b"a" * 64 + b".example", "invalid host name"),  # label over 63
    (b".".join([b"a" * 63] * 3 + [b"b" * 62]), "invalid host name"),  # 254
    (b"caf\xc3\xa9.example", "non-ascii"),
    (b"\xff", "non-ascii"),
    (b"under_score.example", "invalid host name"),
    (b"sp ace.example", "invalid host name"),
    (b"nul\x00.example", "invalid host name"),
    (b"a..b", "invalid host name"),
    (b".", "invalid host name"),
    (b"example.com..", "invalid host name"),
    (b"127.1", "numeric"),
    (b"010.0.0.1", "numeric"),
    (b"1.2.3.256", "numeric"),
    (b"fe80::1%eth0", "zone"),
    (b"1:2:3", "ipv6"),
    (b"[::1]", "invalid"),
])
def test_tls_bad_names(raw: bytes, reason: str) -> None:
    failed(sniff_tls_sni(hello(raw)), reason, "tls")


def ext_block(*exts: bytes) -> bytes:
    return b"".join(exts)


@pytest.mark.parametrize(("data", "reason"), [
    # Not TLS at all, or another record type.
    (record(handshake(hello_body(SUPPORTED_GROUPS)), content_type=23), "not a TLS handshake record"),
    (b"\x15\x03\x03\x00\x02\x02\x28", "not a TLS handshake record"),
    (b"\x16\x02", "version"),
    (b"\x16\x03\x05", "version"),
    (b"\x16\x03\x01\x00\x00", "record length 0"),
    (b"\x16\x03\x01\x40\x01" + bytes(100), "record length"),
    # Another handshake message, or absurd lengths.
    (record(handshake(hello_body(SUPPORTED_GROUPS), msg_type=2)), "not a ClientHello"),
    (record(b"\x01\xff\xff\xff" + bytes(100)), "limit"),
    (record(handshake(hello_body(SUPPORTED_GROUPS, version=b"\x02\x00"))), "version"),
    (hello(session_id=bytes(33)), "session id"),
    (hello(suites=b"\x13\x01\x13"), "cipher_suites"),
    (hello(suites=b""), "cipher_suites"),
    (hello(compression=b""), "compression"),
    # Nested lengths that disagree.
    (hello(extensions=u16(10) + u16(100) + bytes(4)), "extension runs past"),
    (hello(extensions=ext(0, u16(50) + u8(0) + vec16(b"a.b"))), "server_name list runs past"),
    (hello(extensions=ext(0, u16(2) + u8(0) + vec16(b"a.b"))), "trailing bytes after server_name list"),
    (hello(extensions=ext(0, vec16(u8(0) + u16(40) + b"a.b"))), "host name runs past"),
    (hello(extensions=ext(0, vec16(u8(0) + vec16(b"a.b")) + b"xx")), "trailing bytes"),
    (record(handshake(hello_body(sni_ext(b"a.b"))[:-3])), "extensions runs past"),  # handshake length too short
    (record(handshake(hello_body(sni_ext(b"a.b")) + b"junk")), "trailing bytes after extensions"),
    # The server_name extension itself.
    (hello(extensions=ext(0, b"")), "server_name list length runs past"),
    (hello(extensions=ext(0, vec16(b""))), "empty server_name list"),
    (hello(extensions=sni_ext(b"a.example", name_type=1)), "unknown server name type"),
    (hello(b"a.example", b"b.example"), "more than one host_name"),
    (hello(extensions=sni_ext(b"a.example") + sni_ext(b"b.example")), "duplicate extension"),
    (hello(extensions=SUPPORTED_GROUPS + SUPPORTED_GROUPS + sni_ext(b"a.example")), "duplicate extension"),
    # Well-formed, but no name.
    (hello(extensions=SUPPORTED_GROUPS), "without server_name"),
    (hello(extensions=b""), "without server_name"),
    (record(handshake(hello_body(None))), "without server_name"),
])
def test_tls_malformed(data: bytes, reason: str) -> None:
    failed(sniff_tls_sni(data), reason)


def test_tls_wrong_record_type_mid_hello() -> None:
    hs = handshake_of(openssl_client_hello())
    data = record(hs[:40]) + record(b"\x02\x28", content_type=21) + record(hs[40:])
    failed(sniff_tls_sni(data), "record of type 21", "tls")
    failed(sniff_tls_sni(record(hs[:40]) + b"\x16\x02"), "version", "tls")


def test_tls_lengths_past_the_data_wait_for_more() -> None:
    # Every declared length is consistent, the bytes just are not all there yet.
    data = hello(b"a" * 60 + b".example")
    assert sniff_tls_sni(data[:-20]).need_more
    # A record announcing more than one record's worth of ClientHello: the rest comes in the next record.
    hs = handshake_of(data)
    assert sniff_tls_sni(record(hs[:30])).need_more


def test_tls_limits() -> None:
    many = b"".join(ext(0x1000 + i, b"") for i in range(MAX_TLS_EXTENSIONS))
    failed(sniff_tls_sni(hello(extensions=many + sni_ext(b"a.example"))), "too many extensions", "tls")
    named(sniff_tls_sni(hello(extensions=many[4:] + sni_ext(b"a.example"))), "a.example", "tls")
    hs = handshake_of(openssl_client_hello())
    # Fragmented on purpose, one byte a record: fine while the name comes within the limit.
    assert sni_end(hs) < MAX_TLS_RECORDS
    named(sniff_tls_sni(records(hs, *range(1, len(hs)))), HOST, "tls")
    padded = hello(extensions=ext(0x1234, bytes(MAX_TLS_RECORDS)) + sni_ext(b"a.example"))[5:]
    failed(sniff_tls_sni(records(padded, *range(1, len(padded)))), "too many records", "tls")


def test_tls_not_tls() -> None:
    failed(sniff_tls_sni(b"GET / HTTP/1.1\r\n"), "not a TLS", None)
    failed(sniff_tls_sni(b"\x80\x2e\x01\x03\x01"), "not a TLS", None)  # SSLv2-style hello: no SNI there
    assert sniff_tls_sni(b"").need_more


# --- HTTP --------------------------------------------------------------------------------------------------------

REQUEST = (b"GET /index.html?q=1 HTTP/1.1\r\nUser-Agent: curl/8.5.0\r\nHost: www.example.test\r\n"
           b"Accept: */*\r\n\r\n")


@pytest.mark.parametrize(("data", "expected"), [
    (REQUEST, HOST),
    (b"GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n", HOST),
    (b"POST /api HTTP/1.0\r\nhOsT:WWW.Example.Test\r\nContent-Length: 2\r\n\r\nhi", HOST),
    (b"GET / HTTP/1.1\nHost: www.example.test\n\n", HOST),  # bare LF
    (b"GET / HTTP/1.1\r\nHost: \t www.example.test \t\r\n\r\n", HOST),
    (b"GET / HTTP/1.1\r\nHost: www.example.test:8080\r\n\r\n", HOST),
    (b"GET / HTTP/1.1\r\nHost: www.example.test:\r\n\r\n", HOST),  # empty port is legal
    (b"GET / HTTP/1.1\r\nHost: www.example.test.:80\r\n\r\n", HOST),
    (b"OPTIONS * HTTP/1.1\r\nHost: www.example.test\r\n\r\n", HOST),
    (b"CONNECT www.example.test:443 HTTP/1.1\r\nHost: www.example.test:443\r\n\r\n", HOST),
    (b"GET http://other.example/ HTTP/1.1\r\nHost: www.example.test\r\n\r\n", HOST),
    (b"GET / HTTP/1.1\r\nHost: 192.0.2.7:80\r\n\r\n", "192.0.2.7"),
    (b"GET / HTTP/1.1\r\nHost: [2001:DB8::7]:8080\r\n\r\n", "2001:db8::7"),
    (b"GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n", "::1"),
    (b"GET / HTTP/1.1\r\nHost: xn--bcher-kva.example\r\n\r\n", "xn--bcher-kva.example"),
    # Host found before the head ends: good enough.
    (b"GET / HTTP/1.1\r\nHost: www.example.test\r\nAccept: */*\r\n", HOST),
    (b"GET / HTTP/1.1\r\nHost: www.example.test\r\nX-Big: " + b"a" * (2 * MAX_HTTP_HEAD), HOST),
])
def test_http_host(data: bytes, expected: str) -> None:
    result = sniff_http_host(data)
    named(result, expected, "http")
    assert result.is_ip == (expected[-1].isdigit() or ":" in expected)
    named(sniff(data, "tcp"), expected, "http")


def test_http_every_prefix() -> None:
    end = REQUEST.index(b"\n", REQUEST.index(b"Host:")) + 1
    for k in range(len(REQUEST) + 1):
        result = check(sniff_http_host(REQUEST[:k]))
        if k < end:
            assert result.need_more, (k, result)
        else:
            assert result.name == HOST, (k, result)
        assert sniff(REQUEST[:k], "tcp") == result


@pytest.mark.parametrize(("data", "reason", "protocol"), [
    (b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", "without Host", "http"),
    (b"GET / HTTP/1.0\r\n\r\n", "without Host", "http"),
    (b"GET /\r\n", "HTTP/0.9", "http"),
    (b"GET /index.html\n", "HTTP/0.9", "http"),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "not HTTP/1.x", "http"),
    (b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", "more than one Host", "http"),
    (b"GET / HTTP/1.1\r\nHost: a.example\r\nhost: a.example\r\n", "more than one Host", "http"),
    (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", "empty Host", "http"),
    (b"GET / HTTP/1.1\r\nHost: exa mple.example\r\n\r\n", "invalid host name", "http"),
    (b"GET / HTTP/1.1\r\nHost: user@www.example.test\r\n\r\n", "malformed Host", "http"),
    (b"GET / HTTP/1.1\r\nHost: www.example.test:http\r\n\r\n", "port", "http"),
    (b"GET / HTTP/1.1\r\nHost: www.example.test:99999\r\n\r\n", "port", "http"),
    (b"GET / HTTP/1.1\r\nHost: www.example.test:80:80\r\n\r\n", "malformed Host", "http"),
    (b"GET / HTTP/1.1\r\nHost: ::1\r\n\r\n", "malformed Host", "http"),
    (b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", "IPv6", "http"),
    (b"GET / HTTP/1.1\r\nHost: []\r\n\r\n", "IPv6", "http"),
    (b"GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n", "IPv6", "http"),
    (b"GET / HTTP/1.1\r\nHost: [192.0.2.1]\r\n\r\n", "IPv6", "http"),
    (b"GET / HTTP/1.1\r\nHost: [fe80::1%25eth0]\r\n\r\n", "zone", "http"),
    (b"GET / HTTP/1.1\r\nHost: caf\xc3\xa9.example\r\n\r\n", "non-ASCII", "http"),
    (b"GET / HTTP/1.1\r\nHost: a..example\r\n\r\n", "invalid host name", "http"),
    (b"GET / HTTP/1.1\r\nHost: 127.1\r\n\r\n", "numeric", "http"),
    (b"GET / HTTP/1.1\r\nX-Folded: a\r\n b\r\nHost: a.example\r\n\r\n", "folding", "http"),
    (b"GET / HTTP/1.1\r\nHost : a.example\r\n\r\n", "malformed header", "http"),
    (b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n", "malformed header", "http"),
    (b"GET / HTTP/1.1\r\nX: a\x00b\r\nHost: a.example\r\n\r\n", "malformed header", "http"),
    (b"GET / HTTP/1.1\r\nX: a\rb\r\nHost: a.example\r\n\r\n", "malformed header", "http"),
    (b"GET / HTTP/1.1\r\nX: a\x00", "malformed header", "http"),  # bad even before the line ends
    (b"GET / HTTP/1.1\r\n\x01", "malformed header", "http"),
    # Too long, in one line or in all: the sniffer gives up instead of buffering forever.
    (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * MAX_HTTP_LINE + b"\r\nHost: a.example\r\n\r\n", "too long", "http"),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * MAX_HTTP_LINE, "too long", "http"),
    (b"GET / HTTP/1.1\r\n" + (b"X-Many: " + b"a" * 400 + b"\r\n") * (MAX_HTTP_HEAD // 400), "too long", "http"),
    (b"GET /" + b"a" * MAX_HTTP_LINE + b" HTTP/1.1\r\n", "too long", "http"),
    # Not HTTP.
    (b"get / HTTP/1.1\r\nHost: a.example\r\n\r\n", "not an HTTP request", None),
    (b"GET  / HTTP/1.1\r\n", "not an HTTP request", None),
    (b"GET / HTTP/1.1 \r\n", "not an HTTP request", None),
    (b"GET / HTTP/1.1\r\r\n", "not an HTTP request", None),
    (b"SSH-2.0-OpenSSH_9.6\r\n", "not an HTTP request", None),
    (b"\x00\x01\x02", "not an HTTP request", None),
    (b"GET /\xff HTTP/1.1\r\n", "not an HTTP request", None),
    (b"GET / HTTPS", "not an HTTP request", None),
    (b"GET / HTTP/1.1x", "not an HTTP request", None),
    (b"GET / HTTP/1.1 x", "not an HTTP request", None),
    (b"GET \x01", "not an HTTP request", None),
    (b" GET", "not an HTTP request", None),
    (b"GET  /", "not an HTTP request", None),
])
def test_http_bad(data: bytes, reason: str, protocol: str | None) -> None:
    failed(sniff_http_host(data), reason, protocol)


def test_http_limits() -> None:
    filler = b"X-A: b\r\n" * MAX_HTTP_FIELDS
    failed(sniff_http_host(b"GET / HTTP/1.1\r\n" + filler + b"Host: a.example\r\n\r\n"), "too many header fields")
    named(sniff_http_host(b"GET / HTTP/1.1\r\n" + filler[8:] + b"Host: a.example\r\n\r\n"), "a.example", "http")
    named(sniff_http_host(b"GET / HTTP/1.1\r\nHost: a.example\r\n" + filler * 2), "a.example", "http")


def test_http_whitespace_in_values_is_linear() -> None:
    # A regex over the whole header line backtracked quadratically on inner whitespace (3 s for this).
    data = b"GET / HTTP/1.1\r\n" + (b"X: a" + b" \t" * 4000 + b"b\r\n") + b"Host: a.example\r\n\r\n"
    start = time.perf_counter()
    named(sniff_http_host(data), "a.example", "http")
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("data", [b"", b"G", b"GET", b"GET ", b"GET /", b"GET / H", b"GET / HTTP/1.", b"GET / HTTP/1.1",
                                  b"GET / HTTP/1.1\r", b"GET / HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHo",
                                  b"GET / HTTP/1.1\r\nHost", b"GET / HTTP/1.1\r\nHost: a.exa",
                                  b"GET / HTTP/1.1\r\nHost: a.example\r"])
def test_http_prefixes_wait(data: bytes) -> None:
    result = check(sniff_http_host(data))
    assert result.need_more, result


# --- QUIC: the RFC test vectors -----------------------------------------------------------------------------------

RFC9001_DCID = bytes.fromhex("8394c8f03e515708")

# RFC 9001 A.2: the client's Initial packet, protected, as sent.
RFC9001_CLIENT_INITIAL = bytes.fromhex(
    "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
    "d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399"
    "1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c"
    "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212"
    "30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5"
    "457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208"
    "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec"
    "4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3"
    "485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db"
    "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c"
    "7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8"
    "9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556"
    "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74"
    "68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a"
    "c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00"
    "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632"
    "291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964"
    "25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd"
    "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff"
    "ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198"
    "e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd"
    "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73"
    "203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f"
    "cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e"
    "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade"
    "a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047"
    "90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2"
    "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4"
    "40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0"
    "6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e"
    "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0"
    "be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400"
    "54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab"
    "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9"
    "f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4"
    "056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064"
    "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
    "e221af44860018ab0856972e194cd934"
)

# RFC 9001 A.2: the unprotected payload of that packet, a CRYPTO frame with the ClientHello
# for example.com, then 917 bytes of PADDING (packet number 2).
RFC9001_CRYPTO_FRAME = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff"
)

# RFC 9369 A.2: the same Initial in QUIC version 2.
RFC9369_CLIENT_INITIAL = bytes.fromhex(
    "d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485"
    "dd04de806071bf03dceebfa162e75d6c96058bdbfb127cdfcbf903388e99ad04"
    "9f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d"
    "250f2c4f0e0202b70785b7946e992e58a59ac52dea6774d4f03b55545243cf1a"
    "12834e3f249a78d395e0d18f4d766004f1a2674802a747eaa901c3f10cda5500"
    "cb9122faa9f1df66c392079a1b40f0de1c6054196a11cbea40afb6ef5253cd68"
    "18f6625efce3b6def6ba7e4b37a40f7732e093daa7d52190935b8da58976ff33"
    "12ae50b187c1433c0f028edcc4c2838b6a9bfc226ca4b4530e7a4ccee1bfa2a3"
    "d396ae5a3fb512384b2fdd851f784a65e03f2c4fbe11a53c7777c023462239dd"
    "6f7521a3f6c7d5dd3ec9b3f233773d4b46d23cc375eb198c63301c21801f6520"
    "bcfb7966fc49b393f0061d974a2706df8c4a9449f11d7f3d2dcbb90c6b877045"
    "636e7c0c0fe4eb0f697545460c806910d2c355f1d253bc9d2452aaa549e27a1f"
    "ac7cf4ed77f322e8fa894b6a83810a34b361901751a6f5eb65a0326e07de7c12"
    "16ccce2d0193f958bb3850a833f7ae432b65bc5a53975c155aa4bcb4f7b2c4e5"
    "4df16efaf6ddea94e2c50b4cd1dfe06017e0e9d02900cffe1935e0491d77ffb4"
    "fdf85290fdd893d577b1131a610ef6a5c32b2ee0293617a37cbb08b847741c3b"
    "8017c25ca9052ca1079d8b78aebd47876d330a30f6a8c6d61dd1ab5589329de7"
    "14d19d61370f8149748c72f132f0fc99f34d766c6938597040d8f9e2bb522ff9"
    "9c63a344d6a2ae8aa8e51b7b90a4a806105fcbca31506c446151adfeceb51b91"
    "abfe43960977c87471cf9ad4074d30e10d6a7f03c63bd5d4317f68ff325ba3bd"
    "80bf4dc8b52a0ba031758022eb025cdd770b44d6d6cf0670f4e990b22347a7db"
    "848265e3e5eb72dfe8299ad7481a408322cac55786e52f633b2fb6b614eaed18"
    "d703dd84045a274ae8bfa73379661388d6991fe39b0d93debb41700b41f90a15"
    "c4d526250235ddcd6776fc77bc97e7a417ebcb31600d01e57f32162a8560cacc"
    "7e27a096d37a1a86952ec71bd89a3e9a30a2a26162984d7740f81193e8238e61"
    "f6b5b984d4d3dfa033c1bb7e4f0037febf406d91c0dccf32acf423cfa1e70710"
    "10d3f270121b493ce85054ef58bada42310138fe081adb04e2bd901f2f13458b"
    "3d6758158197107c14ebb193230cd1157380aa79cae1374a7c1e5bbcb80ee23e"
    "06ebfde206bfb0fcbc0edc4ebec309661bdd908d532eb0c6adc38b7ca7331dce"
    "8dfce39ab71e7c32d318d136b6100671a1ae6a6600e3899f31f0eed19e3417d1"
    "34b90c9058f8632c798d4490da4987307cba922d61c39805d072b589bd52fdf1"
    "e86215c2d54e6670e07383a27bbffb5addf47d66aa85a0c6f9f32e59d85a44dd"
    "5d3b22dc2be80919b490437ae4f36a0ae55edf1d0b5cb4e9a3ecabee93dfc6e3"
    "8d209d0fa6536d27a5d6fbb17641cde27525d61093f1b28072d111b2b4ae5f89"
    "d5974ee12e5cf7d5da4d6a31123041f33e61407e76cffcdcfd7e19ba58cf4b53"
    "6f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19"
    "9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96b"
    "a18b2faa745b6fe189cf772a9f84cbfc"
)

V1 = 0x00000001
V2 = 0x6B3343CF


def test_quic_rfc9001_client_initial() -> None:
    assert len(RFC9001_CLIENT_INITIAL) == 1200
    named(sniff_quic_sni(RFC9001_CLIENT_INITIAL), "example.com", "quic")
    named(sniff(RFC9001_CLIENT_INITIAL, "udp"), "example.com", "quic")


def test_quic_rfc9369_client_initial() -> None:
    assert len(RFC9369_CLIENT_INITIAL) == 1200
    named(sniff_quic_sni(RFC9369_CLIENT_INITIAL), "example.com", "quic")


# --- QUIC: Initials of our own ------------------------------------------------------------------------------------
# The key schedule below is this file's own (cryptography's HKDF), checked against RFC 9001 A.1
# and A.2, so the sniffer's decryption is tested against an independent encryption.

_SALTS = {
    V1: (bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"), b"quic", 0),
    V2: (bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"), b"quicv2", 1),
}


def expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    return HKDFExpand(hashes.SHA256(), length, u16(length) + vec8(full) + b"\x00").derive(secret)


def client_initial_keys(dcid: bytes, version: int = V1) -> tuple[bytes, bytes, bytes]:
    salt, prefix, _ = _SALTS[version]
    extract = crypto_hmac.HMAC(salt, hashes.SHA256())
    extract.update(dcid)
    secret = expand_label(extract.finalize(), b"client in", 32)
    return (expand_label(secret, prefix + b" key", 16), expand_label(secret, prefix + b" iv", 12),
            expand_label(secret, prefix + b" hp", 16))


def varint(v: int) -> bytes:
    for n, tag in ((1, 0), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if v < 1 << (8 * n - 2):
            return (v | tag << (8 * n - 8)).to_bytes(n)
    raise ValueError(v)


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def initial(payload: bytes, *, dcid: bytes = RFC9001_DCID, scid: bytes = b"", version: int = V1, pn: int = 0,
            pn_len: int = 4, token: bytes = b"", size: int | None = 1200, packet_type: int | None = None,
            reserved: int = 0) -> bytes:
    """A protected client Initial packet carrying `payload`, PADDING-filled to `size` bytes."""
    key, iv, hp = client_initial_keys(dcid, version)
    if packet_type is None:
        packet_type = _SALTS[version][2]
    first = 0xC0 | packet_type << 4 | reserved << 2 | (pn_len - 1)
    head = u8(first) + version.to_bytes(4) + vec8(dcid) + vec8(scid) + varint(len(token)) + token
    if size is not None:
        payload += bytes(max(0, size - (len(head) + 2 + pn_len + len(payload) + 16)))
    header = head + (0x4000 | pn_len + len(payload) + 16).to_bytes(2) + pn.to_bytes(pn_len)
    nonce = (int.from_bytes(iv) ^ pn).to_bytes(12)
    packet = bytearray(header + AESGCM(key).encrypt(nonce, payload, header))
    pn_offset = len(header) - pn_len
    encryptor = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = encryptor.update(bytes(packet[pn_offset + 4:pn_offset + 20])) + encryptor.finalize()
    packet[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        packet[pn_offset + i] ^= mask[1 + i]
    return bytes(packet)


def test_quic_own_key_schedule_matches_rfc9001() -> None:
    key, iv, hp = client_initial_keys(RFC9001_DCID)
    assert key.hex() == "1f369613dd76d5467730efcbe3b1a22d"
    assert iv.hex() == "fa044b2f42a3fd3b46fb255c"
    assert hp.hex() == "9f50449e04a0e810283a1e9933adedd2"
    assert initial(RFC9001_CRYPTO_FRAME, pn=2) == RFC9001_CLIENT_INITIAL
    assert initial(RFC9001_CRYPTO_FRAME, pn=2, version=V2) == RFC9369_CLIENT_INITIAL


def tls_handshake(name: str = HOST) -> bytes:
    return handshake_of(openssl_client_hello(name))


def test_quic_own_initial() -> None:
    hs = tls_handshake()
    named(sniff_quic_sni(initial(crypto_frame(0, hs))), HOST, "quic")
    named(sniff_quic_sni(initial(crypto_frame(0, hs), version=V2)), HOST, "quic")
    # Other connection id sizes, a token, a source id, a 1-byte packet number, no padding.
    named(sniff_quic_sni(initial(crypto_frame(0, hs), dcid=bytes(range(20)), scid=b"\x01" * 20,
                                 token=b"t" * 70, pn=7, pn_len=1, size=None)), HOST, "quic")
    named(sniff_quic_sni(initial(crypto_frame(0, hs), dcid=b"", pn_len=2)), HOST, "quic")


def test_quic_crypto_frames_out_of_order_with_padding_and_ping() -> None:
    hs = tls_handshake()
    cut = sni_end(hs) - 5
    payload = crypto_frame(cut, hs[cut:]) + bytes(7) + b"\x01" + b"\x01\x00\x00" + crypto_frame(0, hs[:cut])
    named(sniff_quic_sni(initial(payload)), HOST, "quic")
    # Many small frames, shuffled, some repeated and overlapping.
    pieces = [crypto_frame(off, hs[off:off + 50]) for off in range(0, len(hs), 50)]
    payload = b"\x01".join(pieces[1::2] + pieces[::-2]) + crypto_frame(10, hs[10:200]) + crypto_frame(0, hs[:20])
    named(sniff_quic_sni(initial(payload)), HOST, "quic")


def test_quic_ack_and_connection_close_frames_are_skipped() -> None:
    hs = tls_handshake()
    ack = b"\x02" + varint(5) + varint(100) + varint(1) + varint(2) + varint(1) + varint(1)
    ack_ecn = b"\x03" + varint(5) + varint(0) + varint(0) + varint(5) + varint(1) + varint(2) + varint(3)
    close = b"\x1c" + varint(0x0A) + varint(0) + vec8(b"bye")
    named(sniff_quic_sni(initial(ack + ack_ecn + crypto_frame(0, hs) + close)), HOST, "quic")


def test_quic_hello_split_over_two_packets() -> None:
    hs = tls_handshake()
    cut = sni_end(hs) - 5
    first = initial(crypto_frame(0, hs[:cut]), pn=0, size=None)
    second = initial(crypto_frame(cut, hs[cut:]), pn=1, size=None)
    # Coalesced in one datagram, in either order.
    named(sniff_quic_sni(first + second), HOST, "quic")
    named(sniff_quic_sni(second + first), HOST, "quic")
    # In two datagrams (as Chrome sends a post-quantum ClientHello): the first alone asks for more.
    d1, d2 = initial(crypto_frame(0, hs[:cut]), pn=0), initial(crypto_frame(cut, hs[cut:]), pn=1)
    result = check(sniff_quic_sni(d1))
    assert result.need_more and result.protocol == "quic", result
    assert sniff(d1, "udp") == result
    named(sniff_quic_datagrams([d1, d2]), HOST, "quic")
    named(sniff_quic_datagrams([d2, d1]), HOST, "quic")
    # The second half alone: there is no offset 0 to start from.
    assert check(sniff_quic_sni(d2)).need_more


def test_quic_other_packets_in_the_datagram_are_ignored() -> None:
    hs = tls_handshake()
    packet = initial(crypto_frame(0, hs), size=None)
    other_conn = initial(crypto_frame(0, tls_handshake("other.example")), dcid=b"\x99" * 8, size=None)
    handshake_packet = u8(0xE0) + V1.to_bytes(4) + vec8(RFC9001_DCID) + vec8(b"") + varint(20) + bytes(20)
    short_header = b"\x40" + bytes(40)
    for dgram in (packet + bytes(300),  # datagram padding after the packet
                  packet + other_conn,
                  packet + handshake_packet + short_header,
                  packet + packet[:-1],  # a truncated copy
                  packet + bytes([packet[0]]) + b"\x00\x00\x00\x01",
                  packet + RFC9001_CLIENT_INITIAL):  # another DCID: another connection
        named(sniff_quic_sni(dgram), HOST, "quic")
    # A garbled second datagram is skipped too.
    named(sniff_quic_datagrams([packet, b"\xc0garbage", b"", b"\x00" * 50]), HOST, "quic")


def flip(data: bytes, index: int, bit: int = 1) -> bytes:
    out = bytearray(data)
    out[index] ^= bit
    return bytes(out)


@pytest.mark.parametrize(("datagram", "reason"), [
    (b"", "empty"),
    (b"\x40" + bytes(100), "not a QUIC long header"),  # short header
    (RFC9001_CLIENT_INITIAL[:5], "truncated"),
    (RFC9001_CLIENT_INITIAL[:30], "runs past the datagram"),
    (RFC9001_CLIENT_INITIAL[:-1], "runs past the datagram"),
    (flip(RFC9001_CLIENT_INITIAL, 100), "fails authentication"),
    (flip(RFC9001_CLIENT_INITIAL, len(RFC9001_CLIENT_INITIAL) - 1), "fails authentication"),
    (flip(RFC9001_CLIENT_INITIAL, 8), "fails authentication"),  # the DCID, hence the keys
    (flip(RFC9001_CLIENT_INITIAL, 0, 0x04), "fails authentication"),  # protected bits, hence the AAD
    (flip(RFC9001_CLIENT_INITIAL, 4, 0x02), "unsupported QUIC version 0x00000003"),
    (b"\xc0\x00\x00\x00\x00\x08" + bytes(30), "version negotiation"),
    (b"\xc0\xff\x00\x00\x1a\x08" + bytes(30), "unsupported QUIC version"),  # draft-26: no salt known
    (b"\xc0\x00\x00\x00\x01\x15" + bytes(40), "longer than 20"),
    (b"\xc0\x00\x00\x00\x01\x08" + bytes(8) + b"\x15" + bytes(40), "source connection id"),
    (b"\xc0\x00\x00\x00\x01\x08" + bytes(8), "source connection id"),
    (b"\xc0\x00\x00\x00\x01\x00\x00\x80", "truncated token length"),
    (b"\xc0\x00\x00\x00\x01\x00\x00\x05abcde", "truncated packet length"),
    (b"\xc0\x00\x00\x00\x01\x00\x00\x00\x05abcde", "too short for its header protection sample"),
    (b"\xf0\x00\x00\x00\x01\x00\x00" + bytes(30), "Retry"),
    (b"\xd0\x00\x00\x00\x01\x00\x00\x20" + bytes(32), "not a QUIC Initial"),  # 0-RTT
    (b"\xc0\x6b\x33\x43\xcf\x00\x00\x20" + bytes(32), "Retry"),  # type 0 is Retry in v2
])
def test_quic_garbage(datagram: bytes, reason: str) -> None:
    failed(sniff_quic_sni(datagram), reason, None)


@pytest.mark.parametrize(("payload", "reason"), [
    (b"\x08\x00\x05hello", "frame type 0x8 not allowed"),  # STREAM
    (b"\x1d\x00\x00", "frame type 0x1d not allowed"),  # application CONNECTION_CLOSE
    (b"\x06\x00\x50" + bytes(10), "CRYPTO frame runs past the packet"),
    (b"\x06\x00", "truncated CRYPTO length"),
    (b"\x02\x00\x00\x7f", "truncated ACK range"),
    (b"\x1c\x00\x00\x40\x50", "CONNECTION_CLOSE reason runs past"),
    (crypto_frame(0, handshake(hello_body(SUPPORTED_GROUPS))), "without server_name"),
    (crypto_frame(0, handshake(hello_body(sni_ext(b"bad_name.example")))), "invalid host name"),
    (crypto_frame(0, b"\x02\x00\x00\x04abcd"), "not a ClientHello"),
])
def test_quic_bad_payload(payload: bytes, reason: str) -> None:
    failed(sniff_quic_sni(initial(payload, size=None)), reason, None if "frame" in reason or "runs" in reason
           or "truncated" in reason else "quic")


def test_quic_limits() -> None:
    hs = tls_handshake()
    # Chaos-protection style scattering is fine; thousands of frames are not.
    named(sniff_quic_sni(initial(b"\x00\x01" * 200 + crypto_frame(0, hs), size=None)), HOST, "quic")
    failed(sniff_quic_sni(initial(b"\x00\x01" * 600 + crypto_frame(0, hs), size=None)), "too many frames")
    # Only the first packets of a datagram are looked at.
    pings = [initial(b"\x01", pn=pn, size=None) for pn in range(7)]
    named(sniff_quic_sni(b"".join(pings) + initial(crypto_frame(0, hs), pn=7, size=None)), HOST, "quic")
    pings.append(initial(b"\x01", pn=7, size=None))
    assert check(sniff_quic_sni(b"".join(pings) + initial(crypto_frame(0, hs), pn=8, size=None))).need_more


def test_quic_bad_header_bits_and_empty_payload() -> None:
    hs = tls_handshake()
    failed(sniff_quic_sni(initial(crypto_frame(0, hs), reserved=1)), "reserved", None)
    # Nothing but a tag after the packet number: no frames.
    failed(sniff_quic_sni(initial(b"", size=None, pn_len=4)), "without frames", None)
    # Frames that carry no CRYPTO data: wait for the packet that does.
    assert check(sniff_quic_sni(initial(b"\x01"))).need_more


# --- dispatch -----------------------------------------------------------------------------------------------------


def test_sniff_dispatch() -> None:
    named(sniff(openssl_client_hello(), "tcp"), HOST, "tls")
    named(sniff(REQUEST, "tcp"), HOST, "http")
    named(sniff(RFC9001_CLIENT_INITIAL, "udp"), "example.com", "quic")
    failed(sniff(b"\x00\x01garbage", "tcp"), "neither TLS", None)
    failed(sniff(openssl_client_hello(), "udp"), "", None)
    failed(sniff(REQUEST, "sctp"), "no sniffer", None)
    assert sniff(b"", "tcp").need_more


def test_no_datagrams() -> None:
    failed(sniff_quic_datagrams([]), "no QUIC Initial", None)


@pytest.mark.parametrize(("module", "parser", "public", "data"), [
    (sniff_tls, "_sniff_tls", sniff_tls_sni, b"\x16"),
    (sniff_http, "_sniff_http", sniff_http_host, b"GET"),
    (sniff_quic, "_sniff_quic", sniff_quic_sni, b"\xc0"),
])
def test_parser_bug_is_an_error_not_an_exception(monkeypatch: pytest.MonkeyPatch, module: object, parser: str,
                                                 public: Callable[[bytes], SniffResult], data: bytes) -> None:
    def broken(_: object) -> SniffResult:
        raise IndexError("a bug")

    monkeypatch.setattr(module, parser, broken)
    result = public(data)
    assert result.error == "internal error: IndexError" and not result.need_more and result.name is None


def test_results_are_frozen() -> None:
    result = sniff_tls_sni(openssl_client_hello())
    with pytest.raises(AttributeError):
        result.name = "other"  # type: ignore[misc]


# --- properties: no input makes a sniffer raise --------------------------------------------------------------------
# The public functions catch a stray exception as an "internal error" result; the properties call the
# unguarded parsers so that a bug shows up as the exception it is.

PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BOUNDARY_BYTES = st.sampled_from([0x00, 0x01, 0x02, 0x03, 0x16, 0x20, 0x3F, 0x40, 0x7F, 0x80, 0xC0, 0xFE, 0xFF])


@st.composite
def mutations(draw: st.DrawFn, base: bytes, hot: int = 160) -> bytes:
    """`base` with a few edits, mostly where its headers and lengths are (the first `hot` bytes)."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        i = draw(st.integers(0, min(hot, len(data) - 1)) | st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["set", "flip", "insert", "delete", "truncate", "extend"]))
        if op == "set":
            data[i] = draw(BOUNDARY_BYTES | st.integers(0, 255))
        elif op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[i:]
        else:
            data += draw(st.binary(max_size=64))
    return bytes(data)


def unguarded(kind: str, data: bytes) -> SniffResult:
    """The parser behind each public sniffer, without its last-resort exception guard."""
    if kind == "tls":
        return sniff_tls._sniff_tls(data)
    if kind == "http":
        return sniff_http._sniff_http(data)
    return sniff_quic._sniff_quic([data])


@PROPERTY
@given(st.binary(max_size=2048), st.sampled_from(["tls", "http", "quic"]))
def test_property_random_bytes(data: bytes, kind: str) -> None:
    check(unguarded(kind, data))
    check(sniff(data, "tcp" if kind != "quic" else "udp"))


@PROPERTY
@given(st.binary(max_size=600), st.sampled_from([b"\x16\x03\x01", b"\x16\x03\x03\x02\x00\x01",
                                                 b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"]))
def test_property_tls_random_after_a_valid_start(tail: bytes, head: bytes) -> None:
    check(unguarded("tls", head + tail))


@PROPERTY
@given(mutations(openssl_client_hello()))
def test_property_mutated_tls_records(data: bytes) -> None:
    check(unguarded("tls", data))
    check(sniff_tls_sni(data))


@PROPERTY
@given(mutations(hello()), st.integers(1, 40))
def test_property_mutated_hand_made_hello_in_records(data: bytes, cut: int) -> None:
    hs = data[5:]
    check(unguarded("tls", records(hs, min(cut, len(hs))) if hs else data))


@PROPERTY
@given(mutations(REQUEST, hot=len(REQUEST)))
def test_property_mutated_http(data: bytes) -> None:
    check(unguarded("http", data))
    check(sniff(data, "tcp"))


@PROPERTY
@given(st.text(alphabet="GETPOSHTP/1.0 \r\n:Hhost[]@%.-_exampl0123456789\t\x00é", max_size=120))
def test_property_http_like_text(text: str) -> None:
    check(unguarded("http", text.encode()))


@PROPERTY
@given(mutations(RFC9001_CLIENT_INITIAL, hot=64))
def test_property_mutated_quic_packet(data: bytes) -> None:
    check(unguarded("quic", data))


@PROPERTY
@given(mutations(tls_handshake()), st.sampled_from([V1, V2]))
def test_property_mutated_hello_in_valid_initial(hs: bytes, version: int) -> None:
    # Re-encrypted, so the mutations get past authentication to the ClientHello parser.
    cut = len(hs) // 2
    data = initial(crypto_frame(cut, hs[cut:]) + crypto_frame(0, hs[:cut]), version=version, size=None)
    check(unguarded("quic", data))


@PROPERTY
@given(st.binary(max_size=300) | mutations(b"\x06\x00\x10" + bytes(16) + b"\x02\x01\x00\x01\x00\x1c\x00\x00\x00",
                                           hot=40))
def test_property_random_frames_in_valid_initial(payload: bytes) -> None:
    check(unguarded("quic", initial(payload, size=None)))


@PROPERTY
@given(st.lists(st.binary(max_size=200) | mutations(RFC9001_CLIENT_INITIAL, hot=64), max_size=4))
def test_property_quic_datagram_lists(datagrams: list[bytes]) -> None:
    check(sniff_quic._sniff_quic([RFC9001_CLIENT_INITIAL[:1200], *datagrams]))
    check(sniff_quic_datagrams(datagrams))
