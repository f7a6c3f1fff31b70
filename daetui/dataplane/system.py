"""Changes to the system (sysctls, policy routing, TC), journaled and undoable.

Every `add_*`/`set_*` first checks that what it is about to make is not
there already: daetui only claims, and later removes, what it made itself.
`undo()` is tolerant: a thing that is already gone is not an error.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from daetui.dataplane.cgroups import mount_cgroup2, unmount
from daetui.dataplane.journal import Change, Journal

log = logging.getLogger("daetui.dataplane")

# daetui's own TC filter priority and handle, so cleanup touches nothing else.
TC_PRIO = 0xDA7
TC_HANDLE = 0xDA7
TC_PARENT = {"ingress": "ffff:fff2", "egress": "ffff:fff3"}

# Policy routing that makes marked packets local (they are for our sockets).
ROUTE_TABLE = 2024
RULE_PRIORITY = 1000

_GONE = {errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EINVAL, errno.EADDRNOTAVAIL}
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


class SystemError_(RuntimeError):
    """A change to the system could not be made."""


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def read_sysctl(key: str) -> str | None:
    try:
        return _sysctl_path(key).read_text().strip()
    except OSError:
        return None


def _write_sysctl(key: str, value: str) -> None:
    _sysctl_path(key).write_text(value)


def _filters(ipr: IPRoute, ifindex: int, direction: str) -> list[Any]:
    parent = 0xFFFFFFF2 if direction == "ingress" else 0xFFFFFFF3
    try:
        return list(ipr.get_filters(index=ifindex, parent=parent))
    except NetlinkError as e:
        if e.code in _GONE:
            return []
        raise


def has_clsact(ipr: IPRoute, ifindex: int) -> bool:
    """True when the interface already has a clsact qdisc."""
    return any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=ifindex))


def our_filters(ipr: IPRoute, ifindex: int, direction: str) -> list[Any]:
    """daetui's filters on one hook of an interface (by priority and handle)."""
    out = []
    for f in _filters(ipr, ifindex, direction):
        prio = (f["info"] >> 16) & 0xFFFF
        if prio == TC_PRIO and f["handle"] == TC_HANDLE and f.get_attr("TCA_KIND") == "bpf":
            out.append(f)
    return out


class SystemChanges:
    """Makes and undoes journaled changes in the current network namespace."""

    def __init__(self, journal: Journal, ipr: IPRoute | None = None) -> None:
        self.journal = journal
        self.ipr = ipr or IPRoute()

    # -- sysctl ---------------------------------------------------------------
    def set_sysctl(self, key: str, value: str) -> None:
        """Set a sysctl, remembering the old value; nothing if it is already so."""
        old = read_sysctl(key)
        if old is None:
            log.warning("sysctl %s does not exist here; not set", key)
            return
        if old == value:
            return
        change = self.journal.record({"kind": "sysctl", "key": key, "old": old, "new": value})
        try:
            _write_sysctl(key, value)
        except OSError as e:
            self.journal.forget(change)
            raise SystemError_(f"sysctl {key}={value}: {e.strerror}") from None
        log.info("sysctl %s: %s -> %s", key, old, value)

    # -- policy routing --------------------------------------------------------
    def _rule_exists(self, family: int, mark: int) -> bool:
        for r in self.ipr.get_rules(family=_FAMILY[family]):
            if (r.get_attr("FRA_PRIORITY") == RULE_PRIORITY and r.get_attr("FRA_FWMARK") == mark
                    and r.get_attr("FRA_TABLE") == ROUTE_TABLE):
                return True
        return False

    def add_mark_rule(self, family: int, mark: int) -> None:
        """`ip rule add fwmark MARK/MARK lookup 2024 pref 1000`."""
        if self._rule_exists(family, mark):
            raise SystemError_(f"an IPv{family} rule 'fwmark {mark:#x} lookup {ROUTE_TABLE}' exists already and "
                               "is not daetui's (daetui cleanup removes only what it recorded)")
        spec = {"family": family, "priority": RULE_PRIORITY, "fwmark": mark, "fwmask": mark,
                "table": ROUTE_TABLE}
        change = self.journal.record({"kind": "ip_rule", **spec})
        try:
            self.ipr.rule("add", table=ROUTE_TABLE, priority=RULE_PRIORITY, fwmark=mark, fwmask=mark,
                          family=_FAMILY[family])
        except NetlinkError as e:
            self.journal.forget(change)
            raise SystemError_(f"ip rule fwmark {mark:#x}: {e}") from None

    def add_local_route(self, family: int) -> None:
        """`ip route add local default dev lo table 2024`."""
        routes = self.ipr.get_routes(table=ROUTE_TABLE, family=_FAMILY[family])
        if any(r["dst_len"] == 0 and r.get_attr("RTA_TABLE") == ROUTE_TABLE for r in routes):
            raise SystemError_(f"table {ROUTE_TABLE} already has an IPv{family} default route that is not daetui's")
        change = self.journal.record({"kind": "route", "family": family, "table": ROUTE_TABLE})
        try:
            self._local_route("add", family)
        except NetlinkError as e:
            self.journal.forget(change)
            raise SystemError_(f"ip route local default table {ROUTE_TABLE}: {e}") from None

    def _local_route(self, cmd: str, family: int) -> None:
        lo = self.ipr.link_lookup(ifname="lo")[0]
        self.ipr.route(cmd, dst="default", type="local", scope=254, table=ROUTE_TABLE, oif=lo,
                       family=_FAMILY[family])

    # -- links ------------------------------------------------------------------
    def add_veth(self, name: str, peer: str) -> tuple[int, bytes]:
        """Create a veth pair, both ends up; returns the first end's index and MAC address."""
        if self.ipr.link_lookup(ifname=name) or self.ipr.link_lookup(ifname=peer):
            raise SystemError_(f"an interface {name} or {peer} exists already and is not daetui's "
                               "(another daetui is running here, or run: daetui cleanup)")
        change = self.journal.record({"kind": "veth", "name": name, "peer": peer})
        try:
            self.ipr.link("add", ifname=name, kind="veth", peer=peer)
            for n in (peer, name):
                self.ipr.link("set", index=self.ipr.link_lookup(ifname=n)[0], state="up")
        except NetlinkError as e:
            self.journal.forget(change)
            with contextlib.suppress(NetlinkError, IndexError):
                self.ipr.link("del", index=self.ipr.link_lookup(ifname=name)[0])
            raise SystemError_(f"veth {name}/{peer}: {e}") from None
        link = self.ipr.get_links(self.ipr.link_lookup(ifname=name)[0])[0]
        mac = bytes.fromhex(link.get_attr("IFLA_ADDRESS").replace(":", ""))
        return link["index"], mac

    # -- mounts -----------------------------------------------------------------
    def mount_cgroup2(self, path: str) -> str:
        """Mount the cgroup v2 hierarchy at `path` (where none is visible); returns `path`."""
        change = self.journal.record({"kind": "mount", "path": path})
        try:
            mount_cgroup2(path)
        except OSError:
            self.journal.forget(change)
            raise
        return path

    # -- tc -------------------------------------------------------------------
    def attach(self, ifindex: int, ifname: str, direction: str, prog_fd: int, prog_name: str) -> None:
        """Attach a TC program (clsact, direct-action) with daetui's priority and handle."""
        if not has_clsact(self.ipr, ifindex):
            change = self.journal.record({"kind": "clsact", "ifindex": ifindex, "ifname": ifname})
            try:
                self.ipr.tc("add", "clsact", ifindex)
            except NetlinkError as e:
                self.journal.forget(change)
                raise SystemError_(f"clsact on {ifname}: {e}") from None
        if our_filters(self.ipr, ifindex, direction):
            raise SystemError_(f"{ifname} {direction} already has a filter with daetui's handle; "
                               "another daetui is running here (or run: daetui cleanup)")
        change = self.journal.record({"kind": "tc_filter", "ifindex": ifindex, "ifname": ifname,
                                      "direction": direction})
        try:
            self.ipr.tc("add-filter", "bpf", ifindex, handle=TC_HANDLE, fd=prog_fd, name=prog_name,
                        parent=TC_PARENT[direction], classid=1, direct_action=True, prio=TC_PRIO)
        except NetlinkError as e:
            self.journal.forget(change)
            raise SystemError_(f"attach {prog_name} to {ifname} {direction}: {e}") from None

    def detach_interface(self, ifindex: int) -> None:
        """Undo, newest first, every change recorded for one interface."""
        for change in reversed(list(self.journal.changes)):
            if change.get("ifindex") == ifindex:
                undo(change, self.ipr)
                self.journal.forget(change)

    # -- undo -----------------------------------------------------------------
    def undo_all(self) -> list[str]:
        """Undo every recorded change, newest first; returns what went wrong."""
        problems = []
        for change in reversed(list(self.journal.changes)):
            try:
                undo(change, self.ipr)
            except Exception as e:
                problems.append(f"{describe(change)}: {e}")
                log.error("could not undo %s: %s", describe(change), e)
            self.journal.forget(change)
        return problems

    def close(self) -> None:
        self.ipr.close()


def describe(change: Change) -> str:
    """One line for a change, for logs and `daetui cleanup`."""
    k = change["kind"]
    if k == "sysctl":
        return f"sysctl {change['key']}={change['new']} (was {change['old']})"
    if k == "ip_rule":
        return f"ip -{change['family']} rule fwmark {change['fwmark']:#x} lookup {change['table']}"
    if k == "route":
        return f"ip -{change['family']} route local default dev lo table {change['table']}"
    if k == "clsact":
        return f"tc qdisc clsact on {change['ifname']}"
    if k == "veth":
        return f"veth {change['name']} (peer {change['peer']})"
    if k == "mount":
        return f"cgroup2 mounted on {change['path']}"
    if k == "tc_filter":
        return f"tc filter {change['direction']} on {change['ifname']} (prio {TC_PRIO:#x})"
    return k


def _same_interface(ipr: IPRoute, change: Change) -> bool:
    """The interface of a change still exists under the same index and name."""
    links = ipr.get_links(change["ifindex"]) if change["ifindex"] else []
    return bool(links) and links[0].get_attr("IFLA_IFNAME") == change["ifname"]


def undo(change: Change, ipr: IPRoute) -> None:
    """Undo one change; what is already gone is fine."""
    k = change["kind"]
    try:
        if k == "sysctl":
            # Restore only if nobody changed it since.
            if read_sysctl(change["key"]) == change["new"]:
                _write_sysctl(change["key"], change["old"])
        elif k == "ip_rule":
            ipr.rule("del", table=change["table"], priority=change["priority"], fwmark=change["fwmark"],
                     fwmask=change["fwmask"], family=_FAMILY[change["family"]])
        elif k == "route":
            lo = ipr.link_lookup(ifname="lo")[0]
            ipr.route("del", dst="default", type="local", scope=254, table=change["table"], oif=lo,
                      family=_FAMILY[change["family"]])
        elif k == "mount":
            unmount(change["path"])
        elif k == "veth":
            # Deleting one end deletes the pair.
            for idx in ipr.link_lookup(ifname=change["name"]):
                ipr.link("del", index=idx)
        elif k == "tc_filter":
            if not _same_interface(ipr, change):
                return
            for _ in our_filters(ipr, change["ifindex"], change["direction"]):
                ipr.tc("del-filter", "bpf", change["ifindex"], handle=TC_HANDLE,
                       parent=TC_PARENT[change["direction"]], prio=TC_PRIO)
        elif k == "clsact":
            if not _same_interface(ipr, change):
                return
            # Someone else's filters may sit on the clsact we made: then it stays.
            if not _filters(ipr, change["ifindex"], "ingress") and not _filters(ipr, change["ifindex"], "egress"):
                ipr.tc("del", "clsact", change["ifindex"])
            else:
                log.warning("left the clsact qdisc on %s: it holds filters that are not daetui's",
                            change["ifname"])
        else:
            log.warning("unknown change in journal: %s", change)
    except NetlinkError as e:
        if e.code not in _GONE:
            raise
