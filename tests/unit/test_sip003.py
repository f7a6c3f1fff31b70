"""SIP003 plugins: options text, ss:// links carrying them, and the simple-obfs / mux.cool framing byte by byte.

The framing is checked here against the layouts of simple-obfs 0.0.5's C sources
(obfs_http.c, obfs_tls.c) and V2Ray's mux.cool; tests/kernel/test_proxy_plugins.py runs it
against the real servers.
"""

from __future__ import annotations

import struct

import pytest

from daetui.net.stream import DialError, PlainCodec
from daetui.outbound.links import LinkError
from daetui.outbound.links import parse_link as parse_any_link
from daetui.outbound.shadowsocks import SsNode, parse_link
from daetui.outbound.sip003 import (
    FIRST_PAYLOAD,
    MAX_RECORD,
    Layered,
    MuxCool,
    ObfsHttp,
    ObfsTls,
    Plugin,
    format_options,
    parse_options,
    parse_plugin,
    plugin_from_clash,
    plugin_of,
)

# -- options --------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "options"), [
    ("obfs=http;obfs-host=www.bing.com", (("obfs", "http"), ("obfs-host", "www.bing.com"))),
    ("tls;host=a.example;path=/ws", (("tls", None), ("host", "a.example"), ("path", "/ws"))),
    (r"path=/a\;b\=c\\d", (("path", "/a;b=c\\d"),)),
    ("obfs-host=a=b", (("obfs-host", "a=b"),)),
    ("mode=websocket;;mux=0;", (("mode", "websocket"), ("mux", "0"))),
    ("", ()),
])
def test_options_parse(text: str, options: tuple[tuple[str, str | None], ...]) -> None:
    assert parse_options(text) == options
    assert parse_options(format_options(options)) == options


def test_options_print_escapes() -> None:
    assert format_options((("path", "/a;b=c\\d"), ("tls", None))) == r"path=/a\;b\=c\\d;tls"


def test_option_without_name() -> None:
    with pytest.raises(ValueError, match="has no name"):
        parse_options("=x")


def test_server_flag_is_kept_and_ignored() -> None:
    """SIP002's example 3 carries v2ray-plugin's `server`: meaningless to a client, kept for the link."""
    assert parse_plugin("v2ray-plugin;server").text() == "v2ray-plugin;server"


def test_plugin_text_and_flags() -> None:
    p = parse_plugin("v2ray-plugin;tls;host=h.example;mux=0")
    assert p.kind == "v2ray-plugin" and p.flag("tls") and p.get("host") == "h.example" and p.get("mux") == "0"
    assert p.text() == "v2ray-plugin;tls;host=h.example;mux=0"
    assert p.describe() == "v2ray-plugin websocket+tls"
    assert not parse_plugin("v2ray-plugin").flag("tls")
    assert parse_plugin("simple-obfs;obfs=tls").describe() == "simple-obfs tls"
    assert plugin_of("obfs-local", "obfs=http;obfs-host=x.example") == Plugin(
        "obfs-local", (("obfs", "http"), ("obfs-host", "x.example")))


@pytest.mark.parametrize(("text", "reason"), [
    ("restls;host=a", r"^plugin 'restls' is not supported; "
                      "supported: obfs-local, simple-obfs, v2ray-plugin, shadow-tls, shadowtls, sstls$"),
    ("shadow-tls;host=a", r"^plugin shadow-tls: no password option$"),
    ("shadowtls;password=p;version=2", r"version=2 is not supported .*only version=3"),
    ("shadowtls;password=p;version=4", r"unknown version=4"),
    ("kcptun;mode=fast", r"^plugin 'kcptun' \(KCP over UDP\) is not supported"),
    ("gost-plugin", r"^plugin 'gost-plugin' is not supported"),
    ("my-plugin", r"^unknown plugin 'my-plugin'; supported: obfs-local, simple-obfs, v2ray-plugin, shadow-tls, "
                  "shadowtls, sstls$"),
    ("v2ray-plugin;mode=quic;host=a", r"^plugin v2ray-plugin: mode=quic is not supported \(QUIC transport\)"),
    ("v2ray-plugin;mode=grpc", r"unknown mode=grpc"),
    ("v2ray-plugin;mux=lots", r"mux='lots' is not a number"),
    ("v2ray-plugin;path=ws", r"path='ws' must be a path"),
    ("obfs-local", r"^plugin obfs-local: no obfs option; expected obfs=http or obfs=tls$"),
    ("obfs-local;obfs=websocket", r"obfs=websocket; expected obfs=http or obfs=tls"),
    ("obfs-local;obfs=http;obfs-host=a b", r"bad host 'a b'"),
    (";obfs=http", "without a plugin name"),
])
def test_refused(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_plugin(text)


def test_from_clash() -> None:
    """clash's plugin entries, as its subscriptions write them, in SIP003 terms."""
    obfs = plugin_from_clash("obfs", {"mode": "tls", "host": "bing.com"})
    assert obfs.text() == "obfs-local;obfs=tls;obfs-host=bing.com"
    ws = plugin_from_clash("v2ray-plugin", {"mode": "websocket", "tls": True, "host": "a.example", "path": "/ws"})
    assert ws.text() == "v2ray-plugin;mode=websocket;tls;host=a.example;path=/ws" and ws.get("mux") is None
    assert plugin_from_clash("v2ray-plugin", {"mode": "websocket", "mux": False}).get("mux") == "0"
    with pytest.raises(ValueError, match="mode=quic is not supported"):
        plugin_from_clash("v2ray-plugin", {"mode": "quic"})
    with pytest.raises(ValueError, match="clash's skip-cert-verify not supported"):
        plugin_from_clash("v2ray-plugin", {"mode": "websocket", "tls": True, "skip-cert-verify": True})
    with pytest.raises(ValueError, match="obfs=; expected obfs=http or obfs=tls"):
        plugin_from_clash("obfs", {})
    # mihomo's default ShadowTLS version is 2, which daetui refuses: written out, then refused.
    with pytest.raises(ValueError, match="version=2 is not supported"):
        plugin_from_clash("shadow-tls", {"password": "x"})


# -- links ------------------------------------------------------------------------------------

LINKS = [
    # SIP002's own example
    "ss://YWVzLTEyOC1nY206dGVzdA@192.168.100.1:8888/?plugin=obfs-local%3Bobfs%3Dhttp#Example2",
    "ss://YWVzLTI1Ni1nY206cHc@h.example:443/?plugin=obfs-local%3Bobfs%3Dtls%3Bobfs-host%3Dwww.bing.com#t%20ls",
    "ss://YWVzLTI1Ni1nY206cHc@[2001:db8::1]:443/?plugin=v2ray-plugin%3Btls%3Bhost%3Dws.example%3Bpath%3D%2Fws#v6",
    "ss://Y2hhY2hhMjAtaWV0Zi1wb2x5MTMwNTpwQHNzOnc@h.example:80/?plugin=v2ray-plugin%3Bmux%3D0#m",
    "ss://YWVzLTI1Ni1nY206cHc@h.example:80/?plugin=simple-obfs%3Bobfs%3Dhttp%3Bobfs-uri%3D%2Fa%5C%3Bb#esc",
]


@pytest.mark.parametrize("link", LINKS)
def test_link_round_trip(link: str) -> None:
    node = parse_link(link)
    assert node.plugin is not None
    again = parse_link(node.link())
    assert again == node
    assert again.link() == node.link()


def test_link_forms() -> None:
    """Plugin text as clients write it: `/?plugin=`, `?plugin=`, unescaped `;` and `=` after URL decoding."""
    a = parse_link("ss://aes-256-gcm:pw@h.example:8388?plugin=obfs-local;obfs=tls;obfs-host=c.example#n")
    b = parse_link("ss://YWVzLTI1Ni1nY206cHc@h.example:8388/?plugin=obfs-local%3Bobfs%3Dtls%3Bobfs-host%3Dc.example#n")
    assert a == b
    assert a.plugin == Plugin("obfs-local", (("obfs", "tls"), ("obfs-host", "c.example")))
    assert "/?plugin=obfs-local%3Bobfs%3Dtls%3Bobfs-host%3Dc.example#n" in a.link()
    plain = parse_link("ss://YWVzLTI1Ni1nY206cHc@h.example:8388#n")
    assert plain.plugin is None and "plugin" not in plain.link()


def test_link_refusals_say_why() -> None:
    with pytest.raises(LinkError, match=r"ss:// link: plugin v2ray-plugin: mode=quic is not supported"):
        parse_any_link("ss://YWVzLTI1Ni1nY206cHc@h.example:443/?plugin=v2ray-plugin%3Bmode%3Dquic#q")
    with pytest.raises(LinkError, match=r"ss:// link: plugin 'kcptun' .*not supported"):
        parse_any_link("ss://YWVzLTI1Ni1nY206cHc@h.example:443/?plugin=kcptun%3Bmode%3Dfast#q")


def test_node_with_plugin_is_a_value() -> None:
    p = parse_plugin("obfs-local;obfs=http")
    node = SsNode("n", "h", 1, "aes-256-gcm", "pw", p)
    assert node == SsNode("n", "h", 1, "aes-256-gcm", "pw", parse_plugin(p.text()))
    assert hash(SsNode("n", "h", 1, "aes-256-gcm", "pw", p))


# -- simple-obfs http -----------------------------------------------------------------------------

def test_obfs_http_request() -> None:
    codec = ObfsHttp("www.bing.com", 8388, "/x")
    out = bytes(codec.encode(b"payload"))
    head, _, rest = out.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "GET /x HTTP/1.1"
    assert "Host: www.bing.com:8388" in lines  # the port unless it is 80, as obfs-local writes it
    assert "Upgrade: websocket" in lines and "Connection: Upgrade" in lines and "Content-Length: 7" in lines
    assert rest == b"payload"
    assert codec.encode(b"more") == b"more"  # only the first bytes are wrapped
    assert b"Host: h.example\r\n" in bytes(ObfsHttp("h.example", 80).encode(b"x"))


def test_obfs_http_answer_in_pieces() -> None:
    codec = ObfsHttp("h", 80)
    answer = (b"HTTP/1.1 101 Switching Protocols\r\nServer: nginx/1.2.3\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\nfirst bytes")
    got = b"".join(bytes(codec.decode(answer[i:i + 1])) for i in range(len(answer)))
    assert got == b"first bytes"
    assert codec.decode(b"\r\n\r\nlater") == b"\r\n\r\nlater"


@pytest.mark.parametrize(("answer", "reason"), [
    (b"HTTP/1.1 404 Not Found\r\n\r\n", r"answered 'HTTP/1.1 404 Not Found', not 101 .*wrong obfs-host"),
    (b"\x16\x03\x01\x00\x5b\x02", r"not HTTP: not a simple-obfs http server"),
])
def test_obfs_http_wrong_answers(answer: bytes, reason: str) -> None:
    with pytest.raises(DialError, match=reason):
        ObfsHttp("h", 80).decode(answer)


def test_obfs_http_cut_answer() -> None:
    codec = ObfsHttp("h", 80)
    codec.decode(b"HTTP/1.1 101 Sw")
    with pytest.raises(DialError, match="closed in the middle of its answer's head"):
        codec.decode_eof()
    ObfsHttp("h", 80).decode_eof()  # nothing came: the layer above says what that means


# -- simple-obfs tls --------------------------------------------------------------------------------

def test_obfs_tls_client_hello_layout() -> None:
    """The bytes obfs-server's check_tls_request and deobfs_tls_request read, where they read them."""
    codec = ObfsTls("www.bing.com", 443)
    data = bytes(range(256)) * 10  # 2560 bytes: more than the ticket takes
    out = bytes(codec.encode(data))
    assert (out[0], out[1], out[2], out[5], out[9], out[10]) == (0x16, 3, 1, 1, 3, 3)
    record_len = int.from_bytes(out[3:5], "big")
    assert int.from_bytes(out[6:9], "big") == record_len - 4
    hello = 138  # sizeof(struct tls_client_hello)
    ext_len = int.from_bytes(out[hello - 2:hello], "big")
    assert hello + ext_len == 5 + record_len
    ticket_type, ticket_len = struct.unpack_from("!HH", out, hello)
    assert ticket_type == 0x0023 and ticket_len == FIRST_PAYLOAD
    assert out[hello + 4:hello + 4 + ticket_len] == data[:FIRST_PAYLOAD]
    sni = out[hello + 4 + ticket_len:]
    assert sni[:2] == b"\0\0" and sni[9:9 + 12] == b"www.bing.com"
    rest = out[5 + record_len:]
    assert rest[:3] == b"\x17\x03\x03" and int.from_bytes(rest[3:5], "big") == len(data) - FIRST_PAYLOAD
    assert rest[5:] == data[FIRST_PAYLOAD:]
    later = bytes(codec.encode(b"x" * (MAX_RECORD + 1)))
    assert later[:5] == b"\x17\x03\x03" + MAX_RECORD.to_bytes(2, "big")
    assert later[5 + MAX_RECORD:5 + MAX_RECORD + 5] == b"\x17\x03\x03\x00\x01"


def server_answer(first: bytes, later: list[bytes]) -> bytes:
    """What obfs-server sends (obfs_tls_response): ServerHello (96 bytes), ChangeCipherSpec, then records."""
    hello = (b"\x16\x03\x01\x00\x5b" + b"\x02\x00\x00\x57\x03\x03" + bytes(32) + b"\x20" + bytes(32)
             + b"\xcc\xa8\x00" + b"\x00\x0f" + b"\xff\x01\x00\x01\x00" + b"\x00\x17\x00\x00"
             + b"\x00\x0b\x00\x02\x01\x00")
    assert len(hello) == 96
    out = hello + b"\x14\x03\x03\x00\x01\x01" + b"\x16\x03\x03" + len(first).to_bytes(2, "big") + first
    return out + b"".join(b"\x17\x03\x03" + len(p).to_bytes(2, "big") + p for p in later)


def test_obfs_tls_answer_whole_and_in_pieces() -> None:
    answer = server_answer(b"first", [b"second", b"x" * 5000])
    assert ObfsTls("h", 443).decode(answer) == b"firstsecond" + b"x" * 5000
    codec = ObfsTls("h", 443)
    got = b"".join(bytes(codec.decode(answer[i:i + 7])) for i in range(0, len(answer), 7))
    assert got == b"firstsecond" + b"x" * 5000
    codec.decode_eof()


@pytest.mark.parametrize(("answer", "reason"), [
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", r"is HTTP: not a simple-obfs tls server"),
    (b"<!DOCTYPE html>", r"is not TLS: not a simple-obfs tls server"),
    (server_answer(b"a", []) + b"\x15\x03\x03\x00\x02\x02\x28", r"record 3 is not simple-obfs framing"),
])
def test_obfs_tls_wrong_answers(answer: bytes, reason: str) -> None:
    with pytest.raises(DialError, match=reason):
        ObfsTls("h", 443).decode(answer)


def test_obfs_tls_cut_record() -> None:
    codec = ObfsTls("h", 443)
    codec.decode(server_answer(b"abc", [])[:-1])
    with pytest.raises(DialError, match="closed in the middle of a record"):
        codec.decode_eof()


# -- mux.cool ----------------------------------------------------------------------------------------

def frame(session: int, status: int, data: bytes = b"", option: int | None = None) -> bytes:
    opt = (1 if data else 0) if option is None else option
    meta = struct.pack("!HBB", session, status, opt)
    return struct.pack("!H", len(meta)) + meta + (struct.pack("!H", len(data)) + data if data else b"")


def test_mux_frames_out() -> None:
    mux = MuxCool("127.0.0.1", 8388)
    first = mux.encode(b"hello")
    meta_len = int.from_bytes(first[:2], "big")
    assert first[2:2 + meta_len] == struct.pack("!HBBBH", 1, 1, 1, 1, 8388) + b"\x01\x7f\x00\x00\x01"
    assert first[2 + meta_len:] == b"\x00\x05hello"
    assert mux.encode(b"again") == frame(1, 2, b"again")
    assert mux.encode_eof() == (frame(1, 3), False)
    with pytest.raises(DialError, match="after the session's end"):
        mux.encode(b"late")
    big = MuxCool("h.example", 1).encode(b"y" * 40000)
    assert big.count(b"y" * 16384) == 2


def test_mux_frames_in() -> None:
    stream = frame(1, 2, b"one") + frame(1, 4) + frame(7, 2, b"other session") + frame(1, 2, b"two") + frame(1, 3)
    mux = MuxCool("h", 1)
    got = b"".join(bytes(mux.decode(stream[i:i + 3])) for i in range(0, len(stream), 3))
    assert got == b"onetwo"
    assert mux.server_ended


def test_mux_error_end_and_garbage() -> None:
    with pytest.raises(DialError, match="ended the session with an error"):
        MuxCool("h", 1).decode(frame(1, 3, option=2))
    with pytest.raises(DialError, match=r"not mux\.cool"):
        MuxCool("h", 1).decode(b"\x00\x02ab")
    cut = MuxCool("h", 1)
    cut.decode(frame(1, 2, b"abcdef")[:-2])
    with pytest.raises(DialError, match="ended inside a frame"):
        cut.decode_eof()


def test_layered_codecs() -> None:
    """simple-obfs over a plain socket's codec, as the relay gets it: both framings, in order."""
    layered = Layered(PlainCodec(), ObfsTls("h", 443))
    assert bytes(layered.encode(b"x"))[:3] == b"\x16\x03\x01"
    assert layered.decode(server_answer(b"abc", [])) == b"abc"
    assert layered.encode_eof() == (b"", True)
    assert layered.error is None and not layered.server_ended and layered.watch_interval is None
