"""Subscriptions: lists of share links fetched from a URL, kept, and refreshed.

What a subscription URL may serve (the formats dae reads, checked in this order):
  SIP008 JSON   {"version": 1, "servers": [{"server", "server_port", "password", "method", "remarks", ...}]},
                each server turned into its SIP002 ss:// link
  links         share links, one a line (blank lines and `#` comments skipped)
  base64        the same list base64-encoded: standard or URL-safe alphabet, padding optional,
                line breaks and other whitespace anywhere
  clash YAML    a clash / mihomo config or provider file (a top-level `proxies:` list, a
                format dae refuses and many providers serve): each proxy turned into the
                share link daetui parses (clash_link), so one parser decides what a node means

URLs (dae's syntax; in daetui's config the tag is the key, `[subscription] TAG = "URL"`):
  http://..., https://...          fetched with daetui's SO_MARK; a name is resolved by
                                   the caller's resolver (the daemon's: global.fallback_resolver)
  http-file://, https-file://      dae's "keep a copy" forms: the same as http(s), since daetui
                                   always keeps one
  file:///abs/path                 a file on the router
  file://rel/path                  dae's form: relative to the config's directory, never outside it
  tag:URL                          dae's `tag:` prefix on an untagged line (see split_tag)
A file's first line is skipped when it starts with `@` (dae's "instruction line").

Every fetch that gives at least one usable node is saved (atomically) as
`<state dir>/<tag>.sub`: a first line `@daetui-saved ...` (the URL's hash and the
fetch time), then the body as served -- so the copy is itself a file dae can
read. When a fetch fails, or serves nothing usable, the saved copy is used and
the result says so, with the fetch's error and the copy's age; a bad fetch never
overwrites a good copy. Broken links are reported ("line N: reason") and
skipped; the rest of the list is used.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

from daetui.net.address import is_address
from daetui.net.sockopts import SO_MARK
from daetui.outbound import _share
from daetui.outbound.links import LinkError, parse_link, refusal, scheme_of
from daetui.redact import remember_link

log = logging.getLogger("daetui.outbound")

MAX_BYTES = 4 * 1024 * 1024       # a subscription of thousands of nodes is well under 1 MiB
FETCH_TIMEOUT = 30.0              # the whole fetch: resolving, connecting, redirects, body
MAX_REDIRECTS = 5
DEFAULT_INTERVAL = 12 * 3600.0
DEFAULT_RETRY = 30.0              # first retry after a failed fetch; doubles up to the interval
MAX_YAML_NODES = 500_000         # YAML nodes with aliases expanded: a clash file of 5000 proxies is ~150k
MAX_LOGGED_ERRORS = 20            # per fetch, so that a list of 5000 broken lines does not flood the log
SAVED_MAGIC = "@daetui-saved"

SCHEMES = ("http", "https", "http-file", "https-file", "file")
Resolve = Callable[[str], Awaitable[str]]          # hostname -> address


def _user_agent() -> str:
    # Providers pick the format by User-Agent: looking like v2rayN gets the base64 list, not clash YAML.
    try:
        from importlib.metadata import version

        ours = version("daetui")
    except Exception:  # not installed as a package (run from a checkout)
        ours = "dev"
    return f"daetui/{ours} (like v2rayN/1.0 WebRequestHelper)"


USER_AGENT = _user_agent()


class FetchError(Exception):
    """A fetch that gave no usable list, and why."""


@dataclass
class SubscriptionNodes:
    """What one subscription text holds: its nodes (unique names) and the lines that could not be used."""

    nodes: list[tuple[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    format: str = ""        # "sip008", "clash", "base64", "links", or "" when none was recognised


@dataclass(frozen=True)
class SubscriptionResult:
    """One refresh of a subscription, as the console and the log show it.

    `url` has its path and query hidden: they usually carry the account's token.
    `fetched_at` is when the nodes in use were fetched (the saved copy's time
    when `from_saved_copy`); None when there are none. Times are Unix times.
    """

    tag: str
    url: str
    attempted_at: float
    fetched_at: float | None
    from_saved_copy: bool
    node_count: int
    errors: tuple[str, ...] = ()          # broken lines, skipped: "line N: reason"
    fetch_error: str | None = None        # why this fetch failed; None when it worked
    format: str = ""
    notes: tuple[str, ...] = ()           # worth knowing, not wrong (a file others can read, ...)
    next_at: float | None = None          # the next refresh, when run() schedules one
    nodes: tuple[tuple[str, Any], ...] = field(default=(), repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """The fetch worked (its nodes are fresh)."""
        return self.fetch_error is None

    @property
    def saved_age(self) -> float | None:
        """How old the saved copy in use is, in seconds; None when it is not in use."""
        if not self.from_saved_copy or self.fetched_at is None:
            return None
        return max(0.0, self.attempted_at - self.fetched_at)

    def summary(self) -> str:
        """One line for the log and the console."""
        if self.fetch_error is None:
            text = f"subscription {self.tag}: {self.node_count} nodes ({self.format})"
        elif self.from_saved_copy:
            text = (f"subscription {self.tag}: fetch failed ({self.fetch_error}); using the saved copy of "
                    f"{_age(self.saved_age or 0.0)} ago: {self.node_count} nodes")
        else:
            text = f"subscription {self.tag}: fetch failed ({self.fetch_error}); no saved copy: no nodes"
        if self.errors:
            text += f"; {len(self.errors)} broken {'entry' if len(self.errors) == 1 else 'entries'} skipped"
        return text


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# -- the URL --------------------------------------------------------------------------------------

def split_tag(text: str) -> tuple[str, str]:
    """dae's `tag:URL` form: ("tag", "URL"); ("", text) when the first colon starts `://`."""
    colon = text.find(":")
    if colon == -1 or text.startswith("://", colon):
        return "", text
    return text[:colon], text[colon + 1:]


def redact_url(url: str) -> str:
    """The URL without what usually holds the account's token (user, path, query)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("://", 1)[0] + "://…"
    if parts.scheme == "file":
        return url  # a path on the router: no secret in it
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if _port_or_none(parts) else ""
    hidden = "/…" if parts.path not in ("", "/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{hidden}"


def _port_or_none(parts: Any) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None


# -- parsing ----------------------------------------------------------------------------------------

_B64_TEXT = re.compile(r"^[A-Za-z0-9+/\-_=\s]+$")
_CLASH = re.compile(r"^(proxies|proxy-groups|proxy-providers)\s*:", re.MULTILINE)


def parse_subscription(text: str | bytes, subtag: str, *, taken: Collection[str] = ()) -> SubscriptionNodes:
    """The nodes a subscription's text holds, in order, with unique names; never raises.

    A name met twice (or one in `taken`, such as the names of other
    subscriptions' nodes and of [node]) gets " (2)", " (3)", ... A link that
    cannot be used is reported as "line N: reason" (N counts the lines of the
    list, after base64 decoding), "server N: reason" for SIP008 or
    "proxy N (name): reason" for clash YAML, and skipped.
    A text that is no list at all gives one error and no nodes.
    """
    out = SubscriptionNodes()
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            out.errors.append(f"not UTF-8 text (byte {e.start}); read with the bad bytes replaced")
            text = text.decode("utf-8-sig", errors="replace")
    text = text.lstrip("\ufeff")
    stripped = text.strip()
    names = _Names(taken)
    if not stripped:
        out.errors.append("empty subscription")
        return out
    if stripped.startswith("{") or stripped.startswith("["):
        _parse_sip008(stripped, subtag, names, out)
        return out
    if _CLASH.search(stripped):
        _parse_clash(stripped, subtag, names, out)
        return out
    if "://" in stripped:
        out.format = "links"
        _parse_lines(stripped, subtag, names, out)
        return out
    decoded = _b64decode(stripped, out)
    if decoded is None:
        return out
    out.format = "base64"
    _parse_lines(decoded, subtag, names, out)
    return out


class _Names:
    """Hands out unique node names."""

    def __init__(self, taken: Collection[str]) -> None:
        self.used = set(taken)

    def unique(self, name: str) -> str:
        if name not in self.used:
            self.used.add(name)
            return name
        n = 2
        while f"{name} ({n})" in self.used:
            n += 1
        self.used.add(f"{name} ({n})")
        return f"{name} ({n})"


def _b64decode(text: str, out: SubscriptionNodes) -> str | None:
    """The base64 list decoded to text; None (with the error in `out`) when it is not base64 of text."""
    compact = "".join(text.split())
    if not _B64_TEXT.match(text):
        bad = next((c for c in compact if not (c.isascii() and (c.isalnum() or c in "+/-_="))), "?")
        out.errors.append(f"not a subscription: neither SIP008 JSON, a list of links, nor base64 "
                          f"({bad!r} is not a base64 character)")
        return None
    # Base64 is wrapped at line ends, never cut by spaces inside a line: words with spaces between are prose.
    prose = re.search(r"[^\s=][ \t]+[^\s=]", text) is not None
    if prose:
        out.errors.append(f"not a subscription: neither SIP008 JSON, a list of links, nor base64 "
                          f"({_clip(text.strip())!r})")
        return None
    body = compact.rstrip("=")
    if len(body) % 4 == 1:
        out.errors.append(f"bad base64: {len(body)} characters cannot be base64 (a cut download?)")
        return None
    padded = body + "=" * (-len(body) % 4)
    # Both alphabets are met in the wild; one text may even mix them (+ and _), so map to one first.
    unified = padded.replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(unified, validate=True)
    except (binascii.Error, ValueError) as e:
        out.errors.append(f"bad base64: {e}")
        return None
    try:
        decoded = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        out.errors.append("bad base64: it decodes to binary data, not a list of links")
        return None
    if "://" not in decoded:
        out.errors.append("base64 that holds no links")
        return None
    return decoded


def _parse_lines(text: str, subtag: str, names: _Names, out: SubscriptionNodes) -> None:
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "://" not in line:
            out.errors.append(f"line {number}: not a share link ({_clip(line)!r})")
            continue
        _add(line, f"line {number}", subtag, names, out)


def _parse_sip008(text: str, subtag: str, names: _Names, out: SubscriptionNodes) -> None:
    try:
        doc = json.loads(text)
    except ValueError as e:
        out.errors.append(f"bad JSON: {e}")
        return
    if not isinstance(doc, dict) or not isinstance(doc.get("servers"), list):
        out.errors.append('JSON that is not SIP008 (expected {"version": 1, "servers": [...]})')
        return
    if doc.get("version") != 1:
        out.errors.append(f"SIP008 version {doc.get('version')!r}: only version 1 is known")
        return
    out.format = "sip008"
    for number, server in enumerate(doc["servers"], 1):
        where = f"server {number}"
        try:
            link, name = _sip008_link(server)
        except ValueError as e:
            out.errors.append(f"{where}: {e}")
            continue
        _add(link, where, subtag, names, out, name)


def _sip008_link(server: Any) -> tuple[str, str]:
    """A SIP008 server as its SIP002 link (ss://base64url(method:password)@host:port/?plugin=...#remarks)."""
    if not isinstance(server, dict):
        raise ValueError("not an object")
    missing = [k for k in ("server", "server_port", "password", "method") if server.get(k) in (None, "")]
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    host, port = str(server["server"]).strip(), server["server_port"]
    if isinstance(port, str) and port.strip().isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"bad server_port {server['server_port']!r}")
    userinfo = base64.urlsafe_b64encode(f"{server['method']}:{server['password']}".encode()).decode().rstrip("=")
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    query = ""
    if server.get("plugin"):
        plugin = str(server["plugin"]) + (f";{server['plugin_opts']}" if server.get("plugin_opts") else "")
        query = "/?plugin=" + quote(plugin, safe="")
    remarks = str(server.get("remarks") or "").strip()
    return f"ss://{userinfo}@{netloc}{query}#{quote(remarks, safe='')}", remarks


# -- clash / mihomo YAML ----------------------------------------------------------------------------
# The proxy fields are mihomo's (wiki.metacubex.one/config/proxies/: ss, vmess, vless, trojan, socks,
# http, transport, tls); clash's older spellings (ws-path, ws-headers) are read too.

def _parse_clash(text: str, subtag: str, names: _Names, out: SubscriptionNodes) -> None:
    try:
        doc = load_yaml(text)
    except ValueError as e:
        out.errors.append(f"bad clash YAML: {e}")
        return
    proxies = doc.get("proxies") if isinstance(doc, dict) else None
    if not isinstance(proxies, list):
        has_providers = isinstance(doc, dict) and doc.get("proxy-providers")
        out.errors.append("clash YAML without a `proxies:` list" +
                          (" (its proxy-providers are URLs of their own: subscribe to those)" if has_providers else ""))
        return
    out.format = "clash"
    for number, proxy in enumerate(proxies, 1):
        label = _text(proxy.get("name")) if isinstance(proxy, dict) else ""
        where = f"proxy {number} ({label})" if label else f"proxy {number}"
        try:
            link, name = clash_link(proxy)
        except ValueError as e:
            out.errors.append(f"{where}: {e}")
            continue
        _add(link, where, subtag, names, out, name)


def load_yaml(text: str) -> Any:
    """A YAML document as Python data (YAML's safe subset); ValueError says why not.

    The text is bounded by the fetch; what is bounded here is what aliases
    can make of it: a billion-laughs document of a few lines is refused by
    counting its nodes as if every alias were expanded, before building any
    of it. Nesting too deep for the parser is refused too.
    """
    import yaml

    # The pure-Python loader: its recursion is checked (RecursionError), where libyaml's composer would crash.
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_size(node)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        where = f" (line {e.problem_mark.line + 1})" if e.problem_mark is not None else ""
        raise ValueError(f"{e.problem or e.context}{where}") from None
    except yaml.YAMLError as e:
        raise ValueError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    finally:
        loader.dispose()


def _check_yaml_size(root: Any) -> None:
    import yaml

    # An alias is the node it names, met again: counting visits counts the expanded document, and stopping
    # at the bound keeps this loop (and a recursive alias's endless one) short.
    stack, seen = [root], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_YAML_NODES:
            raise ValueError(f"more than {MAX_YAML_NODES} YAML nodes once its aliases are expanded")
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.append(key)
                stack.append(value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


# clash `type:` values that name protocols daetui has no client for, as links.UNSUPPORTED spells them.
_CLASH_NO_CLIENT = {"ssr": "ssr", "hysteria": "hysteria",
                    "wireguard": "wireguard", "snell": "snell", "ssh": "ssh", "mieru": "mieru",
                    "juicity": "juicity"}
_CLASH_BUILTIN = ("direct", "reject", "reject-drop", "pass", "dns", "compatible")


def clash_link(proxy: Any) -> tuple[str, str]:
    """One entry of a clash `proxies:` list as (share link, name); ValueError (or LinkError) says why not.

    Only what the link can say is taken; a field that would change what the
    node does and that no link can say (dialer-proxy, ech-opts, trojan-go's
    ss-opts, an http proxy's own headers) refuses the proxy rather than
    being dropped. Fields that only tune the client (udp, tfo, smux,
    ip-version, interface-name, routing-mark, ...) are left out.
    """
    if not isinstance(proxy, dict):
        raise ValueError("not a mapping")
    name = _text(proxy.get("name"))
    kind = _text(proxy.get("type")).lower()
    if not kind:
        raise ValueError("no type")
    if kind in _CLASH_NO_CLIENT:
        raise LinkError(refusal(_CLASH_NO_CLIENT[kind]) or f"type {kind!r} is not supported")
    if kind in _CLASH_BUILTIN:
        raise ValueError(f"type {kind!r} is clash's built-in outbound, not a proxy server")
    convert = _CLASH_TYPES.get(kind)
    if convert is None:
        raise ValueError(f"unknown proxy type {kind!r}")
    if _text(proxy.get("dialer-proxy")):
        raise ValueError(f"dialer-proxy {_text(proxy['dialer-proxy'])!r} (a chain through another proxy) "
                         "is not supported in a subscription")
    ech = proxy.get("ech-opts")
    if isinstance(ech, dict) and _flag(ech.get("enable")):
        raise ValueError("ech-opts (Encrypted Client Hello) is not supported")
    server = _text(proxy.get("server"))
    if not server:
        raise ValueError("no server")
    port = proxy.get("port")
    if isinstance(port, str) and port.strip().isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"bad port {proxy.get('port')!r}")
    host = server.strip("[]")
    return convert(proxy, _share.netloc(host, port), name), name


def _text(value: Any) -> str:
    """A YAML scalar as text (YAML reads `port: 443`, `name: 1` or `tls: true` as numbers and booleans)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


def _flag(value: Any) -> bool:
    return value is True or _text(value).lower() in ("true", "1", "yes")


def _opts(proxy: dict[str, Any], key: str) -> dict[str, Any]:
    value = proxy.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{key} is not a mapping")
    return value


def _header(headers: Any, wanted: str) -> list[str]:
    """A header's values from a clash headers mapping (any case; ws-opts gives one, http-opts a list)."""
    if not isinstance(headers, dict):
        return []
    for key, value in headers.items():
        if str(key).lower() == wanted:
            return _texts(value)
    return []


def _texts(value: Any) -> list[str]:
    """A clash field that is a string or a list of them."""
    items = value if isinstance(value, list) else [value]
    return [_text(v) for v in items if _text(v)]


def _transport(proxy: dict[str, Any]) -> dict[str, str]:
    """`network` and its opts as the share-link parameters: type, host, path, serviceName, headerType."""
    network = _text(proxy.get("network")).lower() or "tcp"
    if network == "ws":
        opts = _opts(proxy, "ws-opts")
        path = _text(opts.get("path") or proxy.get("ws-path"))
        host = ",".join(_header(opts.get("headers") or proxy.get("ws-headers"), "host"))
        # mihomo's ws-opts.v2ray-http-upgrade is another transport (HTTPUpgrade), not WebSocket.
        kind = "httpupgrade" if _flag(opts.get("v2ray-http-upgrade")) else "ws"
        early = _text(opts.get("max-early-data"))
        if kind == "ws" and early.isdigit() and int(early) > 0:
            # Early data is written in the path in links, as Xray does: ?ed=N[&eh=header].
            header = _text(opts.get("early-data-header-name"))
            path += ("&" if "?" in path else "?") + f"ed={early}" + (f"&eh={header}" if header else "")
        return {"type": kind, "host": host, "path": path}
    if network == "h2":
        opts = _opts(proxy, "h2-opts")
        return {"type": "h2", "host": ",".join(_texts(opts.get("host"))), "path": _text(opts.get("path"))}
    if network == "http":  # HTTP/1.1 header obfuscation over TCP
        opts = _opts(proxy, "http-opts")
        return {"type": "tcp", "headerType": "http", "host": ",".join(_header(opts.get("headers"), "host")),
                "path": ",".join(_texts(opts.get("path")))}
    if network == "grpc":
        opts = _opts(proxy, "grpc-opts")
        return {"type": "grpc", "serviceName": _text(opts.get("grpc-service-name"))}
    return {"type": network}  # tcp, or one no parser here knows (xhttp, kcp, quic): the parser says so


def _tls_params(proxy: dict[str, Any], sni_key: str) -> list[tuple[str, str]]:
    params = [("sni", _text(proxy.get(sni_key))),
              ("alpn", ",".join(_texts(proxy.get("alpn")))),
              ("allowInsecure", "1" if _flag(proxy.get("skip-cert-verify")) else ""),
              ("fp", _text(proxy.get("client-fingerprint")))]
    reality = _opts(proxy, "reality-opts")
    if reality:
        params += [("pbk", _text(reality.get("public-key"))), ("sid", _text(reality.get("short-id")))]
    return params


def _query(params: list[tuple[str, str]]) -> str:
    """`?k=v&...` of the parameters that are set, each value percent-encoded."""
    return _share.query_text(params)


def _clash_ss(proxy: dict[str, Any], netloc: str, name: str) -> str:
    method, password = _text(proxy.get("cipher")), _text(proxy.get("password"))
    if not method or not password:
        raise ValueError("no cipher or password")
    if method.lower().startswith("2022-"):
        userinfo = f"{quote(method, safe='')}:{quote(password, safe='')}"  # SIP022: plain, percent-encoded
    else:
        userinfo = base64.urlsafe_b64encode(f"{method}:{password}".encode()).decode().rstrip("=")
    plugin = _clash_plugin(proxy)
    query = "/?plugin=" + quote(plugin, safe="") if plugin else ""
    return f"ss://{userinfo}@{netloc}{query}{_share.fragment(name)}"


def _sip003_escape(text: str) -> str:
    # SIP003 options are `k=v;k=v`: a backslash escapes '\', '=' and ';' inside a key or value.
    return text.replace("\\", "\\\\").replace("=", "\\=").replace(";", "\\;")


def _clash_plugin(proxy: dict[str, Any]) -> str:
    """A clash ss plugin and its plugin-opts as SIP002's `name;opts` (before URL-encoding)."""
    plugin = _text(proxy.get("plugin"))
    if not plugin:
        return ""
    opts = _opts(proxy, "plugin-opts")
    parts: list[str]
    if plugin == "obfs":  # simple-obfs: mihomo's mode/host are obfs-local's obfs/obfs-host
        parts = ["obfs-local", f"obfs={_sip003_escape(_text(opts.get('mode')) or 'http')}"]
        if _text(opts.get("host")):
            parts.append(f"obfs-host={_sip003_escape(_text(opts['host']))}")
    elif plugin == "v2ray-plugin":
        parts = ["v2ray-plugin", f"mode={_sip003_escape(_text(opts.get('mode')) or 'websocket')}"]
        if _flag(opts.get("tls")):
            parts.append("tls")
        for key in ("host", "path"):
            if _text(opts.get(key)):
                parts.append(f"{key}={_sip003_escape(_text(opts[key]))}")
    elif plugin == "shadow-tls":
        # mihomo's default version is 2 (which the ss:// parser refuses, saying so), not a link's 3: written out.
        parts = ["shadow-tls"] + [f"{k}={_sip003_escape(_text(opts[k]))}" for k in ("host", "password")
                                  if _text(opts.get(k))]
        parts.append(f"version={_sip003_escape(_text(opts.get('version')) or '2')}")
        if _flag(opts.get("skip-cert-verify")):
            parts.append("skip-cert-verify=true")
    else:
        # restls, kcptun, gost-plugin, ...: passed on by name and options, for the ss:// parser
        # to run or refuse.
        parts = [plugin] + [f"{_sip003_escape(str(k))}={_sip003_escape(_text(v))}" for k, v in opts.items()
                            if not isinstance(v, (dict, list))]
    return ";".join(parts)


def _clash_vmess(proxy: dict[str, Any], netloc: str, name: str) -> str:
    host, _, port = netloc.rpartition(":")
    transport = _transport(proxy)
    net = transport.get("type", "tcp")
    tls = "reality" if _opts(proxy, "reality-opts") else ("tls" if _flag(proxy.get("tls")) else "")
    obj = {"v": "2", "ps": name, "add": host.strip("[]"), "port": port, "id": _text(proxy.get("uuid")),
           "aid": _text(proxy.get("alterId")) or "0", "scy": _text(proxy.get("cipher")) or "auto",
           "net": net, "type": transport.get("headerType", "none"), "host": transport.get("host", ""),
           # v2rayN's JSON carries a gRPC service name in `path`.
           "path": transport.get("serviceName", transport.get("path", "")),
           "tls": tls, "sni": _text(proxy.get("servername")), "alpn": ",".join(_texts(proxy.get("alpn"))),
           "fp": _text(proxy.get("client-fingerprint"))}
    if _flag(proxy.get("skip-cert-verify")):
        obj["allowInsecure"] = "1"
    return "vmess://" + base64.b64encode(json.dumps(obj, ensure_ascii=False).encode()).decode()


def _link_transport(proxy: dict[str, Any]) -> list[tuple[str, str]]:
    transport = _transport(proxy)
    kind = transport.pop("type")
    # The share-link standard (XTLS/Xray-core discussion 716) calls the HTTP/2 transport `type=http`.
    return [("type", "http" if kind == "h2" else kind), *transport.items()]


def _clash_vless(proxy: dict[str, Any], netloc: str, name: str) -> str:
    uuid = _text(proxy.get("uuid"))
    security = "reality" if _opts(proxy, "reality-opts") else ("tls" if _flag(proxy.get("tls")) else "none")
    params = [("encryption", _text(proxy.get("encryption")) or "none"), ("security", security),
              *_link_transport(proxy), *_tls_params(proxy, "servername"), ("flow", _text(proxy.get("flow")))]
    return f"vless://{quote(uuid, safe='')}@{netloc}{_query(params)}{_share.fragment(name)}"


def _clash_trojan(proxy: dict[str, Any], netloc: str, name: str) -> str:
    password = _text(proxy.get("password"))
    if _flag(_opts(proxy, "ss-opts").get("enabled")):
        raise LinkError(refusal("trojan-go") or "trojan-go is not supported")
    security = "reality" if _opts(proxy, "reality-opts") else "tls"  # trojan is always over TLS
    params = [("security", security), *_link_transport(proxy), *_tls_params(proxy, "sni")]
    return f"trojan://{quote(password, safe='')}@{netloc}{_query(params)}{_share.fragment(name)}"


def _userinfo(proxy: dict[str, Any]) -> str:
    user, password = _text(proxy.get("username")), _text(proxy.get("password"))
    return f"{quote(user, safe='')}:{quote(password, safe='')}@" if user or password else ""


def _clash_socks5(proxy: dict[str, Any], netloc: str, name: str) -> str:
    # socks5 over TLS has no link form here: its parameters make the socks5:// parser refuse it, with the reason.
    params = [("tls", "1" if _flag(proxy.get("tls")) else "")]
    return f"socks5://{_userinfo(proxy)}{netloc}{_query(params)}{_share.fragment(name)}"


def _clash_http(proxy: dict[str, Any], netloc: str, name: str) -> str:
    if proxy.get("headers"):
        raise ValueError("headers (extra request headers to the proxy) are not supported")
    tls = _flag(proxy.get("tls"))
    params = [("sni", _text(proxy.get("sni"))),
              ("allow_insecure", "1" if _flag(proxy.get("skip-cert-verify")) else "")] if tls else []
    return f"{'https' if tls else 'http'}://{_userinfo(proxy)}{netloc}{_query(params)}{_share.fragment(name)}"


def _clash_hysteria2(proxy: dict[str, Any], netloc: str, name: str) -> str:
    # up/down only tune the client's congestion control (Brutal), which daetui leaves to QUIC's own, and
    # hop-interval the port hopping's pace: left out.
    if _text(proxy.get("ca")) or _text(proxy.get("ca-str")):
        raise ValueError("ca / ca-str (a CA of the node's own) is not supported: use daetui's ca_file")
    alpn = _texts(proxy.get("alpn"))
    if alpn and alpn != ["h3"]:
        raise ValueError(f"alpn {','.join(alpn)} is not supported (hysteria2 runs over h3)")
    params = [("obfs", _text(proxy.get("obfs"))), ("obfs-password", _text(proxy.get("obfs-password"))),
              ("sni", _text(proxy.get("sni"))), ("insecure", "1" if _flag(proxy.get("skip-cert-verify")) else ""),
              ("pinSHA256", _text(proxy.get("fingerprint"))), ("mport", _text(proxy.get("ports")).replace("/", ","))]
    password = quote(_text(proxy.get("password")), safe=":")
    return f"hysteria2://{password}@{netloc}/{_query(params)}{_share.fragment(name)}"


def _clash_tuic(proxy: dict[str, Any], netloc: str, name: str) -> str:
    # heartbeat-interval, request-timeout, reduce-rtt, fast-open, max-open-streams and
    # max-udp-relay-packet-size only tune the client: left out.
    uid, password = _text(proxy.get("uuid")), _text(proxy.get("password"))
    if _text(proxy.get("token")) and not uid:
        raise ValueError("token (TUIC v4) is not supported: TUIC v5 only (uuid and password)")
    if not uid or not password:
        raise ValueError("no uuid or password")
    if _text(proxy.get("ip")):
        raise ValueError(f"ip {_text(proxy['ip'])!r} (an address dialed instead of the server's) is not supported")
    params = [("sni", _text(proxy.get("sni"))), ("alpn", ",".join(_texts(proxy.get("alpn")))),
              ("congestion_control", _text(proxy.get("congestion-controller"))),
              ("udp_relay_mode", _text(proxy.get("udp-relay-mode"))),
              ("allow_insecure", "1" if _flag(proxy.get("skip-cert-verify")) else ""),
              ("disable_sni", "1" if _flag(proxy.get("disable-sni")) else "")]
    return f"tuic://{quote(uid, safe='')}:{quote(password, safe='')}@{netloc}{_query(params)}{_share.fragment(name)}"


def _clash_anytls(proxy: dict[str, Any], netloc: str, name: str) -> str:
    # client-fingerprint (uTLS imitation), udp and idle-session-check-interval only tune the client: left out.
    if _text(proxy.get("fingerprint")):
        raise ValueError("fingerprint (a pinned certificate) is not supported for anytls: use daetui's ca_file")
    params = [("sni", _text(proxy.get("sni"))), ("insecure", "1" if _flag(proxy.get("skip-cert-verify")) else ""),
              ("alpn", ",".join(_texts(proxy.get("alpn")))),
              ("idleSessionTimeout", _text(proxy.get("idle-session-timeout"))),
              ("minIdleSession", _text(proxy.get("min-idle-session")))]
    return f"anytls://{quote(_text(proxy.get('password')), safe='')}@{netloc}/{_query(params)}{_share.fragment(name)}"


_CLASH_TYPES = {"ss": _clash_ss, "vmess": _clash_vmess, "vless": _clash_vless, "trojan": _clash_trojan,
                "socks5": _clash_socks5, "http": _clash_http, "hysteria2": _clash_hysteria2,
                "tuic": _clash_tuic, "anytls": _clash_anytls}


def _add(link: str, where: str, subtag: str, names: _Names, out: SubscriptionNodes, name: str = "") -> None:
    remember_link(link)  # its secrets masked in every log line and error from now on
    try:
        node = parse_link(link, name)
    except ValueError as e:  # LinkError and the modules' own ValueErrors: the link's fault
        out.errors.append(f"{where}: {e}")
        return
    except Exception as e:
        # A protocol module's bug on odd input must cost this one link, not the whole subscription.
        log.debug("subscription %s: %s: %s link", subtag, where, scheme_of(link), exc_info=True)
        out.errors.append(f"{where}: {scheme_of(link)}:// link not understood ({type(e).__name__}: {e})")
        return
    wanted = (getattr(node, "name", "") or "").strip() or f"{subtag} {where}"
    unique = names.unique(wanted)
    if unique != getattr(node, "name", None):
        node = _renamed(node, link, unique)
    out.nodes.append((unique, node))


def _renamed(node: Any, link: str, name: str) -> Any:
    if dataclasses.is_dataclass(node) and any(f.name == "name" for f in dataclasses.fields(node)):
        return dataclasses.replace(node, name=name)
    return parse_link(link, name)


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[:n] + "…"


# -- the saved copy ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SavedCopy:
    """A subscription's body as last fetched with usable nodes."""

    body: bytes
    fetched_at: float
    url_hash: str


def _url_hash(url: str) -> str:
    # A hash, not the URL: the URL's token need not be written down one more time.
    return hashlib.sha256(url.encode()).hexdigest()[:32]


def saved_path(state_dir: str | Path, tag: str) -> Path:
    """Where a subscription's saved copy lives (`quote` keeps any tag one file name)."""
    return Path(state_dir) / f"{quote(tag, safe='')}.sub"


def write_saved(path: Path, url: str, body: bytes, fetched_at: float) -> None:
    """Save atomically: a temporary file beside it, fsync, rename, fsync of the directory."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    head = f"{SAVED_MAGIC} url-sha256={_url_hash(url)} fetched_at={fetched_at:.3f}\n".encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # 0600: the links hold the nodes' passwords.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)  # the rename itself survives a power cut
    finally:
        os.close(dirfd)


def read_saved(path: Path, max_bytes: int = MAX_BYTES) -> SavedCopy | None:
    """The saved copy at `path`; None when there is none. OSError/ValueError when it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 4096)
    except FileNotFoundError:
        return None
    head, nl, body = data.partition(b"\n")
    fields = dict(p.split("=", 1) for p in head.decode("ascii", "replace").split()[1:] if "=" in p)
    if not head.startswith(SAVED_MAGIC.encode()) or not nl or "fetched_at" not in fields:
        raise ValueError("not a saved copy made by daetui")
    return SavedCopy(body=body, fetched_at=float(fields["fetched_at"]), url_hash=fields.get("url-sha256", ""))


# -- fetching ---------------------------------------------------------------------------------------

class Subscription:
    """One `[subscription]` entry: fetches its list, keeps a saved copy, refreshes it on an interval.

    `state_dir` holds the saved copy. `mark` is put on the fetch's socket
    (global.so_mark_from_dae) so daetui's own traffic is not caught again.
    Names are resolved by `resolve` (hostname -> address) when given (the control
    plane's asks global.fallback_resolver), else by the system. `config_dir` is
    where dae's relative `file://` URLs point.
    `taken`: node names in use elsewhere, which this subscription's nodes must
    not take (see parse_subscription).
    """

    def __init__(self, tag: str, url: str, state_dir: str | Path, *, mark: int = 0, resolve: Resolve | None = None,
                 verify: bool | ssl.SSLContext = True,
                 config_dir: str | Path | None = None, interval: float = DEFAULT_INTERVAL,
                 retry: float = DEFAULT_RETRY, timeout: float = FETCH_TIMEOUT, max_bytes: int = MAX_BYTES,
                 taken: Collection[str] = ()) -> None:
        prefix, rest = split_tag(url)
        if prefix:  # dae's `tag:URL`; the config's key wins when both are there
            url = rest
            tag = tag or prefix
        if not tag:
            raise ValueError(f"subscription {redact_url(url)}: no tag")
        scheme = scheme_of(url)
        if scheme not in SCHEMES:
            raise ValueError(f"subscription {tag}: expected a {'/'.join(s + '://' for s in SCHEMES)} URL")
        self.tag = tag
        self.url = url
        self.state_dir = Path(state_dir)
        self.mark = mark
        self.verify = verify
        self.config_dir = Path(config_dir) if config_dir is not None else None
        self.interval = interval
        self.retry = retry
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.taken: Collection[str] = taken
        self._resolve = resolve
        self.result: SubscriptionResult | None = None
        self._good: tuple[float, bytes] | None = None     # the last good body, in case the copy cannot be read
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    @property
    def saved_path(self) -> Path:
        """This subscription's saved copy."""
        return saved_path(self.state_dir, self.tag)

    @property
    def keeps_copy(self) -> bool:
        """Fetched over the network (a file:// subscription is its own copy)."""
        return scheme_of(self.url) != "file"

    # -- one fetch ------------------------------------------------------------------------------
    async def fetch(self) -> SubscriptionResult:
        """Fetch and parse the list now; on failure, fall back to the saved copy. Never raises (but cancels)."""
        attempted = time.time()
        notes: list[str] = []
        try:
            async with asyncio.timeout(self.timeout):
                body = await self._download(notes)
            # In a thread: a large clash YAML takes the pure-Python YAML parser a while.
            parsed = await asyncio.to_thread(parse_subscription, body, self.tag, taken=self.taken)
            if not parsed.nodes:
                why = parsed.errors[0] if len(parsed.errors) == 1 else f"{len(parsed.errors)} broken entries"
                raise FetchError(f"no usable nodes ({why})" if parsed.errors else "no nodes")
        except Exception as e:  # FetchError, OSError, timeouts, httpx2's errors, TLS: all just a failed fetch
            return self._failed(attempted, _describe(e, self.timeout), notes)
        self._good = (attempted, body)
        if self.keeps_copy:
            try:
                await asyncio.to_thread(write_saved, self.saved_path, self.url, body, attempted)
            except OSError as e:
                notes.append(f"the copy could not be saved: {e}")
                log.warning("subscription %s: the copy could not be saved to %s: %s", self.tag, self.saved_path, e)
        return self._done(self._result(attempted, attempted, False, parsed, None, notes))

    def _failed(self, attempted: float, error: str, notes: list[str]) -> SubscriptionResult:
        fallback = self._fallback(notes)
        if fallback is None:
            return self._done(SubscriptionResult(self.tag, redact_url(self.url), attempted, None, False, 0,
                                                 fetch_error=error, notes=tuple(notes)))
        fetched_at, body = fallback
        parsed = parse_subscription(body, self.tag, taken=self.taken)
        return self._done(self._result(attempted, fetched_at, True, parsed, error, notes))

    def _fallback(self, notes: list[str]) -> tuple[float, bytes] | None:
        """The newest good body: the saved copy on disk, or the last good fetch kept in memory."""
        best = self._good
        if self.keeps_copy:
            try:
                saved = read_saved(self.saved_path, self.max_bytes)
            except (OSError, ValueError) as e:
                notes.append(f"the saved copy cannot be read: {e}")
                saved = None
            if saved is not None and saved.url_hash != _url_hash(self.url):
                notes.append("the saved copy is of another URL: not used")
                saved = None
            if saved is not None and (best is None or saved.fetched_at >= best[0]):
                best = (saved.fetched_at, saved.body)
        return best

    def load_saved(self) -> SubscriptionResult | None:
        """The saved copy's nodes without fetching (at start-up, before the network is there); None without one."""
        notes: list[str] = []
        fallback = self._fallback(notes) if self.keeps_copy else None
        if fallback is None:
            return None
        fetched_at, body = fallback
        parsed = parse_subscription(body, self.tag, taken=self.taken)
        return self._done(self._result(time.time(), fetched_at, True, parsed, "not fetched yet", notes), log_it=False)

    def _result(self, attempted: float, fetched_at: float, saved: bool, parsed: SubscriptionNodes,
                error: str | None, notes: list[str]) -> SubscriptionResult:
        return SubscriptionResult(
            tag=self.tag, url=redact_url(self.url), attempted_at=attempted, fetched_at=fetched_at,
            from_saved_copy=saved, node_count=len(parsed.nodes), errors=tuple(parsed.errors), fetch_error=error,
            format=parsed.format, notes=tuple(notes), nodes=tuple(parsed.nodes))

    def _done(self, result: SubscriptionResult, log_it: bool = True) -> SubscriptionResult:
        self.result = result
        if log_it:
            (log.info if result.ok else log.warning)("%s", result.summary())
            for err in result.errors[:MAX_LOGGED_ERRORS]:
                log.warning("subscription %s: %s (skipped)", self.tag, err)
            if len(result.errors) > MAX_LOGGED_ERRORS:
                log.warning("subscription %s: and %d more broken entries", self.tag,
                            len(result.errors) - MAX_LOGGED_ERRORS)
            for note in result.notes:
                log.warning("subscription %s: %s", self.tag, note)
        return result

    async def _download(self, notes: list[str]) -> bytes:
        scheme = scheme_of(self.url)
        if scheme == "file":
            return await asyncio.to_thread(self._read_file, notes)
        return await self._http_get(self.url.replace("-file://", "://", 1))

    # -- file:// ----------------------------------------------------------------------------------
    def _read_file(self, notes: list[str]) -> bytes:
        path = self.file_path()
        st = os.stat(path)
        if not os.path.isfile(path):
            raise FetchError(f"{path} is not a file")
        if st.st_mode & 0o037:
            # dae refuses such a file; daetui reads it and says why it should not be left so.
            notes.append(f"{path} has mode {st.st_mode & 0o777:04o}: the links hold passwords; chmod 600 it")
        with open(path, "rb") as f:
            data = f.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise FetchError(f"{path} is larger than {self.max_bytes} bytes")
        if data.startswith(b"@"):  # dae's instruction line (and our saved copies' head)
            data = data.partition(b"\n")[2]
        return data.strip()

    def file_path(self) -> Path:
        """The file a file:// URL names: `file:///abs` as is, dae's `file://rel/path` inside the config's directory."""
        parts = urlsplit(self.url)
        if not parts.netloc:
            return Path(unquote(parts.path))
        if self.config_dir is None:
            raise FetchError("a relative file:// URL needs the config's directory")
        base = self.config_dir.resolve()
        path = (base / unquote(parts.netloc + parts.path)).resolve()
        if not path.is_relative_to(base):
            raise FetchError(f"file://{parts.netloc}{parts.path} is outside the config's directory {base}")
        return path

    # -- http(s):// -------------------------------------------------------------------------------
    async def _http_get(self, url: str) -> bytes:
        import httpx2

        opts = [(socket.SOL_SOCKET, SO_MARK, self.mark)] if self.mark else None
        transport = httpx2.AsyncHTTPTransport(verify=self.verify, socket_options=opts)
        # trust_env off: an HTTP_PROXY in the daemon's environment must not carry the fetch elsewhere.
        async with httpx2.AsyncClient(transport=transport, timeout=self.timeout, follow_redirects=False,
                                      trust_env=False) as client:
            for _ in range(MAX_REDIRECTS + 1):
                parts = urlsplit(url)
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    raise FetchError(f"cannot fetch {redact_url(url)}")
                status, location, body = await self._get_once(client, parts)
                if location is None:
                    if status != 200:
                        raise FetchError(f"HTTP {status}")
                    return body
                new = urljoin(url, location)
                if parts.scheme == "https" and not new.startswith("https://"):
                    raise FetchError(f"HTTP {status}: redirected from https to {redact_url(new)}: refused")
                url = new
        raise FetchError(f"more than {MAX_REDIRECTS} redirects")

    async def _get_once(self, client: Any, parts: Any) -> tuple[int, str | None, bytes]:
        host = parts.hostname
        try:
            port = parts.port
        except ValueError:
            raise FetchError("bad port in the URL") from None
        default = 443 if parts.scheme == "https" else 80
        port = port or default
        headers = {"user-agent": USER_AGENT, "accept": "*/*", "accept-encoding": "identity"}
        extensions: dict[str, Any] = {}
        target = host
        if not is_address(host) and self._resolve is not None:
            try:
                target = await self._resolve(host)
            except Exception as e:
                raise FetchError(f"cannot resolve {host}: {e or _describe(e, self.timeout)}") from None
            headers["host"] = host if port == default else f"{host}:{port}"
            if parts.scheme == "https":
                extensions["sni_hostname"] = host  # the certificate is checked against the name, not the address
        shown = f"[{target}]" if ":" in target else target
        url = f"{parts.scheme}://{shown}:{port}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")
        async with client.stream("GET", url, headers=headers, extensions=extensions) as resp:
            if 300 <= resp.status_code < 400 and resp.headers.get("location"):
                return resp.status_code, resp.headers["location"], b""
            if resp.status_code != 200:
                return resp.status_code, None, b""
            length = resp.headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_bytes:
                raise FetchError(f"larger than {self.max_bytes} bytes ({length} announced)")
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > self.max_bytes:
                    raise FetchError(f"larger than {self.max_bytes} bytes")
                chunks.append(chunk)
            return resp.status_code, None, b"".join(chunks)

    # -- refreshing ---------------------------------------------------------------------------------
    def next_delay(self, failures: int) -> float:
        """Seconds to the next fetch: the interval after a success, else retry, 2 x retry, ... up to the interval."""
        if failures <= 0:
            return self.interval
        return min(self.interval, self.retry * 2 ** min(failures - 1, 30))

    async def run(self, on_result: Callable[[SubscriptionResult], Any]) -> None:
        """Fetch now and then on the interval (sooner after a failure), handing each result to `on_result`.

        Runs until cancelled. `on_result` may be a coroutine function. refresh_now() cuts a wait short.
        """
        self._wake = asyncio.Event()
        failures = 0
        while True:
            result = await self.fetch()
            failures = 0 if result.ok else failures + 1
            delay = self.next_delay(failures)
            result = dataclasses.replace(result, next_at=time.time() + delay)
            self.result = result
            try:
                done = on_result(result)
                if asyncio.iscoroutine(done):
                    await done
            except Exception:
                log.exception("subscription %s: handling the result failed", self.tag)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def start(self, on_result: Callable[[SubscriptionResult], Any]) -> asyncio.Task[None]:
        """run() as a task of the running loop."""
        self._task = asyncio.get_running_loop().create_task(self.run(on_result), name=f"subscription {self.tag}")
        return self._task

    def refresh_now(self) -> None:
        """Fetch again at once (the console's "refresh"), when run() is waiting."""
        if self._wake is not None:
            self._wake.set()

    async def stop(self) -> None:
        """Stop the task start() made."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _describe(e: BaseException, timeout: float) -> str:
    """A short reason for the console, without the URL (which holds the token)."""
    if isinstance(e, TimeoutError) or type(e).__name__.endswith("Timeout"):
        return f"timed out after {timeout:g} s"
    if isinstance(e, FetchError):
        return str(e)
    if isinstance(e, FileNotFoundError):
        return f"no such file: {e.filename}"
    # httpx2 wraps the socket's error ("All connection attempts failed"): the innermost OSError says more.
    inner: BaseException | None = e
    for _ in range(8):
        if inner is None or (isinstance(inner, OSError) and inner.strerror):
            break
        inner = inner.__cause__ or inner.__context__
    if isinstance(inner, ssl.SSLCertVerificationError):
        return f"TLS certificate: {inner.verify_message or inner.reason}"
    if isinstance(inner, ssl.SSLError):
        return f"TLS: {inner.reason or inner}"
    if isinstance(inner, OSError) and inner.strerror:
        # asyncio's own strerror is "Connect call failed (address)": the errno's words say why.
        reason = os.strerror(inner.errno) if inner.errno else inner.strerror
        return reason if inner is e else f"{type(e).__name__}: {reason}"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
