"""Every check, in the order a reader fixes them: the process, the kernel, then the host and its config."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
from pathlib import Path

from daetui.config.errors import ConfigError
from daetui.config.load import load_config
from daetui.dataplane.system import read_sysctl
from daetui.doctor import host, kernel, sandbox
from daetui.doctor.report import Check, Verdict, blocker, clean, ok, warn
from daetui.doctor.target import Target
from daetui.net.netns import NETNS_RUN_DIR, current_netns_inode, init_netns_inode
from daetui.paths import RunPaths


def _netns_name() -> str:
    here = current_netns_inode()
    try:
        for entry in sorted(NETNS_RUN_DIR.iterdir()):
            with contextlib.suppress(OSError):
                if entry.stat().st_ino == here:
                    return f"{entry.name} (ip netns)"
    except OSError:
        pass
    try:
        return "the host's" if here == init_netns_inode() else f"inode {here}"
    except OSError:
        return f"inode {here}"


def machine_line() -> str:
    """The kernel and the network namespace the checks look at."""
    return f"daetui doctor: Linux {os.uname().release} {platform.machine()}, network namespace {_netns_name()}"


def load_target(path: str, explicit: bool, run: RunPaths) -> tuple[Target, Check]:
    """The config's interfaces and numbers, and the line saying what was read."""
    name = "config"
    if not explicit and not Path(path).exists():
        return Target(run), warn(name, f"none at {path}: the checks use the defaults and no interfaces",
                                 "pass --config FILE to check the interfaces it names")
    try:
        cfg = load_config(path)
    except ConfigError as e:
        return Target(run), blocker(name, f"does not load: {e}", "fix it (daetui validate FILE says the same)")
    t = Target.from_config(cfg, run)
    lan = ", ".join(clean(n) for n in t.lan) or "none"
    wan = ", ".join(clean(n) for n in t.wan) or "none"
    return t, ok(name, f"{cfg.source}: LAN {lan}, WAN {wan}, tproxy_port {t.tproxy_port}")


def run_checks(config: str, explicit: bool, run_dir: str | None = None) -> list[Check]:
    """All checks for this machine and the config at `config` (`explicit`: named by the user, so it must load)."""
    from pyroute2 import IPRoute

    target, config_check = load_target(config, explicit, RunPaths.for_here(run_dir))
    priv = kernel.privileged()
    bcc = kernel.check_bcc()
    checks = [config_check, kernel.check_privileges(), kernel.check_bpf_syscall(priv), kernel.check_btf(), bcc,
              kernel.check_headers(priv, bcc.verdict is Verdict.OK)]
    ipv6 = socket.has_ipv6 and read_sysctl("net.ipv6.conf.all.disable_ipv6") == "0"
    checks += sandbox.probe_all(priv, ipv6)
    with IPRoute() as ipr:
        checks += [host.check_interfaces(target, ipr), host.check_tc_filters(target, ipr),
                   host.check_firewall(target, priv), host.check_policy_routing(target, ipr),
                   host.check_tproxy_port(target), host.check_rp_filter(target), host.check_ipv4_forwarding(target),
                   host.check_ipv6_forwarding(target, ipr)]
    return checks
