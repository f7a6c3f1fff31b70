"""DNS: the controller's cache, its upstreams and counters; resolve a name, flush the cache."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Static

from daetui.control.state import Snapshot
from daetui.dns.state import DnsCacheRow, DnsState, DnsTrace, DnsUpstreamRow
from daetui.ui import fmt
from daetui.ui.panes.base import PaletteEntry, Pane
from daetui.ui.widgets.filterline import leave_filter, open_filter
from daetui.ui.widgets.vtable import Cell, Column, VirtualTable

# At 80 columns everything but the route (enter shows it); from about 120, the route too.
CACHE_COLUMNS = [
    Column("name", "Name", 24, min_width=16, flex=2),
    Column("type", "Type", 5),
    Column("answers", "Answers", 22, min_width=14, flex=2),
    Column("ttl", "TTL", 6, align="right"),
    Column("upstream", "Upstream", 10, min_width=8),
    Column("hits", "Hits", 5, align="right", priority=1),
    Column("route", "Route", 40, flex=3, priority=2),
]

# At 80 columns: name, URL, route, queries, errors, last latency; wider: timeouts (a part of the errors),
# average latency, address, last error.
UPSTREAM_COLUMNS = [
    Column("name", "Upstream", 8),
    Column("url", "URL", 22, min_width=14, flex=1),
    Column("address", "Address", 15, priority=4),
    Column("route", "Route", 18, min_width=12, flex=1, priority=1),
    Column("queries", "Queries", 7, align="right"),
    Column("errors", "Errors", 6, align="right"),
    Column("timeouts", "T/outs", 6, align="right", priority=2),
    Column("last", "Last", 8, align="right"),
    Column("avg", "Avg", 8, align="right", priority=3),
    Column("error", "Last error", 20, flex=1, priority=5),
]

# What `name type` may say first, for people who type `AAAA example.com`.
QTYPES = {"A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "HTTPS", "SVCB", "CAA", "ANY"}
MAX_UPSTREAM_LINES = 5
MAX_ANSWERS_SHOWN = 6  # of a lookup: the route must stay in sight (big.example.test has 40)


def cache_cell(r: DnsCacheRow, key: str) -> Cell:
    if key == "name":
        return r.name, None
    if key == "type":
        return r.qtype, "dim"
    if key == "answers":
        if r.rcode != "NOERROR":
            return r.rcode, "bad"
        if r.negative:
            return f"NODATA (no {r.qtype})", "warn"
        return ", ".join(r.answers), None
    if key == "ttl":
        # The last seconds of an entry: it is about to be asked again.
        return fmt.ttl(r.ttl_left), "warn" if r.ttl_left < 5 else None
    if key == "upstream":
        return r.upstream, None
    if key == "hits":
        return str(r.hits), "dim" if not r.hits else None
    if key == "route":
        return r.route, "dim"
    return "", None


def upstream_cell(u: DnsUpstreamRow, key: str) -> Cell:
    if key == "name":
        return u.name, None
    if key == "url":
        return u.url, "dim"
    if key == "address":
        return (u.address or "—"), "dim"
    if key == "route":
        return (u.route or "—"), "dim"
    if key == "queries":
        return fmt.count(u.queries), None
    if key == "errors":
        return fmt.count(u.errors), "bad" if u.errors else "dim"
    if key == "timeouts":
        return fmt.count(u.timeouts), "warn" if u.timeouts else "dim"
    if key == "last":
        return fmt.ms(u.last_ms), None
    if key == "avg":
        return fmt.ms(u.avg_ms), None
    if key == "error":
        return u.last_error, "bad"
    return "", None


def parse_query(text: str) -> tuple[str, str]:
    """`name [type]` (or `type name`) -> (name, type); ValueError when it is neither."""
    words = text.split()
    if not words or len(words) > 2:
        raise ValueError("type a name, and a record type if not A: www.example.com AAAA")
    if len(words) == 1:
        return words[0], "A"
    if words[0].upper() in QTYPES and words[1].upper() not in QTYPES:
        words.reverse()
    return words[0], words[1].upper()


def _some(answers: tuple[str, ...]) -> str:
    text = fmt.printable(", ".join(answers[:MAX_ANSWERS_SHOWN]))
    if len(answers) > MAX_ANSWERS_SHOWN:
        text += f" … and {len(answers) - MAX_ANSWERS_SHOWN} more"
    return text


def trace_text(t: DnsTrace) -> Text:
    """A lookup's answer and the way it went, as the pane shows it (names and answers escaped: the network
    wrote them)."""
    p = fmt.printable
    head = Text.assemble((p(t.name), "bold"), f" {p(t.qtype)} ")
    if t.error:
        return Text.assemble(head, ("failed: ", "red"), p(t.error))
    good = t.rcode == "NOERROR" and t.answers
    head.append(p(t.rcode) or "no answer", "green" if good else "red" if t.rcode != "NOERROR" else "yellow")
    head.append("  " + (_some(t.answers) if t.answers else "(no records)"))
    where = "from the cache" if t.cached else f"asked {p(t.upstream)}" if t.upstream else "not asked upstream"
    facts = [where, f"{t.elapsed_ms:.1f} ms"]
    if t.ttl:
        facts.append(f"TTL {fmt.ttl(t.ttl)}")
    return Text.assemble(head, "\n", " · ".join(facts), "\n", ("route ", "dim"), p(t.route) or "—")


def entry_text(r: DnsCacheRow) -> Text:
    """A cache entry in full (enter on its row)."""
    p = fmt.printable
    answers = _some(r.answers) or ("NODATA" if r.rcode == "NOERROR" else p(r.rcode))
    return Text.assemble((p(r.name), "bold"), f" {p(r.qtype)} {p(r.rcode)}  {answers}\n",
                         f"cached {fmt.clock(r.stored)} for {fmt.ttl(r.ttl)} · {fmt.ttl(r.ttl_left)} left · "
                         f"{r.hits} hits · from {p(r.upstream)}\n", ("route ", "dim"), p(r.route) or "—")


class DnsPane(Pane, Vertical):
    """The DNS controller as the snapshot tells it, and a query box that asks it."""

    ID = "dns"
    TITLE = "DNS"
    FOCUS = "#dns-cache"
    PALETTE = (
        PaletteEntry("Resolve a name through daetui's DNS", "as l in DNS", "query", show=True),
        PaletteEntry("Flush the DNS cache", "as f in DNS: asks first", "flush"),
    )

    HELP = """\
### DNS

daetui's DNS controller: the LAN's port-53 queries are hijacked in the kernel to
it; it answers from its cache or asks an upstream chosen by `[dns] request`, and
tells the kernel which address is which name before the answer leaves.

**Cache**: every cached answer with its remaining TTL (counting down), the upstream
that gave it and how often it was served since. NXDOMAIN and NODATA answers are
cached too (marked). `enter` shows an entry's route: request rule, upstream and
how the routing rules send it, response rule.

**Upstreams**: queries, errors, timeouts, last and average latency, and how the
routing rules route the connection to each.

**Counters** (the line under the upstreams): the controller's queries, cache hits
and misses, and what its bounds held off. With `dns.kernel_answers` on: the
queries the LAN program answered itself (they never reach the controller) and
those it passed on, by reason (miss, expired, an entry from before a reload,
EDNS options it cannot keep, not a plain query, ...).

**Query box**: `name [type]`, `enter` resolves it through the controller as a LAN
client would (so the answer is cached and named in the kernel too) and shows the
answer and the way it went.

| key | |
|---|---|
| `l` | to the query box (`esc` back to the cache) |
| `enter` | in the box: resolve; on a cache row: its details |
| `/` | show only entries containing a text |
| `f` | flush the cache (asks first; the kernel's names stay until their TTL) |
"""
    DEFAULT_CSS = """
    DnsPane #dns-answer { height: auto; max-height: 6; padding: 0 1; }
    DnsPane .dns-section { height: 1; padding: 0 1; background: $panel; text-style: bold; }
    DnsPane #dns-cache { height: 1fr; }
    DnsPane #dns-upstreams { height: 2; }
    DnsPane #dns-counters { height: auto; padding: 0 1; color: $text-muted; background: $panel; }
    """
    BINDINGS = [
        Binding("l", "query", "Lookup"),
        Binding("f", "flush", "Flush"),
        Binding("slash", "filter", "Filter", show=False),
    ]

    @dataclass
    class LookupRequested(Message):
        """Resolve `name` through the daemon's DNS (the app's worker calls show_trace or show_error)."""

        name: str
        qtype: str = "A"

    class FlushRequested(Message):
        """`f`: empty the daemon's DNS cache, once the operator confirms."""

    def __init__(self) -> None:
        super().__init__()
        self.cache = VirtualTable(CACHE_COLUMNS, cache_cell, row_key=lambda r: (r.name, r.qtype), id="dns-cache")
        self.cache.empty_text = "the cache is empty: no answers yet (or flushed)"
        self.upstreams = VirtualTable(UPSTREAM_COLUMNS, upstream_cell, row_key=lambda u: u.name,
                                      id="dns-upstreams")
        self.upstreams.empty_text = "no upstream asked yet"
        self.state: DnsState | None = None
        self.text_filter = ""
        self.shown: list[DnsCacheRow] = []
        self._counters: list[str] = []

    def compose(self) -> ComposeResult:
        yield Input(placeholder="resolve: name [type], enter — through daetui's DNS, as a LAN client would",
                    id="dns-query")
        yield Static("", id="dns-answer", classes="hidden")
        yield Static("Cache", id="dns-cache-title", classes="dns-section")
        yield self.cache
        yield Input(placeholder="show entries containing…", id="dns-filter", classes="hidden")
        yield Static("Upstreams", classes="dns-section")
        yield self.upstreams
        yield Static("", id="dns-counters")

    # -- from the snapshot --------------------------------------------------------------------
    def update(self, snapshot: Snapshot) -> None:
        self.update_state(snapshot.dns)

    def update_state(self, state: DnsState | None) -> None:
        self.state = state
        counters = self.query_one("#dns-counters", Static)
        if state is None:
            self.cache.empty_text = "the daemon sent no DNS state"
            self.cache.set_rows([])
            self.upstreams.set_rows([])
            self._counters = []
            counters.update("")
            return
        self.cache.empty_text = "the cache is empty: no answers yet (or flushed)"
        # Newest first: what was just asked is at the top.
        rows = sorted(state.cache, key=lambda r: r.stored, reverse=True)
        if self.text_filter:
            s = self.text_filter.lower()
            rows = [r for r in rows if s in r.name.lower() or any(s in a.lower() for a in r.answers)
                    or s in r.upstream.lower()]
        self.shown = rows
        self.cache.set_rows(rows)
        title = f"Cache  {state.cached} of {state.cache_size} entries"
        if self.text_filter:
            title += f" · {len(rows)} containing {fmt.markup(repr(self.text_filter))}"
        elif len(state.cache) < state.cached:
            title += f" · newest {len(state.cache)} shown"
        self.query_one("#dns-cache-title", Static).update(title)
        self.upstreams.set_rows(list(state.upstreams))
        self.upstreams.styles.height = 1 + max(1, min(len(state.upstreams), MAX_UPSTREAM_LINES))
        c = state.counters
        parts = [("queries", c.queries), ("cache hits", c.cache_hits), ("misses", c.cache_misses),
                 ("shared", c.shared), ("rejected", c.rejected), ("servfail", c.servfail),
                 ("malformed", c.malformed), ("bad answers", c.bad_answers), ("kernel names", c.kernel_names)]
        self._counters = [f"{label} {fmt.count(n)}" for label, n in parts]
        # What the bounds held off (issue 11): shown once it happened, so a quiet LAN's line stays short.
        s = state.serving
        if s.tcp_open:
            self._counters.append(f"tcp open {fmt.count(s.tcp_open)}/{fmt.count(s.tcp_max)}")
        bounded = [("kept for the server asked", c.asis_scoped), ("kernel names evicted", c.kernel_evicted),
                   ("udp dropped", s.udp_dropped),
                   ("udp cut", s.udp_truncated), ("tcp refused", s.tcp_refused), ("tcp evicted", s.tcp_evicted),
                   ("tcp idle closed", s.tcp_idle_closed), ("tcp write timeouts", s.tcp_write_timeouts)]
        self._counters += [f"{label} {fmt.count(n)}" for label, n in bounded if n]
        # dns.kernel_answers: what the LAN program answered itself, and why it handed the rest on (most first).
        if c.kernel_answered or c.kernel_handed_over:
            self._counters.append(f"kernel answered {fmt.count(c.kernel_answered)}")
            why = sorted(c.kernel_handed_over, key=lambda kv: -kv[1])
            self._counters += [f"kernel passed on ({reason.lower().replace('_', ' ')}) {fmt.count(n)}"
                               for reason, n in why]
        counters.update(self._counter_lines())

    def _counter_lines(self) -> str:
        """The counters joined by ` · `, broken between two counters, never inside one."""
        width = max(20, self.size.width - 2)
        lines: list[str] = []
        for item in self._counters:
            if lines and len(lines[-1]) + 3 + len(item) <= width:
                lines[-1] += " · " + item
            else:
                lines.append(item)
        return "\n".join(lines)

    def on_resize(self) -> None:
        self.query_one("#dns-counters", Static).update(self._counter_lines())

    # -- the query box ------------------------------------------------------------------------
    def action_query(self) -> None:
        self.query_one("#dns-query", Input).focus()

    @on(Input.Submitted, "#dns-query")
    def _lookup(self, event: Input.Submitted) -> None:
        try:
            name, qtype = parse_query(event.value)
        except ValueError as e:
            self._answer(fmt.safe(e, style="yellow"))
            return
        self._answer(Text.assemble((fmt.printable(name), "bold"), f" {fmt.printable(qtype)}: asking…", style="dim"))
        self.post_message(self.LookupRequested(name, qtype))

    def show_trace(self, trace: DnsTrace) -> None:
        """The answer to the last lookup (called by the app's worker)."""
        self._answer(trace_text(trace))

    def show_error(self, text: str) -> None:
        self._answer(fmt.safe(text, style="red"))

    def _answer(self, text: Text) -> None:
        box = self.query_one("#dns-answer", Static)
        box.update(text)
        box.remove_class("hidden")

    @on(VirtualTable.Selected, "#dns-cache")
    def _selected(self, event: VirtualTable.Selected) -> None:
        self._answer(entry_text(event.row))

    # -- filter, flush ------------------------------------------------------------------------
    def action_filter(self) -> None:
        open_filter(self.query_one("#dns-filter", Input))

    @on(Input.Changed, "#dns-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.text_filter = event.value.strip()
        self.update_state(self.state)

    @on(Input.Submitted, "#dns-filter")
    def _filter_done(self) -> None:
        self.cache.focus()

    def leave_filter(self) -> bool:
        query = self.query_one("#dns-query", Input)
        if query.has_focus:
            self.cache.focus()
            return True
        return leave_filter(self.query_one("#dns-filter", Input), self.cache)[0]

    def action_flush(self) -> None:
        self.post_message(self.FlushRequested())
