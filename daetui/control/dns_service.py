"""The DNS controller wired into the control plane: where it listens, how its upstreams are reached,
and where its answers go.

The kernel hands the LAN's port-53 flows to the controller's own transparent
listeners; `dns.bind` adds a plain DNS service on an address of the router.
An upstream is reached the way the routing rules send the router's own
connection to it (Decider.upstream): directly, refused by `block`, or through
a group's node. Every answer's names reach the kernel before the reply leaves
(KernelSync.feed) and leave it when their TTL runs out.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

from daetui.abi.flowrecord import FlowKey
from daetui.config.model import Config
from daetui.control.connections import Endpoint
from daetui.control.decision import Decider
from daetui.control.kernel_sync import KernelSync
from daetui.control.listeners import Listeners
from daetui.dns.controller import DnsController
from daetui.dns.serve import DnsServer
from daetui.dns.state import DnsTrace
from daetui.dns.upstream import bootstrap_resolve
from daetui.net.stream import Dialer
from daetui.outbound.manager import Outbounds

log = logging.getLogger("daetui.control")

EXPIRE_EVERY = 1.0   # seconds between sweeps of the names whose TTL ran out


class DnsService:
    """The DNS controller, its servers, and the names it teaches the kernel."""

    def __init__(self, config: Config, sync: KernelSync, decider: Decider, outbounds: Outbounds) -> None:
        self.config = config
        self.sync = sync
        self.outbounds = outbounds
        g = config.global_
        self.controller = DnsController(config.dns, route=decider.upstream, feed=sync.feed,
                                        mark=g.so_mark_from_dae, bootstrap_resolver=g.fallback_resolver,
                                        kernel_names=lambda: len(sync.names), dial=self._upstream_dialer)
        self.server: DnsServer | None = None
        self._bound: list[socket.socket] = []
        self._expiry: asyncio.Task[None] | None = None

    def start(self, listeners: Listeners) -> None:
        """Serve the hijacked flows' listeners and `dns.bind`; expire names from now on."""
        self.controller.start()
        self.server = DnsServer(self.controller, self._ifname)
        for sock in listeners.dns_udp.values():
            self.server.serve_udp(sock, hijacked=True)
        for sock in listeners.dns_tcp.values():
            self.server.serve_tcp(sock, hijacked=True)
        self.bind(self.config.dns.bind)
        self._expiry = asyncio.ensure_future(self._expire_names())

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
        self._close_bound()
        await self.controller.stop()
        if self._expiry is not None:
            self._expiry.cancel()
            await asyncio.gather(self._expiry, return_exceptions=True)

    def configure(self, new: Config) -> None:
        """A reload: the new [dns] and the marks and resolver of the new [global]."""
        old, self.config = self.config, new
        self.controller.mark = new.global_.so_mark_from_dae
        self.controller.bootstrap_resolver = new.global_.fallback_resolver
        self.controller.configure(new.dns)
        if new.dns.bind != old.dns.bind:
            self.bind(new.dns.bind)

    def bind(self, bind: str) -> None:
        """Serve plain DNS on `dns.bind` too ("" for none); a failure is logged, not fatal."""
        self._close_bound()
        if not bind or self.server is None:
            return
        host, _, port = bind.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            u = socket.socket(family, socket.SOCK_DGRAM)
            self._bound.append(u)
            u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            u.bind((host, int(port)))
            t = socket.socket(family, socket.SOCK_STREAM)
            self._bound.append(t)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            t.bind((host, int(port)))
            t.listen(128)
        except (OSError, ValueError) as e:
            log.error("dns.bind %s: %s", bind, e)
            self._close_bound()
            return
        self.server.serve_udp(u, hijacked=False)
        self.server.serve_tcp(t, hijacked=False)
        log.info("dns: serving on %s (UDP and TCP)", bind)

    def _close_bound(self) -> None:
        for s in self._bound:
            s.close()
        self._bound.clear()

    async def lookup(self, name: str, qtype: str = "A") -> DnsTrace:
        """Resolve through the controller (the console's query box)."""
        return await self.controller.lookup(name, qtype)

    def flush(self) -> int:
        return self.controller.flush()

    async def bootstrap_resolve(self, host: str) -> str:
        """A name's address from global.fallback_resolver (subscriptions' servers)."""
        g = self.config.global_
        return await bootstrap_resolve(g.fallback_resolver, host, g.so_mark_from_dae, 5.0)

    def _ifname(self, client: Endpoint, server: Endpoint) -> str | None:
        """The LAN interface of a DNS-over-TCP flow, from the kernel's record of it."""
        kflow = self.sync.flow(FlowKey(ipaddress.ip_address(client[0]), client[1], ipaddress.ip_address(server[0]),
                                       server[1], "tcp"))
        if kflow is None:
            return None
        try:
            return socket.if_indextoname(kflow.ifindex)
        except OSError:
            return None

    def _upstream_dialer(self, outbound: str, family: int) -> tuple[Dialer, str] | None:
        """A DNS upstream routed to a proxy group: the group's node now (None: not a group of nodes)."""
        dialer, node = self.outbounds.dialer(outbound, family)
        return (dialer, node) if node is not None else None

    async def _expire_names(self) -> None:
        """Names whose TTL ran out leave the kernel's domain map."""
        while True:
            await asyncio.sleep(EXPIRE_EVERY)
            self.sync.expire()
