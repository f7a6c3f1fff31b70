"""AnyTLS's wire (outbound/_anytls_wire.py): frames, the padding scheme and its md5, sing's UoT v2 framing."""

from __future__ import annotations

import hashlib
import struct

import pytest

from daetui.net.stream import DialError
from daetui.outbound import _anytls_wire as wire

# -- frames -------------------------------------------------------------------------------------


def test_a_frame_is_command_stream_id_length_data() -> None:
    assert wire.frame(wire.PSH, 0x01020304, b"hey") == b"\x02\x01\x02\x03\x04\x00\x03hey"
    assert wire.frame(wire.FIN, 7) == b"\x03\x00\x00\x00\x07\x00\x00"


def test_a_frame_carries_at_most_65535_bytes() -> None:
    assert len(wire.frame(wire.PSH, 1, bytes(65535))) == 7 + 65535
    with pytest.raises(DialError, match="do not fit one frame"):
        wire.frame(wire.PSH, 1, bytes(65536))


def test_a_streams_bytes_longer_than_a_frame_go_in_several() -> None:
    data = bytes(range(256)) * 600  # 153600 bytes: 65535 + 65535 + 22530
    out = wire.psh_frames(5, data)
    frames = []
    while out:
        command, sid, payload, used = wire.parse_frame(out)
        frames.append((command, sid, len(payload)))
        out = out[used:]
    assert frames == [(wire.PSH, 5, 65535), (wire.PSH, 5, 65535), (wire.PSH, 5, 22530)]
    assert wire.psh_frames(5, b"") == b""


def test_frames_parse_from_reads_split_anywhere() -> None:
    stream = wire.frame(wire.SYNACK, 1) + wire.frame(wire.PSH, 1, b"hello") + wire.frame(wire.FIN, 1)
    for cut in range(len(stream) + 1):
        buf, got = bytearray(), []
        for piece in (stream[:cut], stream[cut:]):
            buf += piece
            while (parsed := wire.parse_frame(buf)) is not None:
                command, sid, data, used = parsed
                got.append((command, sid, data))
                del buf[:used]
        assert got == [(wire.SYNACK, 1, b""), (wire.PSH, 1, b"hello"), (wire.FIN, 1, b"")], cut
        assert not buf


def test_an_unknown_command_is_returned_and_its_data_skipped_by_its_length() -> None:
    stream = struct.pack("!BIH", 99, 3, 4) + b"abcd" + wire.frame(wire.PSH, 3, b"x")
    command, sid, data, used = wire.parse_frame(stream)
    assert (command, sid, data) == (99, 3, b"abcd")
    assert wire.parse_frame(stream[used:])[:3] == (wire.PSH, 3, b"x")


def test_the_password_request() -> None:
    request = wire.auth_request("pw", 30)
    assert request[:32] == hashlib.sha256(b"pw").digest()
    assert request[32:34] == b"\x00\x1e" and request[34:] == bytes(30)


def test_settings_text() -> None:
    text = wire.client_settings("daetui/1.0", wire.DEFAULT_SCHEME.md5)
    assert text == f"v=2\nclient=daetui/1.0\npadding-md5={wire.DEFAULT_SCHEME.md5}".encode()
    assert wire.parse_settings(b"v=2\nno equals\nk=a=b") == {"v": "2", "k": "a=b"}


# -- padding ------------------------------------------------------------------------------------

def test_the_default_scheme_and_its_md5() -> None:
    scheme = wire.DEFAULT_SCHEME
    # The md5 of the spec's text, byte for byte: a server with the default scheme finds it its own
    # (mihomo sends no update for it: tests/kernel/test_proxy_anytls.py).
    assert scheme.md5 == "75cff2ad89aadf5e257059ee571ebe11"
    assert scheme.stop == 8
    assert scheme.sizes(0) == [30]
    assert 100 <= scheme.sizes(1)[0] < 400
    two = scheme.sizes(2)
    assert [s == wire.CHECK for s in two] == [False, True, False, True, False, True, False, True, False]
    assert 400 <= two[0] < 500 and all(500 <= s < 1000 for s in two[2::2])
    assert scheme.sizes(3)[0] == 9
    assert scheme.sizes(8) == []


def test_a_scheme_is_parsed_as_anytls_go_parses_it() -> None:
    scheme = wire.parse_padding(b"stop=3\n0=10-10\n1=x-5,0-9,20-10,c\n2=7\n5=1-2")
    assert scheme.stop == 3
    assert scheme.sizes(1)[1] == wire.CHECK and 10 <= scheme.sizes(1)[0] < 20  # bad ranges skipped, ends sorted
    assert scheme.sizes(2) == [] and scheme.sizes(5) == []                      # "7" is no range; 5 >= stop
    assert scheme.md5 == hashlib.md5(b"stop=3\n0=10-10\n1=x-5,0-9,20-10,c\n2=7\n5=1-2").hexdigest()


@pytest.mark.parametrize("raw, problem", [(b"0=1-2", "stop="), (b"stop=x", "stop="),
                                          (b"stop=99999", "writes are shaped"),
                                          (b"stop=2\n1=70000-70000", "sizes up to")])
def test_an_unusable_scheme_is_refused(raw: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        wire.parse_padding(raw)


def _unpadded(writes: list[bytes]) -> bytes:
    """The frames in shaped writes, cmdWaste taken out (what the server reads)."""
    stream, out = b"".join(writes), []
    while stream:
        command, sid, data, used = wire.parse_frame(stream)
        if command != wire.WASTE:
            out.append(wire.frame(command, sid, data))
        stream = stream[used:]
    return b"".join(out)


def test_a_short_write_is_filled_up_to_its_size_with_waste() -> None:
    data = wire.frame(wire.PSH, 1, b"x" * 50)
    writes = wire.shape(data, [300])
    assert [len(w) for w in writes] == [300]
    assert _unpadded(writes) == data


def test_a_long_write_is_cut_into_the_sizes_and_the_rest_sent_as_it_is() -> None:
    data = wire.frame(wire.PSH, 1, bytes(2000))
    writes = wire.shape(data, [400, wire.CHECK, 500, wire.CHECK, 600])
    assert [len(w) for w in writes] == [400, 500, 600, len(data) - 1500]
    assert b"".join(writes) == data


def test_check_stops_when_nothing_is_left_else_sizes_of_waste_follow() -> None:
    data = wire.frame(wire.PSH, 1, bytes(100))
    assert [len(w) for w in wire.shape(data, [107, wire.CHECK, 500])] == [107]
    writes = wire.shape(data, [107, 500])   # no CHECK: a write all of waste
    assert [len(w) for w in writes] == [107, 507] and _unpadded(writes) == data


def test_a_size_with_no_room_for_a_waste_frame_sends_the_rest_as_it_is() -> None:
    data = wire.frame(wire.PSH, 1, bytes(100))    # 107 bytes; 110 leaves 3, less than a frame header
    assert wire.shape(data, [110]) == [data]


# -- UDP over TCP -------------------------------------------------------------------------------

def test_uot_request_is_not_connect_and_a_socks_address() -> None:
    assert wire.uot_request() == b"\x00\x01\x00\x00\x00\x00\x00\x00"


@pytest.mark.parametrize("host, encoded", [
    ("192.0.2.1", b"\x00\xc0\x00\x02\x01"),
    ("2001:db8::1", b"\x01" + bytes.fromhex("20010db8000000000000000000000001")),
    ("[2001:db8::1]", b"\x01" + bytes.fromhex("20010db8000000000000000000000001")),
    ("example.com", b"\x02\x0bexample.com"),
])
def test_uot_addresses_are_sings_layout_not_socks(host: str, encoded: bytes) -> None:
    assert wire.uot_address(host, 53) == encoded + b"\x00\x35"


@pytest.mark.parametrize("host", ["198.51.100.7", "2001:db8:3::11", "dns.lab.test"])
def test_uot_packets_round_trip_from_reads_split_anywhere(host: str) -> None:
    packets = wire.uot_packet(b"\x01" * 1400, host, 7) + wire.uot_packet(b"", host, 8)
    for cut in range(0, len(packets) + 1, 7):
        buf, got = bytearray(), []
        for piece in (packets[:cut], packets[cut:]):
            buf += piece
            while (parsed := wire.parse_uot_packet(buf)) is not None:
                data, h, port, used = parsed
                got.append((data, h, port))
                del buf[:used]
        assert got == [(b"\x01" * 1400, host, 7), (b"", host, 8)]


def test_uot_unknown_address_type_and_too_large_a_datagram() -> None:
    with pytest.raises(DialError, match="unknown address type 3"):
        wire.parse_uot_packet(b"\x03\x00")
    with pytest.raises(DialError, match="too large"):
        wire.uot_packet(bytes(65536), "192.0.2.1", 53)
