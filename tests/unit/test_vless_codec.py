"""vless's response header cut off by a codec, for the framed relay: split anywhere, checked, or an error."""

from __future__ import annotations

import pytest

from daetui.net.stream import DialError, PlainCodec
from daetui.outbound.vless import ResponseCodec


def decode_in_pieces(data: bytes, cuts: list[int]) -> bytes:
    codec = ResponseCodec(PlainCodec())
    out, start = b"", 0
    for end in [*cuts, len(data)]:
        out += codec.decode(data[start:end])
        start = end
    codec.decode_eof()
    return out


@pytest.mark.parametrize("cuts", [[], [1], [2], [1, 2, 3], [4], [5, 6]])
def test_the_header_and_its_addons_are_cut_off_wherever_the_reads_split(cuts):
    body = b"HTTP/1.1 200 OK\r\n"
    assert decode_in_pieces(b"\x00\x00" + body, [c for c in cuts if c < 2 + len(body)]) == body
    assert decode_in_pieces(b"\x00\x03abc" + body, cuts) == body  # three bytes of addons


def test_a_wrong_version_says_it_is_not_a_vless_server():
    with pytest.raises(DialError, match=r"response version 72 .*not a vless server"):
        ResponseCodec(PlainCodec()).decode(b"HTTP/1.1 400 Bad Request\r\n")


@pytest.mark.parametrize("sent", [b"", b"\x00", b"\x00\x05ab"])
def test_an_end_before_the_whole_header_is_an_error(sent):
    codec = ResponseCodec(PlainCodec())
    assert codec.decode(sent) == b""
    with pytest.raises(DialError, match="closed without a response"):
        codec.decode_eof()


def test_after_the_header_bytes_pass_unchanged_and_the_end_is_clean():
    codec = ResponseCodec(PlainCodec())
    assert codec.decode(b"\x00\x00") == b""
    assert codec.decode(b"abc") == b"abc"
    codec.decode_eof()
    assert codec.encode(b"up") == b"up" and codec.encode_eof() == (b"", True)
