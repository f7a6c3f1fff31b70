"""The DNS controller in the lab, against real unbound and dnsmasq.

The LAN client asks the lab's DNS servers as any client would; the kernel
hands its port-53 traffic to daetui, which answers through the configured
upstreams. The tests check the answers the client gets, which upstream was
asked (the controller's own figures), and what reached the kernel: the
domain bitmap of each answered address, and the decision of the client's
next flow to it.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from helpers import addresses, http_get, lan_query, lan_socket, plane_in_lab, snapshot, upstream_rows, wait_for

from daetui.control.plane import ControlPlane
from daetui.control.runner import ControlPlaneThread
from daetui.lab.dnspeers import Record
from daetui.lab.topology import ADDR
from testkit.configs import LAB_CHECKS, ONE_UPSTREAM, dns_config
from testkit.peers.dnsmasq import Dnsmasq, dns_peers

pytestmark = pytest.mark.kernel

UNBOUND4, DNSMASQ4 = ADDR.dns4
UNBOUND6, _ = ADDR.dns6


@pytest.fixture(scope="module")
def peers(lab):
    with dns_peers(lab) as p:
        yield p


def cache_row(runner: ControlPlaneThread, name: str, qtype: str = "A"):
    for row in snapshot(runner).dns.cache:
        if row.name == name and row.qtype == qtype:
            return row
    return None


def kernel_bits(runner: ControlPlaneThread, addr: str) -> dict[int, int] | None:
    plane: ControlPlane = runner.plane  # type: ignore[assignment]
    return runner.call(lambda: plane.dataplane.program.domain_bits(ipaddress.ip_address(addr)))


def test_each_upstream_scheme_answers_the_lan(lab, peers, tmp_path: Path):
    cfg = dns_config(f"""
[dns]
upstream = {{ u = "udp://{UNBOUND4}:53", t = "tcp://{UNBOUND4}:53", tu = "tcp+udp://[{UNBOUND6}]:53",
             dot = "tls://dns.lab.test:853", doh = "https://dns.lab.test/dns-query" }}
ca_file = "{peers.ca.ca_file}"
request = ["qname(full: www.example.test) -> u", "qname(full: api.example.test) -> t",
           "qname(full: alias.example.test) -> tu", "qname(full: cn.lab.test) -> dot",
           "qname(full: txt.example.test) -> doh", "fallback: u"]
[routing]
fallback = "direct"
""")
    with plane_in_lab(lab, cfg, tmp_path) as runner:
        assert addresses(lan_query(lab, UNBOUND4, "www.example.test")) == ["203.0.113.10"]
        assert addresses(lan_query(lab, UNBOUND4, "api.example.test")) == ["203.0.113.11"]
        # Over TCP and IPv6 from the client: tcp+udp asks the upstream over TCP too.
        alias = lan_query(lab, UNBOUND6, "alias.example.test", tcp=True)
        assert addresses(alias) == ["203.0.113.10"]
        assert any(r.rdtype == dns.rdatatype.CNAME for r in alias.answer)
        assert addresses(lan_query(lab, UNBOUND4, "cn.lab.test")) == ["203.0.113.11"]
        txt = lan_query(lab, UNBOUND4, "txt.example.test", "TXT")
        assert [rd.to_text() for rr in txt.answer for rd in rr] == ['"hello"']

        ups = upstream_rows(runner)
        for name in ("u", "t", "tu", "dot", "doh"):
            assert (ups[name].queries, ups[name].errors) == (1, 0), ups[name]
            assert ups[name].last_ms is not None
        # The names in the URLs were resolved by the bootstrap resolver (dnsmasq).
        assert ups["dot"].address == ups["doh"].address == UNBOUND4
        assert ups["tu"].address == UNBOUND6
        row = cache_row(runner, "cn.lab.test")
        assert row is not None and "request rule #4 -> dot" in row.route and row.upstream == "dot"
        # The same question again is the cache's: no upstream is asked.
        assert addresses(lan_query(lab, UNBOUND4, "www.example.test")) == ["203.0.113.10"]
        assert upstream_rows(runner)["u"].queries == 1
        assert cache_row(runner, "www.example.test").hits == 1


def test_request_and_response_rules_choose(lab, peers, tmp_path: Path):
    # A second dnsmasq that knows other addresses, so each answer says who gave it.
    other = [Record("www.example.test", "A", "203.0.113.12"), Record("api.example.test", "A", "203.0.113.12")]
    with Dnsmasq(lab, records=other, port=5353):  # started on entry
        cfg = dns_config(f"""
[dns]
upstream = {{ ub = "udp://{UNBOUND4}:53", dm = "udp://{DNSMASQ4}:5353" }}
request = ["qname(suffix: ads.example.test) -> reject", "qtype(txt) -> asis", "fallback: dm"]
response = ["upstream(dm) && ip(203.0.113.12) && qname(full: www.example.test) -> ub",
            "upstream(dm) && qname(full: api.example.test) -> reject", "fallback: accept"]
[routing]
fallback = "direct"
""")
        with plane_in_lab(lab, cfg, tmp_path) as runner:
            # dm said .12; the response rule asked ub again, whose answer is the client's.
            www = lan_query(lab, UNBOUND4, "www.example.test")
            assert addresses(www) == ["203.0.113.10"]
            row = cache_row(runner, "www.example.test")
            assert row.upstream == "ub" and "response rule #1 -> ub" in row.route
            # reject (request or response): NOERROR with no answer, as dae does.
            for name in ("x.ads.example.test", "api.example.test"):
                r = lan_query(lab, UNBOUND4, name)
                assert (r.rcode(), r.answer) == (dns.rcode.NOERROR, []), name
            # asis: the server the client asked (dnsmasq on .54), not a configured upstream.
            txt = lan_query(lab, DNSMASQ4, "txt.example.test", "TXT")
            assert [rd.to_text() for rr in txt.answer for rd in rr] == ['"hello"']
            ups = upstream_rows(runner)
            assert ups[f"asis {DNSMASQ4}:53"].queries == 1
            assert ups["dm"].queries == 2 and ups["ub"].queries == 1  # www and api; www again
            # A name nobody knows: dm's NXDOMAIN is accepted and cached as negative.
            assert lan_query(lab, UNBOUND4, "nothing.example.test").rcode() == dns.rcode.NXDOMAIN
            neg = cache_row(runner, "nothing.example.test")
            assert neg is not None and neg.negative and neg.rcode == "NXDOMAIN"
            counters = snapshot(runner).dns.counters
            assert counters.rejected == 2


def _flow(runner: ControlPlaneThread, dst: str, dport: int):
    plane: ControlPlane = runner.plane  # type: ignore[assignment]
    flows = runner.call(lambda: plane.dataplane.program.flows())
    return next((f for f in flows if str(f.key.dst) == dst and f.key.dport == dport), None)


def test_answered_address_is_routed_by_domain_in_the_kernel(lab, peers, tmp_path: Path):
    cfg = dns_config(f"""
[group.proxy]

[dns]
upstream = {{ ub = "udp://{UNBOUND4}:53" }}
request = ["fallback: ub"]

[routing]
rules = ["domain(suffix: example.test) -> proxy"]
fallback = "direct"
""", extra_global='dial_mode = "ip"')
    with plane_in_lab(lab, cfg, tmp_path) as runner:
        plane: ControlPlane = runner.plane  # type: ignore[assignment]
        # Before DNS named it, the kernel cannot decide a domain rule for 203.0.113.11.
        assert kernel_bits(runner, "203.0.113.11") is None
        http_get(lab, "203.0.113.11")
        undecided = wait_for(lambda: _flow(runner, "203.0.113.11", 80))
        assert undecided.outbound == plane.ruleset.outbound_ids()["(user space)"]

        assert addresses(lan_query(lab, UNBOUND4, "www.example.test")) == ["203.0.113.10"]
        gen = plane.generation
        bits = kernel_bits(runner, "203.0.113.10")
        assert bits is not None and bits[gen] == 1  # domain function 0: suffix example.test
        body = http_get(lab, "203.0.113.10")
        assert body.startswith(b"daetui lab host 203.0.113.10")
        f = wait_for(lambda: _flow(runner, "203.0.113.10", 80))
        assert (f.outbound, f.rule_index) == (plane.ruleset.outbound_ids()["proxy"], 0)
        conn = next(c for c in snapshot(runner).connections if c.dst == ("203.0.113.10", 80))
        assert conn.stage == "kernel" and conn.sniffed is None  # decided in the kernel, nothing sniffed

        # The TTL runs out (short.example.test: 3 s): the address leaves the kernel's map.
        assert addresses(lan_query(lab, UNBOUND4, "short.example.test")) == ["203.0.113.12"]
        assert kernel_bits(runner, "203.0.113.12") is not None
        wait_for(lambda: kernel_bits(runner, "203.0.113.12") is None, timeout=8)
        assert kernel_bits(runner, "203.0.113.10") is not None  # its 300 s are not over

        # A reload recomputes the bitmaps for the new generation before the flip.
        new = cfg.replace('rules = ["domain(suffix: example.test) -> proxy"]',
                          'rules = ["domain(suffix: other.test) -> block", "domain(suffix: example.test) -> proxy"]')
        from daetui.config.load import parse_config

        result = runner.submit(plane.reload(parse_config(new, "test.toml"))).result(60)
        assert result.ok, result.message
        assert kernel_bits(runner, "203.0.113.10")[plane.generation] == 0b10
        http_get(lab, "203.0.113.10", "/whoami")
        flows = runner.call(lambda: plane.dataplane.program.flows())
        newest = max((f for f in flows if str(f.key.dst) == "203.0.113.10"), key=lambda f: f.first_seen)
        assert newest.rule_index == 1 and newest.generation == plane.generation


def test_dns_over_ipv6_and_truncation(lab, peers, tmp_path: Path):
    cfg = dns_config(ONE_UPSTREAM)
    with plane_in_lab(lab, cfg, tmp_path) as runner:
        r = lan_query(lab, UNBOUND6, "www.example.test", "AAAA")
        assert addresses(r) == ["2001:db8:3::10"]
        # The router's link-local address, as IPv6 clients learn it from router adverts (RDNSS).
        import json
        import subprocess

        def ip_json(ns: str, *argv: str) -> list:
            return json.loads(subprocess.run(["ip", "-j", "-n", ns, *argv], capture_output=True, text=True,
                                             check=True).stdout)

        ll = next(a["local"] for a in ip_json(lab.router, "-6", "addr", "show", "dev", ADDR.lan_ifname)[0]["addr_info"]
                  if a["scope"] == "link")
        scope = ip_json(lab.lan, "link", "show", "dev", ADDR.client_ifname)[0]["ifindex"]
        s = lan_socket(lab, "::1", socket.SOCK_DGRAM)
        s.settimeout(3)
        try:
            s.sendto(dns.message.make_query("www.example.test", "A").to_wire(), (ll, 53, 0, scope))
            got, frm = s.recvfrom(4096)
        finally:
            s.close()
        assert frm[0].split("%")[0] == ll  # from the address asked
        assert addresses(dns.message.from_wire(got)) == ["203.0.113.10"]
        # 40 addresses do not fit 512 bytes: TC over UDP without EDNS, whole over TCP.
        small = lan_query(lab, UNBOUND4, "big.example.test", edns=False)
        assert small.flags & dns.flags.TC and not small.answer
        whole = lan_query(lab, UNBOUND4, "big.example.test", tcp=True)
        assert len(addresses(whole)) == 40
        # The kernel learnt every one of them.
        assert all(kernel_bits(runner, f"203.0.113.{i}") is not None for i in range(100, 140))
        assert snapshot(runner).dns.counters.kernel_names >= 41


def test_identical_queries_in_flight_share_one_upstream_query(lab, peers, tmp_path: Path):
    cfg = dns_config(ONE_UPSTREAM)
    with plane_in_lab(lab, cfg, tmp_path) as runner:
        plane: ControlPlane = runner.plane  # type: ignore[assignment]

        async def many() -> list[object]:
            import asyncio
            return await asyncio.gather(*(plane.dns_lookup("api.example.test") for _ in range(20)))

        traces = runner.submit(many()).result(30)
        assert all(t.answers == ("203.0.113.11",) for t in traces)
        ups = upstream_rows(runner)
        assert ups["ub"].queries == 1
        assert snapshot(runner).dns.counters.shared == 19
        # Flushed: the next one asks again.
        assert runner.call(plane.dns_flush) == 1
        t = runner.submit(plane.dns_lookup("api.example.test")).result(30)
        assert not t.cached and "request fallback -> ub" in t.route
        assert upstream_rows(runner)["ub"].queries == 2
        t2 = runner.submit(plane.dns_lookup("api.example.test")).result(30)
        assert t2.cached and t2.ttl <= 300
        time.sleep(1.1)
        t3 = runner.submit(plane.dns_lookup("api.example.test")).result(30)
        assert t3.ttl < t2.ttl  # counting down


def test_prefer_fixed_ttl_bind_interface_and_must(lab, peers, tmp_path: Path):
    cfg = dns_config(f"""
[dns]
upstream = {{ ub = "udp://{UNBOUND4}:53", dm = "udp://{DNSMASQ4}:53" }}
ipversion_prefer = 4
fixed_domain_ttl = {{ "api.example.test" = 7 }}
bind = "127.0.0.53:53"
request = ["interface(lan: lan0) && qname(full: cn.lab.test) -> dm", "fallback: ub"]

[routing]
# DNS to dnsmasq is the client's own business: must_direct, not hijacked.
rules = ["dip({DNSMASQ4}) -> must_direct"]
fallback = "direct"
""")
    with plane_in_lab(lab, cfg, tmp_path) as runner:
        plane: ControlPlane = runner.plane  # type: ignore[assignment]
        # ipversion_prefer = 4: a name with an IPv4 address gets no AAAA.
        aaaa = lan_query(lab, UNBOUND4, "www.example.test", "AAAA")
        assert aaaa.rcode() == dns.rcode.NOERROR and not aaaa.answer
        assert addresses(lan_query(lab, UNBOUND4, "www.example.test")) == ["203.0.113.10"]
        # fixed_domain_ttl overrides the upstream's 300 s.
        api = lan_query(lab, UNBOUND4, "api.example.test")
        assert api.answer[0].ttl <= 7
        # interface(lan: lan0): the LAN's query went to dm.
        lan_query(lab, UNBOUND4, "cn.lab.test")
        assert cache_row(runner, "cn.lab.test").upstream == "dm"
        before = snapshot(runner).dns.counters.queries
        # must_direct: the query reaches dnsmasq itself; the controller never sees it.
        assert addresses(lan_query(lab, DNSMASQ4, "txt.example.test", "A")) == []
        assert addresses(lan_query(lab, DNSMASQ4, "www.example.test")) == ["203.0.113.10"]
        assert snapshot(runner).dns.counters.queries == before
        # dns.bind: the router's own resolver address (not from the LAN: no interface, so ub answers).
        q = dns.message.make_query("cn.lab.test", "A")
        from daetui.net.netns import netns

        with netns(lab.router):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        try:
            r = dns.query.udp(q, "127.0.0.53", timeout=3, sock=s)
        finally:
            s.close()
        assert addresses(r) == ["203.0.113.11"]
        # Cached from the LAN's query: the router's question was answered from it.
        assert cache_row(runner, "cn.lab.test").hits >= 1
        # The cache survives a reload.
        from daetui.config.load import parse_config

        result = runner.submit(plane.reload(parse_config(cfg.replace("fallback: ub", "fallback: dm"),
                                                          "test.toml"))).result(60)
        assert result.ok, result.message
        assert cache_row(runner, "www.example.test") is not None
        queries = upstream_rows(runner)["ub"].queries
        assert addresses(lan_query(lab, UNBOUND4, "www.example.test")) == ["203.0.113.10"]
        assert upstream_rows(runner)["ub"].queries == queries


def test_upstream_connections_follow_the_routing_rules_and_loops_end(lab, peers, tmp_path: Path):
    cfg = dns_config(f"""
[dns]
upstream = {{ dot = "tls://{UNBOUND4}:853", ub = "udp://{UNBOUND4}:53", dm = "udp://{DNSMASQ4}:53" }}
ca_file = "{peers.ca.ca_file}"
request = ["qname(full: loop.example.test) -> ub", "fallback: dot"]
response = ["qname(full: loop.example.test) && upstream(ub) -> dm",
            "qname(full: loop.example.test) && upstream(dm) -> ub", "fallback: accept"]

[routing]
# The router's own connection to DoT is blocked: that upstream fails, the next one answers.
rules = ["dip({UNBOUND4}) && dport(853) -> block"]
fallback = "direct"
""")
    with plane_in_lab(lab, cfg, tmp_path) as runner:
        assert addresses(lan_query(lab, UNBOUND4, "www.example.test")) == ["203.0.113.10"]
        ups = upstream_rows(runner)
        assert ups["dot"].errors == 1 and "block" in ups["dot"].last_error
        assert ups["dot"].route.startswith("rule #1") and ups["dot"].route.endswith("-> block")
        assert ups["ub"].route == "fallback -> direct"
        # Response rules that send a question back and forth give up after 3 more upstreams.
        r = lan_query(lab, UNBOUND4, "loop.example.test")
        assert r.rcode() == dns.rcode.SERVFAIL
        ups = upstream_rows(runner)
        assert ups["ub"].queries + ups["dm"].queries == 1 + 4  # www (ub); the loop: its first ask and 3 more


def test_an_upstream_routed_to_a_group_is_asked_through_its_node(lab, peers, tmp_path: Path):
    from testkit.peers.shadowsocks import SsServer
    from testkit.peers.socks_http import PROXY4, Danted, Tinyproxy

    cfg = dns_config(f"""
[node]
socks = "socks5://{PROXY4}:1086"
web = "http://{PROXY4}:8891"

[group.proxy]
filter = ["name(socks)"]

[group.web]
filter = ["name(web)"]

[group.ssg]
filter = ["name(ss)"]

[dns]
upstream = {{ ub = "udp://{UNBOUND4}:53", dot = "tls://{UNBOUND4}:853", dm = "udp://{DNSMASQ4}:53",
             doh = "https://{UNBOUND4}/dns-query", ub6 = "udp://[{UNBOUND6}]:53" }}
ca_file = "{peers.ca.ca_file}"
request = ["qname(full: short.example.test) -> dot", "qname(full: api.example.test) -> dm",
           "qname(full: txt.example.test) -> doh", "qname(suffix: ss.example.test) -> ub6", "fallback: ub"]

[routing]
rules = ["dip({UNBOUND4}) -> proxy", "dip({DNSMASQ4}) -> web", "dip('{UNBOUND6}') -> ssg"]
fallback = "direct"
""", LAB_CHECKS)
    ss = SsServer(lab, "aes-128-gcm", "no udp here", port=8401, udp=False)
    cfg = cfg.replace(f'web = "http://{PROXY4}:8891"', f'web = "http://{PROXY4}:8891"\nss = "{ss.node(4).link()}"')
    with Danted(lab, port=1086) as socks, Tinyproxy(lab, port=8891), ss, \
            plane_in_lab(lab, cfg, tmp_path) as runner:
        # UDP through the socks node's UDP ASSOCIATE; DoT through a stream of the node.
        assert addresses(lan_query(lab, UNBOUND4, "www.example.test")) == [ADDR.hosts4[0]]
        assert addresses(lan_query(lab, UNBOUND4, "short.example.test")) == [ADDR.hosts4[2]]
        # The HTTP node has no UDP: the same question over TCP through CONNECT.
        assert addresses(lan_query(lab, UNBOUND4, "api.example.test")) == [ADDR.hosts4[1]]
        ups = upstream_rows(runner)
        assert ups["ub"].route == "rule #1 dip(203.0.113.53) -> proxy via socks", ups["ub"].route
        assert ups["dot"].route.endswith("-> proxy via socks") and ups["dm"].route.endswith("-> web via web")
        assert all(ups[n].queries == 1 and ups[n].errors == 0 for n in ("ub", "dot", "dm"))
        # DNS over HTTPS is not carried by nodes: dialled directly, and its route says so.
        assert lan_query(lab, UNBOUND4, "txt.example.test", "TXT").answer
        assert upstream_rows(runner)["doh"].route.endswith("-> proxy (DoH: dialled direct, not through a node)")
        # A node whose server relays no UDP takes the datagram and answers nothing: the question
        # goes on over TCP through it (ss-server logs the connection to unbound's IPv6 address).
        assert lan_query(lab, UNBOUND4, "a.ss.example.test").rcode() == dns.rcode.NXDOMAIN
        assert f"connect to [{UNBOUND6}]:53" in ss.log_text() or f"connect to {UNBOUND6}:53" in ss.log_text()
        assert upstream_rows(runner)["ub6"].route.endswith("-> ssg via ss") and upstream_rows(runner)["ub6"].errors == 0
        # Without the node, unbound cannot be reached (directly it would answer): both its
        # upstreams fail, and the question goes on to the one through the web node.
        socks.stop()
        assert ADDR.hosts4[0] in addresses(lan_query(lab, UNBOUND4, "alias.example.test", timeout=8))
        ups = upstream_rows(runner)
        for name in ("ub", "dot"):
            assert ups[name].errors == 1 and ("1086" in ups[name].last_error
                                              or "no live node" in ups[name].last_error), ups[name].last_error
        assert ups["dm"].queries == 2 and ups["dm"].errors == 0
