"""The budget keys: defaults, located errors, and the flows' bound under the descriptor limit."""

from __future__ import annotations

import pytest

from daetui.config.errors import ConfigError
from daetui.config.load import parse_config
from daetui.control.budget import FD_SHARE, FDS_PER_FLOW, FlowBudget, flows_for_descriptors, pipe_bound


def test_defaults():
    g = parse_config("[global]\n", "t.toml").global_
    assert (g.max_flows, g.max_flows_per_client, g.tcp_idle_timeout) == (16384, 4096, 7440.0)
    assert (g.udp_buffer_bytes, g.udp_flow_buffer_bytes) == (32 << 20, 256 << 10)


@pytest.mark.parametrize("line, says", [
    ('tcp_idle_timeout = "0s"', "t.toml:2:20: global.tcp_idle_timeout: expected a duration above zero"),
    ("max_flows_per_client = 0", "t.toml:2:24: global.max_flows_per_client: expected a number above zero"),
    ("max_flows = -1", "t.toml:2:13: global.max_flows: expected a number above zero"),
    ('udp_buffer_bytes = "1M"', "t.toml:2:20: global.udp_buffer_bytes: expected an integer"),
])
def test_bad_values_are_located(line, says):
    with pytest.raises(ConfigError) as e:
        parse_config(f"[global]\n{line}\n", "t.toml")
    assert str(e.value).startswith(says)


@pytest.mark.parametrize("limit", [1024, 20000, 1 << 20])
def test_the_flows_budget_keeps_the_daemon_under_80_percent_of_its_descriptors(limit):
    flows = flows_for_descriptors(limit)
    assert flows * FDS_PER_FLOW + 2 * pipe_bound(limit) < FD_SHARE * limit
    assert flows >= 64


def test_a_client_over_its_budget_is_refused_and_counted_and_an_ended_flow_gives_its_place_back():
    b = FlowBudget(max_flows=5, max_flows_per_client=3)
    assert [b.take("a") for _ in range(4)] == [True, True, True, False]
    assert b.take("b") and b.take("b") and not b.take("c")   # the overall bound
    assert (b.refused_client, b.refused, b.last_refused) == (1, 1, "c")
    assert b.busiest() == ("a", 3)
    b.give("a")
    assert b.take("c") and b.by_client == {"a": 2, "b": 2, "c": 1}
    for c in ("a", "a", "b", "b", "c"):
        b.give(c)
    assert b.flows == 0 and b.by_client == {}
    b.give("a")  # a stray give does not go below zero
    assert b.flows == 0
