"""What the control plane tells the console: plain dataclasses, cheap to build.

A `Snapshot` is the state of every pane at one moment. It crosses the control
socket (see `wire.py`) and is the same object in-process; the console never
sees anything else of the control plane.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from daetui.abi.flowrecord import KernelFlow, RawFlows
from daetui.control.connections import Connection
from daetui.dataplane.mapinfo import MapEntries, MapInfo
from daetui.dns.state import DnsState
from daetui.outbound.state import GroupState, NodeState

__all__ = ["ApiStatus", "Budgets", "Connection", "Health", "InterfaceInfo", "LogLine", "MapEntries", "MapInfo",
           "ReloadResult", "RuleInfo", "Snapshot"]


@dataclass(frozen=True)
class RuleInfo:
    """One routing rule as the console lists it."""

    index: int
    text: str
    enabled: bool
    name: str | None
    id: str
    hits: int = 0
    last_hit: float | None = None


@dataclass(frozen=True)
class InterfaceInfo:
    """An interface of the router's namespace and what daetui has bound to it."""

    index: int
    name: str
    up: bool
    configured: bool               # named in global.lan_interface or wan_interface (by name, wildcard or auto)
    bound: bool
    since: float | None = None     # when daetui bound it
    programs: tuple[str, ...] = ()  # e.g. ("lan_ingress (ingress)", "lan_egress (egress)")
    rx_packets: int = 0            # seen by lan_ingress
    rx_bytes: int = 0
    tx_packets: int = 0            # seen by lan_egress
    tx_bytes: int = 0
    side: str = "lan"              # "lan" (lan_interface) or "wan" (wan_interface: the router's own flows)
    matched: str | None = None     # the pattern of the config that named it ("veth*", "auto"), when not its name


@dataclass(frozen=True)
class Health:
    """The daemon itself."""

    pid: int
    started: float
    config: str
    tproxy_port: int
    generation: int
    fallback: str
    fail_open: bool
    listeners: tuple[str, ...] = ()   # e.g. ("tcp4", "tcp6", "udp4", "udp6")
    match_sets: int = 0
    kernel_load_seconds: float = 0.0
    kernel: bool = True


@dataclass(frozen=True)
class Budgets:
    """The relay path's resources and the bounds they are held to (control/budget.py)."""

    flows: int = 0                   # relayed flows open (TCP connections and UDP NAT entries)
    max_flows: int = 0               # the overall budget in force (config, held under the descriptor limit)
    max_flows_per_client: int = 0
    busiest_client: str = ""         # the LAN address holding most flows
    busiest_flows: int = 0
    refused: int = 0                 # flows refused for the overall budget
    refused_client: int = 0          # flows refused for a client's budget
    last_refused: str = ""           # the client of the last refusal
    idle_closed: int = 0             # TCP relays ended by tcp_idle_timeout
    tcp_idle_timeout: float = 0.0
    fds: int = 0                     # descriptors open
    fd_limit: int = 0                # RLIMIT_NOFILE (soft, as raised at start)
    pipes: int = 0                   # splice pipes held (in use and pooled)
    pipe_bound: int = 0
    pipe_fallbacks: int = 0          # chunks copied because every pipe was in use
    udp_buffered: int = 0            # bytes of UDP held (opening sessions, outboxes)
    udp_buffer_limit: int = 0
    udp_flow_buffer_limit: int = 0
    udp_buffer_drops: int = 0        # datagrams dropped for a byte budget
    udp_refused: int = 0             # datagrams dropped because their flow was over a flow budget
    udp_open_failed: int = 0         # datagrams dropped because their flow could not open (no session, no route)
    loop_lag_p99_ms: float = 0.0     # how late the event loop ran what was due, over the last minute
    loop_lag_max_ms: float = 0.0
    workers: int = 0                 # relay workers configured (global.relay_workers)
    workers_live: int = 0            # ready now: their listeners in the kernel's choice
    worker_deaths: int = 0           # workers that ended while the daemon ran (each started again)


@dataclass(frozen=True)
class ApiStatus:
    """The controller API (daetui/api) as the console shows it: where it listens and who is attached."""

    address: str = ""               # "" : off (global.external_controller empty)
    error: str = ""                 # why it is not listening, when it should
    clients: int = 0                # websocket streams attached now
    requests: int = 0               # HTTP requests answered since start
    unauthorized: int = 0           # requests refused for a missing or wrong secret
    dropped: int = 0                # websocket messages dropped for clients that do not read


@dataclass(frozen=True)
class Snapshot:
    """The state of the control plane at one moment."""

    time: float
    health: Health
    rules: tuple[RuleInfo, ...] = ()
    fallback_hits: int = 0
    outbounds: dict[int, str] = field(default_factory=dict)   # kernel outbound id -> name
    interfaces: tuple[InterfaceInfo, ...] = ()
    missing_interfaces: tuple[str, ...] = ()
    connections: tuple[Connection, ...] = ()
    raw_flows: RawFlows | None = None
    counters: dict[str, int] = field(default_factory=dict)
    udp_nat_entries: int = 0
    total_connections: int = 0
    devices: dict[str, str] = field(default_factory=dict)      # MAC -> label
    dns: DnsState | None = None                                # the DNS controller's cache and upstreams
    groups: tuple[GroupState, ...] = ()                        # proxy groups and their choice
    nodes: tuple[NodeState, ...] = ()                          # proxy nodes and their health
    budgets: Budgets = field(default_factory=Budgets)          # the relay path's resources and bounds
    api: ApiStatus = field(default_factory=ApiStatus)          # the controller API

    @cached_property
    def kernel_flows(self) -> list[KernelFlow]:
        """The kernel's flows, decoded once per snapshot."""
        return self.raw_flows.decode() if self.raw_flows is not None else []

    @property
    def bindings(self) -> list[InterfaceInfo]:
        return [i for i in self.interfaces if i.bound]


@dataclass(frozen=True)
class ReloadResult:
    """What a reload did, or why it did nothing."""

    ok: bool
    message: str
    generation: int = 0
    added: tuple[str, ...] = ()      # rules (text) new in this reload
    removed: tuple[str, ...] = ()
    toggled: tuple[str, ...] = ()    # rules whose enabled state changed
    aborted: int = 0                 # flows reset because their route changed (--abort)
    kept: int = 0                    # kernel-forwarded TCP flows whose route changed, left running


@dataclass(frozen=True)
class LogLine:
    """One line of the daemon's log."""

    time: float
    level: str
    logger: str
    message: str
