"""The Dialers pane without a daemon: how latencies and liveness read, and what its keys ask of the source.

The groups and nodes are made up here (on top of the recorded snapshot), so
every case the pane must draw is there: a failed check, a family never
checked, a pin, a node in no group, a long history in a narrow column.
"""

from __future__ import annotations

import asyncio

import pytest
from drive import app_text, line_text
from frozen import FrozenSource

from daetui.control import wire
from daetui.outbound.state import GroupState, NodeState
from daetui.ui.panes.dialers import (
    DialersPane,
    GroupRow,
    NodeRow,
    Scale,
    alive_pieces,
    build_rows,
    latency_cell,
    sparkline,
)
from daetui.ui.widgets.vtable import fit_pieces

MS = 0.001

# The newest ten checks of s1 are told apart by their pattern: one failure, four steps up, five flat.
S1_HISTORY = (1.0 * MS,) * 22 + (None, 1.0 * MS, 2.0 * MS, 4.0 * MS, 8.0 * MS) + (1.0 * MS,) * 5
GROUPS = (
    GroupState("proxy", "min", ("s1", "s2"), "s1", "s1", None),
    GroupState("media", "fixed(0)", ("s2",), "s2", None, None),
)
NODES = (
    NodeState("s1", "socks5", "203.0.113.11:1080", True, True, S1_HISTORY, (1.5 * MS, 1.5 * MS), ""),
    NodeState("s2", "ss", "[2001:db8:3::11]:8388", True, False, (3.0 * MS, None, 2.0 * MS), (None,),
              "IPv6: connection refused"),
    NodeState("spare", "trojan", "203.0.113.11:443", True, True, (), (), ""),
)


def with_nodes(source: FrozenSource, groups: tuple[GroupState, ...] = GROUPS,
               nodes: tuple[NodeState, ...] = NODES) -> None:
    """The recorded snapshot, with these groups and nodes instead of its own."""
    snap = source.data["snapshot"]
    snap["groups"] = [wire.encode(g) for g in groups]
    snap["nodes"] = [wire.encode(n) for n in nodes]


def notes(app) -> list[str]:
    """What the app notifies from now on (toasts are not in the screen's text)."""
    seen: list[str] = []
    notify = app.notify

    def spy(message: str, **kw: object) -> None:
        seen.append(str(message))
        notify(message, **kw)
    app.notify = spy
    return seen


async def settled(pilot) -> DialersPane:
    app = pilot.app
    for _ in range(50):
        await pilot.pause(0.05)
        if app.snapshot is not None:
            break
    await pilot.pause(0.2)
    return app.query_one(DialersPane)


# -- cells ------------------------------------------------------------------------------------

def test_sparkline_bars_share_one_log_scale_and_mark_failures() -> None:
    scale = Scale.of([NodeState("a", "socks5", "", True, True, (1 * MS, 8 * MS), (), "")])
    assert (scale.lo, scale.hi) == (1 * MS, 8 * MS)
    # 1, 2, 4, 8 ms: each doubling is a third of the way up (▁ ▃ ▆ █); a failed check is ✗.
    assert sparkline([1 * MS, None, 2 * MS, 4 * MS, 8 * MS], scale) == [
        ("▁", "accent"), ("✗", "bad"), ("▃▆█", "accent")]
    assert sparkline([], scale) == []


def test_a_steady_node_is_a_low_flat_line() -> None:
    """Equal latencies are not a wall of full blocks: the scale spans at least a doubling."""
    flat = NodeState("a", "socks5", "", True, True, (1.2 * MS,) * 6, (1.2 * MS,), "")
    scale = Scale.of([flat])
    assert scale.hi == pytest.approx(2.4 * MS)
    assert sparkline(flat.latencies4, scale) == [("▁" * 6, "accent")]
    # No successful check at all: every bar the lowest, the failures marked.
    assert sparkline([None, None], Scale.of([])) == [("✗✗", "bad")]
    assert Scale().level(5.0) == 0


def test_last_and_average_latency() -> None:
    assert latency_cell((1 * MS, 2.5 * MS), "last") == ("2.5 ms", None)
    assert latency_cell((1 * MS, None), "last") == ("failed", "bad")
    assert latency_cell((), "last") == ("—", "dim")
    # The average is of the successful checks among the last ten, as min_avg10 counts.
    assert latency_cell((100 * MS,) + (2 * MS, None) * 5, "avg") == ("2.0 ms", "dim")
    assert latency_cell((None, None), "avg") == ("—", "dim")
    assert latency_cell((0.250,), "last") == ("250 ms", None)


def test_liveness_per_family() -> None:
    assert alive_pieces(NODES[1]) == [("v4✓", "good"), (" ", None), ("v6✗", "bad")]
    assert alive_pieces(NODES[2]) == [("v4·", "dim"), (" ", None), ("v6·", "dim")]


def test_a_narrow_column_keeps_the_newest_checks() -> None:
    pieces = [("▁▂▃", "accent"), ("✗", "bad"), ("▄", "accent")]
    assert fit_pieces(pieces, 3, "right", keep_end=True) == [("▃", "accent"), ("✗", "bad"), ("▄", "accent")]
    assert fit_pieces(pieces, 7, "right", keep_end=True) == [("  ", None), *pieces]
    # Without keep_end a cell is cut at its end, with an ellipsis, as plain cells are.
    assert fit_pieces(pieces, 3, "left") == [("▁▂…", "accent")]


def test_rows_are_groups_with_their_members_then_nodes_in_no_group() -> None:
    rows = build_rows(GROUPS, NODES, frozenset({"media"}))
    kinds = [(type(r).__name__, r.group.name if isinstance(r, GroupRow) else (r.group, r.node.name)) for r in rows]
    assert kinds == [("GroupRow", "proxy"), ("NodeRow", ("proxy", "s1")), ("NodeRow", ("proxy", "s2")),
                     ("GroupRow", "media"), ("NodeRow", ("media", "s2")), ("NodeRow", (None, "spare"))]
    s1, s2 = rows[1], rows[2]
    assert isinstance(s1, NodeRow) and isinstance(s2, NodeRow)
    assert (s1.use4, s1.use6, s1.pinned, s1.checking) == (True, True, False, False)
    assert (s2.use4, s2.use6) == (False, False)
    media_s2 = rows[4]
    assert isinstance(media_s2, NodeRow) and media_s2.use4 and not media_s2.use6 and media_s2.checking
    assert rows[3].checking and not rows[0].checking


# -- the pane, drawn -------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=lambda s: f"{s[0]}x{s[1]}")
async def test_the_pane_reads_at_both_sizes(frozen, frozen_app, size: tuple[int, int]) -> None:
    with_nodes(frozen)
    app = frozen_app("dialers")
    async with app.run_test(size=size) as pilot:
        pane = await settled(pilot)
        screen = app_text(app)
        assert "7 Dialers" in screen
        assert "proxy  min · 2 nodes · IPv4/6 → s1" in screen
        assert "media  fixed(0) · 1 node · IPv4 → s2 · IPv6 → no live node" in screen
        s1 = line_text(pane.table, pane.table.rows[1])
        # The newest checks stand at the right of the sparkline, next to the last latency and the average
        # (of the successful ones among the last ten: 1, 2, 4, 8 and five times 1 ms); the oldest
        # of the 32 give way when the column is narrower.
        assert "v4 v6" in s1 and "v4✓ v6✓" in s1
        assert "✗▁▃▆█▁▁▁▁▁  1.0 ms  2.2 ms " in s1 and " socks5 " in s1, s1
        bars = sum(s1.count(c) for c in "▁▂▃▆█✗")
        assert bars < len(S1_HISTORY) + 2, s1   # the IPv6 one has two
        s2 = line_text(pane.table, pane.table.rows[2])
        assert "v4✓ v6✗" in s2 and " ss " in s2
        spare = line_text(pane.table, pane.table.rows[-1])
        assert "v4· v6·" in spare and "unchecked" in spare
        if size[0] >= 160:
            # Wide: the IPv6 history, the address and the last error too.
            assert "Latency IPv6" in screen and "[2001:db8:3::11]:8388" in s2 and "IPv6: connection refus" in s2
            assert "✗  failed       —" in s2
            assert "  ▂▂  1.5 ms  1.5 ms" in s1
        else:
            assert "Latency IPv6" not in screen and "Address" not in screen
        # The line under the table: the selected node in full.
        pane.table.cursor = 2
        await pilot.pause(0.1)
        screen = app_text(app)
        assert "s2 · ss · [2001:db8:3::11]:8388 · in proxy" in screen
        assert "IPv4 alive · last 2.0 ms · avg 2.5 ms · 3 checks, 1 failed" in screen
        assert "IPv6 down · last failed · avg — · 1 checks, 1 failed" in screen
        assert "last error IPv6: connection refused" in screen


async def test_keys_ask_the_source_to_check_pin_and_unpin(frozen, frozen_app) -> None:
    pinned = (GroupState("proxy", "min", ("s1", "s2"), "s1", "s1", "s2"), GROUPS[1])
    with_nodes(frozen, pinned)
    app = frozen_app("dialers")
    async with app.run_test(size=(100, 30)) as pilot:
        pane = await settled(pilot)
        source = frozen
        said = notes(app)
        assert app.focused is pane.table
        assert "pinned s2" in app_text(app)
        assert "pin" in line_text(pane.table, pane.table.rows[2])   # (moves the cursor there)

        # c on a group's line checks the group (the daemon checks its members); on a node, the node.
        await pilot.press("g", "c")
        await pilot.pause(0.3)
        await pilot.press("down", "c")
        await pilot.pause(0.3)
        assert source.checks == [["proxy"], ["s1"]]

        # p pins the node in the group it is listed under; u unpins that group.
        await pilot.press("p")
        await pilot.pause(0.3)
        assert source.pins == [("proxy", "s1")]
        await pilot.press("u")
        await pilot.pause(0.3)
        assert source.pins == [("proxy", "s1"), ("proxy", None)]

        # c or p on a node in no group, u on a group that is not pinned, p on a group's line: nothing sent,
        # and the console says why.
        await pilot.press("G", "p", "c", "up", "up", "u", "p")
        await pilot.pause(0.3)
        assert said[-4:] == ["spare is in no group: there is nothing to pin it in",
                             "spare is in no group: nothing dials through it", "media is not pinned",
                             "Pin a node: move to one of the group's members, then p."]
        assert source.pins == [("proxy", "s1"), ("proxy", None)]
        assert source.checks == [["proxy"], ["s1"]]


async def test_a_check_under_way_leaves_the_console_free(frozen, frozen_app) -> None:
    with_nodes(frozen)
    app = frozen_app("dialers")
    release = asyncio.Event()
    async with app.run_test(size=(100, 30)) as pilot:
        pane = await settled(pilot)
        source = frozen
        said = notes(app)

        async def slow_check(names: list[str]) -> None:
            source.checks.append(list(names))
            await release.wait()
        source.check_nodes = slow_check

        await pilot.press("c")    # the group proxy
        await pilot.pause(0.2)
        assert source.checks == [["proxy"]]
        assert "checking…" in line_text(pane.table, pane.table.rows[0])
        # Its members are marked, and the keys still work: the cursor moves, the line under it follows.
        assert " check… " in line_text(pane.table, pane.table.rows[1])
        await pilot.press("g", "down", "down")
        await pilot.pause(0.1)
        assert pane.table.cursor == 2 and "s2 · ss" in app_text(app)
        # A second c on the same group while it runs sends nothing.
        await pilot.press("g", "c")
        await pilot.pause(0.1)
        assert source.checks == [["proxy"]] and said == ["proxy: a check is under way"]

        release.set()
        for _ in range(30):
            await pilot.pause(0.1)
            if not pane.checking:
                break
        assert not pane.checking
        assert "check…" not in line_text(pane.table, pane.table.rows[1])
        assert said[-1] == "proxy: 2 of 2 alive over IPv4, 1 over IPv6"
