"""The doctor's parts that need no kernel: the report, reading a config, spotting rules that fight TPROXY."""

from __future__ import annotations

from pathlib import Path

from daetui.doctor.host import firewall_conflicts
from daetui.doctor.rawbpf import pass_program, sk_assign_program
from daetui.doctor.report import Verdict, blocker, exit_code, format_report, ok, warn
from daetui.doctor.run import load_target
from daetui.doctor.target import Target
from daetui.paths import RunPaths


def test_report_lines_and_exit_code():
    checks = [ok("bpf syscall", "fine"), warn("rp_filter", "strict on lan0", "use 2"),
              blocker("kernel headers", "missing", "install them")]
    text = format_report(checks)
    lines = text.splitlines()
    assert lines[0].split() == ["ok", "bpf", "syscall", "fine"]
    assert lines[1].startswith("warn") and lines[2].strip() == "fix: use 2"
    assert lines[3].startswith("BLOCKER  kernel headers") and lines[4].strip() == "fix: install them"
    assert lines[-1].startswith("1 blocker(s), 1 warning(s)")
    assert exit_code(checks) == 1
    assert exit_code(checks[:2]) == 0
    assert "no blockers" in format_report(checks[:2])


def test_a_missing_default_config_is_a_warning_a_named_one_a_blocker(tmp_path: Path):
    run = RunPaths(tmp_path / "run")
    absent = str(tmp_path / "absent.toml")
    t, c = load_target(absent, explicit=False, run=run)
    assert c.verdict is Verdict.WARN and t.lan == () and not t.configured
    _, c = load_target(absent, explicit=True, run=run)
    assert c.verdict is Verdict.BLOCKER and "absent.toml" in c.why


def test_a_config_that_does_not_load_is_a_located_blocker(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[global]\nlan_interface = ["lan0"]\ntproxy_port = "x"\n')
    _, c = load_target(str(bad), explicit=True, run=RunPaths(tmp_path / "run"))
    assert c.verdict is Verdict.BLOCKER
    assert "bad.toml:3" in c.why


def test_config_interfaces_are_read(tmp_path: Path):
    good = tmp_path / "good.toml"
    good.write_text('[global]\nlan_interface = ["lan0", "lan1"]\nwan_interface = ["wan0"]\ntproxy_port = 4000\n'
                    '[routing]\nrules = []\nfallback = "direct"\n')
    t, c = load_target(str(good), explicit=True, run=RunPaths(tmp_path / "run"))
    assert c.verdict is Verdict.OK, c
    assert (t.lan, t.wan, t.tproxy_port) == (("lan0", "lan1"), ("wan0",), 4000)
    assert t.interfaces == ("lan0", "lan1", "wan0")


def test_firewall_rules_that_fight_tproxy():
    t = Target(RunPaths(Path("/nonexistent")))
    nft = """table inet mangle {
	chain prerouting {
		type filter hook prerouting priority mangle; policy accept;
		meta l4proto tcp tproxy ip to 127.0.0.1:7893 meta mark set 0x00000001
		meta mark set 0x02000000
		meta mark set 0x00000010
	}
}"""
    ipt = ("-A PREROUTING -p tcp -j TPROXY --on-port 7893 --tproxy-mark 0x1/0x1\n"
           "-A OUTPUT -j MARK --set-xmark 0x8/0xff\n")
    found = firewall_conflicts(t, nft, ipt)
    assert len(found) == 3, found
    assert found[0].startswith("nft: meta l4proto tcp tproxy")
    assert found[1] == "nft: meta mark set 0x02000000"   # daetui's tproxy bit
    assert found[2].startswith("iptables: -A PREROUTING -p tcp -j TPROXY")
    assert firewall_conflicts(t, "table inet filter {\n}\n", None) == []


def test_probe_programs_are_whole_instructions():
    assert len(sk_assign_program()) == 19 * 8
    assert len(pass_program()) == 2 * 8
