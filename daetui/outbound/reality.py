"""REALITY (XTLS): TLS 1.3 to a proxy server that poses as another site, authenticated by a key the link carries.

A node's link says (v2rayN/Xray share-link format; clash YAML `reality-opts`):

    vless://UUID@HOST:443?security=reality&sni=www.example.com&pbk=KEY&sid=SHORTID&fp=chrome&spx=%2F#NAME

- `pbk`: the server's X25519 public key, base64url (no padding), 32 bytes;
- `sid`: a short id the server knows, hex, at most 16 digits (zero-padded to 8 bytes; may be empty);
- `sni`: the name sent, which the server must list (its `server-names`);
- `fp` (uTLS fingerprint) and `spx` (spider path) are kept and written back, not used:
  the ClientHello is daetui's own (net/tls13.py: TLS 1.3, X25519, three suites), not a
  browser's imitation, and spx only matters to a client that, failing, browses the
  fake site to look innocent; failing here is a DialError.

What the client does (Xray's and mihomo's REALITY clients do the same):

1. the ClientHello's 32-byte session id carries, sealed, `version (3) | 0 | unix time (4) | short id (8)`:
   AES-256-GCM with key = HKDF-SHA256(ikm = X25519(the key_share's private key, pbk),
   salt = the hello's random[:20], info = "REALITY"), nonce = random[20:], and as AAD the
   whole ClientHello message with the session id zeroed (`seal_session_id`);
2. a server that opens it (and knows the short id) finishes the handshake itself, with
   an ed25519 certificate whose signature field is HMAC-SHA512(that key, the certificate's
   public key) (`is_reality_certificate`); any other server, or a REALITY server that did not
   open it, relays the connection to the site it poses as (its `dest`), whose real
   certificate then comes: a DialError naming it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509 import load_der_x509_certificate

from daetui.net import tls13
from daetui.net.stream import Dialer, DialError, Stream

# The client version in the session id: mihomo's (1.8.2). Servers may set a minimum or maximum
# client version (minClientVer/maxClientVer); few do, and mihomo clients are common, so this is
# one they take.
CLIENT_VERSION = bytes((1, 8, 2))
SHORT_ID_BYTES = 8


@dataclass(frozen=True)
class Reality:
    """A node's REALITY settings, as its link writes them (checked when made)."""

    public_key: str  # pbk: base64url X25519 public key
    short_id: str = ""  # sid: hex
    fingerprint: str = ""  # fp: kept, not imitated
    spider_x: str = ""  # spx: kept, not used

    def __post_init__(self) -> None:
        public_key_bytes(self.public_key)
        short_id_bytes(self.short_id)

    @property
    def key(self) -> bytes:
        return public_key_bytes(self.public_key)

    @property
    def sid(self) -> bytes:
        return short_id_bytes(self.short_id)

    def params(self) -> list[tuple[str, str]]:
        """The link's query fields for these settings."""
        return [("pbk", self.public_key), ("sid", self.short_id), ("fp", self.fingerprint), ("spx", self.spider_x)]


def from_params(params: dict[str, str]) -> Reality:
    """The REALITY settings of a link's query (`pbk`, `sid`, `fp`, `spx`); ValueError with the reason.

    `pqv` (Xray's ML-DSA-65 check of the server's certificate, a post-quantum
    second signature) is refused rather than skipped: a link that asks for it
    should not get less.
    """
    if params.get("pqv"):
        raise ValueError("pqv= (REALITY's ML-DSA-65 certificate check) is not supported")
    try:
        return Reality(params.get("pbk", "").strip(), params.get("sid", "").strip(), params.get("fp", ""),
                       params.get("spx", ""))
    except ValueError as e:
        if str(e).startswith("security=reality"):
            raise
        raise ValueError(f"security=reality: {e}") from None


def public_key_bytes(text: str) -> bytes:
    """The 32 bytes of a base64url public key (padding optional); ValueError naming the field."""
    if not text:
        raise ValueError("security=reality needs pbk (the server's public key)")
    try:
        key = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except (binascii.Error, ValueError):
        raise ValueError(f"pbk={text!r} is not base64url") from None
    if len(key) != 32:
        raise ValueError(f"pbk={text!r} is {len(key)} bytes, not an X25519 key's 32")
    return key


def short_id_bytes(text: str) -> bytes:
    """A short id's 8 bytes (hex, zero-padded on the right, as servers store it); ValueError if it is not one."""
    if len(text) > 2 * SHORT_ID_BYTES or len(text) % 2:
        raise ValueError(f"sid={text!r} is not a short id (an even number of hex digits, at most 16)")
    try:
        return bytes.fromhex(text).ljust(SHORT_ID_BYTES, b"\x00")
    except ValueError:
        raise ValueError(f"sid={text!r} is not hex") from None


def auth_key(private: X25519PrivateKey, server_public: bytes, random: bytes) -> bytes:
    """The session's REALITY key: HKDF-SHA256 of the X25519 secret, salted with random[:20]."""
    shared = private.exchange(X25519PublicKey.from_public_bytes(server_public))
    return HKDF(hashes.SHA256(), 32, salt=random[:20], info=b"REALITY").derive(shared)


def seal_session_id(hello: bytes, random: bytes, key: bytes, short_id: bytes, now: int,
                    version: bytes = CLIENT_VERSION) -> bytes:
    """The sealed 32-byte session id for `hello` (the ClientHello message, its session id zeroed)."""
    plain = version + b"\x00" + (now & 0xFFFFFFFF).to_bytes(4) + short_id
    return AESGCM(key).encrypt(random[20:], plain, hello)


# An ed25519 SubjectPublicKeyInfo up to its key: SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (33) }.
ED25519_SPKI = bytes.fromhex("302a300506032b6570032100")


def reality_public_key(der: bytes, key: bytes) -> ed25519.Ed25519PublicKey | None:
    """The ed25519 key of the certificate a REALITY server makes for this session's key, or None if it is not that.

    Its signature (the DER's last 64 bytes, as the server writes it) is
    HMAC-SHA512(key, its ed25519 public key). Read off the bytes rather than
    parsed: the certificate's serial number is 0, which X.509 parsers are
    starting to refuse.
    """
    at = der.find(ED25519_SPKI)
    if at < 0 or len(der) < at + len(ED25519_SPKI) + 32 + 64:
        return None
    public = der[at + len(ED25519_SPKI):at + len(ED25519_SPKI) + 32]
    if not hmac.compare_digest(hmac.new(key, public, hashlib.sha512).digest(), der[-64:]):
        return None
    return ed25519.Ed25519PublicKey.from_public_bytes(public)


def subject(der: bytes) -> str:
    """A certificate's subject, for an error message."""
    try:
        return load_der_x509_certificate(der).subject.rfc4514_string() or "no subject"
    except ValueError:
        return "an unreadable subject"


async def start_reality(inner: Stream, reality: Reality, server_name: str, timeout: float | None, *,
                        alpn: Sequence[str] = (), half_close: bool = True) -> tls13.Tls13Stream:
    """A REALITY session over `inner` (closed if it fails); DialError says why it failed."""
    keys: list[bytes] = []

    def session_id(hello: bytes, random: bytes, private: X25519PrivateKey) -> bytes:
        key = auth_key(private, reality.key, random)
        keys.append(key)
        return seal_session_id(hello, random, key, reality.sid, int(time.time()))

    def verify(certificates: list[bytes]) -> ed25519.Ed25519PublicKey:
        public = reality_public_key(certificates[0], keys[0])
        if public is None:
            raise DialError(f"REALITY: the server answered with the certificate of {subject(certificates[0])}, "
                            "not REALITY's: wrong public key (pbk) or short id (sid), an sni the server "
                            "does not list, or not a REALITY server")
        return public

    return await tls13.handshake(inner, server_name, verify, alpn=alpn, session_id=session_id, timeout=timeout,
                                 half_close=half_close)


def server_name(host: str, sni: str) -> str:
    """The name sent: `sni`, else the server's host unless it is an address (no SNI then)."""
    if sni:
        return sni
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    return ""


async def open_session(via: Dialer, host: str, port: int, reality: Reality, sni: str, alpn: Sequence[str],
                       timeout: float, request: bytes, protocol: str) -> Stream:
    """A REALITY server's connection for one request, `request` sent first (as session.open_session
    does it with TLS); the name sent is `sni`, else the server's host unless that is an address."""
    stream = await via.connect(host, port)
    tls = await start_reality(stream, reality, server_name(host, sni), timeout, alpn=alpn)
    try:
        await tls.write(request)
    except OSError as e:
        tls.close()
        raise DialError(f"{protocol}: sending the request: {e.strerror or e}") from None
    except BaseException:
        tls.close()
        raise
    return tls
