"""DNS upstreams: where the controller asks, over UDP, TCP, TLS (DoT), HTTPS (DoH), QUIC (DoQ) or HTTP/3.

    udp://host:port       UDP; a truncated answer is asked again over TCP
    tcp://host:port       TCP (connections kept and reused)
    tcp+udp://host:port   the client's own transport: UDP for UDP queries, TCP for TCP
    tls://host:port       DNS over TLS, port 853 by default
    https://host:port/path  DNS over HTTPS (RFC 8484, POST), HTTP/2 when the server offers it
    quic://host:port      DNS over QUIC (RFC 9250), port 853 by default (daetui.dns.quic)
    h3://host:port/path   DNS over HTTPS over HTTP/3 (dae's name; also http3://), port 443 by default

A host that is a name is resolved once, by the bootstrap resolver
(`global.fallback_resolver`). Every connection to an upstream is routed by
the routing rules like any of the router's flows (`route`), and carries
daetui's SO_MARK. Routed to a proxy group, the query goes through the
group's node (`dial`): UDP by the node's datagrams (over TCP when the node
has no UDP, or its UDP goes unanswered), TCP and TLS by a stream through the
node per query; DNS over HTTPS, QUIC and HTTP/3 are not carried by nodes:
they are dialled directly, and their route says so. Each query gets its own
ID (DoH, DoQ, DoH3: ID 0, as their RFCs want); an answer whose ID or
question does not match is not the answer (counted, ignored), and one that
breaks its transport's framing is malformed (counted, dropped). Plain UDP
queries go out on a few kept sockets whose source ports keep changing
(`daetui.dns.udp`), not on a socket each.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import secrets
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from daetui.config.dns_upstream import UpstreamSpec
from daetui.dns.state import LATENCY_BUCKETS
from daetui.dns.udp import UdpPool
from daetui.dns.wire import CLASS_IN, FLAG_TC, answers_question, query_wire
from daetui.net.buffered import Buffered
from daetui.net.stream import Dialer, DialError
from daetui.net.tls import server_name, start_tls

IDLE_REUSE = 10.0   # a kept TCP/TLS connection idle longer than this is not reused
NO_UDP_FOR = 600.0  # a node whose UDP went unanswered is asked over TCP this long
DOH_DIRECT = " (DoH: dialled direct, not through a node)"
DIRECT_ONLY = {"https": "DNS over HTTPS", "quic": "DNS over QUIC", "h3": "DNS over HTTP/3"}
QUIC_SCHEMES = ("quic", "h3")

log = logging.getLogger("daetui.dns")


class UpstreamError(Exception):
    """A query that got no usable answer from this upstream."""


class MalformedAnswer(UpstreamError):
    """An answer that breaks its transport's framing (DoQ length, HTTP/3 status or type): dropped, counted."""


@dataclass(frozen=True)
class UpstreamRoute:
    """How the routing rules send the connection to an upstream."""

    outbound: str
    rule: str            # the rule's text, or "fallback"
    blocked: bool = False

    def __str__(self) -> str:
        # A rule's own text ends in its outbound already ("rule #1 dip(...) -> proxy").
        return self.rule if self.rule.endswith(f"-> {self.outbound}") else f"{self.rule} -> {self.outbound}"


RouteFn = Callable[[str, int, str], UpstreamRoute]          # (ip, port, "tcp"|"udp")
# (outbound, IP family) -> the proxy group's dialer and node now; None when the outbound is not a group.
DialFn = Callable[[str, int], "tuple[Dialer, str] | None"]
Bootstrap = Callable[[str], Awaitable[str]]                  # hostname -> address


@dataclass
class LatencyHistogram:
    """How long answers took, counted per LATENCY_BUCKETS bound: constant room, unlike a list of every answer."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0           # seconds, all answers together

    def observe(self, seconds: float) -> None:
        # bisect_left: an answer exactly at a bound counts under it (Prometheus' `le`, "less or equal").
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds


@dataclass
class UpstreamStats:
    """What the console shows of an upstream."""

    queries: int = 0
    errors: int = 0
    timeouts: int = 0
    mismatched: int = 0          # answers with the wrong ID or question
    malformed: int = 0           # answers that broke their transport's framing (DoQ, DoH3)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=32))  # seconds
    histogram: LatencyHistogram = field(default_factory=LatencyHistogram)  # every answer's, since start
    last_error: str = ""
    address: str = ""
    route: str = ""


def make_query(question: bytes) -> tuple[int, bytes]:
    """Our own query for a question: a fresh ID, RD, and an EDNS record of our size."""
    qid = secrets.randbits(16)
    return qid, query_wire(qid, question)


def _ssl_context(ca_file: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file or None)


def _mark(sock: socket.socket, mark: int) -> None:
    if mark:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)


class _Stream:
    """A kept TCP or TLS connection to an upstream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.last = time.monotonic()

    async def exchange(self, wire: bytes) -> bytes:
        self.writer.write(struct.pack("!H", len(wire)) + wire)
        await self.writer.drain()
        n = struct.unpack("!H", await self.reader.readexactly(2))[0]
        data = await self.reader.readexactly(n)
        self.last = time.monotonic()
        return data

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Upstream:
    """One configured upstream: its transport, its connections and its figures."""

    def __init__(self, spec: UpstreamSpec, route: RouteFn, mark: int = 0, ca_file: str = "",
                 bootstrap: Bootstrap | None = None, timeout: float = 2.0, dial: DialFn | None = None) -> None:
        self.spec = spec
        self.route = route
        self.dial = dial
        self.mark = mark
        self.timeout = timeout
        self.bootstrap = bootstrap
        self.ca_file = ca_file
        self.stats = UpstreamStats()
        self._ssl = _ssl_context(ca_file) if spec.scheme in ("tls", "https") else None
        self._idle: list[_Stream] = []
        self._address: str | None = spec.host if spec.host_is_address else None
        self._no_udp: dict[str, float] = {}  # node -> until when it is asked over TCP (its UDP went unanswered)
        self._http = None
        self._quic = None  # daetui.dns.quic.QuicChannel, made on the first DoQ/DoH3 query
        self._udp_pool: UdpPool | None = None  # made on the first plain UDP query

    @property
    def name(self) -> str:
        return self.spec.name

    async def address(self) -> str:
        """The upstream's IP address, asking the bootstrap resolver once for a name."""
        if self._address is None:
            if self.bootstrap is None:
                raise UpstreamError(f"{self.spec.host}: no bootstrap resolver to resolve it")
            try:
                self._address = await self.bootstrap(self.spec.host)
            except Exception as e:
                raise UpstreamError(f"bootstrap: {self.spec.host}: {e}") from None
        self.stats.address = self._address
        return self._address

    async def query(self, question: bytes, tcp: bool = False, deadline: float | None = None) -> bytes:
        """The upstream's answer (wire) to `question` (name, type, class as bytes).

        `deadline` (the loop's time): the caller's own limit. Reached before this upstream's
        timeout, it raises TimeoutError, and the upstream is not blamed. (One timer serves both:
        each costs a few microseconds of a cache miss.)
        """
        st = self.stats
        st.queries += 1
        t0 = time.monotonic()
        own = asyncio.get_running_loop().time() + self.timeout
        limit = asyncio.timeout_at(own if deadline is None or deadline >= own else deadline)
        try:
            async with limit:
                data = await self._query(question, tcp)
        except TimeoutError:
            if deadline is not None and deadline < own and limit.expired():
                raise  # the caller's time is up, not this upstream's
            st.errors += 1
            st.timeouts += 1
            self._failed(f"no answer in {self.timeout:g}s")
            raise UpstreamError(f"{self.name}: no answer in {self.timeout:g}s") from None
        except UpstreamError as e:
            st.errors += 1
            st.malformed += isinstance(e, MalformedAnswer)
            self._failed(str(e))
            raise
        except Exception as e:  # sockets, TLS, httpx, a cut stream: the upstream's failure, not ours
            st.errors += 1
            text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            self._failed(text)
            raise UpstreamError(f"{self.name}: {text}") from None
        took = time.monotonic() - t0
        st.latencies.append(took)
        st.histogram.observe(took)
        return data

    def _failed(self, text: str) -> None:
        self.stats.last_error = text

    async def _query(self, question: bytes, tcp: bool) -> bytes:
        ip = await self.address()
        scheme = self.spec.scheme
        over_tcp = scheme in ("tcp", "tls", "https") or (scheme == "tcp+udp" and tcp)  # quic, h3: UDP
        r = self.route(ip, self.spec.port, "tcp" if over_tcp else "udp")
        if r.blocked:
            self.stats.route = str(r)
            raise UpstreamError(f"{self.name}: blocked by {r.rule}")
        via = self.dial(r.outbound, 6 if ":" in ip else 4) if self.dial is not None else None
        if via is not None and scheme in DIRECT_ONLY:
            # Not through a node (yet): dialled directly, as before groups carried DNS, and said so.
            direct = DOH_DIRECT if scheme == "https" else f" ({scheme}: dialled direct, not through a node)"
            if not self.stats.route.endswith(direct):
                log.warning("DNS upstream %s is routed to %s, but %s is not carried through "
                            "proxy nodes: it is dialled directly", self.name, r.outbound, DIRECT_ONLY[scheme])
            self.stats.route = f"{r}{direct}"
            if scheme in QUIC_SCHEMES:
                return await self._over_quic(ip, question)
            return await self._https(ip, question)
        self.stats.route = f"{r} via {via[1]}" if via is not None else str(r)
        if via is not None:
            return await self._through(via[0], via[1], ip, question, over_tcp)
        if scheme == "https":
            return await self._https(ip, question)
        if scheme in QUIC_SCHEMES:
            return await self._over_quic(ip, question)
        if over_tcp:
            return await self._stream(ip, question)
        data = await self._udp(ip, question)
        if struct.unpack_from("!H", data, 2)[0] & FLAG_TC:
            # Too big for UDP: the same server over TCP (as a stub resolver does).
            r = self.route(ip, self.spec.port, "tcp")
            if r.blocked:
                return data
            return await self._stream(ip, question)
        return data

    async def _udp(self, ip: str, question: bytes) -> bytes:
        pool = self._udp_pool
        if pool is None or pool.ip != ip:
            if pool is not None:
                pool.close()
            pool = self._udp_pool = UdpPool(ip, self.spec.port, self.mark, self._stray)
        pool.mark = self.mark  # a reload may change it: new sockets take it
        return await pool.exchange(question)

    def _stray(self) -> None:
        self.stats.mismatched += 1  # a stray or forged answer: ignored, ours is still awaited

    async def _open_stream(self, ip: str) -> _Stream:
        sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
        try:
            _mark(sock, self.mark)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (ip, self.spec.port))
        except BaseException:
            sock.close()
            raise
        if self._ssl is not None:
            reader, writer = await asyncio.open_connection(sock=sock, ssl=self._ssl,
                                                           server_hostname=self.spec.host)
        else:
            reader, writer = await asyncio.open_connection(sock=sock)
        return _Stream(reader, writer)

    async def _stream(self, ip: str, question: bytes) -> bytes:
        qid, wire = make_query(question)
        now = time.monotonic()
        while self._idle:
            s = self._idle.pop()
            if now - s.last < IDLE_REUSE:
                try:
                    data = await s.exchange(wire)
                except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
                    s.close()  # the server closed it while idle: open a new one
                    continue
                return self._keep(s, data, qid, question)
            s.close()
        s = await self._open_stream(ip)
        try:
            data = await s.exchange(wire)
        except BaseException:
            s.close()
            raise
        return self._keep(s, data, qid, question)

    def _keep(self, s: _Stream, data: bytes, qid: int, question: bytes) -> bytes:
        if not answers_question(data, qid, question):
            s.close()
            self.stats.mismatched += 1
            raise UpstreamError(f"{self.name}: answer with the wrong ID or question")
        if len(self._idle) < 8:
            self._idle.append(s)
        else:
            s.close()
        return data

    async def _through(self, dialer: Dialer, node: str, ip: str, question: bytes, over_tcp: bool) -> bytes:
        """The query through a proxy node (no connection is kept: a node's choice may change).

        UDP gets half the upstream's time: a node whose server relays no UDP (ss-server without
        -u) takes datagrams and answers none, so the question goes on over TCP through it, and
        that node is asked over TCP for a while.
        """
        port = self.spec.port
        qid, wire = make_query(question)
        if not over_tcp and self._no_udp.get(node, 0.0) < time.monotonic():
            try:
                datagrams = await dialer.datagrams()
            except DialError:
                datagrams = None  # a node without UDP (an HTTP proxy): the same question over TCP
            if datagrams is not None:
                try:
                    async with asyncio.timeout(self.timeout / 2):
                        await datagrams.send(wire, ip, port)
                        while True:
                            data, _, _ = await datagrams.recv()
                            if answers_question(data, qid, question):
                                break
                            self.stats.mismatched += 1
                    if not struct.unpack_from("!H", data, 2)[0] & FLAG_TC:
                        return data
                except (TimeoutError, DialError):
                    self._no_udp[node] = time.monotonic() + NO_UDP_FOR
                finally:
                    datagrams.close()
                qid, wire = make_query(question)  # truncated, or no UDP answer: again over TCP
        stream = await dialer.connect(ip, port)
        try:
            if self._ssl is not None:
                stream = await start_tls(stream, self._ssl, server_name(self.spec.host, ""), self.timeout)
            await stream.write(struct.pack("!H", len(wire)) + wire)
            reader = Buffered(stream)
            n = struct.unpack("!H", await reader.read_exactly(2, "the answer's length"))[0]
            data = await reader.read_exactly(n, "the answer")
        finally:
            stream.close()
        if not answers_question(data, qid, question):
            self.stats.mismatched += 1
            raise UpstreamError(f"{self.name}: answer with the wrong ID or question")
        return data

    async def _https(self, ip: str, question: bytes) -> bytes:
        import httpx2

        if self._http is None:
            opts = [(socket.SOL_SOCKET, socket.SO_MARK, self.mark)] if self.mark else None
            transport = httpx2.AsyncHTTPTransport(verify=self._ssl, http2=True, socket_options=opts)
            self._http = httpx2.AsyncClient(transport=transport, timeout=self.timeout)
        _, wire = make_query(question)
        wire = b"\x00\x00" + wire[2:]  # RFC 8484: ID 0, for HTTP caches
        host = f"[{ip}]" if ":" in ip else ip
        headers = {"content-type": "application/dns-message", "accept": "application/dns-message"}
        extensions = {}
        if not self.spec.host_is_address:
            headers["host"] = self.spec.host if self.spec.port == 443 else f"{self.spec.host}:{self.spec.port}"
            extensions["sni_hostname"] = self.spec.host
        resp = await self._http.post(f"https://{host}:{self.spec.port}{self.spec.path}", content=wire,
                                     headers=headers, extensions=extensions)
        if resp.status_code != 200:
            raise UpstreamError(f"{self.name}: HTTP {resp.status_code}")
        data = resp.content
        if not answers_question(data, 0, question):
            self.stats.mismatched += 1
            raise UpstreamError(f"{self.name}: answer with the wrong ID or question")
        return data

    async def _over_quic(self, ip: str, question: bytes) -> bytes:
        if self._quic is None:
            from daetui.dns.quic import QuicChannel  # aioquic only when an upstream speaks QUIC

            self._quic = QuicChannel(self.spec, self.mark, self.ca_file, self.timeout)
        self._quic.mark, self._quic.timeout = self.mark, self.timeout  # a reload may change them
        _, wire = make_query(question)
        try:
            data = await self._quic.exchange(ip, wire)
        except MalformedAnswer as e:
            raise MalformedAnswer(f"{self.name}: malformed answer: {e}") from None
        except UpstreamError as e:
            raise UpstreamError(f"{self.name}: {e}") from None
        if not answers_question(data, 0, question):
            self.stats.mismatched += 1
            raise UpstreamError(f"{self.name}: answer with the wrong ID or question")
        return data

    async def close(self) -> None:
        if self._udp_pool is not None:
            self._udp_pool.close()  # its sockets close as their queries end
            self._udp_pool = None
        if self._quic is not None:
            await self._quic.close()
            self._quic = None
        for s in self._idle:
            s.close()
        self._idle.clear()
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.aclose()
            self._http = None


async def bootstrap_resolve(resolver: str, host: str, mark: int = 0, timeout: float = 2.0) -> str:
    """Resolve `host` (A, then AAAA) through the plain DNS server `resolver` ("ip:port")."""
    import dns.message
    import dns.name
    import dns.rdatatype

    ip, _, port = resolver.rpartition(":")
    if not ip:
        ip, port = resolver, "53"
    ip = ip.strip("[]")
    spec = UpstreamSpec("bootstrap", f"udp://{resolver}", "udp", ip, int(port or 53))
    up = Upstream(spec, lambda *_: UpstreamRoute("direct", "bootstrap"), mark=mark, timeout=timeout)
    try:
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            question = dns.name.from_text(host).to_wire() + struct.pack("!HH", rdtype, CLASS_IN)
            data = await up.query(question)
            msg = dns.message.from_wire(data)
            for rrset in msg.answer:
                if rrset.rdtype == rdtype:
                    return str(next(iter(rrset)))
    finally:
        await up.close()  # its UDP socket
    raise UpstreamError(f"{host}: the bootstrap resolver {resolver} knows no address for it")
