"""The DNS controller wired into the control plane: where it listens, how its upstreams are reached,
and where its answers go.

The kernel hands the LAN's port-53 flows to the controller's own transparent
listeners; `dns.bind` adds a plain DNS service on an address of the router --
without an address (":53"), on the LAN interfaces' addresses only, never on
every address (the WAN's included: an open resolver for the internet). Those
addresses are read when it starts and on each reload.
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
import struct

import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype

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
from daetui.routing.dns_rules import LookupFacts

log = logging.getLogger("daetui.control")

EXPIRE_EVERY = 1.0   # seconds between sweeps of the names whose TTL ran out
IP_FREEBIND = 15     # <linux/in.h>: bind an address the interface does not hold yet (IPv6 DAD, link down)
IPV6_FREEBIND = 78   # <linux/in6.h>

BindTarget = tuple[str, int, int]   # address, port, interface index (IPv6 link-local only; else 0)


def lan_addresses(names: tuple[str, ...]) -> list[tuple[str, int]]:
    """The addresses of the interfaces `names`: (address, interface index for IPv6 link-local, else 0).

    Blocking (netlink, pyroute2's own loop): called off the event loop.
    """
    from pyroute2 import IPRoute

    out: list[tuple[str, int]] = []
    with IPRoute() as ipr:
        for name in names:
            found = ipr.link_lookup(ifname=name)
            if not found:
                continue
            for msg in ipr.get_addr(index=found[0]):
                addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")  # type: ignore[attr-defined]
                if addr:
                    out.append((addr, found[0] if addr[:4].lower() == "fe80" else 0))
    return out


def bind_targets(bind: str, lan: list[tuple[str, int]]) -> list[BindTarget]:
    """Where `dns.bind` serves: its own address, or (none given) each of the LAN's; ValueError if unreadable."""
    host, _, port_text = bind.rpartition(":")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    host = host.strip("[]")
    if host:
        return [(host, port, 0)]
    return [(addr, port, scope) for addr, scope in lan]


class DnsService:
    """The DNS controller, its servers, and the names it teaches the kernel."""

    def __init__(self, config: Config, sync: KernelSync, decider: Decider, outbounds: Outbounds) -> None:
        self.config = config
        self.sync = sync
        self.outbounds = outbounds
        g = config.global_
        self.controller = DnsController(config.dns, route=decider.upstream, feed=sync.feed,
                                        mark=g.so_mark_from_dae, bootstrap_resolver=g.resolver,
                                        kernel_names=lambda: sync.kernel_names, dial=self._upstream_dialer,
                                        kernel_evicted=lambda: sync.domain_evicted,
                                        kernel_map=lambda: sync.program)
        # A name that leaves the kernel's books early retires every answer the kernel gives itself.
        sync.names_lost = self.controller.kernel.bump
        self.server: DnsServer | None = None
        self._bound: list[socket.socket] = []
        self._bound_at: list[BindTarget] = []
        self._binding: asyncio.Task[None] | None = None
        self._expiry: asyncio.Task[None] | None = None

    def start(self, listeners: Listeners) -> None:
        """Serve the hijacked flows' listeners and `dns.bind`; expire names from now on."""
        self.controller.start()
        self.controller.kernel.bump()   # the kernel program is loaded now: dns_conf written
        self.server = DnsServer(self.controller, self._ifname)
        for sock in listeners.dns_udp.values():
            self.server.serve_udp(sock, hijacked=True)
        for sock in listeners.dns_tcp.values():
            self.server.serve_tcp(sock, hijacked=True)
        self._rebind()
        self._expiry = asyncio.ensure_future(self._expire_names())

    async def stop(self) -> None:
        if self._binding is not None:
            self._binding.cancel()
            await asyncio.gather(self._binding, return_exceptions=True)
        self._close_bound()
        if self.server is not None:
            await self.server.stop()
        await self.controller.stop()
        if self._expiry is not None:
            self._expiry.cancel()
            await asyncio.gather(self._expiry, return_exceptions=True)

    def configure(self, new: Config) -> None:
        """A reload: the new [dns] and the marks and resolver of the new [global]."""
        old, self.config = self.config, new
        self.controller.mark = new.global_.so_mark_from_dae
        self.controller.bootstrap_resolver = new.global_.resolver
        self.controller.configure(new.dns)
        # Again on each reload: the bind, or the LAN's interfaces or their addresses, may have changed.
        if new.dns.bind or old.dns.bind:
            self._rebind()

    def _rebind(self) -> None:
        """Serve `dns.bind` as configured: at once for an address, once the LAN's are read for none."""
        if self._binding is not None:
            self._binding.cancel()
            self._binding = None
        bind = self.config.dns.bind
        if bind and bind.rpartition(":")[0].strip("[]") == "":
            self._binding = asyncio.ensure_future(self._bind_lan(bind))
        else:
            self.bind(bind, [])

    async def _bind_lan(self, bind: str) -> None:
        try:
            lan = await asyncio.to_thread(lan_addresses, self.config.global_.lan_interface)
        except Exception as e:
            log.error("dns.bind %s: the LAN interfaces' addresses: %s", bind, e)
            return
        self.bind(bind, lan)

    def bind(self, bind: str, lan: list[tuple[str, int]]) -> None:
        """Serve plain DNS on `dns.bind` too ("" for none; no address: `lan`'s); a failure is logged, not fatal."""
        if not bind or self.server is None:
            self._close_bound()
            return
        try:
            targets = bind_targets(bind, lan)
        except ValueError as e:
            log.error("dns.bind %s: %s", bind, e)
            self._close_bound()
            return
        if targets == self._bound_at:
            return  # nothing changed: the sockets stay
        self._close_bound()
        if not targets:
            log.warning("dns.bind %s: the LAN interfaces (%s) have no address: not served", bind,
                        ", ".join(self.config.global_.lan_interface) or "none configured")
            return
        served = []
        for target in targets:
            socks = self._bind_one(target)
            if socks is None:
                continue
            u, t = socks
            self.server.serve_udp(u, hijacked=False)
            self.server.serve_tcp(t, hijacked=False)
            self._bound_at.append(target)
            served.append(f"[{target[0]}]:{target[1]}" if ":" in target[0] else f"{target[0]}:{target[1]}")
        if served:
            log.info("dns: serving on %s (UDP and TCP)", ", ".join(served))

    def _bind_one(self, target: BindTarget) -> tuple[socket.socket, socket.socket] | None:
        host, port, scope = target
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        addr = (host, port, 0, scope) if family == socket.AF_INET6 else (host, port)
        made: list[socket.socket] = []
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                s = socket.socket(family, kind)
                made.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
                else:
                    s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
                s.bind(addr)
                if kind == socket.SOCK_STREAM:
                    s.listen(128)
        except OSError as e:
            log.error("dns.bind %s port %d: %s", host, port, e)
            for s in made:
                s.close()
            return None
        self._bound += made
        return made[0], made[1]

    def _close_bound(self) -> None:
        if self.server is not None and self._bound:
            self.server.unserve(self._bound)
        for s in self._bound:
            s.close()
        self._bound.clear()
        self._bound_at.clear()

    async def lookup(self, name: str, qtype: str = "A") -> DnsTrace:
        """Resolve through the controller (the console's query box)."""
        return await self.controller.lookup(name, qtype)

    def flush(self) -> int:
        return self.controller.flush()

    async def resolve_own(self, host: str, facts: LookupFacts) -> str:
        """A name of daetui's own lookups (a subscription's or a node's server): through the upstream a
        sub()/node()/subnode() request rule names for it (dae v2), else through the bootstrap resolver."""
        compiled = self.config.dns.compiled
        name = compiled.request.internal_upstream(facts) if compiled is not None else None
        up = self.controller.upstreams.get(name) if name else None
        if up is None:
            return await self.bootstrap_resolve(host)
        log.debug("dns: %s %s resolved through upstream %s (dns rule)", facts.kind, host, name)
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            question = dns.name.from_text(host).to_wire() + struct.pack("!HH", rdtype, dns.rdataclass.IN)
            msg = dns.message.from_wire(await up.query(question))
            for rrset in msg.answer:
                if rrset.rdtype == rdtype:
                    return str(next(iter(rrset)))
        raise OSError(f"{host}: upstream {name} knows no address for it")

    async def bootstrap_resolve(self, host: str) -> str:
        """A name's address from global.fallback_resolver (subscriptions' servers)."""
        g = self.config.global_
        return await bootstrap_resolve(g.resolver, host, g.so_mark_from_dae, 5.0)

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
