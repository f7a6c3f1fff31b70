"""The transparent listeners that the kernel hands flows to.

They are bound to loopback (127.0.0.1 and ::1): `bpf_sk_assign` delivers
the LAN's packets to them whatever their destination, while nobody can
reach the port by connecting to the router. The kernel finds them through
the `listeners` sockmap, not by address.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from dataclasses import dataclass, field

from daetui.abi.constants import ABI
from daetui.net.sockopts import IP_RECVORIGDSTADDR, IPV6_RECVORIGDSTADDR, SOL_IPV6, set_transparent

log = logging.getLogger("daetui.control")

LOOPBACK = {4: "127.0.0.1", 6: "::1"}


@dataclass
class Listeners:
    """TCP and UDP listeners per IP version, for relayed flows and for DNS."""

    port: int
    tcp: dict[int, socket.socket] = field(default_factory=dict)
    udp: dict[int, socket.socket] = field(default_factory=dict)
    # The DNS controller's: the kernel hands them the LAN's port-53 flows, so
    # whatever arrives on them is DNS without asking the kernel (ephemeral ports).
    dns_tcp: dict[int, socket.socket] = field(default_factory=dict)
    dns_udp: dict[int, socket.socket] = field(default_factory=dict)

    def slots(self) -> dict[int, socket.socket]:
        """The sockmap slots the kernel programs look up."""
        out = {}
        for table, v4, v6 in ((self.tcp, ABI.LISTENER_TCP4, ABI.LISTENER_TCP6),
                              (self.udp, ABI.LISTENER_UDP4, ABI.LISTENER_UDP6),
                              (self.dns_tcp, ABI.LISTENER_DNS_TCP4, ABI.LISTENER_DNS_TCP6),
                              (self.dns_udp, ABI.LISTENER_DNS_UDP4, ABI.LISTENER_DNS_UDP6)):
            for v, s in table.items():
                out[v4 if v == 4 else v6] = s
        return out

    def close(self) -> None:
        for table in (self.tcp, self.udp, self.dns_tcp, self.dns_udp):
            for s in table.values():
                with contextlib.suppress(OSError):
                    s.close()
            table.clear()


def make_listener(version: int, kind: socket.SocketKind, port: int) -> socket.socket:
    """A transparent listener on loopback:port (0: any port) for IP `version`, non-blocking."""
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    s = socket.socket(family, kind)
    try:
        set_transparent(s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if version == 6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_DGRAM:
            if version == 4:
                s.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
            else:
                s.setsockopt(SOL_IPV6, IPV6_RECVORIGDSTADDR, 1)
        s.bind((LOOPBACK[version], port))
        if kind == socket.SOCK_STREAM:
            s.listen(4096)
        s.setblocking(False)
        return s
    except BaseException:
        s.close()
        raise


def open_listeners(port: int) -> Listeners:
    """TCP and UDP listeners on loopback:port; IPv6 ones only where IPv6 works."""
    out = Listeners(port)
    try:
        out.tcp[4] = make_listener(4, socket.SOCK_STREAM, port)
        out.udp[4] = make_listener(4, socket.SOCK_DGRAM, port)
    except OSError as e:
        out.close()
        raise OSError(e.errno, f"tproxy_port {port}: {e.strerror}") from None
    try:
        out.dns_tcp[4] = make_listener(4, socket.SOCK_STREAM, 0)
        out.dns_udp[4] = make_listener(4, socket.SOCK_DGRAM, 0)
    except OSError as e:
        out.close()
        raise OSError(e.errno, f"DNS listeners: {e.strerror}") from None
    try:
        out.tcp[6] = make_listener(6, socket.SOCK_STREAM, port)
        out.udp[6] = make_listener(6, socket.SOCK_DGRAM, port)
        out.dns_tcp[6] = make_listener(6, socket.SOCK_STREAM, 0)
        out.dns_udp[6] = make_listener(6, socket.SOCK_DGRAM, 0)
    except OSError as e:
        log.warning("no IPv6 listeners (%s): IPv6 flows for the control plane will pass as direct", e)
        for d in (out.tcp, out.udp, out.dns_tcp, out.dns_udp):
            s = d.pop(6, None)
            if s is not None:
                s.close()
    return out
