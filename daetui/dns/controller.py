"""The DNS controller: answers the LAN's queries and tells the kernel which address is which name.

A query is read (`wire.parse_query`), routed by the request rules, answered
from the cache when it can be, else asked of an upstream; identical queries
in flight share one upstream query. The answer goes through the response
rules (accept, reject, or ask another upstream, at most MAX_DEPTH times).
Before the reply leaves, every address in it is handed to `feed` with its
names and lifetime: the control plane writes them into the kernel's
domain map, so the client's next connection is routed by name in the kernel.

An upstream that fails (error, timeout, unreadable answer) is followed by the
next configured upstream while time is left (`total_timeout`); when none
answers, the client gets SERVFAIL. Nothing a client or an upstream sends can
make an entry in the cache without having been read whole: the common answer
(addresses, a CNAME chain, an SOA) by `wire.read_answer`, which checks every
byte as strictly as dnspython does, any other by dnspython itself.

`asis` sends a query to the server the client addressed, which any LAN
device may run itself. Such an answer is cached under the question *and that
server* (its "scope"), so it only ever answers queries to the same server --
what that server would have said to them anyway, since the router asks it
for every client from its own address -- and it names nothing in the
kernel's domain map: only configured upstreams' answers do, else one client
could make any address match any domain rule for every client. dae scopes
its cache the same way ("asis@server") but does feed such answers to its
kernel map. A client that addresses a configured upstream (plain DNS, same
address and port) is answered by that upstream, from the shared cache.

`optimistic_cache` (RFC 8767 serve-stale, as dae has it): an answer past its
TTL but within `optimistic_cache_ttl` of it is served at once with a short
TTL (cache.STALE_TTL), and the question is asked again in the background,
one refresh per cache key at a time (at most MAX_REFRESHES together). A
refresh that fails leaves the stale entry to serve until its window ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from daetui.config.dns_upstream import UpstreamSpec, parse_upstream
from daetui.config.model import DnsConfig
from daetui.dns.cache import MAX_NEGATIVE_TTL, MAX_TTL, NEGATIVE_TTL, STALE_TTL, CacheEntry, DnsCache
from daetui.dns.kernel_answers import KernelAnswers, KernelDnsMap
from daetui.dns.state import DnsCacheRow, DnsCounters, DnsServing, DnsState, DnsTrace, DnsUpstreamRow
from daetui.dns.upstream import DialFn, MalformedAnswer, RouteFn, Upstream, UpstreamError, bootstrap_resolve
from daetui.dns.wire import (
    CLASS_IN,
    FLAG_QR,
    FLAG_RA,
    HEADER,
    RCODE_NOERROR,
    RCODE_SERVFAIL,
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    AnswerRecords,
    Query,
    WireError,
    answer_from_template,
    as_template,
    error_for,
    name_text,
    parse_query,
    read_answer,
    reply,
    ttl_offsets,
)
from daetui.routing.dns_rules import ACCEPT, ASIS, MAX_DEPTH, REJECT, Choice, DnsFacts, DnsRules, compile_list
from daetui.routing.domains import normalize

log = logging.getLogger("daetui.dns")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# names, addresses, deadline (time.monotonic()) -> the kernel knows them until then
NameFeed = Callable[[tuple[str, ...], tuple[IPAddress, ...], float], None]
CACHEABLE = (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
MIN_FEED = 5.0     # an answer with TTL 0 still names its addresses in the kernel this long
MAX_CHOICES = 8192  # request-rule verdicts remembered by question and interface
MAX_ASIS = 64      # servers asked on the clients' behalf (asis), kept with their figures
PLAIN_SCHEMES = ("udp", "tcp", "tcp+udp")  # a hijacked port-53 query can be addressed to these
MAX_REFRESHES = 256  # stale entries refreshed in the background at once; past that they are served unrefreshed


class ClientInfo(NamedTuple):
    """Where a query came from (a tuple: one is made per query)."""

    addr: str
    port: int = 0
    interface: str | None = None              # the interface it came in on
    server: tuple[str, int] | None = None     # the server the client asked (None: dns.bind, console)
    tcp: bool = False
    scope: int = 0                            # IPv6 link-local addresses: the interface they are on


@dataclass(frozen=True)
class Pending:
    """A query the cache could not answer: the slow path takes it from here."""

    query: Query
    choice: Choice


class ResolveError(Exception):
    """No answer could be had: the client gets SERVFAIL."""


@dataclass
class _Counters:
    queries: int = 0
    shared: int = 0
    rejected: int = 0
    servfail: int = 0
    malformed: int = 0
    bad_answers: int = 0
    asis_scoped: int = 0     # answers of servers clients chose: kept for that server, not named in the kernel
    refreshes: int = 0       # background refreshes of stale entries (optimistic_cache)
    refresh_failures: int = 0


@dataclass
class _Answer:
    """What the cache keeps of an upstream's answer, and what the rules are told of it."""

    rcode: int
    template: bytes
    offsets: list[int]
    ttls: list[int]
    lifetime: float
    negative: bool
    ips: tuple[IPAddress, ...]
    names: tuple[str, ...]
    texts: tuple[str, ...] = field(default=())


# rcode, least TTL of the answer section, the SOA's (TTL, minimum), whether qtype is there, addresses, texts,
# names, template, TTL offsets: what `_read` makes its _Answer of.
_ReadParts = tuple[int, int, "tuple[int, int] | None", bool, "list[IPAddress]", "list[str]", tuple[str, ...], bytes,
                   "list[int]"]


def _qtype_text(qtype: int) -> str:
    try:
        return dns.rdatatype.to_text(qtype)  # type: ignore[arg-type]
    except Exception:
        return str(qtype)


class DnsController:
    """One per control plane; `configure` takes a new [dns] on reload and keeps the cache."""

    def __init__(self, config: DnsConfig, route: RouteFn, feed: NameFeed, mark: int = 0,
                 bootstrap_resolver: str = "", kernel_names: Callable[[], int] | None = None,
                 dial: DialFn | None = None, kernel_evicted: Callable[[], int] | None = None,
                 kernel_map: Callable[[], KernelDnsMap | None] | None = None) -> None:
        self.route = route
        # dns.kernel_answers: the answers the LAN program may give itself (kernel_answers.py).
        self.kernel = KernelAnswers(kernel_map or (lambda: None))
        self.dial = dial
        self.feed = feed
        self.mark = mark
        self.bootstrap_resolver = bootstrap_resolver
        self.kernel_names = kernel_names or (lambda: 0)
        self.kernel_evicted = kernel_evicted or (lambda: 0)
        self.cache = DnsCache(config.cache_size)
        self.upstreams: dict[str, Upstream] = {}
        self._asis: OrderedDict[tuple[str, int, bool], Upstream] = OrderedDict()
        self._inflight: dict[tuple[object, ...], asyncio.Future[CacheEntry]] = {}
        self._boot: dict[str, str] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._refreshing: dict[bytes, asyncio.Task[None]] = {}  # cache key -> its background refresh
        self._sweeper: asyncio.Task[None] | None = None
        self.c = _Counters()
        self.serving: Callable[[], DnsServing] | None = None  # the sockets' figures (set by DnsServer)
        self.configure(config)  # sets config, rules, upstreams, timeouts

    # -- configuration --------------------------------------------------------------------
    def configure(self, config: DnsConfig) -> None:
        """Take a new [dns] (already checked); upstreams that did not change keep their connections."""
        rules = config.compiled or DnsRules(
            compile_list("request", config.request, config.request_fallback, config.upstream),
            compile_list("response", config.response, config.response_fallback, config.upstream))
        # One upstream's time, then the next one's; the client (glibc: 5 s) hears back before it gives up.
        self.timeout = config.upstream_timeout
        self.total_timeout = 2 * config.upstream_timeout + 0.5
        fresh: dict[str, Upstream] = {}
        for name, url in config.upstream.items():
            spec = parse_upstream(name, url)
            old = self.upstreams.get(name)
            if old is not None and old.spec == spec and old.ca_file == config.ca_file:
                old.timeout, old.mark = self.timeout, self.mark
                fresh[name] = old
            else:
                fresh[name] = self._upstream(spec, config.ca_file)
        for name, up in self.upstreams.items():
            if fresh.get(name) is not up:
                self._close_later(up)
        self.upstreams = fresh
        # Plain-DNS upstreams by (address, port): a client addressing one is answered by it (`_configured_at`).
        self._plain: dict[tuple[str, int], Upstream] = {}
        self._plain_named: list[Upstream] = []  # by host name: their address is known once resolved
        for up in fresh.values():
            if up.spec.scheme not in PLAIN_SCHEMES:
                continue
            if up.spec.host_is_address:
                self._plain.setdefault((_canonical(up.spec.host), up.spec.port), up)
            else:
                self._plain_named.append(up)
        self.rules: DnsRules = rules
        self._choices: dict[tuple[bytes, str | None], Choice] = {}  # request rules' verdicts, until the next config
        self.config = config
        self.cache.resize(config.cache_size)
        self.cache.serve_stale = config.optimistic_cache
        self.cache.stale_window = config.optimistic_cache_ttl
        self.fixed_ttl = {normalize(k): int(v) for k, v in config.fixed_domain_ttl.items()}
        # Every reload retires what the kernel answers (its epoch): rules, upstreams or TTL policy may have changed.
        self.kernel.configure(config.kernel_answers, rules.request.by_client or rules.response.by_client)

    def _upstream(self, spec: UpstreamSpec, ca_file: str) -> Upstream:
        return Upstream(spec, self.route, mark=self.mark, ca_file=ca_file, bootstrap=self._bootstrap, dial=self.dial,
                        timeout=self.timeout)

    def _close_later(self, up: Upstream) -> None:
        try:
            task = asyncio.get_running_loop().create_task(up.close())
        except RuntimeError:
            return  # no loop (configured before start): nothing is open yet
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _bootstrap(self, host: str) -> str:
        ip = self._boot.get(host)
        if ip is None:
            if not self.bootstrap_resolver:
                raise ResolveError("no bootstrap resolver (global.fallback_resolver)")
            ip = await bootstrap_resolve(self.bootstrap_resolver, host, self.mark, self.timeout)
            self._boot[host] = ip
            log.info("dns: upstream host %s is %s (bootstrap %s)", host, ip, self.bootstrap_resolver)
        return ip

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for t in list(self._refreshing.values()):
            t.cancel()
            with contextlib.suppress(BaseException):
                await t
        for up in [*self.upstreams.values(), *self._asis.values()]:
            await up.close()
        for t in list(self._closing):
            with contextlib.suppress(Exception):
                await t

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.cache.sweep(time.monotonic())

    # -- queries ----------------------------------------------------------------------------------
    def begin(self, wire: bytes, client: ClientInfo) -> bytes | Pending | None:
        """The fast path: the reply now (cache, reject, error), None to drop, or Pending for `complete`."""
        self.c.queries += 1
        try:
            q = parse_query(wire)
        except WireError as e:
            self.c.malformed += 1
            log.debug("dns from %s: %s", client.addr, e)
            return error_for(wire, e.rcode) if e.rcode is not None else None
        ck = (q.key, client.interface)
        choice = self._choices.get(ck)
        if choice is None:
            if len(self._choices) >= MAX_CHOICES:
                self._choices.clear()
            choice = self._choices[ck] = self.rules.request.choose(DnsFacts(q.qname, q.qtype, client.interface))
        if choice.target == REJECT:
            self.c.rejected += 1
            return reply(q, RCODE_NOERROR, udp=not client.tcp)
        if self._other_family(q.qtype) is None:
            now = time.monotonic()
            key = q.key + self._scope(choice.target, client)[0]
            e = self.cache.get(key, now, stale_ok=True)
            if e is not None:
                if e.expires <= now:
                    self._refresh(key, q.key, q.question, q.qname, q.qtype, choice, client)
                self._feed(e, now)
                return self._serve(e, q, client, now, choice)
        return Pending(q, choice)

    async def complete(self, p: Pending, client: ClientInfo) -> bytes:
        """The slow path: upstreams, response rules, the cache and the kernel feed, then the reply."""
        q = p.query
        try:
            other = self._other_family(q.qtype)
            if other is not None:
                # ipversion_prefer: a name with an address of the preferred family gets no other.
                oq = q.wire[HEADER:q.question_end - 4] + struct.pack("!HH", other, q.qclass)
                okey = oq[:-4].lower() + oq[-4:]
                ochoice = self.rules.request.choose(DnsFacts(q.qname, other, client.interface))
                if ochoice.target != REJECT:
                    oe = await self._entry(okey, oq, q.qname, other, ochoice, client)
                    if oe.addresses:
                        return reply(q, RCODE_NOERROR, udp=not client.tcp)
            e = await self._entry(q.key, q.question, q.qname, q.qtype, p.choice, client)
        except (ResolveError, UpstreamError) as err:
            self.c.servfail += 1
            log.info("dns %s %s from %s: SERVFAIL: %s", q.qname, _qtype_text(q.qtype), client.addr, err)
            return reply(q, RCODE_SERVFAIL, udp=not client.tcp)
        return self._serve(e, q, client, time.monotonic(), p.choice)

    async def handle(self, wire: bytes, client: ClientInfo) -> bytes | None:
        """A reply for `wire`, or None when it gets none."""
        r = self.begin(wire, client)
        if isinstance(r, Pending):
            return await self.complete(r, client)
        return r

    def _other_family(self, qtype: int) -> int | None:
        prefer = self.config.ipversion_prefer
        if prefer == 4 and qtype == TYPE_AAAA:
            return TYPE_A
        if prefer == 6 and qtype == TYPE_A:
            return TYPE_AAAA
        return None

    def _serve(self, e: CacheEntry, q: Query, client: ClientInfo, now: float, choice: Choice | None = None) -> bytes:
        if e.expires <= now:  # stale (optimistic_cache): a short TTL, not one counted down past zero
            return answer_from_template(e.template, e.offsets, e.stale_ttls(), 0, q, udp=not client.tcp)
        if choice is not None and self.kernel.enabled:
            # The next time the kernel may answer it: only a configured upstream's answer for every client.
            # Once the reply is on its way (a map write costs this client nothing then).
            everyones = choice.target not in (ASIS, REJECT) and self._other_family(q.qtype) is None
            try:
                asyncio.get_running_loop().call_soon(self.kernel.offer, e, q, now, everyones, self.kernel.epoch)
            except RuntimeError:  # no loop (a caller outside one): now
                self.kernel.offer(e, q, now, everyones)
        return answer_from_template(e.template, e.offsets, e.ttls, int(now - e.stored), q, udp=not client.tcp)

    def _feed(self, e: CacheEntry, now: float | None = None) -> None:
        if e.addresses and e.trusted:
            deadline = max(e.expires, e.stored + MIN_FEED)
            if now is not None and e.expires <= now:
                # A stale answer: its client may use the addresses for STALE_TTL, so the kernel knows them as long.
                deadline = now + max(STALE_TTL, MIN_FEED)
            self.feed(e.names, e.addresses, deadline)

    def _refresh(self, key: bytes, question_key: bytes, question: bytes, qname: str, qtype: int, choice: Choice,
                 client: ClientInfo) -> None:
        """Ask again, in the background, for the stale entry under `key` (one refresh per key at a time)."""
        if key in self._refreshing or len(self._refreshing) >= MAX_REFRESHES:
            return
        self.c.refreshes += 1
        task = asyncio.get_running_loop().create_task(
            self._refresh_one(question_key, question, qname, qtype, choice, client))
        self._refreshing[key] = task
        task.add_done_callback(lambda _: self._refreshing.pop(key, None))

    async def _refresh_one(self, question_key: bytes, question: bytes, qname: str, qtype: int, choice: Choice,
                           client: ClientInfo) -> None:
        try:
            await self._entry(question_key, question, qname, qtype, choice, client, stale_ok=False)
        except (ResolveError, UpstreamError) as err:
            self.c.refresh_failures += 1
            log.info("dns %s %s: refreshing the stale answer failed: %s", qname, _qtype_text(qtype), err)
        except Exception:  # a refresh nobody waits for must not end with an unretrieved error
            self.c.refresh_failures += 1
            log.exception("dns %s %s: refreshing the stale answer failed", qname, _qtype_text(qtype))

    def _scope(self, target: str, client: ClientInfo) -> tuple[bytes, str]:
        """Whose cache a query is answered from: (cache key suffix, label); (b"", "") for the shared one.

        Only `asis` to a server that is not a configured upstream has a scope of its own: the server
        asked (with its interface for a link-local address, which exists once per link).
        """
        if target != ASIS or client.server is None or self._configured_at(client.server) is not None:
            return b"", ""
        ip, port = client.server
        host = f"[{ip}]" if ":" in ip else ip
        label = f"asis {host}:{port}"
        scope = client.scope if ip[:4].lower() == "fe80" else 0
        return f"\x00{label}%{scope}".encode(), label

    def _configured_at(self, server: tuple[str, int]) -> Upstream | None:
        """The configured plain-DNS upstream at `server` (address, port), if one is.

        `server` comes from the kernel (inet_ntop), already in the one text `_canonical` gives.
        """
        ip = server[0]
        up = self._plain.get((ip, server[1]))
        if up is None and self._plain_named:
            up = next((u for u in self._plain_named
                       if u.spec.port == server[1] and u.stats.address and _canonical(u.stats.address) == ip), None)
        return up

    async def _entry(self, question_key: bytes, question: bytes, qname: str, qtype: int, choice: Choice,
                     client: ClientInfo, stale_ok: bool = True) -> CacheEntry:
        """The cached answer (a stale one too, with `stale_ok`), the one being fetched, or a fresh one."""
        scope, label = self._scope(choice.target, client)
        key = question_key + scope
        now = time.monotonic()
        e = self.cache.get(key, now, count_miss=False, stale_ok=stale_ok)  # filled while this one waited?
        if e is not None:
            if e.expires <= now:
                self._refresh(key, question_key, question, qname, qtype, choice, client)
            self._feed(e, now)
            return e
        fkey = (key, choice.target, client.server if choice.target == ASIS else None, client.tcp)
        fut = self._inflight.get(fkey)
        if fut is not None:
            self.c.shared += 1
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[fkey] = fut
        try:
            e = await self._resolve(key, label, question, qname, qtype, choice, client)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as err:
            fut.set_exception(err)
            fut.exception()  # retrieved: no warning when nobody else waited
            raise
        finally:
            self._inflight.pop(fkey, None)
        fut.set_result(e)
        return e

    def _upstream_for(self, target: str, client: ClientInfo) -> Upstream:
        if target != ASIS:
            return self.upstreams[target]
        if client.server is None:
            # dns.bind and the console have no server of their own: the first upstream.
            if not self.upstreams:
                raise ResolveError("asis: the query has no server of its own and no upstream is configured")
            return next(iter(self.upstreams.values()))
        configured = self._configured_at(client.server)
        if configured is not None:
            return configured  # the client asked a configured upstream: its answer is everyone's
        ip, port = client.server
        k = (ip, port, client.tcp)
        up = self._asis.get(k)
        if up is None:
            host = f"[{ip}]" if ":" in ip else ip
            scheme = "tcp" if client.tcp else "udp"
            spec = UpstreamSpec(f"asis {host}:{port}", f"{scheme}://{host}:{port}", scheme, ip, port)
            up = self._asis[k] = self._upstream(spec, "")
            while len(self._asis) > MAX_ASIS:
                self._close_later(self._asis.popitem(last=False)[1])
        else:
            self._asis.move_to_end(k)
        return up

    async def _ask(self, first: Upstream, question: bytes, qname: str, qtype: int, client: ClientInfo,
                   deadline: float, steps: list[str]) -> tuple[_Answer, Upstream]:
        """The first readable answer: `first`, then (if it is configured) the other upstreams in order."""
        loop = asyncio.get_running_loop()
        candidates = [first]
        if first.name in self.upstreams:
            candidates += [u for u in self.upstreams.values() if u is not first]
        errors = []
        for up in candidates:
            left = deadline - loop.time()
            if left <= 0.05:
                break
            t0 = loop.time()
            try:
                data = await up.query(question, tcp=client.tcp, deadline=deadline)
                answer = self._read(data, qname, qtype)
            except (UpstreamError, TimeoutError) as e:
                self.c.bad_answers += isinstance(e, MalformedAnswer)
                errors.append(str(e) or f"{up.name}: no answer in time")
                steps.append(f"{up.name} failed")
                continue
            except (dns.exception.DNSException, ValueError, struct.error) as e:
                self.c.bad_answers += 1
                up.stats.errors += 1
                up.stats.last_error = f"unreadable answer: {e}"
                errors.append(f"{up.name}: unreadable answer: {e}")
                steps.append(f"{up.name} sent an unreadable answer")
                continue
            via = f" via {up.stats.route}" if up.stats.route else ""
            steps.append(f"{up.name}{via}: {dns.rcode.to_text(answer.rcode)} in {(loop.time() - t0) * 1000:.1f} ms")
            return answer, up
        raise ResolveError("; ".join(errors) or "no time left to ask an upstream")

    async def _resolve(self, key: bytes, scope: str, question: bytes, qname: str, qtype: int, choice: Choice,
                       client: ClientInfo) -> CacheEntry:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total_timeout
        steps = [choice.describe("request")]
        up = self._upstream_for(choice.target, client)
        for _depth in range(MAX_DEPTH + 1):
            answer, up = await self._ask(up, question, qname, qtype, client, deadline, steps)
            rc = self.rules.response.choose(DnsFacts(qname, qtype, client.interface, answer.ips, up.name))
            steps.append(rc.describe("response"))
            if rc.target == ACCEPT:
                break
            if rc.target == REJECT:
                self.c.rejected += 1
                return self._rejection(key, question, qname, qtype, up.name, " · ".join(steps))
            up = self.upstreams[rc.target]
        else:
            raise ResolveError(f"the response rules asked again {MAX_DEPTH} times; giving up")
        now = time.monotonic()
        # Only a configured upstream's answer may name addresses in the kernel (the module's docstring).
        trusted = self.upstreams.get(up.name) is up
        if not trusted:
            self.c.asis_scoped += 1
            steps.append("kept for this server only, not named in the kernel")
        entry = CacheEntry(key, qname, qtype, answer.template, answer.offsets, answer.ttls, now,
                           now + answer.lifetime, up.name, answer.rcode, answer.negative, answer.ips,
                           answer.texts, answer.names, " · ".join(steps), trusted=trusted, scope=scope)
        if answer.rcode in CACHEABLE and answer.lifetime > 0:
            self.cache.put(entry)
        self._feed(entry)
        return entry

    def _rejection(self, key: bytes, question: bytes, qname: str, qtype: int, upstream: str,
                   route: str) -> CacheEntry:
        template = struct.pack("!HHHHHH", 0, FLAG_QR | FLAG_RA, 1, 0, 0, 0) + question
        now = time.monotonic()
        return CacheEntry(key, qname, qtype, template, [], [], now, now, upstream, RCODE_NOERROR, True,
                          route=route)

    def _read(self, data: bytes, qname: str, qtype: int) -> _Answer:
        """An upstream's answer, every byte checked; raises DNSException or ValueError when it cannot be read.

        The common answer is read by `wire.read_answer` (only what is needed, as strictly as
        dnspython); any other, by dnspython whole.
        """
        got = read_answer(data)
        parts = (self._read_records(got, qtype) if got is not None else None) or self._read_whole(data, qname, qtype)
        rcode, min_ttl, soa, has_type, ips, texts, names, template, offsets = parts
        negative = rcode == dns.rcode.NXDOMAIN or (rcode == dns.rcode.NOERROR and not has_type)
        if negative:
            lifetime = min(soa) if soa is not None else NEGATIVE_TTL
            lifetime = min(lifetime, MAX_NEGATIVE_TTL)
        else:
            lifetime = min_ttl
        fixed = self.fixed_ttl.get(qname)
        if fixed is not None:
            lifetime = fixed
        lifetime = max(0, min(int(lifetime), MAX_TTL))
        ttls = [min(struct.unpack_from("!I", template, o)[0], MAX_TTL) if fixed is None else fixed for o in offsets]
        return _Answer(rcode, template, offsets, ttls, float(lifetime), negative, tuple(ips), names, tuple(texts))

    @staticmethod
    def _read_records(got: AnswerRecords, qtype: int) -> _ReadParts | None:
        """`_read`'s parts from what `read_answer` found; None when dnspython must say (other records of qtype)."""
        rrsets = got.rrsets
        chain = [got.question]
        for _ in range(16):  # follow the CNAME chain, boundedly
            cname = rrsets.get((chain[-1], TYPE_CNAME))
            if cname is None or qtype == TYPE_CNAME:
                break
            chain.append(next(iter(cname[1])))
        ips: list[IPAddress] = []
        has_type = False
        for owner in chain:
            rrset = rrsets.get((owner, qtype))
            if rrset is not None:
                if qtype == TYPE_A:
                    ips += map(ipaddress.IPv4Address, rrset[1])
                elif qtype == TYPE_AAAA:
                    ips += map(ipaddress.IPv6Address, rrset[1])
                else:
                    return None  # their text is dnspython's to write
                has_type = True
        min_ttl = min((ttl for ttl, _ in rrsets.values()), default=MAX_TTL)
        names = tuple(dict.fromkeys(name_text(n) for n in chain))
        return (got.rcode, min(min_ttl, MAX_TTL), got.soa, has_type, ips, [str(ip) for ip in ips], names,
                got.template, got.offsets)

    def _read_whole(self, data: bytes, qname: str, qtype: int) -> _ReadParts:
        """`_read`'s parts, by dnspython reading the whole message."""
        msg = dns.message.from_wire(data)
        rcode = msg.rcode()
        chain = [dns.name.from_text(qname or ".")]
        ips: list[IPAddress] = []
        texts: list[str] = []
        has_type = False
        min_ttl = MAX_TTL
        by_owner = {}
        for rrset in msg.answer:
            min_ttl = min(min_ttl, rrset.ttl)
            by_owner.setdefault((rrset.name, rrset.rdtype), rrset)
        for _ in range(16):  # follow the CNAME chain, boundedly
            cname = by_owner.get((chain[-1], dns.rdatatype.CNAME))
            if cname is None or qtype == dns.rdatatype.CNAME:
                break
            chain.append(next(iter(cname)).target)  # type: ignore[attr-defined]
        for owner in chain:
            rrset = by_owner.get((owner, qtype))
            if rrset is not None:
                has_type = True
                for rd in rrset:
                    # An address only in class IN (another class's A is another record: CH's has no address).
                    if rrset.rdtype in (TYPE_A, TYPE_AAAA) and rrset.rdclass == CLASS_IN:
                        ip = ipaddress.ip_address(rd.address)  # type: ignore[attr-defined]
                        ips.append(ip)
                        texts.append(str(ip))
                    else:
                        texts.append(rd.to_text())
        soa_rrset = next((r for r in msg.authority if r.rdtype == dns.rdatatype.SOA), None)
        soa = (soa_rrset.ttl, next(iter(soa_rrset)).minimum) if soa_rrset is not None else None  # type: ignore
        template = as_template(data)
        if template is None:  # records after the OPT one: let dnspython render it without
            msg.id = 0
            msg.use_edns(False)
            template = msg.to_wire()
        offsets = ttl_offsets(template)
        names = tuple(dict.fromkeys(n.to_text(omit_final_dot=True).lower() for n in chain))
        return rcode, min_ttl, soa, has_type, ips, texts, names, template, offsets

    # -- the console ------------------------------------------------------------------------------
    async def lookup(self, name: str, qtype: str = "A") -> DnsTrace:
        """Resolve through the controller as a client would; says the way it went."""
        t0 = time.monotonic()
        try:
            rdtype = dns.rdatatype.from_text(qtype.upper())
            qmsg = dns.message.make_query(name, rdtype, use_edns=True)
        except Exception as e:
            return DnsTrace(name, qtype, "", (), 0.0, "", "", False, 0.0, f"bad query: {e}")
        client = ClientInfo("console")
        q = parse_query(qmsg.to_wire())
        cached = self.cache.peek(q.key)
        was_cached = cached is not None and self.cache.usable_until(cached) > time.monotonic()
        r = self.begin(q.wire, client)
        if isinstance(r, Pending):
            r = await self.complete(r, client)
        elapsed = (time.monotonic() - t0) * 1000
        e = self.cache.peek(q.key)
        if r is None:
            return DnsTrace(name, qtype.upper(), "", (), 0.0, "", "", False, elapsed, "no reply")
        msg = dns.message.from_wire(r)
        answers = tuple(rd.to_text() for rrset in msg.answer for rd in rrset)
        route = e.route if e is not None else ""
        if e is None or not route:
            route = self.rules.request.choose(DnsFacts(q.qname, q.qtype)).describe("request")
        return DnsTrace(name, qtype.upper(), dns.rcode.to_text(msg.rcode()), answers,
                        e.ttl_left(time.monotonic()) if e is not None else 0.0,
                        e.upstream if e is not None else "", route, was_cached, elapsed)

    def flush(self) -> int:
        """Empty the cache (the kernel's names stay until their TTL; its answers are retired)."""
        n = self.cache.flush()
        self.kernel.bump()
        log.info("dns: cache flushed (%d entries)", n)
        return n

    def state(self, limit: int = 2000) -> DnsState:
        now = time.monotonic()
        rows = []
        for e in self.cache.entries()[:limit]:
            if self.cache.usable_until(e) <= now:
                continue
            rows.append(DnsCacheRow(e.qname, _qtype_text(e.qtype), e.answers, e.ttl_left(now),
                                    e.expires - e.stored, e.upstream, e.hits, dns.rcode.to_text(e.rcode),
                                    e.negative, e.route, e.wall, e.scope, e.trusted, stale=e.expires <= now))
        ups = []
        for up in [*self.upstreams.values(), *self._asis.values()]:
            st = up.stats
            lat = list(st.latencies)
            ups.append(DnsUpstreamRow(up.name, up.spec.url, st.address, st.route, st.queries, st.errors,
                                      st.timeouts, st.mismatched, lat[-1] * 1000 if lat else None,
                                      sum(lat) / len(lat) * 1000 if lat else None, st.last_error, st.malformed,
                                      latency_counts=tuple(st.histogram.counts), latency_sum=st.histogram.total))
        c = self.c
        ks = self.kernel.stats() if self.kernel.enabled else {}
        answered = ks.pop("ANSWERED", 0)
        counters = DnsCounters(c.queries, self.cache.hits, self.cache.misses, c.shared, c.rejected, c.servfail,
                               c.malformed, c.bad_answers, self.kernel_names(), c.asis_scoped,
                               self.kernel_evicted(), self.cache.stale_hits, c.refreshes, c.refresh_failures,
                               answered, tuple((k, v) for k, v in ks.items() if v))
        serving = self.serving() if self.serving is not None else DnsServing()
        return DnsState(tuple(rows), tuple(ups), counters, self.cache.max_entries, len(self.cache), serving)


def _canonical(ip: str) -> str:
    """An address as one text (IPv6 spelt many ways); the text itself when it is no address."""
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


def question_bytes(name: str, qtype: int, qclass: int = CLASS_IN) -> bytes:
    """A question section for `name` (tests and tools)."""
    return dns.name.from_text(name).to_wire() + struct.pack("!HH", qtype, qclass)
