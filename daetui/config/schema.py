"""The keys a config file may hold, their types and defaults.

dae's option names and defaults where dae has the option (daetui's own
defaults differ where noted). A key not listed here is an error with a
"did you mean"; dae's options that mean nothing for daetui are accepted
with a warning, so that a converted dae config loads.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from daetui.config.dae_keys import without_meaning

LOG_LEVELS = ("error", "warn", "info", "debug", "trace")
DIAL_MODES = ("ip", "domain", "domain+", "domain++")
UNKNOWN_DOMAIN = ("sniff", "no_match")
HTTP_METHODS = ("HEAD", "GET", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT", "PATCH")
GROUP_POLICY = re.compile(r"^(random|min|min_avg10|min_moving_avg|fixed\(\d+\))$")
NODE_SCHEMES = ("ss", "ssr", "socks5", "socks4", "socks4a", "http", "https", "trojan", "trojan-go", "vless",
                "vmess", "tuic", "hysteria2", "hy2", "juicity", "anytls")
SUBSCRIPTION_SCHEMES = ("http", "https", "file", "http-file", "https-file")

# Bits daetui uses for itself; so_mark_from_dae must stay clear of the first.
TPROXY_MARK = 0x2000000          # packets for the control plane (policy routing -> local)
DEFAULT_SO_MARK = 0x4000000      # daetui's own outgoing sockets (dae's default is 0)

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(h|m|s|ms|us|µs|ns))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: str) -> float:
    """dae's (Go's) durations: "30s", "100ms", "1m30s", "0". Seconds as a float; ValueError if not one."""
    text = text.strip()
    if text in ("0", ""):
        return 0.0
    if not _DURATION.match(text):
        raise ValueError(f"{text!r} is not a duration; expected e.g. 30s, 100ms, 1m30s")
    return sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(text))


@dataclass(frozen=True)
class KeySpec:
    """One key: its type, default and a check of its value."""

    type: str                  # "int" | "bool" | "str" | "strlist" | "duration"
    default: Any
    doc: str
    check: Callable[[Any], str | None] | None = None   # returns an error message


def _port(v: int) -> str | None:
    return None if 1 <= v <= 65535 else "expected a port between 1 and 65535"


def _mark(v: int) -> str | None:
    if not 0 <= v < 2**32:
        return "expected a 32-bit mark"
    if v & TPROXY_MARK:
        return f"must not use bit {TPROXY_MARK:#x}: daetui routes the control plane's packets with it"
    return None


def _one_of(values: tuple[str, ...]) -> Callable[[str], str | None]:
    def check(v: str) -> str | None:
        return None if v in values else f"expected one of {', '.join(values)}"
    return check


def _ifnames(allow_auto: bool) -> Callable[[tuple[str, ...]], str | None]:
    def check(v: tuple[str, ...]) -> str | None:
        for name in v:
            if allow_auto and name == "auto":
                continue
            if not name or len(name) > 15 or "/" in name or name.strip() != name:
                return f"{name!r} is not an interface name"
        return None
    return check


def _marks(v: tuple[int, ...]) -> str | None:
    if len(v) > 16:
        return "at most 16 marks"
    bad = [m for m in v if not 0 < m < 2**32]
    return f"{bad[0]} is not a 32-bit mark (1 to 0xffffffff)" if bad else None


def _cgroup(v: str) -> str | None:
    if not v.startswith("/") or "/../" in v + "/" or "\0" in v:
        return "expected a cgroup as /proc/PID/cgroup prints it, such as / or /system.slice"
    return None


def _nonneg(v: float) -> str | None:
    return None if v >= 0 else "expected a duration of zero or more"


def _positive(v: float) -> str | None:
    # A timer of zero would fire at once and for ever (a check loop, an idle timeout that ends every flow).
    return None if v > 0 else "expected a duration greater than zero, e.g. 30s"


def _table_size(v: int) -> str | None:
    # Below 1024 an LRU's per-CPU lists make it forget early; above 2^20 the console's one-syscall
    # read of the whole flow table would hold ~100 MB.
    return None if 1024 <= v <= 1 << 20 else "expected a number between 1024 and 1048576"


def _minute_or_more(v: float) -> str | None:
    return None if v >= 60 else "expected a duration of a minute or more"


def _listen_address(v: str) -> str | None:
    """"" (off), or host:port / [v6]:port with a port; the host an address (a name would listen who knows where)."""
    if not v:
        return None
    host, sep, port = v.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return "expected address:port, e.g. 127.0.0.1:9090 or [::1]:9090"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return "expected an IP address before the port, e.g. 127.0.0.1:9090 or 0.0.0.0:9090"
    return None


GLOBAL: dict[str, KeySpec] = {
    "lan_interface": KeySpec("strlist", (), "LAN interfaces to bind lan_ingress/lan_egress to (names or wildcards: "
                             "veth*, wg+)", _ifnames(False)),
    "wan_interface": KeySpec("strlist", (), "WAN interfaces (names, wildcards, or auto: those holding a default "
                             "route): the router's own new flows out of them are routed by the rules",
                             _ifnames(True)),
    "bypass_marks": KeySpec("intlist", (), "packets with one of these marks are never caught on the WAN side "
                            "(another VPN's or proxy's own sockets), besides so_mark_from_dae (daetui)", _marks),
    "cgroup": KeySpec("str", "/", "the cgroup v2 whose processes' sockets are named for pname() and the console, "
                      "as /proc/PID/cgroup prints it (/: every process; /system.slice) (daetui)", _cgroup),
    "tproxy_port": KeySpec("int", 12345, "port of the transparent listeners (loopback only)", _port),
    "tproxy_port_protect": KeySpec("bool", True, "daetui's listeners are on loopback: always protected"),
    "so_mark_from_dae": KeySpec("int", DEFAULT_SO_MARK, "SO_MARK of daetui's own outgoing sockets", _mark),
    "log_level": KeySpec("str", "info", "error, warn, info, debug or trace", _one_of(LOG_LEVELS)),
    "auto_config_kernel_parameter": KeySpec("bool", True, "enable forwarding and turn off send_redirects"),
    "fail_open": KeySpec("bool", True, "pass flows as direct while the control plane is down"),
    "dial_mode": KeySpec("str", "domain", "ip, domain, domain+ or domain++ (as dae)", _one_of(DIAL_MODES)),
    "sniffing_timeout": KeySpec("duration", 0.1, "how long to wait for the first bytes to sniff a name", _nonneg),
    "unknown_domain": KeySpec("str", "sniff", "a domain() function meeting an address DNS gave no name: sniff "
                              "(the flow goes to the control plane, which reads its name and decides) or no_match "
                              "(as dae's kernel: the function is false and the kernel decides on) (daetui)",
                              _one_of(UNKNOWN_DOMAIN)),
    "check_interval": KeySpec("duration", 30.0, "health check interval of nodes", _positive),
    "check_tolerance": KeySpec("duration", 0.0, "switch node only when it is this much faster", _nonneg),
    "tcp_check_url": KeySpec("strlist", ("http://cp.cloudflare.com", "1.1.1.1", "2606:4700:4700::1111"),
                             "URL (and its IPs) fetched through a node to check it"),
    "tcp_check_http_method": KeySpec("str", "HEAD", "HTTP method of the TCP check", _one_of(HTTP_METHODS)),
    "udp_check_dns": KeySpec("strlist", ("dns.google.com:53", "8.8.8.8", "2001:4860:4860::8888"),
                             "DNS server (and its IPs) queried through a node to check UDP"),
    "allow_insecure": KeySpec("bool", False, "accept invalid TLS certificates of nodes"),
    "disable_waiting_network": KeySpec("bool", False, "do not wait for the network before fetching subscriptions"),
    "fallback_resolver": KeySpec("str", "8.8.8.8:53", "resolver for the names of nodes and subscriptions"),
    "bootstrap_resolver": KeySpec("str", "", "resolver for the names of nodes, subscriptions and DNS upstreams, "
                                  "before DNS routing is up; set, it replaces fallback_resolver there (dae v2)"),
    "dead_group": KeySpec("str", "reject", "a group with no live node: reject (reset by daetui), drop, or direct",
                          _one_of(("reject", "drop", "direct"))),
    "udp_timeout": KeySpec("duration", 30.0, "idle time after which a relayed UDP flow ends (daetui)",
                          _positive),
    "subscription_interval": KeySpec("duration", 43200.0, "how often subscriptions are fetched again "
                                     "(daetui; dae fetches them only at start)", _minute_or_more),
    "heartbeat_timeout": KeySpec("duration", 5.0, "a daemon that has not beaten this long (stopped, hung) is "
                                 "failed open like a dead one: new flows go direct (drop without fail_open), "
                                 "LAN DNS to the server asked (daetui)",
                                 lambda v: None if 0.5 <= v <= 600 else "expected a duration between 500ms and 10m"),
    "flow_table_size": KeySpec("int", 65536, "flows the kernel remembers (routing_tuples; least recently seen "
                               "go first) and relayed TCP flows it guards (relayed_tuples); at start (daetui)",
                               _table_size),
    "domain_table_size": KeySpec("int", 65536, "addresses whose DNS names the kernel routes by (domain_routing); "
                                 "at start (daetui)", _table_size),
    # -- issue 11, part "budget" (resource budgets of the relay path; README: Budgets) --
    "max_flows": KeySpec("int", 16384, "relayed flows (TCP connections and UDP NAT entries) at once, all "
                         "clients together; also held under what the descriptor limit allows (daetui)",
                         lambda v: None if v > 0 else "expected a number above zero"),
    "max_flows_per_client": KeySpec("int", 4096, "relayed flows at once from one LAN address (daetui)",
                                    lambda v: None if v > 0 else "expected a number above zero"),
    "relay_workers": KeySpec("int", 0, "processes that accept and relay TCP flows besides the main one, which "
                             "keeps rules, DNS and the console's view; the kernel spreads new flows over the live "
                             "ones (0: the main process relays all); at start (daetui)",
                             lambda v: None if 0 <= v <= 8 else "expected 0 to 8"),
    "tcp_idle_timeout": KeySpec("duration", 7440.0, "a relayed TCP connection with no byte either way for this "
                                "long ends with a reset (daetui; dae's and OpenWrt's 2h4m)",
                                lambda v: None if v > 0 else "expected a duration above zero"),
    "udp_buffer_bytes": KeySpec("int", 32 << 20, "bytes of UDP held for proxies, all flows together: "
                                "while a session opens and in each flow's outbox (daetui)",
                                lambda v: None if v > 0 else "expected a number above zero"),
    "udp_flow_buffer_bytes": KeySpec("int", 256 << 10, "bytes of UDP held for one flow (daetui)",
                                     lambda v: None if v > 0 else "expected a number above zero"),
    # -- issue 14: the clash-compatible controller API and /metrics (daetui/api) --
    "external_controller": KeySpec("str", "", "address:port of the clash/mihomo-compatible controller API and "
                                   "Prometheus /metrics, e.g. 127.0.0.1:9090; empty: off (daetui; at start)",
                                   lambda v: _listen_address(v)),
    "external_controller_secret": KeySpec("str", "", "the Bearer token the controller API asks for (?token= on "
                                          "websockets); empty: none, only wise on 127.0.0.1 (daetui)"),
    "external_controller_cors": KeySpec("strlist", ("*",), "origins a browser may call the controller API from "
                                        "(mihomo's external-controller-cors allow-origins) (daetui)"),
}

# dae options with no meaning for daetui: accepted, with a warning saying why (dae_keys.py is their one table).
DAE_ONLY: dict[str, str] = without_meaning()

ROUTING: dict[str, KeySpec] = {
    "rules": KeySpec("rules", (), "rules in dae's syntax, first match wins"),
    "fallback": KeySpec("str", "direct", "outbound for flows no rule matches"),
}

GROUP_CHECK_KEYS = ("tcp_check_url", "tcp_check_http_method", "udp_check_dns", "check_interval",
                    "check_tolerance")

GROUP: dict[str, KeySpec] = {
    "filter": KeySpec("strlist", (), "which nodes: name(...)/subtag(...) expressions, OR-ed"),
    "policy": KeySpec("str", "min_moving_avg", "random, fixed(N), min, min_avg10 or min_moving_avg",
                      lambda v: None if GROUP_POLICY.match(v) else
                      "expected random, fixed(N), min, min_avg10 or min_moving_avg"),
    # dae lets a group check its nodes its own way; unset, the [global] value holds.
    **{k: replace(GLOBAL[k], default=None, doc=GLOBAL[k].doc + " (this group's; default: [global]'s)")
       for k in GROUP_CHECK_KEYS},
}

DNS: dict[str, KeySpec] = {
    "upstream": KeySpec("table", {}, "name = \"scheme://host:port\""),
    "request": KeySpec("rulelist", (), "request routing rules, last \"fallback: X\""),
    "response": KeySpec("rulelist", (), "response routing rules, last \"fallback: X\""),
    "ipversion_prefer": KeySpec("int", 0, "0 (both), 4 or 6",
                                lambda v: None if v in (0, 4, 6) else "expected 0, 4 or 6"),
    "fixed_domain_ttl": KeySpec("table", {}, "domain = seconds"),
    "bind": KeySpec("str", "", "also serve DNS on this address:port (UDP and TCP)"),
    "cache_size": KeySpec("int", 4096, "answers kept in the cache (least recently used go first)",
                          lambda v: None if v > 0 else "expected a positive number"),
    "ca_file": KeySpec("str", "", "CA certificates (PEM) for tls:// and https:// upstreams; default: the system's"),
    "upstream_timeout": KeySpec("duration", 2.0, "how long one upstream gets to answer before the next is asked",
                                lambda v: None if 0 < v <= 30 else "expected a duration between 0 and 30s"),
    "optimistic_cache": KeySpec("bool", False, "answer with an expired entry at once (its TTL 30s) and refresh it "
                                "in the background (RFC 8767 serve-stale; dae's default is true)"),
    "optimistic_cache_ttl": KeySpec("duration", 60.0, "how long after expiry an entry may still be served stale "
                                    "(0: until the cache evicts it)", _nonneg),
    "kernel_answers": KeySpec("bool", False, "answer repeated plain UDP queries from the LAN in the kernel, from the "
                              "answers the cache gave (only answers that are every client's; never stale ones)"),
    # -- issue 11, DNS part: DNS-over-TCP clients' bounds (apart from UDP's pending queries) --
    "tcp_connections": KeySpec("int", 256, "DNS-over-TCP connections open at once, all LAN clients together",
                               lambda v: None if 1 <= v <= 65536 else "expected a number between 1 and 65536"),
    "tcp_connections_per_client": KeySpec("int", 32, "DNS-over-TCP connections open at once from one address",
                                          lambda v: None if 1 <= v <= 65536 else
                                          "expected a number between 1 and 65536"),
    "tcp_idle_timeout": KeySpec("duration", 10.0, "a DNS-over-TCP client with nothing to say or hear this long "
                                "is closed", lambda v: None if 0 < v <= 3600 else
                                "expected a duration above 0 and at most 1h"),
    "tcp_write_timeout": KeySpec("duration", 5.0, "how long a DNS-over-TCP client gets to take a reply before "
                                 "its connection is closed", lambda v: None if 0 < v <= 60 else
                                 "expected a duration above 0 and at most 60s"),
    "tcp_pipeline": KeySpec("int", 16, "queries of one DNS-over-TCP connection resolved at once (RFC 7766 "
                            "pipelining); more wait in the socket", lambda v: None if 1 <= v <= 1024 else
                            "expected a number between 1 and 1024"),
}

SECTIONS = ("global", "node", "subscription", "group", "dns", "routing", "device")
