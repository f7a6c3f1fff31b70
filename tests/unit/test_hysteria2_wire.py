"""Hysteria2's messages: varints, the TCP request and response, UDP messages, fragments, Salamander."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daetui.net.stream import DialError
from daetui.outbound._hy2_wire import (
    MAX_UDP_PACKET,
    Reassembler,
    Salamander,
    UdpMessage,
    parse_tcp_response,
    parse_udp_message,
    read_varint,
    split_address,
    tcp_request,
    udp_messages,
    varint,
)


@given(st.integers(min_value=0, max_value=(1 << 62) - 1))
def test_varint_round_trip(n: int) -> None:
    wire = varint(n)
    assert read_varint(b"x" + wire, 1) == (n, 1 + len(wire))
    assert read_varint(wire[:-1], 0) is None  # cut short: incomplete, never a wrong value


def test_varint_is_quics() -> None:
    # RFC 9000 A.1's examples
    assert varint(37) == bytes.fromhex("25")
    assert varint(15293) == bytes.fromhex("7bbd")
    assert varint(494878333) == bytes.fromhex("9d7f3e7d")
    assert read_varint(bytes.fromhex("c2197c5eff14e88c"), 0) == (151288809941952652, 8)


def test_tcp_request_framing() -> None:
    assert tcp_request("example.com", 443, b"PAD") == (
        bytes.fromhex("4401") + bytes((15,)) + b"example.com:443" + bytes((3,)) + b"PAD")
    assert tcp_request("2001:db8::1", 80)[2:] == bytes((16,)) + b"[2001:db8::1]:80" + b"\x00"


def _response(status: int, message: bytes, pad: bytes) -> bytes:
    return bytes((status,)) + varint(len(message)) + message + varint(len(pad)) + pad


def test_tcp_response_parsed_at_any_cut() -> None:
    wire = _response(0, b"", b"p" * 300) + b"DATA"
    for cut in range(len(wire) - 4):
        assert parse_tcp_response(wire[:cut]) is None
    resp = parse_tcp_response(wire)
    assert resp is not None and (resp.status, resp.message, wire[resp.size:]) == (0, "", b"DATA")
    resp = parse_tcp_response(_response(1, b"connection refused", b""))
    assert resp is not None and (resp.status, resp.message) == (1, "connection refused")


def test_tcp_response_too_large_is_refused() -> None:
    with pytest.raises(DialError, match="malformed response"):
        parse_tcp_response(bytes((0,)) + varint(1 << 20))
    with pytest.raises(DialError, match="padding"):
        parse_tcp_response(bytes((0, 0)) + varint(1 << 20))


def test_udp_message_framing() -> None:
    (wire,) = udp_messages(0x01020304, 7, "192.0.2.1", 53, b"query", 1200)
    assert wire == bytes.fromhex("01020304 0007 00 01") + bytes((12,)) + b"192.0.2.1:53" + b"query"
    assert parse_udp_message(wire) == UdpMessage(0x01020304, 7, 0, 1, "192.0.2.1", 53, b"query")
    msg = parse_udp_message(udp_messages(1, 1, "2001:db8::53", 53, b"", 1200)[0])
    assert (msg.host, msg.port, msg.data) == ("2001:db8::53", 53, b"")


@pytest.mark.parametrize("wire", [b"", b"\x00" * 8, bytes(8) + b"\x05ab", bytes(6) + b"\x02\x02\x01x",
                                  bytes(6) + b"\x00\x00\x03a:1", bytes(8) + b"\x04nope"])
def test_bad_udp_messages_are_refused(wire: bytes) -> None:
    with pytest.raises(ValueError):
        parse_udp_message(wire)


def test_split_address() -> None:
    assert split_address("[2001:DB8::1]:443") == ("2001:db8::1", 443)
    assert split_address("example.com:80") == ("example.com", 80)
    for bad in ("example.com", ":80", "h:x"):
        with pytest.raises(ValueError):
            split_address(bad)


# -- fragments ---------------------------------------------------------------------------------------

def _fragments(data: bytes, size: int = 300, packet: int = 9) -> list[UdpMessage]:
    return [parse_udp_message(w) for w in udp_messages(5, packet, "198.51.100.9", 4000, data, size)]


def test_fragments_fit_and_reassemble_in_any_order() -> None:
    data = random.Random(1).randbytes(4000)
    wires = udp_messages(5, 9, "198.51.100.9", 4000, data, 300)
    assert len(wires) > 10 and all(len(w) <= 300 for w in wires)
    frags = [parse_udp_message(w) for w in wires]
    assert {f.count for f in frags} == {len(frags)} and [f.fragment for f in frags] == list(range(len(frags)))
    random.Random(2).shuffle(frags)
    r = Reassembler()
    got = [r.add(f) for f in frags]
    assert got[:-1] == [None] * (len(frags) - 1)
    whole = got[-1]
    assert whole is not None and (whole.data, whole.host, whole.port, whole.count) == (data, "198.51.100.9", 4000, 1)
    assert not r.pending


def test_a_datagram_that_fits_is_one_message() -> None:
    (msg,) = _fragments(b"x" * 100)
    assert (msg.fragment, msg.count) == (0, 1)
    assert Reassembler().add(msg) == msg


def test_a_missing_fragment_drops_its_datagram_and_not_the_next() -> None:
    r = Reassembler()
    first = _fragments(b"a" * 1000, packet=1)
    for f in first[:-1]:
        assert r.add(f) is None
    second = _fragments(b"b" * 1000, packet=2)
    out = [r.add(f) for f in second]
    assert out[-1] is not None and out[-1].data == b"b" * 1000
    assert r.add(first[0]) is None  # a duplicate of what is held: still incomplete


def test_reassembly_is_bounded() -> None:
    r = Reassembler(max_packets=16)
    for packet in range(1000):  # each missing its last fragment
        for f in _fragments(b"z" * 1000, packet=packet)[:-1]:
            r.add(f)
        assert len(r.pending) <= 16
    assert r.dropped >= 1000 - 16
    assert r.size == sum(p.size for p in r.pending.values()) <= r.max_bytes
    # a fragment claiming more than a datagram can hold ends its packet
    big = UdpMessage(1, 77, 0, 255, "h", 1, b"x" * (MAX_UDP_PACKET // 2 + 1))
    assert r.add(big) is None
    assert r.add(UdpMessage(1, 77, 1, 255, "h", 1, big.data)) is None
    assert 77 not in r.pending


def test_reassembly_bytes_are_bounded() -> None:
    r = Reassembler(max_packets=16, max_bytes=10_000)
    for packet in range(10):  # 4000-byte datagrams, each missing a fragment: at most 10 000 bytes held
        for f in _fragments(b"y" * 4000, packet=packet)[1:]:
            r.add(f)
            assert r.size <= 10_000
    assert 0 < len(r.pending) < 10
    # and what completes is handed out whole, its bytes no longer counted
    for f in _fragments(b"w" * 4000, packet=99)[:-1]:
        r.add(f)
    held = r.size
    whole = r.add(_fragments(b"w" * 4000, packet=99)[-1])
    assert whole is not None and whole.data == b"w" * 4000
    assert r.size == held - (4000 - len(_fragments(b"w" * 4000, packet=99)[-1].data))


def test_too_large_to_fragment() -> None:
    with pytest.raises(DialError, match="255 fragments"):
        udp_messages(1, 1, "h.test", 1, b"x" * 70_000, 200)


# -- Salamander --------------------------------------------------------------------------------------

def test_salamander_is_the_specs_xor() -> None:
    s = Salamander("gawrgura")
    packet = bytes(range(256)) * 5
    wire = s.obfuscate(packet)
    salt, body = wire[:8], wire[8:]
    key = hashlib.blake2b(b"gawrgura" + salt, digest_size=32).digest()
    assert bytes(b ^ key[i % 32] for i, b in enumerate(packet)) == body
    assert s.deobfuscate(wire) == packet
    assert s.obfuscate(packet)[:8] != salt  # a fresh salt for each packet
    assert s.deobfuscate(b"12345678") is None
    assert Salamander("another").deobfuscate(wire) != packet
