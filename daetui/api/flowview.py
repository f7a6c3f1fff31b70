"""`GET /connections` as mihomo writes it, from daetui's flows: the relayed ones and the kernel's direct ones.

mihomo lists the connections it tracks (tunnel/statistic/tracker.go):

    {"downloadTotal": N, "uploadTotal": N, "memory": RSS, "connections": [
      {"id": "...", "metadata": {"network": "tcp", "type": "TProxy", "sourceIP": ..., "destinationIP": ...,
       "sourcePort": "40000", "destinationPort": "443", "host": ..., "sniffHost": ..., "process": ...,
       "processPath": ..., "dnsMode": "normal", "inboundName": ..., ...},
       "upload": N, "download": N, "start": "2025-01-01T12:00:00.000Z", "chains": ["node", "group"],
       "rule": "DomainSuffix", "rulePayload": "example.com"}]}

daetui has two kinds of flow, and lists both:

- relayed: the connection table's open connections (the control plane holds
  their sockets). `type` "TProxy", `inboundName` "tproxy"; `chains` is
  [node, group] when a group's node carried it, else [outbound] ("direct");
  bytes are the relay's (payload).
- kernel-direct: the kernel's flow table's entries that `lan_ingress`
  passed direct by itself: user space never saw them, no clash tool shows
  them. `type` "Kernel", `inboundName` "kernel", `chains` ["direct"];
  bytes are the kernel's counts (whole IP packets, headers included). A
  TCP flow is listed until the kernel saw its FIN or RST (or it idled past
  tcp_idle_timeout), a UDP flow until it idles UDP_IDLE.

`rule`/`rulePayload` are the deciding rule's type and payload exactly as
`GET /rules` lists them (routes_rules.mihomo_type), "Match" for the fallback,
so a dashboard can find a connection's rule. `host` is the sniffed name
(TLS SNI, HTTP Host, QUIC), else the name DNS last gave the destination;
`sniffHost` only the sniffed one. `process`/`processPath` are the router's
own flows' program. Every connection also carries `daetui` (ignored by
dashboards): its path (relay/kernel), the stage that decided it, the rule's
text, the client's MAC and device label.

Ids are UUID-shaped and stable: a relayed connection's is the daemon's
start time and its connection id (so DELETE finds it again); a kernel
flow's is a hash of its 5-tuple and the moment the kernel first saw it
(a new connection on the same 5-tuple is a new id).

The totals grow by what every flow carried between two views (each flow's
bytes are remembered from one view to the next, relayed ones closed or open,
kernel-direct ones in the table or gone from the list): bytes carried while
nobody watched are counted the next time someone looks, as long as the flow
is still in the connection table's ring or the kernel's table.

Building a view walks every flow: it runs in a thread (FlowEncoder.build),
once per tick whoever asks, and keeps each flow's encoded JSON from one view
to the next so that only new or changed flows are encoded again; a kernel
entry whose value moved only in its counters (every carrying flow, each
view) is found by its key and the rest of its value, not decoded again, and
the counters of all entries are read at once.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from daetui.abi.constants import ABI
from daetui.abi.flowrecord import FlowRecord
from daetui.api.procinfo import process_path, rss_bytes
from daetui.api.routes_rules import MATCH, mihomo_type
from daetui.control.connections import Connection
from daetui.control.decision import mac_text
from daetui.control.state import Snapshot
from daetui.routing.parser import parse_rule
from daetui.routing.ruleset import DIRECT, RuleEntry, RuleSet, check_rule

UDP_IDLE = 60.0          # a kernel-direct UDP flow with no packet for this long is no longer listed
_CLOSING = ABI.FLOW_TCP_FIN | ABI.FLOW_TCP_RST
_MASK64 = (1 << 64) - 1


def _uuid(hex32: str) -> str:
    return f"{hex32[:8]}-{hex32[8:12]}-{hex32[12:16]}-{hex32[16:20]}-{hex32[20:32]}"


def relayed_id(tag: int, conn_id: int) -> str:
    """The id of relayed connection `conn_id` of the daemon started at `tag` (ms since the epoch)."""
    return _uuid(f"{tag & _MASK64:016x}{conn_id & _MASK64:016x}")


def relayed_conn_id(tag: int, text: str) -> int | None:
    """The connection id in `text` if it is a relayed connection's id of this daemon (`tag`), else None."""
    h = text.replace("-", "").lower()
    if len(h) != 32 or h[:16] != f"{tag & _MASK64:016x}":
        return None
    try:
        return int(h[16:], 16)
    except ValueError:
        return None


def kernel_id(ident: bytes) -> str:
    """The id of a kernel flow: a name-based UUID (version 5 style) of its raw key and first-seen time."""
    h = bytearray(hashlib.sha1(ident).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50
    h[8] = (h[8] & 0x3F) | 0x80
    return _uuid(h.hex())


def rfc3339(t: float) -> str:
    """A Unix time as mihomo's JSON writes a time.Time (RFC 3339, here UTC with milliseconds)."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ep(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _payload_of(text: str) -> str:
    """A rule's text before its outbound: what runs when mihomo has no type of its own for it."""
    return text.rpartition("->")[0].strip() or text


class RuleLabels:
    """(rule, rulePayload) of the rules that decided flows, worked out once per rule."""

    def __init__(self) -> None:
        self._memo: dict[tuple[int, str], tuple[str, str]] = {}

    def of(self, index: int | None, text: str, rulesets: Mapping[int, RuleSet]) -> tuple[str, str]:
        if index is None:
            return MATCH, ""
        key = (index, text)
        got = self._memo.get(key)
        if got is None:
            if len(self._memo) > 8192:   # rules come and go with reloads: start again rather than grow
                self._memo.clear()
            got = self._memo[key] = self._work_out(index, text, rulesets)
        return got

    @staticmethod
    def _work_out(index: int, text: str, rulesets: Mapping[int, RuleSet]) -> tuple[str, str]:
        entry: RuleEntry | None = None
        for rs in rulesets.values():
            e = rs.by_index(index)
            if e is not None and e.text == text:
                entry = e
                break
        if entry is None:
            # A rule of neither generation (reloaded twice since the flow began): read again from its text.
            try:
                rule = parse_rule(text)
                entry = RuleEntry(index, rule, check_rule(rule))
            except Exception:
                return _payload_of(text).split("(", 1)[0].lstrip("!") or "rule", _payload_of(text)
        kind, payload, _ = mihomo_type(entry)
        return kind, payload


@dataclass(frozen=True)
class FlowView:
    """One /connections answer, encoded, and what DELETE /connections needs of it."""

    text: str                     # GET /connections' JSON
    at: float                     # time.monotonic() when built
    upload_total: int
    download_total: int
    memory: int
    relayed: tuple[int, ...]      # the relayed connections' ids (the connection table's) in it
    kernel: dict[str, str]        # the kernel-direct flows in it: id -> what it is ("tcp a:p -> b:q")

    @property
    def count(self) -> int:
        return len(self.relayed) + len(self.kernel)


class FlowEncoder:
    """Builds FlowViews from snapshots, one at a time (the Shared that calls it sees to that).

    `tag`: the daemon's start (ms since the epoch) for relayed ids; `names`:
    the names DNS gave an address, most recent last (called from the thread).
    """

    def __init__(self, tag: int, names: Callable[[str], list[str]]) -> None:
        self.tag = tag
        self.names = names
        self.labels = RuleLabels()
        self.upload_total = 0
        self.download_total = 0
        # What is kept from view to view, in shapes the garbage collector does not track (ints, strings,
        # bytes; no tuple per flow; a few lists, not one per flow): with 10k flows alive, a build that made
        # 10k containers would set off full collections, which stop the event loop's thread too.
        # Each relayed flow's bytes as last seen (up << 64 | down), by connection id.
        self._relay_seen: dict[int, int] = {}
        # Each listed relayed flow's JSON after '"download":N,' (_part), and what it was made from.
        self._relay_basis: dict[int, str] = {}
        self._relay_parts: dict[int, str] = {}
        # The last view's kernel entries, each in a slot of these lists, found by its stable key
        # (RawFlows.stable_keys: its key and value but for the counters, its identity first) and kept up to
        # date in place: a flow that only carried packets costs a lookup and a few stores, no dict rebuilt
        # per field per view.
        self._slot: dict[bytes, int] = {}
        self._kind: list[str] = []            # its _shape's kind ("" when not listed here)
        self._shape: list[str] = []           # its _shape
        self._dst: list[str] = []             # its destination (the end of its shape)
        self._up: list[int] = []              # its bytes as last seen, up and down (0 unless direct): two
        self._down: list[int] = []            # lists, no up << 64 | down to build and take apart per flow
        self._part: list[str | None] = []     # its JSON after '"download":N,', None if not listed
        self._host: list[str] = []            # the host that part was written with (with its shape, its basis)
        self._fid: list[str] = []             # its id ("" until listed)
        self._desc: list[str] = []            # what it is ("tcp a:p -> b:q")
        self._free: list[int] = []            # slots that hold no entry

    def build(self, snap: Snapshot, rulesets: Mapping[int, RuleSet], tcp_idle: float) -> FlowView:
        """The view of `snap` (run in a thread: it walks every flow). `rulesets`: by kernel generation."""
        now_wall = snap.time
        devices = snap.devices
        names: dict[str, str] = {}

        def name_of(addr: str) -> str:
            got = names.get(addr)
            if got is None:
                try:
                    known = self.names(addr)
                except Exception:   # the plane's book changed under us: no name this time
                    known = []
                got = names[addr] = known[-1] if known else ""
            return got

        # The answer's text in pieces, joined once at the end (10 000 flows' JSON is megabytes: each copy
        # counts): [head, then per listed flow ',{"upload":N,"download":N,' and its part, then the tail].
        pieces: list[str] = [""]
        add = pieces.append
        relayed: list[int] = []
        up_added = down_added = 0

        # -- relayed connections: every one counts its bytes; the open ones are listed.
        old_seen, old_basis, old_parts = self._relay_seen, self._relay_basis, self._relay_parts
        relay_seen: dict[int, int] = {}
        relay_basis: dict[int, str] = {}
        relay_parts: dict[int, str] = {}
        for c in snap.connections:
            cid, up, down = c.id, c.up, c.down
            prev = old_seen.get(cid, 0)
            up_added += max(0, up - (prev >> 64))
            down_added += max(0, down - (prev & _MASK64))
            relay_seen[cid] = up << 64 | down
            if c.state != "open":
                continue
            host = c.domain or name_of(c.dst[0])
            basis = f"{c.rule_index}\x1f{c.rule}\x1f{c.outbound}\x1f{c.node}\x1f{c.domain}\x1f{host}\x1f{c.stage}" \
                    f"\x1f{c.process}\x1f{c.mac}"
            part = old_parts.get(cid) if old_basis.get(cid) == basis else None
            if part is None:
                part = self._relay_part(c, host, rulesets, devices)
            relay_basis[cid], relay_parts[cid] = basis, part
            add(f',{{"upload":{up},"download":{down},')
            add(part)
            relayed.append(cid)
        self._relay_seen, self._relay_basis, self._relay_parts = relay_seen, relay_basis, relay_parts

        # -- the kernel's direct flows. An entry whose value changed only in its counters (a flow carrying
        # packets: most of them, on a busy router) is found by its stable key in its slot and not decoded
        # again; the counters are read for every entry at once (RawFlows.column).
        kernel: dict[str, str] = {}
        raw = snap.raw_flows
        if raw is None or not raw.count:
            self._slot, self._free = {}, []
            self._kind, self._shape, self._dst, self._host, self._fid, self._desc = [], [], [], [], [], []
            self._up, self._down, self._part = [], [], []
        else:
            slot_of = self._slot
            kinds, shapes, dsts, ups, downs = self._kind, self._shape, self._dst, self._up, self._down
            kparts, hosts, fids, descs = self._part, self._host, self._fid, self._desc
            stable_keys = raw.stable_keys()
            fs = raw.field_slice("first_seen_ns")
            idn = raw.key_size + fs.stop - fs.start   # a stable key's first idn bytes: the flow's identity
            # The last view's entries whose stable key is gone, by identity (key and first-seen): the same flow
            # with more than its counters changed finds its slot here (its bytes and, if its shape held, its
            # part); the rest left the table. Worked out at the first entry not found (not at all when every
            # flow only carried packets).
            moved: dict[bytes, int] | None = None
            decode = raw.decoder()
            values, ks, vs = raw.values, raw.key_size, raw.value_size
            interfaces = {i.index: i.name for i in snap.interfaces}
            # Listed only if last seen from these on (kernel clock), by kind: a closing flow never.
            off = raw.mono_offset
            fresh_from = {"t": _fresh_from(now_wall, off, tcp_idle), "u": _fresh_from(now_wall, off, UDP_IDLE),
                          "x": 1 << 65}
            listing: list[int] = []   # the listed flows' slots, in order
            slot_get, names_get, listed = slot_of.get, names.get, listing.append
            columns = zip(stable_keys, range(0, raw.count * vs, vs), raw.column("last_seen_ns"),
                          raw.column("bytes"), raw.column("rx_bytes"), strict=True)
            for sk, vo, last_ns, up, down in columns:
                rec: FlowRecord | None = None
                s = slot_get(sk)
                if s is None:   # new, or more than its counters changed: decoded
                    rec = decode(sk[:ks], values[vo:vo + vs])
                    shape = _shape(rec)
                    if moved is None:
                        moved = self._take_gone(stable_keys, idn)
                    s = moved.pop(sk[:idn], None)
                    if s is None:
                        s = self._new_slot()
                    elif shape != shapes[s]:
                        kparts[s] = None   # written for another shape
                    slot_of[sk] = s
                    shapes[s], kinds[s], dsts[s] = shape, shape[:1], shape.rpartition(_SEP)[2]
                    if not shape:
                        ups[s] = downs[s] = 0
                        kparts[s] = None
                kind = kinds[s]
                if not kind:
                    continue   # relayed (listed above, with the relay's bytes), blocked or DNS: not here
                # (max(0, x) spelled out: a call per flow counts at 10 000 flows)
                if (d := up - ups[s]) > 0:
                    up_added += d
                if (d := down - downs[s]) > 0:
                    down_added += d
                ups[s], downs[s] = up, down
                if last_ns < fresh_from[kind]:
                    kparts[s] = None
                    continue
                dst = dsts[s]
                host = names_get(dst)
                if host is None:
                    host = name_of(dst)
                part = kparts[s]
                if part is None or host != hosts[s]:
                    if rec is None:
                        rec = decode(sk[:ks], values[vo:vo + vs])
                    if not fids[s]:
                        fids[s] = kernel_id(sk[:idn])
                        descs[s] = f"{rec.proto} {_ep(rec.src, rec.sport)} -> {_ep(rec.dst, rec.dport)}"
                    part = kparts[s] = self._kernel_part(fids[s], rec, host, rulesets, devices, interfaces)
                    hosts[s] = host
                add(f',{{"upload":{up},"download":{down},')
                add(part)
                listed(s)
            # (built in one go: inserted per flow inside the loop, it measured several times dearer)
            kernel = {fids[s]: descs[s] for s in listing}
            if moved is None and len(slot_of) != len(stable_keys):   # (the kernel's keys are unique in a batch)
                moved = self._take_gone(stable_keys, idn)
            for s in moved.values() if moved else ():   # left the table: its slot is free (and holds nothing)
                self._release(s)
            if len(kinds) > 2 * len(slot_of) + 1024:
                self._compact()

        self.upload_total += up_added
        self.download_total += down_added
        memory = rss_bytes()
        pieces[0] = f'{{"downloadTotal":{self.download_total},"uploadTotal":{self.upload_total},"connections":['
        if len(pieces) > 1:
            pieces[1] = pieces[1][1:]   # the first listed flow's has no comma before it
        add(f'],"memory":{memory}}}')
        return FlowView("".join(pieces), time.monotonic(), self.upload_total, self.download_total, memory,
                        tuple(relayed), kernel)

    # -- kernel entries' slots ---------------------------------------------------------------------
    def _new_slot(self) -> int:
        """A slot for an entry not in the last view: free, or a new one."""
        if self._free:
            return self._free.pop()
        for column in (self._kind, self._shape, self._dst, self._host, self._fid, self._desc):
            column.append("")
        self._up.append(0)
        self._down.append(0)
        self._part.append(None)
        return len(self._kind) - 1

    def _take_gone(self, stable_keys: list[bytes], idn: int) -> dict[bytes, int]:
        """The slots of the last view's entries not in `stable_keys`, taken out of the index, by identity."""
        slot_of = self._slot
        return {k[:idn]: slot_of.pop(k) for k in slot_of.keys() - stable_keys}

    def _release(self, s: int) -> None:
        self._kind[s] = self._shape[s] = self._dst[s] = self._host[s] = self._fid[s] = self._desc[s] = ""
        self._up[s] = self._down[s] = 0
        self._part[s] = None
        self._free.append(s)

    def _compact(self) -> None:
        """The slots renumbered without the free ones, after a crowd of flows left the table."""
        order = list(self._slot.values())
        self._slot = dict(zip(self._slot, range(len(order)), strict=True))
        self._kind = [self._kind[s] for s in order]
        self._shape = [self._shape[s] for s in order]
        self._dst = [self._dst[s] for s in order]
        self._up = [self._up[s] for s in order]
        self._down = [self._down[s] for s in order]
        self._part = [self._part[s] for s in order]
        self._host = [self._host[s] for s in order]
        self._fid = [self._fid[s] for s in order]
        self._desc = [self._desc[s] for s in order]
        self._free = []

    # -- one flow's JSON, but for its opening brace and byte counts ---------------------------------
    def _relay_part(self, c: Connection, host: str, rulesets: Mapping[int, RuleSet],
                    devices: Mapping[str, str]) -> str:
        rule, payload = self.labels.of(c.rule_index, c.rule, rulesets)
        chains = [c.node, c.outbound] if c.node else [c.outbound]   # mihomo's order: the node first
        meta = _metadata(c.proto, "TProxy", "tproxy", c.src, c.dst, host, c.domain or "", c.pid or 0,
                         c.process or "", c.dst[0] if not c.node and c.outbound == DIRECT else "")
        extra = {"path": "relay", "stage": c.stage, "rule": c.rule if c.rule_index is not None else "fallback",
                 "outbound": c.outbound, "mac": c.mac or "", "device": devices.get(c.mac or "", "")}
        return _part(relayed_id(self.tag, c.id), meta, c.started, chains, rule, payload, extra)

    def _kernel_part(self, fid: str, rec: FlowRecord, host: str, rulesets: Mapping[int, RuleSet],
                     devices: Mapping[str, str], interfaces: Mapping[int, str]) -> str:
        text = "fallback"
        if rec.rule_index is not None:
            rs = rulesets.get(rec.generation)
            entry = rs.by_index(rec.rule_index) if rs is not None else None
            text = entry.text if entry is not None else f"#{rec.rule_index + 1}"
        rule, payload = self.labels.of(rec.rule_index, text, rulesets)
        mac = mac_text(rec.mac) or ""
        meta = _metadata(rec.proto, "Kernel", "kernel", (rec.src, rec.sport), (rec.dst, rec.dport), host, "",
                         rec.pid, rec.process, rec.dst)
        extra = {"path": "kernel", "stage": "kernel", "rule": text, "outbound": DIRECT, "mac": mac,
                 "device": devices.get(mac, ""), "interface": interfaces.get(rec.ifindex, ""),
                 "failOpen": bool(rec.flags & ABI.FLOW_FAIL_OPEN)}
        return _part(fid, meta, rec.first_seen, [DIRECT], rule, payload, extra)


_SEP = "\x1f"


def _fresh_from(now_wall: float, mono_offset: float, idle: float) -> int:
    """The least last_seen_ns (kernel clock) of a flow that has not idled past `idle` seconds at `now_wall`:
    `last_ns < _fresh_from(...)` exactly when `now_wall - (last_ns / 1e9 + mono_offset) > idle`, that
    expression being monotonic in last_ns, found once per view (64 steps) rather than in floats per flow."""
    def idled(ns: int) -> bool:
        return now_wall - (ns / 1e9 + mono_offset) > idle

    lo, hi = 0, 1 << 64          # last_seen_ns is a u64: below hi
    if not idled(lo):
        return lo
    while hi - lo > 1:           # idled(lo), and hi is past every idled value
        mid = (lo + hi) // 2
        if idled(mid):
            lo = mid
        else:
            hi = mid
    return hi


def _shape(rec: FlowRecord) -> str:
    """What the view needs of a kernel entry but its counters, as a string (no container per flow):
    "" when it is not listed here (not direct, or relayed), else its kind (t: TCP, u: UDP, x: closing), its rule's
    generation and index, and its destination, _SEP between them."""
    if rec.outbound != ABI.OUTBOUND_DIRECT or rec.flags & ABI.FLOW_HELD_TUPLE:  # (held: a relay's row)
        return ""
    kind = "x" if rec.flags & _CLOSING else "u" if rec.proto == "udp" else "t"
    return f"{kind}{rec.generation}{_SEP}{rec.rule_index}{_SEP}{rec.dst}"


def _metadata(network: str, kind: str, inbound: str, src: tuple[str, int], dst: tuple[str, int], host: str,
              sniffed: str, pid: int, process: str, remote: str) -> dict[str, Any]:
    """mihomo's C.Metadata (constant/metadata.go), ports as text as it writes them."""
    return {
        "network": network, "type": kind, "sourceIP": src[0], "destinationIP": dst[0],
        "sourceGeoIP": None, "destinationGeoIP": None, "sourceIPASN": "", "destinationIPASN": "",
        "sourcePort": str(src[1]), "destinationPort": str(dst[1]), "inboundIP": "", "inboundPort": "0",
        "inboundName": inbound, "inboundUser": "", "host": host, "dnsMode": "normal", "uid": 0,
        "process": process, "processPath": process_path(pid, process) if pid and process else "",
        "specialProxy": "", "specialRules": "", "remoteDestination": remote, "dscp": 0, "sniffHost": sniffed,
    }


def _part(fid: str, meta: dict[str, Any], start: float, chains: list[str], rule: str, payload: str,
          extra: dict[str, Any]) -> str:
    """A connection's JSON without its opening brace and byte counts (json.dumps escapes what the network
    wrote): what follows '{"upload":N,"download":N,'."""
    body = json.dumps({"id": fid, "metadata": meta, "start": rfc3339(start), "chains": chains, "rule": rule,
                       "rulePayload": payload, "daetui": extra}, separators=(",", ":"))
    return body[1:]
