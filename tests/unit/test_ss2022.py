"""Shadowsocks 2022 framing (daetui/outbound/ss2022.py) against the spec's recipe, written out here on its own.

The server side of each exchange is built in this file from the SIP022 text (BLAKE3 key
derivation, AES-ECB separate headers, the fixed headers' layout), so a mistake shared with
the module would have to be made twice. The real server is tests/kernel/test_proxy_ss_methods.py.
"""

from __future__ import annotations

import base64
import os
import struct
import time

import blake3
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from daetui.outbound.shadowsocks import AuthError, encode_address, method_of
from daetui.outbound.ss2022 import MAX_PAYLOAD, Keys

AES128 = method_of("2022-blake3-aes-128-gcm")
PSK = bytes(range(16))
KEYS = Keys((), PSK)


def session_aead(key: bytes, salt: bytes) -> AESGCM:
    return AESGCM(blake3.blake3(key + salt, derive_key_context="shadowsocks 2022 session subkey").digest(len(key)))


def nonce(n: int) -> bytes:
    return n.to_bytes(12, "little")


def ecb(key: bytes, block: bytes, encrypt: bool = True) -> bytes:
    c = Cipher(algorithms.AES(key), modes.ECB())
    op = c.encryptor() if encrypt else c.decryptor()
    return op.update(block) + op.finalize()


def test_request_header_as_the_spec_lays_it_out() -> None:
    salt = os.urandom(16)
    sealed = AES128.sealer(KEYS, salt).seal_first(encode_address("203.0.113.10", 7), b"hello")
    aead = session_aead(PSK, salt)
    fixed = aead.decrypt(nonce(0), sealed[:11 + 16], None)
    kind, stamp, length = struct.unpack(">BQH", fixed)
    assert kind == 0 and abs(stamp - time.time()) < 5
    variable = aead.decrypt(nonce(1), sealed[27:27 + length + 16], None)
    assert variable == encode_address("203.0.113.10", 7) + b"\x00\x00" + b"hello"
    assert len(sealed) == 27 + length + 16


def test_a_request_without_payload_is_padded() -> None:
    salt = os.urandom(16)
    sealed = AES128.sealer(KEYS, salt).seal_first(encode_address("a.test", 80), b"")
    aead = session_aead(PSK, salt)
    length = struct.unpack(">BQH", aead.decrypt(nonce(0), sealed[:27], None))[2]
    variable = aead.decrypt(nonce(1), sealed[27:27 + length + 16], None)
    address = encode_address("a.test", 80)
    pad = int.from_bytes(variable[len(address):len(address) + 2], "big")
    assert 1 <= pad <= 900 and len(variable) == len(address) + 2 + pad


def test_later_chunks_take_up_to_64k() -> None:
    salt = os.urandom(16)
    sealer = AES128.sealer(KEYS, salt)
    sealer.seal_first(encode_address("a.test", 80), b"x")
    data = os.urandom(MAX_PAYLOAD + 10)
    sealed = sealer.seal(data)
    aead = session_aead(PSK, salt)
    first = int.from_bytes(aead.decrypt(nonce(2), sealed[:18], None), "big")
    assert first == MAX_PAYLOAD
    assert aead.decrypt(nonce(3), sealed[18:18 + first + 16], None) == data[:first]


def identity_header(ipsk: bytes, upsk: bytes, salt: bytes) -> bytes:
    sub = blake3.blake3(ipsk + salt, derive_key_context="shadowsocks 2022 identity subkey").digest(len(ipsk))
    return ecb(sub, blake3.blake3(upsk).digest(16))


def test_identity_headers_of_a_relay_chain() -> None:
    i1, i2, user = os.urandom(16), os.urandom(16), os.urandom(16)
    password = ":".join(base64.b64encode(k).decode() for k in (i1, i2, user))
    keys = AES128.key_of(password)
    salt = os.urandom(16)
    sealed = AES128.sealer(keys, salt).seal_first(encode_address("a.test", 80), b"x")
    assert sealed[:16] == identity_header(i1, i2, salt)
    assert sealed[16:32] == identity_header(i2, user, salt)
    fixed = session_aead(user, salt).decrypt(nonce(0), sealed[32:32 + 27], None)  # the user's key seals
    assert fixed[0] == 0


def response(request_salt: bytes, payload: bytes, *, kind: int = 1, stamp: float | None = None,
             salt: bytes | None = None) -> tuple[bytes, bytes]:
    """A server's reply: (its salt, the bytes after it)."""
    salt = salt or os.urandom(16)
    aead = session_aead(PSK, salt)
    stamp = time.time() if stamp is None else stamp
    head = struct.pack(">BQ", kind, int(stamp)) + request_salt + len(payload).to_bytes(2, "big")
    return salt, aead.encrypt(nonce(0), head, None) + aead.encrypt(nonce(1), payload, None) + \
        aead.encrypt(nonce(2), (5).to_bytes(2, "big"), None) + aead.encrypt(nonce(3), b"world", None)


def test_response_is_opened_byte_by_byte() -> None:
    ours = os.urandom(16)
    salt, body = response(ours, b"hello ")
    opener = AES128.opener(KEYS, salt, ours)
    got = b"".join(opener.feed(body[i:i + 1]) for i in range(len(body)))
    assert got == b"hello world" and opener.pending == 0


@pytest.mark.parametrize(("change", "words"), [
    ({"request_salt": bytes(16)}, "another request"),
    ({"stamp": time.time() - 31}, "30s off"),
    ({"kind": 0}, "type 0"),
])
def test_response_that_is_not_for_us_is_refused(change: dict, words: str) -> None:
    ours = os.urandom(16)
    salt, body = response(change.pop("request_salt", ours), b"hi", **change)
    with pytest.raises(AuthError, match=words):
        AES128.opener(KEYS, salt, ours).feed(body)


def test_tampered_response_is_refused() -> None:
    ours = os.urandom(16)
    salt, body = response(ours, b"hi")
    with pytest.raises(AuthError, match="authentication"):
        AES128.opener(KEYS, salt, ours).feed(body[:5] + bytes([body[5] ^ 1]) + body[6:])


# -- UDP --------------------------------------------------------------------------------------------

def server_packet(client_session: bytes, server_session: bytes, packet_id: int, data: bytes,
                  stamp: float | None = None) -> bytes:
    separate = server_session + packet_id.to_bytes(8, "big")
    body = struct.pack(">BQ", 1, int(time.time() if stamp is None else stamp)) + client_session + \
        b"\x00\x00" + encode_address("203.0.113.10", 7) + data
    aead = session_aead(PSK, server_session)
    return ecb(PSK, separate) + aead.encrypt(separate[4:], body, None)


def test_udp_packet_as_the_spec_lays_it_out() -> None:
    udp = AES128.datagrams(KEYS)
    packet = udp.seal(encode_address("203.0.113.10", 7), b"ping")
    separate = ecb(PSK, packet[:16], encrypt=False)
    assert separate[:8] == udp.session and int.from_bytes(separate[8:], "big") == 0
    body = session_aead(PSK, udp.session).decrypt(separate[4:], packet[16:], None)
    assert body[0] == 0 and body[9:11] == b"\x00\x00"
    assert body[11:] == encode_address("203.0.113.10", 7) + b"ping"
    second = ecb(PSK, udp.seal(b"\x01\x01\x02\x03\x04\x00\x07", b"")[:16], encrypt=False)
    assert int.from_bytes(second[8:], "big") == 1  # packet ids count up


def test_udp_reply_opened_and_replays_refused() -> None:
    udp = AES128.datagrams(KEYS)
    server = os.urandom(8)
    packet = server_packet(udp.session, server, 5, b"pong")
    plain, at = udp.open(packet)
    assert plain[at:].endswith(b"pong")
    with pytest.raises(AuthError, match="replayed"):
        udp.open(packet)
    udp.open(server_packet(udp.session, server, 3, b"late"))  # out of order, inside the window: taken
    udp.open(server_packet(udp.session, server, 5000, b"far"))  # the window moves past packet 2
    with pytest.raises(AuthError, match="replayed or too old"):
        udp.open(server_packet(udp.session, server, 2, b"old"))


def test_udp_reply_for_another_session_or_stale_is_refused() -> None:
    udp = AES128.datagrams(KEYS)
    with pytest.raises(AuthError, match="another session"):
        udp.open(server_packet(os.urandom(8), os.urandom(8), 0, b"x"))
    with pytest.raises(AuthError, match="off this clock"):
        udp.open(server_packet(udp.session, os.urandom(8), 0, b"x", stamp=time.time() - 60))
    with pytest.raises(AuthError, match="too short"):
        udp.open(b"\x00" * 20)


def test_udp_remembers_a_bounded_number_of_server_sessions() -> None:
    udp = AES128.datagrams(KEYS)
    for _ in range(100):
        udp.open(server_packet(udp.session, os.urandom(8), 0, b"x"))
    assert len(udp._servers) <= 16


# -- keys -------------------------------------------------------------------------------------------

def test_keys_as_dae_takes_them_at_parse_and_servers_at_dial() -> None:
    long_key = base64.b64encode(bytes(32)).decode()
    AES128.check_password(long_key)  # dae takes it
    with pytest.raises(ValueError, match="is 32 bytes; 2022-blake3-aes-128-gcm takes 16"):
        AES128.key_of(long_key)
    chacha = method_of("2022-blake3-chacha20-poly1305")
    two = ":".join([base64.b64encode(bytes(32)).decode()] * 2)
    chacha.check_password(two)
    with pytest.raises(ValueError, match="no identity headers"):
        chacha.key_of(two)
    with pytest.raises(ValueError, match="key 2 of the password is not base64"):
        AES128.check_password(base64.b64encode(bytes(16)).decode() + ":")
