"""Record what a real daemon in the lab tells the console, for the snapshot tests.

    sudo .venv/bin/python tests/ui/record_fixture.py

Builds a lab of its own with real DNS servers (daetui.lab.dnspeers) and two
SOCKS5 proxies (danted) as the proxy group's nodes, runs daetui in it with
FIXTURE_CONFIG, makes a known set of flows and LAN DNS queries, pins a node,
and writes the control socket's answers (snapshot, logs, maps, map entries,
console lookups) to tests/ui/fixtures/lab.json. The snapshot tests
replay them, so their pictures show real data and never change between runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import dns.message
import dns.query

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from helpers import Daemon, http_get, lan_socket, tcp_echo, udp_exchange  # noqa: E402

from daetui.control.client import ControlClient  # noqa: E402
from daetui.lab.topology import ADDR, LAN_MAC, Lab  # noqa: E402
from daetui.net.netns import netns  # noqa: E402
from testkit.peers.dnsmasq import dns_peers  # noqa: E402
from testkit.peers.socks_http import PROXY4, Danted  # noqa: E402

FIXTURE_CONFIG = f"""
[global]
lan_interface = ["lan0", "lan1"]

[device]
"{LAN_MAC}" = "lab-laptop"

[node]
lab-socks = "socks5://{PROXY4}:1080"
lab-socks-2 = "socks5://{PROXY4}:1090"
# Nothing listens there: every check fails.
gone = "socks5://{PROXY4}:1099"

[group.proxy]
filter = ["name(lab-socks, gone)", "name(lab-socks-2) [add_latency: 50ms]"]
policy = "min"
tcp_check_url = ["http://203.0.113.10/", "203.0.113.10", "2001:db8:3::10"]
udp_check_dns = ["dns.lab.test:53", "203.0.113.53", "2001:db8:3::53"]
check_interval = "1s"

[group.media]
filter = ["name(keyword: socks-2)"]
policy = "fixed(0)"

[dns]
# unbound and dnsmasq of the lab, and one that never answers.
upstream = {{ ub = "udp://203.0.113.53:53", dm = "tcp://203.0.113.54:53", dead = "udp://203.0.113.99:53" }}
request = ["qname(suffix: lab.test) -> dm", "qname(suffix: broken.test) -> dead", "fallback: ub"]
upstream_timeout = "1s"

[routing]
rules = [
  "dip(224.0.0.0/3, 'ff00::/8') -> direct",
  "dip(203.0.113.10, '2001:db8:3::10') -> proxy",
  "dip(203.0.113.11, '2001:db8:3::11') && l4proto(tcp) && dport(80) -> proxy",
  "dip(203.0.113.12, '2001:db8:3::12') -> block",
  {{ rule = "dport(22) -> direct", name = "ssh", enabled = false }},
  "domain(suffix: example.test) && dport(443) -> proxy",
]
fallback = "direct"
"""
OUT = Path(__file__).resolve().parent / "fixtures" / "lab.json"
PORTS = (1080, 1090)  # the two danted nodes

# Asked by the LAN: answers, an alias, a text record, NXDOMAIN, one through
# dnsmasq, one whose upstream times out, and a repeat (a cache hit).
LAN_QUERIES = [("www.example.test", "A"), ("www.example.test", "AAAA"), ("api.example.test", "A"),
               ("alias.example.test", "A"), ("txt.example.test", "TXT"), ("nope.example.test", "A"),
               ("dns.lab.test", "A"), ("x.broken.test", "A"), ("www.example.test", "A")]
# Asked from the console (the query box), replayed by FrozenSource.dns_lookup.
LOOKUPS = [("alias.example.test", "A"), ("big.example.test", "A"), ("www.example.test", "A")]


def make_flows(lab: Lab) -> socket.socket:
    a = ADDR
    for v, hosts in ((4, a.hosts4), (6, a.hosts6)):
        http_get(lab, hosts[0], "/whoami")
        http_get(lab, hosts[0], "/bytes/300000")
        http_get(lab, hosts[1], "/")
        udp_exchange(lab, hosts[1], b"direct ping", count=2)
        udp_exchange(lab, hosts[0], b"relayed ping", count=2)
        tcp_echo(lab, hosts[0], b"x" * 5000)
        with netns(lab.lan):
            s = socket.socket(socket.AF_INET6 if v == 6 else socket.AF_INET)
        s.settimeout(0.3)
        try:
            s.connect((hosts[2], 80))
        except OSError:
            pass
        s.close()
    for name, qtype in LAN_QUERIES:
        s = lan_socket(lab, a.dns4[0], socket.SOCK_DGRAM)
        s.setblocking(False)
        dns.query.udp(dns.message.make_query(name, qtype), a.dns4[0], timeout=5, sock=s)
        s.close()
    # One relayed connection still open when the snapshot is taken.
    with netns(lab.lan):
        keep = socket.create_connection((a.hosts4[0], 7), timeout=3)
    keep.sendall(b"still here")
    keep.recv(100)
    return keep


async def record(run: Path) -> dict:
    c = ControlClient(run / "control.sock")
    await c.connect()
    # A pin, as the console's p makes it: the pictures show one.
    await c.pin_node("proxy", "lab-socks-2")
    lookups = {f"{name} {qtype}": await c.call("dns_lookup", name=name, qtype=qtype) for name, qtype in LOOKUPS}
    out = {
        "snapshot": await c.call("snapshot"),
        "logs": await c.call("logs"),
        "maps": await c.call("maps"),
        "entries": {name: await c.call("map_entries", name=name) for name in
                    ("routing_tuples", "match_sets", "ip_sets", "domain_routing", "rule_stats", "counters",
                     "listeners")},
        "dns_lookups": lookups,
    }
    await c.close()
    return out


def main() -> int:
    lab = Lab("dtrec")
    lab.up()
    stack = ExitStack()
    # A fixed path: the config's name shows in the pictures.
    tmp = Path("/tmp/daetui-fixture")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    cfg = tmp / "fixture.toml"
    cfg.write_text(FIXTURE_CONFIG)
    d = Daemon(lab, cfg, tmp / "run")
    try:
        stack.enter_context(dns_peers(lab))
        for port in PORTS:
            stack.enter_context(Danted(lab, port))
        d.start()
        # The first checks: the dead node known dead before a flow could pick it.
        time.sleep(2)
        keep = make_flows(lab)
        time.sleep(1.5)
        data = asyncio.run(record(tmp / "run"))
        keep.close()
    finally:
        d.stop()
        stack.close()
        lab.down()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("needs root (the lab)")
    sys.exit(main())
