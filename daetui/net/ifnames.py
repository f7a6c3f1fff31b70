"""Interface names in a config: literal names, wildcards and `auto`.

`lan_interface = ["veth*"]` names every veth there is and every one created
later; `wg+` is the iptables/nftables spelling of the same (a prefix); `?` is
one character. `auto` (WAN only) is the interfaces that hold a default route.
The same patterns serve interface() in rules.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

AUTO = "auto"


def is_pattern(name: str) -> bool:
    """A wildcard (or `auto`), not one interface's name."""
    return name == AUTO or name.endswith("+") or any(c in name for c in "*?[")


def _glob(pattern: str) -> str:
    return pattern[:-1] + "*" if pattern.endswith("+") else pattern


def matching(patterns: Iterable[str], name: str, auto: frozenset[str] = frozenset()) -> str | None:
    """The first of `patterns` that names `name` (itself, a wildcard, or auto), or None."""
    for p in patterns:
        if p == AUTO:
            if name in auto:
                return p
        elif p == name or (is_pattern(p) and fnmatch.fnmatchcase(name, _glob(p))):
            return p
    return None
