"""`daetui doctor`, the real command, on this machine and with a capability taken away.

Each run is the CLI as a user runs it (`python -m daetui doctor`), in the
host's network namespace or the lab's router, and its output is read the way
a person reads it: one line per check, starting with its verdict.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.configs import RELAY_CONFIG
from testkit.daemon import ROOT, Daemon, _env, daetui_cli, ns_exec

pytestmark = pytest.mark.kernel

CHECKS = ("config", "privileges", "bpf syscall", "BTF", "bcc", "kernel headers", "clsact", "bpf_sk_assign",
          "sk_lookup", "IP_TRANSPARENT", "TPROXY routing", "interfaces", "tc filters", "nft/iptables",
          "policy routing", "tproxy port", "rp_filter", "IPv4 forwarding", "IPv6 forwarding")
LINE = re.compile(r"^(ok|warn|BLOCKER) +(.+?)  +(.*)$")


def verdicts(out: str) -> dict[str, tuple[str, str]]:
    """check name -> (verdict, explanation), from the report's lines."""
    found = {}
    for line in out.splitlines():
        m = LINE.match(line)
        if m:
            found[m.group(2).strip()] = (m.group(1), m.group(3))
    return found


def doctor(*prefix: str, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`[PREFIX...] python -m daetui doctor ARGS` from the checkout, waited for."""
    return subprocess.run([*prefix, sys.executable, "-m", "daetui", "doctor", *args], capture_output=True, text=True,
                          timeout=240, cwd=ROOT, env=_env())


def assert_every_check(out: str) -> dict[str, tuple[str, str]]:
    v = verdicts(out)
    missing = [c for c in CHECKS if c not in v]
    assert not missing, f"checks missing from the report: {missing}\n{out}"
    assert all(why for _, why in v.values()), out
    return v


def test_doctor_passes_on_this_machine():
    """Every check printed with its verdict; none a blocker; exit 0."""
    done = doctor()
    v = assert_every_check(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [c for c, (verdict, _) in v.items() if verdict == "BLOCKER"], done.stdout
    # The probes really ran (as root they are not skipped).
    for c in ("privileges", "bpf syscall", "kernel headers", "clsact", "bpf_sk_assign", "sk_lookup",
              "IP_TRANSPARENT", "TPROXY routing"):
        assert v[c][0] == "ok", done.stdout
    assert "no blockers" in done.stdout


def test_doctor_names_missing_headers(tmp_path: Path):
    """In a mount namespace where the kernel headers' directory is empty: the headers are the blocker, exit 1."""
    empty = tmp_path / "empty"
    empty.mkdir()
    build = Path(f"/lib/modules/{os.uname().release}/build")
    if not build.exists():
        pytest.skip(f"{build} is not there to hide")
    script = f'mount --bind "{empty}" "{build}" && exec "$@"'
    done = doctor("unshare", "-m", "sh", "-c", script, "sh")
    v = assert_every_check(done.stdout)
    assert done.returncode == 1, done.stdout + done.stderr
    assert v["kernel headers"][0] == "BLOCKER", done.stdout
    assert str(build) in v["kernel headers"][1]
    assert [c for c, (verdict, _) in v.items() if verdict == "BLOCKER"] == ["kernel headers"], done.stdout
    assert re.search(r"^ +fix: install linux-headers-", done.stdout, re.M), done.stdout
    # The host's own headers are untouched by the test.
    assert any(build.iterdir())


@contextlib.contextmanager
def traversable_by_others(path: Path) -> Iterator[None]:
    """Let other users through `path` and its parents for a while (o+x), then put the modes back.

    A clone made in `mktemp -d` (as CI does) sits in a 0700 directory: nobody could not even start
    the checkout's Python there, and the test would see no report at all instead of its verdicts.
    """
    changed = []
    for d in (path, *path.parents):
        mode = d.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(d, mode | stat.S_IXOTH)
            changed.append((d, mode))
    try:
        yield
    finally:
        for d, mode in changed:
            os.chmod(d, stat.S_IMODE(mode))


def test_doctor_names_missing_privileges():
    """As nobody: privileges are the blocker, the probes that need them say so, exit 1."""
    with traversable_by_others(ROOT):
        done = doctor("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
    v = assert_every_check(done.stdout)
    assert done.returncode == 1, done.stdout + done.stderr
    assert v["privileges"][0] == "BLOCKER", done.stdout
    assert "uid 65534" in v["privileges"][1]
    assert [c for c, (verdict, _) in v.items() if verdict == "BLOCKER"] == ["privileges"], done.stdout
    assert v["clsact"] == ("warn", "not probed: a throwaway network namespace needs root"), done.stdout


def test_doctor_names_a_missing_capability():
    """Root, but without CAP_PERFMON (and CAP_SYS_ADMIN, which stands in for it): the verifier would refuse
    daetui's programs, so the doctor names that capability as the blocker."""
    done = doctor("setpriv", "--bounding-set=-perfmon,-sys_admin", "--inh-caps=-all")
    v = assert_every_check(done.stdout)
    assert done.returncode == 1, done.stdout + done.stderr
    assert v["privileges"][0] == "BLOCKER", done.stdout
    assert v["privileges"][1].startswith("running as root without CAP_PERFMON:"), done.stdout
    assert v["bpf syscall"][0] == "ok", done.stdout  # CAP_BPF alone creates maps


def test_doctor_reads_the_configs_interfaces(lab, tmp_path: Path):
    """In the lab's router with a config naming lan0 and wan0: another TC filter and strict rp_filter are warned
    about, a fwmark rule where daetui's goes is a blocker, and all of it is only read (left as it was)."""
    cfg = tmp_path / "daetui.toml"
    cfg.write_text(RELAY_CONFIG.replace('lan_interface = ["lan0"]',
                                        'lan_interface = ["lan0"]\nwan_interface = ["wan0"]'))
    ns = lab.router
    clean = daetui_cli(ns, "doctor", "-c", str(cfg), "--run-dir", str(tmp_path / "run"), timeout=240)
    v = assert_every_check(clean.stdout)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert v["interfaces"] == ("ok", "present: lan0, wan0"), clean.stdout
    assert v["tc filters"][0] == "ok" and v["rp_filter"][0] == "ok", clean.stdout
    assert v["config"][0] == "ok" and "LAN lan0, WAN wan0" in v["config"][1], clean.stdout

    rp_before = ns_exec(ns, "sysctl", "-n", "net.ipv4.conf.wan0.rp_filter").stdout.strip()
    had_clsact = "clsact" in ns_exec(ns, "tc", "qdisc", "show", "dev", "lan0").stdout
    steps = [["tc", "filter", "add", "dev", "lan0", "ingress", "prio", "5", "bpf", "bytecode", "1,6 0 0 0,",
              "classid", "1"],
             ["sysctl", "-w", "net.ipv4.conf.wan0.rp_filter=1"],
             ["ip", "rule", "add", "fwmark", "0x2000000/0x2000000", "lookup", "2024", "pref", "1000"]]
    if not had_clsact:
        steps.insert(0, ["tc", "qdisc", "add", "dev", "lan0", "clsact"])
    try:
        for argv in steps:
            r = ns_exec(ns, *argv)
            assert r.returncode == 0, (argv, r.stderr)
        tc_before = ns_exec(ns, "tc", "filter", "show", "dev", "lan0", "ingress").stdout
        done = daetui_cli(ns, "doctor", "-c", str(cfg), "--run-dir", str(tmp_path / "run"), timeout=240)
        v = assert_every_check(done.stdout)
        assert done.returncode == 1, done.stdout + done.stderr
        assert v["tc filters"][0] == "warn" and "lan0 ingress: bpf prio 5" in v["tc filters"][1], done.stdout
        assert v["rp_filter"][0] == "warn" and "wan0" in v["rp_filter"][1], done.stdout
        assert v["policy routing"][0] == "BLOCKER", done.stdout
        assert "rule fwmark 0x2000000 lookup 2024 pref 1000" in v["policy routing"][1]
        # Only read: the filter is still there, untouched.
        assert ns_exec(ns, "tc", "filter", "show", "dev", "lan0", "ingress").stdout == tc_before
    finally:
        ns_exec(ns, "ip", "rule", "del", "fwmark", "0x2000000/0x2000000", "lookup", "2024", "pref", "1000")
        ns_exec(ns, "sysctl", "-w", f"net.ipv4.conf.wan0.rp_filter={rp_before}")
        if had_clsact:
            ns_exec(ns, "tc", "filter", "del", "dev", "lan0", "ingress", "prio", "5")
        else:
            ns_exec(ns, "tc", "qdisc", "del", "dev", "lan0", "clsact")


def test_doctor_beside_a_running_daemon(lab, tmp_path: Path):
    """With daetui running: its own filter, rules and port are not conflicts."""
    d = Daemon.from_text(lab.router, RELAY_CONFIG, tmp_path)
    with d:
        done = d.cli("doctor", "-c", str(d.config_path), timeout=240)
    v = assert_every_check(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert v["tc filters"][0] == "ok", done.stdout
    assert v["policy routing"][0] == "ok" and "a daetui runs here" in v["policy routing"][1], done.stdout
    assert v["tproxy port"][0] == "ok" and "held by the daetui running here" in v["tproxy port"][1], done.stdout
