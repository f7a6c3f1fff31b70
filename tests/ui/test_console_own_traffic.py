"""The router's own traffic in the console, on the recorded daemon given a WAN binding: the Process column
(`name[pid]`, blank for LAN clients' flows), the `proc:` filter, a flow's details and the trace it asks for
(`pname`, `wan`), and each interface's side and the pattern that named it in Overview."""

from __future__ import annotations

import base64
import re

from drive import app_text, line_text, until

from daetui.abi.flowrecord import struct_for
from daetui.control import wire
from daetui.control.state import Snapshot
from daetui.ui.screens.modals import FlowScreen

WAN0 = 3   # wan0's ifindex in the recording


def own_traffic(frozen, process: str = "curl", pid: int = 4242) -> dict:
    """wan0 bound as a WAN interface (named by `auto`), lan0 by `lan*`; the newest relayed TCP connection
    made by `process` on the router, its kernel entry seen on wan0 with no MAC (as the WAN program records
    the router's own flows). Returns that connection."""
    snap = frozen.data["snapshot"]
    for i in snap["interfaces"]:
        if i["name"] == "wan0":
            assert i["index"] == WAN0
            i.update(configured=True, bound=True, since=snap["time"] - 5, side="wan", matched="auto",
                     programs=["wan_egress (egress)"], tx_packets=12, tx_bytes=3400)
        if i["name"] == "lan0":
            i.update(side="lan", matched="lan*")
    raw = wire.decode(Snapshot, snap).raw_flows
    keys = [(f.proto, f.src, f.sport, f.dst, f.dport) for f in raw.records()]
    conn = next(c for c in snap["connections"]
                if c["proto"] == "tcp" and (c["proto"], *c["src"], *c["dst"]) in keys)
    conn.update(started=max(c["started"] for c in snap["connections"]) + 10, pid=pid, process=process)
    vs, names = struct_for(raw.value_layout, raw.value_size)
    values = bytearray(raw.values)
    at = keys.index((conn["proto"], *conn["src"], *conn["dst"])) * raw.value_size
    rec = list(vs.unpack_from(values, at))
    rec[names.index("ifindex")], rec[names.index("mac")] = WAN0, bytes(6)
    vs.pack_into(values, at, *rec)
    snap["raw_flows"]["values"] = {"b64": base64.b64encode(bytes(values)).decode()}
    return conn


def column_text(table, row, title: str) -> str:
    """What the table shows of `row` under the column `title`."""
    header = "".join(seg.text for seg in table.render_line(0))
    start = header.index(f"{title} ")
    end = start + re.match(r"\S+ +", header[start:]).end()   # to the next column's title
    return line_text(table, row)[start:end].strip()


async def settled(pilot) -> None:
    await until(pilot, lambda: pilot.app.snapshot is not None)
    await pilot.pause(0.2)


async def test_own_flows_show_their_process_and_filter_by_it(frozen, frozen_app) -> None:
    conn = own_traffic(frozen)
    app = frozen_app("connections")
    async with app.run_test(size=(160, 48)) as pilot:
        await settled(pilot)
        pane = app.panes["connections"]
        assert "proc" in pane.table.visible_columns()
        own = next(r for r in pane.shown if r.conn_id == conn["id"])
        assert (own.pid, own.process, own.process_label) == (4242, "curl", "curl[4242]")
        assert column_text(pane.table, own, "Process") == "curl[4242]"
        lan = next(r for r in pane.shown if r.conn_id is None)
        assert lan.process == "" and column_text(pane.table, lan, "Process") == ""

        # proc:NAME keeps the flows of that process; its alias pname: too; negated, it keeps the others.
        await pilot.press("slash", *"proc:cur", "enter")
        await until(pilot, lambda: pane.shown == [own])
        assert "filter: proc:cur" in app_text(app)
        pane.query_one("#flow-filter").value = "!pname:curl"
        await until(pilot, lambda: own not in pane.shown and len(pane.shown) == len(pane.all_rows) - 1)

        # Its details name the process; the trace asks about the process, on the WAN interface it leaves by.
        pane.query_one("#flow-filter").value = "proc:curl"
        await until(pilot, lambda: pane.shown == [own])
        pane.table.focus()
        await pilot.press("enter")
        screen = await until(pilot, lambda: isinstance(app.screen, FlowScreen) and app.screen)
        await until(pilot, lambda: screen.trace is not None)
        text = app_text(app)
        assert re.search(r"process +curl · pid 4242 ", text) and re.search(r"interface +wan0 ", text)
        assert not re.search(r"client +", text)   # the router's own: no LAN client, no MAC
        asked = frozen.explained[-1]
        assert (asked["pname"], asked["wan"], asked["iface"], asked["mac"]) == ("curl", "wan0", None, None)


async def test_lan_flows_have_no_process_and_no_column_without_a_wan_interface(frozen, frozen_app) -> None:
    app = frozen_app("connections")
    async with app.run_test(size=(160, 48)) as pilot:
        await settled(pilot)
        pane = app.panes["connections"]
        assert pane.shown and all(r.process == "" and r.process_label == "" for r in pane.shown)
        assert "proc" not in pane.table.visible_columns()
        await pilot.press("enter")
        await until(pilot, lambda: frozen.explained)
        assert frozen.explained[-1]["pname"] is None and frozen.explained[-1]["wan"] is None
        assert frozen.explained[-1]["iface"] == "lan0"
        assert "process" not in app_text(app)


async def test_overview_shows_each_bindings_side_and_the_pattern_that_named_it(frozen, frozen_app) -> None:
    own_traffic(frozen)
    app = frozen_app("overview")
    async with app.run_test(size=(160, 48)) as pilot:
        await settled(pilot)
        text = await until(pilot, lambda: "wan_egress" in app_text(app) and app_text(app))
        lines = {ln.split()[1]: ln for ln in text.splitlines() if ln.strip("│ ").startswith(("lo ", "lan", "wan"))}
        assert "LAN (lan*)" in lines["lan0"] and "lan_ingress (ingress), lan_egress (egress)" in lines["lan0"]
        assert "WAN (auto)" in lines["wan0"] and "bound" in lines["wan0"]
        assert "wan_egress (egress)" in lines["wan0"] and "3.4 kB" in lines["wan0"]
        assert "LAN" not in lines["lo"] and "WAN" not in lines["lo"] and "not configured" in lines["lo"]
