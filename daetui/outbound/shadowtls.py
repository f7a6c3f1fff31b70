"""ShadowTLS v3: a real TLS 1.3 handshake with another site, relayed by the server, then the node's bytes.

A shadowsocks node's SIP003 plugin (`plugin=shadow-tls;host=NAME;password=PW[;version=3][;skipVerify=true]`,
dae's `shadowtls`, clash's `plugin: shadow-tls` with `plugin-opts: {host, password, version}`).
Written from the protocol document (ihciah/shadow-tls docs/protocol-v3-en.md) and checked
against its client (src/client.rs, src/util.rs) and sing-shadowtls, which mihomo's server runs.

1. Handshake. The client sends a TLS 1.3 ClientHello (SNI = `host`) whose 32-byte session id
   is 28 random bytes and the first 4 bytes of HMAC-SHA1(password, the ClientHello message
   with those last 4 bytes zeroed) (`sign_session_id`). The server checks it and relays the
   handshake to its handshake server (`dest`, the site named by `host`). For a client it
   knows, it rewrites every application-data record that site sends: the body XORed with
   SHA256(password + ServerRandom) (`kdf`), prefixed with 4 bytes of a running
   HMAC-SHA1(password, ServerRandom, every such body so far). The client checks that HMAC
   and undoes the XOR before its TLS client sees the record (`HandshakeReader`), and the
   handshake completes with the site's own certificate and keys.
2. Data (`V3Codec`). The TLS session is then dropped: the node's bytes go as application-data
   records `header | HMAC | data`, the HMAC the first 4 bytes of a running HMAC-SHA1 seeded
   with password, ServerRandom + "C" (the client's) or + "S" (the server's), fed each record's
   data and then its own 4 bytes. The client's first such record tells the server to stop
   relaying to the site and to hand the stream to the shadowsocks server behind it. Records
   the site still had in flight (its NewSessionTickets) come signed by the handshake's HMAC
   and are dropped, until the first "S" record.

A server that does not know the password (or is not ShadowTLS) relays the connection to the
site untouched, so the handshake's records carry no HMAC: the client then completes the
handshake with the site, as a browser would, sends it a small HTTP request and reads the answer
(the reference client's "muddled request"), and fails with a DialError saying so.

The site's certificate is checked against `host` (the system's CAs, or the node's CA file),
unless `skipVerify` (dae's; also `allowInsecure`, `insecure`, `skip-cert-verify`) or the node's
allow_insecure says not to: the ShadowTLS server proves itself by the HMAC either way.

Only v3 is spoken: v1 and v2 (no HMAC on the data; v2 authenticates the server by a hash of the
whole handshake) are refused when the plugin is parsed. A link without `version` is v3 (what the
protocol's own client and every current server default to); a clash entry without `version` is v2,
mihomo's default (outbound/subscription.py writes it out).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import ipaddress
import os
import random
import socket
import ssl
import string
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509 import verification

from daetui.net import tls13
from daetui.net.stream import Codec, DialError, Stream, WrappedStream, framing_of

HANDSHAKE, ALERT, APPLICATION_DATA = 22, 21, 23
SERVER_HELLO = 2
HMAC_SIZE = 4
SESSION_ID_SIZE = 32
RANDOM_SIZE = 32
MAX_DATA = 1 << 14  # data per record: TLS's plaintext limit, as sing-shadowtls writes them
READ_SIZE = 1 << 16
ALPN = ("h2", "http/1.1")  # what mihomo's client offers (and a browser)
VERSIONS = ("3",)
INSECURE_KEYS = ("skipVerify", "allowInsecure", "allow_insecure", "insecure", "skip-cert-verify")
MUDDLE_READ = 4096  # the most of the site's answer to a muddled request read before giving up on it


class ShadowTlsError(DialError):
    """The ShadowTLS server did not prove itself, or its data failed the HMAC."""


@dataclass(frozen=True)
class Settings:
    """The plugin's options, checked: what the client needs to dial."""

    password: str
    host: str  # SNI, and the name the site's certificate is checked against ("" sends none)
    version: str = "3"
    insecure: bool = False

    @classmethod
    def of(cls, get: Callable[[str], str | None]) -> Settings:
        """The settings a plugin's options give (`get`: the last value of a key); ValueError says what is wrong."""
        password = get("password")
        if not password:
            raise ValueError("plugin shadow-tls: no password option")
        version = (get("version") or "3").strip()
        if version not in ("1", "2", "3"):
            raise ValueError(f"plugin shadow-tls: unknown version={version} (expected 3)")
        if version not in VERSIONS:
            raise ValueError(f"plugin shadow-tls: version={version} is not supported (ShadowTLS v{version} has no "
                             "HMAC on its data); only version=3")
        host = get("host") or ""
        if host and any(c.isspace() or c in "/?#:" for c in host):
            raise ValueError(f"plugin shadow-tls: bad host {host!r}")
        insecure = False
        for key in INSECURE_KEYS:
            value = get(key)
            if value is not None:
                insecure = value.strip().lower() in ("", "1", "true", "yes")
        return cls(password, host, version, insecure)


# -- the handshake -------------------------------------------------------------------------------------

def sign_session_id(password: str, hello: bytes, prefix: bytes | None = None) -> bytes:
    """The session id of a ClientHello message (4-byte header on, session id at tls13.SESSION_ID_OFFSET).

    28 bytes of `prefix` (random by default), then HMAC-SHA1(password, the message carrying
    those 28 bytes and 4 zeros as its session id)[:4]: what the server checks.
    """
    prefix = os.urandom(SESSION_ID_SIZE - HMAC_SIZE) if prefix is None else prefix
    if len(prefix) != SESSION_ID_SIZE - HMAC_SIZE:
        raise ValueError("the session id's random part is 28 bytes")
    off = tls13.SESSION_ID_OFFSET
    filled = hello[:off] + prefix + bytes(HMAC_SIZE) + hello[off + SESSION_ID_SIZE:]
    return prefix + hmac.new(password.encode(), filled, "sha1").digest()[:HMAC_SIZE]


def kdf(password: str, server_random: bytes) -> bytes:
    """The key the server XORs the site's handshake records with: SHA256(password + ServerRandom)."""
    return hashlib.sha256(password.encode() + server_random).digest()


def xor(data: bytes, key: bytes) -> bytes:
    """`data` XOR `key` repeated (one big-integer XOR: handshake records are a few KB)."""
    if not data:
        return b""
    stream = (key * (len(data) // len(key) + 1))[:len(data)]
    return (int.from_bytes(data) ^ int.from_bytes(stream)).to_bytes(len(data))


def _record(content_type: int, body: bytes | memoryview) -> bytes:
    return struct.pack("!BHH", content_type, 0x0303, len(body)) + bytes(body)


class HandshakeReader(WrappedStream):
    """The stream the TLS client reads during the handshake: the site's records, the server's HMAC checked and undone.

    One whole record per read (so the TLS client never holds bytes past the handshake; what came
    after them is `leftover`). It keeps the ServerRandom of the ServerHello and the running
    HMAC of the rewritten records, which the data phase goes on with.
    """

    def __init__(self, inner: Stream, password: str) -> None:
        super().__init__(inner)
        self.password = password
        self.buf = bytearray()  # the server's bytes not yet cut into records
        self._out = b""  # the record under way, rewritten, not all read yet
        self.server_random: bytes | None = None
        self.hmac: hmac.HMAC | None = None  # HMAC(password, ServerRandom, bodies so far)
        self.key = b""
        self.signed = 0  # application-data records that carried the server's HMAC
        self.unsigned = 0  # ... that did not (the site's own: no ShadowTLS server knew us)

    async def read(self, n: int) -> bytes:
        while not self._out:
            if len(self.buf) >= 5:
                length = int.from_bytes(self.buf[3:5])
                if len(self.buf) >= 5 + length:
                    record = bytes(self.buf[:5 + length])
                    del self.buf[:5 + length]
                    self._out = self._rewrite(record)
                    break
            data = await self.inner.read(READ_SIZE)
            if not data:
                return b""
            self.buf += data
        out, self._out = self._out[:n], self._out[n:]
        return out

    def _rewrite(self, record: bytes) -> bytes:
        content_type, body = record[0], record[5:]
        if content_type == HANDSHAKE and self.server_random is None and body[:1] == bytes((SERVER_HELLO,)) \
                and len(body) >= 6 + RANDOM_SIZE:
            self.server_random = body[6:6 + RANDOM_SIZE]
            self.hmac = hmac.new(self.password.encode(), self.server_random, "sha1")
            self.key = kdf(self.password, self.server_random)
        elif content_type == APPLICATION_DATA and self.hmac is not None and len(body) > HMAC_SIZE:
            # The running HMAC takes every body, signed or not, as the reference client's does.
            self.hmac.update(body[HMAC_SIZE:])
            if hmac.compare_digest(self.hmac.digest()[:HMAC_SIZE], body[:HMAC_SIZE]):
                self.signed += 1
                return _record(APPLICATION_DATA, xor(body[HMAC_SIZE:], self.key))
            self.unsigned += 1
        return record

    @property
    def authorized(self) -> bool:
        """Every handshake record of the site came through the ShadowTLS server, signed."""
        return self.signed > 0 and self.unsigned == 0

    def leftover(self) -> bytes:
        """What came after the last record read (the data phase's first bytes, if any)."""
        out = self._out + bytes(self.buf)
        self._out = b""
        self.buf.clear()
        return out


# -- the data phase ------------------------------------------------------------------------------------

class V3Codec:
    """ShadowTLS v3's data framing (a Codec, net/stream.py): HMAC-prefixed application-data records both ways."""

    error: DialError | None = None
    watch_interval: float | None = None

    def __init__(self, password: str, server_random: bytes, ignore: hmac.HMAC | None = None) -> None:
        key = password.encode()
        self.add = hmac.new(key, server_random + b"C", "sha1")
        self.verify = hmac.new(key, server_random + b"S", "sha1")
        # The handshake's HMAC: records of the site still in flight (NewSessionTicket) carry it.
        self.ignore = ignore
        self._buf = bytearray()
        self._ended = False
        self.dropped = 0  # the site's records dropped after the handshake

    @property
    def server_ended(self) -> bool:
        return self._ended

    def encode(self, data: bytes | bytearray | memoryview) -> bytes:
        view = memoryview(data)
        out = []
        for i in range(0, len(view), MAX_DATA):
            part = view[i:i + MAX_DATA]
            self.add.update(part)
            mac = self.add.digest()[:HMAC_SIZE]
            self.add.update(mac)  # so records cannot be cut and spliced
            out.append(struct.pack("!BHH", APPLICATION_DATA, 0x0303, len(part) + HMAC_SIZE) + mac + bytes(part))
        return b"".join(out)

    def encode_eof(self) -> tuple[bytes, bool]:
        """TCP's own FIN, as the reference client ends its side (TLS 1.3: no alert)."""
        return b"", True

    def decode(self, data: bytes | bytearray) -> bytes:
        if self.error is not None:
            raise self.error
        self._buf += data
        buf, pos, out = self._buf, 0, []
        while not self._ended and len(buf) - pos >= 5:
            content_type, length = buf[pos], int.from_bytes(buf[pos + 3:pos + 5])
            end = pos + 5 + length
            if len(buf) < end:
                break
            body = bytes(buf[pos + 5:end])  # a copy: the buffer is cut below, which a view would forbid
            pos = end
            if content_type == ALERT:
                # sing-shadowtls sends one when it cannot read us any more: the end of its side.
                self._ended = True
                break
            if content_type != APPLICATION_DATA or length < HMAC_SIZE:
                self._fail(f"ShadowTLS: a record of type {content_type} and {length} bytes from the server "
                                "(not ShadowTLS data)")
                break
            mac, payload = body[:HMAC_SIZE], body[HMAC_SIZE:]
            if self.ignore is not None:
                self.ignore.update(payload)
                if hmac.compare_digest(self.ignore.digest()[:HMAC_SIZE], mac):
                    self.dropped += 1
                    continue
                self.ignore = None  # the first data record: no more of the site's after it
            self.verify.update(payload)
            expected = self.verify.digest()[:HMAC_SIZE]
            self.verify.update(expected)
            if not hmac.compare_digest(expected, mac):
                self._fail("ShadowTLS: a record from the server failed its HMAC (altered on the way, or "
                                "not from the ShadowTLS server)")
                break
            out.append(payload)
        del buf[:pos]
        if self.error is not None and not out:
            raise self.error
        return b"".join(out)

    def _fail(self, reason: str) -> None:
        self.error = ShadowTlsError(reason)

    def decode_eof(self) -> None:
        if self._buf and not self._ended:
            raise ShadowTlsError(f"ShadowTLS: the server closed in the middle of a record ({len(self._buf)} bytes)")

    def reply(self) -> bytes:
        return b""

    def overdue(self, idle: float) -> str | None:
        return None


class _Prefixed(WrappedStream):
    """A stream with bytes already read put back in front (what came after the handshake's last record)."""

    def __init__(self, inner: Stream, head: bytes) -> None:
        super().__init__(inner)
        self.head = head

    async def read(self, n: int) -> bytes:
        if self.head:
            out, self.head = self.head[:n], self.head[n:]
            return out
        return await self.inner.read(n)

    def framed(self) -> tuple[socket.socket, Codec] | None:
        """The socket below for the framed relay, once the bytes put back are read."""
        return None if self.head else framing_of(self.inner)


# -- the certificate -----------------------------------------------------------------------------------

def _system_ca_file() -> str:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return candidate
    raise ShadowTlsError("ShadowTLS: no system CA file to check the handshake server's certificate with "
                         "(give the node a CA file, or skipVerify=true)")


_PEM_END = b"-----END CERTIFICATE-----"


@functools.lru_cache(maxsize=8)
def _store(path: str, mtime_ns: int) -> verification.Store:
    """The trust store of a CA file, parsed once per version of the file (a system bundle is ~150 certificates).

    Certificates one by one: a system bundle may hold one that cryptography frowns on (a
    serial of zero) or refuses; that one is left out rather than the whole bundle.
    """
    certificates = []
    for block in Path(path).read_bytes().split(_PEM_END)[:-1]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                certificates.append(x509.load_pem_x509_certificate(block + _PEM_END))
            except ValueError:
                continue
    if not certificates:
        raise ValueError("no certificate in it")
    return verification.Store(certificates)


def chain_verifier(host: str, ca_file: str | None) -> tls13.Verify:
    """A tls13 `verify` that checks the site's chain against `ca_file` (else the system's CAs) and `host`."""
    if not host:
        raise ShadowTlsError("ShadowTLS: no host option to check the handshake server's certificate against "
                             "(set host=, or skipVerify=true)")
    path = ca_file or _system_ca_file()
    try:
        store = _store(path, Path(path).stat().st_mtime_ns)
    except (OSError, ValueError) as e:
        raise ShadowTlsError(f"ShadowTLS: CA file {path}: {e}") from None
    try:
        subject: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = x509.DNSName(host)
    verifier = verification.PolicyBuilder().store(store).build_server_verifier(subject)

    def verify(certificates: list[bytes]) -> None:
        try:
            leaf, *rest = (x509.load_der_x509_certificate(c) for c in certificates)
            verifier.verify(leaf, rest)
        except (verification.VerificationError, ValueError) as e:
            raise tls13.TlsError(f"ShadowTLS: the handshake server's certificate is not valid for {host}: {e} "
                                 "(skipVerify=true accepts any)") from None
        return None

    return verify


def _accept_any(certificates: list[bytes]) -> None:
    return None


# -- the client -------------------------------------------------------------------------------------

async def _muddle(session: Stream, timeout: float) -> str:
    """What a browser would do on the site it reached: a GET with a random cookie, the answer's first line."""
    cookie = "".join(random.choices(string.ascii_letters + string.digits, k=random.randrange(16, 64)))
    request = (f"GET / HTTP/1.1\r\nUser-Agent: Mozilla/5.0\r\nAccept: */*\r\nConnection: close\r\n"
               f"Cookie: sessionid={cookie}\r\n\r\n").encode()
    got = b""
    try:
        async with asyncio.timeout(timeout):
            await session.write(request)
            while len(got) < MUDDLE_READ and b"\r\n" not in got:
                data = await session.read(MUDDLE_READ)
                if not data:
                    break
                got += data
    except (TimeoutError, DialError, OSError):
        pass
    line = got.split(b"\r\n", 1)[0][:80].decode("latin-1")
    return repr(line) if line else "nothing"


async def open_shadowtls(settings: Settings, stream: Stream, *, allow_insecure: bool = False,
                         ca_file: str | None = None, timeout: float = 10.0) -> tuple[Stream, V3Codec]:
    """The ShadowTLS v3 handshake over `stream` (a connection to the ShadowTLS server), within `timeout`.

    Returns the stream the data phase reads (the handshake's leftover put back in front) and
    its Codec; ShadowTlsError (the stream closed) when the server did not sign the handshake.
    """
    reader = HandshakeReader(stream, settings.password)
    insecure = allow_insecure or settings.insecure
    verify = _accept_any if insecure else chain_verifier(settings.host, ca_file)

    def session_id(hello: bytes, hello_random: bytes, key: object) -> bytes:
        return sign_session_id(settings.password, hello)

    sni = settings.host
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(sni)
        sni = ""  # an address is never sent as SNI (RFC 6066), only checked against the certificate
    session = await tls13.handshake(reader, sni, verify, alpn=ALPN, session_id=session_id,
                                    timeout=timeout, half_close=False)
    if not reader.authorized or reader.server_random is None or reader.hmac is None:
        try:
            answer = await _muddle(session, min(timeout, 3.0))
        finally:
            session.close()
        why = ("none of its handshake records carried the ShadowTLS HMAC" if not reader.signed
               else f"{reader.unsigned} of its handshake records did not carry the ShadowTLS HMAC")
        raise ShadowTlsError(
            f"ShadowTLS: the server did not prove it knows the password ({why}): wrong password, or not a "
            f"ShadowTLS v3 server; it relayed us to its handshake server, which answered a request with {answer}")
    codec = V3Codec(settings.password, reader.server_random, reader.hmac)
    return _Prefixed(stream, reader.leftover()), codec
