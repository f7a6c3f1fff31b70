"""VMess nodes with the AEAD header (alterId 0), over TCP, WebSocket, HTTP/2 or gRPC, with or without TLS.

    vmess://BASE64(JSON)     v2rayN's format: {"v": "2", "ps": NAME, "add": HOST, "port": "443",
                             "id": UUID, "aid": "0", "scy": "auto", "net": "tcp", "type": "none",
                             "host": "", "path": "", "tls": "tls", "sni": NAME, "alpn": ""}

`net` is the transport (transport.py): tcp, ws (`host` the Host header,
`path` with `?ed=N` for early data), h2/http (`host` a comma-separated list)
or grpc (`path` the service name, `host` the authority, `type` the mode: gun).

What goes over the connection, client first (as v2ray 4.34 reads it):

1. The sealed request header. With cmd_key = MD5(uuid bytes + a fixed GUID):
   - auth ID: AES-128-ECB under KDF(cmd_key, "AES Auth ID Encryption")[:16]
     of time (8 bytes, Unix seconds) | 4 random bytes | CRC32 of those 12;
   - the header's length (2 bytes) sealed with AES-128-GCM, key and nonce
     from KDF(cmd_key, "VMess Header AEAD Key_Length" / "... Nonce_Length",
     auth ID, connection nonce), the auth ID as associated data;
   - the 8-byte connection nonce;
   - the header sealed the same way ("VMess Header AEAD Key" / "... Nonce").
   KDF is HMAC-SHA256 keyed "VMess AEAD KDF", each path element wrapping it
   in one more HMAC (the previous level as the hash function).
   The header: version 1 | body IV (16) | body key (16) | response check V |
   options | padding length << 4 | security | 0 | command | port | ATYP |
   address | padding | FNV-1a 32 of all before.
2. The body: chunks of `masked length (2) | AEAD(payload) | padding`, the
   AEAD's nonce a 16-bit chunk counter and bytes 2..11 of the IV, the length
   XORed with the next 2 bytes of SHAKE128(IV) (option M) and the padding
   length the next 2 bytes mod 64 (option P, drawn before the mask). A chunk
   with an empty payload ends the stream (so vmess carries half-closes).

The server answers with its own sealed header (key and IV: SHA-256 of the
request's body key and IV, first 16 bytes; length and header each sealed
under keys from KDF(..., "AEAD Resp Header Len Key" / "... Len IV" /
"AEAD Resp Header Key" / "... IV")), then chunks the same way under those.
It sends its header along with the destination's first bytes, so it is read
on the first `read()`; a wrong id shows there as the server closing.

Security `auto` means aes-128-gcm (as v2ray picks on amd64);
chacha20-poly1305 keys are MD5(key) | MD5(MD5(key)). Command 2 (UDP) sends
one datagram per chunk, to the destination in the header; see _udp.py.
Refused with a reason: alterId > 0 (the legacy MD5 header), transports
other than tcp/ws/h2/grpc (quic, kcp, ...), grpc's multi mode, HTTP header obfuscation
(`type: http`), security none/zero.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import ipaddress
import json
import os
import socket
import ssl
import struct
import time
import uuid as uuidlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from daetui.net.buffered import Buffered
from daetui.net.stream import Codec, CodecOver, Dialer, DialError, Stream, framing_of
from daetui.outbound import _share
from daetui.outbound._address import v2ray_address
from daetui.outbound._udp import PerDestination
from daetui.outbound.state import NodeProtocol
from daetui.outbound.transport import TCP, Transport, open_stream, parse_type, tls_context

CMD_KEY_SALT = b"c48619fe-8f02-49e0-b9e9-edf763e17e21"
KDF_ROOT = b"VMess AEAD KDF"
AUTH_ID_KEY = b"AES Auth ID Encryption"
HEADER_LEN_KEY = b"VMess Header AEAD Key_Length"
HEADER_LEN_IV = b"VMess Header AEAD Nonce_Length"
HEADER_KEY = b"VMess Header AEAD Key"
HEADER_IV = b"VMess Header AEAD Nonce"
RESP_LEN_KEY = b"AEAD Resp Header Len Key"
RESP_LEN_IV = b"AEAD Resp Header Len IV"
RESP_KEY = b"AEAD Resp Header Key"
RESP_IV = b"AEAD Resp Header IV"

VERSION = 1
CMD_TCP = 1
CMD_UDP = 2
OPT_CHUNK_STREAM = 0x01  # S
OPT_CHUNK_MASKING = 0x04  # M
OPT_GLOBAL_PADDING = 0x08  # P
SECURITY_IDS = {"aes-128-gcm": 3, "chacha20-poly1305": 4}
SECURITIES = ("auto", *SECURITY_IDS)
TAG = 16
MAX_PADDING = 64
# Plaintext per chunk we send. The length field allows up to 64 KiB, but mihomo's server (its vmess
# is sing-vmess) breaks the connection on a larger chunk (measured with mihomo 1.19.23, over tcp and
# grpc: 4096 bytes pass, 4097 do not). Sealing 1 MB costs ~2.0 ms in 4 KiB chunks, ~1.5 ms in 16 KiB.
CHUNK_PAYLOAD = 1 << 12
HANDSHAKE_TIMEOUT = 10.0


# -- key derivation and the sealed header --------------------------------------------

def cmd_key(uid: str) -> bytes:
    """The user's command key: MD5 of the UUID's 16 bytes and a fixed GUID."""
    return hashlib.md5(uuidlib.UUID(uid).bytes + CMD_KEY_SALT).digest()


_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


def _nested_hmac(hash_fn: Callable[[bytes], bytes], key: bytes, message: bytes) -> bytes:
    """HMAC (RFC 2104, 64-byte blocks) over any hash function given as bytes -> digest."""
    if len(key) > 64:
        key = hash_fn(key)
    key = key.ljust(64, b"\0")
    inner = hash_fn(key.translate(_IPAD) + message)
    return hash_fn(key.translate(_OPAD) + inner)


def kdf(key: bytes, *path: bytes) -> bytes:
    """VMess's KDF: HMAC-SHA256 keyed "VMess AEAD KDF", wrapped in one HMAC per path element; 32 bytes."""
    def hash_fn(m: bytes) -> bytes:
        return hmac.new(KDF_ROOT, m, hashlib.sha256).digest()

    for element in path:
        def hash_fn(m: bytes, below: Callable[[bytes], bytes] = hash_fn, k: bytes = element) -> bytes:
            return _nested_hmac(below, k, m)

    return hash_fn(key)


def auth_id(key: bytes, timestamp: int, rand4: bytes) -> bytes:
    """The 16-byte auth ID: time, 4 random bytes and their CRC32, AES-128-ECB'd under the KDF'd command key."""
    plain = struct.pack("!q", timestamp) + rand4
    plain += struct.pack("!I", zlib.crc32(plain))
    enc = Cipher(algorithms.AES(_auth_id_key(key)), modes.ECB()).encryptor()
    return enc.update(plain) + enc.finalize()


@functools.lru_cache(maxsize=256)
def _auth_id_key(key: bytes) -> bytes:
    """The auth ID's AES key: the same for every request of a user, so worked out once."""
    return kdf(key, AUTH_ID_KEY)[:16]


def seal_header(key: bytes, header: bytes, *, timestamp: int | None = None, rand4: bytes | None = None,
                nonce: bytes | None = None) -> bytes:
    """auth ID | sealed length | connection nonce | sealed header (the random parts fixed for tests)."""
    aid = auth_id(key, int(time.time()) if timestamp is None else timestamp,
                  os.urandom(4) if rand4 is None else rand4)
    nonce = os.urandom(8) if nonce is None else nonce
    sealed_len = AESGCM(kdf(key, HEADER_LEN_KEY, aid, nonce)[:16]).encrypt(
        kdf(key, HEADER_LEN_IV, aid, nonce)[:12], struct.pack("!H", len(header)), aid)
    sealed = AESGCM(kdf(key, HEADER_KEY, aid, nonce)[:16]).encrypt(
        kdf(key, HEADER_IV, aid, nonce)[:12], header, aid)
    return aid + sealed_len + nonce + sealed


def fnv1a32(data: bytes) -> int:
    """FNV-1a, 32 bits: the request header's checksum."""
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


@dataclass(frozen=True)
class Request:
    """The secrets of one connection and what it asks for."""

    body_key: bytes
    body_iv: bytes
    check: int  # the response header's first byte must repeat it
    security: int
    command: int
    host: str
    port: int
    options: int = OPT_CHUNK_STREAM | OPT_CHUNK_MASKING | OPT_GLOBAL_PADDING

    @classmethod
    def new(cls, security: int, command: int, host: str, port: int) -> Request:
        """A request with fresh random body key, IV and response check byte."""
        r = os.urandom(33)
        return cls(r[:16], r[16:32], r[32], security, command, host, port)

    def header(self, padding: bytes = b"") -> bytes:
        """The request header in the clear, checksum included."""
        if len(padding) > 15:
            raise ValueError("header padding is 0-15 bytes")
        out = (bytes((VERSION,)) + self.body_iv + self.body_key
               + bytes((self.check, self.options, len(padding) << 4 | self.security, 0, self.command))
               + v2ray_address(self.host, self.port) + padding)
        return out + struct.pack("!I", fnv1a32(out))

    @property
    def response_key(self) -> bytes:
        """The key of the server's answer: SHA-256 of the body key, first 16 bytes (AEAD header)."""
        return hashlib.sha256(self.body_key).digest()[:16]

    @property
    def response_iv(self) -> bytes:
        """The IV of the server's answer: SHA-256 of the body IV, first 16 bytes."""
        return hashlib.sha256(self.body_iv).digest()[:16]


# -- chunks -----------------------------------------------------------------------------

class Shake:
    """SHAKE128(IV) read two bytes at a time: the length masks and padding lengths."""

    BLOCK = 1024

    def __init__(self, iv: bytes) -> None:
        self.iv = iv
        self.pool = b""
        self.pos = 0
        self.squeezed = 0
        self._xof: Any = None
        with contextlib.suppress(AttributeError, TypeError):
            # cryptography >= 45 squeezes the XOF as it goes.
            from cryptography.hazmat.primitives import hashes

            self._xof = hashes.XOFHash(hashes.SHAKE128(digest_size=2 ** 63 - 1))
            self._xof.update(iv)

    def _squeeze(self, n: int) -> bytes:
        if self._xof is not None:
            return bytes(self._xof.squeeze(n))
        # hashlib gives only a prefix of the output: the whole prefix again, then the new part.
        out = hashlib.shake_128(self.iv).digest(self.squeezed + n)[self.squeezed:]
        self.squeezed += n
        return out

    def next(self) -> int:
        """The next two bytes of the stream, big-endian."""
        if self.pos + 2 > len(self.pool):
            # Growing blocks keep hashlib's re-hashing linear overall.
            self.pool = self.pool[self.pos:] + self._squeeze(max(self.BLOCK, self.squeezed))
            self.pos = 0
        (v,) = struct.unpack_from("!H", self.pool, self.pos)
        self.pos += 2
        return v


def _aead(security: int, key: bytes) -> AESGCM | ChaCha20Poly1305:
    if security == SECURITY_IDS["chacha20-poly1305"]:
        first = hashlib.md5(key).digest()
        return ChaCha20Poly1305(first + hashlib.md5(first).digest())
    return AESGCM(key)


class ChunkCipher:
    """One direction's chunks: the AEAD, the nonce counter and the SHAKE mask stream."""

    def __init__(self, security: int, key: bytes, iv: bytes) -> None:
        self.aead = _aead(security, key)
        self.iv_tail = iv[2:12]
        self.count = 0
        self.shake = Shake(iv)

    def _nonce(self) -> bytes:
        nonce = struct.pack("!H", self.count) + self.iv_tail
        self.count = (self.count + 1) & 0xFFFF  # 16 bits, wrapping, as v2ray counts
        return nonce

    def seal(self, payload: bytes) -> bytes:
        """One chunk; an empty payload is the end of the stream."""
        padding = self.shake.next() % MAX_PADDING
        size = len(payload) + TAG + padding
        masked = size ^ self.shake.next()
        return struct.pack("!H", masked) + self.aead.encrypt(self._nonce(), payload, None) + os.urandom(padding)

    def open_size(self, masked: bytes) -> tuple[int, int]:
        """(chunk size, padding) from a chunk's first two bytes."""
        padding = self.shake.next() % MAX_PADDING
        (value,) = struct.unpack("!H", masked)
        return value ^ self.shake.next(), padding

    def open(self, sealed: bytes) -> bytes:
        """A chunk's payload from its sealed part (padding cut off); DialError if it fails authentication."""
        try:
            return self.aead.decrypt(self._nonce(), sealed, None)
        except InvalidTag:
            raise DialError("vmess: a chunk failed authentication (not a vmess server, or corrupted)") from None


def _open_gcm(key: bytes, iv: bytes, data: bytes, what: str) -> bytes:
    try:
        return AESGCM(key).decrypt(iv, data, None)
    except InvalidTag:
        raise DialError(f"vmess: the response {what} failed authentication (not a vmess server?)") from None


_NO_RESPONSE = ("vmess: the server closed without a response (wrong id or clock, not a vmess server, "
                "or the destination closed at once)")


def _response_length(req: Request, sealed_len: bytes | bytearray) -> int:
    """The sealed response header's length, from its sealed 2-byte length field."""
    (length,) = struct.unpack("!H", _open_gcm(kdf(req.response_key, RESP_LEN_KEY)[:16],
                                               kdf(req.response_iv, RESP_LEN_IV)[:12], bytes(sealed_len),
                                               "header length"))
    return length


def _check_response(req: Request, sealed: bytes | bytearray) -> None:
    header = _open_gcm(kdf(req.response_key, RESP_KEY)[:16], kdf(req.response_iv, RESP_IV)[:12], bytes(sealed),
                       "header")
    if len(header) < 4 or header[0] != req.check:
        raise DialError("vmess: the response header does not answer this request")


async def read_response(reader: Buffered, req: Request) -> None:
    """Read, open and check the server's response header."""
    await reader.hold(2 + TAG, _NO_RESPONSE)
    sealed_len = await reader.read_exactly(2 + TAG)
    _check_response(req, await reader.read_exactly(_response_length(req, sealed_len) + TAG,
                                                   "the vmess response header"))


async def read_chunk(reader: Buffered, cipher: ChunkCipher) -> bytes | None:
    """The next chunk's payload; None at the end of the stream.

    The end is the empty chunk, or the connection closing between chunks:
    v2ray closes without the empty chunk when a direction times out.
    """
    if not reader.buf and not await reader.fill():
        return None
    size, padding = cipher.open_size(await reader.read_exactly(2, "a vmess chunk"))
    if size == TAG + padding:
        return None
    if size < TAG + padding:
        raise DialError(f"vmess: chunk of {size} bytes, less than its tag and padding")
    body = await reader.read_exactly(size, "a vmess chunk")
    return cipher.open(body[:size - padding])


class _Session:
    """The request sent, and the reading side of its answer."""

    def __init__(self, inner: Stream, req: Request) -> None:
        self.inner = inner
        self.req = req
        self.reader = Buffered(inner)
        self.sender = ChunkCipher(req.security, req.body_key, req.body_iv)
        self.receiver = ChunkCipher(req.security, req.response_key, req.response_iv)
        self.replied = False

    async def next_payload(self) -> bytes | None:
        if not self.replied:
            await read_response(self.reader, self.req)
            self.replied = True
        return await read_chunk(self.reader, self.receiver)


class VmessStream:
    """A stream to the destination through a vmess server."""

    raw = None

    def __init__(self, inner: Stream, req: Request) -> None:
        self.s = _Session(inner, req)
        self.pending = b""
        self.eof = False
        self.eof_sent = False

    async def read(self, n: int) -> bytes:
        while not self.pending:
            if self.eof:
                return b""
            payload = await self.s.next_payload()
            if payload is None:
                self.eof = True
                return b""
            self.pending = payload
        out, self.pending = self.pending[:n], self.pending[n:]
        return out

    async def write(self, data: bytes) -> None:
        if data:  # an empty chunk would end the stream
            await self.s.inner.write(seal_chunks(self.s.sender, data, self.eof_sent))

    def framed(self) -> tuple[socket.socket, Codec] | None:
        """The stream below's socket and Codec, under a ChunkCodec that carries this stream on."""
        below = None if (self.pending or self.s.reader.buf) else framing_of(self.s.inner)
        return None if below is None else (below[0], ChunkCodec(below[1], self))

    async def write_eof(self) -> None:
        """The empty chunk: the server ends its side towards the destination."""
        if not self.eof_sent:
            self.eof_sent = True
            await self.s.inner.write(self.s.sender.seal(b""))

    def close(self) -> None:
        self.s.inner.close()


def seal_chunks(sender: ChunkCipher, data: bytes | bytearray | memoryview, eof_sent: bool) -> bytes:
    """`data` as chunks of at most CHUNK_PAYLOAD bytes."""
    if eof_sent:
        raise DialError("vmess: write after the end of the stream was sent")
    view = memoryview(data)
    return b"".join(sender.seal(bytes(view[i:i + CHUNK_PAYLOAD])) for i in range(0, len(view), CHUNK_PAYLOAD))


class ChunkCodec(CodecOver):
    """A VmessStream's framing as plain calls over the Codec below (TLS, or PlainCodec for a socket).

    The response header and the chunks are opened as their bytes arrive; the empty chunk is the
    destination's end (server_ended); TCP's end between chunks is an end too, as read() takes it.
    """

    def __init__(self, below: Codec, stream: VmessStream) -> None:
        super().__init__(below)
        self.req = stream.s.req
        self.sender, self.receiver = stream.s.sender, stream.s.receiver
        self.replied = stream.s.replied
        self.ended = stream.eof
        self.eof_sent = stream.eof_sent
        self.buf = bytearray()
        self.header_len = -1  # the response header's sealed length, once known
        self.size = -1        # the chunk under way: its size and padding, once its length is opened
        self.padding = 0

    @property
    def server_ended(self) -> bool:
        return self.ended or self.below.server_ended

    def encode(self, data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
        return self.below.encode(seal_chunks(self.sender, data, self.eof_sent)) if data else b""

    def encode_eof(self) -> tuple[bytes | bytearray | memoryview, bool]:
        """The empty chunk: the server ends its side towards the destination (TCP stays open)."""
        if self.eof_sent:
            return b"", False
        self.eof_sent = True
        return self.below.encode(self.sender.seal(b"")), False

    def decode(self, data: bytes) -> bytes:
        self.buf += self.below.decode(data)
        buf, pos, out = self.buf, 0, []
        while not self.ended:
            if not self.replied:
                if self.header_len < 0:
                    if len(buf) - pos < 2 + TAG:
                        break
                    self.header_len = _response_length(self.req, buf[pos:pos + 2 + TAG]) + TAG
                    pos += 2 + TAG
                if len(buf) - pos < self.header_len:
                    break
                _check_response(self.req, buf[pos:pos + self.header_len])
                pos += self.header_len
                self.replied = True
            if self.size < 0:
                if len(buf) - pos < 2:
                    break
                self.size, self.padding = self.receiver.open_size(buf[pos:pos + 2])
                pos += 2
                if self.size == TAG + self.padding:
                    self.ended = True
                    break
                if self.size < TAG + self.padding:
                    raise DialError(f"vmess: chunk of {self.size} bytes, less than its tag and padding")
            if len(buf) - pos < self.size:
                break
            out.append(self.receiver.open(bytes(buf[pos:pos + self.size - self.padding])))
            pos += self.size
            self.size = -1
        del buf[:pos]
        return out[0] if len(out) == 1 else b"".join(out)

    def decode_eof(self) -> None:
        self.below.decode_eof()
        if not self.replied:
            raise DialError(_NO_RESPONSE)
        if not self.ended and (self.size >= 0 or self.buf):
            raise DialError(f"vmess: connection closed in a vmess chunk ({len(self.buf)} bytes of it came)")
        self.ended = True


class VmessPackets:
    """Datagrams to one destination over a vmess UDP session: one chunk each."""

    def __init__(self, inner: Stream, req: Request) -> None:
        self.s = _Session(inner, req)

    async def send(self, data: bytes) -> None:
        if not data:
            return  # an empty chunk would end the session
        if len(data) + TAG + MAX_PADDING > 0xFFFF:
            raise DialError(f"datagram of {len(data)} bytes: too large for a vmess chunk")
        await self.s.inner.write(self.s.sender.seal(data))

    async def recv(self) -> bytes:
        payload = await self.s.next_payload()
        if payload is None:
            raise DialError("vmess: the server ended the UDP session")
        return payload

    def close(self) -> None:
        self.s.inner.close()


# -- nodes and links --------------------------------------------------------------------

@dataclass(frozen=True)
class VmessNode:
    """A vmess server (AEAD header) and how to reach it (its transport: tcp, ws, h2 or grpc)."""

    protocol: ClassVar[NodeProtocol] = "vmess"

    name: str
    host: str
    port: int
    uuid: str
    security: str = "auto"
    tls: bool = False
    sni: str = ""
    allow_insecure: bool = False
    alpn: tuple[str, ...] = ()
    transport: Transport = TCP

    def link(self) -> str:
        """The share link of this node, v2rayN's JSON (parse_link(link()) == self)."""
        t = self.transport
        obj: dict[str, str] = {
            "v": "2", "ps": self.name, "add": self.host, "port": str(self.port), "id": self.uuid, "aid": "0",
            "scy": self.security, "net": t.kind, "type": "gun" if t.kind == "grpc" else "none", "host": t.host,
            "path": t.link_path,
            "tls": "tls" if self.tls else "", "sni": self.sni, "alpn": ",".join(self.alpn),
        }
        if self.allow_insecure:
            obj["allowInsecure"] = "1"
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        return "vmess://" + base64.b64encode(text.encode()).decode()

    @property
    def security_id(self) -> int:
        """The security byte of the request header (auto: aes-128-gcm)."""
        return SECURITY_IDS["aes-128-gcm" if self.security == "auto" else self.security]

    def dialer(self, via: Dialer, *, allow_insecure: bool = False, ca_file: str | Path | None = None,
               ssl_context: ssl.SSLContext | None = None, handshake_timeout: float = HANDSHAKE_TIMEOUT) -> VmessDialer:
        """A Dialer through this node, its connection made through `via` (the TLS settings: node_context)."""
        ctx = tls_context(self, self.transport, allow_insecure, ca_file, ssl_context) if self.tls else None
        return VmessDialer(self, via, ctx, handshake_timeout)


def _decode_b64(text: str) -> bytes:
    text = "".join(text.split())
    text += "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text)
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after vmess:// is not base64") from None


def _text(obj: dict[str, Any], key: str, default: str = "") -> str:
    value = obj.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value).strip()


def _number(obj: dict[str, Any], key: str, default: int | None = None) -> int:
    value = _text(obj, key)
    if not value:
        if default is None:
            raise ValueError(f"no {key!r}")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{key!r} is {value!r}, not a number") from None


def parse_link(link: str, name: str = "") -> VmessNode:
    """The node a vmess:// link (v2rayN's base64 JSON) describes; ValueError says what is wrong with it."""
    if not link.lower().startswith("vmess://"):
        raise ValueError("not a vmess:// link")
    raw = _decode_b64(link[len("vmess://"):].split("#", 1)[0])
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("the base64 does not hold v2rayN's JSON (other vmess link formats are not supported)") \
            from None
    if not isinstance(obj, dict):
        raise ValueError("the JSON is not an object")
    host = _text(obj, "add")
    if not host:
        raise ValueError("no server address ('add')")
    with contextlib.suppress(ValueError):
        host = str(ipaddress.ip_address(host.strip("[]")))
    port = _number(obj, "port")
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    uid = _share.canonical_uuid(_text(obj, "id"))
    aid = _number(obj, "aid", 0)
    if aid != 0:
        raise ValueError(f"alterId {aid} is not supported: only alterId 0 (the AEAD header); "
                         "set alterId 0 on the server")
    security = (_text(obj, "scy") or "auto").lower()
    if security not in SECURITIES:
        raise ValueError(f"security {security!r} is not supported ({', '.join(SECURITIES)})")
    tls = (_text(obj, "tls") or "none").lower()
    if tls == "reality":
        raise ValueError("tls=reality is not supported: no REALITY client here (tls or none)")
    if tls not in ("none", "tls"):
        raise ValueError(f"tls={tls} is not supported (tls or none)")
    net = (_text(obj, "net") or "tcp").lower()
    # v2rayN writes `type` for tcp's header obfuscation (and kcp/quic's): only tcp's matters here.
    transport = parse_type(net, path=_text(obj, "path"), host=_text(obj, "host"),
                           header_type=_text(obj, "type") if net == "tcp" else "", tls=tls == "tls",
                           key="net", header_key="type", mode=_text(obj, "type") if net in ("grpc", "gun") else "",
                           mode_key="type")
    return VmessNode(
        name=name or _text(obj, "ps"),
        host=host,
        port=port,
        uuid=uid,
        security=security,
        tls=tls == "tls",
        # v2rayN's SNI falls back to `host`: its first name (h2's is a list).
        sni=_text(obj, "sni") or (_text(obj, "host").split(",")[0].strip() if tls == "tls" else ""),
        allow_insecure=_share.flag({"allowInsecure": _text(obj, "allowInsecure").lower()}, "allowInsecure"),
        alpn=_share.alpn_list(_text(obj, "alpn")),
        transport=transport,
    )


# -- the dialer -------------------------------------------------------------------------

class VmessDialer:
    """Dials destinations through a vmess server."""

    def __init__(self, node: VmessNode, via: Dialer, ctx: ssl.SSLContext | None,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.node = node
        self.name = node.name
        self.via = via
        self.ctx = ctx
        self.handshake_timeout = handshake_timeout
        self.key = cmd_key(node.uuid)

    async def _session(self, command: int, host: str, port: int) -> tuple[Stream, Request]:
        node = self.node
        req = Request.new(node.security_id, command, host, port)
        # vmess ends its stream with its own empty chunk: TLS need not carry a half-close.
        stream = await open_stream(self.via, node.host, node.port, node.transport, self.ctx, node.sni,
                                   self.handshake_timeout, False,
                                   seal_header(self.key, req.header(os.urandom(os.urandom(1)[0] % 16))), "vmess")
        return stream, req

    async def connect(self, host: str, port: int) -> VmessStream:
        """A stream to host:port through the server."""
        return VmessStream(*await self._session(CMD_TCP, host, port))

    async def _packets(self, host: str, port: int) -> VmessPackets:
        return VmessPackets(*await self._session(CMD_UDP, host, port))

    async def datagrams(self) -> PerDestination:
        """Datagrams to any destination: a vmess UDP session per destination."""
        return PerDestination(self._packets, "vmess")
