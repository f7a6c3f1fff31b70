"""ShadowTLS v3 (outbound/shadowtls.py): the session id, the handshake's rewritten records, the data framing,
and the plugin as links and clash entries give it.

The server's side is written out here from the protocol document (ihciah/shadow-tls
docs/protocol-v3-en.md) and sing-shadowtls's server (v3_server.go, v3_conn.go), not from the
client's code: the two must meet.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import random
from pathlib import Path

import pytest

from daetui.net import tls13
from daetui.outbound.links import parse_link as parse_any_link
from daetui.outbound.shadowsocks import parse_link
from daetui.outbound.shadowtls import (
    HandshakeReader,
    Settings,
    ShadowTlsError,
    V3Codec,
    kdf,
    sign_session_id,
    xor,
)
from daetui.outbound.sip003 import parse_plugin, plugin_from_clash
from daetui.outbound.subscription import clash_link

PASSWORD = "shadow;tls=pässword"
REALWORLD = Path("/work/shared/realworld/links.json")


def _hmac4(key: str, *parts: bytes) -> bytes:
    mac = hmac.new(key.encode(), digestmod=hashlib.sha1)
    for part in parts:
        mac.update(part)
    return mac.digest()[:4]


def _record(content_type: int, body: bytes) -> bytes:
    return bytes((content_type, 3, 3)) + len(body).to_bytes(2, "big") + body


# -- the session id ----------------------------------------------------------------------------------

def test_session_id_is_the_documents_recipe() -> None:
    """28 random bytes, then HMAC-SHA1(password, the ClientHello frame without its 5-byte header, the session
    id's last 4 bytes zero)[:4], as the server checks it (sing-shadowtls's verifyClientHello, written out)."""
    hello = tls13.client_hello(os.urandom(32), bytes(32), os.urandom(32), "site.lab.test", ("h2",))
    sid = sign_session_id(PASSWORD, hello)
    assert len(sid) == 32
    sent = hello[:39] + sid + hello[39 + 32:]  # 39: type, length (3), legacy_version (2), random (32), id length
    frame = _record(22, sent)
    # The server's side: the record header is 5 bytes, the session id length at 5+1+3+2+32 = 43, its HMAC at 72.
    assert frame[43] == 32
    expected = hmac.new(PASSWORD.encode(), frame[5:72] + bytes(4) + frame[76:], hashlib.sha1).digest()[:4]
    assert frame[72:76] == expected
    # ...and a hello signed with another password, or altered after signing, fails it.
    assert sign_session_id("other", hello, sid[:28])[28:] != expected
    altered = frame[:100] + bytes((frame[100] ^ 1,)) + frame[101:]
    assert hmac.new(PASSWORD.encode(), altered[5:72] + bytes(4) + altered[76:], hashlib.sha1).digest()[:4] != expected


def test_session_id_prefix_is_kept_and_random_by_default() -> None:
    hello = tls13.client_hello(os.urandom(32), bytes(32), os.urandom(32), "", ())
    prefix = bytes(range(28))
    assert sign_session_id(PASSWORD, hello, prefix)[:28] == prefix
    assert sign_session_id(PASSWORD, hello)[:28] != sign_session_id(PASSWORD, hello)[:28]
    with pytest.raises(ValueError):
        sign_session_id(PASSWORD, hello, b"short")


def test_kdf_and_xor() -> None:
    sr = os.urandom(32)
    key = kdf(PASSWORD, sr)
    assert key == hashlib.sha256(PASSWORD.encode() + sr).digest()
    data = os.urandom(1000)
    assert xor(data, key) == bytes(b ^ key[i % 32] for i, b in enumerate(data))
    assert xor(xor(data, key), key) == data and xor(b"", key) == b""


# -- the handshake: the server's rewriting undone ------------------------------------------------------------

class _Chunks:
    """A Stream that hands out what it holds in pieces of random size."""

    def __init__(self, data: bytes, seed: int = 1) -> None:
        self.data = data
        self.rng = random.Random(seed)
        self.written = b""

    async def read(self, n: int) -> bytes:
        k = min(n, self.rng.randint(1, 700))
        out, self.data = self.data[:k], self.data[k:]
        return out

    async def write(self, data: bytes) -> None:
        self.written += data

    async def write_eof(self) -> None:
        pass

    def close(self) -> None:
        pass


def _server_hello(server_random: bytes) -> bytes:
    body = b"\x03\x03" + server_random + b"\x20" + bytes(32) + b"\x13\x01\x00\x00\x00"
    return _record(22, b"\x02" + len(body).to_bytes(3, "big") + body)


def _rewrite_as_server(password: str, server_random: bytes, records: list[bytes]) -> tuple[bytes, hmac.HMAC]:
    """What sing-shadowtls's copyByFrameWithModification makes of the site's application-data records."""
    key = hashlib.sha256(password.encode() + server_random).digest()
    mac = hmac.new(password.encode(), server_random, hashlib.sha1)
    out = b""
    for body in records:
        masked = bytes(b ^ key[i % len(key)] for i, b in enumerate(body))
        mac.update(masked)
        out += _record(23, mac.digest()[:4] + masked)
    return out, mac


def _read_records(reader: HandshakeReader, count: int) -> list[bytes]:
    async def go() -> list[bytes]:
        return [await reader.read(1 << 16) for _ in range(count)]
    return asyncio.run(go())


def test_handshake_reader_undoes_the_servers_rewriting() -> None:
    sr = os.urandom(32)
    site = [os.urandom(n) for n in (90, 3000, 17)]  # the site's encrypted handshake records
    signed, _ = _rewrite_as_server(PASSWORD, sr, site)
    ccs = _record(20, b"\x01")
    after = b"data the client reads next"
    reader = HandshakeReader(_Chunks(_server_hello(sr) + ccs + signed + after), PASSWORD)  # type: ignore[arg-type]
    got = _read_records(reader, 5)
    assert got == [_server_hello(sr), ccs] + [_record(23, body) for body in site]
    assert reader.server_random == sr and reader.authorized and reader.signed == 3
    # The bytes after the last record the TLS client asked for are kept for the data phase.
    rest = reader.leftover()
    assert after.startswith(rest) and rest + reader.inner.data == after  # type: ignore[attr-defined]


def test_handshake_reader_passes_unsigned_records_as_they_are() -> None:
    """A server that does not know us relays the site untouched: records pass unchanged, not authorized."""
    sr = os.urandom(32)
    site = [_record(23, os.urandom(200)), _record(23, os.urandom(50))]
    reader = HandshakeReader(_Chunks(_server_hello(sr) + b"".join(site)), "wrong")  # type: ignore[arg-type]
    assert _read_records(reader, 3)[1:] == site
    assert not reader.authorized and reader.unsigned == 2 and reader.signed == 0


# -- the data phase ---------------------------------------------------------------------------------------

def _parse_client_records(password: str, sr: bytes, wire: bytes) -> list[bytes]:
    """The data of the client's records, each HMAC checked as the server does (v3_conn.go verifyApplicationData)."""
    mac = hmac.new(password.encode(), sr + b"C", hashlib.sha1)
    out, pos = [], 0
    while pos < len(wire):
        kind, major, minor, length = wire[pos], wire[pos + 1], wire[pos + 2], int.from_bytes(wire[pos + 3:pos + 5])
        assert (kind, major, minor) == (23, 3, 3)
        body = wire[pos + 5:pos + 5 + length]
        mac.update(body[4:])
        expected = mac.digest()[:4]
        mac.update(expected)
        assert body[:4] == expected
        out.append(body[4:])
        pos += 5 + length
    assert pos == len(wire)
    return out


def _server_records(password: str, sr: bytes, chunks: list[bytes]) -> bytes:
    """The server's data records (v3_conn.go's write): HMAC(password, ServerRandom + "S", ...) before each."""
    mac = hmac.new(password.encode(), sr + b"S", hashlib.sha1)
    out = b""
    for data in chunks:
        mac.update(data)
        tag = mac.digest()[:4]
        mac.update(tag)
        out += _record(23, tag + data)
    return out


def test_client_records_carry_the_chained_hmac_and_are_split() -> None:
    sr = os.urandom(32)
    codec = V3Codec(PASSWORD, sr)
    first, big = b"hello", os.urandom(40_000)
    wire = codec.encode(first) + codec.encode(big)
    data = _parse_client_records(PASSWORD, sr, wire)
    assert data[0] == first and b"".join(data[1:]) == big
    assert [len(d) for d in data[1:]] == [16384, 16384, 40_000 - 32768]  # at most 2^14 bytes a record
    assert codec.encode(b"") == b"" and codec.encode_eof() == (b"", True)


def test_server_records_decoded_across_any_cuts() -> None:
    sr = os.urandom(32)
    chunks = [os.urandom(n) for n in (1, 500, 16384, 3)]
    wire = _server_records(PASSWORD, sr, chunks)
    codec = V3Codec(PASSWORD, sr)
    rng = random.Random(7)
    got, pos = b"", 0
    while pos < len(wire):
        k = rng.randint(1, 3000)
        got += codec.decode(wire[pos:pos + k])
        pos += k
    assert got == b"".join(chunks)
    codec.decode_eof()


def test_the_sites_late_records_are_dropped_until_the_first_data() -> None:
    """NewSessionTickets the site sent after our Finished come signed by the handshake's HMAC: dropped."""
    sr = os.urandom(32)
    _, handshake_mac = _rewrite_as_server(PASSWORD, sr, [os.urandom(300)])
    # The late records continue the handshake's HMAC: made with the same running state.
    ignore = handshake_mac.copy()
    late_wire = b""
    key = kdf(PASSWORD, sr)
    for body in (os.urandom(120), os.urandom(40)):
        masked = xor(body, key)
        handshake_mac.update(masked)
        late_wire += _record(23, handshake_mac.digest()[:4] + masked)
    codec = V3Codec(PASSWORD, sr, ignore)
    assert codec.decode(late_wire + _server_records(PASSWORD, sr, [b"first", b"second"])) == b"firstsecond"
    assert codec.dropped == 2 and codec.ignore is None


def test_a_tampered_record_fails_after_the_good_ones() -> None:
    sr = os.urandom(32)
    wire = bytearray(_server_records(PASSWORD, sr, [b"good", b"bad!"]))
    wire[-1] ^= 1
    codec = V3Codec(PASSWORD, sr)
    assert codec.decode(bytes(wire)) == b"good"
    assert isinstance(codec.error, ShadowTlsError)
    with pytest.raises(ShadowTlsError, match="failed its HMAC"):
        codec.decode(b"")


def test_records_out_of_order_fail() -> None:
    """The HMAC is chained: the server's second record first fails."""
    sr = os.urandom(32)
    wire = _server_records(PASSWORD, sr, [b"one", b"two"])
    second = wire[len(wire) // 2:]
    with pytest.raises(ShadowTlsError, match="failed its HMAC"):
        V3Codec(PASSWORD, sr).decode(second)


def test_alert_ends_and_a_cut_record_fails() -> None:
    sr = os.urandom(32)
    codec = V3Codec(PASSWORD, sr)
    assert codec.decode(_server_records(PASSWORD, sr, [b"x"]) + _record(21, os.urandom(26))) == b"x"
    assert codec.server_ended
    cut = V3Codec(PASSWORD, sr)
    assert cut.decode(_server_records(PASSWORD, sr, [b"abc"])[:-1]) == b""
    with pytest.raises(ShadowTlsError, match="middle of a record"):
        cut.decode_eof()
    with pytest.raises(ShadowTlsError, match="a record of type 22"):
        V3Codec(PASSWORD, sr).decode(_record(22, b"\x00" * 10))


# -- the plugin in links and clash entries -------------------------------------------------------------

def _realworld(link_id: str) -> str:
    if not REALWORLD.is_file():
        pytest.skip(f"{REALWORLD} is not here")
    return next(c["link"] for c in json.loads(REALWORLD.read_text()) if c["id"] == link_id)


@pytest.mark.parametrize("link_id", ["ss-dae-shadowtls-plugin", "ss-dae-shadowtls-whole-base64"])
def test_daes_links(link_id: str) -> None:
    """dae's test links (`shadowtls;password=abc;skipVerify=true`): v3, no host, the certificate not checked."""
    node = parse_link(_realworld(link_id))
    assert node.plugin is not None and node.plugin.kind == "shadow-tls"
    assert Settings.of(node.plugin.get) == Settings("abc", "", "3", True)
    assert (node.method, node.password, node.host, node.port) == ("aes-128-gcm", "pass", "1.2.3.4", 443)
    assert parse_link(node.link()) == node
    assert parse_any_link(node.link()).plugin == node.plugin  # type: ignore[attr-defined]


@pytest.mark.parametrize(("text", "settings"), [
    ("shadow-tls;host=a.example;password=p", Settings("p", "a.example", "3", False)),
    ("sstls;password=p;version=3;allowInsecure", Settings("p", "", "3", True)),
    ("shadowtls;password=p;insecure=false", Settings("p", "", "3", False)),
    ("shadow-tls;password=a\\;b\\=c;skip-cert-verify=true", Settings("a;b=c", "", "3", True)),
])
def test_options(text: str, settings: Settings) -> None:
    plugin = parse_plugin(text)
    assert Settings.of(plugin.get) == settings
    assert parse_plugin(plugin.text()) == plugin
    assert plugin.describe() == "shadow-tls v3" + (f" {settings.host}" if settings.host else "")


def test_link_round_trip_with_escapes() -> None:
    from urllib.parse import quote

    plugin = f"shadow-tls;host=site.example;password={PASSWORD.replace(';', chr(92) + ';').replace('=', chr(92) + '=')}"
    link = f"ss://YWVzLTEyOC1nY206cGFzcw@[2001:db8::1]:443/?plugin={quote(plugin, safe='')}#n"
    node = parse_link(link)
    assert node.plugin is not None and Settings.of(node.plugin.get).password == PASSWORD
    assert parse_link(node.link()) == node


def test_clash_entries() -> None:
    """clash's `plugin: shadow-tls`: host, password, version; mihomo's default version 2 is written out (refused)."""
    proxy = {"name": "st", "type": "ss", "server": "203.0.113.5", "port": 443, "cipher": "aes-128-gcm",
             "password": "pass", "plugin": "shadow-tls",
             "plugin-opts": {"host": "site.example", "password": PASSWORD, "version": 3, "skip-cert-verify": True}}
    link, _ = clash_link(proxy)
    node = parse_link(link)
    assert node.plugin is not None
    assert Settings.of(node.plugin.get) == Settings(PASSWORD, "site.example", "3", True)
    assert parse_link(node.link()) == node
    del proxy["plugin-opts"]["version"]  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="version=2 is not supported"):
        parse_link(clash_link(proxy)[0])
    assert plugin_from_clash("shadow-tls", {"host": "h.example", "password": "p", "version": 3}).text() == \
        "shadow-tls;host=h.example;password=p;version=3"


def test_certificate_options_need_a_host() -> None:
    from daetui.outbound.shadowtls import chain_verifier

    with pytest.raises(ShadowTlsError, match="no host option"):
        chain_verifier("", None)

