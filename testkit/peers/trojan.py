"""trojan-gfw (Debian's `trojan`, 1.16) as a proxy server on the lab's "internet".

    TrojanGfw(lab, ca, ["password"], address=ADDR.hosts4[0], port=10020)

trojan-gfw listens on one address per process (`local_addr`): run one peer
per address family. In server mode it must be told where to send what is
not trojan (a wrong password, a browser, a probe): `remote_addr` /
`remote_port`, here the wan's own HTTP server, so a client with the wrong
password sees that server's answer, as a prober would.

Its certificate comes from a `LabCA` (clients trust its `ca_file`).
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daetui.lab.dnspeers import LabCA
from daetui.lab.peer import LabPeer
from daetui.lab.topology import ADDR, HTTP_PORT, Lab, LabError
from daetui.net.netns import netns

TROJAN = "/usr/bin/trojan"


class TrojanGfwError(LabError):
    """trojan-gfw could not be configured or did not come up."""


class TrojanGfw(LabPeer):
    """trojan-gfw in server mode on one address, sending what is not trojan to an HTTP server."""

    kind = "trojan"
    binary = TROJAN
    error = TrojanGfwError
    transient = (OSError, ssl.SSLError)

    def __init__(self, lab: Lab, ca: LabCA, passwords: Sequence[str], *, address: str = ADDR.hosts4[0],
                 port: int = 10020, remote: tuple[str, int] = (ADDR.hosts4[0], HTTP_PORT)) -> None:
        if not passwords:
            raise ValueError("trojan-gfw needs at least one password")
        # One address: the base class waits for it as both "addresses".
        super().__init__(lab, address, address, port)
        self.address = address
        self.ca = ca
        self.passwords = tuple(passwords)
        self.remote = remote

    def config(self) -> dict[str, Any]:
        """trojan-gfw's server.json."""
        return {
            "run_type": "server",
            "local_addr": self.address,
            "local_port": self.port,
            "remote_addr": self.remote[0],
            "remote_port": self.remote[1],
            "password": list(self.passwords),
            "log_level": 1,  # INFO: connections and authentication failures, for test diagnostics
            "ssl": {
                "cert": str(self.ca.cert_file),
                "key": str(self.ca.key_file),
                "key_password": "",
                "prefer_server_cipher": True,
                "alpn": ["http/1.1"],
                "reuse_session": True,
                "session_ticket": False,
                "session_timeout": 600,
                "plain_http_response": "",
                "curves": "",
                "dhparam": "",
            },
            "tcp": {"prefer_ipv4": False, "no_delay": True, "keep_alive": True, "reuse_port": False,
                    "fast_open": False, "fast_open_qlen": 20},
            "mysql": {"enabled": False},
        }

    def _write_config(self, directory: Path) -> list[str]:
        path = directory / "server.json"
        path.write_text(json.dumps(self.config(), indent=1))
        return [TROJAN, "-c", str(path), "-l", str(self.log_path)]

    def _answers(self, address: str) -> bool:
        # Its log says the service started, and a TLS handshake there shows our certificate.
        if "started at" not in self.log_path.read_text(errors="replace"):
            return False
        ctx = ssl.create_default_context(cafile=str(self.ca.ca_file))
        ctx.check_hostname = False
        with netns(self.lab.wan):
            raw = socket.create_connection((address, self.port), timeout=0.5)
        with raw, ctx.wrap_socket(raw) as tls:
            cert = tls.getpeercert(binary_form=True)
        return cert is not None and ssl.DER_cert_to_PEM_cert(cert).strip() == \
            self.ca.cert_file.read_text().strip()

    def log_text(self) -> str:
        """Everything trojan-gfw logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except (FileNotFoundError, LabError):
            return ""

    def __enter__(self) -> TrojanGfw:
        self.start()
        return self
