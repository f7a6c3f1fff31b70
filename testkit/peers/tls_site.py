"""A TLS 1.3 web site on the lab's "internet", for a REALITY server to pose as (its `dest`).

    with TlsSite(lab, ca, port=10543) as site:   # ADDR.hosts4[2] / hosts6[2]
        ... reality-config: {"dest": f"{ADDR.hosts4[2]}:10543", ...}

A REALITY server relays every client it does not recognise to its dest, and
copies the shape of the dest's handshake for the ones it does, so the dest
must be a real TLS 1.3 server. This one is Python's ssl (OpenSSL) with the
LabCA's certificate, answering any request with a small HTTP page: run as a
script in the wan namespace (with daetui, which the venv has, on its path).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
from pathlib import Path

from daetui.lab.dnspeers import LabCA
from daetui.lab.peer import LabPeer
from daetui.lab.topology import ADDR, Lab, LabError
from daetui.net.netns import netns

PAGE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 15\r\nConnection: close\r\n\r\nthe lab's site\n"


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.write(PAGE)
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def _serve(cert: str, key: str, port: int, addresses: list[str]) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3  # REALITY takes only a TLS 1.3 dest
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    servers = [await asyncio.start_server(_handle, a, port, ssl=ctx, ssl_handshake_timeout=10) for a in addresses]
    print(f"tls site listening on {addresses} port {port}", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


class TlsSiteError(LabError):
    """The site did not come up."""


class TlsSite(LabPeer):
    """A TLS 1.3 site (the LabCA's certificate) on both its addresses."""

    kind = "tlssite"
    error = TlsSiteError
    binary = sys.executable

    def __init__(self, lab: Lab, ca: LabCA, *, port: int, address4: str = ADDR.hosts4[2],
                 address6: str = ADDR.hosts6[2]) -> None:
        super().__init__(lab, address4, address6, port)
        self.ca = ca

    def _write_config(self, directory: Path) -> list[str]:
        # -P: not this directory first on the path, where peer modules could hide real ones.
        return [sys.executable, "-P", str(Path(__file__).resolve()), str(self.ca.cert_file), str(self.ca.key_file),
                str(self.port), self.address4, self.address6]

    @property
    def log_path(self) -> Path:
        return self.console_path

    def _answers(self, address: str) -> bool:
        with netns(self.lab.wan), socket.create_connection((address, self.port), timeout=0.5):
            return True

    def __enter__(self) -> TlsSite:
        self.start()
        return self


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]))
