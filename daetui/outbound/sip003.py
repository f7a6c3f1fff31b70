"""SIP003 plugins of shadowsocks nodes: the plugin a node names, and the client side of the ones daetui speaks.

A plugin is a name and options, `k=v;k2=v2` (SIP003, https://shadowsocks.org/doc/sip003.html):
a `\\` escapes the next character, so `;`, `=` and `\\` can stand inside keys and values; an
option without `=` is a flag (v2ray-plugin's `tls`). An ss:// link carries both as one
URL-encoded parameter, `?plugin=name;opts` (SIP002).

daetui runs no plugin process: it speaks the plugin's wire format itself, as a Stream wrapped
around the connection to the plugin server (the port the node's link names). Supported:

  simple-obfs (`obfs-local`, `simple-obfs`): `obfs=http|tls;obfs-host=NAME[;obfs-uri=/PATH]`
      http: the first bytes go behind a fake `GET ... Upgrade: websocket` request and the first
      answer behind a `101 Switching Protocols`; after that the bytes are the node's own.
      tls: the first bytes ride in the session ticket of a fake TLS 1.2 ClientHello (SNI =
      obfs-host), the server's first in a fake ServerHello + ChangeCipherSpec + handshake
      record; every later write is an application-data record (type 23). Framing only: no
      TLS is negotiated. Written from simple-obfs 0.0.5 (src/obfs_http.c, obfs_tls.c), the
      version Debian ships; its obfs-server checks the Host header against its obfs-host
      (http) but not the SNI (tls), and hands a request it does not take for its own to its
      `failover` (a web server) or to ss-server, which then stays silent.
  v2ray-plugin (`v2ray-plugin`): `[mode=websocket][;tls][;host=NAME][;path=/PATH][;mux=N][;cert=CA]`
      a websocket (in TLS with `tls`, SNI = host) to the plugin server, carrying the node's
      bytes in one mux.cool session (`MuxCool`), or bare with `mux=0`; see `open_v2ray_plugin`.
      Found by running Debian's ss-v2ray-plugin (v2ray 4.34): its server, unless started with
      `mux=0`, reads every websocket as mux.cool ("invalid metalen" for bare bytes, then silence),
      and with `mux=0` reads bare bytes only; v2ray-plugin's own client defaults to mux=1.
  shadow-tls (`shadow-tls`, `shadowtls`, `sstls`): `password=PW[;host=NAME][;version=3][;skipVerify=true]`
      a real TLS 1.3 handshake with the site `host`, relayed by the ShadowTLS server, then the
      node's bytes in HMAC-signed application-data records: see shadowtls.py. v3 only.

Refused at parse, with the reason: v2ray-plugin's `mode=quic`, ShadowTLS v1 and v2, and every
other plugin (kcptun, gost-plugin, cloak, restls, ...).

UDP: a SIP003 plugin carries TCP only. ss-server started with a plugin still runs its UDP relay
on the node's own port (the plugin takes the TCP port), and ss-local and clash send a plugin
node's UDP there directly, unobfuscated; daetui does the same (the dialer's `datagrams()` does
not look at the plugin).
"""

from __future__ import annotations

import base64
import ipaddress
import os
import random
import socket
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from daetui.net.stream import Codec, DialError, Stream, WrappedStream, framing_of
from daetui.net.tls import client_context, start_tls
from daetui.net.websocket import open_websocket
from daetui.outbound.shadowtls import Settings as ShadowTlsSettings
from daetui.outbound.shadowtls import open_shadowtls

PluginKind = Literal["simple-obfs", "v2ray-plugin", "shadow-tls"]

# The names links give each supported plugin (the binary's name, mostly).
KINDS: dict[str, PluginKind] = {
    "obfs-local": "simple-obfs",
    "simple-obfs": "simple-obfs",
    "v2ray-plugin": "v2ray-plugin",
    "shadow-tls": "shadow-tls",
    "shadowtls": "shadow-tls",  # dae's name
    "sstls": "shadow-tls",  # dae takes it too
}

# Plugins met in subscriptions that daetui does not speak, and why.
REFUSED = {
    "obfs-server": "is a server-side plugin (the client side is obfs-local)",
    "kcptun": "(KCP over UDP) is not supported",
    "gost-plugin": "is not supported",
    "xray-plugin": "is not supported (v2ray-plugin is)",
    "cloak": "is not supported",
    "ck-client": "(Cloak) is not supported",
    "qtun": "(QUIC) is not supported",
    "restls": "is not supported",
}

OBFS_MODES = ("http", "tls")
OBFS_DEFAULT_HOST = "cloudfront.net"  # obfs-local's own default
V2RAY_DEFAULT_HOST = "cloudfront.com"  # v2ray-plugin's own default


# -- the plugin a node names --------------------------------------------------------------

def _split_unescaped(text: str, sep: str, limit: int = -1) -> list[str]:
    """`text` cut at every `sep` not escaped by a backslash; the pieces keep their escapes."""
    parts, cur, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if c == sep and limit != 0:
            parts.append("".join(cur))
            cur = []
            limit -= 1
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out)


def _escape(text: str) -> str:
    return "".join("\\" + c if c in "\\;=" else c for c in text)


def parse_options(text: str) -> tuple[tuple[str, str | None], ...]:
    """SIP003 options `k=v;k2=v2;flag` as (key, value) pairs in order, a flag's value None."""
    out: list[tuple[str, str | None]] = []
    for item in _split_unescaped(text, ";"):
        if not item:
            continue
        key, *value = _split_unescaped(item, "=", 1)
        if not key:
            raise ValueError(f"plugin option {item!r} has no name")
        out.append((_unescape(key), _unescape(value[0]) if value else None))
    return tuple(out)


def format_options(options: Iterable[tuple[str, str | None]]) -> str:
    """The SIP003 text of options (the inverse of parse_options)."""
    return ";".join(_escape(k) if v is None else f"{_escape(k)}={_escape(v)}" for k, v in options)


@dataclass(frozen=True)
class Plugin:
    """A SIP003 plugin and its options; constructing one refuses what daetui cannot speak (ValueError)."""

    name: str
    options: tuple[tuple[str, str | None], ...] = ()

    def __post_init__(self) -> None:
        kind = KINDS.get(self.name)
        if kind is None:
            why = REFUSED.get(self.name)
            supported = ", ".join(KINDS)
            if why:
                raise ValueError(f"plugin {self.name!r} {why}; supported: {supported}")
            raise ValueError(f"unknown plugin {self.name!r}; supported: {supported}")
        if kind == "simple-obfs":
            mode = self.get("obfs")
            if mode not in OBFS_MODES:
                got = "no obfs option" if mode is None else f"obfs={mode}"
                raise ValueError(f"plugin {self.name}: {got}; expected obfs=http or obfs=tls")
            uri = self.get("obfs-uri")
            if uri is not None and (not uri.startswith("/") or any(c.isspace() for c in uri)):
                raise ValueError(f"plugin {self.name}: obfs-uri={uri!r} must be a path starting with /")
        elif kind == "shadow-tls":
            ShadowTlsSettings.of(self.get)
            return
        else:
            mode = self.get("mode") or "websocket"
            if mode == "quic":
                raise ValueError("plugin v2ray-plugin: mode=quic is not supported (QUIC transport); "
                                 "only mode=websocket, with or without tls")
            if mode != "websocket":
                raise ValueError(f"plugin v2ray-plugin: unknown mode={mode} (expected websocket)")
            mux = self.get("mux")
            if mux is not None and not mux.isdigit():
                raise ValueError(f"plugin v2ray-plugin: mux={mux!r} is not a number")
            path = self.get("path")
            if path is not None and (not path.startswith("/") or any(c.isspace() for c in path)):
                raise ValueError(f"plugin v2ray-plugin: path={path!r} must be a path starting with /")
            # `server` (the plugin's server mode) means nothing to a client: ignored, as dae and clash do
            # (SIP002's own example link carries it).
        host = self.get("obfs-host" if kind == "simple-obfs" else "host")
        if host is not None and (not host or any(c.isspace() or c in "/?#" for c in host)):
            raise ValueError(f"plugin {self.name}: bad host {host!r}")

    @property
    def kind(self) -> PluginKind:
        """Which plugin this is, whatever name the link gave it."""
        return KINDS[self.name]

    def has(self, key: str) -> bool:
        return any(k == key for k, _ in self.options)

    def get(self, key: str, default: str | None = None) -> str | None:
        """The last value given for `key` (a flag's is ""), else `default`."""
        for k, v in reversed(self.options):
            if k == key:
                return "" if v is None else v
        return default

    def flag(self, key: str) -> bool:
        """A boolean option: present as a flag, or =1/true/yes."""
        value = self.get(key)
        if value is None:
            return False
        return value.strip().lower() in ("", "1", "true", "yes")

    @property
    def options_text(self) -> str:
        """The options as SIP003 writes them (`plugin_opts`)."""
        return format_options(self.options)

    def text(self) -> str:
        """`name;opts`, SIP002's `plugin` parameter before URL encoding."""
        opts = self.options_text
        return f"{self.name};{opts}" if opts else self.name

    def describe(self) -> str:
        """A short form for logs and errors: `simple-obfs tls`, `v2ray-plugin websocket+tls`."""
        if self.kind == "simple-obfs":
            return f"simple-obfs {self.get('obfs')}"
        if self.kind == "shadow-tls":
            settings = ShadowTlsSettings.of(self.get)
            return f"shadow-tls v{settings.version}" + (f" {settings.host}" if settings.host else "")
        return "v2ray-plugin websocket" + ("+tls" if self.flag("tls") else "")


def parse_plugin(text: str) -> Plugin:
    """The plugin of SIP002's `plugin` parameter (already URL-decoded): `name[;opts]`."""
    name, *opts = _split_unescaped(text.strip(), ";", 1)
    if not name:
        raise ValueError("plugin parameter without a plugin name")
    return Plugin(name, parse_options(opts[0]) if opts else ())


def plugin_of(name: str, opts: str = "") -> Plugin:
    """The plugin of a SIP003 config (`plugin` and `plugin_opts` apart, as ss-local's JSON has them)."""
    return Plugin(name.strip(), parse_options(opts))


def plugin_from_clash(name: str, opts: Mapping[str, object]) -> Plugin:
    """The plugin of a clash proxy entry (`plugin:` and `plugin-opts:`), in SIP003 terms.

    clash calls simple-obfs `obfs` with `mode`/`host`, and gives v2ray-plugin `mode`, `tls`,
    `host`, `path` and `mux` (a boolean, true unless said otherwise). Its `headers` and
    `skip-cert-verify` have no SIP003 counterpart: ValueError says so rather than dropping them.
    """
    unknown = {"headers", "skip-cert-verify"} & {k for k, v in opts.items() if v}
    if name in ("shadow-tls", "shadowtls"):
        unknown.discard("skip-cert-verify")
    if unknown:
        raise ValueError(f"plugin {name}: clash's {', '.join(sorted(unknown))} not supported")

    def text(key: str) -> str | None:
        value = opts.get(key)
        return None if value is None or value == "" else str(value)

    if name in ("obfs", "simple-obfs", "obfs-local"):
        options: list[tuple[str, str | None]] = [("obfs", text("mode") or "")]
        if host := text("host"):
            options.append(("obfs-host", host))
        return Plugin("obfs-local", tuple(options))
    if name in ("shadow-tls", "shadowtls"):
        # mihomo's own default is version 2 (refused, with the reason); its skip-cert-verify is dae's skipVerify.
        options = [(k, v) for k in ("host", "password") if (v := text(k))]
        options.append(("version", text("version") or "2"))
        if opts.get("skip-cert-verify") in (True, "true", 1, "1"):
            options.append(("skipVerify", "true"))
        return Plugin("shadow-tls", tuple(options))
    if name == "v2ray-plugin":
        options = [("mode", text("mode") or "websocket")]
        if opts.get("tls") in (True, "true", 1, "1"):
            options.append(("tls", None))
        options += [(k, v) for k in ("host", "path") if (v := text(k))]
        if opts.get("mux", True) in (False, "false", 0, "0"):
            options.append(("mux", "0"))
        return Plugin("v2ray-plugin", tuple(options))
    return Plugin(name)  # refused, with the reason


# -- codecs stacked on codecs ---------------------------------------------------------------

class Layered:
    """Two Codecs in one: `top`'s framing inside `below`'s (shadowsocks inside simple-obfs inside a socket)."""

    def __init__(self, below: Codec, top: Codec) -> None:
        self.below = below
        self.top = top
        intervals = [i for i in (below.watch_interval, top.watch_interval) if i is not None]
        self.watch_interval = min(intervals) if intervals else None

    @property
    def error(self) -> DialError | None:
        return self.top.error or self.below.error

    @property
    def server_ended(self) -> bool:
        return self.below.server_ended or self.top.server_ended

    def encode(self, data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
        framed = self.top.encode(data)
        return self.below.encode(framed) if framed else b""

    def encode_eof(self) -> tuple[bytes | bytearray | memoryview, bool]:
        framed, fin = self.top.encode_eof()
        out = self.below.encode(framed) if framed else b""
        if not fin:
            return out, False
        last, fin = self.below.encode_eof()
        return (bytes(out) + bytes(last) if last else out), fin

    def decode(self, data: bytes) -> bytes | bytearray:
        inner = self.below.decode(data)
        return self.top.decode(bytes(inner)) if inner else b""

    def reply(self) -> bytes:
        up = self.top.reply()
        return (bytes(self.below.encode(up)) if up else b"") + self.below.reply()

    def decode_eof(self) -> None:
        self.below.decode_eof()
        self.top.decode_eof()

    def overdue(self, idle: float) -> str | None:
        return self.top.overdue(idle) or self.below.overdue(idle)


READ_SIZE = 1 << 16


class CodecStream(WrappedStream):
    """A Stream that frames the one below with a Codec; its `framed()` stacks that Codec on the one below's."""

    def __init__(self, inner: Stream, codec: Codec) -> None:
        super().__init__(inner)
        self.codec = codec
        self._pending = b""  # decoded beyond what a read asked for

    async def read(self, n: int) -> bytes:
        if self._pending:
            out, self._pending = self._pending[:n], self._pending[n:]
            return out
        while True:
            if self.codec.server_ended:
                return b""
            data = await self.inner.read(max(n, READ_SIZE))
            if not data:
                self.codec.decode_eof()
                return b""
            plain = bytes(self.codec.decode(data))
            if plain:
                if len(plain) > n:
                    plain, self._pending = plain[:n], plain[n:]
                return plain
            if self.codec.error is not None:
                raise self.codec.error

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        out = self.codec.encode(data)
        if out:
            await self.inner.write(out)

    async def write_eof(self) -> None:
        out, fin = self.codec.encode_eof()
        if out:
            await self.inner.write(out)
        if fin:
            await self.inner.write_eof()

    def framed(self) -> tuple[socket.socket, Codec] | None:
        """The socket below and this stream's Codec over the one below's, when nothing is held here."""
        below = None if self._pending else framing_of(self.inner)
        return None if below is None else (below[0], Layered(below[1], self.codec))


# -- simple-obfs ------------------------------------------------------------------------------

class _ObfsBase:
    """What the simple-obfs codecs share: no replies, no timers, errors raised where found."""

    error: DialError | None = None
    watch_interval: float | None = None
    server_ended = False

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.sent_first = False
        self.received = 0

    def reply(self) -> bytes:
        return b""

    def overdue(self, idle: float) -> str | None:
        return None

    def encode_eof(self) -> tuple[bytes, bool]:
        """TCP's own FIN, as obfs-local passes it on."""
        return b"", True

    def _fail(self, reason: str) -> DialError:
        self.error = DialError(f"simple-obfs {self.mode}: {reason}")
        return self.error

    mode = ""


def _quoted(data: bytes, n: int = 40) -> str:
    return repr(bytes(data[:n]))


class ObfsHttp(_ObfsBase):
    """simple-obfs http: a fake websocket upgrade request before the first bytes, its answer cut off the first read."""

    mode = "http"
    MAX_HEAD = 8192  # an answer's head longer than this is not simple-obfs's

    def __init__(self, host: str, port: int, uri: str = "/") -> None:
        super().__init__(host, port)
        self.uri = uri
        self._head = bytearray()  # the answer's head while it comes
        self.answered = False

    def request_head(self, length: int) -> bytes:
        """The request head simple-obfs 0.0.5's obfs-local writes (Host with the port unless it is 80)."""
        host = self.host if self.port == 80 else f"{self.host}:{self.port}"
        key = base64.b64encode(os.urandom(16)).decode()
        return (f"GET {self.uri} HTTP/1.1\r\nHost: {host}\r\n"
                f"User-Agent: curl/7.{random.randrange(51)}.{random.randrange(2)}\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Content-Length: {length}\r\n\r\n").encode()

    def encode(self, data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
        if self.sent_first:
            return data
        if not data:
            return b""
        self.sent_first = True
        return self.request_head(len(data)) + bytes(data)

    def decode(self, data: bytes) -> bytes | bytearray:
        if self.answered:
            return data
        if self.error is not None:
            raise self.error
        self.received += len(data)
        self._head += data
        if not self._head.startswith(b"HTTP/1."[:len(self._head)]):
            raise self._fail(f"the server answered {_quoted(self._head)}, not HTTP: not a simple-obfs "
                             "http server (obfs=tls there?)")
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > self.MAX_HEAD:
                raise self._fail(f"an HTTP answer head of over {self.MAX_HEAD} bytes: not simple-obfs")
            return b""
        status = bytes(self._head[:self._head.find(b"\r\n")]).decode("latin-1")
        if status.split(" ")[1:2] != ["101"]:
            raise self._fail(f"the server answered {status!r}, not 101 Switching Protocols: wrong obfs-host, "
                             "or obfs=tls there? (obfs-server passes a request it does not take to its failover)")
        rest = bytes(self._head[end + 4:])
        self._head = bytearray()
        self.answered = True
        return rest

    def decode_eof(self) -> None:
        if not self.answered and self.received:
            raise self._fail(f"the server closed in the middle of its answer's head ({self.received} bytes came)")


# The fixed parts of simple-obfs 0.0.5's ClientHello (obfs_tls.c's templates).
_CIPHER_SUITES = bytes.fromhex(
    "c02cc030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00a"
    "c0140039c009c0130033009d009c003d003c0035002f00ff")
_OTHER_EXTENSIONS = (
    bytes.fromhex("000b000403010002")  # ec_point_formats
    + bytes.fromhex("000a000a0008001d001700190018")  # supported groups
    + bytes.fromhex("000d0020001e" "060106020603050105020503040104020403030103020303020102020203")
    + bytes.fromhex("00160000")  # encrypt_then_mac
    + bytes.fromhex("00170000"))  # extended_master_secret
TLS_HANDSHAKE, TLS_CHANGE_CIPHER_SPEC, TLS_APPLICATION_DATA = 0x16, 0x14, 0x17
MAX_RECORD = 1 << 14  # TLS's largest plaintext record: what a real client would send
# The most of the first bytes the ClientHello's ticket carries: what obfs-local (a 2048-byte
# buffer) ever puts there, well inside obfs-server's 16 KB first read, which must hold it all.
FIRST_PAYLOAD = 2048
_RECORD_LIMIT = 0x4800  # a record longer than this from the server is not simple-obfs framing


def client_hello(host: str, payload: bytes) -> bytes:
    """The ClientHello record obfs-local sends: `payload` as the session ticket, `host` as SNI."""
    name = host.encode("idna") if not host.isascii() else host.encode()
    ticket = struct.pack("!HH", 0x0023, len(payload)) + payload
    sni = struct.pack("!HHHBH", 0x0000, len(name) + 5, len(name) + 3, 0, len(name)) + name
    extensions = ticket + sni + _OTHER_EXTENSIONS
    body = (b"\x03\x03" + struct.pack("!I", int(time.time()) & 0xFFFFFFFF) + os.urandom(28)
            + b"\x20" + os.urandom(32) + struct.pack("!H", len(_CIPHER_SUITES)) + _CIPHER_SUITES
            + b"\x01\x00" + struct.pack("!H", len(extensions)) + extensions)
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return struct.pack("!BHH", TLS_HANDSHAKE, 0x0301, len(handshake)) + handshake


def app_records(data: bytes | bytearray | memoryview) -> bytearray:
    """`data` as application-data records of at most MAX_RECORD bytes."""
    view = memoryview(data)
    out = bytearray()
    for i in range(0, len(view), MAX_RECORD):
        part = view[i:i + MAX_RECORD]
        out += struct.pack("!BHH", TLS_APPLICATION_DATA, 0x0303, len(part))
        out += part
    return out


class ObfsTls(_ObfsBase):
    """simple-obfs tls: TLS-looking records around the node's bytes (no TLS is negotiated)."""

    mode = "tls"

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self._header = bytearray()  # a record header cut by a read
        self._left = 0  # bytes of the record under way still to come
        self._skip = False  # the record under way is the ServerHello or ChangeCipherSpec: dropped
        self.records = 0  # records whose header came

    def encode(self, data: bytes | bytearray | memoryview) -> bytes | bytearray:
        if not data:
            return b""
        if self.sent_first:
            return app_records(data)
        self.sent_first = True
        view = memoryview(data)
        hello = client_hello(self.host, bytes(view[:FIRST_PAYLOAD]))
        return hello + app_records(view[FIRST_PAYLOAD:]) if len(view) > FIRST_PAYLOAD else hello

    def decode(self, data: bytes) -> bytes | bytearray:
        if self.error is not None:
            raise self.error
        self.received += len(data)
        view = memoryview(data)
        out: list[bytes | memoryview] = []
        pos, end = 0, len(view)
        while pos < end:
            if self._left:
                take = min(self._left, end - pos)
                if not self._skip:
                    out.append(view[pos:pos + take])
                pos += take
                self._left -= take
                continue
            need = 5 - len(self._header)
            self._header += view[pos:pos + need]
            pos += need
            if len(self._header) < 5:
                break
            self._start_record(bytes(self._header))
            self._header.clear()
        if not out:
            return b""
        return bytes(out[0]) if len(out) == 1 else b"".join(out)

    def _start_record(self, header: bytes) -> None:
        kind, major, length = header[0], header[1], int.from_bytes(header[3:5], "big")
        if self.records == 0 and (kind != TLS_HANDSHAKE or major != 3):
            what = "HTTP" if header.startswith(b"HTTP") else "not TLS"
            raise self._fail(f"the server's answer ({_quoted(header)}...) is {what}: not a simple-obfs tls server "
                             "(obfs=http there, or its failover answered?)")
        if major != 3 or kind not in (TLS_HANDSHAKE, TLS_CHANGE_CIPHER_SPEC, TLS_APPLICATION_DATA) \
                or length > _RECORD_LIMIT:
            raise self._fail(f"record {self.records} is not simple-obfs framing (header {header.hex()})")
        # The first record is the ServerHello, then a ChangeCipherSpec; every later handshake or
        # application-data record carries the server's bytes.
        self._skip = self.records == 0 or kind == TLS_CHANGE_CIPHER_SPEC
        self._left = length
        self.records += 1

    def decode_eof(self) -> None:
        if self._left or self._header:
            raise self._fail(f"the server closed in the middle of a record ({self.received} bytes came)")


def obfs_codec(plugin: Plugin, server_port: int) -> ObfsHttp | ObfsTls:
    """The simple-obfs codec of a plugin (obfs-host defaults as obfs-local's does)."""
    host = plugin.get("obfs-host") or OBFS_DEFAULT_HOST
    if plugin.get("obfs") == "tls":
        return ObfsTls(host, server_port)
    return ObfsHttp(host, server_port, plugin.get("obfs-uri") or "/")


async def open_plugin(plugin: Plugin, stream: Stream, server_host: str, server_port: int, *,
                      allow_insecure: bool = False, ca_file: str | None = None, timeout: float = 10.0) -> Stream:
    """`stream` (a connection to the plugin server) wrapped in the plugin's framing.

    simple-obfs sends nothing of its own before the first write; v2ray-plugin's TLS and
    websocket handshakes are made here, within `timeout` each (see open_v2ray_plugin), and
    so is shadow-tls's TLS handshake (shadowtls.open_shadowtls).
    """
    if plugin.kind == "simple-obfs":
        return CodecStream(stream, obfs_codec(plugin, server_port))
    if plugin.kind == "shadow-tls":
        below, codec = await open_shadowtls(ShadowTlsSettings.of(plugin.get), stream, allow_insecure=allow_insecure,
                                            ca_file=ca_file, timeout=timeout)
        return CodecStream(below, codec)
    return await open_v2ray_plugin(plugin, stream, server_port, allow_insecure=allow_insecure, ca_file=ca_file,
                                   timeout=timeout)


async def open_v2ray_plugin(plugin: Plugin, stream: Stream, server_port: int, *, allow_insecure: bool = False,
                            ca_file: str | None = None, timeout: float = 10.0) -> Stream:
    """v2ray-plugin's client side over `stream`: [TLS,] a websocket to `path` with Host `host`, mux.cool in it.

    As v2ray-plugin's client does: TLS (with `tls`) sends `host` as SNI and checks the
    certificate against it (the system's CAs, else `ca_file` or the plugin's own `cert`
    option, a CA file; `allow_insecure` checks nothing); `mux=0` sends the node's bytes bare
    in the websocket, any other value (the default is 1) as one mux.cool session. The
    server must agree: v2ray-plugin's server expects mux.cool unless it runs with mux=0.

    The client's end of its side goes as mux.cool's End (the server then ends the session,
    as ss-server would on a FIN). With mux=0 it is not passed on at all: a websocket has no
    half-close, so such a connection lasts until the server side ends it (v2ray's own client
    does the same and leans on v2ray's idle timers).
    """
    host = plugin.get("host") or V2RAY_DEFAULT_HOST
    if plugin.flag("tls"):
        ctx = client_context(allow_insecure=allow_insecure, ca_file=ca_file or plugin.get("cert") or None)
        # No close_notify on our end: ss-server ends both directions on it anyway.
        stream = await start_tls(stream, ctx, host, timeout, half_close=False)
    ws = await open_websocket(stream, host=host, path=plugin.get("path") or "/", timeout=timeout)
    if plugin.get("mux", "1") == "0":
        return ws
    # The target is what v2ray-plugin's own client sends (its dokodemo-door's); the server ignores it.
    return CodecStream(ws, MuxCool("127.0.0.1", server_port))


# -- v2ray-plugin's mux.cool ------------------------------------------------------------------

MUX_NEW, MUX_KEEP, MUX_END, MUX_KEEPALIVE = 1, 2, 3, 4
MUX_OPTION_DATA, MUX_OPTION_ERROR = 0x01, 0x02
MUX_TCP = 0x01
MUX_SESSION = 1  # one session per websocket: a stream of its own for every connection
MUX_CHUNK = 1 << 14  # payload per frame (the frame's length field allows 0xFFFF)


def _mux_target(host: str, port: int) -> bytes:
    """A New frame's target: network, port, then V2Ray-style address type (1 IPv4, 2 domain, 3 IPv6)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        name = host.encode("idna") if not host.isascii() else host.encode()
        addr = bytes((2, len(name))) + name
    else:
        addr = bytes((1 if ip.version == 4 else 3,)) + ip.packed
    return struct.pack("!BH", MUX_TCP, port) + addr


class MuxCool:
    """mux.cool (V2Ray's multiplexing), one TCP session per connection, as v2ray-plugin's client speaks it.

    v2ray-plugin's server, unless started with `mux=0`, points its dokodemo-door inbound at
    `v1.mux.cool`: every websocket must carry mux.cool frames, never the node's bytes bare.
    A frame is a 2-byte metadata length, the metadata (session id, status, option, and for
    New the target), then with option 1 a 2-byte data length and the data. The target of New
    does not matter here: the server's freedom outbound sends every session to its ss-server.
    """

    error: DialError | None = None
    watch_interval: float | None = None

    def __init__(self, host: str, port: int) -> None:
        self.target = _mux_target(host, port)
        self.opened = False  # New sent
        self.closed = False  # End sent
        self.server_ended = False  # End received
        self._buf = bytearray()

    def _frame(self, status: int, data: bytes | memoryview = b"", extra: bytes = b"") -> bytes:
        option = MUX_OPTION_DATA if data else 0
        meta = struct.pack("!HBB", MUX_SESSION, status, option) + extra
        head = struct.pack("!H", len(meta)) + meta
        return head + struct.pack("!H", len(data)) + bytes(data) if data else head

    def encode(self, data: bytes | bytearray | memoryview) -> bytes:
        if not data:
            return b""
        if self.closed:
            raise DialError("v2ray-plugin mux: write after the session's end")
        view = memoryview(data)
        out = []
        for i in range(0, len(view), MUX_CHUNK):
            if not self.opened:
                self.opened = True
                out.append(self._frame(MUX_NEW, view[i:i + MUX_CHUNK], self.target))
            else:
                out.append(self._frame(MUX_KEEP, view[i:i + MUX_CHUNK]))
        return b"".join(out)

    def encode_eof(self) -> tuple[bytes, bool]:
        """End: the server ends its session (and, ss-server being libev's, both directions of it)."""
        if self.closed:
            return b"", False
        self.closed = True
        start = b"" if self.opened else self._frame(MUX_NEW, b"", self.target)
        self.opened = True
        return start + self._frame(MUX_END), False

    def decode(self, data: bytes) -> bytes:
        self._buf += data
        buf, pos, out = self._buf, 0, []
        while not self.server_ended:
            if len(buf) - pos < 2:
                break
            meta_len = int.from_bytes(buf[pos:pos + 2], "big")
            if meta_len < 4:
                raise DialError(f"v2ray-plugin mux: a frame's metadata of {meta_len} bytes (not mux.cool)")
            end = pos + 2 + meta_len
            if len(buf) < end:
                break
            session, status, option = struct.unpack_from("!HBB", buf, pos + 2)
            if status not in (MUX_NEW, MUX_KEEP, MUX_END, MUX_KEEPALIVE):
                raise DialError(f"v2ray-plugin mux: unknown frame status {status} (not mux.cool)")
            data_end = end
            if option & MUX_OPTION_DATA:
                if len(buf) < end + 2:
                    break
                data_end = end + 2 + int.from_bytes(buf[end:end + 2], "big")
                if len(buf) < data_end:
                    break
                if session == MUX_SESSION and status in (MUX_NEW, MUX_KEEP):
                    out.append(bytes(buf[end + 2:data_end]))
            pos = data_end
            if session == MUX_SESSION and status == MUX_END:
                self.server_ended = True
                if option & MUX_OPTION_ERROR and not out:
                    raise DialError("v2ray-plugin mux: the server ended the session with an error "
                                    "(its ss-server could not be reached?)")
        del buf[:pos]
        return b"".join(out)

    def decode_eof(self) -> None:
        if self._buf and not self.server_ended:
            raise DialError(f"v2ray-plugin mux: the connection ended inside a frame ({len(self._buf)} bytes of it)")

    def reply(self) -> bytes:
        return b""

    def overdue(self, idle: float) -> str | None:
        return None
