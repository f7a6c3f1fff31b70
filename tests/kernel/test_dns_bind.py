"""`dns.bind` without an address serves the LAN side only: the LAN interfaces' addresses, never every address.

Bound to every address, the router would answer DNS on its WAN address too:
an open resolver for the internet, and on loopback for any local process.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import pytest
from helpers import addresses, plane_in_lab, wait_for

from daetui.lab.topology import ADDR, Lab
from daetui.net.netns import netns
from testkit.configs import dns_config

pytestmark = pytest.mark.kernel

UNBOUND4 = ADDR.dns4[0]
PORT = 5353


def ask(ns: str, server: str, scope: int = 0, timeout: float = 2.0) -> dns.message.Message | None:
    """www.example.test from `ns` to server:PORT; None when nothing answers."""
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with netns(ns):
        s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        to = (server, PORT, 0, scope) if family == socket.AF_INET6 else (server, PORT)
        s.sendto(dns.message.make_query("www.example.test", "A").to_wire(), to)
        try:
            return dns.message.from_wire(s.recvfrom(4096)[0])
        except (TimeoutError, ConnectionRefusedError):
            return None
    finally:
        s.close()


def listening(ns: str) -> set[str]:
    """The local addresses of the router's sockets on PORT (UDP and TCP listeners)."""
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-HlnuatO", f"sport = :{PORT}"], capture_output=True,
                         text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        local = line.split()[4]
        found.add(local.rsplit(":", 1)[0].split("%")[0].strip("[]"))  # "[fe80::1]%lan0:5353"
    return found


def link_local(ns: str, ifname: str) -> str:
    info = json.loads(subprocess.run(["ip", "-j", "-n", ns, "-6", "addr", "show", "dev", ifname], capture_output=True,
                                     text=True, check=True).stdout)
    return next(a["local"] for a in info[0]["addr_info"] if a["scope"] == "link")


def test_bind_without_an_address_serves_the_lan_addresses_only(lab: Lab, tmp_path: Path):
    from testkit.peers.dnsmasq import dns_peers

    cfg = dns_config(f"""
[dns]
upstream = {{ ub = "udp://{UNBOUND4}:53" }}
request = ["fallback: ub"]
bind = ":{PORT}"
[routing]
fallback = "direct"
""")
    ll = link_local(lab.router, ADDR.lan_ifname)
    with dns_peers(lab), plane_in_lab(lab, cfg, tmp_path):
        # The LAN's addresses: IPv4, IPv6 and the link-local one (bound a moment after the start).
        lan = {ADDR.router_lan4, ADDR.router_lan6, ll}
        with contextlib.suppress(AssertionError):
            wait_for(lambda: listening(lab.router) == lan)
        assert listening(lab.router) == lan
        # Answered from the LAN on each of them.
        for server in (ADDR.router_lan4, ADDR.router_lan6):
            r = ask(lab.lan, server)
            assert r is not None and addresses(r) == [ADDR.hosts4[0]], server
        # Not on loopback, nor on the WAN side.
        assert ask(lab.router, "127.0.0.1") is None
        assert ask(lab.wan, ADDR.router_wan4) is None
        assert ask(lab.wan, ADDR.router_wan6) is None
