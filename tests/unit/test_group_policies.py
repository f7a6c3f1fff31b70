"""Groups: dae's filters, the policies, tolerance, pinning and health per family."""

from __future__ import annotations

import pytest

from daetui.outbound.group import FamilyHealth, Group, NodeHealth, NodeRef, members, parse_filter, parse_policy
from daetui.routing.errors import RuleError

NODES = [NodeRef("hk1", "mine"), NodeRef("hk2-slow", "mine"), NodeRef("jp1", "other"), NodeRef("us1")]


def names(filters: list[str]) -> list[tuple[str, float]]:
    return [(n.name, add) for n, add in members(tuple(parse_filter(f) for f in filters), NODES)]


def test_filters_select_by_name_and_subtag():
    assert names([]) == [(n.name, 0.0) for n in NODES]                    # no filter: all
    assert names(["name(keyword: hk)"]) == [("hk1", 0.0), ("hk2-slow", 0.0)]
    assert names(["name(jp1, us1)"]) == [("jp1", 0.0), ("us1", 0.0)]     # plain names are exact
    assert names(["subtag(mine) && !name(regex: slow$)"]) == [("hk1", 0.0)]
    assert names(["subtag(keyword: oth)", "name(us1) [add_latency: -500ms]"]) == [("jp1", 0.0), ("us1", -0.5)]


@pytest.mark.parametrize("bad, says", [
    ("name(hk) [latency: 5ms]", "add_latency"),
    ("country(hk)", "unknown function"),
    ("name(regex: '(')", "bad regular expression"),
])
def test_bad_filters_say_where(bad, says):
    with pytest.raises(RuleError, match=says):
        parse_filter(bad)


def test_policies_parse():
    assert parse_policy("fixed(2)") == ("fixed", 2)
    assert parse_policy("min_moving_avg") == ("min_moving_avg", 0)
    with pytest.raises(ValueError, match="expected random"):
        parse_policy("fastest")


def health(**latencies: list[float | None]) -> dict[str, NodeHealth]:
    out = {}
    for name, values in latencies.items():
        h = NodeHealth(name)
        for v in values:
            h.families[4].record(v, "" if v is not None else "timeout")
        out[name] = h
    return out


def test_min_policies_pick_the_faster_node_and_skip_dead_ones():
    g = Group("g", "min")
    g.set_members([("a", 0.0), ("b", 0.0)])
    assert g.select(health(a=[0.2], b=[0.1])) == "b"
    assert g.select(health(a=[0.2], b=[0.1, None])) == "a"          # b's last check failed
    avg = Group("g", "min_avg10")
    avg.set_members([("a", 0.0), ("b", 0.0)])
    # a's last check is the fastest, but its average is not.
    assert avg.select(health(a=[0.5, 0.5, 0.05], b=[0.2, 0.2, 0.2])) == "b"
    moving = Group("g", "min_moving_avg")
    moving.set_members([("a", 0.0), ("b", -0.3)])                    # add_latency makes b look faster
    assert moving.select(health(a=[0.1], b=[0.3])) == "b"


def test_tolerance_keeps_the_current_node():
    g = Group("g", "min", tolerance=0.05)
    g.set_members([("a", 0.0), ("b", 0.0)])
    assert g.select(health(a=[0.10], b=[0.20])) == "a"
    assert g.select(health(a=[0.12], b=[0.09])) == "a"               # 30 ms better: within 50 ms
    assert g.select(health(a=[0.20], b=[0.09])) == "b"               # 110 ms better: switch


def test_pin_fixed_random_and_no_live_node():
    g = Group("g", "min")
    g.set_members([("a", 0.0), ("b", 0.0)])
    g.pinned = "b"
    assert g.select(health(a=[0.1], b=[0.9])) == "b"
    assert g.select(health(a=[0.1], b=[None])) == "a"                # a dead pin does not hold
    g.set_members([("a", 0.0)])
    assert g.pinned is None                                          # the pinned node left the group
    assert g.select(health(a=[None])) is None
    f = Group("g", "fixed(1)")
    f.set_members([("a", 0.0), ("b", 0.0)])
    assert f.select(health(a=[0.1], b=[None])) == "b"                # fixed means fixed
    f.pinned = "a"
    assert f.select(health(a=[0.1], b=[0.1])) == "a"                 # but a live pin wins
    r = Group("g", "random")
    r.set_members([("a", 0.0), ("b", 0.0)])
    assert {r.select(health(a=[0.1], b=[0.1])) for _ in range(200)} == {"a", "b"}


def test_health_is_per_family():
    h = NodeHealth("a")
    h.families[6].record(None, "no route")
    assert h.alive(4) and not h.alive(6)
    fh = FamilyHealth()
    assert fh.alive and fh.avg10() is None                          # unchecked: alive, no figure


def test_a_bad_filter_in_the_config_names_its_place():
    from daetui.config.errors import ConfigError
    from daetui.config.load import parse_config

    text = '[group.proxy]\nfilter = ["name(keyword: hk)", "name(hk) && nation(jp)"]\n[routing]\nfallback = "proxy"\n'
    with pytest.raises(ConfigError) as e:
        parse_config(text, "g.toml")
    assert "g.toml:2:" in str(e.value) and "unknown function 'nation'" in str(e.value)
