"""4096 rules in the kernel: every one reachable, the last one decides, one more is refused with its reason.

The walk (every chunk of ROUTE_CHUNK match sets and the tail call between
them) and the classifier run on testkit's harness, on crafted packets; one flow
of the lab, to a daemon holding the 4096 rules, is decided by the last of them.
"""

from __future__ import annotations

import pytest
from helpers import kernel_flow, plane_in_lab, send_udp, snapshot

from daetui.abi.constants import ABI
from daetui.config.load import parse_config
from daetui.lab.topology import ADDR
from testkit.packets import Packet
from testkit.progtest import shared_harness

pytestmark = pytest.mark.kernel

N = ABI.MAX_MATCH_SETS   # 4096: one match set per rule below


def config(n: int) -> str:
    # Each rule is its own match set (nothing to merge: the outbounds alternate).
    rules = [f'  "dport({20000 + i}) -> {"ga" if i % 2 else "gb"}",' for i in range(n - 1)]
    rules.append('  "dport(42999) -> glast",')
    return ("[global]\nlan_interface = [\"lan0\"]\n[group.ga]\n[group.gb]\n[group.glast]\n"
            "[routing]\nrules = [\n" + "\n".join(rules) + "\n]\nfallback = \"direct\"\n")


@pytest.fixture(scope="module")
def harness():
    h = shared_harness()
    h.reset()
    h.load(config(N))
    return h


@pytest.mark.parametrize("walk", [True, False], ids=["walk", "classifier"])
def test_every_chunk_of_the_walk_reaches_its_rules_and_the_last_one_decides(harness, walk):
    """Rules on both sides of every tail call (each ROUTE_CHUNK match sets), a sample in between,
    the last rule, and the fallback after all 4096 match sets, not after running out of tail calls;
    by the walk, and by the classifier (every word of its 64-word bitmaps, across its runs)."""
    assert len(harness.kernel_rules.match_sets) == N
    harness.set_walk(walk)
    assert harness.classified == (not walk)
    chunk = ABI.ROUTE_CHUNK
    indices = sorted({0, 1, *range(0, N - 1, 61), *(k * chunk - 1 for k in range(1, N // chunk)),
                      *(k * chunk for k in range(1, N // chunk)), N - 2})
    cases = [(20000 + i, i, "ga" if i % 2 else "gb") for i in indices] + [(42999, N - 1, "glast"),
                                                                            (43000, None, "direct")]
    for dport, index, outbound in cases:
        v = harness.run(Packet("192.0.2.10", "203.0.113.11", 33000, dport, "udp"))
        assert (v.outbound, v.rule_index) == (outbound, index), dport
        assert "CHUNK_LIMIT" not in v.counters
    harness.set_walk(False)


@pytest.fixture(scope="module")
def plane(lab, tmp_path_factory):
    with plane_in_lab(lab, config(N), tmp_path_factory.mktemp("run")) as runner:
        yield runner


def test_4096_rules_load_and_the_last_one_decides_in_the_kernel(plane, lab):
    snap = snapshot(plane)
    assert len(snap.rules) == N and snap.health.match_sets == N
    host, dport, sport = ADDR.hosts4[1], 42999, 33000
    send_udp(lab, host, dport, sport, 0)
    kf = kernel_flow(plane, host, dport, sport)
    assert (plane.plane.ruleset.outbound_name(kf.outbound), kf.rule_index) == ("glast", N - 1)
    assert snapshot(plane).counters["CHUNK_LIMIT"] == 0


def test_one_more_rule_is_refused_and_nothing_changes(plane):
    before = snapshot(plane)
    result = plane.submit(plane.plane.reload(parse_config(config(N + 1), "test.toml"))).result(60)
    assert not result.ok
    assert result.message == f"rule #{N + 1}: the kernel holds at most {N} rules"
    after = snapshot(plane)
    assert (after.health.generation, len(after.rules)) == (before.health.generation, N)
