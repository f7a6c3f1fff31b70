"""Real SOCKS5 and HTTP(S) proxies on the lab's "internet", in the wan namespace.

    Danted     dante-server's danted: SOCKS5 CONNECT and UDP ASSOCIATE, with no
               authentication or with username/password (`users`)
    Tinyproxy  tinyproxy: HTTP CONNECT, optionally with Basic auth
    V2rayHttps v2ray 4.34's `http` inbound behind TLS (`streamSettings.security:
               tls`) with a `freedom` outbound: an HTTPS proxy (CONNECT inside TLS),
               Basic auth from its `accounts`. tinyproxy has no TLS of its own.
    SshSocks   OpenSSH's dynamic forwarding (`ssh -D`): SOCKS4, SOCKS4a and SOCKS5, every
               connection a direct-tcpip channel of one session to an sshd on the wan
               namespace's loopback, which connects (and resolves names) for it. danted
               serves SOCKS4 but not SOCKS4a (it connects to 0.0.0.x); ssh -D is the
               SOCKS4a server most people have. Needs Debian's openssh-server.

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
import os
import secrets
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from daetui.lab.dnspeers import LabCA
from daetui.lab.peer import LabPeer
from daetui.lab.topology import ADDR, Lab, LabError
from daetui.net.netns import netns

DANTED = "/usr/sbin/danted"
SSH = "/usr/bin/ssh"
SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "/usr/bin/ssh-keygen"
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


class SshSocks(_ProxyPeer):
    """`ssh -D` on both proxy addresses at `port`, its session to an sshd on the wan's loopback at `sshd_port`.

    The sshd (host key, client key and config made here; root logs in by key only) is started
    first and ended by its pid after the client. sshd gets the private /etc of the other
    proxies, so it resolves `LAB_NAME` for SOCKS4a and nothing else.
    """

    kind = "ssh-socks"
    binary = SSH
    ready_line = "Entering interactive session"

    def __init__(self, lab: Lab, port: int, sshd_port: int) -> None:
        super().__init__(lab, port)
        self.sshd_port = sshd_port
        self.sshd: subprocess.Popen[bytes] | None = None

    def _keygen(self, path: Path) -> None:
        subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def _start_sshd(self, directory: Path) -> None:
        if not os.access(SSHD, os.X_OK):
            raise ProxyPeerError(f"{SSHD} not installed (Debian's openssh-server)")
        self._keygen(directory / "host_key")
        self._keygen(directory / "client_key")
        (directory / "authorized_keys").write_text((directory / "client_key.pub").read_text())
        conf = directory / "sshd_config"
        conf.write_text("\n".join([
            f"ListenAddress 127.0.0.1:{self.sshd_port}",
            f"HostKey {directory / 'host_key'}",
            f"AuthorizedKeysFile {directory / 'authorized_keys'}",
            f"PidFile {directory / 'sshd.pid'}",
            "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "UsePAM no", "StrictModes no", "AllowTcpForwarding yes", "PermitOpen any", "LogLevel VERBOSE", "",
        ]))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        # -D: in the foreground, our child; -e: its log to stderr (sshd.log).
        argv = with_private_etc(self._etc_files(directory), [SSHD, "-D", "-e", "-f", str(conf)])
        with open(directory / "sshd.log", "wb") as log:
            self.sshd = subprocess.Popen(["ip", "netns", "exec", self.lab.wan, *argv], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 5
        while f"Server listening on 127.0.0.1 port {self.sshd_port}" not in (directory / "sshd.log").read_text():
            if self.sshd.poll() is not None or time.monotonic() > deadline:
                raise ProxyPeerError(f"sshd did not start:\n{(directory / 'sshd.log').read_text()[-2000:]}")
            time.sleep(0.05)

    def _write_config(self, directory: Path) -> list[str]:
        self._start_sshd(directory)
        return [SSH, "-N", "-v", "-E", str(self.log_path), "-F", "/dev/null", "-i", str(directory / "client_key"),
                "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={directory / 'known_hosts'}",
                "-o", "ExitOnForwardFailure=yes", "-o", "BatchMode=yes",
                "-D", f"{self.address4}:{self.port}", "-D", f"[{self.address6}]:{self.port}",
                "-p", str(self.sshd_port), "root@127.0.0.1"]

    def stop(self, timeout: float = 5.0, keep_directory: bool = False) -> None:
        """The ssh client, then sshd, each by its pid."""
        sshd, self.sshd = self.sshd, None
        super().stop(timeout, keep_directory=True)
        if sshd is not None and sshd.poll() is None:
            sshd.terminate()
            try:
                sshd.wait(timeout)
            except subprocess.TimeoutExpired:
                sshd.kill()
                sshd.wait(timeout)
        if not keep_directory:
            super().stop(timeout, keep_directory=False)

    def __enter__(self) -> SshSocks:
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
