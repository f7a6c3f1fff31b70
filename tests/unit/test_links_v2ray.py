"""trojan://, vless:// and vmess:// links, and the wire formats of those dialers, without a network.

Links: printed back and parsed again to the same node; real-world shapes
read right; every unsupported feature refused with its reason. VMess: the
KDF against v2fly's published vector, then every key, the auth ID, the
sealed request header and the server's answer worked out here step by step
with Python's own hmac/hashlib/AES and compared with what vmess.py makes
and accepts.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import struct
import uuid
import zlib
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from daetui.net.buffered import Buffered
from daetui.net.stream import DialError
from daetui.outbound import trojan, vless, vmess
from daetui.outbound._address import parse_socks_address, socks_address, v2ray_address
from daetui.outbound._udp import PerDestination
from daetui.outbound.links import LinkError, parse_link

UID = "b831381d-6324-4d53-ad4f-8cda48b30811"


# -- links: round trips ------------------------------------------------------------------

NODES = [
    trojan.TrojanNode("plain", "203.0.113.10", 443, "secret"),
    trojan.TrojanNode("all of it", "2001:db8:3::10", 8443, "p@ss:w/rd #%+ é", sni="proxy.lab.test",
                      allow_insecure=True, alpn=("h2", "http/1.1")),
    trojan.TrojanNode("", "proxy.example.com", 1, "x"),
    vless.VlessNode("v", "203.0.113.10", 10003, UID),
    vless.VlessNode("v tls ✓", "2001:db8::1", 443, UID, tls=True, sni="a.test", allow_insecure=True, alpn=("h2",)),
    vmess.VmessNode("m", "203.0.113.10", 10005, UID),
    vmess.VmessNode("节点 m", "2001:db8::1", 443, UID, "chacha20-poly1305", tls=True, sni="a.test",
                    allow_insecure=True, alpn=("h2", "http/1.1")),
    vmess.VmessNode("m", "v.example.com", 80, UID, "aes-128-gcm"),
]


@pytest.mark.parametrize("node", NODES, ids=lambda n: f"{type(n).__name__}-{n.name or 'noname'}")
def test_link_round_trip(node: Any) -> None:
    link = node.link()
    assert parse_link(link) == node
    assert type(node).__module__.rsplit(".", 1)[1] == link.split("://")[0]
    # The name given with the link (a config's node name) wins over the link's own.
    assert parse_link(link, "mine").name == "mine"


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(["trojan", "vless", "vmess"]),
    name=st.text(max_size=20),
    host=st.one_of(st.ip_addresses().map(str), st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,6}){1,2}",
                                                               fullmatch=True)),
    port=st.integers(1, 65535),
    password=st.text(min_size=1, max_size=30).filter(lambda p: p.strip() == p and "\x00" not in p),
    uid=st.uuids().map(str),
    tls=st.booleans(),
    sni=st.sampled_from(["", "a.test", "proxy.lab.test"]),
    insecure=st.booleans(),
    alpn=st.sampled_from([(), ("h2",), ("h2", "http/1.1")]),
    security=st.sampled_from(vmess.SECURITIES),
)
def test_link_round_trip_property(kind: str, name: str, host: str, port: int, password: str, uid: str, tls: bool,
                                  sni: str, insecure: bool, alpn: tuple[str, ...], security: str) -> None:
    name = name.strip()
    node: Any
    if kind == "trojan":
        node = trojan.TrojanNode(name, host, port, password, sni, insecure, alpn)
    elif kind == "vless":
        node = vless.VlessNode(name, host, port, uid, tls, sni if tls else "", insecure, alpn)
    else:
        node = vmess.VmessNode(name, host, port, uid, security, tls, sni if tls else "", insecure, alpn)
    assert parse_link(node.link()) == node


# -- links: the shapes found in the wild --------------------------------------------------

def test_trojan_link_fields() -> None:
    node = parse_link("trojan://pass%40word@example.com:443?security=tls&type=tcp&headerType=none"
                      "&sni=cdn.example.com&allowInsecure=1&alpn=h2%2Chttp%2F1.1#My%20Node")
    assert node == trojan.TrojanNode("My Node", "example.com", 443, "pass@word", "cdn.example.com", True,
                                     ("h2", "http/1.1"))
    # peer= is the older name of sni=; IPv6 in brackets; no name.
    node = parse_link("trojan://pw@[2001:DB8::1]:8443?peer=x.test")
    assert (node.host, node.port, node.sni, node.name, node.allow_insecure) == ("2001:db8::1", 8443, "x.test", "",
                                                                                False)


def test_vless_link_fields() -> None:
    node = parse_link(f"vless://{UID.upper()}@[2001:db8::2]:443?encryption=none&security=tls&sni=a.test"
                      "&type=tcp&headerType=none&fp=chrome&allowInsecure=0#v%231")
    assert node == vless.VlessNode("v#1", "2001:db8::2", 443, UID, True, "a.test", False, ())
    assert parse_link(f"vless://{UID}@203.0.113.10:80").tls is False


def _vmess(obj: dict[str, Any], urlsafe: bool = False, strip: bool = False) -> str:
    raw = json.dumps(obj).encode()
    text = (base64.urlsafe_b64encode(raw) if urlsafe else base64.b64encode(raw)).decode()
    return "vmess://" + (text.rstrip("=") if strip else text)


def test_vmess_link_fields() -> None:
    # Numbers as numbers, url-safe base64 without padding, the SNI taken from `host` when TLS has none.
    obj = {"v": 2, "ps": "m1", "add": "v.example.com", "port": 443, "id": UID, "aid": 0, "net": "tcp",
           "type": "none", "host": "front.example.com", "path": "", "tls": "tls"}
    for urlsafe, strip in ((False, False), (True, True)):
        node = parse_link(_vmess(obj, urlsafe, strip))
        assert node == vmess.VmessNode("m1", "v.example.com", 443, UID, "auto", True, "front.example.com")
    node = parse_link(_vmess({"add": "203.0.113.10", "port": "10005", "id": UID, "aid": "0", "scy": "chacha20-poly1305",
                              "tls": "", "allowInsecure": True}))
    assert (node.security, node.tls, node.sni, node.allow_insecure) == ("chacha20-poly1305", False, "", True)
    assert node.security_id == 4
    assert vmess.VmessNode("a", "h", 1, UID).security_id == 3  # auto: aes-128-gcm


# -- links: refused, with the reason --------------------------------------------------------

BAD = [
    ("trojan://@h.test:443", "no password"),
    ("trojan://pw@h.test", "no server port"),
    ("trojan://pw@h.test:99999", "port"),
    ("trojan://pw@:443", "no server host"),
    ("trojan://pw@h.test:443?type=quic&path=/x", "type=quic is not supported"),
    ("trojan://pw@h.test:443?type=grpc&mode=multi", "mode=multi is not supported"),
    ("trojan://pw@h.test:443?security=none", "security=none is not supported"),
    ("trojan://pw@h.test:443?allowInsecure=maybe", "allowInsecure='maybe'"),
    ("vless://not-a-uuid@h.test:443", "is not a UUID"),
    (f"vless://{UID}@h.test:443?flow=xtls-rprx-vision&security=tls", "flow=xtls-rprx-vision (XTLS)"),
    (f"vless://{UID}@h.test:443?type=kcp", "type=kcp is not supported"),
    (f"vless://{UID}@h.test:443?type=grpc&serviceName=x&mode=guna", "mode=guna is not supported"),
    (f"vless://{UID}@h.test:443?security=reality&pbk=x", "pbk='x' is not base64url"),
    (f"vless://{UID}@h.test:443?security=reality", "security=reality needs pbk"),
    (f"vless://{UID}@h.test:443?encryption=aes-128-gcm", "encryption=aes-128-gcm"),
    (f"vless://{UID}@h.test:443?headerType=http", "headerType=http"),
    (_vmess({"add": "h.test", "port": "443", "id": UID, "aid": "64"}), "alterId 64 is not supported"),
    (_vmess({"add": "h.test", "port": "443", "id": UID, "aid": "0", "net": "grpc", "type": "multi"}),
     "type=multi is not supported"),
    (_vmess({"add": "h.test", "port": "443", "id": UID, "net": "tcp", "type": "http"}), "type=http"),
    (_vmess({"add": "h.test", "port": "443", "id": UID, "scy": "none"}), "security 'none' is not supported"),
    (_vmess({"add": "h.test", "port": "443", "id": UID, "tls": "xtls"}), "tls=xtls"),
    (_vmess({"add": "h.test", "port": "443", "id": "x"}), "is not a UUID"),
    (_vmess({"port": "443", "id": UID}), "no server address"),
    (_vmess({"add": "h.test", "port": "https", "id": UID}), "not a number"),
    (_vmess({"add": "h.test", "port": 0, "id": UID}), "port 0 out of range"),
    ("vmess://%%%not base64%%%", "not base64"),
    ("vmess://" + base64.b64encode(b"aes-128-gcm:uuid@h.test:443").decode(), "v2rayN's JSON"),
    ("vmess://" + base64.b64encode(b"[1, 2]").decode(), "not an object"),
]


@pytest.mark.parametrize(("link", "reason"), BAD)
def test_bad_links(link: str, reason: str) -> None:
    with pytest.raises(LinkError) as e:
        parse_link(link)
    assert reason in str(e.value)
    assert str(e.value).startswith(link.split("://")[0] + ":// link: ")


# -- addresses and the plain framings --------------------------------------------------------

def test_addresses() -> None:
    assert socks_address("203.0.113.10", 80) == b"\x01\xcb\x00\x71\x0a\x00\x50"
    assert socks_address("2001:db8::1", 443)[:1] == b"\x04" and len(socks_address("2001:db8::1", 443)) == 19
    assert socks_address("a.test", 7) == b"\x03\x06a.test\x00\x07"
    assert v2ray_address("203.0.113.10", 80) == b"\x00\x50\x01\xcb\x00\x71\x0a"
    assert v2ray_address("a.test", 7) == b"\x00\x07\x02\x06a.test"
    assert v2ray_address("2001:db8::1", 1)[2] == 3
    for host in ("203.0.113.10", "2001:db8::1", "a.test"):
        data = b"xx" + socks_address(host, 53) + b"rest"
        assert parse_socks_address(data, 2) == (host, 53, len(data) - 4)
        assert parse_socks_address(data[:-5], 2) is None  # not all there yet
    with pytest.raises(DialError, match="unknown address type 9"):
        parse_socks_address(b"\x09abcdef")
    with pytest.raises(DialError, match="255"):
        socks_address("a" * 256, 1)


def test_trojan_request() -> None:
    req = trojan.request("pw", trojan.CONNECT, "203.0.113.10", 80)
    assert req[:56] == hashlib.sha224(b"pw").hexdigest().encode()
    assert req[56:] == b"\r\n\x01" + socks_address("203.0.113.10", 80) + b"\r\n"
    assert trojan.udp_frame(b"hi", "a.test", 7) == socks_address("a.test", 7) + b"\x00\x02\r\nhi"


def test_vless_request() -> None:
    req = vless.request(UID, vless.CMD_TCP, "2001:db8::1", 443)
    assert req == b"\x00" + uuid.UUID(UID).bytes + b"\x00\x01" + v2ray_address("2001:db8::1", 443)


class FakeStream:
    """A Stream that hands out prepared bytes in small pieces and records what is written."""

    raw = None

    def __init__(self, data: bytes = b"", piece: int = 3) -> None:
        self.data = data
        self.piece = piece
        self.written = bytearray()
        self.closed = False

    async def read(self, n: int) -> bytes:
        out, self.data = self.data[:min(n, self.piece)], self.data[min(n, self.piece):]
        return out

    async def write(self, data: bytes) -> None:
        self.written += data

    async def write_eof(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


async def test_trojan_udp_frames() -> None:
    frames = trojan.udp_frame(b"one", "203.0.113.10", 7) + trojan.udp_frame(b"", "a.test", 9) + \
        trojan.udp_frame(b"x" * 1000, "2001:db8::1", 53)
    d = trojan.TrojanDatagrams(FakeStream(frames))  # type: ignore[arg-type]
    assert await d.recv() == (b"one", "203.0.113.10", 7)
    assert await d.recv() == (b"", "a.test", 9)
    assert await d.recv() == (b"x" * 1000, "2001:db8::1", 53)
    with pytest.raises(DialError, match="closed the UDP association"):
        await d.recv()
    with pytest.raises(DialError, match="no CRLF"):
        await trojan.TrojanDatagrams(FakeStream(socks_address("a.test", 1) + b"\x00\x01XYz")).recv()  # type: ignore[arg-type]
    with pytest.raises(DialError, match="unknown address type"):
        await trojan.TrojanDatagrams(FakeStream(b"HTTP/1.1 400 Bad Request\r\n")).recv()  # type: ignore[arg-type]


async def test_vless_response() -> None:
    s = vless.VlessStream(FakeStream(b"\x00\x02abhello"))  # type: ignore[arg-type]
    got = b""
    while data := await s.read(100):
        got += data
    assert got == b"hello"  # the addons skipped
    for data, match in ((b"", "closed without a response"), (b"\x01\x00", "response version 1"),
                        (b"\x00\x05ab", "closed")):
        with pytest.raises(DialError, match=match):
            await vless.VlessStream(FakeStream(data)).read(10)  # type: ignore[arg-type]


# -- vmess: KDF and keys, step by step ---------------------------------------------------------

class HmacHash:
    """Python's hmac as a hash object, so hmac.new can nest it: the KDF exactly as v2ray builds it."""

    digest_size = 32
    block_size = 64

    def __init__(self, key: bytes, below: Any, data: bytes = b"") -> None:
        self.key, self.below = key, below
        self.h = hmac.new(key, data, below)
        self.name = "hmac"

    def update(self, data: bytes) -> None:
        self.h.update(data)

    def digest(self) -> bytes:
        return self.h.digest()

    def copy(self) -> HmacHash:
        other = HmacHash.__new__(HmacHash)
        other.key, other.below, other.h, other.name = self.key, self.below, self.h.copy(), self.name
        return other


def reference_kdf(key: bytes, *path: bytes) -> bytes:
    """KDF(key, path...) = HMAC keyed path[-1] over (HMAC keyed path[-2] over (... HMAC-SHA256 "VMess AEAD KDF"))."""
    def maker(k: bytes, below: Any) -> Any:
        return lambda data=b"": HmacHash(k, below, data)

    digest: Any = maker(b"VMess AEAD KDF", hashlib.sha256)
    for element in path:
        digest = maker(element, digest)
    return digest(key).digest()


def test_kdf_upstream_vector() -> None:
    # v2fly/v2ray-core proxy/vmess/aead/kdf_test.go, TestKDFValue.
    expected = "53e9d7e1bd7bd25022b71ead07d8a596efc8a845c7888652fd684b4903dc8892"
    path = (b"Demo Path for KDF Value Test", b"Demo Path for KDF Value Test2", b"Demo Path for KDF Value Test3")
    assert vmess.kdf(b"Demo Key for KDF Value Test", *path).hex() == expected
    assert reference_kdf(b"Demo Key for KDF Value Test", *path).hex() == expected


def test_kdf_step_by_step() -> None:
    key = bytes(range(16))
    # No path: plain HMAC-SHA256 keyed with the root.
    assert vmess.kdf(key) == hmac.new(b"VMess AEAD KDF", key, hashlib.sha256).digest()
    # One element: RFC 2104 written out, with HMAC-SHA256("VMess AEAD KDF", .) as the hash.
    def h0(m: bytes) -> bytes:
        return hmac.new(b"VMess AEAD KDF", m, hashlib.sha256).digest()

    k = b"AES Auth ID Encryption".ljust(64, b"\0")
    by_hand = h0(bytes(b ^ 0x5C for b in k) + h0(bytes(b ^ 0x36 for b in k) + key))
    assert vmess.kdf(key, b"AES Auth ID Encryption") == by_hand
    # The three-element paths of the header keys, against hmac.new nested.
    aid, nonce = bytes(range(100, 116)), bytes(range(8))
    for label in (vmess.HEADER_LEN_KEY, vmess.HEADER_LEN_IV, vmess.HEADER_KEY, vmess.HEADER_IV):
        assert vmess.kdf(key, label, aid, nonce) == reference_kdf(key, label, aid, nonce)
    # A path element longer than a block is hashed first, as HMAC does with long keys.
    assert vmess.kdf(key, b"L" * 100) == reference_kdf(key, b"L" * 100)


def test_cmd_key() -> None:
    expected = hashlib.md5(uuid.UUID(UID).bytes + b"c48619fe-8f02-49e0-b9e9-edf763e17e21").digest()
    assert vmess.cmd_key(UID) == expected
    assert vmess.cmd_key(UID.upper()) == expected


def _aes_ecb_decrypt(key: bytes, block: bytes) -> bytes:
    dec = Cipher(algorithms.AES(key), modes.ECB()).decryptor()
    return dec.update(block) + dec.finalize()


def test_auth_id() -> None:
    key = vmess.cmd_key(UID)
    aid = vmess.auth_id(key, 1_700_000_000, b"\x01\x02\x03\x04")
    plain = _aes_ecb_decrypt(reference_kdf(key, b"AES Auth ID Encryption")[:16], aid)
    assert plain[:8] == struct.pack("!q", 1_700_000_000)
    assert plain[8:12] == b"\x01\x02\x03\x04"
    assert plain[12:] == struct.pack("!I", zlib.crc32(plain[:12]))


def open_request(key: bytes, sealed: bytes) -> tuple[bytes, bytes]:
    """What a server does with a sealed request header: (auth ID, the header in the clear)."""
    aid, sealed_len, nonce = sealed[:16], sealed[16:34], sealed[34:42]
    length_key = reference_kdf(key, b"VMess Header AEAD Key_Length", aid, nonce)[:16]
    length_iv = reference_kdf(key, b"VMess Header AEAD Nonce_Length", aid, nonce)[:12]
    (length,) = struct.unpack("!H", AESGCM(length_key).decrypt(length_iv, sealed_len, aid))
    header_key = reference_kdf(key, b"VMess Header AEAD Key", aid, nonce)[:16]
    header_iv = reference_kdf(key, b"VMess Header AEAD Nonce", aid, nonce)[:12]
    body = sealed[42:]
    assert len(body) == length + 16
    return aid, AESGCM(header_key).decrypt(header_iv, body, aid)


def fnv1a(data: bytes) -> int:
    h = 2166136261
    for b in data:
        h = ((h ^ b) * 16777619) % 2 ** 32
    return h


def test_sealed_request_header() -> None:
    key = vmess.cmd_key(UID)
    req = vmess.Request(bytes(range(16)), bytes(range(16, 32)), 0xAB, 3, vmess.CMD_TCP, "203.0.113.10", 80)
    sealed = vmess.seal_header(key, req.header(b"\xee" * 5), timestamp=1_700_000_000, rand4=b"abcd",
                               nonce=b"12345678")
    aid, header = open_request(key, sealed)
    assert aid == vmess.auth_id(key, 1_700_000_000, b"abcd")
    assert sealed[34:42] == b"12345678"
    assert header[0] == 1  # version
    assert header[1:17] == bytes(range(16, 32))  # body IV first, then the key
    assert header[17:33] == bytes(range(16))
    assert header[33] == 0xAB
    assert header[34] == 0x0D  # S | M | P, as v2ray's own client asks
    assert header[35] == 5 << 4 | 3  # padding length, aes-128-gcm
    assert header[36:38] == b"\x00\x01"  # reserved, TCP
    assert header[38:45] == b"\x00\x50\x01\xcb\x00\x71\x0a"  # port, IPv4, address
    assert header[45:50] == b"\xee" * 5
    assert struct.unpack("!I", header[50:]) == (fnv1a(header[:50]),)
    assert len(header) == 54


def test_response_keys() -> None:
    req = vmess.Request(b"K" * 16, b"I" * 16, 1, 3, vmess.CMD_TCP, "a.test", 1)
    assert req.response_key == hashlib.sha256(b"K" * 16).digest()[:16]
    assert req.response_iv == hashlib.sha256(b"I" * 16).digest()[:16]


# -- vmess: chunks, as a server would read and write them ---------------------------------------

def shake_words(iv: bytes, n: int) -> list[int]:
    out = hashlib.shake_128(iv).digest(2 * n)
    return [int.from_bytes(out[i:i + 2], "big") for i in range(0, 2 * n, 2)]


def server_aead(security: int, key: bytes) -> Any:
    if security == 4:
        k1 = hashlib.md5(key).digest()
        return ChaCha20Poly1305(k1 + hashlib.md5(k1).digest())
    return AESGCM(key)


def server_chunks(security: int, key: bytes, iv: bytes, payloads: list[bytes]) -> bytes:
    """Chunks as v2ray writes them: padding length drawn, then the length mask; the counter in the nonce."""
    words = shake_words(iv, 2 * len(payloads))
    aead = server_aead(security, key)
    out = b""
    for i, payload in enumerate(payloads):
        padding = words[2 * i] % 64
        sealed = aead.encrypt(struct.pack("!H", i) + iv[2:12], payload, None)
        out += struct.pack("!H", (len(sealed) + padding) ^ words[2 * i + 1]) + sealed + b"P" * padding
    return out


def server_response(req: vmess.Request, payloads: list[bytes]) -> bytes:
    key, iv = req.response_key, req.response_iv
    header = bytes((req.check, 0, 0, 0))
    sealed_len = AESGCM(reference_kdf(key, b"AEAD Resp Header Len Key")[:16]).encrypt(
        reference_kdf(iv, b"AEAD Resp Header Len IV")[:12], struct.pack("!H", len(header)), None)
    sealed = AESGCM(reference_kdf(key, b"AEAD Resp Header Key")[:16]).encrypt(
        reference_kdf(iv, b"AEAD Resp Header IV")[:12], header, None)
    return sealed_len + sealed + server_chunks(req.security, key, iv, payloads)


@pytest.mark.parametrize("security", [3, 4], ids=["aes-128-gcm", "chacha20-poly1305"])
async def test_vmess_stream_reads_server_chunks(security: int) -> None:
    req = vmess.Request(bytes(range(16)), bytes(range(50, 66)), 7, security, vmess.CMD_TCP, "a.test", 80)
    payloads = [b"hello ", b"world" * 1000, b"!", b""]  # the empty one ends the stream
    inner = FakeStream(server_response(req, payloads) + b"ignored after the end", piece=1000)
    s = vmess.VmessStream(inner, req)  # type: ignore[arg-type]
    got = b""
    while data := await s.read(4096):
        got += data
    assert got == b"".join(payloads)


@pytest.mark.parametrize("security", [3, 4], ids=["aes-128-gcm", "chacha20-poly1305"])
async def test_vmess_stream_writes_server_readable_chunks(security: int) -> None:
    req = vmess.Request(bytes(range(16)), bytes(range(50, 66)), 7, security, vmess.CMD_TCP, "a.test", 80)
    inner = FakeStream()
    s = vmess.VmessStream(inner, req)  # type: ignore[arg-type]
    data = bytes(range(256)) * 300  # more than one chunk
    await s.write(data)
    await s.write(b"")  # nothing: an empty chunk would end the stream
    await s.write_eof()
    # Read them back as v2ray does.
    wire, words, aead, count, got = bytes(inner.written), iter(shake_words(req.body_iv, 100)), \
        server_aead(security, req.body_key), 0, b""
    while True:
        padding = next(words) % 64
        size = struct.unpack("!H", wire[:2])[0] ^ next(words)
        chunk, wire = wire[2:2 + size], wire[2 + size:]
        plain = aead.decrypt(struct.pack("!H", count) + req.body_iv[2:12], chunk[:size - padding], None)
        count += 1
        if not plain:
            break
        assert len(plain) <= vmess.CHUNK_PAYLOAD
        got += plain
    assert got == data and wire == b""
    with pytest.raises(DialError, match="after the end"):
        await s.write(b"more")


async def test_vmess_bad_answers() -> None:
    req = vmess.Request(bytes(16), bytes(16), 7, 3, vmess.CMD_TCP, "a.test", 80)
    good = server_response(req, [b"data"])
    cases = [
        (b"", "closed without a response"),
        (b"garbage" * 10, "response header length failed authentication"),
        (good[:30], "closed"),
        (good[:18] + b"\x00" * 20, "response header failed authentication"),
        # A flipped bit in the sealed payload (after the 38-byte header and the chunk's length).
        (good[:41] + bytes((good[41] ^ 1,)) + good[42:], "chunk failed authentication"),
        (good[:-3], "closed in a vmess chunk"),
    ]
    other = vmess.Request(bytes(16), bytes(16), 8, 3, vmess.CMD_TCP, "a.test", 80)  # another check byte
    cases.append((server_response(other, [b"data"]), "does not answer this request"))
    for data, match in cases:
        with pytest.raises(DialError, match=match):
            s = vmess.VmessStream(FakeStream(data, piece=64), req)  # type: ignore[arg-type]
            while await s.read(100):
                pass


def test_shake_stream() -> None:
    iv = bytes(range(16))
    s = vmess.Shake(iv)
    words = [s.next() for _ in range(5000)]  # past the first squeezed block
    assert words == shake_words(iv, 5000)
    slow = vmess.Shake(iv)
    slow._xof = None  # the hashlib path, for cryptography older than 45
    assert [slow.next() for _ in range(5000)] == words


async def test_buffered() -> None:
    b = Buffered(FakeStream(b"abcdefgh", piece=3))  # type: ignore[arg-type]
    assert await b.read_exactly(4) == b"abcd"
    assert await b.read_some(10) == b"ef"
    assert await b.read_some(10) == b"gh"
    with pytest.raises(DialError, match="closed in the tail"):
        await b.read_exactly(1, "the tail")


def test_event_loop_free() -> None:
    # Parsing and link printing never need a loop (the config loader runs them).
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    assert parse_link(NODES[0].link()) == NODES[0]


# -- UDP sessions per destination (vless, vmess) ---------------------------------------------------

class EchoSession:
    """A PacketSession whose server echoes every datagram, and can be made to end."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.closed = False

    async def send(self, data: bytes) -> None:
        self.queue.put_nowait(data)

    async def recv(self) -> bytes:
        data = await self.queue.get()
        if data is None:
            raise DialError("ended")
        return data

    def close(self) -> None:
        self.closed = True


async def test_per_destination_sessions() -> None:
    opened: list[tuple[str, int]] = []
    sessions: list[EchoSession] = []

    async def opener(host: str, port: int) -> EchoSession:
        opened.append((host, port))
        await asyncio.sleep(0.01)  # slow enough for the sends below to overlap
        sessions.append(EchoSession())
        return sessions[-1]

    u = PerDestination(opener, "test", max_sessions=2)  # type: ignore[arg-type]
    # Three datagrams to one new destination at once: one session.
    await asyncio.gather(*(u.send(b"%d" % i, "a.test", 1) for i in range(3)))
    assert opened == [("a.test", 1)]
    assert sorted([await u.recv() for _ in range(3)]) == [(b"0", "a.test", 1), (b"1", "a.test", 1),
                                                         (b"2", "a.test", 1)]
    await u.send(b"b", "b.test", 2)
    assert await u.recv() == (b"b", "b.test", 2)
    # A third destination closes the least recently used session (a.test).
    await u.send(b"c", "c.test", 3)
    assert sessions[0].closed and not sessions[1].closed
    assert await u.recv() == (b"c", "c.test", 3)
    # A session that ends is dropped; the next datagram opens a new one.
    sessions[1].queue.put_nowait(None)
    await asyncio.sleep(0.01)
    assert sessions[1].closed
    await u.send(b"again", "b.test", 2)
    assert opened[-1] == ("b.test", 2) and len(opened) == 4
    assert await u.recv() == (b"again", "b.test", 2)
    # close() wakes a waiting recv() with DialError and refuses sends.
    waiter = asyncio.ensure_future(u.recv())
    await asyncio.sleep(0)
    u.close()
    with pytest.raises(DialError, match="closed"):
        await waiter
    with pytest.raises(DialError, match="closed"):
        await u.send(b"x", "a.test", 1)
    assert all(s.closed for s in sessions)


async def test_per_destination_open_failure() -> None:
    async def opener(host: str, port: int) -> EchoSession:
        await asyncio.sleep(0.01)
        raise DialError("no server")

    u = PerDestination(opener, "test")  # type: ignore[arg-type]
    results = await asyncio.gather(u.send(b"1", "a.test", 1), u.send(b"2", "a.test", 1), return_exceptions=True)
    assert [str(r) for r in results] == ["no server", "no server"]
    assert not u.opening and not u.sessions


def test_dialer_trust_settings(tmp_path: Any) -> None:
    """The link's allowInsecure or the global one turns checks off; ssl_context is taken as it is."""
    import ssl

    from daetui.outbound.direct import DirectDialer

    direct = DirectDialer(mark=0)
    strict = trojan.TrojanNode("t", "203.0.113.10", 443, "pw")
    assert strict.dialer(direct).ctx.verify_mode == ssl.CERT_REQUIRED
    assert strict.dialer(direct).ctx.check_hostname
    for d in (strict.dialer(direct, allow_insecure=True),
              trojan.TrojanNode("t", "203.0.113.10", 443, "pw", allow_insecure=True).dialer(direct)):
        assert d.ctx.verify_mode == ssl.CERT_NONE and not d.ctx.check_hostname
    mine = ssl.create_default_context()
    assert strict.dialer(direct, ssl_context=mine).ctx is mine
    assert vless.VlessNode("v", "h", 1, UID, tls=True).dialer(direct, ssl_context=mine).ctx is mine
    assert vless.VlessNode("v", "h", 1, UID).dialer(direct).ctx is None  # no TLS, no context
    assert vmess.VmessNode("m", "h", 1, UID, tls=True, alpn=("h2",)).dialer(direct).ctx is not None
    with pytest.raises(DialError, match="CA file"):
        strict.dialer(direct, ca_file=tmp_path / "missing.pem")
