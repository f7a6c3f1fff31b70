"""v2ray 4.34 as a proxy server on the lab's "internet": inbounds as data, a freedom outbound.

    V2ray(lab, [vmess_inbound(10001, uid), trojan_inbound(10002, "pw")], ca=ca)

Every inbound listens on both the peer's addresses (ADDR.hosts4[0] and
ADDR.hosts6[0] unless told otherwise): one v2ray inbound per address, tagged
`<protocol>-<port>-4` / `-6`. An `Inbound` is the protocol's `settings`
object exactly as v2ray's JSON has it, so any protocol v2ray knows (vmess,
vless, trojan, shadowsocks, socks, http, dokodemo-door) can be added by a
test without code here; the helpers below only fill in the usual fields.
TLS inbounds use the certificate of a `LabCA` (one is made if none is
given; clients trust its `ca_file`).

The config is checked with `v2ray -test` before the server starts, so a bad
inbound fails with v2ray's own words. v2ray 4.34 reads it with
`v2ray -config FILE`.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daetui.lab.dnspeers import LabCA
from daetui.lab.peer import LabPeer
from daetui.lab.topology import ADDR, Lab, LabError
from daetui.net.netns import netns

V2RAY = "/usr/bin/v2ray"
TLS_NAME = "proxy.lab.test"  # the name in a LabCA made here, besides the addresses


class V2rayError(LabError):
    """v2ray could not be configured or did not come up."""


@dataclass(frozen=True)
class Inbound:
    """One inbound of the v2ray peer: protocol, port, v2ray's `settings` object, TLS or not."""

    protocol: str
    port: int
    settings: Mapping[str, Any] = field(default_factory=dict)
    tls: bool = False
    network: str = "tcp"  # the stream transport: tcp, ws or http (v2ray's name for h2)
    transport: Mapping[str, Any] = field(default_factory=dict)  # wsSettings / httpSettings as v2ray has them

    def to_json(self, listen: str, tag: str, ca: LabCA | None) -> dict[str, Any]:
        """The inbound object of v2ray's config, listening on `listen`."""
        settings = dict(self.settings)
        if self.protocol == "socks" and settings.get("udp") and "ip" not in settings:
            # v2ray tells socks clients to send UDP to this address.
            settings["ip"] = listen
        stream: dict[str, Any] = {"network": self.network}
        if self.transport:
            stream[{"ws": "wsSettings", "http": "httpSettings", "h2": "httpSettings"}[self.network]] = \
                dict(self.transport)
        if self.tls:
            if ca is None:
                raise V2rayError(f"{tag}: a TLS inbound needs a CA")
            stream["security"] = "tls"
            stream["tlsSettings"] = {
                "serverName": ca.hostname,
                "alpn": ["h2"] if self.network in ("http", "h2") else ["http/1.1"],
                "certificates": [{"certificateFile": str(ca.cert_file), "keyFile": str(ca.key_file)}],
            }
        return {"tag": tag, "protocol": self.protocol, "listen": listen, "port": self.port,
                "settings": settings, "streamSettings": stream}


def ws_settings(path: str, *, max_early_data: int = 0) -> dict[str, Any]:
    """v2ray's wsSettings: the path served, and early data (0-RTT) accepted up to `max_early_data` bytes.

    v2ray 4.34 reads early data from Sec-WebSocket-Protocol only (no other header name).
    """
    settings: dict[str, Any] = {"path": path}
    if max_early_data:
        settings["maxEarlyData"] = max_early_data
    return settings


def h2_settings(path: str, hosts: Sequence[str] = ()) -> dict[str, Any]:
    """v2ray's httpSettings (the h2 transport): the path served and the hosts it accepts (any when empty)."""
    settings: dict[str, Any] = {"path": path}
    if hosts:
        settings["host"] = list(hosts)
    return settings


def vmess_inbound(port: int, uuid: str, *, tls: bool = False, alter_id: int = 0, network: str = "tcp",
                  transport: Mapping[str, Any] | None = None) -> Inbound:
    """vmess with one user; alterId 0 is the AEAD header (the only one daetui speaks)."""
    return Inbound("vmess", port, {"clients": [{"id": uuid, "alterId": alter_id}]}, tls=tls, network=network,
                   transport=transport or {})


def vless_inbound(port: int, uuid: str, *, tls: bool = False, network: str = "tcp",
                  transport: Mapping[str, Any] | None = None) -> Inbound:
    """vless with one user and no fallbacks (a wrong id is closed at once)."""
    return Inbound("vless", port, {"clients": [{"id": uuid}], "decryption": "none"}, tls=tls, network=network,
                   transport=transport or {})


def trojan_inbound(port: int, password: str, *, network: str = "tcp",
                   transport: Mapping[str, Any] | None = None) -> Inbound:
    """trojan (always TLS) with one password and no fallbacks."""
    return Inbound("trojan", port, {"clients": [{"password": password}]}, tls=True, network=network,
                   transport=transport or {})


def shadowsocks_inbound(port: int, method: str, password: str, network: str = "tcp,udp") -> Inbound:
    """shadowsocks with one method and password, TCP and UDP by default."""
    return Inbound("shadowsocks", port, {"method": method, "password": password, "network": network})


def socks_inbound(port: int, user: str = "", password: str = "", *, udp: bool = True) -> Inbound:
    """SOCKS5, with a user and password when given, UDP ASSOCIATE on by default."""
    settings: dict[str, Any] = {"auth": "password" if user else "noauth", "udp": udp}
    if user:
        settings["accounts"] = [{"user": user, "pass": password}]
    return Inbound("socks", port, settings)


def http_inbound(port: int, user: str = "", password: str = "") -> Inbound:
    """An HTTP proxy (CONNECT and plain requests), with basic auth when a user is given."""
    settings: dict[str, Any] = {"accounts": [{"user": user, "pass": password}]} if user else {}
    return Inbound("http", port, settings)


class V2ray(LabPeer):
    """v2ray with the given inbounds on both its addresses, everything sent out directly."""

    kind = "v2ray"
    binary = V2RAY
    error = V2rayError

    def __init__(self, lab: Lab, inbounds: Sequence[Inbound], ca: LabCA | None = None, *,
                 address4: str = ADDR.hosts4[0], address6: str = ADDR.hosts6[0], loglevel: str = "warning") -> None:
        if not inbounds:
            raise ValueError("v2ray needs at least one inbound")
        if loglevel not in ("debug", "info", "warning"):
            # Readiness is read from the "started" line, which v2ray logs as a warning.
            raise ValueError(f"loglevel {loglevel!r}: debug, info or warning")
        ports = [i.port for i in inbounds]
        if len(set(ports)) != len(ports):
            raise ValueError(f"inbound ports repeat: {ports}")
        super().__init__(lab, address4, address6, inbounds[0].port)
        self.inbounds = tuple(inbounds)
        self.ca = ca
        self._own_ca: LabCA | None = None
        self.loglevel = loglevel

    def config(self, directory: Path) -> dict[str, Any]:
        """v2ray's whole JSON config."""
        inbounds = []
        for inbound in self.inbounds:
            for family, address in (("4", self.address4), ("6", self.address6)):
                tag = f"{inbound.protocol}-{inbound.port}-{family}"
                inbounds.append(inbound.to_json(address, tag, self.ca))
        return {
            "log": {"loglevel": self.loglevel, "error": str(directory / "v2ray.log"),
                    "access": str(directory / "access.log")},
            "inbounds": inbounds,
            "outbounds": [{"protocol": "freedom", "tag": "direct", "settings": {"domainStrategy": "AsIs"}}],
        }

    def _write_config(self, directory: Path) -> list[str]:
        if self.ca is None and any(i.tls for i in self.inbounds):
            self.ca = self._own_ca = LabCA(TLS_NAME, (self.address4, self.address6))
        path = directory / "config.json"
        path.write_text(json.dumps(self.config(directory), indent=1))
        check = subprocess.run([V2RAY, "-test", "-config", str(path)], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise V2rayError(f"v2ray rejects its config {path}:\n{check.stdout}{check.stderr}")
        return [V2RAY, "-config", str(path)]

    def _answers(self, address: str) -> bool:
        # Our own log says it started (a leftover v2ray holding the ports would make this one exit),
        # and every inbound accepts connections on this address.
        if "started" not in self.log_path.read_text(errors="replace"):
            return False
        with netns(self.lab.wan):
            for inbound in self.inbounds:
                with socket.create_connection((address, inbound.port), timeout=0.5):
                    pass
        return True

    def log_text(self) -> str:
        """Everything v2ray logged so far (errors and warnings)."""
        try:
            return self.log_path.read_text(errors="replace")
        except (FileNotFoundError, LabError):
            return ""

    def stop(self, timeout: float = 5.0, keep_directory: bool = False) -> None:
        super().stop(timeout, keep_directory)
        if self._own_ca is not None and not keep_directory:
            self._own_ca.close()
            self.ca = self._own_ca = None

    def __enter__(self) -> V2ray:
        self.start()
        return self
