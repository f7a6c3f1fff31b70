"""Hot reload under load: no flow dropped, no byte lost; bad configs change nothing.

50 long-lived TCP flows through the control plane, one TCP flow the kernel
forwards, and a UDP stream through the control plane keep running, checked
byte for byte, across 20 reloads of the daemon's config file -- some change
the rules, some are invalid -- through `daetui reload` and SIGUSR1.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import threading
import time

import pytest
from helpers import http_get, lan_connect, lan_socket, run_in, wait_for

from daetui.lab.topology import ADDR
from daetui.net.netns import netns

pytestmark = pytest.mark.kernel

BASE = """# reload test
[global]
lan_interface = ["lan0"]

[group.proxy]

[routing]
rules = [
  "dip(203.0.113.10, '2001:db8:3::10') -> proxy",
  # EXTRA
]
fallback = "direct"
"""
class Streams:
    """The traffic that must survive: echoed TCP flows and a UDP stream, checked as they go."""

    def __init__(self, lab, n_tcp: int = 50) -> None:
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.tcp_bytes = 0
        self.udp_sent = self.udp_got = 0
        self.tcp = [lan_connect(lab, ADDR.hosts4[0], 7, timeout=10) for _ in range(n_tcp)]
        self.direct = lan_connect(lab, ADDR.hosts4[1], 7, timeout=10)
        self.udp = lan_socket(lab, ADDR.hosts4[0], socket.SOCK_DGRAM)
        self.udp.settimeout(2)
        self.threads = [threading.Thread(target=self._tcp_loop, daemon=True),
                        threading.Thread(target=self._udp_loop, daemon=True)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _exchange(self, s: socket.socket, rng: random.Random) -> None:
        data = rng.randbytes(rng.randint(1, 8192))
        s.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = s.recv(len(data) - len(got))
            if not chunk:
                raise ConnectionError("closed")
            got += chunk
        if got != data:
            raise AssertionError("echo differs")
        self.tcp_bytes += len(data)

    def _tcp_loop(self) -> None:
        rng = random.Random(7)
        while not self.stop.is_set():
            for i, s in enumerate([*self.tcp, self.direct]):
                try:
                    self._exchange(s, rng)
                except Exception as e:  # recorded; the test asserts there are none
                    self.errors.append(f"tcp flow {i}: {e!r}")
                    return

    def _udp_loop(self) -> None:
        seq = 0
        while not self.stop.is_set():
            msg = f"seq {seq}".encode()
            self.udp.sendto(msg, (ADDR.hosts4[0], 7))
            self.udp_sent += 1
            try:
                if self.udp.recv(100) == msg:
                    self.udp_got += 1
                else:
                    self.errors.append(f"udp: out of order at {seq}")
            except TimeoutError:
                self.errors.append(f"udp: no echo for {seq}")
            seq += 1
            time.sleep(0.01)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)
        for s in [*self.tcp, self.direct, self.udp]:
            s.close()


def free_port(ns: str) -> int:
    """A TCP port nothing in namespace `ns` uses now (the kernel's pick)."""
    with netns(ns):
        s = socket.socket()
    with s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def local_service_peer(lab, port: int, sport: int) -> str:
    """Connect from the LAN client (port `sport`) to a service of the router itself on `port` that names the peer
    it saw and closes first (leaving the tuple in TIME_WAIT on the router)."""
    with netns(lab.router):
        ls = socket.create_server((ADDR.router_lan4, port))
    peer: list[str] = []

    def serve() -> None:
        c, addr = ls.accept()
        peer.append(addr[0])
        c.sendall(addr[0].encode())
        c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        s = lan_connect(lab, ADDR.router_lan4, port, timeout=2, sport=sport)
        with s:
            got = s.recv(100).decode()
        t.join(5)
        assert peer == [got]
        return got
    finally:
        ls.close()


def status(daemon) -> dict:
    out = daemon.cli("status", "--json", timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_twenty_reloads_under_load(lab, daemon):
    cfg = daemon.config_path
    cfg.write_text(BASE)
    daemon.start()
    streams = Streams(lab)
    try:
        streams.start()
        time.sleep(1)
        invalid = [("  \"dport(8x) -> direct\",", "not a port"),
                   ("  \"dport(1) -> nosuch\",", "no group named 'nosuch'"),
                   ("  \"dport(1) -> direct\" junk", "TOML syntax")]
        changes = []
        for i in range(20):
            gen_before = status(daemon)["health"]["generation"]
            if i % 3 == 2:
                line, message = invalid[(i // 3) % 3]
                cfg.write_text(BASE.replace("  # EXTRA", line))
                out = daemon.cli("reload", timeout=120)
                assert out.returncode == 1 and message in out.stderr and f"{cfg}:" in out.stderr, out.stderr
                assert status(daemon)["health"]["generation"] == gen_before  # nothing changed
                continue
            changes.append(f"dport({5000 + i}) -> direct")
            rules = ",\n".join(f"  \"{r}\"" for r in changes)
            cfg.write_text(BASE.replace("  # EXTRA", rules + ","))
            if i % 4 == 1:
                daemon.signal(signal.SIGUSR1)
                wait_for(lambda gb=gen_before: status(daemon)["health"]["generation"] != gb, timeout=30)
            else:
                out = daemon.cli("reload", timeout=120)
                assert out.returncode == 0, out.stderr
                assert f"+ dport({5000 + i}) -> direct" in out.stdout
            assert status(daemon)["health"]["generation"] == 1 - gen_before
            time.sleep(0.2)
        time.sleep(1)
        snap = status(daemon)
        assert sum(1 for c in snap["connections"] if c["state"] == "open" and c["proto"] == "tcp") >= 50
    finally:
        streams.close()
    try:
        assert streams.errors == []
        assert streams.tcp_bytes > 1_000_000
        assert streams.udp_got == streams.udp_sent and streams.udp_sent > 100
        snap = status(daemon)
        rule = snap["rules"][0]
        assert rule["text"].startswith("dip(203.0.113.10") and rule["hits"] >= 51  # carried across 14 flips
        assert "reload refused" in daemon.log() and "SIGUSR1: reloading" in daemon.log()
    finally:
        assert daemon.stop() == 0


@pytest.mark.parametrize("workers", [0, 2], ids=["one-process", "relay-workers"])
def test_abort_resets_the_flows_whose_route_changed(lab, daemon, workers):
    """With relay workers too: the main process plans their flows, so a reload's abort reaches them."""
    cfg = daemon.config_path
    base = BASE.replace('lan_interface = ["lan0"]\n', f'lan_interface = ["lan0"]\nrelay_workers = {workers}\n')
    assert workers == 0 or base != BASE
    cfg.write_text(base)
    daemon.start()
    try:
        relayed = lan_connect(lab, ADDR.hosts4[0], 7)
        relayed.sendall(b"before")
        assert relayed.recv(10) == b"before"
        kept = lan_connect(lab, ADDR.hosts6[0], 7)  # still proxied after the change: untouched
        kept.sendall(b"v6")
        assert kept.recv(10) == b"v6"
        # A relayed HTTP exchange the server ends first: the router keeps its 4-tuple in TIME_WAIT.
        held_port = free_port(lab.lan)   # fixed numbers met a port an earlier test still held there
        assert http_get(lab, ADDR.hosts4[0], "/whoami", sport=held_port).decode().strip() == ADDR.router_wan4
        cfg.write_text(base.replace("dip(203.0.113.10, '2001:db8:3::10') -> proxy",
                                    "dip('2001:db8:3::10') -> proxy"))
        out = daemon.cli("reload", "--abort", timeout=120)
        assert out.returncode == 0, out.stderr
        assert "1 flows reset" in out.stdout
        with pytest.raises((ConnectionResetError, BrokenPipeError, TimeoutError)):
            relayed.sendall(b"after")
            if relayed.recv(10) == b"":
                raise ConnectionResetError
        kept.sendall(b"still")
        assert kept.recv(10) == b"still"
        # New flows follow the new rules: 203.0.113.10 is direct now.
        assert http_get(lab, ADDR.hosts4[0], "/whoami").decode().strip() == ADDR.client4
        # Also on the 4-tuple still in TIME_WAIT: forwarded, its SYN would meet that socket (early demux) and
        # be dropped for a minute; the kernel hands it to the control plane, which relays it direct at once.
        tw = run_in(lab.router, "ss", "-tan", "state", "time-wait", f"( sport = :80 and dport = :{held_port} )")
        assert f":{held_port}" in tw, "the router holds no TIME_WAIT for the tuple: the test proves nothing"
        held_before = status(daemon)["counters"].get("DIRECT_HELD", 0)
        assert http_get(lab, ADDR.hosts4[0], "/whoami", timeout=2, sport=held_port).decode().strip() \
            == ADDR.router_wan4
        assert status(daemon)["counters"]["DIRECT_HELD"] == held_before + 1
        # The router's own services are not relays: a client reusing a tuple one of them holds in TIME_WAIT
        # reaches it as before (the stack retires that socket), and sees its own address there.
        service, client_port = free_port(lab.router), free_port(lab.lan)
        assert [local_service_peer(lab, service, sport=client_port) for _ in range(2)] == [ADDR.client4] * 2
        assert status(daemon)["counters"]["DIRECT_HELD"] == held_before + 1
        for sock in (relayed, kept):
            sock.close()
        # explain asks the daemon, which has the new rules.
        out = daemon.cli("explain", f"{ADDR.hosts4[0]}:80", timeout=120)
        assert out.returncode == 0 and out.stdout.startswith("(asked the running daetui"), out.stderr
        assert out.stdout.rstrip().endswith("=> direct (no rule matched: the fallback)")
        out = daemon.cli("explain", f"[{ADDR.hosts6[0]}]:7", timeout=120)
        assert out.stdout.rstrip().endswith("=> proxy (rule #1)"), out.stdout
    finally:
        assert daemon.stop() == 0
    assert os.path.exists(cfg)
