"""The DNS pane and the Maps pane's domain_routing against a real daemon, real DNS servers and LAN queries.

unbound runs on the lab's "internet" (daetui.lab.dnspeers); the daemon's only
upstream is it. LAN clients ask 203.0.113.53 directly: the kernel hands port
53 to daetui's DNS controller, which answers and tells the kernel the names.
"""

from __future__ import annotations

import re
import socket

import dns.message
import dns.query
import pytest
from drive import app_text, line_text, make_app, until
from helpers import Daemon, lan_socket

from daetui.lab.topology import ADDR
from daetui.ui.panes.dns import DnsPane, cache_cell
from daetui.ui.panes.maps import MapsPane
from testkit.peers.dnsmasq import dns_peers

pytestmark = pytest.mark.kernel

UNBOUND = ADDR.dns4[0]

CONFIG = """
[global]
lan_interface = ["lan0"]

[group.proxy]
# No nodes yet: a group relays through the direct dialer until proxy nodes exist.

[dns]
upstream = { ub = "udp://203.0.113.53:53" }
request = ["fallback: ub"]

[routing]
rules = ["domain(suffix: example.test) -> proxy"]
fallback = "direct"
"""


@pytest.fixture(scope="module")
def daemon(lab, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dns-console")
    cfg = tmp / "dns.toml"
    cfg.write_text(CONFIG)
    with dns_peers(lab):
        d = Daemon(lab, cfg, tmp / "run")
        d.start()
        yield d
        assert d.stop() == 0


def lan_query(lab, name: str, qtype: str = "A") -> dns.message.Message:
    """A LAN client asks unbound; the kernel gives the query to daetui."""
    s = lan_socket(lab, UNBOUND, socket.SOCK_DGRAM)
    s.setblocking(False)
    try:
        return dns.query.udp(dns.message.make_query(name, qtype), UNBOUND, timeout=3, sock=s)
    finally:
        s.close()


def seconds(ttl: str) -> int:
    """The pane's TTL text (59s, 4m59s, 1h05m) in seconds."""
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", ttl.strip())
    assert m and ttl.strip(), f"not a TTL: {ttl!r}"
    h, mi, s = (int(x or 0) for x in m.groups())
    return h * 3600 + mi * 60 + s


async def test_a_lan_query_shows_in_the_dns_pane_with_its_ttl_counting_down(daemon, lab):
    reply = lan_query(lab, "www.example.test")
    assert [str(rd) for rrset in reply.answer for rd in rrset] == [ADDR.hosts4[0]]
    app = make_app(daemon)
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, lambda: app.snapshot is not None)
        await pilot.press("6")
        pane = app.query_one(DnsPane)
        row = await until(pilot, lambda: next((r for r in pane.shown if r.name == "www.example.test"
                                               and r.qtype == "A"), None))
        text = line_text(pane.cache, row)
        assert ADDR.hosts4[0] in text and " ub " in text, text
        first = cache_cell(row, "ttl")[0]
        assert first in text and 280 < seconds(first) <= 300, first

        # A later snapshot, drawn: the same entry with less time left.
        def later() -> str | None:
            r = next((r for r in pane.shown if r.name == "www.example.test" and r.qtype == "A"), None)
            ttl = cache_cell(r, "ttl")[0] if r else ""
            return line_text(pane.cache, r) if r and ttl and seconds(ttl) < seconds(first) else None
        text = await until(pilot, later, timeout=5)
        now = re.search(r"\b(\d+m\d\ds|\d+s)\b", text)
        assert now and seconds(now.group(1)) < seconds(first), (first, text)

        # The upstream and the counters.
        screen = app_text(app)
        assert "udp://203.0.113.53:53" in screen and "fallback -> direct" in screen
        assert re.search(r"queries [1-9]", screen) and re.search(r"kernel names [1-9]", screen), screen


async def test_the_query_box_answers_with_the_route_taken(daemon, lab):
    app = make_app(daemon)
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, lambda: app.snapshot is not None)
        await pilot.press("6", "l", *"api.example.test", "enter")
        screen = await until(pilot, lambda: "203.0.113.11" in app_text(app) and app_text(app))
        assert "api.example.test A NOERROR  203.0.113.11" in screen
        assert "asked ub" in screen
        assert "route request fallback -> ub · ub via fallback -> direct: NOERROR" in screen
        # It went through the controller like a client's query: cached, and shown in the table.
        pane = app.query_one(DnsPane)
        await until(pilot, lambda: any(r.name == "api.example.test" for r in pane.shown))

        # Asked again: from the cache.
        await pilot.press("enter")
        await until(pilot, lambda: "from the cache" in app_text(app))

        # A name that does not exist: NXDOMAIN in the answer and marked in the table.
        await pilot.press("escape", "l", *"nope.example.test a", "enter")
        await until(pilot, lambda: "nope.example.test A NXDOMAIN" in app_text(app))
        row = await until(pilot, lambda: next((r for r in pane.shown if r.name == "nope.example.test"), None))
        assert row.negative and cache_cell(row, "answers") == ("NXDOMAIN", "bad")
        assert "NXDOMAIN" in line_text(pane.cache, row)

        # Not a query at all: said so, nothing asked.
        queries = app.snapshot.dns.counters.queries
        await pilot.press("escape", "l", *"what is this", "enter")
        await until(pilot, lambda: "type a name, and a record type" in app_text(app))
        await pilot.pause(0.5)
        assert app.snapshot.dns.counters.queries == queries


async def test_maps_decodes_domain_routing_as_the_rules_it_stands_for(daemon, lab):
    assert lan_query(lab, "www.example.test", "AAAA").answer
    lan_query(lab, "www.example.test")
    app = make_app(daemon)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(pilot, lambda: app.snapshot is not None)
        await pilot.press("4")
        maps = app.query_one(MapsPane)
        await until(pilot, lambda: any(m.name == "domain_routing" for m in maps.maps.rows))
        index = [m.name for m in maps.maps.rows].index("domain_routing")
        await pilot.press(*["down"] * (index - maps.maps.cursor), "enter")
        await until(pilot, lambda: maps.last is not None and maps.last.name == "domain_routing")
        cols = maps.last.columns
        assert cols == ("address", "gen", "bits", "matches", "names", "other gens")
        for addr in (ADDR.hosts4[0], ADDR.hosts6[0]):
            row = await until(pilot, lambda a=addr: next((r for r in maps.last.rows if r[0] == a), None))
            assert row[cols.index("matches")] == "#1 domain(suffix: example.test)"
            assert row[cols.index("bits")] == "0x1" and row[cols.index("gen")] == "0"
            assert "www.example.test" in row[cols.index("names")].split(", ")
            assert "#1 domain(suffix: example.test)" in line_text(maps.entries, row)
        assert "per address named by DNS" in app_text(app)


async def test_f_flushes_the_cache_after_asking(daemon, lab):
    lan_query(lab, "www.example.test")
    app = make_app(daemon)
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, lambda: app.snapshot is not None)
        await pilot.press("6")
        pane = app.query_one(DnsPane)
        await until(pilot, lambda: any(r.name == "www.example.test" for r in pane.shown))

        # No: nothing happens.
        await pilot.press("f")
        await until(pilot, lambda: "Flush the DNS cache" in app_text(app))
        await pilot.press("n")
        await pilot.pause(1.0)
        assert any(r.name == "www.example.test" for r in pane.shown)

        # Yes: the entry goes, from the daemon's cache and from the pane.
        await pilot.press("f")
        await until(pilot, lambda: "Flush the DNS cache" in app_text(app))
        await pilot.press("y")
        await until(pilot, lambda: not pane.shown and app.snapshot.dns.cached == 0)
        assert "the cache is empty" in app_text(app)

        # The next query is asked upstream again and shows up anew.
        lan_query(lab, "www.example.test")
        row = await until(pilot, lambda: next((r for r in pane.shown if r.name == "www.example.test"), None))
        assert row.hits == 0
