"""The Connections pane's rows: kernel records and relayed connections merged, reused when unchanged."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import pytest

from daetui.abi.constants import ABI
from daetui.abi.flowrecord import struct_for
from daetui.control import wire
from daetui.control.connections import Connection
from daetui.control.state import Snapshot
from daetui.ui.flows import FilterError, FlowBook, FlowRow, apply_filter, parse_filter, sort_rows

FIXTURE = Path(__file__).resolve().parents[1] / "ui" / "fixtures" / "lab.json"


@pytest.fixture
def snap() -> Snapshot:
    return wire.decode(Snapshot, json.loads(FIXTURE.read_text())["snapshot"])


def with_bytes(snap: Snapshot, index: int, field: str, value: int, dt: float = 1.0) -> Snapshot:
    """The same snapshot `dt` seconds later, with one field of one kernel entry changed."""
    return changed(snap, dt, {index: {field: value}})


def changed(snap: Snapshot, dt: float, entries: dict[int, dict[str, int]]) -> Snapshot:
    """The same snapshot `dt` seconds later, with fields of kernel entries (by index) changed."""
    raw = snap.raw_flows
    vs, names = struct_for(raw.value_layout, raw.value_size)
    values = bytearray(raw.values)
    for index, fields in entries.items():
        rec = list(vs.unpack_from(values, index * raw.value_size))
        for field, value in fields.items():
            rec[names.index(field)] = value
        vs.pack_into(values, index * raw.value_size, *rec)
    return dataclasses.replace(snap, time=snap.time + dt, raw_flows=dataclasses.replace(raw, values=bytes(values)))


def entry_of(snap: Snapshot, key: tuple) -> int:
    """The index of the kernel entry of a row's key."""
    return next(i for i, f in enumerate(snap.kernel_flows)
                if (f.key.proto, str(f.key.src), f.key.sport, str(f.key.dst), f.key.dport) == key)


def but_rates(rows: list[FlowRow]) -> list[tuple]:
    """The rows as plain values, but for their rates (a book's history)."""
    return [dataclasses.astuple(dataclasses.replace(r, up_rate=0.0, down_rate=0.0)) for r in rows]


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
    up = target.up
    later = with_bytes(snap, index, "bytes", up + 5000)
    second = {r.key: r for r in book.rows(later)}
    assert second[target.key].up == up + 5000
    assert second[target.key].up_rate == pytest.approx(5000.0)
    others = [k for k, r in first.items() if r.conn_id is None and k != target.key]
    assert all(second[k] is first[k] for k in others)        # reused, not rebuilt
    assert all(second[k].up_rate == 0 for k in others)


def test_a_book_kept_from_snapshot_to_snapshot_shows_what_a_new_one_would(snap):
    """Rows kept and brought up to date in place are the rows a first reading makes, but for the rates;
    whatever moved: counters, a flow decided again, closed, idle, gone, a device named."""
    book = FlowBook()
    first = {r.key: r for r in book.rows(snap)}
    udp = next(r for r in first.values() if r.conn_id is None and r.proto == "udp" and r.state == "open")
    relayed = next(r for r in first.values() if r.conn_id is not None and r.state == "open")
    others = [r for r in first.values() if r.conn_id is None and r is not udp and r.state == "open"]
    u, x = entry_of(snap, udp.key), entry_of(snap, relayed.key)
    seen = snap.raw_flows.column("last_seen_ns")
    steps = [
        changed(snap, 1.0, {u: {"bytes": udp.up + 100, "packets": 3, "last_seen_ns": seen[u] + 10**9}}),
        changed(snap, 1.0, {u: {"bytes": udp.up + 900, "rule_index": 4, "generation": 1}}),   # decided again
        changed(snap, 1.0, {x: {"flags": ABI.FLOW_TCP_FIN, "rx_bytes": 5000}}),
        changed(snap, 90.0, {}),   # the UDP flows idle
        dataclasses.replace(changed(snap, 1.0, {u: {"last_seen_ns": seen[u] + 95 * 10**9}}),
                            devices={"02:00:5e:00:02:10": "phone"}),
    ]
    later = snap
    for n, step in enumerate(steps):
        later = dataclasses.replace(step, time=later.time + (step.time - snap.time))
        rows = book.rows(later)
        assert but_rates(rows) == but_rates(FlowBook().rows(later)), n
        if n == 3:
            kept = {r.key: r for r in rows}
            assert all(kept[r.key] is r for r in others)   # kept all along, not made again
            assert {r.state for r in others} == {"idle"}
    assert {r.device for r in rows if r.mac} == {"phone"}   # a new name: on every row, however quiet
    gone = dataclasses.replace(later, raw_flows=dataclasses.replace(
        later.raw_flows, keys=later.raw_flows.keys[later.raw_flows.key_size:],
        values=later.raw_flows.values[later.raw_flows.value_size:]))
    assert but_rates(book.rows(gone)) == but_rates(FlowBook().rows(gone))


def test_rates_compare_with_the_bytes_shown_at_the_key_a_second_ago(snap):
    """A kernel-direct flow that a relayed connection then covers, and that the connection leaves again:
    each rate against what the row at its key showed the refresh before, whoever's bytes those were."""
    book = FlowBook()
    rows = book.rows(snap)
    row = next(r for r in rows if r.conn_id is None and r.proto == "udp" and r.state == "open")
    place = rows.index(row)
    conn = Connection(id=99, proto=row.proto, src=(row.src, row.sport), dst=(row.dst, row.dport),
                      started=row.start, rule_index=1, rule="r", outbound="proxy", stage="kernel",
                      up=row.up + 1000, down=row.down)

    def at(later: Snapshot) -> tuple[FlowRow, int]:
        out = book.rows(later)
        got = next(r for r in out if r.key == row.key)
        return got, out.index(got)

    later = dataclasses.replace(snap, time=snap.time + 1, connections=(*snap.connections, conn))
    merged, where = at(later)
    assert (merged.conn_id, merged.up_rate, where) == (99, 1000.0, place)   # in its kernel row's place
    conn = dataclasses.replace(conn, up=conn.up + 500)
    later = dataclasses.replace(later, time=later.time + 2, connections=(*snap.connections, conn))
    assert at(later)[0].up_rate == 250.0
    i = entry_of(snap, row.key)
    alone = changed(snap, later.time + 1 - snap.time, {i: {"bytes": conn.up + 300}})
    back, where = at(alone)
    assert (back.conn_id, back.up_rate, where) == (None, 300.0, place)
    assert at(dataclasses.replace(alone, time=alone.time + 1))[0].up_rate == 0.0


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
