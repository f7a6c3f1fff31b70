"""Faults (issue 11): a stopped daemon, and a flood of interface events while the LAN interface is re-created.

SIGSTOP: the daemon is stopped for 10 s. With `fail_open = true`, DNS to the server the client asked
and new flows to a destination whose rule names a group work again within the heartbeat timeout
(the default, 5 s) plus 1 s; with `fail_open = false`, none of the proxied rule's packets leave the
router (counted on the WAN link) while a direct rule's flows still work. Then SIGCONT: the same
process relays new flows again, nothing restarted by hand.

Interface events: 5000 veth creations and deletions in the router's namespace (2500 pairs, in
rounds: a batch of creations, then one deletion of the batch's group), while the LAN interface is
deleted and re-created three times; each time lan_ingress must be attached to it again within 2 s
of its re-creation, and traffic flows through it again. That test has a lab of its own: it tears
the LAN link down.

Both run the issue's figures in CI too (DAETUI_STRESS_FULL changes nothing): the stop is 10 s of
a ~20 s test, and 5000 veth events take the kernel about 2 s.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import dns.exception
from helpers import Daemon, lan_connect, lan_query, wait_for, wan_listener
from loadkit import snapshot_of

from daetui.lab.topology import ADDR, ECHO_PORT, LAN_MAC, ROUTER_LAN_MAC, Lab
from testkit.wancapture import Capture

STOP_S = 10.0
HEARTBEAT_S = 5.0           # the default heartbeat_timeout: what is tested
RELAYED = ADDR.hosts4[0]    # its rule names a group (no nodes: relayed by the direct dialer)
DIRECT = ADDR.hosts4[1]     # no rule: the fallback, direct, in the kernel
DNS_SERVER = ADDR.dns4[0]   # the lab's unbound: what the client asks, and the controller's upstream
VETH_PAIRS = 2500           # created and deleted: 5000 events
VETH_ROUNDS = 10
LAN_RECREATIONS = 3
BIND_BOUND = 2.0
PROBE_EVERY = 0.1           # new flows while stopped: ten a second


def config(fail_open: bool) -> str:
    return f"""
[global]
lan_interface = ["lan0"]
log_level = "warn"
fail_open = {str(fail_open).lower()}

[group.proxy]
# No nodes: the control plane relays through its direct dialer.

[dns]
upstream = {{ ub = "udp://{DNS_SERVER}:53" }}
request = ["fallback: ub"]

[routing]
rules = ["dip({RELAYED}) -> proxy"]
fallback = "direct"
"""


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[float]:
    """SIGSTOP (yields when), and SIGCONT whatever happens."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield time.monotonic()
    finally:
        os.kill(pid, signal.SIGCONT)


def echoes(lab: Lab, host: str, port: int = ECHO_PORT, timeout: float = 0.5) -> bool:
    """A new connection from the LAN to host:port, and its echo, within `timeout` each."""
    try:
        with lan_connect(lab, host, port, timeout=timeout) as s:
            s.sendall(b"are you there")
            return s.recv(64) == b"are you there"
    except OSError:
        return False


def answered(lab: Lab, timeout: float = 0.5) -> bool:
    """A DNS query from the LAN to the lab's unbound is answered (by whoever)."""
    try:
        return bool(lan_query(lab, DNS_SERVER, "www.example.test", timeout=timeout).answer)
    except (OSError, dns.exception.DNSException):
        return False


def relayed_after(d: Daemon, since: float) -> bool:
    """The daemon relayed a connection to RELAYED that it accepted after `since` (wall clock)."""
    return any(c.dst[0] == RELAYED and c.started >= since for c in snapshot_of(d.control_path).connections)


def first(times: list[tuple[float, bool]]) -> float | None:
    return next((t for t, ok in times if ok), None)


def probe(t0: float, fn: Callable[[], bool], into: list[tuple[float, bool]]) -> None:
    """Run one probe; note its outcome at the time it ended (seconds since t0)."""
    ok = fn()
    into.append((time.monotonic() - t0, ok))


def paced(t0: float, until: float, every: float = PROBE_EVERY) -> Iterator[None]:
    """Yield every `every` seconds (or as soon as the last probe allows) until t0 + until."""
    i = 0
    while time.monotonic() < t0 + until:
        yield
        i += 1
        time.sleep(max(0.0, t0 + i * every - time.monotonic()))


def test_a_stopped_daemon_fails_open_within_the_heartbeat_and_resumes_on_sigcont(lab, tmp_path, figures):
    from daetui.lab.dnspeers import Unbound

    cfg = tmp_path / "daetui.toml"
    cfg.write_text(config(fail_open=True))
    with Unbound(lab):
        d = Daemon(lab, cfg, tmp_path / "run").start()
        try:
            assert echoes(lab, RELAYED, timeout=5) and answered(lab, timeout=5)
            tcp: list[tuple[float, bool]] = []
            dns_: list[tuple[float, bool]] = []
            with stopped(d.pid) as t0:
                for _ in paced(t0, STOP_S):
                    probe(t0, lambda: echoes(lab, RELAYED, timeout=0.25), tcp)
                    probe(t0, lambda: answered(lab, timeout=0.25), dns_)
            t_cont, wall_cont = time.monotonic(), time.time()
            resumed = None
            while resumed is None and time.monotonic() < t_cont + 10:
                if echoes(lab, RELAYED, timeout=2) and relayed_after(d, wall_cont):
                    resumed = time.monotonic() - t_cont
            ping = d.ping() or {}
        finally:
            log = d.log()
            status = d.stop()
    first_tcp, first_dns = first(tcp), first(dns_)
    # Once through, every later probe must be: the decision does not flap back while stopped.
    after = [ok for t, ok in tcp + dns_ if first_tcp is not None and first_dns is not None
             and t > max(first_tcp, first_dns)]
    figures.add("stopped for", f"{STOP_S:g} s (heartbeat_timeout {HEARTBEAT_S:g} s)")
    figures.add("new proxied-rule flow works again after", f"{first_tcp:.2f} s" if first_tcp else "never",
                f"<= {HEARTBEAT_S + 1:g} s")
    figures.add("LAN DNS to the asked server answered after", f"{first_dns:.2f} s" if first_dns else "never",
                f"<= {HEARTBEAT_S + 1:g} s")
    figures.add("probes through after that", f"{sum(after)} of {len(after)}", "all")
    figures.add("relaying again after SIGCONT", f"{resumed:.2f} s" if resumed is not None else "never")
    assert status == 0, log
    assert first_tcp is not None and first_tcp <= HEARTBEAT_S + 1, tcp
    assert first_dns is not None and first_dns <= HEARTBEAT_S + 1, dns_
    assert all(after), (tcp, dns_)
    assert resumed is not None, log
    assert ping.get("running") and ping.get("pid") == d.pid


def test_a_stopped_daemon_failing_closed_lets_no_proxied_packet_out(lab, tmp_path, figures):
    cfg = tmp_path / "daetui.toml"
    cfg.write_text(config(fail_open=False))
    d = Daemon(lab, cfg, tmp_path / "run").start()
    try:
        with wan_listener(lab, RELAYED) as server:
            port = server.getsockname()[1]
            accepted: list[str] = []
            stop_accepting = threading.Event()

            def accept() -> None:  # who reaches the server: the router's dialer (relayed), or the client
                server.settimeout(0.2)
                while not stop_accepting.is_set():
                    with contextlib.suppress(TimeoutError):
                        conn, peer = server.accept()
                        conn.close()
                        accepted.append(peer[0])

            acceptor = threading.Thread(target=accept, daemon=True)
            acceptor.start()
            try:
                assert proxied_connect(lab, port, timeout=5)
                wait_for(lambda: accepted)  # relayed, and its end seen by the server, before the stop
                time.sleep(0.5)
                probes = direct_ok = direct_probes = 0
                with stopped(d.pid) as t0, Capture(lab.router, ADDR.wan_ifname) as cap:
                    before = len(accepted)
                    for _ in paced(t0, STOP_S):
                        proxied_connect(lab, port, timeout=0.3)
                        probes += 1
                        direct_probes += 1
                        direct_ok += echoes(lab, DIRECT, timeout=0.5)
                    reached = accepted[before:]
                t_cont, wall_cont = time.monotonic(), time.time()
                resumed = None
                while resumed is None and time.monotonic() < t_cont + 10:
                    if proxied_connect(lab, port, timeout=2) and relayed_after(d, wall_cont):
                        resumed = time.monotonic() - t_cont
            finally:
                stop_accepting.set()
                acceptor.join(5)
    finally:
        log = d.log()
        status = d.stop()
    figures.add("proxied-rule connections tried while stopped", probes)
    matched = cap.count(src=ADDR.client4, dst=RELAYED, dport=port)
    figures.add("their packets on the WAN link", f"{matched} of {len(cap.packets)} IP packets out", "0")
    figures.add("direct-rule connections while stopped", f"{direct_ok} of {direct_probes}", "all")
    figures.add("relaying again after SIGCONT", f"{resumed:.2f} s" if resumed is not None else "never")
    assert status == 0, log
    assert cap.dropped == 0 and cap.count() > 0, (len(cap.packets), cap.dropped)
    assert matched == 0 and reached == [], (matched, reached)
    assert direct_ok == direct_probes
    assert resumed is not None, log


def proxied_connect(lab: Lab, port: int, timeout: float) -> bool:
    """A connection from the LAN to the WAN listener on RELAYED: True once connected (whoever answered)."""
    try:
        with lan_connect(lab, RELAYED, port, timeout=timeout) as s:
            s.sendall(b"x")
            return True
    except OSError:
        return False


# -- interface events ---------------------------------------------------------------------------------------

def _ip(ns: str, *argv: str, stdin: str | None = None) -> None:
    subprocess.run(["ip", "-n", ns, *argv], input=stdin, text=True, capture_output=True, check=True, timeout=60)


def delete_lan_link(lab: Lab) -> None:
    """Delete the router's LAN interface (its peer, the client's veth0, goes with it)."""
    _ip(lab.router, "link", "del", lab.addr.lan_ifname)


def create_lan_link(lab: Lab) -> None:
    """Make the LAN link again as daetui.lab.topology builds it (the router's side first: it is what is timed)."""
    a = lab.addr
    _ip(lab.router, "link", "add", "name", a.lan_ifname, "address", ROUTER_LAN_MAC, "type", "veth", "peer", "name",
        a.client_ifname, "address", LAN_MAC, "netns", lab.lan)


def address_lan_link(lab: Lab) -> None:
    """The addresses and routes the lab gives the LAN link."""
    a = lab.addr
    _ip(lab.router, "addr", "add", f"{a.router_lan4}/24", "dev", a.lan_ifname)
    _ip(lab.router, "-6", "addr", "add", f"{a.router_lan6}/64", "dev", a.lan_ifname, "nodad")
    _ip(lab.router, "link", "set", a.lan_ifname, "up")
    _ip(lab.lan, "addr", "add", f"{a.client4}/24", "dev", a.client_ifname)
    _ip(lab.lan, "-6", "addr", "add", f"{a.client6}/64", "dev", a.client_ifname, "nodad")
    _ip(lab.lan, "link", "set", a.client_ifname, "up")
    _ip(lab.lan, "route", "add", "default", "via", a.router_lan4)
    _ip(lab.lan, "-6", "route", "add", "default", "via", a.router_lan6)


def ingress_attached(lab: Lab) -> bool:
    out = subprocess.run(["tc", "-n", lab.router, "filter", "show", "dev", lab.addr.lan_ifname, "ingress"],
                         capture_output=True, text=True, timeout=10).stdout
    return "lan_ingress" in out


def churn(ns: str, pairs: int, rounds: int, pause: float, done: list[float]) -> None:
    """`pairs` veth pairs created and deleted in `ns`, in `rounds` batches `pause` apart (a batch's pairs
    deleted at once, by link group: one by one, each deletion waits for an RCU grace period); appends the
    seconds it took to `done`."""
    t0 = time.monotonic()
    per = pairs // rounds
    for r in range(rounds):
        if r:
            time.sleep(pause)
        cmds = "".join(f"link add fz{r}x{i} group 77 type veth peer name fy{r}x{i} group 77\n" for i in range(per))
        _ip(ns, "-batch", "-", stdin=cmds)
        _ip(ns, "link", "del", "group", "77")
    done.append(time.monotonic() - t0)


def test_5000_veth_events_while_the_lan_interface_is_recreated(lab, tmp_path, figures):
    # A lab of its own (the session's `lab` only says the kernel side can run): its LAN link is torn down.
    lab = Lab(f"dtf{os.getpid() % 100000}")
    lab.up()
    try:
        cfg = tmp_path / "daetui.toml"
        cfg.write_text(config(fail_open=True))
        d = Daemon(lab, cfg, tmp_path / "run").start()
        try:
            assert ingress_attached(lab) and echoes(lab, RELAYED, timeout=5)
            took: list[float] = []
            worker = threading.Thread(target=churn, args=(lab.router, VETH_PAIRS, VETH_ROUNDS, 0.35, took),
                                      daemon=True)
            binds: list[float | None] = []
            during: list[bool] = []   # was the churn still going when the link came back?
            start = time.monotonic()
            worker.start()
            try:
                for n in range(LAN_RECREATIONS):
                    time.sleep(max(0.0, start + 0.3 + 1.2 * n - time.monotonic()))  # inside the churn's ~4.5 s
                    delete_lan_link(lab)
                    time.sleep(0.2)
                    create_lan_link(lab)
                    t0 = time.monotonic()
                    during.append(worker.is_alive())
                    bound = None
                    while bound is None and time.monotonic() < t0 + BIND_BOUND + 3:
                        if ingress_attached(lab):
                            bound = time.monotonic() - t0
                        else:
                            time.sleep(0.02)
                    binds.append(bound)
                    address_lan_link(lab)
                    time.sleep(0.3)
            finally:
                worker.join(120)
            since = time.time()
            flows = echoes(lab, RELAYED, timeout=5) and echoes(lab, DIRECT, timeout=5) and relayed_after(d, since)
            alive = (d.ping() or {}).get("running")
        finally:
            log = d.log()
            status = d.stop()
    finally:
        lab.down()
    figures.add("veth create/delete events", f"{2 * VETH_PAIRS} in {took[0]:.1f} s" if took else "churn failed")
    figures.add("LAN interface re-created", f"{LAN_RECREATIONS}, {sum(during)} of them during the churn")
    figures.add("lan_ingress attached again after", " / ".join(f"{b:.2f} s" if b is not None else "never"
                                                               for b in binds), f"<= {BIND_BOUND:g} s")
    figures.add("traffic through it afterwards", "yes" if flows else "no")
    assert took, "the veth churn did not finish"
    assert "interface monitor stopped" not in log, log[-3000:]
    assert all(b is not None and b <= BIND_BOUND for b in binds), (binds, log[-3000:])
    assert flows and alive, log[-3000:]
    assert status == 0, log


