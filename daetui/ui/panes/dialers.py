"""Dialers: the proxy groups, the node each one uses per IP family, and every node's health.

One table: each group as a heading line (policy, the node it uses over IPv4
and IPv6, its pin) with its members under it; nodes in no group come last.
A node's line has its liveness per family, its latency history as a
sparkline, its last and average latency, protocol, address and last error.
Checks and pins go to the daemon from the app's workers; the table is drawn
from the snapshots alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Static

from daetui.control.state import Snapshot
from daetui.outbound.state import GroupState, NodeState
from daetui.ui import fmt
from daetui.ui.panes.base import PaletteEntry, Pane, show_text
from daetui.ui.widgets.vtable import Cell, Column, Pieces, VirtualTable

BARS = "▁▂▃▄▅▆▇█"
FAILED = "✗"
AVERAGED = 10   # checks in the average, as the min_avg10 policy counts them
MIN_RANGE = 2.0  # the scale spans at least a doubling: a few percent of jitter stays a flat line

# At 80 columns: node, use, liveness, the IPv4 history with its last and average latency, protocol;
# from about 120 the IPv6 history too, then the address and the last error.
COLUMNS = [
    Column("name", "Group / node", 14, min_width=10, flex=1),
    Column("use", "Use", 9),
    Column("alive", "Alive", 7),
    Column("spark4", "Latency IPv4", 20, align="right", min_width=10, flex=1, keep_end=True),
    Column("last4", "Last", 7, align="right"),
    Column("avg4", "Avg", 7, align="right"),
    Column("spark6", "Latency IPv6", 20, align="right", min_width=10, flex=1, priority=3, keep_end=True),
    Column("last6", "Last", 7, align="right", priority=3),
    Column("avg6", "Avg", 7, align="right", priority=3),
    Column("proto", "Proto", 6, priority=1),
    Column("address", "Address", 21, min_width=12, priority=2),
    Column("error", "Last error", 20, min_width=12, flex=2, priority=4),
]


@dataclass(frozen=True)
class Scale:
    """One logarithmic scale for every sparkline of the pane, so that taller means slower across nodes."""

    lo: float = 0.0   # seconds: the lowest bar
    hi: float = 0.0   # seconds: the highest bar

    @classmethod
    def of(cls, nodes: Sequence[NodeState]) -> Scale:
        values = [v for n in nodes for v in (*n.latencies4, *n.latencies6) if v is not None and v > 0]
        if not values:
            return cls()
        lo = min(values)
        return cls(lo, max(max(values), lo * MIN_RANGE))

    def level(self, v: float) -> int:
        if self.hi <= self.lo or v <= self.lo:
            return 0
        share = math.log(v / self.lo) / math.log(self.hi / self.lo)
        return max(0, min(len(BARS) - 1, round(share * (len(BARS) - 1))))


def sparkline(latencies: Sequence[float | None], scale: Scale) -> Pieces:
    """A bar per check, oldest left, `✗` for a failed one (the table keeps the newest that fit)."""
    pieces: Pieces = []
    for v in latencies:
        text, style = (FAILED, "bad") if v is None else (BARS[scale.level(v)], "accent")
        if pieces and pieces[-1][1] == style:
            pieces[-1] = (pieces[-1][0] + text, style)
        else:
            pieces.append((text, style))
    return pieces


def average(latencies: Sequence[float | None]) -> float | None:
    """Seconds: the mean of the successful checks among the last AVERAGED (as min_avg10 counts)."""
    ok = [v for v in list(latencies)[-AVERAGED:] if v is not None]
    return sum(ok) / len(ok) if ok else None


def latency_cell(latencies: Sequence[float | None], which: str) -> Cell:
    """`last` or `avg` of a history: "1.2 ms", "failed" (the last check failed), "—" (never checked)."""
    if not latencies:
        return "—", "dim"
    if which == "last":
        v = latencies[-1]
        return ("failed", "bad") if v is None else (fmt.ms(v * 1000), None)
    avg = average(latencies)
    return ("—", "dim") if avg is None else (fmt.ms(avg * 1000), "dim")


def alive_pieces(n: NodeState) -> Pieces:
    """`v4✓ v6✗`; a family never checked yet shows `·`."""
    out: Pieces = []
    for fam, alive, history in ((4, n.alive4, n.latencies4), (6, n.alive6, n.latencies6)):
        if out:
            out.append((" ", None))
        if not history:
            out.append((f"v{fam}·", "dim"))
        else:
            out.append((f"v{fam}{'✓' if alive else '✗'}", "good" if alive else "bad"))
    return out


@dataclass(frozen=True)
class GroupRow:
    """A group's heading line."""

    group: GroupState
    checking: bool = False


@dataclass(frozen=True)
class NodeRow:
    """A node, under the group it is listed in (None: in no group)."""

    group: str | None
    node: NodeState
    use4: bool = False     # the group sends new IPv4 flows through it
    use6: bool = False
    pinned: bool = False
    checking: bool = False
    scale: Scale = Scale()


def row_key(r: GroupRow | NodeRow) -> tuple[str, ...]:
    if isinstance(r, GroupRow):
        return ("group", r.group.name)
    return ("node", r.group or "", r.node.name)


def group_span(r: GroupRow | NodeRow) -> Pieces | None:
    """A group's heading: name, policy, the node per family, the pin."""
    if not isinstance(r, GroupRow):
        return None
    g = r.group
    out: Pieces = [(g.name, "accent"), (f"  {g.policy}", None),
                   (f" · {len(g.members)} node{'' if len(g.members) == 1 else 's'}", "dim")]
    if g.members:
        # No one node to name: random picks per flow; otherwise no member is alive over the family.
        none: Cell = ("random", "dim") if g.policy == "random" else ("no live node", "bad")
        if g.selected4 == g.selected6:
            out += [(" · IPv4/6 → ", "dim"), (g.selected4, None) if g.selected4 else none]
        else:
            for fam, sel in ((4, g.selected4), (6, g.selected6)):
                out += [(f" · IPv{fam} → ", "dim"), (sel, None) if sel else none]
        if g.pinned:
            out += [(" · pinned ", "dim"), (g.pinned, "warn")]
    else:
        out.append((" · dials directly", "dim"))
    if r.checking:
        out.append(("  checking…", "accent"))
    return out


def node_cell(r: GroupRow | NodeRow, key: str) -> Cell | Pieces:
    if isinstance(r, GroupRow):
        return "", None
    n = r.node
    if key == "name":
        return f"  {n.name}", None if r.group is not None else "dim"
    if key == "use":
        out: Pieces = []
        if r.pinned:
            out.append(("pin", "warn"))
        for fam, used in ((4, r.use4), (6, r.use6)):
            if used:
                out += [(" ", None), (f"v{fam}", "good")] if out else [(f"v{fam}", "good")]
        return out or ("", None)
    if key == "alive":
        return alive_pieces(n)
    if key in ("spark4", "spark6"):
        history = n.latencies4 if key == "spark4" else n.latencies6
        return sparkline(history, r.scale) if history else ("unchecked", "dim")
    if key in ("last4", "avg4", "last6", "avg6"):
        if r.checking and key.startswith("last"):
            return "check…", "accent"   # a check under way (the column holds 7)
        return latency_cell(n.latencies4 if key.endswith("4") else n.latencies6, key[:-1])
    if key == "proto":
        return n.protocol, "dim"
    if key == "address":
        return n.address, "dim"
    if key == "error":
        return n.last_error, "bad"
    return "", None


def build_rows(groups: Sequence[GroupState], nodes: Sequence[NodeState],
               checking: frozenset[str] = frozenset()) -> list[GroupRow | NodeRow]:
    """Each group's heading then its members (in the group's order); nodes in no group last."""
    by_name = {n.name: n for n in nodes}
    scale = Scale.of(nodes)
    rows: list[GroupRow | NodeRow] = []
    listed: set[str] = set()
    for g in groups:
        members = [by_name[m] for m in g.members if m in by_name]
        rows.append(GroupRow(g, g.name in checking))
        for n in members:
            listed.add(n.name)
            rows.append(NodeRow(g.name, n, g.selected4 == n.name, g.selected6 == n.name, g.pinned == n.name,
                                n.name in checking or g.name in checking, scale))
    for n in nodes:
        if n.name not in listed:
            rows.append(NodeRow(None, n, checking=n.name in checking, scale=scale))
    return rows


def family_text(fam: int, history: Sequence[float | None], alive: bool) -> Text:
    """One family of a node, in words: `IPv4 alive · last 1.2 ms · avg 1.4 ms · 12 checks, 1 failed`."""
    if not history:
        return Text.assemble((f"IPv{fam} ", "bold"), ("not checked yet", "dim"))
    failed = sum(1 for v in history if v is None)
    last, _ = latency_cell(history, "last")
    avg, _ = latency_cell(history, "avg")
    return Text.assemble((f"IPv{fam} ", "bold"), ("alive", "green") if alive else ("down", "red"),
                         f" · last {last} · avg {avg} · {len(history)} checks",
                         (f", {failed} failed", "red") if failed else "")


def detail_text(r: GroupRow | NodeRow | None, width: int = 80) -> Text:
    """The lines under the table: the selected row in full, and what the keys do to it."""
    if r is None:
        return Text("no groups or nodes in the config: [node] and [group.NAME] make them", style="dim")
    p = fmt.printable  # node names come from subscriptions, errors from the network: shown, never obeyed
    if isinstance(r, GroupRow):
        g = r.group
        head = Text.assemble((p(g.name), "bold"), f" · policy {p(g.policy)} · ",
                             f"members {p(', '.join(g.members))}" if g.members else "no members: dials directly")
        if g.pinned:
            head.append(f" · pinned to {p(g.pinned)}", "yellow")
        return Text.assemble(head, "\n", ("c checks every member now · p on a member pins it · u unpins", "dim"))
    n = r.node
    where = f"in {p(r.group)}" + (" (pinned)" if r.pinned else "") if r.group else "in no group: not checked"
    v4, v6 = family_text(4, n.latencies4, n.alive4), family_text(6, n.latencies6, n.alive6)
    # Both families on one line where they fit, never one broken in the middle.
    gap = "   " if v4.cell_len + 3 + v6.cell_len <= width else "\n"
    text = Text.assemble((p(n.name), "bold"), f" · {p(n.protocol)} · {p(n.address)} · {where}\n",
                         v4, gap, v6)
    if n.last_error:
        text.append_text(Text.assemble("\n", ("last error ", "dim"), (p(n.last_error), "red")))
    return text


class DialersPane(Pane, Vertical):
    """Proxy groups and nodes as the snapshot tells them; check, pin and unpin through the app."""

    ID = "dialers"
    TITLE = "Dialers"
    FEED = "always"   # a few groups and nodes: cheap, and a check's result is read from here, shown or not
    FOCUS = "#dialers"
    PALETTE = (PaletteEntry("Check every group's nodes now", "as c on a group in Dialers", "check_all"),)

    HELP = """\
### Dialers

The proxy groups (`[group.NAME]`) and nodes (`[node]`, subscriptions). Each
group's line: its policy, the node it sends new flows through over IPv4 and
over IPv6, and its pin. Under it, its members:

- **Use**: `v4` / `v6` the group dials through this node over that family;
  `pin` the node is pinned (it wins while it is alive)
- **Alive**: per family, from the last check (`·` not checked yet)
- **Latency**: the checks (`tcp_check_url` through the node), oldest left, one
  scale for every node so taller is slower; `✗` a failed check
- **Last** / **Avg**: the last check; the mean of the successful ones among the last 10

The line at the bottom shows the selected group or node in full, with its last
error. Checks also run by themselves every `check_interval`.

| key | |
|---|---|
| `c` | check the node now (on a group's line: all of its members) |
| `p` | pin the node in the group it is listed under |
| `u` | unpin the group: its policy picks again |
"""
    DEFAULT_CSS = """
    DialersPane #dialers { height: 1fr; }
    DialersPane #dialers-detail { height: auto; max-height: 5; padding: 0 1; background: $panel; }
    """
    BINDINGS = [
        Binding("c", "check", "Check now"),
        Binding("p", "pin", "Pin"),
        Binding("u", "unpin", "Unpin"),
    ]

    @dataclass
    class CheckRequested(Message):
        """Check these nodes now (a group: all of its members); the app marks them (checks_started) until
        the daemon has (checks_done)."""

        names: list[str]

    @dataclass
    class PinRequested(Message):
        """Pin `group` to `node` (None: unpin it)."""

        group: str
        node: str | None

    def __init__(self) -> None:
        super().__init__()
        self.table = VirtualTable(COLUMNS, node_cell, row_key=row_key, span=group_span, id="dialers")
        self.table.empty_text = "no proxy groups or nodes: add [node] links and [group.NAME] sections"
        self.groups: tuple[GroupState, ...] = ()
        self.nodes: tuple[NodeState, ...] = ()
        self.checking: dict[str, int] = {}   # name -> checks of it under way (a group or a node)

    def compose(self) -> ComposeResult:
        yield self.table
        yield Static("", id="dialers-detail")

    def on_mount(self) -> None:
        self.watch(self.table, "cursor", self._show_detail)

    # -- from the snapshot --------------------------------------------------------------------
    def update(self, snapshot: Snapshot) -> None:
        self.update_state(snapshot.groups, snapshot.nodes)

    def update_state(self, groups: tuple[GroupState, ...], nodes: tuple[NodeState, ...]) -> None:
        self.groups, self.nodes = groups, nodes
        self._redraw()

    def _redraw(self) -> None:
        self.table.set_rows(build_rows(self.groups, self.nodes, frozenset(self.checking)))
        self._show_detail()

    def _show_detail(self, _cursor: int | None = None) -> None:
        width = max(20, self.size.width - 2)
        show_text(self.query_one("#dialers-detail", Static), detail_text(self.table.current, width))

    def on_resize(self) -> None:
        self._show_detail()

    @property
    def current(self) -> GroupRow | NodeRow | None:
        return self.table.current

    # -- keys --------------------------------------------------------------------------------
    def action_check(self) -> None:
        row = self.current
        if row is None:
            return
        name = row.group.name if isinstance(row, GroupRow) else row.node.name
        if isinstance(row, NodeRow) and row.group is None:
            self.app.notify(f"{name} is in no group: nothing dials through it", severity="warning")
            return
        if isinstance(row, GroupRow) and not row.group.members:
            self.app.notify(f"{name} has no nodes: it dials directly", severity="warning")
            return
        if name in self.checking:
            self.app.notify(f"{name}: a check is under way")
            return
        self.post_message(self.CheckRequested([name]))

    def action_check_all(self) -> None:
        """Every group's nodes, now (the palette's)."""
        if not self.groups:
            self.app.notify("no proxy groups in the config", severity="warning")
            return
        self.post_message(self.CheckRequested([g.name for g in self.groups]))

    def action_pin(self) -> None:
        row = self.current
        if isinstance(row, GroupRow):
            self.app.notify("Pin a node: move to one of the group's members, then p.", severity="warning")
            return
        if row is None:
            return
        if row.group is None:
            self.app.notify(f"{row.node.name} is in no group: there is nothing to pin it in", severity="warning")
            return
        if row.pinned:
            self.app.notify(f"{row.group} is already pinned to {row.node.name} (u unpins)")
            return
        self.post_message(self.PinRequested(row.group, row.node.name))

    def action_unpin(self) -> None:
        row = self.current
        group = row.group.name if isinstance(row, GroupRow) else row.group if row is not None else None
        if group is None:
            return
        if not any(g.name == group and g.pinned for g in self.groups):
            self.app.notify(f"{group} is not pinned")
            return
        self.post_message(self.PinRequested(group, None))

    # -- checks under way (the app's worker says when they end) --------------------------------------
    def checks_started(self, name: str) -> None:
        self.checking[name] = self.checking.get(name, 0) + 1
        self._redraw()

    def checks_done(self, name: str) -> None:
        left = self.checking.get(name, 0) - 1
        if left > 0:
            self.checking[name] = left
        else:
            self.checking.pop(name, None)
        self._redraw()

    def summary(self, name: str) -> str:
        """What a finished check found, for the notification: per node, per family."""
        group = next((g for g in self.groups if g.name == name), None)
        nodes = {n.name: n for n in self.nodes}
        if group is not None:
            members = [nodes[m] for m in group.members if m in nodes]
            alive4 = sum(1 for n in members if n.latencies4 and n.alive4)
            alive6 = sum(1 for n in members if n.latencies6 and n.alive6)
            return f"{name}: {alive4} of {len(members)} alive over IPv4, {alive6} over IPv6"
        n = nodes.get(name)
        if n is None:
            return f"{name}: checked"
        parts = []
        for fam, history in ((4, n.latencies4), (6, n.latencies6)):
            last, _ = latency_cell(history, "last")
            parts.append(f"IPv{fam} {last}")
        text = f"{name}: " + ", ".join(parts)
        return text + (f" ({n.last_error})" if n.last_error else "")
