"""The Overview pane shows the relay path's budgets, and a refusal stands out."""

from __future__ import annotations

from rich.text import Text

from daetui.control.state import Budgets, Health, Snapshot
from daetui.ui.panes.overview import OverviewPane


def budget_text(b: Budgets) -> Text:
    snap = Snapshot(time=0.0, health=Health(1, 0.0, "c", 1, 0, "direct", True), budgets=b)
    return Text.assemble(*OverviewPane._budgets(snap))


def test_refused_flows_and_dropped_datagrams_are_shown():
    text = budget_text(Budgets(flows=7, max_flows=100, max_flows_per_client=4, busiest_client="192.0.2.10",
                               busiest_flows=4, refused_client=3, last_refused="192.0.2.10", fds=40,
                               fd_limit=20000, udp_buffered=2048, udp_buffer_limit=1 << 20, udp_buffer_drops=5,
                               loop_lag_p99_ms=1.25))
    plain = text.plain
    assert "flows 7/100 · busiest 192.0.2.10 4/4" in plain
    assert "refused 3 over a client's budget, 0 overall (last 192.0.2.10)" in plain
    assert "fds 40/20.0k" in plain
    assert "dropped 5" in plain and "loop lag p99 1.2 ms" in plain
    refused = plain.index("refused 3")
    assert any(span.style == "red" and span.start <= refused < span.end for span in text.spans)


def test_nothing_refused_says_so():
    assert "refused none" in budget_text(Budgets()).plain
