"""optimistic_cache (RFC 8767 serve-stale, dae's option): the cache and the controller, on loopback.

The upstream is a small DNS server played here over real UDP sockets; it can
be stopped (the port then refuses) and started again with another address.
Entries are aged by moving their times back, not by waiting for their TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import dns.message
import dns.rcode
import dns.rrset
import pytest

from daetui.config.errors import ConfigError
from daetui.config.load import parse_config
from daetui.config.model import DnsConfig
from daetui.dns.cache import STALE_TTL, CacheEntry, DnsCache
from daetui.dns.controller import ClientInfo, DnsController
from daetui.dns.upstream import UpstreamRoute

CLIENT = ClientInfo("192.0.2.100", 5353)


# -- an upstream played here ---------------------------------------------------------------------

@dataclass
class Upstream:
    """Plain DNS over UDP on 127.0.0.1: every A question is answered `address` with `ttl`."""

    address: str = "192.0.2.1"
    ttl: int = 300
    delay: float = 0.0
    port: int = 0
    queries: int = 0
    _transport: asyncio.DatagramTransport | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> Upstream:
        loop = asyncio.get_running_loop()
        me = self

        class Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                t = loop.create_task(me._answer(data, addr))
                me._tasks.add(t)
                t.add_done_callback(me._tasks.discard)

        self._transport, _ = await loop.create_datagram_endpoint(Proto, local_addr=("127.0.0.1", self.port))
        self.port = self._transport.get_extra_info("sockname")[1]
        return self

    def stop(self) -> None:
        """Gone: its port answers "unreachable" until `start` again (same port)."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queries += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        q = dns.message.from_wire(data)
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, self.ttl, "IN", "A", self.address))
        if self._transport is not None:
            self._transport.sendto(r.to_wire(), addr)


def _direct(ip: str, port: int, proto: str) -> UpstreamRoute:
    return UpstreamRoute("direct", "fallback")


@contextlib.asynccontextmanager
async def controller(up: Upstream, **dns: object) -> AsyncIterator[tuple[DnsController, list[float]]]:
    """A controller asking `up`; the second item gets each kernel-feed deadline."""
    cfg = DnsConfig(upstream={"u": f"udp://127.0.0.1:{up.port}"}, request_fallback="u", upstream_timeout=0.5,
                    **dns)  # type: ignore[arg-type]
    deadlines: list[float] = []
    c = DnsController(cfg, route=_direct, feed=lambda _n, _ips, deadline: deadlines.append(deadline))
    c.start()
    try:
        yield c, deadlines
    finally:
        await c.stop()


async def ask(c: DnsController, name: str = "www.example.test") -> dns.message.Message:
    wire = await c.handle(dns.message.make_query(name, "A").to_wire(), CLIENT)
    assert wire is not None
    return dns.message.from_wire(wire)


def answer(m: dns.message.Message) -> tuple[list[str], int]:
    """The addresses and the TTL of an answer ([], -1 when it has none)."""
    rds = [rd.to_text() for rr in m.answer for rd in rr]
    return rds, (m.answer[0].ttl if m.answer else -1)


def age(c: DnsController, seconds: float) -> None:
    """Every entry as if stored `seconds` earlier."""
    for e in c.cache.entries():
        e.stored -= seconds
        e.expires -= seconds


async def until(cond: object, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not within the limit"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def upstream(**kw: object) -> AsyncIterator[Upstream]:
    up = await Upstream(**kw).start()  # type: ignore[arg-type]
    try:
        yield up
    finally:
        up.stop()


# -- the cache ------------------------------------------------------------------------------------

def entry(key: bytes, expires: float, ttls: list[int] | None = None) -> CacheEntry:
    return CacheEntry(key, "x.test", 1, b"", [], ttls or [300], expires - 300, expires, "u", 0, False)


def test_without_serve_stale_an_expired_entry_is_gone_when_met():
    c = DnsCache(8)
    c.put(entry(b"a", expires=100.0))
    assert c.get(b"a", 100.0, stale_ok=True) is None
    assert c.peek(b"a") is None


def test_serve_stale_keeps_an_entry_for_its_window_then_drops_it():
    c = DnsCache(8, serve_stale=True, stale_window=60.0)
    c.put(entry(b"a", expires=100.0))
    c.put(entry(b"b", expires=100.0))
    assert c.get(b"a", 130.0) is None                    # not live...
    assert c.get(b"a", 130.0, stale_ok=True) is not None  # ...but there to serve stale
    assert c.stale_hits == 1
    assert c.sweep(159.0) == []
    assert sorted(e.key for e in c.sweep(160.0)) == [b"a", b"b"]
    assert c.get(b"a", 161.0, stale_ok=True) is None


def test_a_window_of_zero_keeps_stale_entries_until_evicted():
    c = DnsCache(2, serve_stale=True, stale_window=0)
    for k in (b"a", b"b"):
        c.put(entry(k, expires=100.0))
    assert c.sweep(1e9) == []
    assert c.get(b"a", 1e9, stale_ok=True) is not None
    c.put(entry(b"c", expires=2e9))
    assert c.peek(b"b") is None and c.evicted == 1  # least recently used first


def test_a_stale_answer_s_ttl_is_thirty_seconds_or_its_own_when_shorter():
    assert STALE_TTL == 30
    assert entry(b"a", 0.0, ttls=[300, 5, 30]).stale_ttls() == [30, 5, 30]


# -- the config ----------------------------------------------------------------------------------------

def test_the_keys_read_as_dae_writes_them():
    cfg = parse_config('[dns]\noptimistic_cache = true\noptimistic_cache_ttl = 120\n', "c.toml")
    assert (cfg.dns.optimistic_cache, cfg.dns.optimistic_cache_ttl) == (True, 120.0)
    cfg = parse_config('[dns]\noptimistic_cache_ttl = "2m"\n', "c.toml")
    assert (cfg.dns.optimistic_cache, cfg.dns.optimistic_cache_ttl) == (False, 120.0)
    assert parse_config("", "c.toml").dns.optimistic_cache_ttl == 60.0  # dae's default
    with pytest.raises(ConfigError, match="zero or more"):
        parse_config('[dns]\noptimistic_cache_ttl = -1\n', "c.toml")


# -- the controller ----------------------------------------------------------------------------------

async def test_off_an_expired_answer_is_asked_again():
    async with upstream() as up, controller(up) as (c, _):
        assert answer(await ask(c)) == (["192.0.2.1"], 300)
        age(c, 301)
        up.stop()
        assert (await ask(c)).rcode() == dns.rcode.SERVFAIL


async def test_on_a_stale_answer_comes_at_once_and_is_refreshed_in_the_background():
    async with upstream() as up, controller(up, optimistic_cache=True) as (c, deadlines):
        assert answer(await ask(c)) == (["192.0.2.1"], 300)
        age(c, 310)
        up.stop()
        # The upstream is gone: the stale answer still comes, with a short TTL; its refresh fails.
        assert answer(await ask(c)) == (["192.0.2.1"], STALE_TTL)
        assert deadlines[-1] >= time.monotonic() + STALE_TTL - 1  # the kernel knows the name as long
        await until(lambda: c.c.refresh_failures == 1)
        assert answer(await ask(c)) == (["192.0.2.1"], STALE_TTL)
        await until(lambda: c.c.refresh_failures == 2)
        # Back, with another address: the next query still gets the stale one at once, and starts the refresh...
        up.address = "192.0.2.2"
        await up.start()
        asked = up.queries
        assert answer(await ask(c)) == (["192.0.2.1"], STALE_TTL)
        await until(lambda: up.queries == asked + 1 and not c._refreshing)
        # ...whose answer is fresh for the queries after it.
        assert answer(await ask(c)) == (["192.0.2.2"], 300)
        st = c.state()
        assert (st.counters.stale_served, st.counters.refreshes, st.counters.refresh_failures) == (3, 3, 2)
        assert [(r.answers, r.stale) for r in st.cache] == [(("192.0.2.2",), False)]


async def test_one_refresh_per_name_at_a_time():
    async with upstream(delay=0.3) as up, controller(up, optimistic_cache=True) as (c, _):
        await ask(c)
        age(c, 310)
        got = await asyncio.gather(*(ask(c) for _ in range(20)))
        assert all(answer(m) == (["192.0.2.1"], STALE_TTL) for m in got)
        await until(lambda: not c._refreshing)
        assert up.queries == 2 and c.c.refreshes == 1


async def test_past_its_window_a_stale_answer_is_not_served():
    async with upstream() as up, controller(up, optimistic_cache=True, optimistic_cache_ttl=60.0) as (c, _):
        await ask(c)
        age(c, 300 + 61)
        up.stop()
        assert (await ask(c)).rcode() == dns.rcode.SERVFAIL
        assert c.c.refreshes == 0


async def test_a_reload_turns_it_on_and_off():
    async with upstream() as up, controller(up) as (c, _):
        await ask(c)
        age(c, 310)
        c.configure(replace(c.config, optimistic_cache=True))
        up.stop()
        assert answer(await ask(c)) == (["192.0.2.1"], STALE_TTL)
        c.configure(replace(c.config, optimistic_cache=False))
        assert (await ask(c)).rcode() == dns.rcode.SERVFAIL
