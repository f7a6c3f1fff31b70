"""4096 rules in the kernel: every one reachable, the last one decides, one more is refused with its reason."""

from __future__ import annotations

import pytest
from helpers import kernel_flow, plane_in_lab, send_udp, snapshot

from daetui.abi.constants import ABI
from daetui.config.load import parse_config
from daetui.lab.topology import ADDR

pytestmark = pytest.mark.kernel

N = ABI.MAX_MATCH_SETS   # 4096: one match set per rule below


def config(n: int) -> str:
    # Each rule is its own match set (nothing to merge: the outbounds alternate).
    rules = [f'  "dport({20000 + i}) -> {"ga" if i % 2 else "gb"}",' for i in range(n - 1)]
    rules.append('  "dport(42999) -> glast",')
    return ("[global]\nlan_interface = [\"lan0\"]\n[group.ga]\n[group.gb]\n[group.glast]\n"
            "[routing]\nrules = [\n" + "\n".join(rules) + "\n]\nfallback = \"direct\"\n")


@pytest.fixture(scope="module")
def plane(lab, tmp_path_factory):
    with plane_in_lab(lab, config(N), tmp_path_factory.mktemp("run")) as runner:
        yield runner


def test_4096_rules_load_and_the_last_one_decides_in_the_kernel(plane, lab):
    snap = snapshot(plane)
    assert len(snap.rules) == N and snap.health.match_sets == N
    host = ADDR.hosts4[1]
    cases = [(20001, 1, "ga"), (20000 + N - 2, N - 2, "gb"), (42999, N - 1, "glast"), (43000, None, "direct")]
    for sport, (dport, index, outbound) in enumerate(cases, start=33000):
        send_udp(lab, host, dport, sport, 0)
        kf = kernel_flow(plane, host, dport, sport)
        assert (plane.plane.ruleset.outbound_name(kf.outbound), kf.rule_index) == (outbound, index), dport
    # The fallback came after all 4096 match sets, not from running out of tail calls.
    assert snapshot(plane).counters["CHUNK_LIMIT"] == 0


def test_one_more_rule_is_refused_and_nothing_changes(plane):
    before = snapshot(plane)
    result = plane.submit(plane.plane.reload(parse_config(config(N + 1), "test.toml"))).result(60)
    assert not result.ok
    assert result.message == f"rule #{N + 1}: the kernel holds at most {N} rules"
    after = snapshot(plane)
    assert (after.health.generation, len(after.rules)) == (before.health.generation, N)
