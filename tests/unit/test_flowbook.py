"""The Connections pane's rows: kernel records and relayed connections merged, reused when unchanged."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import pytest

from daetui.abi.flowrecord import struct_for
from daetui.control import wire
from daetui.control.state import Snapshot
from daetui.ui.flows import FilterError, FlowBook, apply_filter, parse_filter, sort_rows

FIXTURE = Path(__file__).resolve().parents[1] / "ui" / "fixtures" / "lab.json"


@pytest.fixture
def snap() -> Snapshot:
    return wire.decode(Snapshot, json.loads(FIXTURE.read_text())["snapshot"])


def with_bytes(snap: Snapshot, index: int, field: str, value: int, dt: float = 1.0) -> Snapshot:
    """The same snapshot `dt` seconds later, with one field of one kernel entry changed."""
    raw = snap.raw_flows
    vs, names = struct_for(raw.value_layout, raw.value_size)
    values = bytearray(raw.values)
    rec = list(vs.unpack_from(values, index * raw.value_size))
    rec[names.index(field)] = value
    vs.pack_into(values, index * raw.value_size, *rec)
    return dataclasses.replace(snap, time=snap.time + dt, raw_flows=dataclasses.replace(raw, values=bytes(values)))


def test_every_kernel_entry_and_connection_makes_one_row(snap):
    rows = FlowBook().rows(snap)
    keys = {r.key for r in rows}
    assert len(keys) == len(rows)
    kernel = {(f.key.proto, str(f.key.src), f.key.sport, str(f.key.dst), f.key.dport) for f in snap.kernel_flows}
    relayed = {(c.proto, c.src[0], c.src[1], c.dst[0], c.dst[1]) for c in snap.connections}
    assert keys == kernel | relayed
    for r in rows:
        if r.key in relayed:
            c = next(c for c in snap.connections if (c.proto, *c.src, *c.dst) == r.key)
            assert (r.conn_id, r.up, r.down, r.path) == (c.id, c.up, c.down, "relay")
    assert any(r.device == "lab-laptop" for r in rows)
    assert {r.state for r in rows} >= {"open", "closed", "blocked"}


def test_unchanged_entries_keep_their_row_and_changed_ones_are_read_again(snap):
    book = FlowBook()
    first = {r.key: r for r in book.rows(snap)}
    kernel_only = [r for r in first.values() if r.conn_id is None and r.state == "open"]
    target = kernel_only[0]
    index = next(i for i, f in enumerate(snap.kernel_flows)
                 if (f.key.proto, str(f.key.src), f.key.sport, str(f.key.dst), f.key.dport) == target.key)
    later = with_bytes(snap, index, "bytes", target.up + 5000)
    second = {r.key: r for r in book.rows(later)}
    assert second[target.key].up == target.up + 5000
    assert second[target.key].up_rate == pytest.approx(5000.0)
    others = [k for k, r in first.items() if r.conn_id is None and k != target.key]
    assert all(second[k] is first[k] for k in others)        # reused, not rebuilt
    assert all(second[k].up_rate == 0 for k in others)


def test_filter_terms_fields_and_negation(snap):
    rows = FlowBook().rows(snap)
    udp = apply_filter(rows, parse_filter("proto:udp"))
    assert udp and all(r.proto == "udp" for r in udp)
    not_udp = apply_filter(rows, parse_filter("!proto:udp"))
    assert len(udp) + len(not_udp) == len(rows)
    both = apply_filter(rows, parse_filter("dport:80 out:proxy"))
    assert both and all(r.dport == 80 and r.outbound == "proxy" for r in both)
    v6 = apply_filter(rows, parse_filter("dst:2001:db8:3::10"))
    assert v6 and v6 == [r for r in rows if r.dst == "2001:db8:3::10"]
    # A bare word looks at every field: here the rule text names the address too.
    bare = apply_filter(rows, parse_filter("2001:db8:3::10"))
    assert set(map(id, v6)) < set(map(id, bare))
    assert all(not r.closed for r in apply_filter(rows, [], hide_closed=True))
    with pytest.raises(FilterError, match="no field 'dsst'"):
        parse_filter("dsst:443")


def test_sorting_by_bytes_both_ways(snap):
    rows = FlowBook().rows(snap)
    down = sort_rows(rows, "down", True)
    assert [r.down for r in down] == sorted((r.down for r in rows), reverse=True)
    assert sort_rows(rows, "down", False)[0].down == min(r.down for r in rows)


def test_struct_layout_is_the_kernels(snap):
    raw = snap.raw_flows
    ks, _ = struct_for(raw.key_layout, raw.key_size)
    vs, _ = struct_for(raw.value_layout, raw.value_size)
    assert (ks.size, vs.size) == (raw.key_size, raw.value_size)
    assert struct.calcsize("=16s16sHHB3x") == raw.key_size
