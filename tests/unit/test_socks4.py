"""socks4:// and socks4a:// links, and the request and reply bytes (tests/kernel/test_proxy_socks4.py runs them
against danted and ssh -D)."""

from __future__ import annotations

import pytest

from daetui.net.stream import DialError
from daetui.outbound.socks4 import Socks4Node, check_reply, encode_request, parse_link


@pytest.mark.parametrize("link", [
    "socks4://h.example:1080#a%20b",
    "socks4a://alice@[2001:db8::1]:9#x",
    "socks4://us%40er@192.0.2.1:1080#n",
    "socks4a://h.example:1080#h",
])
def test_link_round_trip(link: str) -> None:
    node = parse_link(link)
    assert parse_link(node.link()) == node
    assert node.link() == link


def test_link_fields_and_defaults() -> None:
    assert parse_link("SOCKS4A://alice@H.Example") == Socks4Node("h.example:1080", "h.example", 1080, "alice", True)
    assert parse_link("socks4://192.0.2.1:1", "given").name == "given"
    assert parse_link("socks4://192.0.2.1:1").scheme == "socks4"


@pytest.mark.parametrize(("link", "reason"), [
    ("socks4://a:b@h.example:1", "user id and no password"),
    ("socks4://h.example:1?x=1", "take no parameters"),
    ("socks5://h.example:1", "expected socks4:// or socks4a://"),
    ("socks4://h.example:0", "out of range"),
    ("socks4://2001:db8::1:1", "IPv6 address goes in brackets"),
])
def test_bad_links(link: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_link(link)


def test_requests() -> None:
    assert encode_request("192.0.2.7", 80, "", False) == b"\x04\x01\x00\x50\xc0\x00\x02\x07\x00"
    assert encode_request("192.0.2.7", 443, "bob", True) == b"\x04\x01\x01\xbb\xc0\x00\x02\x07bob\x00"
    assert encode_request("www.example", 80, "u", True) == b"\x04\x01\x00\x50\x00\x00\x00\x01u\x00www.example\x00"
    with pytest.raises(DialError, match="IPv4 destinations only"):
        encode_request("2001:db8::1", 80, "", True)
    with pytest.raises(DialError, match="use socks4a"):
        encode_request("www.example", 80, "", False)


@pytest.mark.parametrize(("reply", "reason"), [
    (b"\x00\x5b" + bytes(6), "request rejected or failed"),
    (b"\x00\x5c" + bytes(6), "identd"),
    (b"\x00\x63" + bytes(6), "unknown reply code 99"),
    (b"\x05\x00" + bytes(6), "SOCKS5"),
    (b"HTTP/1.1", r"answered version 72, not 0"),
])
def test_replies(reply: bytes, reason: str) -> None:
    with pytest.raises(DialError, match=reason):
        check_reply(reply)
    check_reply(b"\x00\x5a" + bytes(6))
