"""dae's config keys, each with its type, the dae release that brought it, and what daetui makes of it.

The one table of dae's keys: `daetui import-dae` types and renames values by
it, and the loader's list of dae options that mean nothing here
(`schema.DAE_ONLY`) is derived from it, so a key dae adds is either placed
here (and so known everywhere) or refused by name. Read off dae's
`config/config.go` (the `Global`, `Dns` and `Group` structs) at v1.0.0,
v1.1.0 and v2.0.0; tests/unit/test_dae_keys.py holds the table against the
keys of the real-world configs and against daetui's own schema.

Value kinds: u16/u32/int are integers range-checked like dae's Go types,
bool a Go boolean, duration a Go duration string, seconds an integer number
of seconds (dae's `int` TTLs), list a list of strings from dae's
comma-separated form, str a string, block a `name { key: value }` block.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DaeKey:
    """One key of dae's config: how dae reads it, and what it becomes in daetui's TOML."""

    kind: str
    since: str                  # the first dae release that has it ("dev": a development branch only)
    daetui: str | None = ""     # daetui's key ("": the same name; None: no meaning here)
    why: str = ""               # for daetui=None: why it has no meaning (the warning)
    # dae's default where it differs from daetui's, as dae writes it: the import writes it out so
    # that a converted config behaves as it did under dae.
    dae_default: str | None = None

    @property
    def has_meaning(self) -> bool:
        return self.daetui is not None

    def target(self, name: str) -> str:
        """The key daetui's TOML holds it under."""
        return self.daetui or name


GLOBAL: dict[str, DaeKey] = {
    "tproxy_port": DaeKey("u16", "v0"),
    "tproxy_port_protect": DaeKey("bool", "v0"),
    "so_mark_from_dae": DaeKey("u32", "v0"),
    "log_level": DaeKey("str", "v0"),
    "tcp_check_url": DaeKey("list", "v0"),
    "tcp_check_http_method": DaeKey("str", "v0"),
    "udp_check_dns": DaeKey("list", "v0"),
    "check_interval": DaeKey("duration", "v0"),
    "check_tolerance": DaeKey("duration", "v0"),
    "lan_interface": DaeKey("list", "v0"),
    "wan_interface": DaeKey("list", "v0"),
    "allow_insecure": DaeKey("bool", "v0"),
    "dial_mode": DaeKey("str", "v0"),
    "disable_waiting_network": DaeKey("bool", "v0"),
    "auto_config_kernel_parameter": DaeKey("bool", "v0", dae_default="false"),
    "sniffing_timeout": DaeKey("duration", "v0", dae_default="30ms"),
    "fallback_resolver": DaeKey("str", "v1.0.0"),
    "bootstrap_resolver": DaeKey("str", "v2.0.0"),
    # dae's one connection-state map is daetui's flow table (routing_tuples and relayed_tuples).
    "bpf_conn_state_map_size": DaeKey("u32", "v2.0.0", daetui="flow_table_size"),
    "disable_thp": DaeKey("bool", "v2.0.0", None, "transparent huge pages are the system's setting for daetui "
                                                 "(a Python process; dae turns them off for its own)"),
    "enable_local_tcp_fast_redirect": DaeKey("bool", "v0", None, "daetui has no local TCP fast redirect "
                                                                  "(dae deprecated it too)"),
    "auto_config_firewall_rule": DaeKey("bool", "v0", None, "daetui routes in TC and adds no firewall rules"),
    "tls_implementation": DaeKey("str", "v0", None, "daetui uses Python's TLS"),
    "utls_imitate": DaeKey("str", "v0", None, "daetui has no uTLS"),
    "tls_fragment": DaeKey("bool", "v1.1.0", None, "daetui does not fragment TLS ClientHellos"),
    "tls_fragment_length": DaeKey("str", "v1.1.0", None, "daetui does not fragment TLS ClientHellos"),
    "tls_fragment_interval": DaeKey("str", "v1.1.0", None, "daetui does not fragment TLS ClientHellos"),
    "pprof_port": DaeKey("u16", "v0", None, "daetui has no pprof"),
    "mptcp": DaeKey("bool", "v0", None, "daetui does not dial with MPTCP"),
    "bandwidth_max_tx": DaeKey("str", "v0", None, "hysteria2's Brutal bandwidth: daetui's hysteria2 runs "
                                                  "aioquic's congestion control, not Brutal"),
    "bandwidth_max_rx": DaeKey("str", "v0", None, "hysteria2's Brutal bandwidth: daetui's hysteria2 runs "
                                                  "aioquic's congestion control, not Brutal"),
    "udphop_interval": DaeKey("duration", "v1.1.0", None, "hysteria2's port hopping: daetui hops every 30 s "
                                                           "(hysteria's default), not settable yet"),
    # Keys of a dae development branch, never released; kept so that configs written for it convert.
    "dns_performance_level": DaeKey("str", "dev", None, "daetui's DNS controller has no performance levels"),
    "dns_ingress_manual": DaeKey("block", "dev", None, "daetui's DNS controller has no worker queue to size"),
}

# Blocks inside global, and their keys.
GLOBAL_BLOCKS: dict[str, dict[str, str]] = {"dns_ingress_manual": {"workers": "u16", "queue": "u16"}}

DNS: dict[str, DaeKey] = {
    "ipversion_prefer": DaeKey("int", "v0"),
    "fixed_domain_ttl": DaeKey("block", "v0"),
    "upstream": DaeKey("block", "v0"),
    "routing": DaeKey("block", "v0"),
    "bind": DaeKey("str", "v1.1.0"),
    # dae serves stale answers by default; daetui only when asked (the import writes dae's default out).
    "optimistic_cache": DaeKey("bool", "v2.0.0", dae_default="true"),
    "optimistic_cache_ttl": DaeKey("seconds", "v2.0.0"),
    # dae's 0 is "no limit"; daetui's cache is always bounded (the import keeps daetui's bound for 0).
    "max_cache_size": DaeKey("int", "v2.0.0", daetui="cache_size"),
}

GROUP: dict[str, DaeKey] = {
    "filter": DaeKey("functions", "v0"),
    "policy": DaeKey("str", "v0"),
    "tcp_check_url": DaeKey("list", "v0"),
    "tcp_check_http_method": DaeKey("str", "v0"),
    "udp_check_dns": DaeKey("list", "v0"),
    "check_interval": DaeKey("duration", "v0"),
    "check_tolerance": DaeKey("duration", "v0"),
}

SECTIONS = ("global", "subscription", "node", "group", "dns", "routing", "include")
REQUIRED_SECTIONS = ("global", "routing")   # dae refuses a config without them
FILTER_ANNOTATIONS = ("add_latency",)


def without_meaning() -> dict[str, str]:
    """dae's global keys that mean nothing for daetui, with why (the loader's warnings)."""
    return {name: key.why for name, key in GLOBAL.items() if not key.has_meaning}
