"""Shadowsocks AEAD: share links, keys, chunks, UDP packets, and the stream's framing on loopback.

Known answers are computed here step by step, independently of the module:
EVP_BytesToKey as its MD5 chain (anchored on MD5("password")), HKDF-SHA1 from
HMAC (checked against RFC 5869's SHA-1 test case), and every chunk sealed with
the AEAD primitive and a nonce built by hand (XChaCha20-Poly1305 from
cryptography's ChaCha20 and ChaCha20-Poly1305, its HChaCha20 checked against
the draft's test vector). The kernel test sends a request
made by the same recipe to the real ss-server.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import socket

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from daetui.net.stream import DialError, SocketStream
from daetui.outbound import shadowsocks as ss
from daetui.outbound.links import LinkError
from daetui.outbound.links import parse_link as parse_any_link
from daetui.outbound.shadowsocks import (
    METHODS,
    AuthError,
    Opener,
    Sealer,
    SsNode,
    SsStream,
    decode_address,
    encode_address,
    master_key,
    method_of,
    open_packet,
    parse_link,
    seal_packet,
    subkey,
)
from testkit.sockets import tcp_pair
from testkit.xchacha import RefXChaCha20Poly1305, ref_hchacha20


def test_reference_hchacha20_is_the_drafts() -> None:
    """draft-irtf-cfrg-xchacha-03, 2.2.1: the reference XChaCha20-Poly1305 is checked against."""
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    assert ref_hchacha20(bytes(range(32)), nonce).hex() == (
        "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc")


CIPHERS = {"aes-128-gcm": (16, AESGCM), "aes-192-gcm": (24, AESGCM), "aes-256-gcm": (32, AESGCM),
           "chacha20-ietf-poly1305": (32, ChaCha20Poly1305), "xchacha20-ietf-poly1305": (32, RefXChaCha20Poly1305)}
ALL = pytest.mark.parametrize("method", list(CIPHERS))


# -- the reference, written from the spec -------------------------------------------------------

def ref_evp(password: bytes, size: int) -> bytes:
    d, out = b"", b""
    while len(out) < size:
        d = hashlib.md5(d + password).digest()
        out += d
    return out[:size]


def ref_hkdf_sha1(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    prk = hmac.new(salt, ikm, "sha1").digest()
    t, okm, i = b"", b"", 1
    while len(okm) < length:
        t = hmac.new(prk, t + info + bytes([i]), "sha1").digest()
        okm += t
        i += 1
    return okm[:length]


def ref_aead(method: str, password: str, salt: bytes) -> AESGCM | ChaCha20Poly1305:
    size, cls = CIPHERS[method]
    return cls(ref_hkdf_sha1(ref_evp(password.encode(), size), salt, b"ss-subkey", size))


def nonce(i: int) -> bytes:
    return i.to_bytes(12, "little")


def ref_chunks(aead: AESGCM | ChaCha20Poly1305, payloads: list[bytes], first_nonce: int = 0) -> bytes:
    out, n = b"", first_nonce
    for p in payloads:
        out += aead.encrypt(nonce(n), len(p).to_bytes(2, "big"), None) + aead.encrypt(nonce(n + 1), p, None)
        n += 2
    return out


def ref_open(aead: AESGCM | ChaCha20Poly1305, data: bytes) -> list[bytes]:
    out, n, pos = [], 0, 0
    while pos < len(data):
        length = int.from_bytes(aead.decrypt(nonce(n), data[pos:pos + 18], None), "big")
        pos += 18
        out.append(aead.decrypt(nonce(n + 1), data[pos:pos + length + 16], None))
        pos += length + 16
        n += 2
    return out


# -- keys ---------------------------------------------------------------------------------------

def test_master_key_is_evp_bytes_to_key() -> None:
    # MD5("password") is a published value; the 32-byte key continues the chain.
    assert master_key("password", 16).hex() == "5f4dcc3b5aa765d61d8327deb882cf99"
    d1 = bytes.fromhex("5f4dcc3b5aa765d61d8327deb882cf99")
    assert master_key("password", 32) == d1 + hashlib.md5(d1 + b"password").digest()
    assert master_key("pässword", 24) == ref_evp("pässword".encode(), 24)


def test_reference_hkdf_is_rfc5869() -> None:
    """RFC 5869, test case 4 (HKDF-SHA1): the reference the subkeys are checked against."""
    okm = ref_hkdf_sha1(bytes([0x0B] * 11), bytes(range(13)), bytes(range(0xF0, 0xFA)), 42)
    assert okm.hex() == ("085a01ea1b10f36933068b56efa5ad81a4f14b822f5b091568a9cdd4f155fda2"
                         "c22e422478d305f3f896")


@ALL
def test_subkey(method: str) -> None:
    size = CIPHERS[method][0]
    key = master_key("secret", size)
    salt = bytes(range(size))
    assert subkey(key, salt) == ref_hkdf_sha1(key, salt, b"ss-subkey", size)
    assert len(subkey(key, salt)) == size == method_of(method).key_size == method_of(method).salt_size


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=16, max_size=32), salt=st.binary(max_size=100), other=st.binary(max_size=100))
def test_subkey_is_hkdf_sha1_as_openssl_computes_it(key: bytes, salt: bytes, other: bytes) -> None:
    # The subkey's SHA-1 and HMAC are CPython's own: checked against cryptography's HKDF and the
    # hmac module (OpenSSL), keys longer than SHA-1's block included (HMAC hashes those first).
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    assert subkey(key, salt) == HKDF(algorithm=hashes.SHA1(), length=len(key), salt=salt,
                                     info=b"ss-subkey").derive(key)
    assert ss._hmac_sha1(other, salt) == hmac.new(other, salt, "sha1").digest()


# -- TCP chunks ----------------------------------------------------------------------------------

@ALL
def test_first_chunk_known_answer(method: str) -> None:
    """Salt, then [len][payload] with nonces 0, 1; the next write goes on with 2, 3."""
    m = METHODS[method]
    salt = bytes(range(100, 100 + m.salt_size))
    header = b"\x01" + bytes([203, 0, 113, 10]) + (80).to_bytes(2, "big")
    assert encode_address("203.0.113.10", 80) == header
    sealer = Sealer(m.aead(subkey(master_key("secret", m.key_size), salt)))
    ref = ref_aead(method, "secret", salt)
    assert sealer.seal(header + b"GET /") == ref_chunks(ref, [header + b"GET /"])
    assert sealer.seal(b"more") == ref_chunks(ref, [b"more"], first_nonce=2)


def test_large_writes_use_the_largest_chunks() -> None:
    m = METHODS["aes-256-gcm"]
    key = os.urandom(32)
    data = os.urandom(2 * 0x3FFF + 5)
    sealed = bytes(Sealer(m.aead(key)).seal(data))
    chunks = ref_open(AESGCM(key), sealed)
    assert [len(c) for c in chunks] == [0x3FFF, 0x3FFF, 5]
    assert b"".join(chunks) == data
    assert len(sealed) == len(data) + 3 * 34
    assert Sealer(m.aead(key)).seal(b"") == b""  # never a zero-length chunk


@ALL
def test_fallback_without_encrypt_into_seals_the_same(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """cryptography < 45 has no encrypt_into: the other path must give the same bytes."""
    m = METHODS[method]
    key = os.urandom(m.key_size)
    data = os.urandom(3 * 0x3FFF + 77)
    fast = bytes(Sealer(m.aead(key)).seal(data))
    monkeypatch.setattr(ss, "_HAVE_INTO", False)
    assert bytes(Sealer(m.aead(key)).seal(data)) == fast


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 40000), min_size=1, max_size=4),
       cuts=st.lists(st.integers(1, 30000), max_size=12))
def test_opener_takes_any_cut(sizes: list[int], cuts: list[int]) -> None:
    """However reads cut the chunks (inside a length, a payload, a tag), the bytes come out whole and in order."""
    key = bytes(16)
    sealer, opener = Sealer(AESGCM(key)), Opener(AESGCM(key))
    writes = [os.urandom(n) for n in sizes]
    stream = b"".join(bytes(sealer.seal(w)) for w in writes)
    out, pos = [], 0
    for c in [*cuts, len(stream)]:
        piece = stream[pos:pos + c]
        pos += len(piece)
        out.append(opener.feed(piece))
        if pos >= len(stream):
            break
    assert b"".join(out) == b"".join(writes)
    assert opener.pending == 0


@pytest.mark.parametrize("step", [1, 2, 17, 18, 19, 33])
def test_opener_byte_by_byte(step: int) -> None:
    """Reads of a few bytes end at every offset of a frame, its last byte but one included."""
    key = bytes(16)
    data = os.urandom(100)
    stream = bytes(Sealer(AESGCM(key)).seal(data[:60])) + bytes(Sealer(AESGCM(key)).seal(b""))
    stream += ref_chunks(AESGCM(key), [data[60:]], first_nonce=2)
    opener = Opener(AESGCM(key))
    assert b"".join(opener.feed(stream[i:i + step]) for i in range(0, len(stream), step)) == data
    assert opener.pending == 0 and opener.chunks == 2


@pytest.mark.parametrize("where", ["length", "length tag", "payload", "payload tag"])
def test_tampered_chunk_is_refused(where: str) -> None:
    key = os.urandom(16)
    sealed = bytearray(ref_chunks(AESGCM(key), [b"first chunk", b"second chunk"]))
    second = 18 + len(b"first chunk") + 16
    flip = {"length": second, "length tag": second + 17, "payload": second + 18, "payload tag": len(sealed) - 1}
    sealed[flip[where]] ^= 0x40
    opener = Opener(AESGCM(key))
    # The good chunk before it is handed out; the bad one fails the next feed, and every one after.
    assert opener.feed(bytes(sealed)) == b"first chunk"
    for _ in range(2):
        with pytest.raises(AuthError, match="chunk 1 failed authentication"):
            opener.feed(b"")
    with pytest.raises(AuthError, match="chunk 0 failed authentication"):
        Opener(AESGCM(key)).feed(bytes(sealed[second:]))


def test_chunks_out_of_order_are_refused() -> None:
    key = os.urandom(16)
    a = ref_chunks(AESGCM(key), [b"a"])  # nonces 0, 1
    with pytest.raises(AuthError):
        Opener(AESGCM(key)).feed(ref_chunks(AESGCM(key), [b"b"], first_nonce=2) + a)


@pytest.mark.parametrize("length", [0, 0x4000, 0xFFFF])
def test_chunk_length_out_of_range(length: int) -> None:
    key = os.urandom(16)
    frame = AESGCM(key).encrypt(nonce(0), length.to_bytes(2, "big"), None)
    with pytest.raises(AuthError, match=f"chunk length {length} out of range"):
        Opener(AESGCM(key)).feed(frame)


# -- addresses ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("host", "port", "wire"), [
    ("203.0.113.10", 80, "01cb00710a0050"),
    ("2001:db8:3::10", 443, "0420010db8000300000000000000000010" + "01bb"),
    ("www.example.test", 53, "0310" + b"www.example.test".hex() + "0035"),
    ("bücher.example", 80, "0315" + b"xn--bcher-kva.example".hex() + "0050"),
])
def test_address_round_trip(host: str, port: int, wire: str) -> None:
    assert encode_address(host, port).hex() == wire
    back_host, back_port, end = decode_address(bytes.fromhex(wire) + b"rest")
    assert (back_port, end) == (port, len(wire) // 2)
    assert back_host == (host if host.isascii() else "xn--bcher-kva.example")


def test_v4_mapped_address_comes_back_as_ipv4() -> None:
    assert decode_address(encode_address("::ffff:203.0.113.10", 7))[:2] == ("203.0.113.10", 7)


@pytest.mark.parametrize(("wire", "reason"), [
    (b"", "no address"),
    (b"\x01\xcb\x00\x71", "IPv4 address|cut short"),
    (b"\x01\xcb\x00\x71\x0a\x00", "cut short"),
    (b"\x02\xaa\xbb\xcc\xdd\x00\x50", "unknown address type 2"),
    (b"\x03\x00\x00\x50", "empty"),
    (b"\x03\x05abc", "cut short"),
    (b"\x03\x02\xff\xfe\x00\x50", "not ASCII"),
    (b"\x04" + bytes(17), "cut short"),
])
def test_malformed_address(wire: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        decode_address(wire)


def test_address_limits() -> None:
    with pytest.raises(ValueError, match="256 bytes"):
        encode_address("a" * 256, 80)
    with pytest.raises(ValueError, match="port"):
        encode_address("203.0.113.10", 70000)


# -- UDP packets ---------------------------------------------------------------------------------------

@ALL
def test_udp_packet_known_answer(method: str) -> None:
    m = METHODS[method]
    salt = bytes(range(7, 7 + m.salt_size))
    key = master_key("secret", m.key_size)
    packet = seal_packet(m, key, "203.0.113.10", 7, b"ping", salt=salt)
    ref = ref_aead(method, "secret", salt)
    assert packet == salt + ref.encrypt(bytes(12), bytes.fromhex("01cb00710a0007") + b"ping", None)
    # A reply as the server makes it: its own salt, the source address, the data.
    reply_salt = os.urandom(m.salt_size)
    reply = reply_salt + ref_aead(method, "secret", reply_salt).encrypt(
        bytes(12), encode_address("2001:db8:3::10", 7) + b"pong", None)
    assert open_packet(m, key, reply) == (b"pong", "2001:db8:3::10", 7)


def test_bad_udp_packets() -> None:
    m = METHODS["aes-128-gcm"]
    key = master_key("secret", 16)
    good = seal_packet(m, key, "203.0.113.10", 7, b"x")
    with pytest.raises(AuthError, match="too short"):
        open_packet(m, key, good[:20])
    with pytest.raises(AuthError, match="failed authentication"):
        open_packet(m, key, good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(AuthError, match="failed authentication"):
        open_packet(m, master_key("other", 16), good)
    salt = os.urandom(16)
    bad_addr = salt + ref_aead("aes-128-gcm", "secret", salt).encrypt(bytes(12), b"\x09junk", None)
    with pytest.raises(AuthError, match="address"):
        open_packet(m, key, bad_addr)


# -- share links ------------------------------------------------------------------------------------------

NODES = [
    SsNode("plain", "203.0.113.12", 8388, "aes-128-gcm", "secret"),
    SsNode("v6 node ✓", "2001:db8:3::12", 443, "chacha20-ietf-poly1305", "pä:ss@w/o#r?d%"),
    SsNode("by name", "ss.example.test", 65535, "aes-256-gcm", "x"),
    SsNode("192", "198.51.100.7", 1, "aes-192-gcm", "p w"),
]


@pytest.mark.parametrize("node", NODES, ids=lambda n: n.name)
def test_link_round_trip(node: SsNode) -> None:
    link = node.link()
    assert link.startswith("ss://") and "=" not in link.split("@")[0]  # base64url, unpadded (SIP002)
    assert parse_link(link) == node
    assert parse_any_link(link) == node
    assert parse_link(link, "renamed") == SsNode("renamed", node.host, node.port, node.method, node.password)


def test_sip002_example_and_forms() -> None:
    # SIP002's own example.
    node = parse_link("ss://YWVzLTEyOC1nY206dGVzdA@192.168.100.1:8888#Example1")
    assert node == SsNode("Example1", "192.168.100.1", 8888, "aes-128-gcm", "test")
    # Padded standard base64, a trailing slash, percent-encoded plain userinfo.
    b64 = base64.b64encode(b"aes-256-gcm:a+b/c?").decode()
    assert "=" in b64 or "+" in b64 or "/" in b64
    assert parse_link(f"ss://{b64}@[2001:db8::1]:8388/#n").password == "a+b/c?"
    assert parse_link("ss://chacha20-ietf-poly1305:p%40ss@h.test:1#x").password == "p@ss"
    # The older all-base64 form, with an @ in the password.
    old = base64.b64encode(b"aes-128-gcm:p@ss:word@203.0.113.12:8388").decode().rstrip("=")
    assert parse_link(f"ss://{old}#Old%20one") == SsNode("Old one", "203.0.113.12", 8388, "aes-128-gcm", "p@ss:word")
    # No tag and no name: the address names it. An alias prints as its canonical name.
    assert parse_link("ss://chacha20-poly1305:pw@h.test:9").name == "h.test:9"
    assert parse_link("ss://chacha20-poly1305:pw@h.test:9").method == "chacha20-ietf-poly1305"
    # A plugin parameter left empty is no plugin; other parameters are ignored.
    assert parse_link("ss://aes-128-gcm:pw@h.test:9/?plugin=&group=x#n").port == 9


@pytest.mark.parametrize(("link", "reason"), [
    ("ss://YWVzLTEyOC1nY206dGVzdA@h.test:8388/?plugin=kcptun%3Bmode%3Dfast#x",
     "plugin 'kcptun'.*not supported"),
    ("ss://des-cfb:pw@h.test:8388", "no client for this stream cipher"),
    ("ss://2022-blake3-aes-128-gcm:pw!@h.test:8388", "key 1 of the password is not base64"),
    ("ss://2022-blake3-aes-256-gcm:MzMzMzMzMzMzMzMzMzMz@h.test:8388", "is 15 bytes; 2022-blake3-aes-256-gcm takes 32"),
    ("ss://rot13:pw@h.test:8388", "unknown method 'rot13'"),
    ("ss://aes-128-gcm:pw@h.test", "no port"),
    ("ss://aes-128-gcm:pw@h.test:0", "bad server port"),
    ("ss://aes-128-gcm:pw@h.test:99999", "bad server port"),
    ("ss://aes-128-gcm:pw@[2001:db8::1:8388", "bad server address"),
    ("ss://aes-128-gcm:pw@:8388", "bad server host"),
    ("ss://aes-128-gcm:@h.test:8388", "empty password"),
    ("ss://!!!notbase64!!!@h.test:8388", "base64"),
    ("ss://" + base64.b64encode(b"aes-128-gcm-pw@h.test:1").decode(), "method:password"),
    ("ss://" + base64.b64encode(b"aes-128-gcm:pw").decode(), "no server address"),
    ("socks5://h.test:1", "not an ss:// link"),
])
def test_bad_links(link: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_link(link)


def test_bad_link_through_the_table() -> None:
    with pytest.raises(LinkError, match=r"ss:// link: plugin 'kcptun'.*not supported"):
        parse_any_link("ss://aes-128-gcm:pw@h.test:8388?plugin=kcptun")


# -- the stream on loopback, against a server written with the reference ---------------------------------

def recv_exactly(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        data = s.recv(n - len(out))
        assert data, f"closed after {len(out)} of {n}"
        out += data
    return out


def server_reads_chunk(s: socket.socket, aead: AESGCM, n: int) -> bytes:
    length = int.from_bytes(aead.decrypt(nonce(n), recv_exactly(s, 18), None), "big")
    return aead.decrypt(nonce(n + 1), recv_exactly(s, length + 16), None)


def stream_over(client: socket.socket, header: bytes, **kw: float) -> SsStream:
    m = METHODS["aes-128-gcm"]
    return SsStream(SocketStream(client), m, master_key("secret", 16), header, "test", **kw)


async def test_address_goes_with_the_first_write() -> None:
    client, server = tcp_pair(server_timeout=5)
    header = encode_address("203.0.113.10", 80)
    stream = stream_over(client, header)
    await stream.write(b"GET / HTTP/1.1\r\n\r\n")
    await stream.write(b"second")
    salt = recv_exactly(server, 16)
    aead = ref_aead("aes-128-gcm", "secret", salt)
    assert server_reads_chunk(server, aead, 0) == header + b"GET / HTTP/1.1\r\n\r\n"
    assert server_reads_chunk(server, aead, 2) == b"second"
    # The answer: the server's own salt and chunks, cut across reads.
    reply_salt = os.urandom(16)
    body = [b"!" * 0x3FFF, b"!" * 0x3FFF, b"!" * (40000 - 2 * 0x3FFF)]
    reply = reply_salt + ref_chunks(ref_aead("aes-128-gcm", "secret", reply_salt), [b"HTTP/1.1 200 OK", *body])
    for i in range(0, len(reply), 7000):
        server.sendall(reply[i:i + 7000])
    server.shutdown(socket.SHUT_WR)
    got = b""
    async with asyncio.timeout(5):
        while data := await stream.read(1 << 16):
            got += data
    assert got == b"HTTP/1.1 200 OK" + b"!" * 40000
    stream.close()
    server.close()


async def test_read_first_sends_the_address_alone() -> None:
    """A server-first protocol: the client reads before writing, so the address must go out now."""
    client, server = tcp_pair(server_timeout=5)
    stream = stream_over(client, encode_address("mail.example.test", 25))
    reader = asyncio.ensure_future(stream.read(100))
    salt = await asyncio.to_thread(recv_exactly, server, 16)
    aead = ref_aead("aes-128-gcm", "secret", salt)
    assert await asyncio.to_thread(server_reads_chunk, server, aead, 0) == encode_address("mail.example.test", 25)
    reply_salt = os.urandom(16)
    server.sendall(reply_salt + ref_chunks(ref_aead("aes-128-gcm", "secret", reply_salt), [b"220 hello"]))
    assert await asyncio.wait_for(reader, 5) == b"220 hello"
    await stream.write_eof()
    assert server.recv(10) == b""  # half-closed after the address, nothing more
    stream.close()
    server.close()


async def test_small_reads_keep_the_rest() -> None:
    client, server = tcp_pair(server_timeout=5)
    stream = stream_over(client, encode_address("203.0.113.10", 7))
    await stream.write(b"x")
    salt = recv_exactly(server, 16)
    server_reads_chunk(server, ref_aead("aes-128-gcm", "secret", salt), 0)
    reply_salt = os.urandom(16)
    server.sendall(reply_salt + ref_chunks(ref_aead("aes-128-gcm", "secret", reply_salt), [b"abcdefghij"]))
    server.close()
    async with asyncio.timeout(5):
        assert [await stream.read(4), await stream.read(4), await stream.read(4), await stream.read(4)] == [
            b"abcd", b"efgh", b"ij", b""]
    stream.close()


async def test_errors_stay() -> None:
    """A stream that failed keeps failing with the same reason."""
    client, server = tcp_pair(server_timeout=5)
    stream = stream_over(client, encode_address("203.0.113.10", 7))
    await stream.write(b"x")
    server.sendall(os.urandom(16 + 40))
    async with asyncio.timeout(5):
        with pytest.raises(DialError, match=r"chunk 0 failed authentication \(wrong password or method") as first:
            await stream.read(100)
        with pytest.raises(DialError) as again:
            await stream.read(100)
    assert again.value is first.value
    stream.close()
    server.close()


async def test_udp_through_a_chain_is_refused() -> None:
    inner = SsNode("inner", "203.0.113.12", 8388, "aes-128-gcm", "pw").dialer(via=None)  # type: ignore[arg-type]
    outer = SsNode("outer", "203.0.113.13", 8388, "aes-128-gcm", "pw").dialer(via=inner)
    with pytest.raises(DialError, match=r"UDP through a chain \(inner\) is not supported"):
        await outer.datagrams()


async def test_datagrams_drop_and_count_bad_packets() -> None:
    m = METHODS["chacha20-ietf-poly1305"]
    key = master_key("secret", 32)
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.connect(server.getsockname())
    client.setblocking(False)
    grams = ss.SsDatagrams(client, m, key, "test")
    await grams.send(b"ping", "203.0.113.10", 7)
    packet, addr = server.recvfrom(65536)
    assert open_packet(m, key, packet) == (b"ping", "203.0.113.10", 7)
    server.sendto(b"short", addr)
    server.sendto(os.urandom(200), addr)
    server.sendto(seal_packet(m, master_key("other", 32), "203.0.113.10", 7, b"wrong key"), addr)
    server.sendto(seal_packet(m, key, "203.0.113.10", 7, b"pong"), addr)
    assert await asyncio.wait_for(grams.recv(), 5) == (b"pong", "203.0.113.10", 7)
    assert grams.dropped == 3
    assert "failed authentication" in grams.last_drop
    grams.close()
    server.close()
