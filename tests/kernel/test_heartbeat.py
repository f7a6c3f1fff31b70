"""A stalled daemon fails open like a dead one (issue 11, fix 6).

A daemon stopped with SIGSTOP (or whose loop hangs) keeps its listeners: the
kernel went on handing new flows to sockets nobody accepts from, and LAN DNS
to a controller that never answers. With the heartbeat, `lan_ingress` sees
the beat go stale after `heartbeat_timeout` and passes new flows direct (DNS to
the server the client asked) — or drops them with `fail_open = false` — and
takes them back once the daemon runs again, with nothing restarted.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from helpers import Daemon, addresses, http_get, lan_query, tcp_connect_fails, udp_exchange, wait_for

from daetui.control.client import call_once
from daetui.lab.topology import ADDR
from testkit.configs import RELAY_CONFIG, RELAYED4, RELAYED6
from testkit.peers.dnsmasq import dns_peers
from testkit.wancapture import Capture

pytestmark = pytest.mark.kernel

TIMEOUT = 1.0           # heartbeat_timeout of these tests
UNBOUND4 = ADDR.dns4[0]
DIRECT4 = ADDR.hosts4[1]  # the fallback's: direct


@pytest.fixture(scope="module")
def peers(lab):  # type: ignore[no-untyped-def]
    """unbound and dnsmasq, the LAN client's DNS servers on the "internet"."""
    with dns_peers(lab) as p:
        yield p


def config(fail_open: bool, workers: int = 0) -> str:
    return RELAY_CONFIG.replace('lan_interface = ["lan0"]', f'lan_interface = ["lan0"]\nheartbeat_timeout = '
                                f'"{TIMEOUT:g}s"\nfail_open = {str(fail_open).lower()}\nrelay_workers = {workers}')


def whoami(lab, host: str, timeout: float = 3.0) -> str:  # type: ignore[no-untyped-def]
    return http_get(lab, host, "/whoami", timeout=timeout).decode().strip()


@contextmanager
def stopped(daemon: Daemon) -> Iterator[float]:
    """The daemon stopped (SIGSTOP) for the body, always continued after; yields when it was stopped."""
    daemon.signal(signal.SIGSTOP)
    try:
        yield time.monotonic()
    finally:
        daemon.signal(signal.SIGCONT)


def counters(daemon: Daemon) -> dict[str, int]:
    snap = call_once(daemon.control_path, lambda c: c.snapshot(flows=False, dns=False))
    return dict(snap.counters)


@pytest.mark.parametrize("workers", [0, 2], ids=["one-process", "relay-workers"])
def test_a_stopped_daemon_fails_open_and_takes_its_flows_back_when_continued(lab, peers, daemon, workers):  # type: ignore[no-untyped-def]
    """With relay workers too: they keep running while the main process is stopped, but the beat is its."""
    daemon.config_path.write_text(config(fail_open=True, workers=workers))
    daemon.start()
    assert whoami(lab, RELAYED4) == ADDR.router_wan4       # relayed by the daemon
    assert addresses(lan_query(lab, UNBOUND4, "www.example.test")) == ["203.0.113.10"]
    with stopped(daemon) as t0:
        time.sleep(TIMEOUT)
        # Within the heartbeat time plus a second: new flows pass direct, with the client's own address.
        assert wait_for(lambda: _quietly(whoami, lab, RELAYED4, 1.0) == ADDR.client4 or None,
                        timeout=TIMEOUT + 1.0, interval=0.1)
        took = time.monotonic() - t0
        assert whoami(lab, RELAYED6) == ADDR.client6
        assert udp_exchange(lab, RELAYED4, b"stalled?") == [b"stalled?"]
        # LAN DNS goes to the server the client asked (the controller cannot answer).
        assert addresses(lan_query(lab, UNBOUND4, "api.example.test", timeout=2.0)) == ["203.0.113.11"]
        assert addresses(lan_query(lab, UNBOUND4, "www.example.test", tcp=True, timeout=2.0)) == ["203.0.113.10"]
    print(f"[figure] new flows direct {took:.2f}s after SIGSTOP (heartbeat_timeout {TIMEOUT:g}s)")
    # Continued: new flows are the daemon's again, nothing restarted by hand.
    assert wait_for(lambda: _quietly(whoami, lab, RELAYED4, 1.0) == ADDR.router_wan4 or None, timeout=5)
    assert udp_exchange(lab, RELAYED4, b"back?", sport=40123) == [b"back?"]
    assert daemon.proc is not None and daemon.proc.poll() is None
    c = counters(daemon)
    assert c.get("STALLED", 0) >= 4, c


def test_with_fail_open_false_a_stopped_daemon_drops_proxied_flows_and_direct_ones_still_pass(lab, daemon):  # type: ignore[no-untyped-def]
    daemon.config_path.write_text(config(fail_open=False))
    daemon.start()
    assert whoami(lab, RELAYED4) == ADDR.router_wan4
    with Capture(lab.router, ADDR.wan_ifname) as cap, stopped(daemon):
        time.sleep(TIMEOUT + 0.5)
        assert tcp_connect_fails(lab, RELAYED4, timeout=2.0)
        assert tcp_connect_fails(lab, RELAYED6, timeout=2.0)
        assert udp_exchange(lab, RELAYED4, b"dropped?", timeout=1.0) == []
        # What the kernel decides alone needs no daemon: the fallback (direct) still works.
        assert whoami(lab, DIRECT4) == ADDR.client4
    leaked = cap.count(dst=RELAYED4) + cap.count(dst=RELAYED6)
    print(f"[figure] proxied-rule packets on the WAN while stopped with fail_open = false: {leaked}")
    assert leaked == 0
    assert cap.count(src=ADDR.client4, dst=DIRECT4) > 0   # the capture did see the direct flow
    assert wait_for(lambda: _quietly(whoami, lab, RELAYED4, 1.0) == ADDR.router_wan4 or None, timeout=5)


def _quietly(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return fn(*args)
    except OSError:  # a timeout or a reset: no answer yet
        return None
