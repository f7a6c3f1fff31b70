"""daetui/net/tls13.py: the key schedule, the record layer after the handshake, and handshakes with OpenSSL.

The record layer is driven by hand from the server's side (a Direction with
the same secrets), so every record boundary, padding, alert and KeyUpdate is
one the test chooses; the handshake runs against Python's ssl server
(OpenSSL) on loopback, once per cipher suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import load_pem_x509_certificate

from daetui.lab.dnspeers import LabCA
from daetui.net import tls13
from daetui.net.stream import DialError, SocketStream
from daetui.net.tls13 import ALERT, APPLICATION_DATA, HANDSHAKE, SUITES, Direction, Records, Session, TlsError

# -- the key schedule ----------------------------------------------------------------------------------


def test_key_schedule_matches_rfc8448() -> None:
    """RFC 8448 §3 (Simple 1-RTT Handshake): the early secret with no PSK, and the "derived" secret after it."""
    early = tls13.hkdf_extract("sha256", bytes(32), bytes(32))
    assert early.hex() == "33ad0a1c607ec03b09e6cd9893680ce210adf300aa1f2660e1b22e10f170f92a"
    derived = tls13.expand_label("sha256", early, "derived", hashlib.sha256().digest(), 32)
    assert derived.hex() == "6f2615a108c702c5678f54fc9dbab69716c076189c48250cebeac3576c3611ba"


def test_hkdf_expand_matches_rfc5869() -> None:
    """RFC 5869 test case 1 (SHA-256): HKDF-Extract and a 42-byte HKDF-Expand."""
    prk = tls13.hkdf_extract("sha256", bytes.fromhex("000102030405060708090a0b0c"), bytes([0x0B]) * 22)
    assert prk.hex() == "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
    okm = tls13.hkdf_expand("sha256", prk, bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"), 42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")


# -- the record layer ----------------------------------------------------------------------------------

CLIENT_SECRET, SERVER_SECRET = bytes(range(32)), bytes(range(32, 64))


def pair(code: int = 0x1301) -> tuple[Session, Direction, Direction]:
    """A client Session and the server's two directions (its writing one, its reading one)."""
    suite = SUITES[code]
    session = Session(Direction(suite, SERVER_SECRET), Direction(suite, CLIENT_SECRET), Records())
    return session, Direction(suite, SERVER_SECRET), Direction(suite, CLIENT_SECRET)


def server_open(read: Direction, data: bytes) -> list[tuple[int, bytes]]:
    """What the server makes of the client's bytes: each record's (type, plaintext)."""
    records, out = Records(), []
    records.feed(data)
    while (record := records.next()) is not None:
        out.append(read.open(record[1], record[2]))
    assert not records.buf
    return out


@pytest.mark.parametrize("code", sorted(SUITES))
def test_records_split_anywhere_and_padding(code: int) -> None:
    """Records cut at every byte, several in one read, padded ones and empty ones: the same plaintext."""
    session, write, _ = pair(code)
    wire = (write.seal(APPLICATION_DATA, b"first ") + write.seal(APPLICATION_DATA, b"", padding=40)
            + write.seal(APPLICATION_DATA, b"second ", padding=300) + write.seal(APPLICATION_DATA, b"third"))
    got = b""
    for i in range(len(wire)):  # a byte at a time
        got += session.decode(wire[i:i + 1])
        if i == 10:
            assert session.pending and got == b""  # the first record's header and part of its body
    assert got == b"first second third" and not session.pending
    session2, write2, _ = pair(code)
    wire2 = write2.seal(APPLICATION_DATA, b"a" * 100) + write2.seal(APPLICATION_DATA, b"b" * 100)
    assert session2.decode(wire2[:150]) == b"a" * 100
    assert session2.decode(wire2[150:]) == b"b" * 100


def test_encode_splits_into_records_of_at_most_2_14() -> None:
    session, _, read = pair()
    data = bytes(range(256)) * 300  # 76800 bytes: 5 records
    records = server_open(read, session.encode(data))
    assert [len(p) for _, p in records] == [16384] * 4 + [76800 - 4 * 16384]
    assert all(t == APPLICATION_DATA for t, _ in records) and b"".join(p for _, p in records) == data


def test_a_record_too_long_is_refused_before_its_body() -> None:
    """A header announcing more than 2^14+256 bytes: record_overflow at once, nothing buffered up to it."""
    session, _, _ = pair()
    with pytest.raises(TlsError, match="record_overflow"):
        session.decode(struct.pack("!BHH", APPLICATION_DATA, 0x0303, (1 << 14) + 257))


def test_plaintext_over_2_14_is_refused() -> None:
    session, write, _ = pair()
    with pytest.raises(TlsError, match="over 2\\^14"):
        session.decode(write.seal(APPLICATION_DATA, bytes((1 << 14) + 1)))


def test_not_tls_and_tampered_records() -> None:
    session, write, _ = pair()
    with pytest.raises(TlsError, match="does not speak TLS"):
        session.decode(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    session, write, _ = pair()
    record = bytearray(write.seal(APPLICATION_DATA, b"data"))
    record[-1] ^= 1
    with pytest.raises(TlsError, match="bad_record_mac"):
        session.decode(bytes(record))


def test_alerts() -> None:
    """A fatal alert is an error (after the data before it, handed over first); close_notify the end."""
    session, write, _ = pair()
    with pytest.raises(TlsError, match="alert handshake_failure"):
        session.decode(write.seal(ALERT, bytes((2, 40))))
    session, write, _ = pair()
    got = session.decode(write.seal(APPLICATION_DATA, b"before") + write.seal(ALERT, bytes((2, 80))))
    assert got == b"before" and session.error is not None and "internal_error" in str(session.error)
    session, write, _ = pair()
    got = session.decode(write.seal(APPLICATION_DATA, b"last") + write.seal(ALERT, bytes((1, 0)))
                         + write.seal(APPLICATION_DATA, b"after the end"))
    assert got == b"last" and session.server_ended and session.error is None


def test_key_update_followed_and_answered() -> None:
    """A KeyUpdate asking for ours: the server's next records decrypt with its new keys, and our answer
    (sealed with our old keys) comes out of reply(), after which we write with our new keys."""
    session, write, read = pair()
    ticket = bytes((tls13.NEW_SESSION_TICKET, 0, 0, 3)) + b"abc"  # ignored: no resumption here
    wire = write.seal(HANDSHAKE, ticket + bytes((tls13.KEY_UPDATE, 0, 0, 1, 1)))
    write = write.next()
    assert session.decode(wire + write.seal(APPLICATION_DATA, b"new keys")) == b"new keys"
    assert server_open(read, session.reply()) == [(HANDSHAKE, bytes((tls13.KEY_UPDATE, 0, 0, 1, 0)))]
    assert session.reply() == b""
    read = read.next()
    assert server_open(read, session.encode(b"ours too")) == [(APPLICATION_DATA, b"ours too")]


def test_key_update_split_across_records() -> None:
    session, write, _ = pair()
    message = bytes((tls13.KEY_UPDATE, 0, 0, 1, 0))
    wire = write.seal(HANDSHAKE, message[:2]) + write.seal(HANDSHAKE, message[2:])
    write = write.next()
    assert session.decode(wire + write.seal(APPLICATION_DATA, b"x")) == b"x"
    assert session.reply() == b""  # not asked for


def test_other_handshake_messages_after_the_handshake_are_errors() -> None:
    session, write, _ = pair()
    with pytest.raises(TlsError, match="unexpected handshake message 13"):
        session.decode(write.seal(HANDSHAKE, bytes((13, 0, 0, 0))))


def test_close_notify_sent_once_then_no_writes() -> None:
    session, _, read = pair()
    eof, end_tcp = session.encode_eof()
    assert not end_tcp and server_open(read, eof) == [(ALERT, bytes((1, 0)))]
    assert session.encode_eof() == (b"", False)
    with pytest.raises(TlsError, match="write after the end"):
        session.encode(b"late")


# -- handshakes with OpenSSL ---------------------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(scope="module")
def ca() -> Iterator[LabCA]:
    with LabCA("tls13.lab.test", ("127.0.0.1",)) as ca:
        yield ca


@contextlib.asynccontextmanager
async def server(handler: Handler, ctx: ssl.SSLContext | None) -> AsyncIterator[int]:
    srv = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ctx)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()


def server_context(ca: LabCA) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(ca.cert_file, ca.key_file)
    ctx.set_alpn_protocols(["x-test", "h2"])
    return ctx


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ssl.SSLError):
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    writer.close()


async def connect(port: int) -> SocketStream:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    return SocketStream(sock)


@pytest.mark.parametrize("code", sorted(SUITES))
async def test_handshake_and_echo_with_openssl(ca: LabCA, code: int) -> None:
    """Each suite offered alone: OpenSSL takes it; its certificate reaches `verify`, its ECDSA
    CertificateVerify and Finished check out, ALPN is read, and 200 KB echo back whole."""
    seen: list[bytes] = []
    async with server(echo, server_context(ca)) as port:
        s = await tls13.handshake(await connect(port), "tls13.lab.test", seen.extend, alpn=["h2"], suites=(code,),
                                  timeout=5)
        try:
            assert seen[0] == load_pem_x509_certificate(ca.cert_file.read_bytes()).public_bytes(Encoding.DER)
            assert s.alpn == "h2" and s.session.read_keys.suite.code == code
            assert s.framed() is not None
            payload = bytes(range(256)) * 800
            await s.write(payload)
            got = b""
            while len(got) < len(payload):
                data = await s.read(1 << 16)
                assert data
                got += data
            assert got == payload
            await s.write_eof()  # close_notify: OpenSSL's echo ends, and so does our read
            assert await asyncio.wait_for(s.read(100), 5) == b""
        finally:
            s.close()


async def test_verify_refusing_fails_the_handshake(ca: LabCA) -> None:
    def refuse(certs: list[bytes]) -> None:
        raise DialError("not this one")

    async with server(echo, server_context(ca)) as port:
        inner = await connect(port)
        with pytest.raises(DialError, match="not this one"):
            await tls13.handshake(inner, "tls13.lab.test", refuse, timeout=5)
        assert inner.sock.fileno() == -1  # closed


async def test_servers_that_do_not_do_tls13() -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    async def closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(2)
        writer.close()

    for handler, reason in ((http, "does not speak TLS"), (closes, "closed the connection"),
                            (silent, "no answer in 0.2s")):
        async with server(handler, None) as port:
            with pytest.raises(DialError, match=reason):
                await tls13.handshake(await connect(port), "x.test", lambda certs: None, timeout=0.2)


async def test_a_tls12_only_server_is_named(ca: LabCA) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(ca.cert_file, ca.key_file)
    async with server(echo, ctx) as port:
        # OpenSSL answers a TLS 1.3-only hello with alert protocol_version, or (asyncio's) just closes
        with pytest.raises(DialError, match=r"alert protocol_version|does not speak TLS 1\.3|closed the connection"):
            await tls13.handshake(await connect(port), "tls13.lab.test", lambda certs: None, timeout=5)


# -- Tls13Stream over a Stream -------------------------------------------------------------------------

class Chunks:
    """A Stream below that reads out the given chunks, then its end; and keeps what is written."""

    def __init__(self, *chunks: bytes, raw: socket.socket | None = None) -> None:
        self.chunks = list(chunks)
        self.written = b""
        self.raw = raw

    async def read(self, n: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    async def write(self, data: bytes) -> None:
        self.written += data

    async def write_eof(self) -> None:
        pass

    def close(self) -> None:
        pass


async def test_stream_hands_over_data_before_an_alert_then_fails() -> None:
    session, write, _ = pair()
    s = tls13.Tls13Stream(Chunks(write.seal(APPLICATION_DATA, b"good") + write.seal(ALERT, bytes((2, 40)))), session)
    assert await s.read(100) == b"good"
    with pytest.raises(TlsError, match="handshake_failure"):
        await s.read(100)


async def test_stream_ending_inside_a_record_is_an_error_between_records_the_end() -> None:
    session, write, _ = pair()
    record = write.seal(APPLICATION_DATA, b"whole")
    s = tls13.Tls13Stream(Chunks(record, write.seal(APPLICATION_DATA, b"cut")[:10]), session)
    assert await s.read(2) == b"wh" and await s.read(100) == b"ole"
    with pytest.raises(TlsError, match="in the middle of a record"):
        await s.read(100)
    session, write, _ = pair()
    s = tls13.Tls13Stream(Chunks(write.seal(APPLICATION_DATA, b"all")), session)
    assert await s.read(100) == b"all" and await s.read(100) == b"" and session.server_ended


async def test_stream_answers_a_key_update_and_offers_framing_when_nothing_is_held() -> None:
    a, b = socket.socketpair()
    try:
        session, write, read = pair()
        wire = write.seal(HANDSHAKE, bytes((tls13.KEY_UPDATE, 0, 0, 1, 1)))
        write = write.next()
        inner = Chunks(wire + write.seal(APPLICATION_DATA, b"0123456789"), raw=a)
        s = tls13.Tls13Stream(inner, session)
        assert s.framed() is not None
        assert await s.read(4) == b"0123"
        assert s.framed() is None  # plaintext held here: the stream's own reads must finish it
        assert server_open(read, inner.written) == [(HANDSHAKE, bytes((tls13.KEY_UPDATE, 0, 0, 1, 0)))]
        assert await s.read(100) == b"456789"
        framed = s.framed()
        assert framed is not None and framed[0] is a and framed[1] is session
    finally:
        a.close()
        b.close()
