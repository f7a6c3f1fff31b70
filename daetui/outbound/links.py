"""Share links (`ss://`, `socks5://`, `trojan://`, ...) to nodes, and back.

Each protocol's module parses its own links: `parse_link(link, name) ->
node`, where a node is a frozen dataclass with `name`, `host`, `port`,
`link()` (the share link printed back) and `dialer(via)` (a Dialer reaching
destinations through this node, its own connection made through `via`).
This table says which module reads which scheme; modules are imported only
when a link of theirs is met.

Schemes that name a protocol daetui has no client for (ssr://, juicity://,
hysteria://, ...) are in UNSUPPORTED: such a link is refused at parse with
the reason, never half-accepted as something else. `link_problem` is the
question a config loader asks: None for a usable link, else why not.

A chain is written as dae writes it, `link1 -> link2`: the first hop is the
one dialled from the router, each next hop is reached through the one
before, and the last one reaches the destination.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, ClassVar

from daetui.outbound.state import NodeProtocol

MODULES = {
    "socks5": "daetui.outbound.socks5",
    "socks4": "daetui.outbound.socks4",
    "socks4a": "daetui.outbound.socks4",
    "http": "daetui.outbound.http_proxy",
    "https": "daetui.outbound.http_proxy",
    "ss": "daetui.outbound.shadowsocks",
    "trojan": "daetui.outbound.trojan",
    "vless": "daetui.outbound.vless",
    "vmess": "daetui.outbound.vmess",
    "anytls": "daetui.outbound.anytls",
    "tuic": "daetui.outbound.tuic",
    "hysteria2": "daetui.outbound.hysteria2",
}


# Other spellings of a scheme in MODULES, rewritten before the module sees the link.
# dae (daeuniverse/outbound protocol/socks) and v2rayN both read socks:// as SOCKS5.
ALIASES = {"socks": "socks5", "hy2": "hysteria2"}

# Protocols dae or mihomo read from share links that daetui has no client for: the reason a link is refused.
UNSUPPORTED = {
    "ssr": "ShadowsocksR",
    "shadowsocksr": "ShadowsocksR",
    "trojan-go": "trojan-go",
    "hysteria": "Hysteria",
    "juicity": "Juicity",
    "shadowtls": "ShadowTLS",
    "wireguard": "WireGuard",
    "wg": "WireGuard",
    "naive": "NaiveProxy",
    "naive+https": "NaiveProxy",
    "naive+quic": "NaiveProxy",
    "mieru": "mieru",
    "mierus": "mieru",
    "snell": "Snell",
    "ssh": "SSH",
    "brook": "Brook",
}


class LinkError(ValueError):
    """A share link that cannot be used, and why."""


def scheme_of(link: str) -> str:
    """The link's scheme in lower case ("ss" for `ss://...`); "" when it has none."""
    return link.split("://", 1)[0].lower() if "://" in link else ""


@dataclass(frozen=True)
class ChainNode:
    """Nodes dialled one through the other: `hops[0]` from the router, the last to the destination."""

    name: str
    hops: tuple[Any, ...]
    protocol: ClassVar[NodeProtocol] = "chain"

    @property
    def host(self) -> str:
        return str(self.hops[0].host)

    @property
    def port(self) -> int:
        return int(self.hops[0].port)

    def link(self) -> str:
        return " -> ".join(h.link() for h in self.hops)

    def dialer(self, via: Any) -> Any:
        d = via
        for h in self.hops:
            d = h.dialer(d)
        return d


def refusal(scheme: str) -> str | None:
    """Why nodes of this scheme are refused (it is in UNSUPPORTED); None for any other scheme."""
    what = UNSUPPORTED.get(scheme.lower())
    if what is None:
        return None
    return f"{scheme.lower()}:// nodes ({what}) are not supported: daetui has no {what} client"


def parse_link(link: str, name: str = "") -> Any:
    """The node a share link (or a chain `a -> b`) describes; LinkError says what is wrong with it."""
    if " -> " in link:
        hops = tuple(parse_link(part.strip(), f"{name}#{i + 1}") for i, part in enumerate(link.split(" -> ")))
        return ChainNode(name or hops[-1].name, hops)
    scheme = scheme_of(link)
    if scheme in ALIASES:
        rest = link.split("://", 1)[1]
        if scheme == "socks" and not _has_port(rest):
            # The foreign spellings always carry the port (v2rayN writes it; dae refuses one without):
            # only daetui's own socks5:// form defaults it.
            raise LinkError(f"{scheme}:// link without a port")
        scheme = ALIASES[scheme]
        link = f"{scheme}://{rest}"
    reason = refusal(scheme)
    if reason is not None:
        raise LinkError(reason)
    module = MODULES.get(scheme)
    if module is None:
        known = ", ".join(f"{s}://" for s in (*MODULES, *ALIASES))
        raise LinkError(f"unknown scheme {scheme + '://' if scheme else link[:16]!r}: expected {known}")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise  # a dependency of the module is missing: say that, not "unsupported"
        raise LinkError(f"{scheme}:// nodes are not supported by this version of daetui yet") from None
    try:
        return mod.parse_link(link, name)
    except LinkError:
        raise
    except ValueError as e:
        raise LinkError(f"{scheme}:// link: {e}") from None


def link_problem(link: str, name: str = "") -> str | None:
    """Why a share link (or chain) cannot be used: None when parse_link takes it; never raises.

    The reason is what parse_link's LinkError says; a protocol module that
    fails on odd input in another way is reported as not understood, and a
    missing dependency of a module as such, so one bad line never stops a
    config loader reading the rest.
    """
    try:
        parse_link(link, name)
    except ValueError as e:  # LinkError, and ValueErrors the nodes' own checks raise
        return str(e) or f"{scheme_of(link)}:// link not understood"
    except ModuleNotFoundError as e:
        return f"{scheme_of(link)}:// nodes need the Python module {e.name!r}, which is not installed"
    except Exception as e:
        return f"{scheme_of(link)}:// link not understood ({type(e).__name__}: {e})"
    return None


def _has_port(rest: str) -> bool:
    """Whether the part of a link after `scheme://` names a port (`host:port`, `[v6]:port`)."""
    hostport = rest.partition("#")[0].partition("?")[0].partition("/")[0].rpartition("@")[2]
    return ":" in hostport.rpartition("]")[2]


def with_allow_insecure(node: Any) -> Any:
    """The node with invalid TLS certificates accepted (daetui's global `allow_insecure`), where it has TLS."""
    if isinstance(node, ChainNode):
        return ChainNode(node.name, tuple(with_allow_insecure(h) for h in node.hops))
    if not getattr(node, "tls", True):
        return node  # a node without TLS (http://, plain vless) has no certificate to accept
    if dataclasses.is_dataclass(node) and any(f.name == "allow_insecure" for f in dataclasses.fields(node)):
        return dataclasses.replace(node, allow_insecure=True)
    return node
