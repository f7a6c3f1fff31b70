"""mihomo's /configs for daetui: what GET answers of the config in force, and what a PATCH or PUT may do.

`GET /configs` is mihomo's config.General (hub/executor GetGeneral) filled in
honestly: daetui has a transparent listener (`tproxy-port`) and no HTTP,
SOCKS, redir, mixed or TUN inbound (0, tun disabled); it routes by its rules
(`mode` "rule"), sniffs, handles IPv6, proxies the LAN's clients
(`allow-lan` when a LAN interface is configured) and marks its own sockets
with so_mark_from_dae (`routing-mark`). `daetui` adds what dashboards do not
know to ask: the config file, the rule generation, the interfaces.

`PATCH /configs` takes mihomo's body. `log-level` is applied at once (the
daemon's log level, as its log and /logs show). Every other key daetui cannot
apply: a value that is what GET says changes nothing; another is logged as
not applicable and named in the answer's `X-Daetui-Ignored` header, and the
answer is mihomo's 204 still (a dashboard's toggle must not break). A body
that is no JSON object, or a key of mihomo's with a value of the wrong type
(mihomo's decoder refuses it), is 400 "Body invalid" and nothing changes.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from typing import Any

from daetui.api.errors import bad_request, json_object
from daetui.control.plane import ControlPlane

# mihomo's level names (log.LogLevelMapping) and daetui's (global.log_level; "silent" is mihomo's only).
MIHOMO_LEVELS = ("debug", "info", "warning", "error", "silent")
TO_DAETUI = {"debug": "debug", "info": "info", "warning": "warn", "error": "error", "silent": "silent"}
FROM_DAETUI = {"debug": "debug", "trace": "debug", "info": "info", "warn": "warning", "error": "error",
               "silent": "silent"}
MODES = ("rule", "global", "direct")
_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_prefixes(v: Any) -> bool:
    if not isinstance(v, list):
        return False
    for p in v:
        if not isinstance(p, str) or "/" not in p:
            return False
        try:
            ipaddress.ip_network(p, strict=False)
        except ValueError:
            return False
    return True


def _is_tun(v: Any) -> bool:
    return isinstance(v, dict) and isinstance(v.get("enable", False), bool)


def _one_of(names: tuple[str, ...]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v.lower() in names


# mihomo's configSchema (hub/route/configs.go): each key and what its decoder takes.
SCHEMA: dict[str, Callable[[Any], bool]] = {
    **{k: _is_int for k in ("port", "socks-port", "redir-port", "tproxy-port", "mixed-port")},
    "tun": _is_tun, "tuic-server": lambda v: isinstance(v, dict),
    **{k: lambda v: isinstance(v, str) for k in ("ss-config", "vmess-config", "tcptun-config", "udptun-config",
                                                  "bind-address", "interface-name")},
    **{k: lambda v: isinstance(v, bool) for k in ("allow-lan", "ipv6", "sniffing", "tcp-concurrent")},
    **{k: _is_prefixes for k in ("skip-auth-prefixes", "lan-allowed-ips", "lan-disallowed-ips")},
    "mode": _one_of(MODES),
    "log-level": _one_of(MIHOMO_LEVELS),
}


def general(plane: ControlPlane) -> dict[str, Any]:
    """GET /configs' answer (see the module's docstring); no secret is in it."""
    cfg = plane.config
    g = cfg.global_
    return {
        "port": 0, "socks-port": 0, "redir-port": 0, "tproxy-port": g.tproxy_port, "mixed-port": 0,
        "tun": {"enable": False, "device": "", "stack": "", "dns-hijack": [], "auto-route": False,
                "auto-detect-interface": False, "file-descriptor": 0},
        "tuic-server": {"enable": False, "listen": "", "certificate": "", "private-key": ""},
        "ss-config": "", "vmess-config": "", "authentication": [],
        "skip-auth-prefixes": [], "lan-allowed-ips": ["0.0.0.0/0", "::/0"], "lan-disallowed-ips": [],
        "allow-lan": bool(g.lan_interface), "bind-address": "*", "inbound-tfo": False, "inbound-mptcp": False,
        "mode": "rule", "unified-delay": False, "log-level": FROM_DAETUI.get(plane.log_level, "info"),
        "ipv6": True, "interface-name": "", "routing-mark": g.so_mark_from_dae,
        "geox-url": {"geo-ip": "", "mmdb": "", "asn": "", "geo-site": ""}, "geo-auto-update": False,
        "geo-update-interval": 0, "geodata-mode": False, "geodata-loader": "", "geosite-matcher": "",
        "tcp-concurrent": False, "find-process-mode": "off", "sniffing": True, "global-client-fingerprint": "",
        "global-ua": "", "etag-support": False, "keep-alive-idle": 0, "keep-alive-interval": 0,
        "disable-keep-alive": False,
        "daetui": {"config": cfg.source, "generation": plane.generation, "lan-interface": list(g.lan_interface),
                   "wan-interface": list(g.wan_interface), "dial-mode": g.dial_mode, "fallback": cfg.routing.fallback,
                   "log-level": plane.log_level},
    }


def plan_patch(plane: ControlPlane, body: bytes) -> tuple[str | None, dict[str, Any]]:
    """A PATCH's body, checked: (the daetui log level to set or None, the keys that cannot apply and their values).

    Raises 400 "Body invalid" as mihomo's decoder would; nothing is applied here.
    """
    data = json_object(body)
    now = general(plane)
    level: str | None = None
    ignored: dict[str, Any] = {}
    for key, value in data.items():
        check = SCHEMA.get(key)
        if check is not None and value is not None and not check(value):
            raise bad_request()
        if value is None:
            continue                       # Go leaves a null pointer field unset: nothing asked
        if key == "log-level":
            level = TO_DAETUI[value.lower()]
        elif check is None or not _same(now.get(key), value):
            ignored[key] = value
    return level, ignored


def _same(current: Any, asked: Any) -> bool:
    """`asked` changes nothing from `current` (GET's value): equal, or a tun/mode spelt otherwise."""
    if isinstance(current, dict) and isinstance(asked, dict):
        return all(_same(current.get(k), v) for k, v in asked.items())
    if isinstance(current, str) and isinstance(asked, str):
        return current.lower() == asked.lower()
    return bool(current == asked and type(current) is type(asked))


def ignored_header(ignored: dict[str, Any]) -> str:
    """The X-Daetui-Ignored header's value: mihomo's keys by name, any other key only counted (they are the
    client's text: no header may carry it as is)."""
    named = [k for k in ignored if k in SCHEMA or _KEY.fullmatch(k)]
    others = len(ignored) - len(named)
    return ", ".join(named + ([f"{others} other key{'s' if others > 1 else ''}"] if others else []))


def short(value: Any, limit: int = 80) -> str:
    """A client's value for a log line: its JSON, cut to `limit` characters."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= limit else text[:limit] + "..."
