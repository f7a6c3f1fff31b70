"""The router's own traffic (issue 12): wan_egress, daetui0, the socket hooks and pname().

The "own traffic" is real programs (curl, wget, python3) started in the lab's router namespace,
each in a cgroup v2 of the test's own that the daemon's socket hooks watch (`global.cgroup`).
Proxied flows go through a real ss-server in the wan namespace (its log shows each target);
direct ones stay in the kernel (its counters, and no connection in the control plane); daetui's
own dials (to that very ss-server, with the fallback naming the proxy) are never caught.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from helpers import plane_in_lab, snapshot, wait_for
from owntraffic import curl, run_in, ss_targets, udp_echo

from daetui.dataplane.cgroups import cgroup2_root
from daetui.lab.topology import ADDR, HTTP_PORT, Lab
from testkit.configs import LAB_CHECKS
from testkit.daemon import Daemon
from testkit.peers.shadowsocks import SsServer

pytestmark = pytest.mark.kernel

PROXIED4, PROXIED6 = ADDR.hosts4[0], ADDR.hosts6[0]   # the fallback: the proxy (ss-server)
DIRECT4, DIRECT6 = ADDR.hosts4[1], ADDR.hosts6[1]     # a direct rule
GUARDED4 = ADDR.hosts4[2]                            # pname(curl) -> block (and ss-server's own address)
MARK = 0x4000000                                     # so_mark_from_dae's default


def config(ss: SsServer, cgroup: str, wan: str = "wan0", extra: str = "") -> str:
    return f"""
[global]
wan_interface = ["{wan}"]
dial_mode = "ip"
check_interval = "10m"
cgroup = "{cgroup}"
{extra}
{LAB_CHECKS}
[node]
ss = "{ss.node(4, "ss").link()}"
[group.proxy]
[routing]
rules = ["dip({GUARDED4}) && dport({HTTP_PORT}) && pname(curl) -> block",
         "dip({DIRECT4}, {DIRECT6}) -> direct"]
# Everything else of the router's own goes to the proxy: daetui's own dial to ss-server too, were it caught.
fallback = "proxy"
"""


def test_own_tcp_and_udp_over_ipv4_and_ipv6_go_through_the_proxy_and_direct_stays_in_the_kernel(
        lab: Lab, own_ss: SsServer, own_cgroup: tuple[str, Path], tmp_path: Path) -> None:
    ss, (name, cg) = own_ss, own_cgroup
    with plane_in_lab(lab, config(ss, name), tmp_path / "run") as runner:
        # Proxied: TCP over IPv4 and IPv6, by curl; ss-server connected to each target for us.
        before = len(ss_targets(ss))
        for host in (PROXIED4, PROXIED6):
            done = curl(lab.router, cg, host)
            assert done.returncode == 0 and f"daetui lab host {host}" in done.stdout, done.stderr
        targets = ss_targets(ss)[before:]
        assert f"{PROXIED4}:{HTTP_PORT}" in targets and any(PROXIED6 in t for t in targets), targets
        conns = {c.dst[0]: c for c in snapshot(runner).connections if c.proto == "tcp"}
        for host in (PROXIED4, PROXIED6):
            c = conns[host]
            assert (c.process, c.outbound, c.node) == ("curl", "proxy", "ss"), c
            assert c.pid and c.src[0] in (ADDR.router_wan4, ADDR.router_wan6), c
        # Proxied UDP, by python3: echoed back through ss-server's UDP relay.
        for host, word in ((PROXIED4, "own-udp-4"), (PROXIED6, "own-udp-6")):
            assert udp_echo(lab.router, cg, host, word) == word
        udp = {c.dst[0]: c for c in snapshot(runner).connections if c.proto == "udp"}
        assert {PROXIED4, PROXIED6} <= set(udp), udp
        assert udp[PROXIED4].process == "python3" and udp[PROXIED4].node == "ss", udp[PROXIED4]

        # Direct: TCP and UDP, both families, in the kernel; nothing reaches the control plane.
        snap = snapshot(runner)
        to_control, direct_before = snap.counters["OWN_TO_CONTROL"], snap.counters["DECIDED_DIRECT"]
        for host in (DIRECT4, DIRECT6):
            done = curl(lab.router, cg, host)
            assert done.returncode == 0 and f"daetui lab host {host}" in done.stdout, done.stderr
            assert udp_echo(lab.router, cg, host, "direct") == "direct"
        snap = snapshot(runner)
        assert snap.counters["OWN_TO_CONTROL"] == to_control
        assert snap.counters["DECIDED_DIRECT"] - direct_before == 4
        assert not [c for c in snap.connections if c.dst[0] in (DIRECT4, DIRECT6)]
        own = [f for f in snap.kernel_flows if f.own and str(f.key.dst) in (DIRECT4, DIRECT6)]
        assert {(f.process, f.key.proto) for f in own} == {("curl", "tcp"), ("python3", "udp")}, own
        # daetui's own dials to ss-server left unmarked by the rules (fallback: proxy) were passed.
        assert snap.counters["OWN_BYPASS"] > 0


def test_pname_blocks_curl_and_not_another_program(lab: Lab, own_ss: SsServer, own_cgroup: tuple[str, Path],
                                                   tmp_path: Path) -> None:
    ss, (name, cg) = own_ss, own_cgroup
    with plane_in_lab(lab, config(ss, name), tmp_path / "run") as runner:
        blocked = curl(lab.router, cg, GUARDED4)
        assert blocked.returncode != 0 and "daetui lab host" not in blocked.stdout
        other = curl(lab.router, cg, GUARDED4, prog="wget")
        assert other.returncode == 0 and f"daetui lab host {GUARDED4}" in other.stdout, other.stderr
        flows = [f for f in snapshot(runner).kernel_flows if f.own and str(f.key.dst) == GUARDED4]
        assert {f.process: snapshot(runner).outbounds.get(f.outbound) for f in flows} == {
            "curl": "block", "wget": "proxy"}, flows


def test_a_socket_with_daetuis_mark_is_never_caught_and_one_without_is(
        lab: Lab, own_ss: SsServer, own_cgroup: tuple[str, Path], tmp_path: Path) -> None:
    """What keeps daetui's dials out of its own hands: the same connection, marked and not."""
    ss, (name, cg) = own_ss, own_cgroup
    client = """
import socket, sys
s = socket.create_connection if False else None
mark = int(sys.argv[1])
c = socket.socket()
if mark:
    c.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
c.settimeout(5)
c.connect((sys.argv[2], 80))
c.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
print(c.recv(4096).decode(errors="replace").split("\\r\\n")[0])
"""
    with plane_in_lab(lab, config(ss, name), tmp_path / "run") as runner:
        marked = run_in(lab.router, cg, "python3", "-c", client, str(MARK), PROXIED4)
        assert marked.returncode == 0 and "200" in marked.stdout, marked.stderr
        assert not [c for c in snapshot(runner).connections if c.dst[0] == PROXIED4]
        plain = run_in(lab.router, cg, "python3", "-c", client, "0", PROXIED4)
        assert plain.returncode == 0 and "200" in plain.stdout, plain.stderr
        assert [c.node for c in snapshot(runner).connections if c.dst[0] == PROXIED4] == ["ss"]


def test_sigkill_fails_open_for_the_routers_own_traffic_and_cleanup_removes_everything(
        lab: Lab, own_ss: SsServer, own_cgroup: tuple[str, Path]) -> None:
    ss, (name, cg) = own_ss, own_cgroup
    daemon = Daemon.from_text(lab.router, config(ss, name)).start()
    try:
        before = len(ss_targets(ss))
        assert curl(lab.router, cg, PROXIED4).returncode == 0
        assert len(ss_targets(ss)) > before  # through the proxy while it runs
        daemon.signal(signal.SIGKILL)
        daemon.wait()
        # The programs stay (fail open); with no listener, the own flow passes direct.
        done = curl(lab.router, cg, PROXIED4)
        assert done.returncode == 0 and f"daetui lab host {PROXIED4}" in done.stdout, done.stderr
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop()
    cleaned = daemon.cli("cleanup")
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert_nothing_left(lab)


def test_a_clean_stop_removes_every_program_veth_and_hook(lab: Lab, own_ss: SsServer,
                                                          own_cgroup: tuple[str, Path]) -> None:
    ss, (name, cg) = own_ss, own_cgroup
    with Daemon.from_text(lab.router, config(ss, name)) as daemon:
        links = ip(lab.router, "link", "show")
        assert "daetui0" in links and "daetui0p" in links
        assert "wan_egress" in ip(lab.router, "-d", "filter", "show", "dev", "wan0", "egress", tc=True)
        assert sysctl(lab.router, "net.ipv4.conf.daetui0.accept_local") == "1"
        assert cgroup_programs(cg) >= 8
        assert daemon.stop() == 0, daemon.log()
    assert_nothing_left(lab)
    assert cgroup_programs(cg) == 0


def ip(ns: str, *args: str, tc: bool = False) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "tc" if tc else "ip", *args], capture_output=True,
                          text=True, timeout=10).stdout


def sysctl(ns: str, key: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-n", key], capture_output=True, text=True,
                          timeout=10).stdout.strip()


def cgroup_programs(cg: Path) -> int:
    """Programs attached to the cgroup (bpftool's count of its attachments)."""
    out = subprocess.run(["bpftool", "cgroup", "show", str(cg)], capture_output=True, text=True, timeout=10).stdout
    return sum(1 for line in out.splitlines() if line.strip() and line.split()[0].isdigit())


def assert_nothing_left(lab: Lab) -> None:
    links = ip(lab.router, "link", "show")
    assert "daetui0" not in links, links
    assert "wan_egress" not in ip(lab.router, "-d", "filter", "show", "dev", "wan0", "egress", tc=True)
    assert "clsact" not in ip(lab.router, "qdisc", "show", "dev", "wan0", tc=True)
    rules = ip(lab.router, "rule", "show")
    assert "lookup 2024" not in rules, rules


def test_a_udp_server_on_the_router_answers_untouched(lab: Lab, own_ss: SsServer, own_cgroup: tuple[str, Path],
                                                      tmp_path: Path) -> None:
    """A socket answering a peer it heard from (a server: DNS for the WAN, a VPN in user space) sends answers,
    not new flows: with the fallback naming the proxy, its datagrams still leave as they are."""
    ss, (name, cg) = own_ss, own_cgroup
    server = """
import socket, sys
s = socket.socket(); s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.settimeout(8)
print("ready", flush=True)
data, peer = s.recvfrom(2048); s.sendto(data.upper(), peer)
"""
    with plane_in_lab(lab, config(ss, name), tmp_path / "run") as runner:
        proc = subprocess.Popen(["ip", "netns", "exec", lab.router, "python3", "-c", server, "5353"],
                                stdout=subprocess.PIPE, text=True, preexec_fn=lambda: (cg / "cgroup.procs").write_text(
                                    str(os.getpid())))
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            from daetui.net.netns import netns
            with netns(lab.wan):
                c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.bind((PROXIED4, 0))
            c.settimeout(5)
            c.sendto(b"hello", (ADDR.router_wan4, 5353))
            assert c.recvfrom(64)[0] == b"HELLO"
            c.close()
        finally:
            proc.kill()
            proc.wait()
        assert snapshot(runner).counters["OWN_SERVER"] >= 1
        assert not [c for c in snapshot(runner).connections if c.proto == "udp" and c.src[1] == 5353]


def test_with_so_mark_0_daetuis_own_dials_are_told_by_its_pid(lab: Lab, own_ss: SsServer, tmp_path: Path) -> None:
    """dae's default so_mark_from_dae = 0: daetui's dials carry no mark, and the fallback names the proxy, so
    its own dial to ss-server would be caught and looped back to itself; the socket hooks (on the root
    cgroup, which holds daetui) tell them by daetui's pid, and the flow goes through."""
    ss = own_ss
    cfg = config(ss, "/", extra="so_mark_from_dae = 0")
    with plane_in_lab(lab, cfg, tmp_path / "run") as runner:
        root = Path(cgroup2_root() or "/sys/fs/cgroup")
        before = len(ss_targets(ss))
        done = curl(lab.router, root, PROXIED4)
        assert done.returncode == 0 and f"daetui lab host {PROXIED4}" in done.stdout, done.stderr
        assert f"{PROXIED4}:{HTTP_PORT}" in ss_targets(ss)[before:]
        snap = snapshot(runner)
        assert [c.node for c in snap.connections if c.dst[0] == PROXIED4] == ["ss"]
        assert snap.counters["OWN_BYPASS"] > 0


def test_with_so_mark_0_and_a_cgroup_without_daetui_it_refuses_to_start(
        lab: Lab, own_ss: SsServer, own_cgroup: tuple[str, Path]) -> None:
    name, _ = own_cgroup
    daemon = Daemon.from_text(lab.router, config(own_ss, name, extra="so_mark_from_dae = 0"))
    with pytest.raises(RuntimeError, match=f"so_mark_from_dae is 0 and daetui does not run inside cgroup {name}"):
        daemon.start()
    assert "daetui0" not in ip(lab.router, "link", "show")  # what it had made, undone


def test_daetuis_subscription_fetch_and_health_checks_never_reach_its_own_listeners(
        lab: Lab, own_ss: SsServer, own_cgroup: tuple[str, Path], tmp_path: Path) -> None:
    """The fallback names the proxy, whose only node comes from a subscription served on the lab's internet:
    fetched with daetui's mark, it passes wan_egress (caught, it would need the very group it fills), the
    node's checks through ss-server pass too, and nothing of daetui's own reached its listeners."""
    ss, (name, cg) = own_ss, own_cgroup
    served = tmp_path / "served"
    served.mkdir()
    (served / "sub.txt").write_text(ss.node(4, "from-sub").link() + "\n")
    server = subprocess.Popen(["ip", "netns", "exec", lab.wan, "python3", "-m", "http.server", "8081", "--bind",
                               DIRECT4, "--directory", str(served)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        cfg = config(ss, name).replace('[node]\nss = "' + ss.node(4, "ss").link() + '"\n[group.proxy]',
                                       f'[subscription]\nmine = "http://{DIRECT4}:8081/sub.txt"\n'
                                       '[group.proxy]\nfilter = ["subtag(mine)"]')
        assert "subtag(mine)" in cfg
        with plane_in_lab(lab, cfg, tmp_path / "run") as runner:
            node = wait_for(lambda: next((n for n in snapshot(runner).nodes if n.name == "from-sub" and n.alive4),
                                         None), timeout=20)
            assert node.alive4
            snap = snapshot(runner)
            assert snap.counters["OWN_TO_CONTROL"] == 0 and not snap.connections
            assert snap.counters["OWN_BYPASS"] > 0
            done = curl(lab.router, cg, PROXIED4)  # and the router's own flow goes through that node
            assert done.returncode == 0 and f"daetui lab host {PROXIED4}" in done.stdout, done.stderr
            assert [c.node for c in snapshot(runner).connections if c.dst[0] == PROXIED4] == ["from-sub"]
    finally:
        server.kill()
        server.wait()


SEND_UDP = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
if int(sys.argv[3]):
    s.bind(("0.0.0.0", int(sys.argv[3])))
s.sendto(b"x", (sys.argv[1], int(sys.argv[2])))
"""


def test_dhcp_broadcast_and_multicast_of_the_router_are_never_caught(
        lab: Lab, own_ss: SsServer, own_cgroup: tuple[str, Path], tmp_path: Path) -> None:
    """The fallback names the proxy; still a DHCP renewal (unicast to the server), a broadcast and a
    multicast datagram leave as they are: the WAN's own address depends on the first."""
    ss, (name, cg) = own_ss, own_cgroup
    with plane_in_lab(lab, config(ss, name), tmp_path / "run") as runner:
        before = snapshot(runner).counters
        for dst, port, sport in ((PROXIED4, 67, 68), ("255.255.255.255", 67, 68), ("198.51.100.255", 9, 0),
                                 ("224.0.0.251", 5353, 0)):
            done = run_in(lab.router, cg, "python3", "-c", SEND_UDP, dst, str(port), str(sport))
            assert done.returncode == 0, done.stderr
        after = snapshot(runner).counters
        assert after["OWN_TO_CONTROL"] == before["OWN_TO_CONTROL"]
        assert after["OWN_BYPASS"] > before["OWN_BYPASS"]             # the unicast renewal (daetui's own too)
        assert after["NON_UNICAST"] - before["NON_UNICAST"] >= 3     # the three broadcasts and multicast
        assert not [c for c in snapshot(runner).connections if c.proto == "udp"]
