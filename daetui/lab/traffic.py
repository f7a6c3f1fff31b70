"""Steady, varied traffic from the lab's LAN client: what the demo shows flowing.

Each round makes a handful of real flows (HTTP, a download, UDP echo, one
to the blocked host) over IPv4 and IPv6. Bounded by a stop event and a
per-flow timeout; all of it stays inside the lab.
"""

from __future__ import annotations

import random
import socket
import threading

from daetui.lab.topology import ADDR, ECHO_PORT, HTTP_PORT, Lab
from daetui.net.netns import netns


def _sock(lab: Lab, host: str, kind: socket.SocketKind) -> socket.socket:
    with netns(lab.lan):
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
    s.settimeout(3)
    return s


def http_get(lab: Lab, host: str, path: str) -> int:
    """Fetch a path; returns the bytes received (0 on failure)."""
    s = _sock(lab, host, socket.SOCK_STREAM)
    got = 0
    try:
        s.connect((host, HTTP_PORT))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        while data := s.recv(1 << 16):
            got += len(data)
    except OSError:
        pass
    finally:
        s.close()
    return got


def resolve(lab: Lab, name: str, server: str = ADDR.dns4[0]) -> str | None:
    """An address of `name` as the LAN client's resolver gets it (None without an answer)."""
    import dns.message
    import dns.query

    s = _sock(lab, server, socket.SOCK_DGRAM)
    s.setblocking(False)
    try:
        r = dns.query.udp(dns.message.make_query(name, "A"), server, timeout=1.0, sock=s)
    except Exception:
        return None
    finally:
        s.close()
    return next((rd.address for rrset in r.answer if rrset.rdtype == 1 for rd in rrset), None)


def udp_echo(lab: Lab, host: str, n: int = 3) -> int:
    s = _sock(lab, host, socket.SOCK_DGRAM)
    s.settimeout(0.5)
    got = 0
    try:
        for i in range(n):
            s.sendto(f"ping {i}".encode(), (host, ECHO_PORT))
            try:
                got += len(s.recv(2048))
            except TimeoutError:
                pass
    finally:
        s.close()
    return got


class TrafficGenerator:
    """A thread making a round of flows every `interval` seconds until stopped."""

    def __init__(self, lab: Lab, interval: float = 1.0, seed: int = 1) -> None:
        self.lab = lab
        self.interval = interval
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.rounds = 0
        self.thread = threading.Thread(target=self._run, name="daetui-traffic", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(10)

    def one_round(self) -> None:
        a = ADDR
        v = self.rng.choice([0, 1])
        hosts = a.hosts4 if v == 0 else a.hosts6
        http_get(self.lab, hosts[0], "/whoami")                          # through the control plane
        http_get(self.lab, hosts[1], "/")                                # web to host 2: control plane
        http_get(self.lab, hosts[0], f"/bytes/{self.rng.randint(1, 4) * 256 * 1024}")  # a download
        udp_echo(self.lab, hosts[1])                                     # direct: the kernel only
        udp_echo(self.lab, hosts[0])                                     # UDP through the control plane
        # A name, then a flow to it: the kernel routes it by the name DNS gave it.
        name = self.rng.choice(["cn.lab.test", "www.example.test", "api.example.test", "short.example.test"])
        addr = resolve(self.lab, name)
        if addr is not None and name.endswith("lab.test"):
            udp_echo(self.lab, addr)
        if self.rounds % 5 == 0:
            s = _sock(self.lab, hosts[2], socket.SOCK_STREAM)            # blocked: dropped in the kernel
            s.settimeout(0.3)
            try:
                s.connect((hosts[2], HTTP_PORT))
            except OSError:
                pass
            finally:
                s.close()

    def _run(self) -> None:
        while not self.stop_event.is_set():
            self.one_round()
            self.rounds += 1
            self.stop_event.wait(self.interval)
