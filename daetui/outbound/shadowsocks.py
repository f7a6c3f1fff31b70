"""Shadowsocks AEAD ("classic" AEAD, as shadowsocks-libev 3.3 speaks it): TCP and UDP.

Keys (https://shadowsocks.org/doc/aead.html):
  master key = EVP_BytesToKey(password) (MD5, no salt, one round)
  subkey     = HKDF-SHA1(master key, salt, info="ss-subkey"), one per salt

TCP: each direction starts with a random salt, then chunks
  [encrypted 2-byte length + tag][encrypted payload + tag]
with a 12-byte little-endian nonce counting up from 0, one step per
encryption (so two per chunk); a payload is 1..0x3FFF bytes. The client's
first chunk starts with the target address, SOCKS5-style (ATYP 1 IPv4,
3 domain, 4 IPv6, then the port).
UDP: each packet is salt + AEAD(address + payload) with an all-zero nonce; the
address is the destination going out and the source coming back. (ss-server
3.3.5 without `--mtu` drops datagrams much above 1400 bytes of payload.)

SIP003 plugins (simple-obfs, v2ray-plugin) wrap the connection to the server: see sip003.py.
A plugin node's UDP goes to the server's port directly, as ss-local's and clash's do.

The other method families share this module's streams and dialer: shadowsocks 2022 (ss2022.py)
and the old stream ciphers (ss_stream_ciphers.py); `method_of` finds a name in all three.

Speed: this is the proxied path that is compared with ss-redir, so writes are
cut into the largest chunks allowed and sealed straight into one output
buffer (`encrypt_into` where `cryptography` has it), and reads open every
whole chunk a read brought in one pass over a memoryview.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qs, quote, unquote

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from daetui.net.address import ip_of
from daetui.net.stream import Codec, Dialer, DialError, Stream, framing_of
from daetui.outbound.sip003 import Layered, Plugin, open_plugin, parse_plugin
from daetui.outbound.state import NodeProtocol

log = logging.getLogger("daetui.outbound")

MAX_PAYLOAD = 0x3FFF
TAG_SIZE = 16
NONCE_SIZE = 12
LEN_FRAME = 2 + TAG_SIZE
ZERO_NONCE = bytes(NONCE_SIZE)
SUBKEY_INFO = b"ss-subkey"
# A whole chunk, so that a read of at least this much always makes progress.
MIN_READ = LEN_FRAME + MAX_PAYLOAD + TAG_SIZE
UDP_RECV = 65536

ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 1, 3, 4

# cryptography >= 45 seals into a caller's buffer: one allocation and no join per write.
_HAVE_INTO = hasattr(AESGCM, "encrypt_into")



class XChaCha20Poly1305:
    """XChaCha20-Poly1305 (libsodium's crypto_aead_xchacha20poly1305_ietf: shadowsocks' xchacha20-ietf-poly1305)
    answering `cryptography`'s AEAD calls, which has no XChaCha20 (pycryptodomex's here).

    Its nonce is 24 bytes; shadowsocks' is a little-endian counter, so the 12 bytes the chunk code counts in
    are that counter with 12 zero bytes after (UDP's all-zero nonce likewise).
    """

    __slots__ = ("_key", "_new")

    def __init__(self, key: bytes) -> None:
        from Cryptodome.Cipher import ChaCha20_Poly1305  # only for nodes of this method

        if len(key) != 32:
            raise ValueError("XChaCha20-Poly1305 takes a 32-byte key")
        self._key = bytes(key)
        self._new = ChaCha20_Poly1305.new

    def encrypt(self, nonce: bytes, data: bytes | bytearray | memoryview, aad: bytes | None) -> bytes:
        c = self._new(key=self._key, nonce=bytes(nonce) + _NONCE_PAD)
        if aad:
            c.update(aad)
        sealed, tag = c.encrypt_and_digest(data)
        return sealed + tag

    def encrypt_into(self, nonce: bytes, data: bytes | bytearray | memoryview, aad: bytes | None,
                     buf: memoryview) -> None:
        buf[:] = self.encrypt(nonce, data, aad)

    def decrypt(self, nonce: bytes, data: bytes | bytearray | memoryview, aad: bytes | None) -> bytes:
        view = memoryview(data)
        if len(view) < TAG_SIZE:
            raise InvalidTag
        c = self._new(key=self._key, nonce=bytes(nonce) + _NONCE_PAD)
        if aad:
            c.update(aad)
        try:
            return c.decrypt_and_verify(view[:-TAG_SIZE], view[-TAG_SIZE:])
        except ValueError:  # pycryptodome's word for a bad tag
            raise InvalidTag from None


_NONCE_PAD = bytes(24 - NONCE_SIZE)
AEAD = AESGCM | ChaCha20Poly1305 | XChaCha20Poly1305


@dataclass(frozen=True)
class Method:
    """An AEAD cipher as shadowsocks names it.

    The other families (ss2022.Method2022, ss_stream_ciphers.StreamMethod) answer the same calls:
    key_of, sealer, opener, datagrams, and have `name`, `kind`, `salt_size`.
    """

    name: str
    key_size: int
    salt_size: int
    aead: Callable[[bytes], AEAD]
    kind: ClassVar[str] = "aead"

    def key_of(self, password: str) -> bytes:
        """The master key: EVP_BytesToKey(password)."""
        return master_key(password, self.key_size)

    def sealer(self, key: bytes, salt: bytes) -> Sealer:
        """The client's direction, after `salt`."""
        return Sealer(self.aead(subkey(key, salt)))

    def opener(self, key: bytes, salt: bytes, request_salt: bytes = b"") -> Opener:
        """The server's direction, after its `salt`."""
        return Opener(self.aead(subkey(key, salt)))

    def datagrams(self, key: bytes) -> AeadPackets:
        """The UDP codec (AEAD packets have no state across packets)."""
        return AeadPackets(self, key)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("aes-128-gcm", 16, 16, AESGCM),
    Method("aes-192-gcm", 24, 24, AESGCM),
    Method("aes-256-gcm", 32, 32, AESGCM),
    Method("chacha20-ietf-poly1305", 32, 32, ChaCha20Poly1305),
    Method("xchacha20-ietf-poly1305", 32, 32, XChaCha20Poly1305),
)}
# Other names clients print for the same ciphers.
ALIASES = {"chacha20-poly1305": "chacha20-ietf-poly1305"}

# Stream ciphers old clients name that ss-server 3.3.5 does not serve either (the others: ss_stream_ciphers.py).
_UNSERVED_STREAM_CIPHERS = {"rc4", "des-cfb", "table"}


def method_of(name: str) -> Any:
    """The method called `name` (AEAD, 2022 or stream: see Method); ValueError says why one is not supported."""
    from daetui.outbound import ss2022, ss_stream_ciphers  # they build on this module

    key = name.strip().lower()
    key = ALIASES.get(key, key)
    for table in (METHODS, ss2022.METHODS, ss_stream_ciphers.METHODS):
        if key in table:
            return table[key]  # type: ignore[index]
    supported = ", ".join((*METHODS, *ss2022.METHODS))
    if key in _UNSERVED_STREAM_CIPHERS:
        raise ValueError(f"method {name!r}: no client for this stream cipher here; use one of {supported}")
    raise ValueError(f"unknown method {name!r}; supported: {supported}")


# -- keys ----------------------------------------------------------------------------------

try:
    from _sha1 import sha1 as _sha1  # CPython's own: no OpenSSL set-up per call (see subkey)
except ImportError:  # a Python built without it
    _sha1 = hashlib.sha1
_SHA1_BLOCK = 64
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


def master_key(password: str | bytes, key_size: int) -> bytes:
    """OpenSSL's EVP_BytesToKey with MD5, no salt, one round: the key shadowsocks makes of a password."""
    pw = password.encode() if isinstance(password, str) else password
    out = b""
    prev = b""
    while len(out) < key_size:
        prev = hashlib.md5(prev + pw).digest()
        out += prev
    return out[:key_size]


def subkey(key: bytes, salt: bytes) -> bytes:
    """The session key for one salt: HKDF-SHA1(key, salt, "ss-subkey") (RFC 5869).

    Written out over CPython's own SHA-1 rather than OpenSSL's HKDF or HMAC, which in the daemon
    took ~15 µs a key (setting up OpenSSL's objects each time) against ~7 µs for this; a connection
    makes two (bench/proxy_path.py), a UDP packet one.
    """
    prk = _hmac_sha1(salt, key)
    out = t = b""
    i = 0
    while len(out) < len(key):
        i += 1
        t = _hmac_sha1(prk, t + SUBKEY_INFO + bytes((i,)))
        out += t
    return out[:len(key)]


def _hmac_sha1(key: bytes, msg: bytes) -> bytes:
    """HMAC-SHA1 (RFC 2104)."""
    if len(key) > _SHA1_BLOCK:
        key = _sha1(key).digest()
    key = key.ljust(_SHA1_BLOCK, b"\0")
    return _sha1(key.translate(_OPAD) + _sha1(key.translate(_IPAD) + msg).digest()).digest()


# -- addresses -----------------------------------------------------------------------------

def encode_address(host: str, port: int) -> bytes:
    """The SOCKS5-style address: ATYP, address, port (big-endian)."""
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} out of range")
    try:
        ip = ip_of(host.strip("[]"))
    except ValueError:
        return _encode_name(host) + port.to_bytes(2, "big")
    atyp = ATYP_IPV4 if ip.version == 4 else ATYP_IPV6
    return bytes((atyp,)) + ip.packed + port.to_bytes(2, "big")


def _encode_name(host: str) -> bytes:
    try:
        name = host.rstrip(".").encode("ascii") if host.isascii() else host.encode("idna")
    except UnicodeError as e:
        raise ValueError(f"host {host!r}: {e}") from None
    if not 0 < len(name) <= 255:
        raise ValueError(f"host name of {len(name)} bytes (1 to 255 allowed)")
    return bytes((ATYP_DOMAIN, len(name))) + name


def decode_address(data: bytes | memoryview, offset: int = 0) -> tuple[str, int, int]:
    """(host, port, end offset) of the address at `offset`; ValueError when malformed.

    An IPv4-mapped IPv6 address comes back as the IPv4 address it maps: a
    dual-stack server may report an IPv4 peer that way.
    """
    if len(data) <= offset:
        raise ValueError("no address")
    atyp = data[offset]
    if atyp == ATYP_IPV4:
        end = offset + 1 + 4
        host = str(ipaddress.IPv4Address(bytes(data[offset + 1:end])))
    elif atyp == ATYP_IPV6:
        end = offset + 1 + 16
        if len(data) < end:
            raise ValueError("address cut short")
        ip6 = ipaddress.IPv6Address(bytes(data[offset + 1:end]))
        host = str(ip6.ipv4_mapped or ip6)
    elif atyp == ATYP_DOMAIN:
        if len(data) < offset + 2:
            raise ValueError("address cut short")
        n = data[offset + 1]
        end = offset + 2 + n
        if n == 0 or len(data) < end:
            raise ValueError("domain name empty or cut short")
        try:
            host = bytes(data[offset + 2:end]).decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("domain name not ASCII") from None
    else:
        raise ValueError(f"unknown address type {atyp}")
    if len(data) < end + 2:
        raise ValueError("address cut short")
    return host, int.from_bytes(data[end:end + 2], "big"), end + 2


# -- TCP chunks ------------------------------------------------------------------------------

class AuthError(ValueError):
    """A chunk or packet that failed authentication or is malformed."""


class Sealer:
    """One direction's encryption: chunks of up to MAX_PAYLOAD bytes, nonces counting up."""

    __slots__ = ("_aead", "_counter")
    max_payload: ClassVar[int] = MAX_PAYLOAD

    def __init__(self, aead: AEAD) -> None:
        self._aead = aead
        self._counter = 0

    def seal_first(self, header: bytes, data: bytes | bytearray | memoryview) -> bytes | bytearray:
        """The target address and the first bytes (in the same chunks)."""
        return self.seal(header + data)

    def seal(self, data: bytes | bytearray | memoryview) -> bytes | bytearray:
        """The chunks carrying `data` (empty data: nothing; a zero-length chunk is not allowed)."""
        size = len(data)
        if not size:
            return b""
        view = memoryview(data)
        n = self._counter
        step = self.max_payload
        if _HAVE_INTO:
            chunks = -(-size // step)
            out = bytearray(size + chunks * (LEN_FRAME + TAG_SIZE))
            ov = memoryview(out)
            seal_into = self._aead.encrypt_into
            o = 0
            for i in range(0, size, step):
                p = view[i:i + step]
                m = len(p)
                seal_into(n.to_bytes(NONCE_SIZE, "little"), m.to_bytes(2, "big"), None, ov[o:o + LEN_FRAME])
                o += LEN_FRAME
                seal_into((n + 1).to_bytes(NONCE_SIZE, "little"), p, None, ov[o:o + m + TAG_SIZE])
                o += m + TAG_SIZE
                n += 2
            self._counter = n
            return out
        parts = []
        seal = self._aead.encrypt
        for i in range(0, size, step):
            p = view[i:i + step]
            parts.append(seal(n.to_bytes(NONCE_SIZE, "little"), len(p).to_bytes(2, "big"), None))
            parts.append(seal((n + 1).to_bytes(NONCE_SIZE, "little"), p, None))
            n += 2
        self._counter = n
        return b"".join(parts)


class Opener:
    """One direction's decryption: feed it ciphertext as it comes, get back the payload of every whole chunk."""

    __slots__ = ("_aead", "_buf", "_counter", "_length", "chunks", "failure")
    max_payload: ClassVar[int] = MAX_PAYLOAD

    def __init__(self, aead: AEAD) -> None:
        self._aead = aead
        self._counter = 0
        self._buf = bytearray()  # the start of a frame (length or payload) that a read cut off
        self._length = -1  # payload length of the chunk under way, once its length frame is opened
        self.chunks = 0  # chunks opened so far
        # A bad chunk after good ones in the same feed: the good payload is handed out
        # first, and this is raised by the next feed.
        self.failure: AuthError | None = None

    @property
    def pending(self) -> int:
        """Bytes received of a chunk that is not whole yet."""
        return len(self._buf) + (LEN_FRAME if self._length >= 0 else 0)

    def feed(self, data: bytes) -> bytes:
        """Payload of the whole chunks now received; AuthError on a bad chunk (the stream is then unusable)."""
        if self.failure is not None:
            raise self.failure
        out: list[bytes] = []
        try:
            self._feed(data, out)
        except AuthError as e:
            if not out:
                raise
            self.failure = e
        return out[0] if len(out) == 1 else b"".join(out)

    def _feed(self, data: bytes, out: list[bytes]) -> None:
        pos = 0
        if self._buf:
            # Complete the cut-off frame with just the bytes it lacks, so the rest of
            # `data` is opened where it lies instead of being copied behind it.
            frame = LEN_FRAME if self._length < 0 else self._length + TAG_SIZE
            pos = frame - len(self._buf)
            self._buf += data[:pos]
            if len(self._buf) < frame:
                return
            with memoryview(self._buf) as view:
                self._open(view, 0, frame, out)
            self._buf.clear()
        with memoryview(data) as view:
            pos = self._open(view, pos, len(data), out)
        if pos < len(data):
            self._buf += data[pos:]

    def _open(self, view: memoryview, pos: int, end: int, out: list[bytes]) -> int:
        """Open the frames in view[pos:end]; returns where the first incomplete one starts."""
        opened = self._aead.decrypt
        n = self._counter
        length = self._length
        try:
            while True:
                if length < 0:
                    if end - pos < LEN_FRAME:
                        break
                    length = int.from_bytes(opened(n.to_bytes(NONCE_SIZE, "little"),
                                                   view[pos:pos + LEN_FRAME], None), "big")
                    n += 1
                    pos += LEN_FRAME
                    if not 0 < length <= self.max_payload:
                        raise AuthError(f"chunk length {length} out of range (1 to {self.max_payload})")
                if end - pos < length + TAG_SIZE:
                    break
                out.append(opened(n.to_bytes(NONCE_SIZE, "little"), view[pos:pos + length + TAG_SIZE], None))
                n += 1
                pos += length + TAG_SIZE
                length = -1
                self.chunks += 1
        except InvalidTag:
            raise AuthError(f"chunk {self.chunks} failed authentication") from None
        finally:
            self._counter, self._length = n, length
        return pos


# -- the node ----------------------------------------------------------------------------------

def _b64decode(text: str) -> str:
    """Standard or URL-safe base64, padded or not, to text."""
    s = text.strip().replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    try:
        return base64.b64decode(s, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("not valid base64") from None


def _host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"bad server address {text!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"server address {text!r} has no port")
    if not host or any(c in host for c in " \t/@?#"):
        raise ValueError(f"bad server host {host!r}")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"bad server host {host!r}") from None
    if not port_text.isdigit() or not 0 < int(port_text) <= 0xFFFF:
        raise ValueError(f"bad server port {port_text!r}")
    return host, int(port_text)


@dataclass(frozen=True)
class SsNode:
    """A shadowsocks server: where it is, its cipher and password, and the SIP003 plugin in front of it."""

    protocol: ClassVar[NodeProtocol] = "ss"

    name: str
    host: str
    port: int
    method: str
    password: str
    plugin: Plugin | None = None

    def link(self) -> str:
        """The SIP002 share link: ss://base64url(method:password)@host:port[/?plugin=name%3Bopts]#name."""
        userinfo = base64.urlsafe_b64encode(f"{self.method}:{self.password}".encode()).decode().rstrip("=")
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = f"/?plugin={quote(self.plugin.text(), safe='')}" if self.plugin is not None else ""
        return f"ss://{userinfo}@{host}:{self.port}{query}#{quote(self.name, safe='')}"

    def dialer(self, via: Dialer, frame_timeout: float = 30.0, answer_timeout: float | None = None, *,
               allow_insecure: bool = False, ca_file: str | None = None,
               handshake_timeout: float = 10.0) -> SsDialer:
        """A Dialer through this node, its connections to the server made through `via` (see SsDialer).

        `allow_insecure`, `ca_file` and `handshake_timeout` matter only for a plugin with TLS
        (v2ray-plugin's `tls`): they are as for the other TLS nodes (session.node_context).
        """
        return SsDialer(self, via, frame_timeout, answer_timeout, allow_insecure=allow_insecure, ca_file=ca_file,
                        handshake_timeout=handshake_timeout)


def parse_link(link: str, name: str = "") -> SsNode:
    """The node of an `ss://` link: SIP002, or the older all-base64 form. `name` wins over the link's #tag."""
    text = link.strip()
    scheme, sep, body = text.partition("://")
    if not sep or scheme.lower() != "ss":
        raise ValueError("not an ss:// link")
    body, _, tag = body.partition("#")
    body, _, query = body.partition("?")
    params = parse_qs(query, keep_blank_values=True)
    plugin_text = next((v for v in params.get("plugin", []) if v), None)
    body = body.rstrip("/")
    if "@" in body:  # SIP002: userinfo@host:port, userinfo base64url or percent-encoded method:password
        userinfo, _, hostport = body.rpartition("@")
        userinfo = unquote(userinfo)
        if ":" not in userinfo:
            userinfo = _b64decode(userinfo)
    else:  # the older form: base64(method:password@host:port), the query inside it or after it
        decoded, _, inner_query = _b64decode(body).partition("?")
        if plugin_text is None and inner_query:
            plugin_text = next((v for v in parse_qs(inner_query, keep_blank_values=True).get("plugin", []) if v),
                               None)
        userinfo, at, hostport = decoded.rstrip("/").rpartition("@")
        if not at:
            raise ValueError("no server address (expected method:password@host:port)")
    method, colon, password = userinfo.partition(":")
    if not colon:
        raise ValueError("credentials are not method:password")
    if not password:
        raise ValueError("empty password")
    host, port = _host_port(hostport)
    m = method_of(method)
    if m.kind == "2022":
        # dae's check at parse (base64, long enough); a key that is longer than the method's, or
        # identity keys with ChaCha20, are taken as dae takes them and fail at dial with the reason.
        m.check_password(password)
    # After the method: a link refused for both says the cipher first (the weightier reason).
    plugin = parse_plugin(plugin_text) if plugin_text is not None else None
    return SsNode(name=name or unquote(tag) or f"{host}:{port}", host=host, port=port, method=m.name,
                  password=password, plugin=plugin)


# -- streams -------------------------------------------------------------------------------------

class SsStream:
    """A TCP connection to a destination through a shadowsocks server.

    The target address goes out in the first chunk together with the first
    write's bytes; a read before any write (a server-first protocol) sends
    it on its own first. Errors in what the server sends (authentication,
    framing, a stall inside a chunk, an end before anything came) raise
    DialError with the reason, and again on every later read.

    `frame_timeout` bounds a wait inside a salt or chunk the server has
    started; `answer_timeout` (None: no bound) the wait for the server's first
    byte after ours went out. ss-server keeps a connection it cannot decrypt
    (a wrong password or method) open and silent, so without the latter such
    a connection hangs until the caller gives up.
    """

    raw = None

    def __init__(self, inner: Stream, method: Any, key: Any, header: bytes, where: str,
                 frame_timeout: float = 30.0, answer_timeout: float | None = None,
                 plugin: Plugin | None = None) -> None:
        self.inner = inner
        self.plugin = plugin  # in front of the server: named when the server does not answer
        self.method = method
        self.key = key
        self.where = where
        self.frame_timeout = frame_timeout
        self.answer_timeout = answer_timeout
        self._sent_at = 0.0
        salt = os.urandom(method.salt_size)
        self._request_salt = salt  # a 2022 server's reply must name it
        self._sealer = method.sealer(key, salt)
        self._first: bytes | None = salt  # the salt, sent before the first chunk
        self._header: bytes | None = header
        self._opener: Any = None  # Opener, or a 2022 or stream method's
        self._salt = b""
        self._plain = b""  # opened but not yet read
        self._received = 0
        self._error: DialError | None = None
        self._eof = False
        self._wlock = asyncio.Lock()

    def _seal(self, data: bytes | bytearray | memoryview) -> bytes | bytearray:
        """Seal data, with the salt and the target address in front if they have not gone yet."""
        if self._header is not None:
            sealed = self._sealer.seal_first(self._header, data)
            self._header = None
        else:
            sealed = self._sealer.seal(data)
        if self._first is not None:
            sealed = self._first + sealed
            self._first = None
            self._sent_at = time.monotonic()
        return sealed

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send data (cut into chunks of at most 0x3FFF bytes)."""
        if not data and self._header is None:
            return
        async with self._wlock:
            await self.inner.write(self._seal(data))

    async def write_eof(self) -> None:
        """Half-close towards the server (after the target address, if nothing was written).

        The protocol carries it as TCP's own FIN. ss-server (libev) does not keep
        a half-open connection: it ends both directions there, dropping answers
        still on their way; shadowsocks-rust and v2ray keep the other direction.
        """
        async with self._wlock:
            if self._header is not None:
                await self.inner.write(self._seal(b""))
        await self.inner.write_eof()

    def _fail(self, reason: str) -> DialError:
        self._error = DialError(f"shadowsocks {self.where}: {reason}")
        return self._error

    async def _read_inner(self, n: int) -> bytes:
        raw = self.inner.raw
        if raw is not None:
            # What has arrived already needs no wait, so no timeout to arm and cancel.
            with contextlib.suppress(BlockingIOError, InterruptedError):
                return raw.recv(n)
        # Inside a salt or a chunk the server owes us the rest: a stall there is an error.
        if self._salt or (self._opener is not None and self._opener.pending):
            try:
                async with asyncio.timeout(self.frame_timeout):
                    return await self.inner.read(n)
            except TimeoutError:
                raise self._fail(self._stalled()) from None
        if self._opener is None and self.answer_timeout is not None:
            try:
                async with asyncio.timeout(self._sent_at + self.answer_timeout - time.monotonic()):
                    return await self.inner.read(n)
            except TimeoutError:
                raise self._fail(self._unanswered()) from None
        return await self.inner.read(n)

    def _stalled(self) -> str:
        return f"server stalled for {self.frame_timeout:g}s in the middle of a chunk"

    def _unanswered(self) -> str:
        if self.plugin is not None:
            # obfs-server hands what it does not take for its own to ss-server, which then stays silent.
            why = {"simple-obfs": "wrong obfs-host or obfs mode?", "v2ray-plugin": "mux=0 on one side only?",
                   "shadow-tls": "its shadowsocks server takes another cipher or password?"}[self.plugin.kind]
            return (f"no answer within {self.answer_timeout:g}s: wrong password or method, or the plugin server "
                    f"did not take the {self.plugin.describe()} framing ({why})")
        return (f"no answer within {self.answer_timeout:g}s: wrong password or method? "
                "(a shadowsocks server keeps a connection it cannot decrypt open and silent)")

    async def read(self, n: int) -> bytes:
        """Up to n bytes from the destination; b"" at its end."""
        if self._plain:
            out, self._plain = self._plain[:n], self._plain[n:]
            return out
        if self._error is not None:
            raise self._error
        if self._header is not None:
            async with self._wlock:
                if self._header is not None:
                    await self.inner.write(self._seal(b""))
        while not self._eof:
            try:
                data = await self._read_inner(max(n, MIN_READ))
            except DialError as e:  # the plugin's framing below, or our own stall
                if e is self._error:
                    raise
                raise self._fail(str(e)) from None
            except OSError as e:
                if self._received:
                    raise
                raise self._fail(f"server reset the connection before answering ({e.strerror or e}): "
                                 "wrong password or method, or the destination unreachable") from None
            if not data:
                self.decode_eof()
                return b""
            plain = self.decode(data)
            if plain:
                if len(plain) > n:
                    plain, self._plain = plain[:n], plain[n:]
                return plain
            if self._error is not None:
                raise self._error
        return b""

    # -- the Codec: the same framing as plain calls, for a relay that owns the server's socket ------
    @property
    def error(self) -> DialError | None:
        """The failure a decode found after handing out the good bytes before it."""
        return self._error

    def framed(self) -> tuple[socket.socket, Codec] | None:
        """The socket to the server and this stream as its Codec, when the bytes on it are ours alone
        (over a plugin's or another node's framing: both Codecs, layered)."""
        if self._plain:
            return None
        raw = self.inner.raw
        if raw is not None:
            return raw, self
        below = framing_of(self.inner)
        return None if below is None else (below[0], Layered(below[1], self))

    def encode(self, data: bytes | bytearray | memoryview) -> bytes | bytearray:
        """What to send to the server for `data` (salt and address first, if they have not gone)."""
        if not data and self._header is None:
            return b""
        return self._seal(data)

    def encode_eof(self) -> tuple[bytes | bytearray, bool]:
        """The address if it has not gone yet; then TCP's own FIN (see write_eof)."""
        return self.encode(b""), True

    def reply(self) -> bytes:
        """Nothing: shadowsocks never answers what it reads."""
        return b""

    server_ended = False  # the end of the destination's bytes is TCP's own

    def decode(self, data: bytes) -> bytes | bytearray:
        """The destination's bytes in what the server sent."""
        if self._error is not None:
            raise self._error
        self._received += len(data)
        if self._opener is None:
            self._salt += data
            size = self.method.salt_size
            if len(self._salt) < size:
                return b""
            data = self._salt[size:]
            self._opener = self.method.opener(self.key, self._salt[:size], self._request_salt)
            self._salt = b""
        try:
            plain = self._opener.feed(data)
        except AuthError as e:
            raise self._auth_failed(e) from None
        if self._opener.failure is not None:
            self._auth_failed(self._opener.failure)  # raised after the good bytes are handed on
        return plain

    def decode_eof(self) -> None:
        """The server closed its side: DialError when that cut something short."""
        self._eof = True
        self._at_eof()

    @property
    def watch_interval(self) -> float | None:
        """A quarter of the shorter bound: a stall is found within 1.25 times its bound."""
        bounds = [t for t in (self.frame_timeout, self.answer_timeout) if t is not None]
        return min(bounds) / 4 if bounds else None

    def overdue(self, idle: float) -> str | None:
        """A stall inside a salt or chunk, or no first answer in time (as read() bounds them)."""
        if self._salt or (self._opener is not None and self._opener.pending):
            if idle > self.frame_timeout:
                return self._fail(self._stalled()).args[0]
        elif self._opener is None and self.answer_timeout is not None and idle > self.answer_timeout:
            return self._fail(self._unanswered()).args[0]
        return None

    def _auth_failed(self, e: AuthError) -> DialError:
        first = self._opener is not None and self._opener.chunks == 0
        return self._fail(f"{e}" + (" (wrong password or method?)" if first else " (tampered?)"))

    def _at_eof(self) -> bytes:
        if self._opener is None:
            if self._received:
                raise self._fail(f"closed after {self._received} bytes of a {self.method.salt_size}-byte salt")
            raise self._fail("server closed the connection without answering: wrong password or method, "
                             "or the destination refused or could not be reached")
        if self._opener.pending:
            raise self._fail(f"closed in the middle of a chunk ({self._opener.pending} bytes of it came)")
        return b""

    def close(self) -> None:
        self.inner.close()


# -- datagrams -----------------------------------------------------------------------------------

def seal_packet(method: Method, key: bytes, host: str, port: int, data: bytes, salt: bytes | None = None) -> bytes:
    """One UDP packet to host:port (AeadPackets.seal with the address encoded)."""
    return AeadPackets(method, key).seal(encode_address(host, port), data, salt)


def open_packet(method: Method, key: bytes, packet: bytes) -> tuple[bytes, str, int]:
    """(data, source host, source port) of a UDP packet from the server; AuthError when it is not good."""
    plain, at = AeadPackets(method, key).open(packet)
    try:
        host, port, end = decode_address(plain, at)
    except ValueError as e:
        raise AuthError(f"packet address: {e}") from None
    return plain[end:], host, port


class AeadPackets:
    """The UDP codec of an AEAD method: salt + AEAD(address + data) per packet, zero nonce, under the salt's
    own subkey. (Every method's `datagrams(key)` gives one of these shapes: `seal(address, data)`,
    `open(packet) -> (plain, offset of the source address)`.)"""

    def __init__(self, method: Method, key: bytes) -> None:
        self.method = method
        self.key = key

    def seal(self, address: bytes, data: bytes, salt: bytes | None = None) -> bytes:
        salt = os.urandom(self.method.salt_size) if salt is None else salt
        return salt + self.method.aead(subkey(self.key, salt)).encrypt(ZERO_NONCE, address + data, None)

    def open(self, packet: bytes) -> tuple[bytes, int]:
        """(plain, offset of the source address in it); AuthError when the packet is not good."""
        size = self.method.salt_size
        if len(packet) < size + TAG_SIZE + 1:
            raise AuthError(f"packet of {len(packet)} bytes is too short")
        try:
            aead = self.method.aead(subkey(self.key, packet[:size]))
            return aead.decrypt(ZERO_NONCE, memoryview(packet)[size:], None), 0
        except InvalidTag:
            raise AuthError("packet failed authentication") from None


@dataclass
class SsDatagrams:
    """UDP through a shadowsocks server, over one UDP socket to it.

    Packets from the server that fail authentication or are malformed are
    dropped and counted (`dropped`, `last_drop`), never raised; an ICMP
    error from the server raises DialError.
    """

    sock: socket.socket
    method: Any
    key: Any
    where: str
    dropped: int = 0
    last_drop: str = ""
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    codec: Any = None  # method.datagrams(key): one per association (a 2022 session lives in it)

    def __post_init__(self) -> None:
        if self.codec is None:
            self.codec = self.method.datagrams(self.key)

    async def send(self, data: bytes, host: str, port: int) -> None:
        """Send `data` to host:port."""
        try:
            packet = self.codec.seal(encode_address(host, port), data)
        except ValueError as e:
            raise DialError(f"shadowsocks {self.where}: destination {host}:{port}: {e}") from None
        try:
            await self.loop.sock_sendall(self.sock, packet)
        except OSError as e:
            raise DialError(f"shadowsocks {self.where}: send: {e.strerror or e}") from None

    async def recv(self) -> tuple[bytes, str, int]:
        """The next good datagram and its source (the destination that answered)."""
        while True:
            try:
                packet = await self.loop.sock_recv(self.sock, UDP_RECV)
            except OSError as e:
                raise DialError(f"shadowsocks {self.where}: {e.strerror or e} (no UDP relay there?)") from None
            try:
                plain, at = self.codec.open(packet)
                host, port, end = decode_address(plain, at)
                return plain[end:], host, port
            except (AuthError, ValueError) as e:
                self.dropped += 1
                self.last_drop = str(e)
                log.debug("shadowsocks %s: UDP packet dropped: %s", self.where, e)

    def close(self) -> None:
        self.sock.close()


# -- the dialer -------------------------------------------------------------------------------------

class SsDialer:
    """Dials destinations through a shadowsocks node, reaching the server through `via`.

    `frame_timeout` and `answer_timeout` go to every stream (see SsStream). A node with a
    plugin has each connection wrapped in the plugin's framing (sip003.open_plugin) first;
    the TLS settings are for a plugin with TLS.
    """

    def __init__(self, node: SsNode, via: Dialer, frame_timeout: float = 30.0,
                 answer_timeout: float | None = None, *, allow_insecure: bool = False, ca_file: str | None = None,
                 handshake_timeout: float = 10.0) -> None:
        self.node = node
        self.via = via
        self.name = node.name
        self.frame_timeout = frame_timeout
        self.answer_timeout = answer_timeout
        self.method = method_of(node.method)
        if self.method.kind == "stream":
            from daetui.outbound.ss_stream_ciphers import WARNING

            log.warning("shadowsocks node %s: %s is %s", node.name, self.method.name, WARNING)
        try:
            self.key = self.method.key_of(node.password)
            self.key_error = ""
        except ValueError as e:  # a 2022 password that is not its keys: every dial says so
            self.key, self.key_error = None, str(e)
        self.allow_insecure = allow_insecure
        self.ca_file = ca_file
        self.handshake_timeout = handshake_timeout
        host = f"[{node.host}]" if ":" in node.host else node.host
        plugin = f", {node.plugin.describe()}" if node.plugin is not None else ""
        self.where = f"{node.name} ({host}:{node.port}{plugin})"

    async def connect(self, host: str, port: int) -> SsStream:
        """A stream to host:port (an address or a name the server resolves)."""
        if self.key_error:
            raise DialError(f"shadowsocks {self.where}: {self.key_error}")
        try:
            header = encode_address(host, port)
        except ValueError as e:
            raise DialError(f"destination {host}:{port}: {e}") from None
        try:
            inner = await self.via.connect(self.node.host, self.node.port)
        except DialError as e:
            raise DialError(f"shadowsocks {self.where}: {e}") from None
        if self.node.plugin is not None:
            try:
                inner = await open_plugin(self.node.plugin, inner, self.node.host, self.node.port,
                                          allow_insecure=self.allow_insecure, ca_file=self.ca_file,
                                          timeout=self.handshake_timeout)
            except DialError as e:
                inner.close()
                raise DialError(f"shadowsocks {self.where}: {e}") from None
            except BaseException:
                inner.close()
                raise
        return SsStream(inner, self.method, self.key, header, self.where, self.frame_timeout, self.answer_timeout,
                        self.node.plugin)

    async def datagrams(self) -> SsDatagrams:
        """UDP through the server; needs `via` to be a direct dialer (a UDP socket of its own).

        A plugin carries TCP only: UDP goes to the server's port unwrapped (see sip003.py).
        """
        if self.key_error:
            raise DialError(f"shadowsocks {self.where}: {self.key_error}")
        udp_socket = getattr(self.via, "udp_socket", None)
        if udp_socket is None:
            raise DialError(f"shadowsocks {self.where}: UDP through a chain ({self.via.name}) is not supported")
        try:
            host = await self.via.udp_address(self.node.host, self.node.port)  # type: ignore[attr-defined]
        except DialError as e:  # (node() DNS rules when `via` is the manager's NamedDirect)
            raise DialError(f"shadowsocks {self.where}: {e}") from None
        try:
            sock = udp_socket(host, self.node.port)
        except OSError as e:
            raise DialError(f"shadowsocks {self.where}: {e.strerror or e}") from None
        return SsDatagrams(sock, self.method, self.key, self.where)
