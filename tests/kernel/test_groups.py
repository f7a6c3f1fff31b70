"""A group of real proxy nodes in the lab: the LAN's flows go through the node its policy picks.

Two danted servers are the nodes; one sits behind a relay that adds 150 ms
to every connection (netem is not in this kernel), so the latency policies
have a real difference to see. Killing the chosen node moves new flows to
the other one within check_interval + 1 s.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from helpers import (
    http_get,
    newest_conn,
    plane_in_lab,
    snapshot,
    tcp_connect_fails,
    udp_exchange,
    wait_for,
    wan_listener,
)

from daetui.abi.constants import ABI
from daetui.config.load import parse_config
from daetui.lab.topology import ADDR
from daetui.net.netns import netns
from testkit.configs import LAB_CHECKS
from testkit.peers.socks_http import Danted

pytestmark = [pytest.mark.kernel, pytest.mark.peer]

PROXY4, PROXY6 = ADDR.hosts4[1], ADDR.hosts6[1]
FAST_PORT, SLOW_BACKEND, SLOW_PORT = 1082, 1083, 1090
DELAY = 0.15
CHECK_INTERVAL = 2.0


class DelayingRelay:
    """A TCP relay in the wan namespace that waits DELAY before passing a connection on."""

    def __init__(self, lab, listen: tuple[str, int], to: tuple[str, int]) -> None:
        self.sock = wan_listener(lab, *listen)
        self.sock.settimeout(0.2)
        self.lab, self.to = lab, to
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        time.sleep(DELAY)
        with netns(self.lab.wan):
            u = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            u.connect(self.to)
        except OSError:
            c.close()
            return

        def pump(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        t = threading.Thread(target=pump, args=(u, c), daemon=True)
        t.start()
        pump(c, u)
        t.join(30)
        c.close()
        u.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


CONFIG = f"""
[global]
lan_interface = ["lan0"]
dial_mode = "ip"
check_interval = "{CHECK_INTERVAL:g}s"
{LAB_CHECKS}

[node]
fast = "socks5://{PROXY4}:{FAST_PORT}"
slow = "socks5://{PROXY4}:{SLOW_PORT}"

[group.proxy]
policy = "POLICY"

[routing]
rules = ["dip({ADDR.hosts4[0]}, '{ADDR.hosts6[0]}') -> proxy"]
fallback = "direct"
"""


@pytest.fixture
def nodes(lab):
    fast = Danted(lab, port=FAST_PORT)
    backend = Danted(lab, port=SLOW_BACKEND)
    fast.start()
    backend.start()
    relay = DelayingRelay(lab, (PROXY4, SLOW_PORT), (PROXY4, SLOW_BACKEND))
    try:
        yield fast
    finally:
        relay.close()
        fast.stop()
        backend.stop()


def checked(runner) -> dict[str, object]:
    """The nodes, once each has a successful IPv4 check."""
    def ready():
        ns = {n.name: n for n in snapshot(runner).nodes}
        ok = all(any(x is not None for x in n.latencies4) for n in ns.values()) and len(ns) == 2
        return ns if ok else None
    return wait_for(ready, timeout=15)


conn_to = newest_conn


@pytest.mark.parametrize("policy", ["min", "min_avg10", "min_moving_avg"])
def test_latency_policies_pick_the_faster_node(lab, nodes, tmp_path: Path, policy: str):
    with plane_in_lab(lab, CONFIG.replace("POLICY", policy), tmp_path) as runner:
        ns = checked(runner)
        fast = min(x for x in ns["fast"].latencies4 if x is not None)
        slow = min(x for x in ns["slow"].latencies4 if x is not None)
        assert slow > fast + DELAY * 0.8, (fast, slow)
        assert snapshot(runner).groups[0].selected4 == "fast"
        # The LAN client's flow goes through the node: the server sees the proxy, not the router.
        assert http_get(lab, ADDR.hosts4[0], "/whoami").strip() == PROXY4.encode()
        assert conn_to(runner, (ADDR.hosts4[0], 80)).node == "fast"


def test_udp_and_ipv6_through_the_node_and_a_dead_node_is_left(lab, nodes, tmp_path: Path):
    with plane_in_lab(lab, CONFIG.replace("POLICY", "min"), tmp_path) as runner:
        checked(runner)
        # UDP: the client's datagrams reach the echo server through the node's UDP ASSOCIATE.
        assert udp_exchange(lab, ADDR.hosts4[0], b"through socks5") == [b"through socks5"]
        assert conn_to(runner, (ADDR.hosts4[0], 7), "udp").node == "fast"
        # IPv6 destination: the node dials it (danted has IPv6 on its external side).
        assert http_get(lab, ADDR.hosts6[0], "/whoami").strip() == PROXY6.encode()

        nodes.stop()  # the selected node dies
        t0 = time.monotonic()
        wait_for(lambda: snapshot(runner).groups[0].selected4 == "slow", timeout=CHECK_INTERVAL + 3)
        moved = time.monotonic() - t0
        assert moved <= CHECK_INTERVAL + 1.0, moved
        dead = {n.name: n for n in snapshot(runner).nodes}["fast"]
        assert not dead.alive4 and dead.last_error
        assert http_get(lab, ADDR.hosts4[0], "/whoami").strip() == PROXY4.encode()
        assert conn_to(runner, (ADDR.hosts4[0], 80)).node == "slow"


def test_pinning_and_no_live_node(lab, nodes, tmp_path: Path):
    with plane_in_lab(lab, CONFIG.replace("POLICY", "min"), tmp_path) as runner:
        checked(runner)
        plane = runner.plane
        runner.call(lambda: plane.pin_node("proxy", "slow"))
        http_get(lab, ADDR.hosts4[0], "/")
        assert conn_to(runner, (ADDR.hosts4[0], 80)).node == "slow"
        runner.call(lambda: plane.pin_node("proxy", None))
        http_get(lab, ADDR.hosts4[0], "/whoami")
        assert conn_to(runner, (ADDR.hosts4[0], 80)).node == "fast"
        # A config whose group has only a dead node: the flow fails, and says why.
        cfg = parse_config(CONFIG.replace("POLICY", "min").replace(f"socks5://{PROXY4}:{FAST_PORT}",
                                                                   f"socks5://{PROXY4}:1099"), "t.toml")
        result = runner.submit(plane.reload(cfg)).result(60)
        assert result.ok
        runner.call(lambda: plane.pin_node("proxy", "fast"))
        with pytest.raises((AssertionError, OSError)):
            http_get(lab, ADDR.hosts4[0], "/", timeout=3)  # fast (:1099) refuses: the client is reset
        failed = [c for c in snapshot(runner).connections if c.node == "fast" and c.error]
        assert failed and "refused" in failed[-1].error.lower()


def test_a_group_with_no_live_node_goes_direct_or_is_dropped_in_the_kernel(lab, tmp_path: Path):
    dead = CONFIG.replace("POLICY", "min").replace(f"socks5://{PROXY4}:{FAST_PORT}", f"socks5://{PROXY4}:1099")
    dead = dead.replace(f'slow = "socks5://{PROXY4}:{SLOW_PORT}"\n', "")
    cfg = dead.replace('dial_mode = "ip"', 'dial_mode = "ip"\ndead_group = "direct"')
    with plane_in_lab(lab, cfg, tmp_path) as runner:
        plane = runner.plane
        # Both families checked and the kernel told (the warning follows the map write).
        wait_for(lambda: any("has no live node over IPv4/6" in line.message
                             for line in runner.call(plane.recent_logs)), timeout=10)
        # direct: the kernel passes the flow on itself; the server sees the LAN client.
        assert http_get(lab, ADDR.hosts4[0], "/whoami").strip() == ADDR.client4.encode()
        flows = runner.call(lambda: plane.dataplane.program.flows())
        f = next(f for f in flows if str(f.key.dst) == ADDR.hosts4[0] and f.key.dport == 80)
        assert f.outbound == ABI.OUTBOUND_DIRECT and f.flags & ABI.FLOW_GROUP_DEAD and f.rule_index == 0
        assert snapshot(runner).counters["GROUP_DEAD"] >= 1
        # A flow decided in user space (by the name sniffed from it) goes direct too: dialled by
        # the router, so the server sees the router's address.
        named = cfg.replace("rules = [", "rules = [\"domain(suffix: dead.test) -> proxy\", ")
        assert runner.submit(plane.reload(parse_config(named, "t.toml"))).result(60).ok
        assert http_get(lab, ADDR.hosts4[0], "/whoami", name="www.dead.test").strip() == ADDR.router_wan4.encode()
        conn = conn_to(runner, (ADDR.hosts4[0], 80))
        assert conn.stage == "userspace" and conn.outbound == "proxy" and conn.node is None and not conn.error
        # drop: a reload says so, and the kernel drops the SYN.
        result = runner.submit(plane.reload(parse_config(dead.replace('dial_mode = "ip"',
                                                                      'dial_mode = "ip"\ndead_group = "drop"'),
                                                         "t.toml"))).result(60)
        assert result.ok, result.message
        assert tcp_connect_fails(lab, ADDR.hosts4[0], timeout=1.5)


def test_a_chain_goes_through_each_hop_in_dae_order(lab, nodes, tmp_path: Path):
    # fast (danted :1082) first, then the relay in front of the other danted (:1090): both must be up.
    chain = f"socks5://{PROXY4}:{FAST_PORT} -> socks5://{PROXY4}:{SLOW_PORT}"
    cfg = CONFIG.replace("POLICY", "fixed(0)").replace(f'fast = "socks5://{PROXY4}:{FAST_PORT}"',
                                                       f'chain = "{chain}"')
    cfg = cfg.replace(f'slow = "socks5://{PROXY4}:{SLOW_PORT}"\n', "")
    with plane_in_lab(lab, cfg, tmp_path) as runner:
        assert [n.name for n in snapshot(runner).nodes] == ["chain"]
        # Its check goes through both hops: the second one's relay adds its 150 ms.
        node = wait_for(lambda: next((n for n in snapshot(runner).nodes if any(n.latencies4)), None), timeout=10)
        assert min(x for x in node.latencies4 if x is not None) > DELAY * 0.8
        assert http_get(lab, ADDR.hosts4[0], "/whoami").strip() == PROXY4.encode()
        assert conn_to(runner, (ADDR.hosts4[0], 80)).node == "chain"
        nodes.stop()  # the first hop: the chain cannot start
        with pytest.raises((AssertionError, OSError)):
            http_get(lab, ADDR.hosts4[0], "/", timeout=3)
        failed = [c for c in snapshot(runner).connections if c.node == "chain" and c.error]
        assert failed and f"{PROXY4}:{FAST_PORT}" in failed[-1].error


def test_a_subscription_brings_nodes_into_the_group_and_broken_links_are_skipped(lab, nodes, tmp_path: Path):
    import base64

    sub = tmp_path / "sub.txt"
    links = [f"socks5://{PROXY4}:{FAST_PORT}#sub-fast", "vmess://not-base64-json", f"socks5://{PROXY4}:{SLOW_PORT}#sub-slow"]
    sub.write_text(base64.b64encode("\n".join(links).encode()).decode())
    cfg = CONFIG.replace("POLICY", "min").replace("[group.proxy]", f'[subscription]\nmine = "file://{sub}"\n\n'
                                                                     '[group.proxy]\nfilter = ["subtag(mine)"]')
    with plane_in_lab(lab, cfg, tmp_path) as runner:
        group = wait_for(lambda: next((g for g in snapshot(runner).groups if len(g.members) == 2), None))
        assert group.members == ("sub-fast", "sub-slow")  # the [node] entries are not in subtag(mine)
        wait_for(lambda: snapshot(runner).groups[0].selected4 == "sub-fast", timeout=15)
        assert http_get(lab, ADDR.hosts4[0], "/whoami").strip() == PROXY4.encode()
        assert conn_to(runner, (ADDR.hosts4[0], 80)).node == "sub-fast"
        logs = "\n".join(line.message for line in runner.call(runner.plane.recent_logs))
        assert "subscription mine" in logs and "line 2" in logs  # the broken link, reported and skipped
