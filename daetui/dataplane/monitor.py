"""Watching the namespace's interfaces (netlink RTM_NEWLINK / RTM_DELLINK).

An interface named in the config that appears later is bound then; one that
disappears is forgotten without error. The monitor also keeps the list of
every interface for the console's Overview.

Netlink multicast is lossy by design: when events come faster than this
thread reads them (thousands of veths of containers starting at once), the
kernel drops some and the next read fails with ENOBUFS. The monitor then
lists the links again and reports the difference, so no appearance or
disappearance is lost for good; the thread never ends until it is stopped.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

log = logging.getLogger("daetui.dataplane")

NETLINK_ROUTE = 0
RTMGRP_LINK = 1
RTMGRP_ROUTES = 0x40 | 0x400   # RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE: for `wan_interface = ["auto"]`
MAIN_TABLE = 254
IFF_UP = 1
SO_RCVBUFFORCE = 33
# Room for a burst of some thousands of link messages (~1 KiB each) while the thread is busy.
RCVBUF = 1 << 20
_RETRY_SECONDS = 1.0   # after a socket error other than an overflow, before opening a new one


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    up: bool


def _link(msg: object) -> Link:
    return Link(msg["index"], msg.get_attr("IFLA_IFNAME"), bool(msg["flags"] & IFF_UP))  # type: ignore[index,attr-defined]


def link_changes(before: dict[int, Link], after: dict[int, Link]) -> list[tuple[str, Link]]:
    """What happened between two listings, as the events a reader would have seen: gone, then new."""
    out: list[tuple[str, Link]] = []
    for idx, lk in before.items():
        now = after.get(idx)
        if now is None or now.name != lk.name:
            out.append(("del", lk))
    for idx, lk in after.items():
        was = before.get(idx)
        if was is None or was.name != lk.name:
            out.append(("new", lk))
    return out


class InterfaceMonitor:
    """A thread that keeps `links` current and reports appearances and disappearances."""

    def __init__(self, on_change: Callable[[str, Link], None], rcvbuf: int = RCVBUF,
                 on_default_route: Callable[[], None] | None = None) -> None:
        self.on_change = on_change  # ("new" | "del", link); called from the monitor thread
        self.on_default_route = on_default_route  # a default route of the main table came or went
        self.links: dict[int, Link] = {}  # replaced whole on a resync; copy it before iterating elsewhere
        self.rcvbuf = rcvbuf
        self.overflows = 0   # ENOBUFS: events the kernel dropped, made up for by listing again
        self.resyncs = 0
        self.errors = 0      # other socket errors (a new socket was opened)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="daetui-links", daemon=True)
        self._ready = threading.Event()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _open(self) -> socket.socket:
        # A plain netlink socket read with a selector: pyroute2's own reader buffers
        # ahead of the socket, which a selector cannot see. pyroute2 only parses.
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)  # past rmem_max: needs root
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.bind((0, RTMGRP_LINK | (RTMGRP_ROUTES if self.on_default_route else 0)))
        except BaseException:
            sock.close()
            raise
        return sock

    def _list(self) -> dict[int, Link]:
        with IPRoute() as dump:
            return {lk.index: lk for lk in map(_link, dump.get_links())}

    def _resync(self) -> None:
        """List the links again (subscribed first, so no change falls in between) and report the difference."""
        before, after = self.links, self._list()
        self.links = after
        self.resyncs += 1
        self._report(link_changes(before, after))
        self._routes_changed()  # route events may have been lost with the rest

    def _routes_changed(self) -> None:
        if self.on_default_route is None:
            return
        try:
            self.on_default_route()
        except Exception as e:  # one bad event must not end the monitor
            log.error("interface monitor: handling a default route change: %s", e)

    def _report(self, changes: Iterable[tuple[str, Link]]) -> None:
        for what, lk in changes:
            try:
                self.on_change(what, lk)
            except Exception as e:  # one bad event must not end the monitor
                log.error("interface monitor: handling %s %s: %s", what, lk.name, e)

    def _run(self) -> None:
        try:
            sock = self._open()
            self.links = self._list()
        except Exception as e:
            log.error("interface monitor: %s", e)
            self._ready.set()
            return
        self._ready.set()
        marshal = MarshalRtnl()
        sel = selectors.DefaultSelector()  # epoll: no FD_SETSIZE limit once RLIMIT_NOFILE is raised
        sel.register(sock, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                if not sel.select(0.5):
                    continue
                try:
                    data = sock.recv(1 << 16)
                except OSError as e:
                    if e.errno == errno.ENOBUFS:
                        self.overflows += 1
                        log.warning("interface monitor: the kernel dropped link events (netlink overflow, %d so "
                                    "far); listing the links again", self.overflows)
                        self._resync()
                        continue
                    self.errors += 1
                    log.error("interface monitor: %s; opening a new netlink socket", e)
                    sel.unregister(sock)
                    sock.close()
                    self._stop.wait(_RETRY_SECONDS)
                    sock = self._open()
                    sel.register(sock, selectors.EVENT_READ)
                    self._resync()
                    continue
                self._handle(marshal.parse(data))
        except Exception as e:
            log.error("interface monitor stopped: %s", e)
        finally:
            sel.close()
            sock.close()

    def _handle(self, msgs: Iterable[object]) -> None:
        changes: list[tuple[str, Link]] = []
        default_route = False
        for msg in msgs:
            event = msg.get("event")  # type: ignore[attr-defined]
            if event in ("RTM_NEWROUTE", "RTM_DELROUTE"):
                default_route |= msg["dst_len"] == 0 and msg.get_attr("RTA_TABLE") == MAIN_TABLE  # type: ignore[index,attr-defined]
                continue
            if event not in ("RTM_NEWLINK", "RTM_DELLINK"):
                continue
            lk = _link(msg)
            if event == "RTM_NEWLINK":
                known = self.links.get(lk.index)
                self.links[lk.index] = lk
                if known is None or known.name != lk.name:
                    changes.append(("new", lk))
            else:
                self.links.pop(lk.index, None)
                changes.append(("del", lk))
        self._report(changes)
        if default_route:
            self._routes_changed()

