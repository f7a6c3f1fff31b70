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

from daetui.bpfabi import ABI
from daetui.control.sockopts import IP_RECVORIGDSTADDR, IPV6_RECVORIGDSTADDR, SOL_IPV6, set_transparent

log = logging.getLogger("daetui.control")

LOOPBACK = {4: "127.0.0.1", 6: "::1"}


@dataclass
class Listeners:
    """TCP and UDP listeners per IP version."""

    port: int
    tcp: dict[int, socket.socket] = field(default_factory=dict)
    udp: dict[int, socket.socket] = field(default_factory=dict)

    def slots(self) -> dict[int, socket.socket]:
        """The sockmap slots the kernel programs look up."""
        out = {}
        for v, s in self.tcp.items():
            out[ABI.LISTENER_TCP4 if v == 4 else ABI.LISTENER_TCP6] = s
        for v, s in self.udp.items():
            out[ABI.LISTENER_UDP4 if v == 4 else ABI.LISTENER_UDP6] = s
        return out

    def close(self) -> None:
        for s in [*self.tcp.values(), *self.udp.values()]:
            with contextlib.suppress(OSError):
                s.close()
        self.tcp.clear()
        self.udp.clear()


def _listener(version: int, kind: socket.SocketKind, port: int) -> socket.socket:
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
        out.tcp[4] = _listener(4, socket.SOCK_STREAM, port)
        out.udp[4] = _listener(4, socket.SOCK_DGRAM, port)
    except OSError as e:
        out.close()
        raise OSError(e.errno, f"tproxy_port {port}: {e.strerror}") from None
    try:
        out.tcp[6] = _listener(6, socket.SOCK_STREAM, port)
        out.udp[6] = _listener(6, socket.SOCK_DGRAM, port)
    except OSError as e:
        log.warning("no IPv6 listeners (%s): IPv6 flows for the control plane will pass as direct", e)
        for v in (6,):
            for d in (out.tcp, out.udp):
                s = d.pop(v, None)
                if s is not None:
                    s.close()
    return out
