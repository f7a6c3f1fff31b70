"""The controller API's /metrics against the real daemon: Prometheus' text that parses, and counters that are the
snapshot's, read around the scrape after real traffic (relayed, kernel-forwarded, DNS)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from helpers import echoes, http_get, lan_connect, lan_query, tcp_echo, wait_for
from prometheus_client.core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from daetui.abi.constants import ABI
from daetui.api.metrics import DaemonCollector, Scrape, TrafficTotals, render
from daetui.control.state import Health, Snapshot
from daetui.dns.state import LATENCY_BUCKETS, DnsState, DnsUpstreamRow
from daetui.lab.topology import ADDR, LAN_MAC
from daetui.outbound.state import GroupState, NodeState
from testkit.api import ApiLab, api_config
from testkit.peers.dnsmasq import dns_peers

pytestmark = [pytest.mark.kernel]

RELAYED, _, DIRECT = ADDR.hosts4
RULES = f"""
  "dip({RELAYED}) && dport(7) -> proxy",
"""
DNS = f"""
[dns]
upstream = {{ ub = "udp://{ADDR.dns4[0]}:53" }}
request = ["fallback: ub"]
"""
PAYLOAD = b"counted " * 4000


@pytest.fixture(scope="module")
def peers(lab):
    with dns_peers(lab) as p:
        yield p


@pytest.fixture(scope="module")
def api(lab, peers, tmp_path_factory) -> Iterator[ApiLab]:
    cfg = api_config(groups="[group.proxy]\n", rules=RULES, dns=DNS)
    a = ApiLab(lab, tmp_path_factory.mktemp("api-metrics"), cfg).start()
    try:
        yield a
    finally:
        a.stop()


def snapshot(api: ApiLab) -> Snapshot:
    return api.snapshot(flows=True, dns=True)


def scrape(api: ApiLab, **kw) -> dict[str, Metric]:
    r = api.curl("GET", "/metrics", **kw)
    assert r.status == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def value(families: dict[str, Metric], metric: str, sample: str | None = None, /, **labels: str) -> float:
    """The sum of a family's samples named `sample` (the family's name, or with _total) whose labels include these."""
    names = {sample} if sample else {metric, metric + "_total"}
    return sum(s.value for s in families[metric].samples
               if s.name in names and all(s.labels.get(k) == v for k, v in labels.items()))


def between(lo: float, got: float, hi: float) -> bool:
    return lo <= got <= hi


def traffic(api: ApiLab) -> None:
    """A relayed flow, a flow the kernel forwards, and two DNS queries (the second from the cache)."""
    assert tcp_echo(api.lab, RELAYED, PAYLOAD) == PAYLOAD
    http_get(api.lab, DIRECT)
    for _ in range(2):
        assert lan_query(api.lab, ADDR.dns4[0], "www.example.test").answer


def direct_bytes(snap: Snapshot) -> tuple[int, int]:
    """Bytes up and down of the flows the kernel forwards itself (outbound direct), as the snapshot holds them."""
    flows = [f for f in snap.kernel_flows if f.outbound == ABI.OUTBOUND_DIRECT]
    return sum(f.bytes for f in flows), sum(f.rx_bytes for f in flows)


def relayed_bytes(snap: Snapshot, outbound: str) -> tuple[int, int]:
    conns = [c for c in snap.connections if c.outbound == outbound]
    return sum(c.up for c in conns), sum(c.down for c in conns)


def test_the_counters_are_the_snapshots_around_the_scrape(api):
    start = snapshot(api)
    traffic(api)
    wait_for(lambda: all(c.state != "open" for c in snapshot(api).connections) or None)
    s0 = snapshot(api)
    fams = scrape(api)
    s1 = snapshot(api)

    for name, n in s1.counters.items():
        assert between(s0.counters[name], value(fams, "daetui_kernel_events", counter=name.lower()), n), name
    assert value(fams, "daetui_kernel_events", counter="new_flows") > start.counters["NEW_FLOWS"]
    for r0, r1 in zip(s0.rules, s1.rules, strict=True):
        assert between(r0.hits, value(fams, "daetui_rule_hits", index=str(r1.index)), r1.hits)
    assert between(s0.fallback_hits, value(fams, "daetui_rule_hits", index="fallback"), s1.fallback_hits)
    assert between(s0.total_connections, value(fams, "daetui_relayed_connections"), s1.total_connections)
    assert value(fams, "daetui_relayed_connections") > start.total_connections

    # DNS: the controller's counters, and the upstream's latency histogram of the answers it gave.
    d0, d1 = s0.dns.counters, s1.dns.counters
    for metric, field in (("queries", "queries"), ("cache_hits", "cache_hits"), ("cache_misses", "cache_misses")):
        assert between(getattr(d0, field), value(fams, f"daetui_dns_{metric}"), getattr(d1, field)), metric
    assert value(fams, "daetui_dns_queries") >= start.dns.counters.queries + 2
    assert value(fams, "daetui_dns_cache_hits") > start.dns.counters.cache_hits
    for u0, u1 in zip(s0.dns.upstreams, s1.dns.upstreams, strict=True):
        assert between(u0.queries, value(fams, "daetui_dns_upstream_queries", upstream=u1.name), u1.queries)
        assert between(u0.errors, value(fams, "daetui_dns_upstream_errors", upstream=u1.name), u1.errors)
        hist = "daetui_dns_upstream_latency_seconds"
        buckets = [(s.labels["le"], s.value) for s in fams[hist].samples
                   if s.name == hist + "_bucket" and s.labels["upstream"] == u1.name]
        assert [le for le, _ in buckets] == [*(str(b) for b in LATENCY_BUCKETS), "+Inf"]
        counts = [c for _, c in buckets]
        assert counts == sorted(counts)   # cumulative
        answered = value(fams, hist, hist + "_count", upstream=u1.name)
        assert answered == counts[-1]
        assert between(sum(u0.latency_counts), answered, sum(u1.latency_counts))
        assert answered >= 1
        assert between(u0.latency_sum, value(fams, hist, hist + "_sum", upstream=u1.name), u1.latency_sum)

    # Bytes: the relayed connection's through its outbound, the kernel's own flows through direct; by device too.
    p0, p1 = relayed_bytes(s0, "proxy"), relayed_bytes(s1, "proxy")
    up = value(fams, "daetui_outbound_bytes", outbound="proxy", direction="up")
    down = value(fams, "daetui_outbound_bytes", outbound="proxy", direction="down")
    assert between(p0[0], up, p1[0]) and between(p0[1], down, p1[1])
    assert up >= len(PAYLOAD) and down >= len(PAYLOAD)
    k0, k1 = direct_bytes(s0), direct_bytes(s1)
    rd0, rd1 = relayed_bytes(s0, "direct"), relayed_bytes(s1, "direct")
    d_up = value(fams, "daetui_outbound_bytes", outbound="direct", direction="up")
    assert between(k0[0] + rd0[0], d_up, k1[0] + rd1[0]) and d_up > 0
    device_up = value(fams, "daetui_device_bytes", mac=LAN_MAC, direction="up")
    assert device_up == up + d_up   # every flow of the lab's one LAN client

    # The API's own counters: this scrape is one of its requests.
    assert s0.api.requests < value(fams, "daetui_api_requests") <= s1.api.requests
    assert between(s0.api.unauthorized, value(fams, "daetui_api_unauthorized"), s1.api.unauthorized)
    # The process: memory and descriptors, read at the scrape.
    assert value(fams, "daetui_resident_memory_bytes") > 0
    assert 0 < value(fams, "daetui_open_fds") <= value(fams, "daetui_max_fds")
    assert value(fams, "daetui_start_time_seconds") == s1.health.started


def test_byte_counters_only_grow_and_count_each_flow_once(api):
    first = scrape(api)
    again = scrape(api)   # nothing new: nothing added
    for family in ("daetui_outbound_bytes", "daetui_device_bytes"):
        assert [s.value for s in first[family].samples] == [s.value for s in again[family].samples]
    before = value(again, "daetui_outbound_bytes", outbound="proxy", direction="up")
    assert tcp_echo(api.lab, RELAYED, PAYLOAD) == PAYLOAD
    wait_for(lambda: all(c.state != "open" for c in snapshot(api).connections) or None)
    after = value(scrape(api), "daetui_outbound_bytes", outbound="proxy", direction="up")
    assert after - before == len(PAYLOAD)


def test_open_flows_by_outbound_and_stage(api):
    held = [lan_connect(api.lab, RELAYED, 7) for _ in range(3)]
    try:
        for s in held:
            assert echoes(s, b"open")
        s0 = snapshot(api)
        fams = scrape(api)
        s1 = snapshot(api)
        for snap in (s0, s1):
            open_ = [c for c in snap.connections if c.state == "open"]
            assert len(open_) >= len(held)
            for c in open_:
                got = value(fams, "daetui_flows", outbound=c.outbound, stage=c.stage, proto=c.proto, relayed="true")
                assert got == sum(1 for o in open_ if (o.outbound, o.stage, o.proto) == (c.outbound, c.stage, c.proto))
    finally:
        for s in held:
            s.close()


def test_reloads_are_counted(api):
    before = scrape(api)
    out = api.daemon.cli("reload")
    assert out.returncode == 0, out.stderr
    after = scrape(api)
    assert value(after, "daetui_reloads") == value(before, "daetui_reloads") + 1
    assert value(after, "daetui_rules_generation") == snapshot(api).health.generation


def test_metrics_need_the_secret(api):
    r = api.curl("GET", "/metrics", token="")
    assert r.status == 401 and "daetui_" not in r.text


def test_openmetrics_when_prometheus_asks_for_it(api):
    r = api.curl("GET", "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.status == 200 and r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n")
    names = {f.name for f in openmetrics_families(r.text)}
    assert {"daetui_kernel_events", "daetui_dns_upstream_latency_seconds", "daetui_api_requests"} <= names


def test_nodes_groups_and_latencies_are_the_snapshots():
    """The collector alone, from a snapshot made here: what the lab's daemon has none of (proxy nodes)."""
    nodes = (NodeState("hk1", "ss", "198.51.100.7:8388", True, False, (0.031, None, 0.042), (None,), ""),
             NodeState("jp1", "trojan", "198.51.100.8:443", False, True, (0.05, None), (), "refused"))
    groups = (GroupState("proxy", "min_moving_avg", ("hk1", "jp1"), "hk1", "jp1", "jp1"),)
    counts = tuple(range(len(LATENCY_BUCKETS) + 1))
    dns = DnsState(upstreams=(DnsUpstreamRow("ub", "udp://192.0.2.53:53", "192.0.2.53:53", "direct", 100, 4, 1, 0,
                                             2.0, 3.0, "", latency_counts=counts, latency_sum=1.5),))
    snap = Snapshot(time=time.time(), health=Health(1, 0.0, "x.toml", 12345, 0, "direct", True), nodes=nodes,
                    groups=groups, dns=dns)
    registry = CollectorRegistry()
    registry.register(DaemonCollector())
    body, content_type = render(registry, Scrape(snap, (0, 0), (0,) * 7, TrafficTotals()), "")
    assert content_type.startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    for n in nodes:
        for family, alive, history in (("4", n.alive4, n.latencies4), ("6", n.alive6, n.latencies6)):
            assert value(fams, "daetui_node_alive", node=n.name, family=family) == alive
            got = [s.value for s in fams["daetui_node_latency_seconds"].samples
                   if s.labels == {"node": n.name, "family": family}]
            assert got == ([history[-1]] if history and history[-1] is not None else [])
    selected = {(s.labels["group"], s.labels["node"], s.labels["family"], s.labels["pinned"])
                for s in fams["daetui_group_selected"].samples}
    g = groups[0]
    assert selected == {(g.name, g.selected4, "4", str(g.pinned == g.selected4).lower()),
                        (g.name, g.selected6, "6", str(g.pinned == g.selected6).lower())}
    hist = "daetui_dns_upstream_latency_seconds"
    buckets = [s.value for s in fams[hist].samples if s.name == hist + "_bucket"]
    assert buckets == [sum(counts[:i + 1]) for i in range(len(counts))]
    assert value(fams, hist, hist + "_sum") == 1.5
    assert value(fams, "daetui_dns_upstream_errors", upstream="ub") == 4
