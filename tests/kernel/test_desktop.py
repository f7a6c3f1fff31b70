"""Desktop and server mode (issue 12): daetui on a machine with one WAN interface and no LAN.

The lab's LAN namespace is that machine: one interface (veth0) holding its default routes, no
LAN of its own. daetui runs there with `wan_interface = ["auto"]` and nothing else bound; its own
programs (curl, wget, python3, in a cgroup of the test's) go through a real ss-server when the
rules say so, stay in the kernel when direct, and its resolver's queries to the outside are
answered by daetui's DNS, whose answers route the next connection by domain in the kernel.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import plane_in_lab, snapshot, wait_for
from owntraffic import curl, run_in, ss_targets, udp_echo

from daetui.lab.dnspeers import Unbound
from daetui.lab.topology import ADDR, HTTP_PORT, Lab
from testkit.configs import LAB_CHECKS
from testkit.peers.shadowsocks import SsServer

pytestmark = pytest.mark.kernel

PROXIED4, PROXIED6 = ADDR.hosts4[0], ADDR.hosts6[0]   # www.example.test in the lab's zone
DIRECT4 = ADDR.hosts4[1]
DNS4 = ADDR.dns4[0]

QUERY = """
import socket, struct, sys
name = sys.argv[2].encode()
q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p for p in name.split(b".")) + b"\\0" + struct.pack("!HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(q, (sys.argv[1], 53))
a = s.recv(2048)
print(socket.inet_ntoa(a[-4:]) if struct.unpack("!H", a[6:8])[0] else "no answer")
"""


def desktop_config(ss: SsServer, cgroup: str) -> str:
    return f"""
[global]
wan_interface = ["auto"]
dial_mode = "ip"
check_interval = "10m"
cgroup = "{cgroup}"
{LAB_CHECKS}
[node]
ss = "{ss.node(4, "ss").link()}"
[group.proxy]
[dns]
upstream = {{ ub = "udp://{DNS4}:53" }}
request = ["fallback: ub"]
[routing]
rules = ["pname(wget) -> block", "dip({DIRECT4}) -> direct", "domain(suffix: example.test) -> proxy",
         "dip({PROXIED6}) -> proxy"]
fallback = "direct"
"""


@pytest.fixture(scope="module")
def unbound(lab: Lab) -> Iterator[Unbound]:
    server = Unbound(lab)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_machine_with_only_a_wan_interface_routes_its_own_traffic(
        lab: Lab, own_ss: SsServer, own_cgroup: tuple[str, Path], unbound: Unbound, tmp_path: Path) -> None:
    ss, (name, cg) = own_ss, own_cgroup
    desk = lab.lan
    with plane_in_lab(lab, desktop_config(ss, name), tmp_path / "run", ns=desk) as runner:
        snap = snapshot(runner)
        wan = [i for i in snap.interfaces if i.bound]
        assert [(i.name, i.side, i.matched, i.programs) for i in wan] == [
            (ADDR.client_ifname, "wan", "auto", ("wan_egress (egress)",))]
        assert snap.counters.get("OWN_TO_CONTROL") == 0

        # Before any DNS the kernel knows no name for www's address: the control plane sniffs the flow
        # (HTTP, Host: an address, naming nothing) and it goes by the fallback, direct.
        done = curl(desk, cg, PROXIED4)
        assert done.returncode == 0 and f"daetui lab host {PROXIED4}" in done.stdout, done.stderr
        first = wait_for(lambda: snapshot(runner).connections)
        assert [(c.stage, c.outbound, c.node, c.process) for c in first] == [("userspace", "direct", None, "curl")]
        # The machine's resolver asks the lab's unbound; daetui's DNS answers (hijacked, as the LAN's).
        answer = run_in(desk, cg, "python3", "-c", QUERY, DNS4, "www.example.test")
        assert answer.stdout.strip() == PROXIED4, answer.stderr
        cache = {r.name.rstrip("."): r for r in snapshot(runner).dns.cache}
        assert "www.example.test" in cache and PROXIED4 in cache["www.example.test"].answers
        # Now the kernel knows the name: the next connection goes to the proxy by domain(), in the kernel.
        before = len(ss_targets(ss))
        done = curl(desk, cg, PROXIED4)
        assert done.returncode == 0 and f"daetui lab host {PROXIED4}" in done.stdout, done.stderr
        assert f"{PROXIED4}:{HTTP_PORT}" in ss_targets(ss)[before:]
        conn = wait_for(lambda: next((c for c in snapshot(runner).connections if c.dst[0] == PROXIED4
                                      and c.node == "ss"), None))
        assert (conn.process, conn.node, conn.stage) == ("curl", "ss", "kernel")
        assert conn.rule.startswith("domain(")
        # IPv6 and UDP too.
        done = curl(desk, cg, PROXIED6)
        assert done.returncode == 0 and f"daetui lab host {PROXIED6}" in done.stdout, done.stderr
        assert any(PROXIED6 in t for t in ss_targets(ss)[before:])
        assert udp_echo(desk, cg, PROXIED4, "desk-udp") == "desk-udp"
        assert any(c.proto == "udp" and c.dst[0] == PROXIED4 and c.node == "ss"
                   for c in snapshot(runner).connections)
        # Direct stays in the kernel; pname() blocks one program and not the other.
        to_control = snapshot(runner).counters["OWN_TO_CONTROL"]
        assert curl(desk, cg, DIRECT4).returncode == 0
        assert snapshot(runner).counters["OWN_TO_CONTROL"] == to_control
        assert curl(desk, cg, DIRECT4, prog="wget").returncode != 0
        assert snapshot(runner).counters["OWN_BYPASS"] > 0  # its own dials to ss-server and unbound
