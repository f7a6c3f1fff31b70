"""Relay workers (global.relay_workers; issue 15 item 2): the kernel spreads new TCP flows over them.

Each worker is a process with its own listeners in the sockmap; lan_ingress
picks a live one per new flow by a hash of its tuple. The main process keeps
the route, the connection table and the console's view: every flow a worker
carries is a row there, its bytes counted, closable from the console. A
worker killed under load loses only its own flows: its listeners leave the
sockmap with it, the next flows go to the others, and it is started again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from helpers import Daemon, http_get, lan_connect, wait_for

from daetui.control.client import call_once
from daetui.lab.topology import ADDR
from testkit.configs import LAB_CHECKS, RELAY_CONFIG, RELAYED4, RELAYED6
from testkit.peers.shadowsocks import SsServer

pytestmark = pytest.mark.kernel

WORKERS = 2
CONFIG = RELAY_CONFIG.replace('lan_interface = ["lan0"]', f'lan_interface = ["lan0"]\nrelay_workers = {WORKERS}')


def ss_config(link: str, rule: str = "dip(203.0.113.10) -> proxy") -> str:
    return f"""
[global]
lan_interface = ["lan0"]
relay_workers = {WORKERS}
check_interval = "600s"
{LAB_CHECKS}

[node]
ss1 = "{link}"

[group.proxy]
policy = "fixed(0)"

[routing]
rules = ["{rule}"]
fallback = "direct"
"""


def worker_pids(daemon: Daemon) -> list[int]:
    """The daemon's relay worker processes (its children running daetui.control.worker)."""
    pids = []
    for tid in os.listdir(f"/proc/{daemon.pid}/task"):
        for child in Path(f"/proc/{daemon.pid}/task/{tid}/children").read_text().split():
            cmd = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"daetui.control.worker" in cmd:
                pids.append(int(child))
    return sorted(pids)


def connections(daemon: Daemon) -> list:  # type: ignore[type-arg]
    snap = call_once(daemon.control_path, lambda c: c.snapshot(flows=False, dns=False))
    return list(snap.connections)


def whoami(lab, host: str, timeout: float = 3.0) -> str:  # type: ignore[no-untyped-def]
    return http_get(lab, host, "/whoami", timeout=timeout).decode().strip()


@pytest.fixture
def started(lab, daemon):  # type: ignore[no-untyped-def]
    daemon.config_path.write_text(CONFIG)
    daemon.start()
    wait_for(lambda: len(worker_pids(daemon)) == WORKERS or None, timeout=10)
    return daemon


def test_flows_spread_over_the_workers_and_each_is_a_row_of_the_main_process(lab, started):  # type: ignore[no-untyped-def]
    daemon = started
    for i in range(40):
        host = RELAYED4 if i % 2 else RELAYED6
        assert whoami(lab, host) == (ADDR.router_wan4 if i % 2 else ADDR.router_wan6)   # relayed, not passed
    rows = wait_for(lambda: [c for c in connections(daemon) if c.state == "closed"] if
                    len([c for c in connections(daemon) if c.state == "closed"]) >= 40 else None)
    by_worker = {}
    for c in rows:
        by_worker[c.worker] = by_worker.get(c.worker, 0) + 1
        assert c.outbound == "proxy" and c.stage == "kernel" and c.down > 0 and c.up > 0, c
    print(f"[figure] 40 flows by worker: {by_worker}")
    assert set(by_worker) == set(range(WORKERS)), by_worker   # every worker took some; the main process none


def test_a_flow_a_worker_carries_is_counted_while_open_and_closed_from_the_console(lab, started):  # type: ignore[no-untyped-def]
    daemon = started
    sock = lan_connect(lab, RELAYED4, 7)    # the echo service: held open
    try:
        sock.sendall(b"x" * 5000)
        got = b""
        while len(got) < 5000:
            got += sock.recv(65536)
        row = wait_for(lambda: next((c for c in connections(daemon) if c.state == "open" and c.dst[1] == 7
                                     and c.up >= 5000), None), timeout=5)
        assert row.worker is not None and row.down >= 5000
        assert call_once(daemon.control_path, lambda c: c.close_connections([row.id])) == 1
        sock.settimeout(5)
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            sock.sendall(b"y")
            assert sock.recv(10) == b""
            raise ConnectionResetError
        closed = wait_for(lambda: next((c for c in connections(daemon) if c.id == row.id and c.state != "open"),
                                       None))
        assert closed.error == "closed from the console"
    finally:
        sock.close()


def test_a_worker_killed_under_load_loses_only_its_flows_and_new_ones_go_to_the_others(lab, started):  # type: ignore[no-untyped-def]
    daemon = started
    victim = worker_pids(daemon)[0]
    stop = threading.Event()
    results: list[tuple[float, bool]] = []

    def load() -> None:
        # Echo exchanges the client closes first: the router's side of each ends without TIME_WAIT (an
        # HTTP server closing first would leave thousands there, on which a later test's direct SYN with
        # the same ports would land).
        while not stop.is_set():
            try:
                s = lan_connect(lab, RELAYED4, 7, timeout=2.0)
                try:
                    s.sendall(b"load")
                    s.shutdown(socket.SHUT_WR)
                    got = b""
                    while chunk := s.recv(64):
                        got += chunk
                    ok = got == b"load"
                finally:
                    s.close()
            except OSError:   # reset, or closed before an answer: the victim's
                ok = False
            results.append((time.monotonic(), ok))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    held = lan_connect(lab, RELAYED4, 7)   # open flows: the victim's end with it, the others' go on
    others = [lan_connect(lab, RELAYED4, 7, sport=41000 + i) for i in range(8)]
    try:
        time.sleep(1.0)
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join(10)
        before = [ok for at, ok in results if at < killed]
        after = [ok for at, ok in results if at > killed + 0.2]
        print(f"[figure] flows while killing a worker: {len(before)} before ({before.count(False)} failed), "
              f"{len(after)} after ({after.count(False)} failed)")
        assert before and all(before)
        assert len(after) >= 20 and all(after), after.count(False)   # every new flow was accepted
        # Held flows: those of the survivor still echo; those of the victim were reset.
        alive = 0
        for s in [held, *others]:
            try:
                s.settimeout(2)
                s.sendall(b"ping")
                alive += s.recv(10) == b"ping"
            except OSError:
                pass
        print(f"[figure] held flows still alive after the kill: {alive} of {1 + len(others)}")
        assert 0 < alive < 1 + len(others)
        # The victim's flows ended saying why (the log: the load's flows overran the table's closed ring).
        lost = [line for line in daemon.log().splitlines() if "relay worker" in line and "daetui.conn" in line]
        assert len(lost) >= 1 + len(others) - alive and all("ended (killed by SIGKILL)" in x for x in lost), lost
        # Started again: two workers, one of them new.
        pids = wait_for(lambda: (p := worker_pids(daemon)) and len(p) == WORKERS and victim not in p and p,
                        timeout=10)
        assert victim not in pids
        assert whoami(lab, RELAYED4) == ADDR.router_wan4
        b = wait_for(lambda: (s := call_once(daemon.control_path, lambda c: c.snapshot(flows=False, dns=False)))
                     and s.budgets.workers_live == WORKERS and s.budgets)
        assert b.workers == WORKERS and b.worker_deaths == 1
    finally:
        stop.set()
        for s in [held, *others]:
            s.close()


def test_flows_through_a_node_are_dialled_by_the_workers_and_a_reload_keeps_them_going(lab, daemon):  # type: ignore[no-untyped-def]
    """The workers dial a node (a real ss-server) from the node object the main process sends them; after a
    reload, whose rules and node objects are new, they dial the new ones, and the open flows go on."""
    with SsServer(lab, "chacha20-ietf-poly1305", "worker pw", 8411, udp=False, verbose=False) as ss:
        daemon.config_path.write_text(ss_config(ss.node().link()))
        daemon.start()
        wait_for(lambda: len(worker_pids(daemon)) == WORKERS or None, timeout=10)
        held = lan_connect(lab, RELAYED4, 7)
        try:
            for _ in range(20):   # ss-server, in the wan namespace, dials from an address there: not the router's
                assert whoami(lab, RELAYED4) not in (ADDR.router_wan4, ADDR.client4)
            rows = [c for c in connections(daemon) if c.dst[1] == 80]
            assert {c.worker for c in rows} == set(range(WORKERS)) and all(c.node == "ss1" for c in rows)
            daemon.config_path.write_text(ss_config(ss.node().link(), "dip(203.0.113.10, 203.0.113.11) -> proxy"))
            assert daemon.cli("reload").returncode == 0
            for _ in range(10):
                assert whoami(lab, ADDR.hosts4[1]) not in (ADDR.router_wan4, ADDR.client4)
            assert all(c.node == "ss1" for c in connections(daemon) if c.dst[0] == ADDR.hosts4[1])
            held.sendall(b"still")
            assert held.recv(10) == b"still"
        finally:
            held.close()


def test_a_stopped_worker_is_ended_within_the_heartbeat_and_new_flows_go_to_the_others(lab, daemon):  # type: ignore[no-untyped-def]
    """A worker that stops answering (SIGSTOP here; a hang) would keep its listeners, and its share of new
    flows would wait on it: the main process ends it after heartbeat_timeout (at least 2 s), and starts another."""
    daemon.config_path.write_text(CONFIG.replace("relay_workers", 'heartbeat_timeout = "1s"\nrelay_workers'))
    daemon.start()
    victim = wait_for(lambda: len(p := worker_pids(daemon)) == WORKERS and p, timeout=10)[0]
    os.kill(victim, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        assert wait_for(lambda: not Path(f"/proc/{victim}").exists() or None, timeout=5)
        print(f"[figure] a stopped worker ended {time.monotonic() - t0:.1f}s after SIGSTOP (heartbeat_timeout 1s, "
              "held to at least 2s for workers)")
        for _ in range(20):   # every new flow is accepted, whichever worker the hash picks
            assert whoami(lab, RELAYED4, timeout=2.0) == ADDR.router_wan4
        assert wait_for(lambda: len(p := worker_pids(daemon)) == WORKERS and victim not in p, timeout=10)
        assert "silent for" in daemon.log()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGCONT)


def test_the_workers_end_with_the_daemon(lab, started):  # type: ignore[no-untyped-def]
    daemon = started
    pids = worker_pids(daemon)
    assert daemon.stop() == 0
    for pid in pids:
        assert wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists() or None, timeout=5)


def test_a_daemon_killed_takes_its_workers_with_it_and_flows_fail_open(lab, started):  # type: ignore[no-untyped-def]
    daemon = started
    pids = worker_pids(daemon)
    daemon.signal(signal.SIGKILL)
    daemon.wait(10)
    try:
        for pid in pids:   # their channel closed: they end
            assert wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists() or None, timeout=5)
        # No listener left in the sockmap: new flows pass (fail open), with the client's own address.
        assert wait_for(lambda: _quietly(whoami, lab, RELAYED4, 1.0) == ADDR.client4 or None, timeout=5)
    finally:
        out = daemon.cli("cleanup")   # what the killed daemon left (its programs, rules, routes)
    assert out.returncode == 0 and "undone: tc filter ingress on lan0" in out.stdout, out.stdout + out.stderr


def _quietly(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return fn(*args)
    except (OSError, AssertionError):
        return None
