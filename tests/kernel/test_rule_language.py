"""The rest of the rule language in the kernel: dscp, interface, domain, pname, must.

A real flow from the LAN is decided by the kernel as the user-space matcher
and `explain` on the daemon say; the table of every function's cases runs on
testkit's harness (tests/kernel/test_rule_functions.py). Domain rules use
what the control plane was told of addresses' names (the hook DNS fills); a
flow to an address with no known name is left to user space, which sniffs
the name.
"""

from __future__ import annotations

import ipaddress
import ssl

import pytest
from helpers import http_get, kernel_flow, lan_connect, plane_in_lab, send_udp, snapshot, wait_for

from daetui.abi.constants import ABI
from daetui.lab.topology import ADDR, LAN_MAC
from daetui.routing.matcher import FlowFacts, decide

pytestmark = pytest.mark.kernel

GROUPS = ["g_dscp", "g_notdscp", "g_lan", "g_nolan", "g_wan", "g_wanlan", "g_domain", "g_notpname",
          "g_aftermust", "g_notdomain", "g_sniff"]
CONFIG = "\n".join(f"[group.{g}]" for g in GROUPS) + """
[global]
lan_interface = ["lan0"]
sniffing_timeout = "500ms"

[routing]
rules = [
  "dport(42100) && dscp(46) -> g_dscp",
  "dport(42101) && !dscp(46) -> g_notdscp",
  "dport(42200) && interface(lan: lan0) -> g_lan",
  "dport(42201) && interface(lan: nosuch0) -> g_nolan",
  "dport(42300) && interface(wan: wan0) -> g_wan",
  "dport(42301) && interface(wan: lan0) -> g_wanlan",
  "domain(suffix: example.test) && dport(42400) -> g_domain",
  "dport(42500) && pname(curl) -> block",
  "dport(42501) && !pname(curl) -> g_notpname",
  "dport(42600) -> must_rules",
  "dport(42600) -> g_aftermust",
  "dport(42700) -> must_direct",
  "dport(42800) && !domain(keyword: example) -> g_notdomain",
  "domain(suffix: sniffed.test) -> g_sniff",
]
fallback = "direct"
"""

# host index -> the name the test tells the control plane (None: no name known)
NAMES = {0: "www.other.test", 1: "www.example.test", 2: None}

# (dport, host index, dscp, IP version): a real datagram (its traffic class set by the client's own
# stack) checked against the matcher and explain; the other cases are test_rule_functions.py's.
CASES = [(42100, 1, 46, 6)]


@pytest.fixture(scope="module")
def plane(lab, tmp_path_factory):
    with plane_in_lab(lab, CONFIG, tmp_path_factory.mktemp("run")) as runner:
        for i, name in NAMES.items():
            if name:
                runner.call(lambda i=i, name=name: runner.plane.learn_name(ADDR.hosts4[i], name))
                runner.call(lambda i=i, name=name: runner.plane.learn_name(ADDR.hosts6[i], name))
        yield runner


@pytest.mark.parametrize(("dport", "h", "dscp", "v"), CASES)
def test_kernel_matcher_and_explain_agree(plane, lab, dport, h, dscp, v):
    host = (ADDR.hosts4 if v == 4 else ADDR.hosts6)[h]
    client = ADDR.client4 if v == 4 else ADDR.client6
    sport = 30000 + CASES.index((dport, h, dscp, v))  # one 4-tuple per case: UDP decisions are kept
    send_udp(lab, host, dport, sport, dscp)
    kf = kernel_flow(plane, host, dport, sport)
    p = plane.plane
    ruleset = p.ruleset
    bits = p.dataplane.program.domain_bits(ipaddress.ip_address(host))
    facts = FlowFacts(ipaddress.ip_address(client), ipaddress.ip_address(host), sport, dport, "udp",
                      bytes.fromhex(LAN_MAC.replace(":", "")), dscp, "lan0", "wan0",
                      domain_bits=bits[p.generation] if bits else None)
    expected = decide(ruleset, facts)
    assert ruleset.outbound_name(kf.outbound) == (expected.outbound or "(user space)")
    assert kf.rule_index == expected.rule_index
    assert bool(kf.flags & ABI.FLOW_MUST) == expected.must
    target = f"[{host}]:{dport}" if v == 6 else f"{host}:{dport}"
    ex = plane.call(lambda: p.explain(target, proto="udp", mac=LAN_MAC, iface="lan0", src=client, sport=sport,
                                      dscp=dscp, wan="wan0"))
    assert (ex.outbound, ex.rule_index) == (expected.outbound, expected.rule_index), ex.text


def test_no_name_known_leaves_the_decision_to_user_space_which_sniffs_it(plane, lab):
    host = ADDR.hosts4[2]  # no name known for it
    # HTTP: the Host header names it.
    body = http_get(lab, host, "/whoami", port=80)
    assert body.decode().strip() == ADDR.router_wan4  # relayed
    conn = wait_for(lambda: next((c for c in snapshot(plane).connections
                                  if c.dst == (host, 80) and c.state != "open"), None))
    # http_get sends Host: <address>: no name, so the domain rule does not match -> fallback.
    assert conn.stage == "userspace" and conn.outbound == "direct" and conn.domain is None
    kf = kernel_flow(plane, host, 80, conn.src[1], "tcp")
    # Rule #7 needs a name too, but its dport fails first (domain functions go last): #14 is where it stops.
    assert kf.outbound == ABI.OUTBOUND_USERSPACE and kf.rule_index == 13

    assert http_get(lab, host, "/whoami", name="www.sniffed.test").decode().strip() == ADDR.router_wan4
    conn = wait_for(lambda: next((c for c in snapshot(plane).connections
                                  if c.domain == "www.sniffed.test" and c.state != "open"), None))
    assert (conn.outbound, conn.stage, conn.sniffed, conn.rule_index) == ("g_sniff", "userspace", "http", 13)

    # TLS: the ClientHello's server name.
    ctx = ssl.create_default_context()
    raw = lan_connect(lab, host, 7, timeout=3)  # the echo server: the handshake fails, the name was seen
    with pytest.raises((ssl.SSLError, OSError)):
        ctx.wrap_socket(raw, server_hostname="tls.sniffed.test").do_handshake()
    raw.close()
    conn = wait_for(lambda: next((c for c in snapshot(plane).connections if c.domain == "tls.sniffed.test"),
                                 None))
    assert (conn.outbound, conn.sniffed) == ("g_sniff", "tls")


def test_a_name_learned_later_moves_the_next_flow_into_the_kernel(plane, lab):
    host = ADDR.hosts6[2]
    send_udp(lab, host, 42400, 31999, 0)
    assert kernel_flow(plane, host, 42400, 31999).outbound == ABI.OUTBOUND_USERSPACE
    plane.call(lambda: plane.plane.learn_name(host, "late.example.test"))
    send_udp(lab, host, 42400, 31998, 0)
    kf = kernel_flow(plane, host, 42400, 31998)
    assert plane.plane.ruleset.outbound_name(kf.outbound) == "g_domain" and kf.rule_index == 6


def test_the_maps_pane_decodes_every_kind_of_match_set(plane):
    """match_sets as the console's Maps pane shows them: each function's value, readable."""
    p = plane.plane
    e = plane.call(lambda: p.map_entries("match_sets"))
    rows = [dict(zip(e.columns, r, strict=True)) for r in e.rows if r[0] == str(p.generation)]
    by_rule = {}
    for r in rows:
        by_rule.setdefault(r["rule"], []).append((r["type"], r["value"], r["not"], r["outbound"]))
    assert ("dscp", "46", "", "g_dscp") in by_rule["#1"]
    assert ("dscp", "46", "!", "g_notdscp") in by_rule["#2"]
    assert ("iface_lan", "lan0", "", "g_lan") in by_rule["#3"]
    assert ("iface_lan", "(not here)", "", "g_nolan") in by_rule["#4"]
    assert ("iface_wan", "wan0", "", "g_wan") in by_rule["#5"]
    assert any(t == "domain" and v.startswith("domain bit ") for t, v, _, _ in by_rule["#7"])
    assert by_rule["#8"][-1][:2] == ("pname", "curl (the router's own flows)")
    assert by_rule["#12"][-1][3] == "direct (must)"
    assert all(r["value"] != "?" for r in rows)
