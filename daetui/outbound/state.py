"""What the outbounds tell the console: plain dataclasses (they cross the control socket)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# A node's protocol as its share link names it (`ss://`, `https://`, ...); a chain of nodes is "chain".
NodeProtocol = Literal["socks5", "socks4", "socks4a", "http", "https", "ss", "trojan", "vless", "vmess", "hysteria2",
                       "tuic", "anytls", "chain"]


@dataclass(frozen=True)
class NodeState:
    """A node as the console shows it."""

    name: str
    protocol: NodeProtocol
    address: str
    alive4: bool
    alive6: bool
    latencies4: tuple[float | None, ...]   # seconds; None a failed check; oldest first
    latencies6: tuple[float | None, ...]
    last_error: str


@dataclass(frozen=True)
class GroupState:
    """A group as the console shows it."""

    name: str
    policy: str
    members: tuple[str, ...]
    selected4: str | None
    selected6: str | None
    pinned: str | None
