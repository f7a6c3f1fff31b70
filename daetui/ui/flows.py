"""The Connections pane's rows: kernel flows and relayed connections as one list.

A flow the kernel forwards or drops exists only in `routing_tuples`; a flow
the control plane relays exists there too (its kernel decision) and in the
connection table (its relay). Each becomes one row; a relayed flow takes its
byte counts from the relay. Rates come from the change since the last
snapshot. Filtering and sorting happen here, in the console's process.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

from daetui.abi.constants import ABI
from daetui.abi.flowrecord import relayed
from daetui.control.state import Snapshot
from daetui.termtext import printable

UDP_IDLE = 60.0  # a UDP flow with no packet for this long shows as idle

RowKey = tuple[str, str, int, str, int]  # proto, src, sport, dst, dport
CLOSED_STATES = frozenset(("closed", "failed", "blocked", "idle"))   # FlowRow.closed


@dataclass(slots=True)
class FlowRow:
    """One line of the Connections pane."""

    key: RowKey
    start: float
    proto: str
    src: str
    sport: int
    mac: str
    device: str
    dst: str
    dport: int
    domain: str
    rule_index: int | None
    rule: str
    stage: str           # "kernel" | "userspace"
    outbound: str
    path: str            # "kernel" (forwarded/dropped there) | "relay" (through the control plane)
    up: int
    down: int
    state: str           # "open" | "closed" | "idle" | "blocked" | "failed"
    last: float
    conn_id: int | None = None
    error: str = ""
    up_rate: float = 0.0
    down_rate: float = 0.0
    packets: int = 0
    rx_packets: int = 0
    ifindex: int = 0
    flags: int = 0
    generation: int = 0
    packets_seen: float = 0.0   # when the kernel last saw a packet of it
    node: str = ""              # the proxy node its group dialed through ("" direct, or not relayed)
    pid: int = 0                # the router's own flows: the process that opened it
    process: str = ""           # and its name, as pname() matches it ("" for a LAN client's flow)

    @property
    def rule_label(self) -> str:
        return "fallback" if self.rule_index is None else f"#{self.rule_index + 1}"

    @property
    def process_label(self) -> str:
        """`curl[4242]` for the router's own flows, "" for a LAN client's (raw: escape it to show it)."""
        if not self.process:
            return ""
        return f"{self.process}[{self.pid}]" if self.pid else self.process

    @property
    def duration(self) -> float:
        return max(0.0, self.last - self.start)

    @property
    def closed(self) -> bool:
        return self.state in CLOSED_STATES


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b) if any(b) else ""


_row_values = operator.attrgetter(*(f.name for f in fields(FlowRow)))


def _copy(row: FlowRow) -> FlowRow:
    """A copy of a row (a fifth of copy.copy's time for a slotted dataclass)."""
    return FlowRow(*_row_values(row))


class FlowBook:
    """Builds rows from successive snapshots, remembering what it needs for rates.

    A kernel entry keeps its row from one snapshot to the next while its stable key holds
    (RawFlows.stable_keys: its key, first-seen and value but for the counters): the row is
    brought up to date in place from the counters, read for every entry at once
    (RawFlows.column), and decoded again only when more than its counters changed. With
    10 000 flows carrying packets that is one lookup and a few stores per flow per refresh.
    A kernel row is never changed by a relayed connection: the row shown for a relayed flow
    is a copy of it with the relay's view over it, made anew each refresh. (Kept rows move
    while the table may be drawing them, as the refresh is built off the UI's thread: the
    table draws them again once the refresh lands.)
    """

    def __init__(self) -> None:
        # The kernel's rows, by stable key and by row key.
        self._kernel: dict[bytes, FlowRow] = {}
        self._by_key: dict[RowKey, FlowRow] = {}
        # What labels the kernel rows were made with: when they change, every entry is read again.
        self._labels: tuple[dict[int, str], dict[int, str], dict[str, str]] | None = None
        # The last refresh's time, and the bytes (up, down) then shown at the keys a relayed connection
        # touched: every other key showed its kernel row, whose own counters are the ones to compare with.
        self._time: float | None = None
        self._relayed: dict[RowKey, tuple[int, int]] = {}

    def rows(self, snap: Snapshot) -> list[FlowRow]:
        now = snap.time
        dt = now - self._time if self._time is not None else 0.0
        ckeys = [(c.proto, c.src[0], c.src[1], c.dst[0], c.dst[1]) for c in snap.connections]
        # Rates compare a key's bytes with those shown at that key last time. At keys that showed (or will
        # show) a relayed connection's row, those are not the kernel row's own: found here, before the
        # kernel rows move on.
        before = dict(self._relayed)
        for key in ckeys:
            if key not in before and (kr := self._by_key.get(key)) is not None:
                before[key] = (kr.up, kr.down)
        kernel = self._kernel_rows(snap, dt, before)

        # The relayed connections: over the kernel's row of the flow (a copy), or a row of their own.
        kernel_at = self._by_key   # (as _kernel_rows left it)
        touched: dict[RowKey, FlowRow] = {}
        for c, key in zip(snap.connections, ckeys, strict=True):
            row = touched.get(key)
            if row is None:
                row = kernel_at.get(key)
                if row is not None and not row.start > c.started + 1:
                    row = _copy(row)
            state = c.state if c.state != "open" else "open"
            if row is None or row.start > c.started + 1:
                mac = c.mac or ""
                row = FlowRow(
                    key=key, start=c.started, proto=c.proto, src=c.src[0], sport=c.src[1], mac=mac,
                    device=snap.devices.get(mac, ""), dst=c.dst[0], dport=c.dst[1], domain="",
                    rule_index=c.rule_index, rule=c.rule if c.rule_index is not None else "", stage=c.stage,
                    outbound=c.outbound, path="relay",
                    up=0, down=0, state=state, last=now)
            row.conn_id = c.id
            row.start = c.started
            row.stage = c.stage
            row.up, row.down = c.up, c.down
            row.path = "relay"
            row.state = state
            row.error = c.error or ""
            row.node = c.node or ""
            if c.process:   # the router's own flow: the socket hook's record, over the kernel entry's
                row.pid, row.process = c.pid or 0, c.process
            row.domain = c.domain or ""   # sniffed from its first bytes (TLS SNI, HTTP Host, QUIC)
            row.last = c.ended if c.ended else now
            touched[key] = row

        # Rates where the kernel rows' own could not tell: at the keys relayed now or last time. Then the
        # rows in the order of the kernel's table, a relayed flow's in its kernel row's place; after them
        # the relayed flows the kernel no longer holds, in the connections' order.
        relayed: dict[RowKey, tuple[int, int]] = {}
        over: dict[int, FlowRow] = {}
        alone: list[FlowRow] = []
        for key, row in touched.items():
            _rate(row, before.get(key), dt)
            relayed[key] = (row.up, row.down)
            kr = kernel_at.get(key)
            if kr is None:
                alone.append(row)
            else:
                over[id(kr)] = row
        for key, seen in self._relayed.items():
            if key not in relayed and (kr := kernel_at.get(key)) is not None:
                _rate(kr, seen, dt)
        self._relayed, self._time = relayed, now
        out = list(map(over.get, map(id, kernel), kernel)) if over else kernel
        out += alone
        return out

    def _kernel_rows(self, snap: Snapshot, dt: float, before: dict[RowKey, tuple[int, int]]) -> list[FlowRow]:
        """The kernel's rows in its table's order, brought up to date; rates as against each row's own bytes
        (the keys in `before` are set right by the caller)."""
        raw = snap.raw_flows
        if raw is None or not raw.count:
            self._kernel, self._by_key = {}, {}
            return []
        rules = {r.index: r.text for r in snap.rules}
        labels = (rules, snap.outbounds, snap.devices)
        prior = self._by_key   # the rows shown last time, by key: a new row's rates compare with its key's
        if labels != self._labels:   # a reload, or a device named: no row keeps an old label
            self._kernel, self._by_key = {}, {}
            self._labels = labels
        now = snap.time
        cache, by_key = self._kernel, self._by_key
        get = cache.get
        stable_keys = raw.stable_keys()
        ks, vs, values, off = raw.key_size, raw.value_size, raw.values, raw.mono_offset
        decode = raw.decoder()
        closing = ABI.FLOW_TCP_FIN | ABI.FLOW_TCP_RST
        block, stalled = ABI.OUTBOUND_BLOCK, ABI.FLOW_FAIL_OPEN
        macs: dict[bytes, str] = {}
        out: list[FlowRow] = []
        add = out.append
        missed = False
        idle_after, rated = UDP_IDLE, dt > 0
        columns = zip(stable_keys, range(0, raw.count * vs, vs), raw.column("last_seen_ns"), raw.column("bytes"),
                      raw.column("rx_bytes"), raw.column("packets"), raw.column("rx_packets"), strict=True)
        for sk, vo, last_ns, up, down, packets, rx_packets in columns:
            row = get(sk)
            if row is not None:
                # Only its counters may have moved, and what follows from them and the clock: set as a
                # decoding would (one path for all: a row's fields are cheaper to set than to compare).
                row.packets_seen = seen = last_ns / 1e9 + off
                row.packets, row.rx_packets = packets, rx_packets
                state = row.state
                if state != "open" and state != "idle":   # blocked or closed: for good
                    row.last = seen
                    row.up_rate = row.down_rate = 0.0
                elif row.proto == "udp" and now - seen > idle_after:
                    row.state, row.last = "idle", seen
                    row.up_rate = row.down_rate = 0.0
                else:
                    row.state, row.last = "open", now
                    if rated:   # as _rate: max(0, x) spelled out (a call per flow counts at 10 000 flows)
                        row.up_rate = (up - row.up) / dt if up > row.up else 0.0
                        row.down_rate = (down - row.down) / dt if down > row.down else 0.0
                    else:
                        row.up_rate = row.down_rate = 0.0
                row.up, row.down = up, down
                add(row)
                continue
            # New, or more than its counters changed: decoded.
            missed = True
            f = decode(sk[:ks], values[vo:vo + vs])
            key: RowKey = (f.proto, f.src, f.sport, f.dst, f.dport)
            if f.outbound == block:
                state = "blocked"
            elif f.flags & closing:
                state = "closed"
            elif f.proto == "udp" and now - f.last_seen > UDP_IDLE:
                state = "idle"
            else:
                state = "open"
            mac = macs.get(f.mac)
            if mac is None:
                mac = macs[f.mac] = _mac(f.mac)
            row = FlowRow(
                key, f.first_seen, f.proto, f.src, f.sport, mac, snap.devices.get(mac, ""), f.dst, f.dport, "",
                f.rule_index, rules.get(f.rule_index, "") if f.rule_index is not None else "", "kernel",
                # Passed direct (or dropped) because the daemon's heartbeat was stale: said on the flow.
                snap.outbounds.get(f.outbound, f"#{f.outbound}") + (" (stalled)" if f.flags & stalled else ""),
                "relay" if relayed(f.outbound, f.flags) else "kernel", f.bytes, f.rx_bytes, state,
                f.last_seen if state != "open" else now, None, "", 0.0, 0.0, f.packets, f.rx_packets,
                f.ifindex, f.flags, f.generation, f.last_seen, pid=f.pid, process=f.process)
            # The rates against what was shown at its key last time: an earlier entry's row, or a relay's.
            was = prior.get(key)
            _rate(row, before.get(key) or (None if was is None else (was.up, was.down)), dt)
            cache[sk], by_key[key] = row, row
            add(row)
        # Rows whose entry left the table or changed more than its counters: none when every entry was found
        # and there are as many as rows (the kernel's keys are unique in a batch).
        if missed or len(cache) != len(stable_keys):
            for sk in cache.keys() - stable_keys:
                row = cache.pop(sk)
                if by_key.get(row.key) is row:
                    del by_key[row.key]
        return out


def _rate(row: FlowRow, was: tuple[int, int] | None, dt: float) -> None:
    """A row's rates, from the bytes (up, down) shown at its key `dt` seconds ago (None: not shown then)."""
    if was is not None and dt > 0 and row.state == "open":
        row.up_rate = max(0.0, (row.up - was[0]) / dt)
        row.down_rate = max(0.0, (row.down - was[1]) / dt)
    else:
        row.up_rate = row.down_rate = 0.0


# -- filter ------------------------------------------------------------------------------

FIELDS: dict[str, Callable[[FlowRow], str]] = {
    "proto": lambda r: r.proto,
    "src": lambda r: f"{r.src}:{r.sport}",
    "sport": lambda r: str(r.sport),
    "dst": lambda r: f"{r.dst}:{r.dport}",
    "dport": lambda r: str(r.dport),
    "mac": lambda r: r.mac,
    "device": lambda r: r.device,
    "domain": lambda r: r.domain,
    "rule": lambda r: f"{r.rule_label} {r.rule}",
    "out": lambda r: r.outbound,
    "node": lambda r: r.node,
    "stage": lambda r: r.stage,
    "path": lambda r: r.path,
    "state": lambda r: r.state,
    # The name as shown (controls escaped): what the operator reads is what the filter matches.
    "proc": lambda r: printable(r.process) if r.process else "",
}
ALIASES = {"outbound": "out", "dev": "device", "host": "domain", "source": "src", "destination": "dst",
           "process": "proc", "pname": "proc"}
_ANY = ("src", "dst", "device", "domain", "rule", "out", "proto", "state", "mac", "proc")
_ANY_TEXTS = tuple(FIELDS[f] for f in _ANY)


class FilterError(ValueError):
    """A filter term names no field."""


@dataclass(frozen=True)
class Term:
    field: str | None
    pattern: str
    negate: bool

    def matches(self, row: FlowRow) -> bool:
        pattern = self.pattern
        if self.field is not None:
            return (pattern in FIELDS[self.field](row).lower()) != self.negate
        for text in _ANY_TEXTS:   # (a loop, not any() over a generator: it runs for every flow)
            if pattern in text(row).lower():
                return not self.negate
        return self.negate


def parse_filter(text: str) -> list[Term]:
    """`dst:443 !proto:udp laptop` -> terms, all of which must hold."""
    terms = []
    for word in text.split():
        negate = word.startswith("!")
        if negate:
            word = word[1:]
        m = re.fullmatch(r"([a-z]+):(.*)", word)
        if m and (m.group(1) in FIELDS or m.group(1) in ALIASES):
            field = ALIASES.get(m.group(1), m.group(1))
            pattern = m.group(2)
        elif m and m.group(1) not in FIELDS:
            # "fe80::1" is a value, not a field; a lone unknown word before ':' is a typo.
            if re.fullmatch(r"[0-9a-f]+", m.group(1)):
                field, pattern = None, word
            else:
                raise FilterError(f"no field {m.group(1)!r}; fields: {', '.join(FIELDS)}")
        else:
            field, pattern = None, word
        if pattern:
            terms.append(Term(field, pattern.lower(), negate))
    return terms


def apply_filter(rows: Iterable[FlowRow], terms: list[Term], hide_closed: bool = False) -> list[FlowRow]:
    if not terms:   # the usual case, for 10 000 flows once a refresh
        return [r for r in rows if r.state not in CLOSED_STATES] if hide_closed else list(rows)
    out = []
    for r in rows:
        if hide_closed and r.state in CLOSED_STATES:
            continue
        for t in terms:
            if not t.matches(r):
                break
        else:
            out.append(r)
    return out


# -- sort --------------------------------------------------------------------------------

_get = operator.attrgetter   # (a C getter, not a lambda: a sort calls it for every flow)
SORT_KEYS: dict[str, Callable[[FlowRow], object]] = {
    "start": _get("start"),
    "proto": _get("proto"),
    "src": lambda r: (r.device or r.src, r.sport),
    "mac": _get("mac"),
    "dst": _get("dst", "dport"),
    "rule": lambda r: -1 if r.rule_index is None else r.rule_index,
    "out": _get("outbound"),
    "node": _get("node"),
    "stage": _get("stage"),
    "up": _get("up"),
    "down": _get("down"),
    "up/s": _get("up_rate"),
    "down/s": _get("down_rate"),
    "time": _get("duration"),
    "state": _get("state"),
    "proc": _get("process", "pid"),
}


def sort_rows(rows: list[FlowRow], column: str, descending: bool) -> list[FlowRow]:
    return sorted(rows, key=SORT_KEYS[column], reverse=descending)

