"""Watching the namespace's interfaces (netlink RTM_NEWLINK / RTM_DELLINK).

An interface named in the config that appears later is bound then; one that
disappears is forgotten without error. The monitor also keeps the list of
every interface for the console's Overview.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

log = logging.getLogger("daetui.dataplane")

NETLINK_ROUTE = 0
RTMGRP_LINK = 1
IFF_UP = 1


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    up: bool


def _link(msg: object) -> Link:
    return Link(msg["index"], msg.get_attr("IFLA_IFNAME"), bool(msg["flags"] & IFF_UP))  # type: ignore[index,attr-defined]


class InterfaceMonitor:
    """A thread that keeps `links` current and reports appearances and disappearances."""

    def __init__(self, on_change: Callable[[str, Link], None]) -> None:
        self.on_change = on_change  # ("new" | "del", link); called from the monitor thread
        self.links: dict[int, Link] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="daetui-links", daemon=True)
        self._ready = threading.Event()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        # A plain netlink socket read with select(): pyroute2's own reader buffers
        # ahead of the socket, which select() cannot see. pyroute2 only parses.
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        try:
            sock.bind((0, RTMGRP_LINK))
            with IPRoute() as dump:  # subscribed first, then listed: no change falls in between
                for msg in dump.get_links():
                    lk = _link(msg)
                    self.links[lk.index] = lk
        except Exception as e:
            log.error("interface monitor: %s", e)
            sock.close()
            self._ready.set()
            return
        self._ready.set()
        marshal = MarshalRtnl()
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([sock], [], [], 0.5)
                if not ready:
                    continue
                data = sock.recv(1 << 16)
                for msg in marshal.parse(data):
                    event = msg.get("event")
                    if event not in ("RTM_NEWLINK", "RTM_DELLINK"):
                        continue
                    lk = _link(msg)
                    if event == "RTM_NEWLINK":
                        known = self.links.get(lk.index)
                        self.links[lk.index] = lk
                        if known is None or known.name != lk.name:
                            self.on_change("new", lk)
                    else:
                        self.links.pop(lk.index, None)
                        self.on_change("del", lk)
        except Exception as e:
            log.error("interface monitor stopped: %s", e)
        finally:
            sock.close()
