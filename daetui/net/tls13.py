"""A TLS 1.3 client (RFC 8446) whose ClientHello the caller shapes, with its own record layer.

Python's ssl module hides the ClientHello and the server's certificate check
behind OpenSSL; REALITY (outbound/reality.py) needs both: a session id sealed
with a key derived from the very X25519 key share the hello carries, and a
certificate accepted by an HMAC rather than a chain. This module is the
smallest client that does that and nothing more:

- TLS 1.3 only, full handshake (no PSK, no 0-RTT, no HelloRetryRequest, no client certificates);
- key exchange X25519; suites TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384,
  TLS_CHACHA20_POLY1305_SHA256 (AES-GCM first: REALITY servers read that as "seal with AES-GCM");
- the server's certificate is judged by the caller's `verify` (there is no chain check here),
  and its CertificateVerify signature and Finished are checked as the RFC says;
- after the handshake: records of at most 2^14 bytes out, at most 2^14+256 bytes in (else an error),
  padding stripped, NewSessionTicket ignored, KeyUpdate followed (and answered when asked),
  close_notify the end of the stream, any other alert an error.

`Session` is the record layer after the handshake, as plain calls (it is the
Codec the framed relay uses, net/stream.py); `Tls13Stream` is it over a Stream;
`handshake()` makes one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import load_der_x509_certificate

from daetui.net.stream import DialError, Stream

# Record content types, handshake message types, extensions (RFC 8446 §4, §5).
CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA = 20, 21, 22, 23
CLIENT_HELLO, SERVER_HELLO, NEW_SESSION_TICKET = 1, 2, 4
ENCRYPTED_EXTENSIONS, CERTIFICATE, CERTIFICATE_REQUEST, CERTIFICATE_VERIFY, FINISHED, KEY_UPDATE = 8, 11, 13, 15, 20, 24
EXT_SERVER_NAME, EXT_SUPPORTED_GROUPS, EXT_SIGNATURE_ALGORITHMS, EXT_ALPN = 0, 10, 13, 16
EXT_SUPPORTED_VERSIONS, EXT_PSK_MODES, EXT_KEY_SHARE = 43, 45, 51
TLS13, TLS12, X25519 = 0x0304, 0x0303, 0x001D
CLOSE_NOTIFY = 0

MAX_PLAINTEXT = 1 << 14
MAX_RECORD = MAX_PLAINTEXT + 256  # the most a protected record's body may be
MAX_HANDSHAKE = 1 << 16  # a handshake message longer than this is not one a proxy server sends
READ_SIZE = 1 << 16
# SHA-256 of "HelloRetryRequest": the random a HelloRetryRequest carries (§4.1.3).
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")

# What the ClientHello offers to verify (ed25519 first: REALITY's certificates are ed25519).
SIGNATURE_ALGORITHMS = (0x0807, 0x0403, 0x0503, 0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601)

ALERTS = {0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac", 22: "record_overflow",
          40: "handshake_failure", 42: "bad_certificate", 43: "unsupported_certificate",
          46: "certificate_unknown", 47: "illegal_parameter", 48: "unknown_ca", 50: "decode_error",
          51: "decrypt_error", 70: "protocol_version", 71: "insufficient_security", 80: "internal_error",
          86: "inappropriate_fallback", 90: "user_canceled", 109: "missing_extension",
          110: "unsupported_extension", 112: "unrecognized_name", 116: "certificate_required",
          120: "no_application_protocol"}


class TlsError(DialError):
    """The TLS session failed: a bad record, an alert, a handshake the server got wrong."""


@dataclass(frozen=True)
class Suite:
    """A TLS 1.3 cipher suite: its AEAD, key length and hash."""

    code: int
    aead: type[AESGCM] | type[ChaCha20Poly1305]
    key_length: int
    hash_name: str

    @property
    def hash_length(self) -> int:
        return hashlib.new(self.hash_name).digest_size


SUITES = {s.code: s for s in (Suite(0x1301, AESGCM, 16, "sha256"), Suite(0x1302, AESGCM, 32, "sha384"),
                              Suite(0x1303, ChaCha20Poly1305, 32, "sha256"))}


# -- the key schedule (§7.1) ---------------------------------------------------------------------------

def hkdf_extract(hash_name: str, salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hash_name).digest()


def hkdf_expand(hash_name: str, prk: bytes, info: bytes, length: int) -> bytes:
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes((i,)), hash_name).digest()
        out += block
        i += 1
    return out[:length]


def expand_label(hash_name: str, secret: bytes, label: str, context: bytes, length: int) -> bytes:
    """HKDF-Expand-Label: the HkdfLabel struct of §7.1 as the info."""
    full = b"tls13 " + label.encode()
    info = struct.pack("!HB", length, len(full)) + full + bytes((len(context),)) + context
    return hkdf_expand(hash_name, secret, info, length)


class Direction:
    """One direction's record protection: the AEAD, its IV and the sequence number (§5.2, §5.3)."""

    def __init__(self, suite: Suite, secret: bytes) -> None:
        self.suite = suite
        self.secret = secret
        self.aead = suite.aead(expand_label(suite.hash_name, secret, "key", b"", suite.key_length))
        self.iv = int.from_bytes(expand_label(suite.hash_name, secret, "iv", b"", 12))
        self.seq = 0

    def _nonce(self) -> bytes:
        nonce = (self.iv ^ self.seq).to_bytes(12)
        self.seq += 1
        return nonce

    def seal(self, content_type: int, data: bytes | bytearray | memoryview, padding: int = 0) -> bytes:
        """One protected record carrying `data` (at most MAX_PLAINTEXT bytes) of `content_type`,
        and `padding` zeros after it (§5.4: how servers hide lengths; this client sends none)."""
        inner = bytes(data) + bytes((content_type,)) + bytes(padding)
        header = struct.pack("!BHH", APPLICATION_DATA, TLS12, len(inner) + 16)
        return header + self.aead.encrypt(self._nonce(), inner, header)

    def open(self, header: bytes, body: bytes) -> tuple[int, bytes]:
        """A protected record's content type and plaintext, padding stripped; TlsError if it is not ours."""
        try:
            inner = self.aead.decrypt(self._nonce(), body, header)
        except InvalidTag:
            raise TlsError("TLS: a record failed to decrypt (bad_record_mac)") from None
        # Padding (zeros after the content type) is rare: the last byte is the type in most records,
        # and rstrip would copy a whole record to learn that.
        end = len(inner) if inner[-1:] not in (b"", b"\x00") else len(inner.rstrip(b"\x00"))
        if end == 0:
            raise TlsError("TLS: a record with no content type (all padding)")
        if end - 1 > MAX_PLAINTEXT:
            raise TlsError("TLS: a record's plaintext is over 2^14 bytes (record_overflow)")
        return inner[end - 1], inner[:end - 1]

    def next(self) -> Direction:
        """The direction's keys after a KeyUpdate (§7.2)."""
        h = self.suite.hash_name
        return Direction(self.suite, expand_label(h, self.secret, "traffic upd", b"", self.suite.hash_length))


def alert_error(body: bytes) -> TlsError:
    """The error an alert record says (anything but close_notify is fatal in TLS 1.3)."""
    if len(body) != 2:
        return TlsError("TLS: a malformed alert")
    return TlsError(f"TLS: the server sent alert {ALERTS.get(body[1], body[1])}")


class Records:
    """Whole records cut from the bytes a server sends: (type, header, body), the length bounded."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes | bytearray) -> None:
        self.buf += data

    def next(self) -> tuple[int, bytes, bytes] | None:
        """The next whole record, or None while it is incomplete; TlsError for one too long or not TLS."""
        if len(self.buf) < 5:
            return None
        content_type, version, length = struct.unpack_from("!BHH", self.buf)
        if content_type not in (CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA) or version >> 8 != 3:
            raise TlsError("TLS: the server does not speak TLS (not a TLS record)")
        if length > MAX_RECORD:
            raise TlsError(f"TLS: a record of {length} bytes (record_overflow: at most {MAX_RECORD})")
        if len(self.buf) < 5 + length:
            return None
        header, body = bytes(self.buf[:5]), bytes(self.buf[5:5 + length])
        del self.buf[:5 + length]
        return content_type, header, body


# -- after the handshake: the session as plain calls -------------------------------------------------

class Session:
    """The record layer of an established session: a Codec (net/stream.py) over the server's bytes."""

    error: DialError | None = None
    watch_interval: float | None = None  # TLS owes nothing on a timer

    def __init__(self, read: Direction, write: Direction, records: Records, half_close: bool = True) -> None:
        self.read_keys = read
        self.write_keys = write
        self.records = records
        self.half_close = half_close
        self.handshake_buf = bytearray()  # post-handshake messages may span records
        self._reply = bytearray()
        self._eof_sent = False
        self._server_ended = False

    @property
    def pending(self) -> bool:
        """Bytes of a record (or a message) received but not yet whole."""
        return bool(self.records.buf or self.handshake_buf)

    def encode(self, data: bytes | bytearray | memoryview) -> bytes:
        """The records carrying `data`."""
        if self._eof_sent:
            raise TlsError("TLS: write after the end of the stream was sent")
        view = memoryview(data)
        seal = self.write_keys.seal
        return b"".join(seal(APPLICATION_DATA, view[i:i + MAX_PLAINTEXT]) for i in range(0, len(view), MAX_PLAINTEXT))

    def encode_eof(self) -> tuple[bytes, bool]:
        """close_notify (with `half_close`), never TCP's FIN: the server may still answer."""
        if self._eof_sent or not self.half_close:
            return b"", False
        self._eof_sent = True
        return self.write_keys.seal(ALERT, bytes((1, CLOSE_NOTIFY))), False

    def decode(self, data: bytes | bytearray) -> bytes:
        """The plaintext of every whole record now received (a failure after good bytes: `error`)."""
        self.records.feed(data)
        out: list[bytes] = []
        try:
            while not self._server_ended and (record := self.records.next()) is not None:
                content_type, header, body = record
                if content_type == CHANGE_CIPHER_SPEC:
                    continue  # middlebox compatibility: meaningless once protected records flow
                if content_type != APPLICATION_DATA:
                    raise TlsError(f"TLS: an unprotected record of type {content_type} after the handshake")
                inner_type, plain = self.read_keys.open(header, body)
                if inner_type == APPLICATION_DATA:
                    if plain:  # REALITY servers send empty records to look like their dest
                        out.append(plain)
                elif inner_type == ALERT:
                    if plain[1:2] == bytes((CLOSE_NOTIFY,)):
                        self._server_ended = True
                    else:
                        raise alert_error(plain)
                elif inner_type == HANDSHAKE:
                    self._post_handshake(plain)
                else:
                    raise TlsError(f"TLS: a record of unknown type {inner_type}")
        except TlsError as e:
            if not out:
                raise
            self.error = e  # the bytes before the bad record are the destination's: hand them over first
        return out[0] if len(out) == 1 else b"".join(out)

    def _post_handshake(self, plain: bytes) -> None:
        self.handshake_buf += plain
        while len(self.handshake_buf) >= 4:
            kind, length = self.handshake_buf[0], int.from_bytes(self.handshake_buf[1:4])
            if length > MAX_HANDSHAKE:
                raise TlsError(f"TLS: a handshake message of {length} bytes")
            if len(self.handshake_buf) < 4 + length:
                return
            body = bytes(self.handshake_buf[4:4 + length])
            del self.handshake_buf[:4 + length]
            if kind == NEW_SESSION_TICKET:
                continue  # no resumption here
            if kind != KEY_UPDATE or length != 1:
                raise TlsError(f"TLS: unexpected handshake message {kind} after the handshake")
            self.read_keys = self.read_keys.next()
            if body[0] == 1:  # update_requested: answer with ours, then switch (§4.6.3)
                self._reply += self.write_keys.seal(HANDSHAKE, bytes((KEY_UPDATE, 0, 0, 1, 0)))
                self.write_keys = self.write_keys.next()

    def reply(self) -> bytes:
        """Records decoding made that go back to the server (a KeyUpdate's answer)."""
        out, self._reply = bytes(self._reply), bytearray()
        return out

    @property
    def server_ended(self) -> bool:
        return self._server_ended

    def decode_eof(self) -> None:
        """TCP's end: the end of the stream, with or without close_notify (as TlsStream takes it)."""
        self._server_ended = True

    def overdue(self, idle: float) -> str | None:
        return None


class Tls13Stream:
    """A Stream over an established Session and the Stream below it."""

    raw = None

    def __init__(self, inner: Stream, session: Session, *, certificates: Sequence[bytes] = (),
                 alpn: str | None = None) -> None:
        self.inner = inner
        self.session = session
        self.certificates = tuple(certificates)  # the server's, as DER
        self.alpn = alpn
        self._plain = b""
        self._lock = asyncio.Lock()  # a read's KeyUpdate answer and a write's records leave one at a time

    async def _send(self, data: bytes) -> None:
        if data:
            async with self._lock:
                await self.inner.write(data)

    async def read(self, n: int) -> bytes:
        while not self._plain:
            if self.session.error is not None:
                raise self.session.error
            if self.session.server_ended:
                return b""
            data = await self.inner.read(READ_SIZE)
            if not data:
                if self.session.pending:
                    raise TlsError("TLS: the server closed in the middle of a record")
                self.session.decode_eof()
                return b""
            self._plain = self.session.decode(data)
            await self._send(self.session.reply())
        out, self._plain = self._plain[:n], self._plain[n:]
        return out

    async def write(self, data: bytes) -> None:
        await self._send(self.session.encode(data))

    async def write_eof(self) -> None:
        await self._send(self.session.encode_eof()[0])

    def close(self) -> None:
        self.inner.close()

    def framed(self) -> tuple[socket.socket, Session] | None:
        """The socket to the server and the Session as its Codec, when nothing is left in flight here."""
        raw = getattr(self.inner, "raw", None)
        if raw is None or self._plain or self.session.pending:
            return None
        return raw, self.session


# -- the handshake ------------------------------------------------------------------------------------

def _vector(data: bytes, length_bytes: int) -> bytes:
    return len(data).to_bytes(length_bytes) + data


def _extension(kind: int, data: bytes) -> bytes:
    return struct.pack("!HH", kind, len(data)) + data


def _message(kind: int, body: bytes) -> bytes:
    return bytes((kind,)) + len(body).to_bytes(3) + body


SESSION_ID_OFFSET = 4 + 2 + 32 + 1  # in the ClientHello message: header, legacy_version, random, length


def client_hello(random: bytes, session_id: bytes, key_share: bytes, server_name: str,
                 alpn: Sequence[str] = (), suites: Sequence[int] = tuple(SUITES)) -> bytes:
    """The ClientHello handshake message (with its 4-byte header), `session_id` at SESSION_ID_OFFSET."""
    exts = []
    if server_name:
        name = server_name.encode("idna")
        exts.append(_extension(EXT_SERVER_NAME, _vector(b"\x00" + _vector(name, 2), 2)))
    exts.append(_extension(EXT_SUPPORTED_GROUPS, _vector(struct.pack("!H", X25519), 2)))
    exts.append(_extension(EXT_SIGNATURE_ALGORITHMS,
                           _vector(b"".join(struct.pack("!H", a) for a in SIGNATURE_ALGORITHMS), 2)))
    if alpn:
        exts.append(_extension(EXT_ALPN, _vector(b"".join(_vector(p.encode(), 1) for p in alpn), 2)))
    exts.append(_extension(EXT_SUPPORTED_VERSIONS, _vector(struct.pack("!H", TLS13), 1)))
    exts.append(_extension(EXT_PSK_MODES, _vector(b"\x01", 1)))  # psk_dhe_ke: what browsers say
    exts.append(_extension(EXT_KEY_SHARE, _vector(struct.pack("!HH", X25519, 32) + key_share, 2)))
    offered = b"".join(struct.pack("!H", code) for code in suites)
    body = (struct.pack("!H", TLS12) + random + _vector(session_id, 1) + _vector(offered, 2) + b"\x01\x00"
            + _vector(b"".join(exts), 2))
    return _message(CLIENT_HELLO, body)


class _Reader:
    """Fields read off a message's body, each read checked (TlsError: decode_error)."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise TlsError(f"TLS: a malformed {self.what}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self, n: int) -> int:
        return int.from_bytes(self.take(n))

    def vector(self, length_bytes: int) -> bytes:
        return self.take(self.int(length_bytes))

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _extensions(r: _Reader) -> dict[int, bytes]:
    block = _Reader(r.vector(2), r.what)
    out = {}
    while block.left:
        kind = block.int(2)
        out[kind] = block.vector(2)
    return out


@dataclass
class ServerHello:
    suite: Suite
    key_share: bytes


def parse_server_hello(body: bytes, session_id: bytes, suites: Sequence[int] = tuple(SUITES)) -> ServerHello:
    """What a ServerHello chose; TlsError when it is no TLS 1.3 answer to our hello."""
    r = _Reader(body, "ServerHello")
    r.take(2)
    random = r.take(32)
    if random == HRR_RANDOM:
        raise TlsError("TLS: the server asked for another key share (HelloRetryRequest): it does not take X25519")
    if r.vector(1) != session_id:
        raise TlsError("TLS: the ServerHello does not echo our session id")
    code = r.int(2)
    r.take(1)
    exts = _extensions(r)
    if exts.get(EXT_SUPPORTED_VERSIONS) != struct.pack("!H", TLS13):
        raise TlsError("TLS: the server does not speak TLS 1.3")
    if code not in suites:
        raise TlsError(f"TLS: the server chose cipher suite 0x{code:04x}, which was not offered")
    share = exts.get(EXT_KEY_SHARE, b"")
    if len(share) != 36 or struct.unpack_from("!HH", share) != (X25519, 32):
        raise TlsError("TLS: the ServerHello has no X25519 key share")
    return ServerHello(SUITES[code], share[4:])


def parse_certificates(body: bytes) -> list[bytes]:
    """The DER certificates of a Certificate message, the server's own first."""
    r = _Reader(body, "Certificate")
    r.vector(1)  # certificate_request_context: empty for a server
    entries = _Reader(r.vector(3), "Certificate")
    out = []
    while entries.left:
        out.append(entries.vector(3))
        entries.vector(2)  # per-certificate extensions (OCSP, SCT): not used
    if not out:
        raise TlsError("TLS: the server sent no certificate")
    return out


PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def _verify_signature(key: object, algorithm: int, signature: bytes, content: bytes) -> None:
    """Check CertificateVerify's signature with the certificate's key (§4.4.3); TlsError if it is wrong."""
    try:
        if algorithm == 0x0807 and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, content)
        elif algorithm in (0x0403, 0x0503, 0x0603) and isinstance(key, ec.EllipticCurvePublicKey):
            h = {0x0403: hashes.SHA256(), 0x0503: hashes.SHA384(), 0x0603: hashes.SHA512()}[algorithm]
            key.verify(signature, content, ec.ECDSA(h))
        elif algorithm in (0x0804, 0x0805, 0x0806) and isinstance(key, rsa.RSAPublicKey):
            h = {0x0804: hashes.SHA256(), 0x0805: hashes.SHA384(), 0x0806: hashes.SHA512()}[algorithm]
            key.verify(signature, content, padding.PSS(padding.MGF1(h), h.digest_size), h)
        else:
            raise TlsError(f"TLS: signature algorithm 0x{algorithm:04x} does not fit the certificate's key")
    except InvalidSignature:
        raise TlsError("TLS: the server's CertificateVerify signature is wrong") from None


# The hook that fills in the session id: (ClientHello with a zeroed session id, its random,
# the X25519 key whose public half is in its key_share) -> the 32-byte session id.
SessionIdHook = Callable[[bytes, bytes, X25519PrivateKey], bytes]
# The certificate check: the server's DER certificates -> the key to check CertificateVerify with
# (None: the first certificate's, as parsed), or DialError saying why they are not accepted.
Verify = Callable[[list[bytes]], PublicKey | None]


class _Handshake:
    """The client's side of one full handshake, over a Stream, one message at a time."""

    def __init__(self, inner: Stream) -> None:
        self.inner = inner
        self.records = Records()
        self.messages = bytearray()
        self.transcript = b""
        self.keys: Direction | None = None  # the server's handshake keys, once the ServerHello came

    async def message(self) -> tuple[int, bytes]:
        """The server's next handshake message (type, body), whatever records it came in."""
        while True:
            if len(self.messages) >= 4:
                kind, length = self.messages[0], int.from_bytes(self.messages[1:4])
                if length > MAX_HANDSHAKE:
                    raise TlsError(f"TLS: a handshake message of {length} bytes")
                if len(self.messages) >= 4 + length:
                    whole = bytes(self.messages[:4 + length])
                    del self.messages[:4 + length]
                    return kind, whole
            record = self.records.next()
            if record is None:
                data = await self.inner.read(READ_SIZE)
                if not data:
                    raise TlsError("TLS handshake: the server closed the connection")
                self.records.feed(data)
                continue
            content_type, header, body = record
            if content_type == CHANGE_CIPHER_SPEC and self.keys is not None:
                continue  # middlebox compatibility (§D.4)
            if content_type == ALERT:
                raise alert_error(body)
            if self.keys is not None:
                if content_type != APPLICATION_DATA:
                    raise TlsError(f"TLS handshake: an unprotected record of type {content_type}")
                content_type, body = self.keys.open(header, body)
                if content_type == ALERT:
                    raise alert_error(body)
            if content_type != HANDSHAKE:
                raise TlsError(f"TLS handshake: a record of type {content_type} in the handshake")
            self.messages += body

    async def expect(self, kind: int, what: str) -> bytes:
        """The next message, which must be `kind`: its body (the whole message joins the transcript)."""
        got, whole = await self.message()
        if got != kind:
            raise TlsError(f"TLS handshake: message {got} where the {what} belongs")
        self.transcript += whole
        return whole[4:]

    def hash(self, hash_name: str) -> bytes:
        return hashlib.new(hash_name, self.transcript).digest()


async def _run(inner: Stream, server_name: str, alpn: Sequence[str], session_id: SessionIdHook | None,
               verify: Verify, half_close: bool, suites: Sequence[int]) -> Tls13Stream:
    hs = _Handshake(inner)
    key = X25519PrivateKey.generate()
    random = os.urandom(32)
    share = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    hello = client_hello(random, bytes(32), share, server_name, alpn, suites)
    sid = session_id(hello, random, key) if session_id is not None else os.urandom(32)
    hello = hello[:SESSION_ID_OFFSET] + sid + hello[SESSION_ID_OFFSET + 32:]
    hs.transcript = hello
    await inner.write(struct.pack("!BHH", HANDSHAKE, 0x0301, len(hello)) + hello)

    sh = parse_server_hello(await hs.expect(SERVER_HELLO, "ServerHello"), sid, suites)
    suite, h, n = sh.suite, sh.suite.hash_name, sh.suite.hash_length
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(sh.key_share))
    except ValueError:
        raise TlsError("TLS: the server's X25519 key share is invalid") from None
    early = hkdf_extract(h, bytes(n), bytes(n))
    handshake_secret = hkdf_extract(h, expand_label(h, early, "derived", hashlib.new(h).digest(), n), shared)
    c_hs = expand_label(h, handshake_secret, "c hs traffic", hs.hash(h), n)
    s_hs = expand_label(h, handshake_secret, "s hs traffic", hs.hash(h), n)
    hs.keys = Direction(suite, s_hs)

    ee = _Reader(await hs.expect(ENCRYPTED_EXTENSIONS, "EncryptedExtensions"), "EncryptedExtensions")
    chosen = _extensions(ee).get(EXT_ALPN)
    kind, whole = await hs.message()
    if kind == CERTIFICATE_REQUEST:
        raise TlsError("TLS handshake: the server asks for a client certificate")
    if kind != CERTIFICATE:
        raise TlsError(f"TLS handshake: message {kind} where the server's Certificate belongs")
    hs.transcript += whole
    certificates = parse_certificates(whole[4:])
    key_of_server = verify(certificates) or load_der_x509_certificate(certificates[0]).public_key()
    signed = b" " * 64 + b"TLS 1.3, server CertificateVerify\x00" + hs.hash(h)
    cv = _Reader(await hs.expect(CERTIFICATE_VERIFY, "CertificateVerify"), "CertificateVerify")
    algorithm = cv.int(2)
    _verify_signature(key_of_server, algorithm, cv.vector(2), signed)
    expected = hmac.new(expand_label(h, s_hs, "finished", b"", n), hs.hash(h), h).digest()
    if not hmac.compare_digest(await hs.expect(FINISHED, "Finished"), expected):
        raise TlsError("TLS handshake: the server's Finished is wrong (decrypt_error)")

    master = hkdf_extract(h, expand_label(h, handshake_secret, "derived", hashlib.new(h).digest(), n), bytes(n))
    c_ap = expand_label(h, master, "c ap traffic", hs.hash(h), n)
    s_ap = expand_label(h, master, "s ap traffic", hs.hash(h), n)
    finished = _message(FINISHED, hmac.new(expand_label(h, c_hs, "finished", b"", n), hs.hash(h), h).digest())
    ccs = struct.pack("!BHHB", CHANGE_CIPHER_SPEC, TLS12, 1, 1)  # middlebox compatibility, as browsers send it
    await inner.write(ccs + Direction(suite, c_hs).seal(HANDSHAKE, finished))
    if hs.messages:
        raise TlsError("TLS handshake: the server sent more handshake messages after its Finished")
    protocol = None
    if chosen:
        names = _Reader(chosen, "ALPN")
        protocol = _Reader(names.vector(2), "ALPN").vector(1).decode(errors="replace")
    session = Session(Direction(suite, s_ap), Direction(suite, c_ap), hs.records, half_close)
    return Tls13Stream(inner, session, certificates=certificates, alpn=protocol)


async def handshake(inner: Stream, server_name: str, verify: Verify, *, alpn: Sequence[str] = (),
                    session_id: SessionIdHook | None = None, timeout: float | None = None,
                    half_close: bool = True, suites: Sequence[int] = tuple(SUITES)) -> Tls13Stream:
    """A TLS 1.3 session over `inner`, handshake done within `timeout` s; `inner` is closed if it fails.

    `verify` judges the server's certificates (raise TlsError to refuse);
    `session_id`, when given, makes the ClientHello's session id (REALITY's);
    `half_close` as in TlsStream: write_eof() sends close_notify, else nothing;
    `suites` the cipher suites offered, in order (codes of SUITES).
    """
    try:
        async with asyncio.timeout(timeout):
            return await _run(inner, server_name, alpn, session_id, verify, half_close, suites)
    except TimeoutError:
        inner.close()
        raise TlsError(f"TLS handshake: no answer in {timeout:g}s") from None
    except DialError:
        inner.close()
        raise
    except OSError as e:
        inner.close()
        raise TlsError(f"TLS handshake: {e.strerror or e}") from None
    except BaseException:
        inner.close()
        raise
