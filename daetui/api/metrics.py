"""The controller API's `GET /metrics`: the daemon in Prometheus' text format.

Every scrape reads one snapshot of the plane (with the kernel's flow records,
read off the loop) and renders it through a collector of the ApiServer's own
registry: nothing is registered globally, nothing is kept between scrapes but
the byte totals below. The rendering runs in a thread; the relays on the
loop never wait for it. `Accept: application/openmetrics-text` gets
OpenMetrics.

/metrics is behind the same secret as the rest of the API (a scrape is
answered 401 without it). Prometheus sends it as a bearer token:

    scrape_configs:
      - job_name: daetui
        authorization: {credentials: "<external_controller_secret>"}   # type: Bearer
        static_configs: [{targets: ["192.168.1.1:9090"]}]

Names start with `daetui_`; seconds, bytes and counts since start say so
(`_seconds`, `_bytes`, `_total`). What each family is, in one line, is its HELP.

Bytes per outbound, node and device are counters that this module folds from
the flows each scrape sees: a relayed connection's up/down (its record stays
in the connection table's ring of closed ones for a while after it ends), and
the kernel's records of the flows it forwards or blocks by itself. A flow that
ends and leaves both before the next scrape (more than the ring keeps between
two scrapes) is not counted; flows passed direct because the control plane was
away (fail-open) or their group dead are not counted either.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from daetui.abi.constants import ABI
from daetui.abi.flowrecord import FlowRecord, relayed
from daetui.api.context import ApiContext
from daetui.api.routes_basic import daetui_version
from daetui.control.decision import mac_text
from daetui.control.state import Snapshot
from daetui.dns.state import LATENCY_BUCKETS

UP, DOWN = "up", "down"          # from the client / to the client
ROUTER = "router"                # the device of the router's own flows (no MAC)
UNKNOWN = "unknown"              # a flow with no MAC and no process: nothing tells whose it is


# -- byte totals ----------------------------------------------------------------------------------
@dataclass
class TrafficTotals:
    """Bytes up and down per outbound, node and device, folded from the flows each scrape sees.

    Each flow's bytes are remembered from one scrape to the next (only the
    flows the snapshot holds: bounded by the kernel's table and the connection
    ring), and what it grew by is added to the totals, so they only grow.
    """

    outbound: dict[str, list[int]] = field(default_factory=dict)
    node: dict[str, list[int]] = field(default_factory=dict)
    device: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (MAC, label) -> [up, down]
    _seen: dict[tuple[object, ...], tuple[int, int, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _folded: float = 0.0   # the time of the newest snapshot folded

    def fold(self, snap: Snapshot, records: list[FlowRecord]) -> None:
        """Add what each flow of `snap` (and the kernel's `records` of it) carried since the last fold.

        Thread-safe; folding the same flows again adds nothing."""
        with self._lock:
            if snap.time < self._folded:
                return  # two scrapes at once, the older one last: its flows' bytes are in already
            self._folded = snap.time
            seen: dict[tuple[object, ...], tuple[int, int, float]] = {}
            for c in snap.connections:
                device = (c.mac or "", snap.devices.get(c.mac, c.mac) if c.mac else ROUTER if c.pid else UNKNOWN)
                self._add(seen, ("relayed", c.id), c.up, c.down, c.started, c.outbound, c.node, device)
            for r in records:
                if relayed(r.outbound, r.flags):
                    continue  # relayed (counted as a connection above) or answered by the DNS controller
                mac = mac_text(r.mac) or ""
                own = bool(r.flags & ABI.FLOW_OWN)
                device = (mac, snap.devices.get(mac, mac) if mac else ROUTER if own else UNKNOWN)
                # By its 5-tuple: first_seen is worked out from the clock at each read, so it wobbles a little.
                self._add(seen, ("kernel", r.proto, r.src, r.sport, r.dst, r.dport), r.bytes, r.rx_bytes,
                          r.first_seen, snap.outbounds.get(r.outbound, str(r.outbound)), None, device)
            self._seen = seen

    def _add(self, seen: dict[tuple[object, ...], tuple[int, int, float]], key: tuple[object, ...], up: int,
             down: int, since: float, outbound: str, node: str | None, device: tuple[str, str]) -> None:
        before_up, before_down, before_since = self._seen.get(key, (0, 0, since))
        if up < before_up or down < before_down or abs(since - before_since) > 1.0:
            before_up = before_down = 0   # the table's entry is another flow now, with the same addresses
        seen[key] = (up, down, since)
        d_up, d_down = up - before_up, down - before_down
        if not d_up and not d_down:
            return
        totals = [self.outbound.setdefault(outbound, [0, 0]), self.device.setdefault(device, [0, 0])]
        if node is not None:
            totals.append(self.node.setdefault(node, [0, 0]))
        for t in totals:
            t[0] += d_up
            t[1] += d_down

    def rows(self) -> tuple[list[tuple[tuple[str, ...], int, int]], ...]:
        """(labels, up, down) per outbound, node and device: copies, taken under the lock."""
        with self._lock:
            return ([((k,), up, down) for k, (up, down) in sorted(self.outbound.items())],
                    [((k,), up, down) for k, (up, down) in sorted(self.node.items())],
                    [(k, up, down) for k, (up, down) in sorted(self.device.items())])


# -- one scrape ------------------------------------------------------------------------------------
@dataclass
class Scrape:
    """What one scrape renders: read on the loop, rendered in a thread."""

    snap: Snapshot
    reloads: tuple[int, int]            # applied, refused
    api: tuple[int, int, int, int, int, int, int]  # requests, unauthorized, errors, streams open/opened/refused/dropped
    traffic: TrafficTotals
    records: list[FlowRecord] = field(default_factory=list)   # the kernel's flow records, decoded in the thread


_SCRAPE: contextvars.ContextVar[Scrape] = contextvars.ContextVar("daetui_scrape")


def resident_bytes() -> int:
    """The daemon's resident set (/proc/self/statm's second field, in pages)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _by(family: CounterMetricFamily | GaugeMetricFamily, rows: Iterable[tuple[list[str], float]]) \
        -> CounterMetricFamily | GaugeMetricFamily:
    for labels, value in rows:
        family.add_metric(labels, value)
    return family


def _bytes(name: str, doc: str, labels: list[str], rows: list[tuple[tuple[str, ...], int, int]]) \
        -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=[*labels, "direction"])
    for values, up, down in rows:
        fam.add_metric([*values, UP], up)
        fam.add_metric([*values, DOWN], down)
    return fam


class DaemonCollector(Collector):
    """The daemon's figures from the scrape in hand (a context variable: scrapes at once never mix)."""

    def describe(self) -> list[Metric]:
        return []   # what it yields depends on the daemon's state: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        s = _SCRAPE.get()
        yield from self._daemon(s)
        yield from self._rules(s.snap)
        yield from self._kernel(s.snap)
        yield from self._flows(s)
        yield from self._budgets(s.snap)
        yield from self._dns(s.snap)
        yield from self._outbounds(s.snap)
        yield from self._api(s)

    def _daemon(self, s: Scrape) -> Iterator[Metric]:
        h, b = s.snap.health, s.snap.budgets
        info = GaugeMetricFamily("daetui_info", "daetui's version (always 1)", labels=["version"])
        info.add_metric([daetui_version()], 1)
        yield info
        yield _gauge("daetui_start_time_seconds", "When the daemon started (Unix time)", h.started)
        yield _gauge("daetui_resident_memory_bytes", "The daemon's resident memory", resident_bytes())
        yield _gauge("daetui_open_fds", "Descriptors the daemon holds open", b.fds)
        yield _gauge("daetui_max_fds", "The daemon's descriptor limit (RLIMIT_NOFILE)", b.fd_limit)
        yield _gauge("daetui_event_loop_lag_p99_seconds",
                     "How late the event loop ran what was due, 99th percentile over the last minute",
                     b.loop_lag_p99_ms / 1000)
        yield _gauge("daetui_event_loop_lag_max_seconds",
                     "How late the event loop ran what was due, the most over the last minute",
                     b.loop_lag_max_ms / 1000)
        applied, refused = s.reloads
        yield _counter("daetui_reloads", "Configs put in force since start: reloads, rule edits and toggles", applied)
        yield _counter("daetui_reloads_refused", "Reloads refused since start (the config in force stayed)", refused)
        yield _gauge("daetui_rules_generation", "The kernel's rule generation in force (flips at every reload)",
                     h.generation)

    def _rules(self, snap: Snapshot) -> Iterator[Metric]:
        rules = GaugeMetricFamily("daetui_rules", "Routing rules in force", labels=["enabled"])
        on = sum(1 for r in snap.rules if r.enabled)
        rules.add_metric(["true"], on)
        rules.add_metric(["false"], len(snap.rules) - on)
        yield rules
        hits = CounterMetricFamily("daetui_rule_hits", "Flows each rule decided (kept across reloads by rule id; "
                                   "the fallback's since the last reload)", labels=["index", "rule"])
        for r in snap.rules:
            hits.add_metric([str(r.index), r.text], r.hits)
        hits.add_metric(["fallback", f"fallback -> {snap.health.fallback}"], snap.fallback_hits)
        yield hits

    def _kernel(self, snap: Snapshot) -> Iterator[Metric]:
        yield _by(CounterMetricFamily("daetui_kernel_events", "The kernel programs' counters (packets or flows, "
                                      "as the counter's name says)", labels=["counter"]),
                  ((([k.lower()]), v) for k, v in sorted(snap.counters.items())))

    def _flows(self, s: Scrape) -> Iterator[Metric]:
        snap = s.snap
        open_ = GaugeMetricFamily(
            "daetui_flows", "Flows now: relayed connections open (by where they were decided), and the kernel's "
            "records of flows it forwards or blocks itself (TCP until FIN/RST; UDP until the table forgets it)",
            labels=["outbound", "stage", "proto", "relayed"])
        counts: dict[tuple[str, str, str, str], int] = {}
        for c in snap.connections:
            if c.state == "open":
                k = (c.outbound, c.stage, c.proto, "true")
                counts[k] = counts.get(k, 0) + 1
        for r in s.records:
            if relayed(r.outbound, r.flags) or r.flags & (ABI.FLOW_TCP_FIN | ABI.FLOW_TCP_RST):
                continue
            k = (snap.outbounds.get(r.outbound, str(r.outbound)), "kernel", r.proto, "false")
            counts[k] = counts.get(k, 0) + 1
        yield _by(open_, ((list(k), v) for k, v in sorted(counts.items())))
        yield _counter("daetui_relayed_connections", "Connections the control plane relayed since start",
                       snap.total_connections)
        yield _gauge("daetui_udp_nat_entries", "UDP sessions the control plane relays now", snap.udp_nat_entries)
        by_outbound, by_node, by_device = s.traffic.rows()
        yield _bytes("daetui_outbound_bytes", "Bytes through each outbound (up: from the client)", ["outbound"],
                     by_outbound)
        yield _bytes("daetui_node_bytes", "Bytes through each proxy node (up: from the client)", ["node"], by_node)
        yield _bytes("daetui_device_bytes", "Bytes of each device by MAC and its label in [device] (the router's "
                     "own flows: device=\"router\"); up: from the device", ["mac", "device"], by_device)

    def _budgets(self, snap: Snapshot) -> Iterator[Metric]:
        b = snap.budgets
        yield _gauge("daetui_relay_flows", "Relayed flows open (TCP and UDP), against daetui_relay_flows_max", b.flows)
        yield _gauge("daetui_relay_flows_max", "The relayed flows' budget in force", b.max_flows)
        yield _by(CounterMetricFamily("daetui_relay_refused", "Flows refused for a budget", labels=["budget"]),
                  ((["total"], b.refused), (["client"], b.refused_client)))
        yield _counter("daetui_relay_idle_closed", "TCP relays ended by tcp_idle_timeout", b.idle_closed)
        yield _gauge("daetui_relay_workers", "Relay workers configured (global.relay_workers)", b.workers)
        yield _gauge("daetui_relay_workers_live", "Relay workers ready, their listeners in the kernel's choice",
                     b.workers_live)
        yield _counter("daetui_relay_worker_deaths", "Relay workers that ended while the daemon ran", b.worker_deaths)
        yield _by(CounterMetricFamily("daetui_udp_dropped", "UDP datagrams dropped, by why", labels=["reason"]),
                  ((["buffer"], b.udp_buffer_drops), (["flow_budget"], b.udp_refused),
                   (["open_failed"], b.udp_open_failed)))
        yield _gauge("daetui_udp_buffered_bytes", "UDP bytes held (opening sessions, outboxes)", b.udp_buffered)

    def _dns(self, snap: Snapshot) -> Iterator[Metric]:
        d = snap.dns
        if d is None:
            return
        c = d.counters
        for name, doc, value in (
                ("queries", "DNS queries from clients", c.queries),
                ("cache_hits", "DNS queries answered from the cache", c.cache_hits),
                ("cache_misses", "DNS queries the cache could not answer", c.cache_misses),
                ("shared", "Cache misses that joined an identical query in flight", c.shared),
                ("rejected", "DNS queries rejected by the DNS rules", c.rejected),
                ("servfail", "DNS queries answered SERVFAIL: no upstream answered", c.servfail),
                ("malformed", "DNS queries that could not be read", c.malformed),
                ("bad_answers", "Upstream answers that could not be read", c.bad_answers),
                ("stale_served", "Answers served after their TTL (optimistic_cache)", c.stale_served),
                ("refreshes", "Background refreshes of stale entries", c.refreshes),
                ("refresh_failures", "Background refreshes that got no answer", c.refresh_failures),
                ("kernel_answered", "DNS queries answered by the LAN program itself (dns.kernel_answers)",
                 c.kernel_answered)):
            yield _counter(f"daetui_dns_{name}", doc, value)
        yield _by(CounterMetricFamily("daetui_dns_kernel_handed_over",
                                      "DNS queries the LAN program handed to the controller, by reason",
                                      labels=["reason"]),
                  (([reason.lower()], n) for reason, n in c.kernel_handed_over))
        yield _gauge("daetui_dns_cache_entries", "Answers in the DNS cache", d.cached)
        yield _gauge("daetui_dns_cache_capacity", "The DNS cache's bound (entries)", d.cache_size)
        yield _gauge("daetui_dns_kernel_names", "Addresses with a name in the kernel's domain map", c.kernel_names)
        rows = [(u.name, u) for u in d.upstreams]
        for name, doc, get in (
                ("queries", "Queries sent to each DNS upstream", lambda u: u.queries),
                ("errors", "Queries each DNS upstream did not answer (errors and timeouts)", lambda u: u.errors),
                ("timeouts", "Queries each DNS upstream did not answer in time", lambda u: u.timeouts)):
            yield _by(CounterMetricFamily(f"daetui_dns_upstream_{name}", doc, labels=["upstream"]),
                      (([n], get(u)) for n, u in rows))
        hist = HistogramMetricFamily("daetui_dns_upstream_latency_seconds",
                                     "How long each DNS upstream took to answer", labels=["upstream"])
        for n, u in rows:
            counts = list(u.latency_counts) or [0] * (len(LATENCY_BUCKETS) + 1)
            running, buckets = 0, []
            for bound, count in zip([*(str(b) for b in LATENCY_BUCKETS), "+Inf"], counts, strict=True):
                running += count
                buckets.append((bound, running))
            hist.add_metric([n], buckets, u.latency_sum)
        yield hist

    def _outbounds(self, snap: Snapshot) -> Iterator[Metric]:
        alive = GaugeMetricFamily("daetui_node_alive", "Whether each node's last check passed (1) or not (0)",
                                  labels=["node", "family"])
        latency = GaugeMetricFamily("daetui_node_latency_seconds", "Each node's latency at its last passed check "
                                    "(none when the last check failed)", labels=["node", "family"])
        for n in snap.nodes:
            for family, up, history in (("4", n.alive4, n.latencies4), ("6", n.alive6, n.latencies6)):
                alive.add_metric([n.name, family], 1 if up else 0)
                if history and history[-1] is not None:
                    latency.add_metric([n.name, family], history[-1])
        yield alive
        yield latency
        selected = GaugeMetricFamily("daetui_group_selected", "The node each group uses for new flows (1), and "
                                     "whether it is pinned", labels=["group", "node", "family", "pinned"])
        for g in snap.groups:
            for family, node in (("4", g.selected4), ("6", g.selected6)):
                if node is not None:
                    selected.add_metric([g.name, node, family, "true" if g.pinned == node else "false"], 1)
        yield selected

    def _api(self, s: Scrape) -> Iterator[Metric]:
        requests, unauthorized, errors, open_, opened, refused, dropped = s.api
        yield _counter("daetui_api_requests", "Controller API requests answered (this scrape too)", requests)
        yield _counter("daetui_api_unauthorized", "Controller API requests refused for the secret", unauthorized)
        yield _counter("daetui_api_errors", "Controller API requests answered with an error other than 401", errors)
        yield _gauge("daetui_api_streams", "Controller API streams open (websockets, chunked)", open_)
        yield _counter("daetui_api_streams_opened", "Controller API streams opened", opened)
        yield _counter("daetui_api_streams_refused", "Controller API streams refused for the bound", refused)
        yield _counter("daetui_api_stream_messages_dropped", "Stream messages dropped for clients that do not read",
                       dropped)


def render(registry: CollectorRegistry, scrape: Scrape, accept: str) -> tuple[bytes, str]:
    """The scrape as Prometheus' text (or OpenMetrics, when asked for). In a thread (asyncio.to_thread runs it in
    a copy of the caller's context: the scrape set here is this one's, whatever other scrapes run at once)."""
    _SCRAPE.set(scrape)
    if scrape.snap.raw_flows is not None:
        scrape.records = list(scrape.snap.raw_flows.records())
    scrape.traffic.fold(scrape.snap, scrape.records)
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def routes(ctx: ApiContext) -> list[web.RouteDef]:
    """`GET /metrics`."""
    plane = ctx.plane
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector())
    traffic = TrafficTotals()

    async def metrics(request: web.Request) -> web.Response:
        snap = await ctx.build(flows=True, dns=True)
        c, st = ctx.counters, ctx.counters.streams
        scrape = Scrape(snap, plane.reload_counts(),
                        (c.requests, c.unauthorized, c.errors, st.open, st.opened, st.refused, st.dropped), traffic)
        body, content_type = await asyncio.to_thread(render, registry, scrape, request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    return [web.get("/metrics", metrics)]
