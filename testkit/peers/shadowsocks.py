"""A real shadowsocks server on the lab's "internet": Debian's ss-server (shadowsocks-libev 3.3).

    SsServer(lab, method, password, port)
        ADDR.hosts4[2] / ADDR.hosts6[2] (203.0.113.12, 2001:db8:3::12), TCP and UDP on `port`

One server speaks one cipher, so a test that covers several runs one per
cipher, each on a port of its own. Domain targets are resolved by ss-server's
own resolver (c-ares), which asks `nameserver` -- the lab has no other: give it
the lab's unbound (daetui.lab.dnspeers) to resolve the lab's zone.

Behaviours tests rely on (3.3.5): a connection it cannot decrypt is logged
("authentication error") and then held open and silent, never closed; a UDP
packet it cannot decrypt is logged ("suspicious UDP packet") and dropped;
a client's half-close ends both directions (answers in flight are lost); a
datagram much above 1400 bytes is dropped ("Message too long": no `--mtu`
here). Measured here, its aes-128-gcm costs about 4x the CPU of its
aes-256-gcm (which ss-libev takes from libsodium's AES-NI code, the other
ciphers from mbedTLS): throughput runs should use aes-256-gcm or
chacha20-ietf-poly1305, or they measure ss-server.
The log (stdout and stderr, `-v`) is `console.log` in the server's directory.

With `plugin` (a SIP003 server plugin, ss-server's `--plugin`/`--plugin-opts`: `obfs-server`
from simple-obfs, `ss-v2ray-plugin` from shadowsocks-v2ray-plugin) the plugin listens on
`port` at both addresses and ss-server's own TCP relay on a loopback port it picks; the UDP
relay stays on `port` (a plugin carries TCP only). The plugin is ss-server's child, ended
with it, and logs to the same console.log. `node()` then carries the client side of the
plugin (`client_plugin`, since a server's options, e.g. `server;cert=...`, are not a client's), and
`client_ca_file` is the CA a client of a TLS plugin trusts.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from daetui.lab.peer import LabPeer
from daetui.lab.topology import ADDR, Lab, LabError
from daetui.net.netns import netns
from daetui.outbound.shadowsocks import SsNode, method_of
from daetui.outbound.sip003 import Plugin

SS_SERVER = "/usr/bin/ss-server"
DEFAULT_PORT = 8388
OBFS_SERVER = "obfs-server"  # simple-obfs's server side, found on PATH by ss-server
V2RAY_PLUGIN = "ss-v2ray-plugin"  # Debian's name for v2ray-plugin
# What each plugin logs once it listens (before it, ss-server's own lines).
_PLUGIN_READY = {OBFS_SERVER: "[simple-obfs] INFO: listening at", V2RAY_PLUGIN: "V2Ray 4.34.0 started"}


class SsPeerError(LabError):
    """ss-server could not be configured or did not come up."""


class SsServer(LabPeer):
    """ss-server with TCP and (unless `udp` is False) UDP relays on ADDR.hosts4[2] and ADDR.hosts6[2], at `port`."""

    kind = "ss-server"
    binary = SS_SERVER
    error = SsPeerError

    def __init__(self, lab: Lab, method: str, password: str, port: int = DEFAULT_PORT, *,
                 nameserver: str | None = None, timeout: int = 60, verbose: bool = True, udp: bool = True,
                 plugin: str | None = None, plugin_opts: str = "", client_plugin: Plugin | None = None,
                 client_ca_file: str | None = None) -> None:
        super().__init__(lab, ADDR.hosts4[2], ADDR.hosts6[2], port)
        self.method = method_of(method).name  # refuses what the client side cannot speak either
        self.password = password
        self.nameserver = nameserver
        self.timeout = timeout
        self.verbose = verbose
        self.udp = udp  # False: no UDP relay (no -u), as many servers are run
        if plugin is not None and plugin not in _PLUGIN_READY:
            raise SsPeerError(f"plugin {plugin!r}: the lab knows {', '.join(_PLUGIN_READY)}")
        self.plugin = plugin
        self.plugin_opts = plugin_opts
        self.client_plugin = client_plugin
        self.client_ca_file = client_ca_file  # what a client trusts for the plugin's TLS (a LabCA's ca_file)

    def node(self, family: int = 4, name: str = "", plugin: Plugin | None = None) -> SsNode:
        """The node a client dials to reach this server over IPv4 or IPv6 (with `plugin`, else `client_plugin`)."""
        host = self.address4 if family == 4 else self.address6
        return SsNode(name or f"ss-{self.method}-v{family}", host, self.port, self.method, self.password,
                      plugin or self.client_plugin)

    def config(self) -> dict[str, object]:
        """ss-server's JSON config (the password stays out of the process list)."""
        return {
            "server": [self.address4, self.address6],
            "server_port": self.port,
            "password": self.password,
            "method": self.method,
            "timeout": self.timeout,
            # As ss-redir in the benchmark is run: small writes go out at once on both sides.
            "no_delay": True,
            "fast_open": False,
        } | ({"plugin": self.plugin, "plugin_opts": self.plugin_opts} if self.plugin else {})

    def _write_config(self, directory: Path) -> list[str]:
        conf = directory / "ss-server.json"
        conf.write_text(json.dumps(self.config(), indent=1))
        conf.chmod(0o600)
        # -u: the UDP relay too. No --reuse-port: a leftover server on the port makes
        # this one fail to bind and exit, rather than share the port unnoticed.
        argv = [SS_SERVER, "-c", str(conf)] + (["-u"] if self.udp else [])
        if self.nameserver:
            argv += ["-d", self.nameserver]
        if self.verbose:
            argv.append("-v")  # logs each target ("connect to host:port") and each failure
        return argv

    def log_text(self) -> str:
        """Everything ss-server has logged so far."""
        try:
            return self.console_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _answers(self, address: str) -> bool:
        # ss-server logs "... listening at ADDRESS:PORT" once bound and exits when a bind
        # fails, so both lines plus an accepted connection mean this very process serves there.
        text = self.log_text()
        where = f"{address}:{self.port}"  # (ss-server writes IPv6 addresses without brackets, but for ::1)
        if self.udp and f"udp server listening at {where}" not in text:
            return False
        if self.plugin is None:
            if f"tcp server listening at {where}" not in text:
                return False
        elif _PLUGIN_READY[self.plugin] not in text:
            return False
        with netns(self.lab.wan):
            sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.settimeout(0.5)
            sock.connect((address, self.port))
        return True

    def __enter__(self) -> SsServer:
        self.start()
        return self
