"""Overview: interfaces and their programs, throughput, the daemon's health, kernel counters."""

from __future__ import annotations

from collections import deque

from rich.cells import cell_len
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Sparkline, Static

from daetui.control.state import InterfaceInfo, Snapshot
from daetui.ui import fmt
from daetui.ui.panes.base import Pane, show_text

COUNTER_ORDER = [
    ("PACKETS", "packets in"), ("NEW_FLOWS", "new flows"), ("DECIDED_DIRECT", "→ direct"),
    ("DECIDED_BLOCK", "→ block"), ("DECIDED_GROUP", "→ groups"), ("TO_CONTROL", "handed over"),
    ("FAIL_OPEN", "fail-open"), ("UNTRACKED_TCP", "older TCP"), ("NON_UNICAST", "bcast/mcast"),
    ("NOT_IP", "not IP"), ("FRAGMENT", "fragments"), ("UNPARSED", "unparsed"), ("OTHER_L4", "other L4"),
    ("ASSIGN_ERROR", "assign err"), ("CHUNK_LIMIT", "rule limit"), ("EGRESS_PACKETS", "packets out"),
    ("STALLED", "stalled"), ("ORPHAN_TO_SOCKET", "orphan→socket"), ("ORPHAN_DROPPED", "orphan dropped"),
    ("RELAYED_FULL", "relayed full"), ("V4_MAPPED_V6", "v4-mapped v6"), ("DIRECT_HELD", "direct, tuple held"),
    # The router's own traffic (wan_egress, daetui0):
    ("OWN_PACKETS", "own packets"), ("OWN_TO_CONTROL", "own handed over"), ("OWN_BYPASS", "own passed (mark)"),
    ("OWN_SERVER", "own UDP server"), ("OWN_LOST", "own lost"),
]


class OverviewPane(Pane, VerticalScroll):
    """The router at a glance."""

    ID = "overview"
    TITLE = "Overview"
    FEED = "always"   # the throughput history needs every snapshot

    HELP = """\
### Overview

**Interfaces**: every interface of daetui's network namespace, its side (LAN:
named in `lan_interface`, its clients' flows; WAN: named in `wan_interface`, the
router's own flows) with the pattern of the config that named it when it is not
its name (`veth*`, `auto`), what is bound to it (`lan_ingress` on ingress,
`lan_egress` on egress; `wan_egress` on a WAN interface's egress) and since when,
the packets and bytes the programs saw, and interfaces named in the config that
are not there (they are bound as soon as they appear).

**Throughput**: bytes per second through the bound interfaces, one bar per refresh.

**Daemon**: process, uptime, config, rules, kernel counters. Unparsed, fragments
and the like are packets daetui passed untouched.

**Budgets**: relayed flows against `max_flows` and the busiest LAN client against
`max_flows_per_client` (flows refused for either, in red), descriptors against the
limit, splice pipes, flows ended by `tcp_idle_timeout`, UDP bytes held for proxies
against `udp_buffer_bytes` (and datagrams dropped), and how late the event loop
ran what was due (p99 over the last minute).
"""

    def __init__(self) -> None:
        super().__init__()
        self.history: deque[float] = deque(maxlen=120)
        self._last: tuple[float, int] | None = None
        self._snap: Snapshot | None = None

    def on_resize(self) -> None:
        # Which interface columns fit depends on the width: the first snapshot may come before the pane
        # has one, and a terminal may be resized between snapshots.
        if self._snap is not None:
            show_text(self.query_one("#ov-interfaces", Static), self._interfaces(self._snap))

    def compose(self) -> ComposeResult:
        yield Static("", id="ov-interfaces", classes="box")
        with Horizontal(id="ov-row"):
            with VerticalScroll(id="ov-left", classes="box"):
                yield Static("", id="ov-rate")
                yield Sparkline([0.0], summary_function=max, id="ov-spark")
            yield Static("", id="ov-health", classes="box")
        yield Static("", id="ov-counters", classes="box")

    def update(self, snap: Snapshot) -> None:
        self._snap = snap
        show_text(self.query_one("#ov-interfaces", Static), self._interfaces(snap))
        show_text(self.query_one("#ov-health", Static), self._health(snap))
        show_text(self.query_one("#ov-counters", Static), self._counters(snap))
        total = sum(i.rx_bytes + i.tx_bytes for i in snap.interfaces if i.bound)
        if self._last is not None and snap.time > self._last[0]:
            self.history.append(max(0.0, (total - self._last[1]) / (snap.time - self._last[0])))
        self._last = (snap.time, total)
        spark = self.query_one("#ov-spark", Sparkline)
        # A sparkline of one flat value draws as a solid block: wait for two samples.
        spark.display = len(self.history) >= 2
        spark.data = list(self.history) or [0.0]
        now_rate = self.history[-1] if self.history else 0.0
        peak = max(self.history) if self.history else 0.0
        if len(self.history) < 2:
            rate_text = Text.assemble(("Throughput ", "bold"), "(gathering samples)")
        else:
            rate_text = Text.assemble(("Throughput ", "bold"), f"{fmt.rate(now_rate) or '0 B/s'} now, ",
                                      f"peak {fmt.rate(peak) or '0 B/s'} over {len(self.history)} s")
        show_text(self.query_one("#ov-rate", Static), rate_text)

    def _interfaces(self, snap: Snapshot) -> Table:
        rows: list[list[str | Text]] = []   # the wide table's cells: narrow leaves out since and packets
        short: list[str] = []                # and names the programs without their hooks
        for i in snap.interfaces:
            if i.bound:
                state = Text("bound", style="green")
            elif i.configured:
                state = Text("not bound", style="yellow")
            else:
                state = Text("—", style="dim")
            programs = ", ".join(i.programs) if i.programs else ("" if i.configured else "not configured")
            short.append(", ".join(p.split(" ")[0] for p in i.programs) if i.programs else programs)
            # Interface names are anyone's with CAP_NET_ADMIN (a container's veth): Texts, controls escaped,
            # never markup.
            rows.append([fmt.safe(i.name + ("" if i.up else " (down)")), self._side(i), state, programs,
                         fmt.clock(i.since) if i.since else "", fmt.count(i.rx_packets) if i.bound else "",
                         fmt.size(i.rx_bytes) if i.bound else "", fmt.count(i.tx_packets) if i.bound else "",
                         fmt.size(i.tx_bytes) if i.bound else ""])
        for name in snap.missing_interfaces:
            rows.append([fmt.safe(name), "", Text("missing", style="red"), "not present; bound when it appears",
                         *[""] * 5])
            short.append("not present; bound when it appears")
        titles = ["Name", "Side", "State", "Programs", "Since", "In pkts", "In", "Out pkts", "Out"]
        # Since and packets where every column fits whole beside them (padding: a cell each side).
        need = sum(max(cell_len(str(c)) for c in col) + 2 for col in zip(titles, *rows, strict=True))
        wide = need <= self.query_one("#ov-interfaces", Static).content_size.width
        keep = range(9) if wide else (0, 1, 2, 3, 6, 8)
        t = Table(title="Interfaces", title_justify="left", expand=True, box=None, padding=(0, 1))
        for k in keep:
            if k == 3:
                t.add_column(titles[k], ratio=1, overflow="fold")
            else:
                t.add_column(titles[k], justify="right" if k > 4 else "left", no_wrap=True)
        for r, programs in zip(rows, short, strict=True):
            if not wide:
                r[3] = programs
            t.add_row(*(r[k] for k in keep))
        return t

    @staticmethod
    def _side(i: InterfaceInfo) -> Text:
        """`LAN`, `WAN`, and the config's pattern that named it when not its name: `WAN (auto)`."""
        if not (i.configured or i.bound):
            return Text("")
        side = Text(i.side.upper())
        if i.matched:
            side.append_text(fmt.safe(f" ({i.matched})", style="dim"))
        return side

    def _health(self, snap: Snapshot) -> Text:
        h = snap.health
        up = fmt.duration(snap.time - h.started) if h.started else "starting"
        enabled = sum(1 for r in snap.rules if r.enabled)
        lines = [
            ("Daemon ", "bold"), f"pid {h.pid} · up {up}\n",
            "config ", (h.config, "italic"), "\n",
            f"rules {enabled}/{len(snap.rules)} on · {h.match_sets} match sets · gen {h.generation}\n",
            f"fallback {h.fallback} ({fmt.count(snap.fallback_hits)} hits)\n",
            f"tproxy :{h.tproxy_port} {'/'.join(h.listeners) or 'no listeners'}\n",
            f"fail-{'open' if h.fail_open else 'closed'} · kernel programs loaded in {h.kernel_load_seconds:.1f}s\n",
            f"relayed {fmt.count(snap.total_connections)} total · UDP NAT {snap.udp_nat_entries}\n",
            *self._api(snap),
        ]
        return Text.assemble(*lines, *self._budgets(snap))

    @staticmethod
    def _api(snap: Snapshot) -> list[str | tuple[str, str] | Text]:
        """The controller API: off, where it listens and who is attached, or why it does not listen."""
        a = snap.api
        if not a.address:
            return ["controller API off\n"]
        if a.error:
            return [("controller API: ", "bold"), fmt.safe(a.error, style="red"), "\n"]
        refused = f", {fmt.count(a.unauthorized)} refused" if a.unauthorized else ""
        dropped = f" · {fmt.count(a.dropped)} dropped" if a.dropped else ""
        return [f"API http://{a.address} · {a.clients} streams · {fmt.count(a.requests)} requests{refused}{dropped}\n"]

    @staticmethod
    def _budgets(snap: Snapshot) -> list[str | tuple[str, str]]:
        b = snap.budgets
        refused = b.refused + b.refused_client
        udp_dropped = b.udp_buffer_drops + b.udp_refused + b.udp_open_failed
        busiest = f" · busiest {b.busiest_client} {b.busiest_flows}/{b.max_flows_per_client}" if b.busiest_flows else ""
        workers: list[str | tuple[str, str]] = [
            (f"\nrelay workers {b.workers_live}/{b.workers} live · ended {b.worker_deaths}",
             "yellow" if b.workers_live < b.workers else "")] if b.workers else []
        return [
            ("Budgets ", "bold"), f"flows {fmt.count(b.flows)}/{fmt.count(b.max_flows)}{busiest}\n",
            ((f"refused {fmt.count(b.refused_client)} over a client's budget, {fmt.count(b.refused)} overall"
              f" (last {b.last_refused})\n"), "red") if refused else "refused none\n",
            f"fds {fmt.count(b.fds)}/{fmt.count(b.fd_limit)} · pipes {b.pipes}/{b.pipe_bound}"
            f" · idle-closed {fmt.count(b.idle_closed)}\n",
            (f"UDP held {fmt.size(b.udp_buffered) or '0 B'}/{fmt.size(b.udp_buffer_limit)}"
             f" · dropped {fmt.count(udp_dropped)}\n", "yellow" if udp_dropped else ""),
            f"loop lag p99 {b.loop_lag_p99_ms:.1f} ms (max {b.loop_lag_max_ms:.1f})",
            *workers,
        ]

    def _counters(self, snap: Snapshot) -> Table:
        t = Table(title="Kernel counters", title_justify="left", expand=True, box=None, padding=(0, 1),
                  show_header=False)
        for _ in range(4):
            t.add_column(no_wrap=True)
            t.add_column(justify="right", no_wrap=True)
        cells: list[str] = []
        for key, label in COUNTER_ORDER:
            cells += [label, fmt.count(snap.counters.get(key, 0))]
        for i in range(0, len(cells), 8):
            t.add_row(*cells[i:i + 8])
        return t
