"""A config, checked: the dataclasses the rest of daetui reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from daetui.config.schema import DEFAULT_SO_MARK
from daetui.routing.ruleset import RuleSet


@dataclass(frozen=True)
class GlobalConfig:
    """The `[global]` section (durations in seconds)."""

    lan_interface: tuple[str, ...] = ()
    wan_interface: tuple[str, ...] = ()
    bypass_marks: tuple[int, ...] = ()
    cgroup: str = "/"
    tproxy_port: int = 12345
    tproxy_port_protect: bool = True
    so_mark_from_dae: int = DEFAULT_SO_MARK
    log_level: str = "info"
    auto_config_kernel_parameter: bool = True
    fail_open: bool = True
    dial_mode: str = "domain"
    sniffing_timeout: float = 0.1
    unknown_domain: str = "sniff"     # or "no_match" (dae's kernel: a domain() with no name known is false)
    check_interval: float = 30.0
    check_tolerance: float = 0.0
    tcp_check_url: tuple[str, ...] = ("http://cp.cloudflare.com", "1.1.1.1", "2606:4700:4700::1111")
    tcp_check_http_method: str = "HEAD"
    udp_check_dns: tuple[str, ...] = ("dns.google.com:53", "8.8.8.8", "2001:4860:4860::8888")
    allow_insecure: bool = False
    disable_waiting_network: bool = False
    fallback_resolver: str = "8.8.8.8:53"
    bootstrap_resolver: str = ""   # dae v2: set, it replaces fallback_resolver for bootstrap lookups
    udp_timeout: float = 30.0
    dead_group: str = "reject"
    subscription_interval: float = 43200.0
    heartbeat_timeout: float = 5.0
    flow_table_size: int = 65536
    domain_table_size: int = 65536
    # issue 11, part "budget": resource budgets of the relay path (schema.py says what each means)
    max_flows: int = 16384
    max_flows_per_client: int = 4096
    relay_workers: int = 0
    tcp_idle_timeout: float = 7440.0
    udp_buffer_bytes: int = 32 << 20
    udp_flow_buffer_bytes: int = 256 << 10
    # issue 14: the controller API (daetui/api)
    external_controller: str = ""
    external_controller_secret: str = ""
    external_controller_cors: tuple[str, ...] = ("*",)

    @property
    def resolver(self) -> str:
        """The resolver of daetui's own lookups (nodes, subscriptions, upstreams): dae v2's
        bootstrap_resolver when set, else fallback_resolver."""
        return self.bootstrap_resolver or self.fallback_resolver


@dataclass(frozen=True)
class Tagged:
    """A node or subscription: its tag and its link."""

    tag: str
    link: str


@dataclass(frozen=True)
class GroupSpec:
    """`[group.NAME]`: which nodes, and how to pick one."""

    name: str
    filters: tuple[str, ...] = ()
    policy: str = "min_moving_avg"
    # The group's own node checks (dae's per-group options); None: [global]'s.
    tcp_check_url: tuple[str, ...] | None = None
    tcp_check_http_method: str | None = None
    udp_check_dns: tuple[str, ...] | None = None
    check_interval: float | None = None
    check_tolerance: float | None = None


@dataclass(frozen=True)
class DnsConfig:
    """`[dns]`: upstreams, request and response rules, the cache."""

    upstream: dict[str, str] = field(default_factory=dict)
    request: tuple[str, ...] = ()
    request_fallback: str = "asis"
    response: tuple[str, ...] = ()
    response_fallback: str = "accept"
    ipversion_prefer: int = 0
    fixed_domain_ttl: dict[str, int] = field(default_factory=dict)
    bind: str = ""
    cache_size: int = 4096
    ca_file: str = ""
    upstream_timeout: float = 2.0
    # RFC 8767 (dae's optimistic_cache): expired answers served at once, refreshed in the background,
    # for at most optimistic_cache_ttl after expiry (0: until the cache evicts them). dae's default is on.
    optimistic_cache: bool = False
    optimistic_cache_ttl: float = 60.0
    # Repeated plain UDP queries answered by the LAN program from the controller's answers (dns/kernel_answers.py).
    kernel_answers: bool = False
    # -- issue 11, DNS part: DNS-over-TCP clients' bounds (daetui/dns/serve.py) --
    tcp_connections: int = 256
    tcp_connections_per_client: int = 32
    tcp_idle_timeout: float = 10.0
    tcp_write_timeout: float = 5.0
    tcp_pipeline: int = 16
    # The rules compiled by the loader (daetui.routing.dns_rules.DnsRules), so the controller never re-checks them.
    compiled: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Config:
    """A whole config, checked."""

    source: str
    global_: GlobalConfig
    routing: RuleSet
    devices: dict[str, str] = field(default_factory=dict)      # MAC (aa:bb:..) -> label
    nodes: tuple[Tagged, ...] = ()
    subscriptions: tuple[Tagged, ...] = ()
    groups: tuple[GroupSpec, ...] = ()
    dns: DnsConfig = field(default_factory=DnsConfig)
    files: tuple[str, ...] = ()            # the main file and every included one
    routing_file: str = ""                 # the file that holds [routing] (where rule edits go)
    text: str = field(default="", compare=False, repr=False)   # the main file's text as read
    warnings: tuple[str, ...] = field(default=(), compare=False)
