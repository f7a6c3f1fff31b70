"""What the DNS controller tells the console: plain dataclasses (they cross the control socket)."""

from __future__ import annotations

from dataclasses import dataclass

# The bounds, in seconds, of each upstream's latency histogram (DnsUpstreamRow.latency_counts): fixed, so
# the counts take the same room however many answers come, and Prometheus' `le` buckets are these.
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class DnsCacheRow:
    """One cached answer."""

    name: str
    qtype: str
    answers: tuple[str, ...]     # addresses, or the records' text for other types
    ttl_left: float              # seconds, at the snapshot's time
    ttl: float                   # the lifetime it was stored with
    upstream: str
    hits: int
    rcode: str                   # NOERROR, NXDOMAIN
    negative: bool
    route: str                   # how it was resolved
    stored: float                # wall clock
    # Whose answer it is: "" (every client's), or the server a client chose (asis, "asis 192.0.2.1:53"),
    # whose answer serves only queries to that server.
    scope: str = ""
    kernel: bool = True          # its addresses are named in the kernel (False: a server a client chose)
    stale: bool = False          # past its TTL, kept to be served stale (optimistic_cache)


@dataclass(frozen=True)
class DnsUpstreamRow:
    """One upstream and how it has done."""

    name: str
    url: str
    address: str                 # the address it is reached at ("" until known)
    route: str                   # how the routing rules send the connection to it
    queries: int
    errors: int
    timeouts: int
    mismatched: int              # answers with the wrong ID or question
    last_ms: float | None
    avg_ms: float | None         # over the last 32 answers
    last_error: str
    malformed: int = 0           # answers that broke their transport's framing (DoQ, DoH3), dropped
    # Answers by how long they took: one count per LATENCY_BUCKETS bound (at most that long, more than the one
    # before), and one past the last; their sum in seconds. Failures are in `errors`, not here.
    latency_counts: tuple[int, ...] = ()
    latency_sum: float = 0.0


@dataclass(frozen=True)
class DnsCounters:
    """The controller's totals since start."""

    queries: int = 0             # from clients (LAN, dns.bind, the console)
    cache_hits: int = 0
    cache_misses: int = 0
    shared: int = 0              # misses that joined an identical query in flight
    rejected: int = 0
    servfail: int = 0            # answered SERVFAIL: no upstream answered
    malformed: int = 0           # queries that could not be read (dropped or FORMERR)
    bad_answers: int = 0         # upstream answers that could not be read
    kernel_names: int = 0        # addresses with a name in the kernel's domain map
    asis_scoped: int = 0         # answers of servers clients chose (asis): kept for that server, not in the kernel
    kernel_evicted: int = 0      # addresses taken out of the full domain map, oldest first (their flows: sniffed)
    stale_served: int = 0        # answers served after their TTL (optimistic_cache, RFC 8767)
    refreshes: int = 0           # background refreshes of stale entries started
    refresh_failures: int = 0    # ... that got no answer (the stale entry stays until its window ends)
    # dns.kernel_answers: queries the LAN program answered itself (never counted in `queries`), and those it
    # handed to the controller, by reason (MISS, EXPIRED, EPOCH, EDNS, NOT_PLAIN, ...: bpf/daetui.h DNS_ST_*).
    kernel_answered: int = 0
    kernel_handed_over: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class DnsServing:
    """The DNS sockets' figures: what is open or pending now, its bounds, and what was refused, cut or timed out."""

    udp_pending: int = 0          # UDP queries being resolved now (cache misses)
    udp_pending_max: int = 0      # their bound
    udp_dropped: int = 0          # UDP queries not taken: `udp_pending_max` were pending (the client retries)
    udp_truncated: int = 0        # UDP replies cut to the client's size, TC set (the client asks over TCP)
    send_errors: int = 0          # UDP replies the kernel refused
    tcp_open: int = 0             # DNS-over-TCP connections now
    tcp_max: int = 0              # their bound (dns.tcp_connections)
    tcp_per_client_max: int = 0   # dns.tcp_connections_per_client
    tcp_queries: int = 0          # queries read over TCP
    tcp_refused: int = 0          # connections closed at once: their client, or everyone, at the bound
    tcp_evicted: int = 0          # idle connections closed to make room for a client with fewer
    tcp_idle_closed: int = 0      # closed after dns.tcp_idle_timeout with nothing to say or hear
    tcp_write_timeouts: int = 0   # closed: the client took no reply within dns.tcp_write_timeout


@dataclass(frozen=True)
class DnsState:
    """The DNS pane's data."""

    cache: tuple[DnsCacheRow, ...] = ()
    upstreams: tuple[DnsUpstreamRow, ...] = ()
    counters: DnsCounters = DnsCounters()
    cache_size: int = 0          # the bound
    cached: int = 0              # entries now (cache may be cut for the snapshot)
    serving: DnsServing = DnsServing()


@dataclass(frozen=True)
class DnsTrace:
    """A query made from the console, and the way it went."""

    name: str
    qtype: str
    rcode: str
    answers: tuple[str, ...]
    ttl: float
    upstream: str
    route: str                   # request rule, upstream and its route, response rule
    cached: bool
    elapsed_ms: float
    error: str = ""
