"""Which interfaces a config's interface list names: literal names, wildcards and `auto`.

`lan_interface = ["veth*"]` binds every veth there is and every one created
later; `wg+` is the iptables/nftables spelling of the same (a prefix);
`?` is one character. `auto` (WAN only) is the interfaces that hold a default
route, IPv4 or IPv6, followed as routes change.
"""

from __future__ import annotations

import fnmatch
import socket
from collections.abc import Iterable

from pyroute2 import IPRoute

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


def default_route_interfaces(ipr: IPRoute) -> frozenset[str]:
    """The interfaces the main table's default routes leave by (IPv4 and IPv6, multipath too)."""
    names = {lk["index"]: lk.get_attr("IFLA_IFNAME") for lk in ipr.get_links()}
    out: set[str] = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.get_routes(family=family, table=254):
            if r["dst_len"] != 0 or r.get_attr("RTA_DST") not in (None, "0.0.0.0", "::"):
                continue
            oifs = [r.get_attr("RTA_OIF")]
            mp = r.get_attr("RTA_MULTIPATH")
            if mp:
                oifs += [hop["oif"] for hop in mp]
            out.update(names[i] for i in oifs if i in names)
    return frozenset(out)
