"""The Connections pane's rows: kernel flows and relayed connections as one list.

A flow the kernel forwards or drops exists only in `routing_tuples`; a flow
the control plane relays exists there too (its kernel decision) and in the
connection table (its relay). Each becomes one row; a relayed flow takes its
byte counts from the relay. Rates come from the change since the last
snapshot. Filtering and sorting happen here, in the console's process.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from daetui.abi.constants import ABI
from daetui.control.state import Snapshot
from daetui.termtext import printable

UDP_IDLE = 60.0  # a UDP flow with no packet for this long shows as idle

RowKey = tuple[str, str, int, str, int]  # proto, src, sport, dst, dport


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
        return self.state in ("closed", "failed", "blocked", "idle")


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b) if any(b) else ""


class FlowBook:
    """Builds rows from successive snapshots, remembering what it needs for rates."""

    def __init__(self) -> None:
        self._prev: dict[RowKey, tuple[float, int, int]] = {}
        # Kernel entries by raw key: their raw value and the row made from it. An
        # entry whose bytes did not change keeps its row: idle flows cost nothing.
        self._kernel: dict[bytes, tuple[bytes, FlowRow]] = {}

    def rows(self, snap: Snapshot) -> list[FlowRow]:
        now = snap.time
        rules = {r.index: r.text for r in snap.rules}
        out: dict[RowKey, FlowRow] = {}
        closing = ABI.FLOW_TCP_FIN | ABI.FLOW_TCP_RST
        block, first_group, stalled = ABI.OUTBOUND_BLOCK, ABI.OUTBOUND_FIRST_GROUP, ABI.FLOW_FAIL_OPEN
        macs: dict[bytes, str] = {}
        raw = snap.raw_flows
        cache, fresh = self._kernel, {}
        kb_of: dict[RowKey, bytes] = {}
        decode = raw.decoder() if raw is not None else None
        for kb, vb in (raw.raw_entries() if raw is not None else ()):
            hit = cache.get(kb)
            if hit is not None and hit[0] == vb:
                row = hit[1]
                # Unchanged in the kernel: only what depends on the clock moves.
                if row.state == "open":
                    if row.proto == "udp" and now - row.packets_seen > UDP_IDLE:
                        row.state, row.last = "idle", row.packets_seen
                    else:
                        row.last = now
                row.up_rate = row.down_rate = 0.0
                row.conn_id, row.error = None, ""
                out[row.key] = row
                kb_of[row.key] = kb
                fresh[kb] = hit
                continue
            assert decode is not None
            f = decode(kb, vb)
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
            out[key] = FlowRow(
                key, f.first_seen, f.proto, f.src, f.sport, mac, snap.devices.get(mac, ""), f.dst, f.dport, "",
                f.rule_index, rules.get(f.rule_index, "") if f.rule_index is not None else "", "kernel",
                # Passed direct (or dropped) because the daemon's heartbeat was stale: said on the flow.
                snap.outbounds.get(f.outbound, f"#{f.outbound}") + (" (stalled)" if f.flags & stalled else ""),
                "relay" if f.outbound >= first_group else "kernel", f.bytes, f.rx_bytes, state,
                f.last_seen if state != "open" else now, None, "", 0.0, 0.0, f.packets, f.rx_packets,
                f.ifindex, f.flags, f.generation, f.last_seen, pid=f.pid, process=f.process)
            fresh[kb] = (vb, out[key])
            kb_of[key] = kb
        for c in snap.connections:
            key = (c.proto, c.src[0], c.src[1], c.dst[0], c.dst[1])
            row = out.get(key)
            state = c.state if c.state != "open" else "open"
            if row is None or row.start > c.started + 1:
                mac = c.mac or ""
                row = FlowRow(
                    key=key, start=c.started, proto=c.proto, src=c.src[0], sport=c.src[1], mac=mac,
                    device=snap.devices.get(mac, ""), dst=c.dst[0], dport=c.dst[1], domain="",
                    rule_index=c.rule_index, rule=c.rule if c.rule_index is not None else "", stage=c.stage,
                    outbound=c.outbound, path="relay",
                    up=0, down=0, state=state, last=now)
                out[key] = row
            # The relay's view goes over the kernel's: this row is not reusable as is.
            fresh.pop(kb_of.get(key, b""), None)
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
        self._kernel = fresh
        prev = self._prev
        cur: dict[RowKey, tuple[float, int, int]] = {}
        for key, row in out.items():
            p = prev.get(key)
            if p is not None and now > p[0] and row.state == "open":
                dt = now - p[0]
                row.up_rate = max(0.0, (row.up - p[1]) / dt)
                row.down_rate = max(0.0, (row.down - p[2]) / dt)
            cur[key] = (now, row.up, row.down)
        self._prev = cur
        return list(out.values())


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


class FilterError(ValueError):
    """A filter term names no field."""


@dataclass(frozen=True)
class Term:
    field: str | None
    pattern: str
    negate: bool

    def matches(self, row: FlowRow) -> bool:
        if self.field is None:
            hit = any(self.pattern in FIELDS[f](row).lower() for f in _ANY)
        else:
            hit = self.pattern in FIELDS[self.field](row).lower()
        return hit != self.negate


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
    out = []
    for r in rows:
        if hide_closed and r.closed:
            continue
        if all(t.matches(r) for t in terms):
            out.append(r)
    return out


# -- sort --------------------------------------------------------------------------------

SORT_KEYS: dict[str, Callable[[FlowRow], object]] = {
    "start": lambda r: r.start,
    "proto": lambda r: r.proto,
    "src": lambda r: (r.device or r.src, r.sport),
    "mac": lambda r: r.mac,
    "dst": lambda r: (r.dst, r.dport),
    "rule": lambda r: -1 if r.rule_index is None else r.rule_index,
    "out": lambda r: r.outbound,
    "node": lambda r: r.node,
    "stage": lambda r: r.stage,
    "up": lambda r: r.up,
    "down": lambda r: r.down,
    "up/s": lambda r: r.up_rate,
    "down/s": lambda r: r.down_rate,
    "time": lambda r: r.duration,
    "state": lambda r: r.state,
    "proc": lambda r: (r.process, r.pid),
}


def sort_rows(rows: list[FlowRow], column: str, descending: bool) -> list[FlowRow]:
    return sorted(rows, key=SORT_KEYS[column], reverse=descending)

