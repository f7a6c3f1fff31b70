"""Which interfaces `auto` names: those holding a default route (patterns: daetui.net.ifnames)."""

from __future__ import annotations

import socket

from pyroute2 import IPRoute


def default_route_interfaces(ipr: IPRoute, names: dict[int, str]) -> frozenset[str]:
    """The interfaces the main table's default routes leave by (IPv4 and IPv6, multipath too);
    `names`: index -> name of this namespace's interfaces (dataplane.interface_names)."""
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
