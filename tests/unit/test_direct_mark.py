"""A `direct(mark: ..)` rule's mark on the flows user space dials direct: the ones it decided after sniffing,
and the kernel's direct flows it relays (a 4-tuple a relay still held): their sockets carry the rule's mark,
as dae's do, not so_mark_from_dae."""

from __future__ import annotations

from daetui.config.load import parse_config
from daetui.control.connections import ConnectionTable
from daetui.control.decision import Decider
from daetui.control.kernel_sync import KernelSync
from daetui.control.names import NameBook
from daetui.outbound.direct import DirectDialer
from daetui.outbound.manager import Outbounds
from daetui.sniff import SniffResult

CONFIG = """
[global]
lan_interface = ["lan0"]
so_mark_from_dae = 0x80

[routing]
rules = [
  "dport(8080) -> direct(mark: 0x200)",
  "domain(suffix: wan2.example) -> direct(mark: 0x100)",
]
fallback = "direct"
"""


def setup() -> tuple[Decider, Outbounds, ConnectionTable]:
    cfg = parse_config(CONFIG, "test.toml")
    outbounds = Outbounds(cfg, DirectDialer(mark=0x80))
    names = NameBook()
    decider = Decider(KernelSync(None, names, outbounds, cfg.routing, "direct"), names, "domain")
    return decider, outbounds, ConnectionTable()


def open_conn(decider: Decider, table: ConnectionTable, port: int):
    r = decider.first("tcp", ("192.0.2.10", 40000), ("203.0.113.10", port))
    return table.add(proto="tcp", src=("192.0.2.10", 40000), dst=("203.0.113.10", port), rule_index=r.rule_index,
                     rule=r.rule, outbound=r.outbound, stage=r.stage, mark=r.mark)


def test_a_rule_decided_in_user_space_gives_its_mark_to_the_direct_dial() -> None:
    decider, outbounds, table = setup()
    conn = open_conn(decider, table, 8080)
    assert (conn.outbound, conn.mark) == ("direct", 0x200)
    dialer, node = outbounds.dialer(conn.outbound, 4, conn.mark)
    assert node is None and isinstance(dialer, DirectDialer) and dialer.mark == 0x200
    assert outbounds.direct_for(conn.mark) is dialer   # kept, not made per flow


def test_a_name_found_by_sniffing_routes_to_the_marked_direct() -> None:
    decider, outbounds, table = setup()
    conn = open_conn(decider, table, 443)
    assert decider.wants_name(conn)    # undecided: a domain rule, no name known
    decider.with_name(conn, SniffResult("www.wan2.example", "tls"))
    assert (conn.outbound, conn.rule_index, conn.mark) == ("direct", 1, 0x100)
    assert outbounds.dialer(conn.outbound, 4, conn.mark)[0].mark == 0x100


def test_an_unmarked_direct_flow_keeps_daetuis_own_mark() -> None:
    decider, outbounds, table = setup()
    conn = open_conn(decider, table, 443)
    decider.with_name(conn, SniffResult("www.other.example", "tls"))
    assert (conn.outbound, conn.rule_index, conn.mark) == ("direct", None, 0)
    assert outbounds.dialer(conn.outbound, 4, conn.mark)[0] is outbounds.direct
    assert outbounds.direct.mark == 0x80


def test_no_rule_mark_on_a_dial_wan_egress_could_not_tell_from_the_routers_own() -> None:
    """Where wan_egress knows daetui's sockets by so_mark_from_dae alone (no socket hooks on its cgroup), a dial
    carrying another mark would be caught again as the router's own flow: it keeps daetui's mark."""
    decider, outbounds, table = setup()
    outbounds.marks_on_dials = False
    conn = open_conn(decider, table, 8080)
    assert conn.mark == 0x200
    assert outbounds.dialer(conn.outbound, 4, conn.mark)[0] is outbounds.direct
