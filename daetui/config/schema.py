"""The keys a config file may hold, their types and defaults.

dae's option names and defaults where dae has the option. A key not listed
here is an error with a "did you mean".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LOG_LEVELS = ("error", "warn", "info", "debug", "trace")

# Bits daetui uses for itself; so_mark_from_dae must stay clear of the first.
TPROXY_MARK = 0x2000000          # packets for the control plane (policy routing -> local)
DEFAULT_SO_MARK = 0x4000000      # daetui's own outgoing sockets


@dataclass(frozen=True)
class KeySpec:
    """One key: its TOML type, default and a check of its value."""

    type: str                              # "int" | "bool" | "str" | "strlist"
    default: Any
    doc: str
    check: Callable[[Any], str | None] | None = None   # returns an error message


def _port(v: int) -> str | None:
    return None if 1 <= v <= 65535 else "expected a port between 1 and 65535"


def _mark(v: int) -> str | None:
    if not 0 <= v < 2**32:
        return "expected a 32-bit mark"
    if v & TPROXY_MARK:
        return f"must not use bit {TPROXY_MARK:#x}: daetui routes the control plane's packets with it"
    return None


def _level(v: str) -> str | None:
    return None if v in LOG_LEVELS else f"expected one of {', '.join(LOG_LEVELS)}"


def _ifnames(v: list[str]) -> str | None:
    for name in v:
        if not name or len(name) > 15 or "/" in name or name.strip() != name:
            return f"{name!r} is not an interface name"
    return None


GLOBAL: dict[str, KeySpec] = {
    "lan_interface": KeySpec("strlist", (), "LAN interfaces to bind lan_ingress/lan_egress to", _ifnames),
    "wan_interface": KeySpec("strlist", (), "WAN interfaces (the router's own traffic; not bound yet)",
                             _ifnames),
    "tproxy_port": KeySpec("int", 12345, "port of the transparent listeners (loopback only)", _port),
    "so_mark_from_dae": KeySpec("int", DEFAULT_SO_MARK, "SO_MARK of daetui's own outgoing sockets", _mark),
    "log_level": KeySpec("str", "info", "error, warn, info, debug or trace", _level),
    "auto_config_kernel_parameter": KeySpec("bool", True, "enable forwarding and turn off send_redirects"),
    "fail_open": KeySpec("bool", True, "pass flows as direct while the control plane is down"),
}

ROUTING: dict[str, KeySpec] = {
    "rules": KeySpec("rules", (), "rules in dae's syntax, first match wins"),
    "fallback": KeySpec("str", "direct", "outbound for flows no rule matches"),
}

SECTIONS: dict[str, dict[str, KeySpec]] = {"global": GLOBAL, "routing": ROUTING}
