"""daetui/outbound/reality.py and vless's security=reality: links, the sealed session id, the certificate check.

The session-id vector is derived here by hand (RFC 5869's HKDF with hmac,
RFC 7748 §6.1's X25519 keys and shared secret) rather than with the code
under test, and pinned; the lab test (tests/kernel/test_proxy_reality.py)
shows a real REALITY server (mihomo) opening what this code seals.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import CertificateBuilder, Name, NameAttribute
from cryptography.x509.oid import NameOID

from daetui.outbound import reality, vless
from daetui.outbound.links import parse_link
from daetui.outbound.reality import Reality
from daetui.outbound.subscription import clash_link

UID = "b831b0c4-33b7-4873-9834-28d66d87d4ce"
# RFC 7748 §6.1: Alice's private key (the client's key share), Bob's (the server's) and their shared secret.
ALICE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
BOB = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
PBK = base64.urlsafe_b64encode(BOB_PUBLIC).decode().rstrip("=")


def link(**params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"security": "reality", "pbk": PBK, **params}.items())
    return f"vless://{UID}@203.0.113.5:443?{query}#r"


# -- links ---------------------------------------------------------------------------------------------

def test_link_fields_and_round_trip() -> None:
    node = vless.parse_link(link(sni="www.example.com", sid="0123abcd", fp="chrome", spx="%2Fdocs", type="tcp",
                                 encryption="none"))
    assert node.reality == Reality(PBK, "0123abcd", "chrome", "/docs")
    assert not node.tls and node.sni == "www.example.com" and node.transport.kind == "tcp"
    assert node.reality.key == BOB_PUBLIC and node.reality.sid == bytes.fromhex("0123abcd00000000")
    again = node.link()
    assert "security=reality" in again and f"pbk={PBK}" in again and "sid=0123abcd" in again
    assert "fp=chrome" in again and "spx=%2Fdocs" in again
    assert vless.parse_link(again) == node
    assert parse_link(again) == node  # the one entry point every link goes through


def test_least_a_link_needs_and_padded_keys() -> None:
    """pbk alone (no short id: all zeros, which servers may list as ""); pbk with base64 padding."""
    node = vless.parse_link(link())
    assert node.reality is not None and node.reality.sid == bytes(8) and node.sni == ""
    assert vless.parse_link(node.link()) == node
    assert vless.parse_link(link(pbk=PBK + "=")).reality.key == BOB_PUBLIC  # type: ignore[union-attr]


def test_plain_tls_nodes_keep_their_links() -> None:
    node = vless.parse_link(f"vless://{UID}@h.test:443?security=tls&sni=a.test")
    assert node.reality is None and node.tls and "security=tls" in node.link() and "pbk" not in node.link()


@pytest.mark.parametrize(("params", "reason"), [
    ({"pbk": ""}, "security=reality needs pbk"),
    ({"pbk": "not*base64"}, "is not base64url"),
    ({"pbk": PBK[:20]}, "not an X25519 key's 32"),
    ({"sid": "abc"}, "is not a short id"),
    ({"sid": "0123456789abcdef01"}, "is not a short id"),
    ({"sid": "zz"}, "is not hex"),
    ({"type": "ws", "path": "/x"}, "security=reality over type=ws is not supported (reality: tcp only)"),
    ({"type": "grpc", "serviceName": "x"}, "security=reality over type=grpc is not supported"),
    ({"flow": "xtls-rprx-vision"}, "flow=xtls-rprx-vision (XTLS) is not supported"),
    ({"pqv": "AAAA"}, "pqv= (REALITY's ML-DSA-65 certificate check) is not supported"),
])
def test_refusals(params: dict[str, str], reason: str) -> None:
    with pytest.raises(ValueError) as e:
        vless.parse_link(link(**params))
    assert reason in str(e.value)


def test_clash_reality_opts_become_a_node() -> None:
    """clash YAML's reality-opts and client-fingerprint reach the node through the link it is turned into."""
    proxy = {"name": "r", "type": "vless", "server": "203.0.113.5", "port": 443, "uuid": UID, "tls": True,
             "servername": "www.example.com", "client-fingerprint": "firefox", "network": "tcp",
             "reality-opts": {"public-key": PBK, "short-id": "ab"}}
    node = vless.parse_link(clash_link(proxy)[0])
    assert node.reality == Reality(PBK, "ab", "firefox") and node.sni == "www.example.com"


def test_server_name() -> None:
    assert reality.server_name("203.0.113.5", "www.example.com") == "www.example.com"
    assert reality.server_name("proxy.example.com", "") == "proxy.example.com"
    assert reality.server_name("2001:db8::1", "") == reality.server_name("[2001:db8::1]", "") == ""


# -- the sealed session id -----------------------------------------------------------------------------

RANDOM = bytes(range(32))
# A ClientHello message's first fields (its random, then a zeroed 32-byte session id) and a short tail.
HELLO = b"\x01\x00\x00\x80\x03\x03" + RANDOM + b"\x20" + bytes(32) + b"\x00\x02\x13\x01\x01\x00\x00\x00"
NOW = 1767225600  # 2026-01-01T00:00:00Z
# Computed by hand below (HKDF by hmac, RFC 5869) and pinned.
AUTH_KEY = "68e5a4d6fbfc0f93477d737fbdd45bd5f81578fbd172327b6db8e963e2ba4a3c"
SESSION_ID = "0d16c3d164dcba213610ec732bbeca501e6f7c6e97ee8d7c190264875aed2574"


def test_auth_key_and_sealed_session_id_match_a_vector_derived_by_hand() -> None:
    prk = hmac.new(RANDOM[:20], SHARED, hashlib.sha256).digest()  # HKDF-Extract(salt=random[:20], ikm)
    okm = hmac.new(prk, b"REALITY\x01", hashlib.sha256).digest()  # HKDF-Expand, one block is 32 bytes
    plain = bytes((1, 8, 2, 0)) + NOW.to_bytes(4, "big") + bytes.fromhex("0123abcd00000000")
    assert okm.hex() == AUTH_KEY
    assert AESGCM(okm).encrypt(RANDOM[20:], plain, HELLO).hex() == SESSION_ID

    key = reality.auth_key(X25519PrivateKey.from_private_bytes(ALICE), BOB_PUBLIC, RANDOM)
    assert key.hex() == AUTH_KEY
    assert reality.seal_session_id(HELLO, RANDOM, key, reality.short_id_bytes("0123abcd"), NOW).hex() == SESSION_ID


def test_the_server_opens_it() -> None:
    """As a REALITY server does: its private key and the hello's key share give the key; the plaintext is
    version, 0, time, short id; any change to the hello (the AAD) makes it fail."""
    client = X25519PrivateKey.generate()
    share = client.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    server = X25519PrivateKey.from_private_bytes(BOB)
    sealed = reality.seal_session_id(HELLO, RANDOM, reality.auth_key(client, BOB_PUBLIC, RANDOM),
                                     reality.short_id_bytes("ff"), NOW)
    key = HKDF(SHA256(), 32, RANDOM[:20], b"REALITY").derive(server.exchange(X25519PublicKey.from_public_bytes(share)))
    plain = AESGCM(key).decrypt(RANDOM[20:], sealed, HELLO)
    assert plain[:4] == bytes((1, 8, 2, 0)) and int.from_bytes(plain[4:8]) == NOW and plain[8:] == b"\xff" + bytes(7)
    with pytest.raises(InvalidTag):
        AESGCM(key).decrypt(RANDOM[20:], sealed, HELLO[:-1] + b"\x01")


# -- the certificate -----------------------------------------------------------------------------------

def certificate(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    name = Name([NameAttribute(NameOID.COMMON_NAME, "www.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return builder.sign(key, None).public_bytes(Encoding.DER)
    return builder.sign(key, SHA256()).public_bytes(Encoding.DER)


def test_reality_certificate() -> None:
    """An ed25519 certificate whose signature is HMAC-SHA512(key, its public key): REALITY's, for that key only."""
    signer = ed25519.Ed25519PrivateKey.generate()
    public = signer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    key = bytes(range(32))
    real = certificate(signer)
    forged = real[:-64] + hmac.new(key, public, hashlib.sha512).digest()  # as the server writes it
    got = reality.reality_public_key(forged, key)
    assert got is not None and got.public_bytes(Encoding.Raw, PublicFormat.Raw) == public
    assert reality.reality_public_key(forged, bytes(32)) is None  # another session's key
    assert reality.reality_public_key(real, key) is None  # an honest ed25519 certificate
    assert reality.reality_public_key(certificate(ec.generate_private_key(ec.SECP256R1())), key) is None
    assert reality.reality_public_key(b"\x30\x00", key) is None
    assert reality.subject(real) == "CN=www.example.com"
