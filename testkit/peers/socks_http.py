"""Real SOCKS5 and HTTP(S) proxies on the lab's "internet", in the wan namespace.

    Danted     dante-server's danted: SOCKS5 CONNECT and UDP ASSOCIATE, with no
               authentication or with username/password (`users`)
    Tinyproxy  tinyproxy: HTTP CONNECT, optionally with Basic auth
    V2rayHttps v2ray 4.34's `http` inbound behind TLS (`streamSettings.security:
               tls`) with a `freedom` outbound: an HTTPS proxy (CONNECT inside TLS),
               Basic auth from its `accounts`. tinyproxy has no TLS of its own.

All listen on ADDR.hosts4[1] / ADDR.hosts6[1] at their own ports.

Each server runs with a few /etc files of its own, bind-mounted over the real
ones inside the private mount namespace `ip netns exec` makes for the process
(nothing on the host changes): `hosts` names the lab's web host
(`LAB_NAME`) so that destinations given by name resolve in the proxy,
`resolv.conf` points at the wan namespace's loopback so that any other name
fails at once instead of being asked of the host's resolver, and for danted
with `users`, `passwd` and `shadow` holding throwaway accounts: danted's
`socksmethod: username` checks the system password database (getpwnam +
crypt), so the accounts exist only in danted's view of /etc.

danted refuses every destination in `BLOCKED` ("connection not allowed by
ruleset"), so tests can see a real refusal.
"""

from __future__ import annotations

import ctypes
import json
import secrets
import shlex
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from daetui.lab.dnspeers import LabCA
from daetui.lab.peer import LabPeer
from daetui.lab.topology import ADDR, Lab, LabError
from daetui.net.netns import netns

DANTED = "/usr/sbin/danted"
TINYPROXY = "/usr/bin/tinyproxy"
V2RAY = "/usr/bin/v2ray"

PROXY4, PROXY6 = ADDR.hosts4[1], ADDR.hosts6[1]
SOCKS_PORT = 1080  # danted, no authentication
SOCKS_AUTH_PORT = 1081  # danted, username/password
HTTP_PORT = 8888  # tinyproxy
HTTPS_PORT = 8443  # v2ray, http inbound over TLS
TLS_NAME = "proxy.lab.test"  # in the HTTPS proxy's certificate besides its addresses

USER, PASSWORD = "alice", "lab-secret"  # the credentials the authenticating peers accept
LAB_NAME = "www.lab.test"  # resolves, in the proxies' /etc/hosts, to the first wan host
LAB_NAME_ADDRS = (ADDR.hosts4[0], ADDR.hosts6[0])
BLOCKED = (ADDR.hosts4[2], ADDR.hosts6[2])  # danted refuses these destinations

_UID = 64000  # throwaway accounts' ids, only in danted's private passwd


class ProxyPeerError(LabError):
    """A proxy peer could not be configured or did not come up."""


def sha512_crypt(password: str) -> str:
    """A `$6$` shadow hash, by the same libcrypt danted checks it with (Python 3.13 has no crypt module)."""
    try:
        libcrypt = ctypes.CDLL("libcrypt.so.1")
    except OSError as e:
        raise ProxyPeerError(f"libcrypt.so.1 (danted's own dependency) not found: {e}") from None
    libcrypt.crypt.restype = ctypes.c_char_p
    libcrypt.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    salt = "$6$" + secrets.token_hex(8) + "$"
    out = libcrypt.crypt(password.encode(), salt.encode())
    if not out or not out.startswith(b"$6$"):
        raise ProxyPeerError("libcrypt could not make a SHA-512 password hash")
    return str(out.decode())


def with_private_etc(files: Mapping[str, Path], argv: Sequence[str]) -> list[str]:
    """`argv` run with `files` (an /etc path -> our file) bind-mounted over the real ones.

    `ip netns exec` runs its command in a mount namespace of its own whose
    mounts do not propagate back (it makes / a slave), so the binds are seen
    by this one server only. The shell execs the server: its pid stays ours.
    """
    binds = [f"mount --bind {shlex.quote(str(src))} {shlex.quote(dst)}" for dst, src in files.items()]
    return ["sh", "-c", " && ".join([*binds, 'exec "$@"']), "sh", *argv]


class _ProxyPeer(LabPeer):
    """A proxy server of the lab: ready once its log says so and its port takes connections."""

    error = ProxyPeerError
    ready_line = ""

    def __init__(self, lab: Lab, port: int, users: Mapping[str, str] | None = None) -> None:
        super().__init__(lab, PROXY4, PROXY6, port)
        self.users = dict(users or {})

    def _answers(self, address: str) -> bool:
        # The line comes only once every listening socket is bound (each server exits when a
        # bind fails), so a connection accepted after it is this server's, not a leftover's.
        if self.ready_line not in self.log_path.read_text(errors="replace"):
            return False
        with netns(self.lab.wan), socket.create_connection((address, self.port), timeout=0.5):
            return True

    def _etc_files(self, directory: Path) -> dict[str, Path]:
        """hosts and resolv.conf of the server's own (see the module's doc)."""
        hosts = directory / "hosts"
        hosts.write_text("127.0.0.1 localhost\n::1 localhost\n"
                         + "".join(f"{a} {LAB_NAME}\n" for a in LAB_NAME_ADDRS))
        resolv = directory / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        return {"/etc/hosts": hosts, "/etc/resolv.conf": resolv}


class Danted(_ProxyPeer):
    """danted: SOCKS5 with no authentication, or username/password for `users` (throwaway accounts)."""

    kind = "danted"
    binary = DANTED
    ready_line = "running"

    def __init__(self, lab: Lab, port: int = SOCKS_PORT, users: Mapping[str, str] | None = None,
                 blocked: Sequence[str] = BLOCKED) -> None:
        super().__init__(lab, port, users)
        self.blocked = tuple(blocked)

    def config_text(self, directory: Path) -> str:
        """The whole danted.conf."""
        lines = [
            f"logoutput: {directory / 'danted.log'}",
            f"internal: {self.address4} port = {self.port}",
            f"internal: {self.address6} port = {self.port}",
            # Both families out: an IPv6 destination leaves from the IPv6 address.
            f"external: {self.address4}",
            f"external: {self.address6}",
            f"socksmethod: {'username' if self.users else 'none'}",
            "clientmethod: none",
            # root checks passwords against shadow; the rest runs as nobody.
            "user.privileged: root",
            "user.unprivileged: nobody",
            "timeout.negotiate: 10",
            "client pass {",
            "  from: 0/0 to: 0/0",
            "}",
        ]
        for addr in self.blocked:
            prefix = 128 if ":" in addr else 32
            lines += ["socks block {", f"  from: 0/0 to: {addr}/{prefix}", "  log: error", "}"]
        lines += [
            "socks pass {",
            "  from: 0/0 to: 0/0",
            "  command: connect udpassociate udpreply",
            "  log: error",
            "}",
            "",
        ]
        return "\n".join(lines)

    def _write_config(self, directory: Path) -> list[str]:
        conf = directory / "danted.conf"
        conf.write_text(self.config_text(directory))
        files = self._etc_files(directory)
        if self.users:
            passwd, shadow = directory / "passwd", directory / "shadow"
            passwd.write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
                              + "".join(f"{u}:x:{_UID + i}:{_UID + i}::/nonexistent:/bin/false\n"
                                        for i, u in enumerate(self.users)))
            shadow.write_text("root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n"
                              + "".join(f"{u}:{sha512_crypt(p)}:19000:0:99999:7:::\n" for u, p in self.users.items()))
            shadow.chmod(0o600)
            files |= {"/etc/passwd": passwd, "/etc/shadow": shadow}
        # -N 1: one mother process (children for negotiation, requests and I/O come from it).
        return with_private_etc(files, [DANTED, "-f", str(conf), "-N", "1"])

    def __enter__(self) -> Danted:
        self.start()
        return self


class Tinyproxy(_ProxyPeer):
    """tinyproxy: HTTP CONNECT to any port, with Basic auth when `users` are given."""

    kind = "tinyproxy"
    binary = TINYPROXY
    ready_line = "Accepting connections"

    def __init__(self, lab: Lab, port: int = HTTP_PORT, users: Mapping[str, str] | None = None) -> None:
        super().__init__(lab, port, users)

    def config_text(self, directory: Path) -> str:
        """The whole tinyproxy.conf."""
        lines = [
            f"Port {self.port}",
            f"Listen {self.address4}",
            f"Listen {self.address6}",
            "Timeout 600",
            f'LogFile "{directory / "tinyproxy.log"}"',
            "LogLevel Info",
            f'PidFile "{directory / "tinyproxy.pid"}"',
            "MaxClients 256",
            "DisableViaHeader Yes",
            # No Allow and no ConnectPort lines: every client, CONNECT to every port.
        ]
        lines += [f"BasicAuth {u} {p}" for u, p in self.users.items()]
        return "\n".join(lines) + "\n"

    def _write_config(self, directory: Path) -> list[str]:
        if any(c.isspace() for up in self.users.items() for c in "".join(up)):
            raise ProxyPeerError("tinyproxy's BasicAuth takes no spaces in users or passwords")
        conf = directory / "tinyproxy.conf"
        conf.write_text(self.config_text(directory))
        # -d: in the foreground, as our child.
        return with_private_etc(self._etc_files(directory), [TINYPROXY, "-d", "-c", str(conf)])

    def __enter__(self) -> Tinyproxy:
        self.start()
        return self


class V2rayHttps(_ProxyPeer):
    """An HTTPS proxy: v2ray's `http` inbound with TLS (certificate from `ca`), Basic auth for `users`."""

    kind = "v2ray"
    binary = V2RAY
    ready_line = "started"

    def __init__(self, lab: Lab, ca: LabCA, port: int = HTTPS_PORT, users: Mapping[str, str] | None = None) -> None:
        super().__init__(lab, port, users)
        self.ca = ca

    def config(self, directory: Path) -> dict[str, object]:
        """The v2ray JSON config."""
        tls = {"security": "tls", "tlsSettings": {"certificates": [
            {"certificateFile": str(self.ca.cert_file), "keyFile": str(self.ca.key_file)}]}}
        settings = {"accounts": [{"user": u, "pass": p} for u, p in self.users.items()], "allowTransparent": False}
        return {
            "log": {"loglevel": "warning", "access": str(directory / "access.log"),
                    "error": str(directory / "v2ray.log")},
            "inbounds": [{"listen": addr, "port": self.port, "protocol": "http", "settings": settings,
                          "streamSettings": tls} for addr in (self.address4, self.address6)],
            "outbounds": [{"protocol": "freedom", "settings": {"domainStrategy": "AsIs"}}],
        }

    def _write_config(self, directory: Path) -> list[str]:
        conf = directory / "v2ray.json"
        conf.write_text(json.dumps(self.config(directory), indent=1))
        return with_private_etc(self._etc_files(directory), [V2RAY, "-config", str(conf)])

    def __enter__(self) -> V2rayHttps:
        self.start()
        return self


@dataclass
class ProxyPeers:
    """The SOCKS5 and HTTP(S) proxies of the lab and the CA the HTTPS one's certificate comes from."""

    socks: Danted  # no authentication
    socks_auth: Danted  # USER / PASSWORD
    http: Tinyproxy  # Basic auth USER / PASSWORD
    https: V2rayHttps  # Basic auth USER / PASSWORD, TLS_NAME and both addresses in its certificate
    ca: LabCA


@contextmanager
def proxy_peers(lab: Lab) -> Iterator[ProxyPeers]:
    """danted (twice), tinyproxy and v2ray's HTTPS proxy in `lab`; all ended by pid on the way out."""
    users = {USER: PASSWORD}
    with ExitStack() as stack:
        ca = stack.enter_context(LabCA(TLS_NAME, (PROXY4, PROXY6)))
        peers: list[_ProxyPeer] = [Danted(lab, SOCKS_PORT), Danted(lab, SOCKS_AUTH_PORT, users),
                                   Tinyproxy(lab, HTTP_PORT, users), V2rayHttps(lab, ca, HTTPS_PORT, users)]
        for peer in peers:
            stack.callback(peer.stop)
            peer.start()
        socks, socks_auth, http, https = peers
        assert isinstance(socks, Danted) and isinstance(socks_auth, Danted)
        assert isinstance(http, Tinyproxy) and isinstance(https, V2rayHttps)
        yield ProxyPeers(socks, socks_auth, http, https, ca)
