"""Kernel flow records: the `routing_tuples` entries, as raw bytes and decoded.

The daemon reads the map in one batch and ships the raw key and value bytes
together with their layout, which it takes from BCC's ctypes (derived from
`bpf/daetui.h`). Whoever wants rows (the console, a test) decodes them with
`struct` here. The daemon does no per-flow work for a reader.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from daetui.bpfabi import ABI

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


def _ip(raw: bytes) -> IPAddress:
    a = ipaddress.IPv6Address(raw)
    return a.ipv4_mapped or a


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

    @property
    def closed(self) -> bool:
        """The kernel saw a FIN or RST."""
        return bool(self.flags & (ABI.FLOW_TCP_FIN | ABI.FLOW_TCP_RST))

    @property
    def to_control_plane(self) -> bool:
        return self.outbound >= ABI.OUTBOUND_FIRST_GROUP


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

    def decode(self) -> list[KernelFlow]:
        """Every entry as a KernelFlow."""
        if not self.count:
            return []
        ks, knames = struct_for(self.key_layout, self.key_size)
        vs, vnames = struct_for(self.value_layout, self.value_size)
        off = self.mono_offset
        out = []
        for kt, vt in zip(ks.iter_unpack(self.keys), vs.iter_unpack(self.values), strict=True):
            k = dict(zip(knames, kt, strict=True))
            v = dict(zip(vnames, vt, strict=True))
            ri = v["rule_index"]
            out.append(KernelFlow(
                key=FlowKey(_ip(k["sip"]), k["sport"], _ip(k["dip"]), k["dport"],
                            PROTO_NAMES.get(k["l4proto"], str(k["l4proto"]))),
                outbound=v["outbound"], rule_index=None if ri == ABI.RULE_FALLBACK else ri, mac=v["mac"],
                ifindex=v["ifindex"], first_seen=v["first_seen_ns"] / 1e9 + off,
                last_seen=v["last_seen_ns"] / 1e9 + off, packets=v["packets"], bytes=v["bytes"],
                rx_packets=v["rx_packets"], rx_bytes=v["rx_bytes"], flags=v["flags"],
                generation=v["generation"], mark=v["mark"]))
        return out
