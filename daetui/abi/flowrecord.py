"""Kernel flow records: the `routing_tuples` entries, as raw bytes and decoded.

The daemon reads the map in one batch and ships the raw key and value bytes
together with their layout, which it takes from BCC's ctypes (derived from
`bpf/daetui.h`). Whoever wants rows (the console, a test) decodes them with
`struct` here. The daemon does no per-flow work for a reader.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import operator
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from daetui.abi.constants import ABI

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
PROTO_NAMES = {6: "tcp", 17: "udp"}
PROTO_NUMBERS = {v: k for k, v in PROTO_NAMES.items()}

# (field name, byte offset, struct format of one field)
Layout = list[tuple[str, int, str]]

_SCALAR = {1: "B", 2: "H", 4: "I", 8: "Q"}


def ctypes_layout(ctype: Any) -> tuple[Layout, int]:
    """The layout of a BCC-derived ctypes struct: fields with offsets, and its size."""
    out: Layout = []
    for name, ftype in ctype._fields_:
        if name.startswith("__pad"):
            continue
        desc = getattr(ctype, name)
        fmt = f"{ct.sizeof(ftype)}s" if issubclass(ftype, ct.Array) else _SCALAR[ct.sizeof(ftype)]
        out.append((name, desc.offset, fmt))
    return out, ct.sizeof(ctype)


def struct_for(layout: Layout, size: int) -> tuple[struct.Struct, list[str]]:
    """A native-endian struct that reads the fields of `layout` from a record of `size` bytes."""
    fmt, pos, names = "=", 0, []
    for name, offset, f in sorted(layout, key=lambda x: x[1]):
        if offset > pos:
            fmt += f"{offset - pos}x"
        fmt += f
        pos = offset + struct.calcsize("=" + f)
        names.append(name)
    if size > pos:
        fmt += f"{size - pos}x"
    return struct.Struct(fmt), names


_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


def comm_text(raw: bytes) -> str:
    """A process name as the kernel holds it (NUL-padded bytes) as text; any byte kept (escape it to show it)."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def ip_text(raw: bytes, _cache: dict[bytes, str] = {}) -> str:  # noqa: B006 - a deliberate cache
    """An address as the kernel keys it (16 bytes, IPv4 v4-mapped), as text; cached."""
    text = _cache.get(raw)
    if text is None:
        if raw[:12] == _V4_MAPPED:
            text = socket.inet_ntop(socket.AF_INET, raw[12:])
        else:
            text = socket.inet_ntop(socket.AF_INET6, raw)
        if len(_cache) > 65536:
            _cache.clear()
        _cache[raw] = text
    return text


@dataclass(frozen=True)
class FlowKey:
    """A flow's 5-tuple from the LAN client's side."""

    src: IPAddress
    sport: int
    dst: IPAddress
    dport: int
    proto: str                     # "tcp" | "udp"

    def __str__(self) -> str:
        def ep(a: IPAddress, p: int) -> str:
            return f"[{a}]:{p}" if a.version == 6 else f"{a}:{p}"
        return f"{self.proto} {ep(self.src, self.sport)} -> {ep(self.dst, self.dport)}"


@dataclass(frozen=True)
class KernelFlow:
    """A `routing_tuples` entry, decoded."""

    key: FlowKey
    outbound: int
    rule_index: int | None         # None: the fallback decided
    mac: bytes
    ifindex: int
    first_seen: float              # Unix time
    last_seen: float
    packets: int
    bytes: int
    rx_packets: int
    rx_bytes: int
    flags: int
    generation: int
    mark: int
    pid: int = 0                   # FLOW_OWN: the process that opened it
    process: str = ""              # and its name

    @property
    def own(self) -> bool:
        """The router's own flow (a local socket's, seen by wan_egress), not a LAN client's."""
        return bool(self.flags & ABI.FLOW_OWN)

    @property
    def closed(self) -> bool:
        """The kernel saw a FIN or RST."""
        return bool(self.flags & (ABI.FLOW_TCP_FIN | ABI.FLOW_TCP_RST))

    @property
    def to_control_plane(self) -> bool:
        """Handed to the control plane (which has the flow's row): see `relayed`."""
        return relayed(self.outbound, self.flags)


def relayed(outbound: int, flags: int) -> bool:
    """Does a kernel entry with this outbound and these flags go through the control plane? A group's, DNS,
    an undecided one, and a direct one whose 4-tuple a relay's socket still held (FLOW_HELD_TUPLE)."""
    return outbound >= ABI.OUTBOUND_FIRST_GROUP or bool(flags & ABI.FLOW_HELD_TUPLE)


class FlowRecord(NamedTuple):
    """One routing_tuples entry, flat: what the console's flow table is built from."""

    proto: str
    src: str
    sport: int
    dst: str
    dport: int
    outbound: int
    rule_index: int | None
    mac: bytes
    ifindex: int
    first_seen: float
    last_seen: float
    packets: int
    bytes: int
    rx_packets: int
    rx_bytes: int
    flags: int
    generation: int
    mark: int
    pid: int = 0          # the router's own flows (FLOW_OWN): the process that opened it
    process: str = ""     # and its name (comm); empty for a LAN client's flow


# What a live flow's value changes with every packet (RawFlows.stable leaves them out).
_MOVING = frozenset(("last_seen_ns", "packets", "bytes", "rx_packets", "rx_bytes"))


@dataclass(frozen=True)
class RawFlows:
    """A batch of `routing_tuples` entries as the kernel holds them."""

    key_layout: Layout
    key_size: int
    value_layout: Layout
    value_size: int
    keys: bytes = b""
    values: bytes = b""
    # time.time() - time.monotonic() on the daemon: turns bpf_ktime_get_ns() into Unix time.
    mono_offset: float = field(default_factory=lambda: time.time() - time.monotonic())

    @property
    def count(self) -> int:
        return len(self.keys) // self.key_size if self.key_size else 0

    def raw_entries(self) -> Iterator[tuple[bytes, bytes]]:
        """Each entry's key and value bytes, undecoded (to see what changed since last time)."""
        ks, vs = self.key_size, self.value_size
        keys, values = self.keys, self.values
        for i in range(self.count):
            yield keys[i * ks:(i + 1) * ks], values[i * vs:(i + 1) * vs]

    @property
    def _codec(self) -> Callable[[tuple[Any, ...], tuple[Any, ...]], FlowRecord]:
        _, knames = struct_for(self.key_layout, self.key_size)
        _, vnames = struct_for(self.value_layout, self.value_size)
        ki = {n: i for i, n in enumerate(knames)}
        vi = {n: i for i, n in enumerate(vnames)}
        sip, dip, sport, dport, l4 = ki["sip"], ki["dip"], ki["sport"], ki["dport"], ki["l4proto"]
        fields = ("outbound", "rule_index", "mac", "ifindex", "first_seen_ns", "last_seen_ns", "packets", "bytes",
                  "rx_packets", "rx_bytes", "flags", "generation", "mark", "pid", "comm")
        if "pid" in vi:
            pick = operator.itemgetter(*(vi[n] for n in fields))
        else:  # a daemon from before the router's own flows: none of its flows has a process
            older = operator.itemgetter(*(vi[n] for n in fields[:-2]))

            def pick(vt: tuple[Any, ...]) -> tuple[Any, ...]:
                return (*older(vt), 0, b"")
        off = self.mono_offset
        fallback = ABI.RULE_FALLBACK
        own = ABI.FLOW_OWN

        def make(kt: tuple[Any, ...], vt: tuple[Any, ...]) -> FlowRecord:
            ob, ri, mac, ifx, first, last, pk, by, rpk, rby, fl, gen, mark, pid, comm = pick(vt)
            return FlowRecord(PROTO_NAMES.get(kt[l4], str(kt[l4])), ip_text(kt[sip]), kt[sport], ip_text(kt[dip]),
                              kt[dport], ob, None if ri == fallback else ri, mac, ifx, first / 1e9 + off,
                              last / 1e9 + off, pk, by, rpk, rby, fl, gen, mark, pid,
                              comm_text(comm) if own & fl else "")
        return make

    def decoder(self) -> Callable[[bytes, bytes], FlowRecord]:
        """Decodes one entry from its key and value bytes."""
        ks, _ = struct_for(self.key_layout, self.key_size)
        vs, _ = struct_for(self.value_layout, self.value_size)
        make = self._codec
        return lambda kb, vb: make(ks.unpack(kb), vs.unpack(vb))

    def counters(self) -> Callable[[bytes], tuple[int, int, int]]:
        """Reads only (last_seen_ns, bytes, rx_bytes) of an entry's value: what a carrying flow changes."""
        picked = [f for f in self.value_layout if f[0] in ("last_seen_ns", "bytes", "rx_bytes")]
        st, names = struct_for(picked, self.value_size)
        order = operator.itemgetter(*(names.index(n) for n in ("last_seen_ns", "bytes", "rx_bytes")))
        return lambda vb: order(st.unpack(vb))

    def field_slice(self, name: str) -> slice:
        """Where value field `name` lies in an entry's value bytes."""
        for field_name, offset, fmt in self.value_layout:
            if field_name == name:
                return slice(offset, offset + struct.calcsize("=" + fmt))
        raise KeyError(name)

    def _stable_spans(self) -> list[tuple[int, int]]:
        """The (start, end) byte ranges of a value that are not _MOVING, in order."""
        moving = [self.field_slice(n) for n, _, _ in self.value_layout if n in _MOVING]
        spans, pos = [], 0
        for start, end in sorted((m.start, m.stop) for m in moving):
            if start > pos:
                spans.append((pos, start))
            pos = max(pos, end)
        if pos < self.value_size:
            spans.append((pos, self.value_size))
        return spans

    def stable(self) -> Callable[[bytes], Any]:
        """An entry's value but for its counters and last_seen (equal for two values: the same flow,
        decided the same way, its flags unchanged; so an earlier decoding of it holds but for those)."""
        cuts = [slice(a, b) for a, b in self._stable_spans()]
        if len(cuts) == 1:
            only = cuts[0]
            return lambda vb: vb[only]
        return operator.itemgetter(*cuts)

    def column(self, name: str) -> list[int]:
        """Integer value field `name` of every entry, in entry order, read in one pass: for a reader that
        wants one field of 10 000 entries, no slice, tuple or call per entry."""
        offset, fmt = {n: (o, f) for n, o, f in self.value_layout}[name]
        n, vs = self.count, self.value_size
        size = struct.calcsize("=" + fmt)
        values = memoryview(self.values)[:n * vs]
        if fmt in _SCALAR.values() and offset % size == 0 and vs % size == 0:
            # The native layout's field as a strided view of native items (memoryview reads them unaligned-safe).
            return values.cast(fmt)[offset // size::vs // size].tolist()
        one = struct.Struct(f"={offset}x{fmt}{vs - offset - size}x")
        return [x for x, in one.iter_unpack(values)]

    def stable_keys(self) -> list[bytes]:
        """Every entry's key bytes, then its value's first_seen_ns bytes, then the rest of its stable() part:
        equal for two entries when they are the same flow (key and first seen) holding the same value but for
        its counters. Its first key_size + len(first_seen_ns) bytes are the flow's identity, the key and
        `value[field_slice("first_seen_ns")]`.

        Built for all entries at once (columns copied between strided views), so that a reader of 10 000
        entries that only carried packets pays one slice per entry, not several slices and a tuple."""
        n, ks, vs = self.count, self.key_size, self.value_size
        fs = self.field_slice("first_seen_ns")
        spans: list[tuple[bool, int, int]] = [(True, 0, ks), (False, fs.start, fs.stop)]
        for a, b in self._stable_spans():   # first_seen is not moving: it lies inside one of these
            spans += [(False, x, y) for x, y in ((a, min(b, fs.start)), (max(a, fs.stop), b)) if x < y]
        rec = sum(b - a for _, a, b in spans)
        # The widest item that every size and bound is a multiple of: fewer, wider column copies.
        bounds = [ks, vs, *(a for _, a, _ in spans), *(b for _, _, b in spans)]
        unit = next(u for u in (8, 4, 2, 1) if all(x % u == 0 for x in bounds))
        fmt = _SCALAR[unit]
        out = bytearray(n * rec)
        dst = memoryview(out).cast(fmt)
        keys = memoryview(self.keys)[:n * ks].cast(fmt)
        values = memoryview(self.values)[:n * vs].cast(fmt)
        col = 0
        for from_key, a, b in spans:
            src, stride = (keys, ks // unit) if from_key else (values, vs // unit)
            for c in range(a // unit, b // unit):
                dst[col::rec // unit] = src[c::stride]
                col += 1
        return [x for x, in struct.Struct(f"{rec}s").iter_unpack(out)]

    def records(self) -> Iterator[FlowRecord]:
        """Every entry as a plain tuple, addresses as text: the fast way through 10 000 flows."""
        if not self.count:
            return
        ks, _ = struct_for(self.key_layout, self.key_size)
        vs, _ = struct_for(self.value_layout, self.value_size)
        make = self._codec
        for kt, vt in zip(ks.iter_unpack(self.keys), vs.iter_unpack(self.values), strict=True):
            yield make(kt, vt)

    def decode(self) -> list[KernelFlow]:
        """Every entry as a KernelFlow (with ipaddress objects: convenient, not fast)."""
        return [KernelFlow(
            key=FlowKey(ipaddress.ip_address(r.src), r.sport, ipaddress.ip_address(r.dst), r.dport, r.proto),
            outbound=r.outbound, rule_index=r.rule_index, mac=r.mac, ifindex=r.ifindex, first_seen=r.first_seen,
            last_seen=r.last_seen, packets=r.packets, bytes=r.bytes, rx_packets=r.rx_packets,
            rx_bytes=r.rx_bytes, flags=r.flags, generation=r.generation, mark=r.mark, pid=r.pid,
            process=r.process) for r in self.records()]
