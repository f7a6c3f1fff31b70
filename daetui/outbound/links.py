"""Share links (`ss://`, `socks5://`, `trojan://`, ...) to nodes, and back.

Each protocol's module parses its own links: `parse_link(link, name) ->
node`, where a node is a frozen dataclass with `name`, `host`, `port`,
`link()` (the share link printed back) and `dialer(via)` (a Dialer reaching
destinations through this node, its own connection made through `via`).
This table says which module reads which scheme; modules are imported only
when a link of theirs is met.
"""

from __future__ import annotations

import importlib
from typing import Any

MODULES = {
    "socks5": "daetui.outbound.socks5",
    "http": "daetui.outbound.http_proxy",
    "https": "daetui.outbound.http_proxy",
    "ss": "daetui.outbound.shadowsocks",
    "trojan": "daetui.outbound.trojan",
    "vless": "daetui.outbound.vless",
    "vmess": "daetui.outbound.vmess",
}


class LinkError(ValueError):
    """A share link that cannot be used, and why."""


def scheme_of(link: str) -> str:
    return link.split("://", 1)[0].lower() if "://" in link else ""


def parse_link(link: str, name: str = "") -> Any:
    """The node a share link describes; LinkError says what is wrong with it."""
    scheme = scheme_of(link)
    module = MODULES.get(scheme)
    if module is None:
        known = ", ".join(f"{s}://" for s in MODULES)
        raise LinkError(f"unknown scheme {scheme + '://' if scheme else link[:16]!r}: expected {known}")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError:
        raise LinkError(f"{scheme}:// nodes are not supported by this version of daetui yet") from None
    try:
        return mod.parse_link(link, name)
    except LinkError:
        raise
    except ValueError as e:
        raise LinkError(f"{scheme}:// link: {e}") from None
