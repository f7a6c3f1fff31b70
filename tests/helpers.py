"""Clients in the lab's LAN, daemons in its router, and views of the router's state."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import dns.message
import dns.query

import testkit.daemon
from daetui import aio
from daetui.config.load import parse_config
from daetui.control.plane import ControlPlane, Snapshot
from daetui.control.runner import ControlPlaneThread
from daetui.lab.topology import HTTP_PORT, Lab
from daetui.net.netns import netns
from daetui.net.stream import Dialer, WrappedStream
from testkit.proxycheck import read_to_end

ROOT = testkit.daemon.ROOT  # the checkout
T = TypeVar("T")


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def lan_socket(lab: Lab, host: str, kind: socket.SocketKind = socket.SOCK_STREAM) -> socket.socket:
    """A socket created inside the lab's LAN namespace."""
    with netns(lab.lan):
        return socket.socket(family_of(host), kind)


def lan_connect(lab: Lab, host: str, port: int, timeout: float = 5.0, sport: int = 0) -> socket.socket:
    """A TCP connection from the LAN client to host:port (from port `sport` if given), blocking with `timeout`."""
    s = lan_socket(lab, host)
    try:
        s.settimeout(timeout)
        if sport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("::" if ":" in host else "0.0.0.0", sport))
        s.connect((host, port))
    except BaseException:
        s.close()
        raise
    return s


def _recv_all(s: socket.socket) -> bytes:
    chunks = []
    while data := s.recv(1 << 16):
        chunks.append(data)
    return b"".join(chunks)


def http_get(lab: Lab, host: str, path: str = "/", port: int = 80, timeout: float = 5.0, name: str = "",
             sport: int = 0) -> bytes:
    """GET from a lab host, as the LAN client (Host: `name`, else the address); returns the body."""
    s = lan_connect(lab, host, port, timeout, sport)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {name or host}\r\nConnection: close\r\n\r\n".encode())
        resp = _recv_all(s)
    finally:
        s.close()
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


def tcp_echo(lab: Lab, host: str, payload: bytes, port: int = 7, timeout: float = 10.0,
             sport: int = 0) -> bytes:
    """Send `payload` to the echo server, half-close, and return what came back."""
    s = lan_connect(lab, host, port, timeout, sport)
    try:
        sender = threading.Thread(target=lambda: (s.sendall(payload), s.shutdown(socket.SHUT_WR)))
        sender.start()
        out = _recv_all(s)
        sender.join(timeout)
        return out
    finally:
        s.close()


def echoes(sock: socket.socket, payload: bytes) -> bool:
    """Whether an open connection to an echo server sends `payload` back whole."""
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(len(payload) - len(got))
        if not chunk:
            break
        got += chunk
    return got == payload


def tcp_connect_fails(lab: Lab, host: str, port: int = 80, timeout: float = 2.0) -> bool:
    """True when a TCP connection from the LAN does not get through."""
    s = lan_socket(lab, host)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
    except OSError:
        return True
    finally:
        s.close()
    return False


def udp_exchange(lab: Lab, host: str, payload: bytes, port: int = 7, sport: int = 0, timeout: float = 2.0,
                 count: int = 1) -> list[bytes]:
    """Send `count` datagrams from one socket; return the replies that came back in time."""
    s = lan_socket(lab, host, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    replies = []
    try:
        if sport:
            s.bind(("::" if ":" in host else "0.0.0.0", sport))
        for _ in range(count):
            s.sendto(payload, (host, port))
            try:
                replies.append(s.recv(65535))
            except TimeoutError:
                pass
    finally:
        s.close()
    return replies


def send_udp(lab: Lab, host: str, dport: int, sport: int, dscp: int = 0) -> None:
    """One datagram from the LAN's source port `sport`, marked with `dscp`; no answer awaited."""
    s = lan_socket(lab, host, socket.SOCK_DGRAM)
    try:
        if ":" in host:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, dscp << 2)
            s.bind(("::", sport))
        else:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, dscp << 2)
            s.bind(("0.0.0.0", sport))
        s.sendto(b"not quic", (host, dport))
    finally:
        s.close()


def lan_query(lab: Lab, server: str, name: str, rdtype: str = "A", tcp: bool = False, timeout: float = 5.0,
              edns: bool = True) -> dns.message.Message:
    """Ask `server` from the LAN client, as its stub resolver would."""
    q = dns.message.make_query(name, rdtype, use_edns=0 if edns else False)
    s = lan_socket(lab, server, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    try:
        if tcp:
            s.settimeout(timeout)
            s.connect((server, 53))
        s.setblocking(False)
        if tcp:
            return dns.query.tcp(q, server, timeout, sock=s)
        return dns.query.udp(q, server, timeout, sock=s)
    finally:
        s.close()


def addresses(msg: dns.message.Message) -> list[str]:
    """The A and AAAA addresses of an answer, sorted."""
    return sorted(rd.address for rrset in msg.answer if rrset.rdtype in (1, 28) for rd in rrset)


# -- servers a test plays itself, in the wan namespace -------------------------------

def wan_listener(lab: Lab, host: str, port: int = 0) -> socket.socket:
    """A TCP listener of the lab's wan namespace on host:port (0: a free one; see getsockname)."""
    with netns(lab.wan):
        return socket.create_server((host, port), family=family_of(host))


def wan_udp(lab: Lab, host: str, port: int = 0) -> socket.socket:
    """A UDP socket of the lab's wan namespace bound to host:port (0: a free one)."""
    with netns(lab.wan):
        s = socket.socket(family_of(host), socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    return s


# -- the control plane, in the router namespace ------------------------------------

@contextmanager
def plane_in_lab(lab: Lab, config_text: str, run_dir: Path, ns: str | None = None) -> Iterator[ControlPlaneThread]:
    """A control plane on its own thread inside the router namespace (or namespace `ns` of the lab)."""
    cfg = parse_config(config_text, "test.toml")
    runner = ControlPlaneThread(cfg, run_dir=str(run_dir), netns=ns or lab.router)
    runner.start()
    try:
        yield runner
    finally:
        runner.stop()


def snapshot(runner: ControlPlaneThread) -> Snapshot:
    plane: ControlPlane = runner.plane  # type: ignore[assignment]
    return runner.call(plane.snapshot)


def newest_conn(runner: ControlPlaneThread, dst: tuple[str, int], proto: str = "tcp") -> Any:
    """The newest relayed connection to `dst` (open or closed), waited for."""
    return wait_for(lambda: max((c for c in snapshot(runner).connections if c.dst == dst and c.proto == proto),
                                key=lambda c: c.id, default=None))


def kernel_flow(runner: ControlPlaneThread, host: str, dport: int, sport: int, proto: str = "udp") -> Any:
    """The kernel's record (routing_tuples) of the LAN's flow from `sport` to host:dport, waited for."""
    dst = ipaddress.ip_address(host)
    return wait_for(lambda: next((f for f in snapshot(runner).kernel_flows if f.key.dst == dst
                                  and f.key.dport == dport and f.key.sport == sport and f.key.proto == proto), None))


def upstream_rows(runner: ControlPlaneThread) -> dict[str, Any]:
    """The DNS upstreams as the controller reports them, by name."""
    return {u.name: u for u in snapshot(runner).dns.upstreams}


def wait_for(fn: Callable[[], T | None], timeout: float = 5.0, interval: float = 0.05) -> T:
    """Poll `fn` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


# -- the daemon as a process, for what a thread cannot show (SIGKILL) --------------------

class Daemon(testkit.daemon.Daemon):
    """`daetui --no-ui` as a process in the lab's router namespace (testkit.daemon.Daemon); its log is `log()`."""

    def __init__(self, lab: Lab, config_path: Path, run_dir: Path) -> None:
        super().__init__(lab.router, config_path, run_dir)
        self.lab = lab


def run_in(lab_ns: str, *argv: str) -> str:
    """The output of `argv` run in namespace `lab_ns`."""
    return testkit.daemon.ns_exec(lab_ns, *argv, timeout=30).stdout


def router_state(lab: Lab) -> dict[str, Any]:
    """What daetui may touch in the router namespace, as text to compare."""
    ns = lab.router
    links = run_in(ns, "ip", "-o", "link", "show")
    names = [ln.split(":")[1].strip().split("@")[0] for ln in links.splitlines()]
    state: dict[str, Any] = {
        "ip rule": run_in(ns, "ip", "rule"),
        "ip -6 rule": run_in(ns, "ip", "-6", "rule"),
        "ip route show table all": run_in(ns, "ip", "route", "show", "table", "all"),
        "ip -6 route show table all": run_in(ns, "ip", "-6", "route", "show", "table", "all"),
    }
    for name in names:
        for hook in ("ingress", "egress"):
            state[f"tc filter {name} {hook}"] = run_in(ns, "tc", "filter", "show", "dev", name, hook)
        state[f"tc qdisc {name}"] = run_in(ns, "tc", "qdisc", "show", "dev", name)
    for key in ("net.ipv4.ip_forward", "net.ipv4.conf.all.send_redirects", "net.ipv4.conf.lan0.send_redirects",
                "net.ipv6.conf.all.forwarding"):
        state[key] = run_in(ns, "sysctl", "-n", key).strip()
    return state


def assert_same_state(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Fail with a readable diff of what changed in the router namespace."""
    import difflib

    diffs = []
    for k in sorted(set(before) | set(after)):
        b, a = str(before.get(k, "")), str(after.get(k, ""))
        if a != b:
            diffs.append(f"== {k}\n" + "\n".join(difflib.unified_diff(b.splitlines(), a.splitlines(),
                                                                       "before", "after", lineterm="")))
    assert not diffs, "router state changed:\n" + "\n".join(diffs)


# -- outbounds -------------------------------------------------------------------------

def in_router(lab: Lab, coro: Awaitable[T], timeout: float = 20.0,
              loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> T:
    """Run `coro` with its sockets made in the router namespace, bounded by `timeout`.

    On daetui's own event loop (uvloop), unless `loop_factory` gives another.
    """
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    with netns(lab.router), asyncio.Runner(loop_factory=loop_factory or aio.loop_factory()) as runner:
        return runner.run(bounded())


async def dial_http_get(dialer: Dialer, host: str, path: str, port: int = HTTP_PORT) -> tuple[bytes, bytes]:
    """GET `path` from the lab's web server `host` through `dialer` (the connection closed after): (head, body)."""
    stream = await dialer.connect(host, port)
    try:
        await stream.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        head, _, body = (await read_to_end(stream)).partition(b"\r\n\r\n")
    finally:
        stream.close()
    return head, body



class OpaqueStream(WrappedStream):
    """A stream that hides its socket (raw is None), as an encrypting node in a chain gives."""


class OpaqueDialer:
    """A `via` whose streams hide their socket: the dialer on top must not splice or peek."""

    name = "opaque"

    async def connect(self, host: str, port: int) -> OpaqueStream:
        from daetui.outbound.direct import DirectDialer

        return OpaqueStream(await DirectDialer(0).connect(host, port))

    async def datagrams(self) -> Any:
        from daetui.net.stream import DialError

        raise DialError("no UDP")


# -- raw frames from the LAN: churn of the kernel's flow table -------------------------

def lan_frames(lab: Lab, frames: Iterator[bytes] | list[bytes], cpu: int | None = None) -> int:
    """Put raw Ethernet frames on the LAN client's link (to the router); how many were sent. With
    `cpu`, the calling thread runs there while it sends (a veth's receiver runs on the sender's CPU)."""
    import os

    from daetui.lab.topology import ADDR

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    with netns(lab.lan):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    n = 0
    try:
        s.bind((ADDR.client_ifname, 0))
        for frame in frames:
            try:
                s.send(frame)
            except BlockingIOError:
                time.sleep(0.001)  # the veth's queue is full: give it a moment, drop this one
                continue
            n += 1
    finally:
        s.close()
    return n


def udp_churn(lab: Lab, src: str, dst: str, count: int, dport: int = 9, first: int = 0, repeat: int = 2) -> int:
    """`count` UDP flows from `src`, each of its own (distinct source port and, past 64511 of them,
    source address), to `dst` (a host the rules send direct), `repeat` datagrams each: new
    routing_tuples entries that push idle ones out of the LRU. The kernel's LRU resists a scan: an
    entry seen once is evicted before any seen twice, so flows of one datagram never push out an
    idle flow that has had traffic; flows of two do. Returns the datagrams sent."""
    import os

    from daetui.lab.topology import LAN_MAC, ROUTER_LAN_MAC
    from testkit.packets import Packet

    base = ipaddress.ip_address(src)
    cpus = sorted(os.sched_getaffinity(0))

    def frames(part: int) -> Iterator[bytes]:
        for i in range(first + part, first + count, len(cpus)):
            ip = base + (i // 64511) * 256 if base.version == 4 else base + (i // 64511)
            frame = Packet(str(ip), dst, 1024 + i % 64511, dport, "udp", src_mac=LAN_MAC,
                           dst_mac=ROUTER_LAN_MAC, payload=b"churn").build()
            for _ in range(repeat):
                yield frame

    # One sender per CPU: the kernel's LRU keeps free and pending entries per CPU, and an entry
    # last touched on a CPU that no churn reaches can outlive any amount of it (on a router,
    # receive queues spread the LAN's flows over every CPU too).
    sent = [0] * len(cpus)

    def send(part: int) -> None:
        sent[part] = lan_frames(lab, frames(part), cpu=cpus[part])

    threads = [threading.Thread(target=send, args=(k,), daemon=True) for k in range(len(cpus))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return sum(sent)


@contextmanager
def early_demux_off(lab: Lab) -> Iterator[None]:
    """The router without TCP early demux (common on routers, for forwarding): a packet of a relayed
    flow reaches the relay's socket only if lan_ingress hands it there; restored after."""
    argv = ["ip", "netns", "exec", lab.router, "sysctl", "-qn"]
    import subprocess

    old = subprocess.run([*argv, "net.ipv4.tcp_early_demux"], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["ip", "netns", "exec", lab.router, "sysctl", "-qw", "net.ipv4.tcp_early_demux=0"], check=True)
    try:
        yield
    finally:
        subprocess.run(["ip", "netns", "exec", lab.router, "sysctl", "-qw", f"net.ipv4.tcp_early_demux={old}"],
                       check=True)
