"""Subscriptions: every format, broken links reported with their line, names made unique, and fetching
over loopback (a scripted HTTP server on 127.0.0.1) with its bounds, its saved copy and its refresh loop.

The examples use socks5:// and http(s):// links, which this version always reads; the one ss:// line (and
SIP008, whose servers are ss:// nodes) must come out either as a node or as a reported line, never a crash.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import ssl
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daetui.outbound.subscription import (
    MAX_BYTES,
    SubscriptionResult,
    parse_subscription,
    read_saved,
    redact_url,
    saved_path,
    split_tag,
)
from daetui.outbound.subscription import Subscription as Sub

LINKS = [
    "socks5://203.0.113.11:1080#HK%201",
    "socks5://alice:lab-secret@203.0.113.12:1081#JP",
    "http://203.0.113.13:3128#US%20http",
    "https://bob:pw@proxy.example:443#US%20https",
]
NAMES = ["HK 1", "JP", "US http", "US https"]
SS_LINE = "ss://YWVzLTEyOC1nY206bGFiLXNlY3JldA@203.0.113.14:8388#SS%20node"
LIST = "\n".join(LINKS) + "\n"


def b64(text: str, urlsafe: bool = False, pad: bool = True) -> str:
    enc = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(text.encode()).decode()
    return enc if pad else enc.rstrip("=")


def names(parsed: Any) -> list[str]:
    return [n for n, _ in parsed.nodes]


# -- formats --------------------------------------------------------------------------------------------

def test_plain_links() -> None:
    parsed = parse_subscription(LIST, "sub")
    assert parsed.format == "links"
    assert names(parsed) == NAMES
    assert parsed.errors == []
    # each node is the node its own link describes (the manager dials it as is)
    assert next(node.link() for _, node in parsed.nodes) == LINKS[0]


@pytest.mark.parametrize("urlsafe", [False, True])
@pytest.mark.parametrize("pad", [False, True])
def test_base64_list_either_alphabet_padding_optional(urlsafe: bool, pad: bool) -> None:
    # "~?~" in a name makes both alphabets' special characters appear in the encoding.
    text = LIST + "socks5://203.0.113.20:1080#~%3F~??>>\n"
    encoded = b64(text, urlsafe, pad)
    assert ("-" in encoded or "_" in encoded) == urlsafe or ("+" in encoded or "/" in encoded) != urlsafe
    parsed = parse_subscription(encoded, "sub")
    assert parsed.format == "base64"
    assert names(parsed)[:4] == NAMES
    assert len(parsed.nodes) == 5
    assert parsed.errors == []


def test_base64_with_line_breaks_and_spaces_and_bytes() -> None:
    encoded = b64(LIST)
    wrapped = "\r\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76))
    parsed = parse_subscription(("  \n" + wrapped + " \n\t").encode(), "sub")
    assert names(parsed) == NAMES
    assert parse_subscription(b"\xef\xbb\xbf" + encoded.encode(), "sub").format == "base64"  # a BOM


def test_crlf_list_and_comments() -> None:
    text = "# my nodes\r\n" + "\r\n".join(LINKS) + "\r\n\r\n"
    parsed = parse_subscription(text, "sub")
    assert names(parsed) == NAMES
    assert parsed.errors == []


def test_sip008() -> None:
    doc = {
        "version": 1,
        "bytes_used": 1, "bytes_remaining": 2,
        "servers": [
            {"id": "27b8a625-4f4b-4428-9f0f-8a2317db7c79", "remarks": "Server 1", "server": "203.0.113.30",
             "server_port": 8388, "password": "lab-secret", "method": "chacha20-ietf-poly1305"},
            {"remarks": "Server 2", "server": "2001:db8::30", "server_port": "8389", "password": "p",
             "method": "aes-256-gcm"},
            {"remarks": "with plugin", "server": "203.0.113.31", "server_port": 8388, "password": "p",
             "method": "aes-128-gcm", "plugin": "obfs-local", "plugin_opts": "obfs=http"},
            {"remarks": "no port", "server": "203.0.113.32", "password": "p", "method": "aes-128-gcm"},
            {"remarks": "bad port", "server": "203.0.113.33", "server_port": 70000, "password": "p",
             "method": "aes-128-gcm"},
            "not an object",
        ],
    }
    parsed = parse_subscription(json.dumps(doc), "sub")
    assert parsed.format == "sip008"
    errors = "\n".join(parsed.errors)
    # servers 4..6 are wrong whichever modules exist
    assert "server 4: no server_port" in errors
    assert "server 5: bad server_port 70000" in errors
    assert "server 6: not an object" in errors
    # servers 1..3 are ss:// nodes: parsed, or reported as such (plugins, or no ss module in this version)
    for number, name in ((1, "Server 1"), (2, "Server 2"), (3, "with plugin")):
        assert (name in names(parsed)) != any(e.startswith(f"server {number}:") for e in parsed.errors)
    if "Server 1" in names(parsed):
        node = dict(parsed.nodes)["Server 1"]
        assert (node.host, node.port, node.password) == ("203.0.113.30", 8388, "lab-secret")
        node2 = dict(parsed.nodes)["Server 2"]
        assert (node2.host, node2.port) == ("2001:db8::30", 8389)
    # SIP003 plugins are carried into the node (simple-obfs here).
    assert dict(parsed.nodes)["with plugin"].plugin.name == "obfs-local"


@pytest.mark.parametrize("doc, reason", [
    ('{"version": 2, "servers": []}', "SIP008 version 2"),
    ('{"outbounds": []}', "JSON that is not SIP008"),
    ('{"version": 1, "servers": [', "bad JSON"),
])
def test_json_that_is_not_sip008(doc: str, reason: str) -> None:
    parsed = parse_subscription(doc, "sub")
    assert parsed.nodes == []
    assert reason in parsed.errors[0]


def test_clash_yaml_is_read() -> None:
    """A clash/mihomo YAML subscription (tests/unit/test_clash_subscription.py has the whole of it)."""
    yaml = ("mixed-port: 7890\nproxies:\n  - {name: a, type: socks5, server: 203.0.113.1, port: 1080}\n"
            "proxy-groups:\n  - {name: g, type: url-test, url: 'http://cp.example/generate_204'}\n")
    parsed = parse_subscription(yaml, "sub")
    assert [(n, node.host, node.port) for n, node in parsed.nodes] == [("a", "203.0.113.1", 1080)]


# -- broken input ----------------------------------------------------------------------------------------

def test_broken_links_reported_with_their_line_and_skipped() -> None:
    lines = [
        LINKS[0],                                   # 1
        "socks5://203.0.113.40:99999#bad port",     # 2
        "STATUS=100GB left",                        # 3  (informational lines some providers add)
        "",                                         # 4
        "gopher://203.0.113.41:70",                 # 5
        LINKS[1],                                   # 6
        SS_LINE,                                    # 7
        "socks5://",                                # 8
        "vmess://not-base64-json",                  # 9
    ]
    for text in ("\n".join(lines), b64("\n".join(lines))):
        parsed = parse_subscription(text, "sub")
        by_line = {e.split(":", 1)[0]: e for e in parsed.errors}
        assert {"line 2", "line 3", "line 5", "line 8", "line 9"} <= set(by_line)
        assert "unknown scheme" in by_line["line 5"]
        assert "not a share link" in by_line["line 3"]
        assert names(parsed)[:2] == ["HK 1", "JP"]
        # the ss:// line: a node, or a reported line 7 (this version may lack the module) -- never a crash
        assert ("SS node" in names(parsed)) != ("line 7" in by_line)
        assert len(parsed.nodes) + len(parsed.errors) == 8  # every line but the blank one accounted for
        assert "lab-secret" not in "\n".join(parsed.errors)  # reasons, not the links with their passwords


def test_a_module_bug_costs_one_line_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import daetui.outbound.subscription as mod

    real = mod.parse_link

    def buggy(link: str, name: str = "") -> Any:
        if "203.0.113.12" in link:
            raise KeyError("oops")
        return real(link, name)

    monkeypatch.setattr(mod, "parse_link", buggy)
    parsed = parse_subscription(LIST, "sub")
    assert names(parsed) == ["HK 1", "US http", "US https"]
    assert parsed.errors == ["line 2: socks5:// link not understood (KeyError: 'oops')"]


def test_duplicate_names_get_a_suffix() -> None:
    text = "\n".join([
        "socks5://203.0.113.50:1080#HK",
        "socks5://203.0.113.51:1080#HK",
        "socks5://203.0.113.52:1080#HK (2)",
        "socks5://203.0.113.53:1080#HK",
        "socks5://203.0.113.54:1080",
        "socks5://203.0.113.54:1080",
    ])
    parsed = parse_subscription(text, "sub", taken={"HK (3)"})
    assert names(parsed) == ["HK", "HK (2)", "HK (2) (2)", "HK (4)", "203.0.113.54:1080", "203.0.113.54:1080 (2)"]
    assert len(set(names(parsed))) == len(parsed.nodes)
    # the node itself carries its new name
    assert all(node.name == name for name, node in parsed.nodes)
    assert dict(parsed.nodes)["HK (4)"].host == "203.0.113.53"


@pytest.mark.parametrize("text, reason", [
    ("c29ja3M1Oi8vMjAzLjAuMTEzLjEx=OjEwODA", "bad base64"),       # padding in the middle
    ("c29ja3M1Oi8vMjAzLjAuMTEzLjExOjEwODAx9", "bad base64"),     # 4n+1 characters: a cut download
    (base64.b64encode(bytes(range(256))).decode(), "binary"),
    (b64("just some words, no links"), "holds no links"),
    ("this is not a valid subscription payload", "not a subscription"),
    ("", "empty"),
    ("   \n\t", "empty"),
])
def test_bad_base64_and_other_garbage(text: str, reason: str) -> None:
    parsed = parse_subscription(text, "sub")
    assert parsed.nodes == []
    assert len(parsed.errors) == 1 and reason in parsed.errors[0], parsed.errors


def test_not_utf8_bytes_are_said_and_the_rest_read() -> None:
    parsed = parse_subscription(LIST.encode() + b"socks5://203.0.113.60:1080#caf\xe9\n", "sub")
    assert names(parsed)[:4] == NAMES
    assert "not UTF-8" in parsed.errors[0]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=400), st.text(max_size=400),
                 st.lists(st.sampled_from([*LINKS, SS_LINE, "ss://", "socks5://x:1", "%%", "{}", "@"]),
                          max_size=8).map("\n".join)))
def test_never_raises(data: bytes | str) -> None:
    for text in (data, b64(data) if isinstance(data, str) else data):
        parsed = parse_subscription(text, "sub")
        assert len(set(names(parsed))) == len(parsed.nodes)


# -- the URL ---------------------------------------------------------------------------------------------

def test_split_tag_as_dae() -> None:
    assert split_tag("my_sub:https://sub.example/x") == ("my_sub", "https://sub.example/x")
    assert split_tag("https://sub.example/x") == ("", "https://sub.example/x")
    assert split_tag("file://rel/sub.txt") == ("", "file://rel/sub.txt")
    assert split_tag("no colon") == ("", "no colon")


def test_redact_url_hides_the_token() -> None:
    assert redact_url("https://sub.example/api/v1/client/subscribe?token=abc123") == "https://sub.example/…"
    assert redact_url("http://u:p@[2001:db8::1]:8080/s/abc") == "http://[2001:db8::1]:8080/…"
    assert redact_url("https://sub.example") == "https://sub.example"
    assert redact_url("file:///etc/daetui/sub.txt") == "file:///etc/daetui/sub.txt"


def test_tag_prefix_and_bad_scheme(tmp_path: Path) -> None:
    s = Sub("", "mine:https://sub.example/x", tmp_path)
    assert (s.tag, s.url) == ("mine", "https://sub.example/x")
    s = Sub("cfg", "mine:https://sub.example/x", tmp_path)
    assert s.tag == "cfg"  # the config's key wins
    with pytest.raises(ValueError, match="expected a http://"):
        Sub("x", "ftp://sub.example/x", tmp_path)
    with pytest.raises(ValueError, match="no tag"):
        Sub("", "https://sub.example/x?token=t", tmp_path)


# -- a scripted HTTP server on loopback -------------------------------------------------------------------

Route = tuple[int, dict[str, str], bytes] | str


class TinyHttp:
    """HTTP/1.1 on 127.0.0.1 answering each path with what `routes` says; one request per connection.

    A route is (status, headers, body), or "stall" (say nothing for up to 10 s), or "chunks:N" (a body of
    N bytes with no Content-Length, ended by closing). Requests are recorded with their headers.
    """

    def __init__(self, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        self.routes: dict[str, Route | Callable[[], Route]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.tls = tls
        self.host = host

    async def __aenter__(self) -> TinyHttp:
        self.server = await asyncio.start_server(self._handle, self.host, 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.wait_closed()

    def url(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            async with asyncio.timeout(10):
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                path = head[0].split(" ")[1]
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
                self.requests.append((path, headers))
                route = self.routes.get(path, (404, {}, b"no such subscription"))
                if callable(route):
                    route = route()
                if route == "stall":
                    await asyncio.sleep(10)
                    return
                if isinstance(route, str) and route.startswith("chunks:"):
                    left = int(route.split(":")[1])
                    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                    while left > 0:
                        writer.write(b"A" * min(65536, left))
                        left -= 65536
                        await writer.drain()
                    return
                assert not isinstance(route, str)
                status, extra, body = route
                fields = {"content-length": str(len(body)), "connection": "close", **extra}
                writer.write(f"HTTP/1.1 {status} X\r\n".encode()
                             + "".join(f"{k}: {v}\r\n" for k, v in fields.items()).encode() + b"\r\n" + body)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


@pytest.fixture
async def http() -> Any:
    async with TinyHttp() as server:
        yield server


def ok(body: str | bytes) -> Route:
    return (200, {"content-type": "text/plain"}, body.encode() if isinstance(body, str) else body)


# -- fetching --------------------------------------------------------------------------------------------

async def test_fetch_http_saves_a_copy(http: TinyHttp, tmp_path: Path) -> None:
    http.routes["/sub?token=t0k"] = ok(b64(LIST))
    s = Sub("prov", http.url("/sub?token=t0k"), tmp_path / "state", mark=0x4000000)  # with daetui's SO_MARK
    r = await s.fetch()
    assert r.ok and not r.from_saved_copy
    assert (r.node_count, r.format, r.errors) == (4, "base64", ())
    assert [n for n, _ in r.nodes] == NAMES
    assert r.fetched_at == r.attempted_at and r.saved_age is None
    assert r.url == f"http://127.0.0.1:{http.port}/…"
    assert "t0k" not in repr(r) and "t0k" not in r.summary()
    path, headers = http.requests[0]
    assert path == "/sub?token=t0k"
    assert headers["user-agent"].startswith("daetui/") and "v2rayN" in headers["user-agent"]
    saved = saved_path(tmp_path / "state", "prov")
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert read_saved(saved) is not None and read_saved(saved).body == b64(LIST).encode()  # type: ignore[union-attr]
    assert saved.read_bytes().startswith(b"@daetui-saved ")   # dae's file:// skips such a first line
    assert not list((tmp_path / "state").glob(".*tmp"))       # no temporary file left behind


async def test_saved_copy_used_when_the_fetch_fails(http: TinyHttp, tmp_path: Path) -> None:
    http.routes["/sub"] = ok(LIST)
    s = Sub("prov", http.url("/sub"), tmp_path)
    first = await s.fetch()
    assert first.ok
    saved = saved_path(tmp_path, "prov")
    # make the copy look 2 h old, as after a restart
    text = saved.read_bytes().replace(f"fetched_at={first.attempted_at:.3f}".encode(),
                                      f"fetched_at={first.attempted_at - 7200:.3f}".encode())
    saved.write_bytes(text)

    http.routes["/sub"] = (503, {}, b"maintenance")
    s2 = Sub("prov", http.url("/sub"), tmp_path)   # a new daemon: nothing in memory
    r = await s2.fetch()
    assert not r.ok and r.from_saved_copy
    assert r.fetch_error == "HTTP 503"
    assert r.node_count == 4 and [n for n, _ in r.nodes] == NAMES
    assert r.saved_age is not None and 7199 < r.saved_age < 7300
    assert "fetch failed (HTTP 503)" in r.summary() and "saved copy of 2.0 h ago" in r.summary()

    # a server that answers 200 with garbage: a failure too, and the good copy is not overwritten
    before = saved.read_bytes()
    http.routes["/sub"] = ok("this is not a valid subscription payload")
    r = await s2.fetch()
    assert r.from_saved_copy and r.node_count == 4 and "no usable nodes" in (r.fetch_error or "")
    assert saved.read_bytes() == before

    # all links broken: also no usable nodes
    http.routes["/sub"] = ok("socks5://203.0.113.1:0\ngopher://x:1\n")
    r = await s2.fetch()
    assert r.from_saved_copy and "no usable nodes (2 broken entries)" in (r.fetch_error or "")
    assert saved.read_bytes() == before


async def test_server_gone_saved_copy_and_load_saved(http: TinyHttp, tmp_path: Path) -> None:
    http.routes["/sub"] = ok(LIST)
    url = http.url("/sub")
    assert (await Sub("p", url, tmp_path).fetch()).ok
    await http.__aexit__()   # nothing listens on the port any more
    s = Sub("p", url, tmp_path, timeout=3)
    loaded = s.load_saved()
    assert loaded is not None and loaded.from_saved_copy and loaded.node_count == 4
    r = await s.fetch()
    assert r.from_saved_copy and r.node_count == 4
    assert "refused" in (r.fetch_error or "").lower(), r.fetch_error


async def test_no_saved_copy_no_nodes(http: TinyHttp, tmp_path: Path) -> None:
    r = await Sub("p", http.url("/missing"), tmp_path).fetch()
    assert (r.ok, r.from_saved_copy, r.node_count, r.fetch_error, r.fetched_at) == (False, False, 0, "HTTP 404", None)
    assert "no saved copy" in r.summary()
    assert Sub("p", http.url("/missing"), tmp_path).load_saved() is None


async def test_saved_copy_of_another_url_not_used(http: TinyHttp, tmp_path: Path) -> None:
    http.routes["/a"] = ok(LIST)
    assert (await Sub("p", http.url("/a"), tmp_path).fetch()).ok
    r = await Sub("p", http.url("/b"), tmp_path).fetch()   # the tag now names another subscription
    assert not r.from_saved_copy and r.node_count == 0
    assert "the saved copy is of another URL: not used" in r.notes


async def test_in_memory_copy_when_the_saved_one_is_unreadable(http: TinyHttp, tmp_path: Path) -> None:
    http.routes["/sub"] = ok(LIST)
    s = Sub("p", http.url("/sub"), tmp_path)
    assert (await s.fetch()).ok
    saved_path(tmp_path, "p").write_text("scribbled over")
    http.routes["/sub"] = (500, {}, b"")
    r = await s.fetch()
    assert r.from_saved_copy and r.node_count == 4
    assert any("cannot be read" in n for n in r.notes)


async def test_size_bound(http: TinyHttp, tmp_path: Path) -> None:
    http.routes["/announced"] = (200, {"content-length": str(MAX_BYTES + 1)}, b"")
    http.routes["/streamed"] = f"chunks:{MAX_BYTES + 100_000}"
    http.routes["/small"] = "chunks:1000"
    s = Sub("p", http.url("/announced"), tmp_path)
    r = await s.fetch()
    assert f"larger than {MAX_BYTES} bytes ({MAX_BYTES + 1} announced)" == r.fetch_error
    r = await Sub("p", http.url("/streamed"), tmp_path).fetch()
    assert r.fetch_error == f"larger than {MAX_BYTES} bytes"
    r = await Sub("p", http.url("/small"), tmp_path, max_bytes=999).fetch()
    assert r.fetch_error == "larger than 999 bytes"


async def test_time_bound(http: TinyHttp, tmp_path: Path) -> None:
    http.routes["/stall"] = "stall"
    start = time.monotonic()
    r = await Sub("p", http.url("/stall"), tmp_path, timeout=0.5).fetch()
    assert time.monotonic() - start < 3
    assert r.fetch_error == "timed out after 0.5 s"


async def test_redirects_followed_and_bounded(http: TinyHttp, tmp_path: Path) -> None:
    http.routes["/old"] = (302, {"location": "/new?t=1"}, b"")
    http.routes["/new?t=1"] = ok(LIST)
    r = await Sub("p", http.url("/old"), tmp_path).fetch()
    assert r.ok and r.node_count == 4
    http.routes["/loop"] = (301, {"location": "/loop"}, b"")
    r = await Sub("p", http.url("/loop"), tmp_path).fetch()
    assert r.fetch_error == "more than 5 redirects"
    assert sum(p == "/loop" for p, _ in http.requests) == 6


async def test_names_resolved_by_the_given_resolver(http: TinyHttp, tmp_path: Path) -> None:
    asked: list[str] = []

    async def resolve(host: str) -> str:
        asked.append(host)
        if host == "sub.test":
            return "127.0.0.1"
        raise OSError("NXDOMAIN")

    http.routes["/sub"] = ok(LIST)
    r = await Sub("p", f"http://sub.test:{http.port}/sub", tmp_path, resolve=resolve).fetch()
    assert r.ok and asked == ["sub.test"]
    assert http.requests[-1][1]["host"] == f"sub.test:{http.port}"
    r = await Sub("p2", f"http://nowhere.test:{http.port}/sub", tmp_path, resolve=resolve).fetch()
    assert r.fetch_error == "cannot resolve nowhere.test: NXDOMAIN"


async def test_ipv6_loopback(tmp_path: Path) -> None:
    try:
        server = TinyHttp(host="::1")
        await server.__aenter__()
    except OSError as e:
        pytest.skip(f"no IPv6 loopback: {e}")
    try:
        server.routes["/sub"] = ok(LIST)
        r = await Sub("p", server.url("/sub"), tmp_path, mark=0x4000000).fetch()
        assert r.ok and r.node_count == 4
        assert r.url == f"http://[::1]:{server.port}/…"
    finally:
        await server.__aexit__()


async def test_http_file_is_http_with_a_copy(http: TinyHttp, tmp_path: Path) -> None:
    http.routes["/sub"] = ok(LIST)
    r = await Sub("p", f"http-file://127.0.0.1:{http.port}/sub", tmp_path).fetch()
    assert r.ok and r.node_count == 4
    assert saved_path(tmp_path, "p").exists()


def self_signed(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for `name`, and a client context trusting only it."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


async def test_https_name_resolved_certificate_checked_against_the_name(tmp_path: Path) -> None:
    server_ctx, client_ctx = self_signed(tmp_path, "sub.test")

    async def resolve(host: str) -> str:
        return "127.0.0.1"

    async with TinyHttp(server_ctx) as https:
        https.routes["/sub"] = ok(b64(LIST))
        url = f"https://sub.test:{https.port}/sub"
        r = await Sub("p", url, tmp_path / "s", resolve=resolve, verify=client_ctx, mark=0x4000000).fetch()
        assert r.ok and r.node_count == 4, r.fetch_error
        assert https.requests[-1][1]["host"] == f"sub.test:{https.port}"
        # the same server under another name: its certificate does not fit, and the fetch says so
        r = await Sub("q", f"https://other.test:{https.port}/sub", tmp_path / "s", resolve=resolve,
                      verify=client_ctx).fetch()
        assert not r.ok and "certificate" in (r.fetch_error or "").lower(), r.fetch_error
        # an https subscription redirected to plain http is refused
        https.routes["/down"] = (302, {"location": "http://sub.test/sub"}, b"")
        r = await Sub("d", f"https://sub.test:{https.port}/down", tmp_path / "s", resolve=resolve,
                      verify=client_ctx).fetch()
        assert r.fetch_error == "HTTP 302: redirected from https to http://sub.test/…: refused"


# -- file:// ----------------------------------------------------------------------------------------------

async def test_file_urls(tmp_path: Path) -> None:
    conf = tmp_path / "etc"
    (conf / "subs").mkdir(parents=True)
    sub = conf / "subs" / "my.sub"
    sub.write_text("@an instruction line dae skips\n" + b64(LIST) + "\n")
    sub.chmod(0o600)
    state = tmp_path / "state"

    r = await Sub("abs", f"file://{sub}", state).fetch()
    assert r.ok and r.node_count == 4 and r.notes == ()
    assert not state.exists()   # a file is its own copy

    r = await Sub("rel", "file://subs/my.sub", state, config_dir=conf).fetch()   # dae's relative form
    assert r.ok and r.node_count == 4

    r = await Sub("rel", "file://subs/my.sub", state).fetch()
    assert r.fetch_error == "a relative file:// URL needs the config's directory"

    (tmp_path / "outside.sub").write_text(LIST)
    r = await Sub("esc", "file://subs/../../outside.sub", state, config_dir=conf).fetch()
    assert "outside the config's directory" in (r.fetch_error or "")

    r = await Sub("gone", f"file://{conf}/nope.sub", state).fetch()
    assert r.fetch_error == f"no such file: {conf}/nope.sub"

    r = await Sub("dir", f"file://{conf}/subs", state).fetch()
    assert r.fetch_error == f"{conf}/subs is not a file"

    sub.chmod(0o644)   # dae refuses this; daetui reads it and says why it should not be so
    r = await Sub("abs", f"file://{sub}", state).fetch()
    assert r.ok and any("mode 0644" in n for n in r.notes)

    big = conf / "big.sub"
    big.write_bytes(b"A" * 2000)
    r = await Sub("big", f"file://{big}", state, max_bytes=1000).fetch()
    assert r.fetch_error == f"{big} is larger than 1000 bytes"


async def test_saved_copy_readable_as_a_file_url(http: TinyHttp, tmp_path: Path) -> None:
    http.routes["/sub"] = ok(LIST)
    assert (await Sub("p", http.url("/sub"), tmp_path).fetch()).ok
    r = await Sub("f", f"file://{saved_path(tmp_path, 'p')}", tmp_path / "x").fetch()
    assert r.ok and [n for n, _ in r.nodes] == NAMES


# -- refreshing -------------------------------------------------------------------------------------------

async def test_refresh_on_interval_and_backoff(http: TinyHttp, tmp_path: Path) -> None:
    answers = iter([(500, {}, b""), (500, {}, b""), (500, {}, b""), ok(LIST), ok(LIST)])
    http.routes["/sub"] = lambda: next(answers, ok(LIST))
    s = Sub("p", http.url("/sub"), tmp_path, interval=1.0, retry=0.05)
    assert [s.next_delay(n) for n in range(7)] == [1.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    results: list[tuple[float, SubscriptionResult]] = []
    five = asyncio.Event()

    def on_result(r: SubscriptionResult) -> None:
        results.append((time.monotonic(), r))
        if len(results) == 5:
            five.set()

    s.start(on_result)
    try:
        async with asyncio.timeout(10):
            await five.wait()
    finally:
        await s.stop()
    oks = [r.ok for _, r in results]
    assert oks == [False, False, False, True, True]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(results)]
    assert gaps[0] > 0.04 and gaps[1] > 0.09 and gaps[2] > 0.19    # 0.05, 0.1, 0.2 after each failure
    assert gaps[0] < 0.6 < 0.95 < gaps[3]                            # sooner than the interval after a success
    assert all(r.next_at is not None for _, r in results)
    assert s.result is results[-1][1]


async def test_refresh_now_and_async_callback(http: TinyHttp, tmp_path: Path) -> None:
    http.routes["/sub"] = ok(LIST)
    s = Sub("p", http.url("/sub"), tmp_path, interval=3600)
    got: asyncio.Queue[SubscriptionResult] = asyncio.Queue()

    async def on_result(r: SubscriptionResult) -> None:
        await got.put(r)
        raise RuntimeError("a bad handler does not stop the refreshing")

    s.start(on_result)
    try:
        async with asyncio.timeout(5):
            assert (await got.get()).ok
            s.refresh_now()
            assert (await got.get()).ok
    finally:
        await s.stop()
    assert len(http.requests) == 2


def test_result_summary_words() -> None:
    r = SubscriptionResult("t", "https://x/…", 1000.0, 1000.0 - 3 * 86400, True, 7, ("line 3: bad",),
                           fetch_error="HTTP 502")
    assert r.summary() == ("subscription t: fetch failed (HTTP 502); using the saved copy of 3.0 days ago: 7 nodes; "
                           "1 broken entry skipped")


def test_write_saved_leaves_the_old_copy_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from daetui.outbound import subscription as mod

    path = saved_path(tmp_path, "p")
    mod.write_saved(path, "http://x/", b"old", 1.0)

    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        mod.write_saved(path, "http://x/", b"new", 2.0)
    saved = read_saved(path)
    assert saved is not None and saved.body == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["p.sub"]


def test_the_refresh_interval_comes_from_the_config_and_follows_a_reload(tmp_path: Path) -> None:
    from daetui.config.load import parse_config
    from daetui.outbound.direct import DirectDialer
    from daetui.outbound.manager import Outbounds

    def config(interval: str) -> Any:
        return parse_config(f'[global]\nlan_interface = ["lan0"]\nsubscription_interval = "{interval}"\n'
                            f'[subscription]\nmine = "file://{tmp_path}/sub.txt"\n', "t.toml")

    outbounds = Outbounds(config("6h"), DirectDialer(mark=0))
    sub = outbounds.subscriptions["mine"]
    assert sub.interval == 6 * 3600
    outbounds.configure(config("30m"))
    assert outbounds.subscriptions["mine"] is sub and sub.interval == 1800  # the same subscription, kept
    assert Outbounds(parse_config('[global]\nlan_interface = ["lan0"]\n[subscription]\nmine = "file:///x"\n',
                                  "t.toml"), DirectDialer(mark=0)).subscriptions["mine"].interval == 12 * 3600
