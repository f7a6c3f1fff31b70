"""The DNS pane's own logic, on the recorded fixture: what the query box asks, what flush sends, how rows read."""

from __future__ import annotations

import pytest

from daetui.dns.state import DnsCacheRow
from daetui.ui.panes.dns import DnsPane, cache_cell, parse_query


@pytest.mark.parametrize(("text", "want"), [
    ("www.example.com", ("www.example.com", "A")),
    ("  www.example.com   aaaa ", ("www.example.com", "AAAA")),
    ("TXT example.com", ("example.com", "TXT")),
    ("a.example mx", ("a.example", "MX")),
])
def test_parse_query(text: str, want: tuple[str, str]) -> None:
    assert parse_query(text) == want


@pytest.mark.parametrize("text", ["", "   ", "a b c"])
def test_parse_query_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_query(text)


def row(**kw: object) -> DnsCacheRow:
    base = dict(name="x.test", qtype="AAAA", answers=(), ttl_left=3.7, ttl=30.0, upstream="ub", hits=0,
                rcode="NOERROR", negative=True, route="", stored=0.0)
    return DnsCacheRow(**(base | kw))  # type: ignore[arg-type]


def test_negative_answers_are_marked() -> None:
    assert cache_cell(row(), "answers") == ("NODATA (no AAAA)", "warn")
    assert cache_cell(row(rcode="NXDOMAIN"), "answers") == ("NXDOMAIN", "bad")
    assert cache_cell(row(answers=("2001:db8::1",), negative=False), "answers") == ("2001:db8::1", None)
    assert cache_cell(row(), "ttl") == ("3s", "warn")
    assert cache_cell(row(ttl_left=299.6), "ttl") == ("4m59s", None)


async def test_query_box_and_flush_go_to_the_source(frozen, frozen_app) -> None:
    app = frozen_app("dns")
    asked: list[tuple[str, str]] = []
    async with app.run_test(size=(100, 30)) as pilot:
        for _ in range(50):
            await pilot.pause(0.05)
            if app.snapshot is not None:
                break
        source = frozen
        lookup = source.dns_lookup

        async def spy(name: str, qtype: str = "A"):
            asked.append((name, qtype))
            return await lookup(name, qtype)
        source.dns_lookup = spy
        pane = app.query_one(DnsPane)
        assert len(pane.shown) == 9   # the recorded cache, newest first
        assert pane.shown[0].stored >= pane.shown[-1].stored

        await pilot.press("l", *"AAAA www.example.test", "enter")
        await pilot.pause(0.3)
        assert asked == [("www.example.test", "AAAA")]
        await pilot.press("escape", "slash", *"nope", "enter")
        await pilot.pause(0.2)
        assert [r.name for r in pane.shown] == ["nope.example.test"]

        await pilot.press("f")
        await pilot.pause(0.2)
        await pilot.press("escape")
        await pilot.pause(0.2)
        assert not source.flushed
        await pilot.press("f")
        await pilot.pause(0.2)
        await pilot.press("y")
        await pilot.pause(0.3)
        assert source.flushed


async def test_what_the_bounds_held_off_is_shown_once_it_happened(frozen, frozen_app) -> None:
    from dataclasses import replace

    from daetui.dns.state import DnsServing

    app = frozen_app("dns")
    async with app.run_test(size=(100, 30)) as pilot:
        for _ in range(50):
            await pilot.pause(0.05)
            if app.snapshot is not None:
                break
        pane = app.query_one(DnsPane)
        state = app.snapshot.dns
        pane.update_state(replace(state, serving=DnsServing()))
        quiet = list(pane._counters)
        assert not any("tcp" in c or "udp" in c for c in quiet)
        pane.update_state(replace(state, counters=replace(state.counters, asis_scoped=4),
                                  serving=DnsServing(tcp_open=7, tcp_max=256, tcp_refused=3, udp_dropped=2,
                                                     tcp_write_timeouts=1)))
        shown = pane._counters
        for want in ("tcp open 7/256", "tcp refused 3", "udp dropped 2", "tcp write timeouts 1",
                     "kept for the server asked 4"):
            assert want in shown, shown
        assert not any(c.startswith("kernel answered") for c in shown)   # kernel_answers off: nothing to say
        pane.update_state(replace(state, counters=replace(state.counters, kernel_answered=12000,
                                                          kernel_handed_over=(("EDNS", 2), ("MISS", 30)))))
        shown = pane._counters
        at = shown.index("kernel answered 12.0k")
        assert shown[at + 1:at + 3] == ["kernel passed on (miss) 30", "kernel passed on (edns) 2"], shown
        assert "kernel passed on (miss) 30" in str(pane.query_one("#dns-counters").render())
