"""A DNS-over-QUIC (RFC 9250) and DNS-over-HTTP/3 (RFC 8484 over HTTP/3) server for tests and the lab.

    QuicDnsServer   in this process (unit tests on loopback): answers from its
                    own records, or forwards to a plain DNS server
    QuicDnsPeer     the same server as a process in the lab's wan namespace,
                    forwarding to the lab's unbound or dnsmasq:
                    ADDR.dns4[1] / ADDR.dns6[1] (beside dnsmasq, which has only port 53 there;
                    unbound holds UDP 853 and 443 on its own), DoQ on UDP 853, DoH3 on UDP 443

No packaged server speaks DoQ or DoH3 on this machine: Debian 12's dnsdist
is 1.7 (DoQ and DoH3 came in 1.9), unbound 1.17 (DoQ from 1.22, no DoH3),
knot-resolver 5.6 and knot 3.2 (QUIC from knot 3.3); PyPI and npm offer DoQ
clients only. So this one is built on aioquic's *server* side (`serve`,
a server-mode QuicConnection, H3Connection answering requests), which shares
no code with the client daetui speaks through but aioquic's packet layer;
the unit tests also ask it with dnspython's own DoQ and DoH3 clients, so the
server is checked by a client that is not daetui's.

`misbehave` makes it break the rules on purpose, for the tests of what daetui
does with a broken answer: "length" (DoQ: a length prefix that does not
match), "garbage" (bytes that are no DNS message, framed correctly), "status"
(DoH3: HTTP 500), "type" (DoH3: content-type text/plain), "silent" (takes
queries and never answers).

Run as a program (`python -m testkit.peers.quic_dns`) it serves until SIGTERM
and writes "ready" to its log once every socket is bound; each handshake and
query is a line there.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import signal
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import dns.asyncquery
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.asyncio.server import QuicServer
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import HandshakeCompleted, QuicEvent, StreamDataReceived

from daetui.lab.dnspeers import DnsPeer, LabCA
from daetui.lab.topology import ADDR, Lab

DOQ_PORT = 853
H3_PORT = 443
DOH_PATH = "/dns-query"
MISBEHAVIOURS = ("", "length", "garbage", "status", "type", "silent")
MAX_MESSAGE = 65535

log = logging.getLogger("quic_dns")


@dataclass
class ServerFigures:
    """What the server has seen: for tests that a connection is kept, or that no query came."""

    handshakes: int = 0
    queries: int = 0
    active: int = 0                                   # queries being answered now
    peak: int = 0                                     # ... at most, so far
    names: list[str] = field(default_factory=list)   # the names asked, in order (the last 100)


class QuicDnsServer:
    """DoQ and DoH3 on the given addresses; answers from `records` or from the server at `forward`.

    `records`: (name, type text, value, ttl) tuples answered with AA set; any
    other name is NXDOMAIN. `forward`: (ip, port) of a plain DNS server, asked
    over UDP (TCP when the answer is truncated) with the client's question.
    """

    def __init__(self, cert_file: str, key_file: str, addresses: Sequence[str], *, doq_port: int = DOQ_PORT,
                 h3_port: int | None = H3_PORT, path: str = DOH_PATH,
                 records: Sequence[tuple[str, str, str, int]] = (), forward: tuple[str, int] | None = None,
                 misbehave: str = "", idle_timeout: float = 60.0) -> None:
        if misbehave not in MISBEHAVIOURS:
            raise ValueError(f"misbehave: one of {MISBEHAVIOURS}")
        self.cert_file, self.key_file = cert_file, key_file
        self.addresses = tuple(addresses)
        self.doq_port, self.h3_port, self.path = doq_port, h3_port, path
        self.records = tuple(records)
        self.forward = forward
        self.misbehave = misbehave
        self.idle_timeout = idle_timeout
        self.answer_delay = 0.0    # seconds each answer takes: lets queries pile up on a connection
        self.figures = ServerFigures()
        self._servers: list[QuicServer] = []
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind every address and port (OSError when one is taken)."""
        try:
            for addr in self.addresses:
                self._servers.append(await serve(addr, self.doq_port, configuration=self._config(["doq"]),
                                                 create_protocol=self._protocol(h3=False)))
                if self.h3_port is not None:
                    self._servers.append(await serve(addr, self.h3_port, configuration=self._config(H3_ALPN),
                                                     create_protocol=self._protocol(h3=True)))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for s in self._servers:
            s.close()
        self._servers.clear()
        for t in self._tasks:
            t.cancel()

    async def __aenter__(self) -> QuicDnsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def _config(self, alpn: list[str]) -> QuicConfiguration:
        cfg = QuicConfiguration(is_client=False, alpn_protocols=alpn, idle_timeout=self.idle_timeout)
        cfg.load_cert_chain(self.cert_file, self.key_file)
        return cfg

    def _protocol(self, h3: bool) -> Callable[..., QuicConnectionProtocol]:
        server = self

        def make(*args: object, **kw: object) -> QuicConnectionProtocol:
            return _Connection(*args, server=server, h3=h3, **kw)
        return make

    def spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- answers ------------------------------------------------------------------------------
    async def answer(self, wire: bytes) -> bytes | None:
        """The answer to a query (its own ID kept), as the misbehaviour wants it; None: no answer at all."""
        f = self.figures
        f.active += 1
        f.peak = max(f.peak, f.active)
        try:
            if self.answer_delay:
                await asyncio.sleep(self.answer_delay)
            return await self._answer(wire)
        finally:
            f.active -= 1

    async def _answer(self, wire: bytes) -> bytes | None:
        query = dns.message.from_wire(wire)
        name = query.question[0].name.to_text() if query.question else "?"
        self.figures.queries += 1
        self.figures.names = [*self.figures.names[-99:], name]
        log.info("query %s %s", name, dns.rdatatype.to_text(query.question[0].rdtype) if query.question else "?")
        if self.misbehave == "silent":
            return None
        if self.misbehave == "garbage":
            return b"\x00\x00not a DNS message"
        if self.forward is not None:
            ip, port = self.forward
            fwd = dns.message.make_query(query.question[0].name, query.question[0].rdtype, use_edns=0)
            got, _ = await dns.asyncquery.udp_with_fallback(fwd, ip, port=port, timeout=2.0)
            got.id = query.id
            return got.to_wire()
        resp = dns.message.make_response(query)
        q = query.question[0]
        matches = [r for r in self.records if dns.name.from_text(r[0]) == q.name]
        if not matches:
            resp.set_rcode(dns.rcode.NXDOMAIN)
        for _, rtype, value, ttl in matches:
            if dns.rdatatype.from_text(rtype) == q.rdtype:
                resp.answer.append(dns.rrset.from_text(q.name, ttl, "IN", rtype, value))
        return resp.to_wire()


class _Connection(QuicConnectionProtocol):
    """One client's connection: DoQ streams, or HTTP/3 requests."""

    def __init__(self, *args: object, server: QuicDnsServer, h3: bool, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.server = server
        self.h3 = H3Connection(self._quic) if h3 else None
        self.streams: dict[int, bytearray] = {}
        self.requests: dict[int, dict[bytes, bytes]] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self.server.figures.handshakes += 1
            log.info("handshake (%s)", event.alpn_protocol)
        if self.h3 is not None:
            for e in self.h3.handle_event(event):
                self._h3_event(e)
        elif isinstance(event, StreamDataReceived):
            buf = self.streams.setdefault(event.stream_id, bytearray())
            buf += event.data
            if len(buf) > 2 + MAX_MESSAGE:
                self._quic.reset_stream(event.stream_id, 0x2)
                self.streams.pop(event.stream_id)
            elif event.end_stream:
                self.server.spawn(self._doq(event.stream_id, bytes(self.streams.pop(event.stream_id))))

    async def _doq(self, sid: int, body: bytes) -> None:
        if len(body) < 2 or struct.unpack_from("!H", body)[0] != len(body) - 2:
            self._quic.close(error_code=0x2, reason_phrase="bad length prefix")  # DOQ_PROTOCOL_ERROR
            self.transmit()
            return
        if body[2:4] != b"\x00\x00":  # RFC 9250 4.2.1: the ID must be 0
            self._quic.close(error_code=0x2, reason_phrase="message ID not 0")
            self.transmit()
            return
        try:
            out = await self.server.answer(body[2:])
        except Exception as e:
            log.info("no answer: %r", e, exc_info=True)
            self._quic.reset_stream(sid, 0x1)  # DOQ_INTERNAL_ERROR
            self.transmit()
            return
        if out is None:
            return
        prefix = len(out) + (5 if self.server.misbehave == "length" else 0)
        self._quic.send_stream_data(sid, struct.pack("!H", prefix) + out, end_stream=True)
        self.transmit()

    def _h3_event(self, e: H3Event) -> None:
        if isinstance(e, HeadersReceived):
            self.requests[e.stream_id] = dict(e.headers)
            self.streams[e.stream_id] = bytearray()
        elif isinstance(e, DataReceived) and e.stream_id in self.streams:
            self.streams[e.stream_id] += e.data
        else:
            return
        if e.stream_ended and e.stream_id in self.requests:
            headers = self.requests.pop(e.stream_id)
            body = bytes(self.streams.pop(e.stream_id))
            self.server.spawn(self._doh3(e.stream_id, headers, body))

    async def _doh3(self, sid: int, headers: dict[bytes, bytes], body: bytes) -> None:
        assert self.h3 is not None
        method = headers.get(b":method", b"")
        target = urlsplit(headers.get(b":path", b"").decode("latin-1"))
        status, wire = 200, b""
        if target.path != self.server.path:
            status = 404
        elif method == b"GET":
            dns_param = parse_qs(target.query).get("dns", [""])[0]
            try:
                wire = base64.urlsafe_b64decode(dns_param + "=" * (-len(dns_param) % 4))
            except ValueError:
                status = 400
        elif method == b"POST":
            wire = body
        else:
            status = 405
        out: bytes | None = b""
        if status == 200:
            try:
                out = await self.server.answer(wire)
            except Exception as e:
                log.info("no answer: %r", e, exc_info=True)
                status = 502
        if out is None:
            return  # silent
        ctype = b"application/dns-message"
        if self.server.misbehave == "status" and status == 200:
            status, out = 500, b""
        elif self.server.misbehave == "type":
            ctype = b"text/plain"
        self.h3.send_headers(sid, [(b":status", str(status).encode()), (b"content-type", ctype),
                                   (b"content-length", str(len(out)).encode())])
        self.h3.send_data(sid, out, end_stream=True)
        self.transmit()


# -- the lab peer --------------------------------------------------------------------------------

class QuicDnsPeer(DnsPeer):
    """The server as a process in the lab's wan namespace, forwarding to a plain DNS server of the lab.

    `ca`: the LabCA whose server certificate it shows (clients trust its ca_file, or, for a test of a
    refused certificate, do not). `forward`: "ip:port" of the server it asks (the lab's unbound).
    """

    kind = "quic_dns"
    binary = sys.executable

    def __init__(self, lab: Lab, ca: LabCA, forward: str, *, address4: str | None = None,
                 address6: str | None = None, doq_port: int = DOQ_PORT, h3_port: int = H3_PORT,
                 misbehave: str = "") -> None:
        super().__init__(lab, address4 or ADDR.dns4[1], address6 or ADDR.dns6[1], doq_port)
        self.ca = ca
        self.forward = forward
        self.h3_port = h3_port
        self.misbehave = misbehave

    def _write_config(self, directory: Path) -> list[str]:
        root = Path(__file__).resolve().parents[2]  # the repository: testkit is imported from there
        # `env` execs python in place, so the pid stays the server's.
        return ["env", f"PYTHONPATH={root}", sys.executable, "-m", "testkit.peers.quic_dns",
                "--cert", str(self.ca.cert_file), "--key", str(self.ca.key_file),
                "--listen", self.address4, "--listen", self.address6,
                "--doq-port", str(self.port), "--h3-port", str(self.h3_port),
                "--forward", self.forward, "--misbehave", self.misbehave,
                "--log", str(directory / f"{self.kind}.log")]

    def _answers(self, address: str) -> bool:
        # It binds every socket before it writes "ready" (and exits if one is taken): no other
        # server can be answering in its place once the line is there.
        return self.log_path.exists() and "ready" in self.log_path.read_text(errors="replace")

    def __enter__(self) -> QuicDnsPeer:
        self.start()
        return self


# -- as a program ---------------------------------------------------------------------------------

def _address_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


async def _run(args: argparse.Namespace) -> None:
    server = QuicDnsServer(args.cert, args.key, args.listen, doq_port=args.doq_port, h3_port=args.h3_port,
                           forward=_address_port(args.forward), misbehave=args.misbehave)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("ready: DoQ on %s port %d, DoH3 port %d, forwarding to %s", ", ".join(args.listen),
             args.doq_port, args.h3_port, args.forward)
    await stop.wait()
    server.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until SIGTERM."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--listen", action="append", required=True)
    p.add_argument("--doq-port", type=int, default=DOQ_PORT)
    p.add_argument("--h3-port", type=int, default=H3_PORT)
    p.add_argument("--forward", required=True, help="ip:port of a plain DNS server")
    p.add_argument("--misbehave", default="", choices=MISBEHAVIOURS)
    p.add_argument("--log", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(filename=args.log, level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.pop("SSLKEYLOGFILE", None)
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
