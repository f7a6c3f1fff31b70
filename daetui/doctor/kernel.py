"""What the kernel and this process offer: privileges, the BPF syscall, BTF, BCC and the kernel headers."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

from daetui.doctor.rawbpf import create_array_map
from daetui.doctor.report import Check, blocker, not_probed, ok, warn

CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 12, 21, 38, 39
BTF = Path("/sys/kernel/btf/vmlinux")
KHEADERS = Path("/sys/kernel/kheaders.tar.xz")  # CONFIG_IKHEADERS: BCC unpacks these when build/ is missing


def effective_caps() -> int:
    """This process's effective capability set, as a bit mask."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def missing_caps() -> list[str]:
    """Which of CAP_NET_ADMIN, CAP_BPF and CAP_PERFMON this process lacks (CAP_SYS_ADMIN stands in for the last two).

    Without CAP_PERFMON the verifier applies its Spectre mitigations and refuses daetui's route_chunk.
    """
    caps = effective_caps()
    sys_admin = bool(caps & 1 << CAP_SYS_ADMIN)
    need = (("CAP_NET_ADMIN", CAP_NET_ADMIN, False), ("CAP_BPF", CAP_BPF, sys_admin),
            ("CAP_PERFMON", CAP_PERFMON, sys_admin))
    return [name for name, cap, covered in need if not caps & 1 << cap and not covered]


def privileged() -> bool:
    """Whether this process may do what daetui does: load and attach BPF programs, change routing."""
    return not missing_caps()


def check_privileges() -> Check:
    name = "privileges"
    uid = os.geteuid()
    missing = missing_caps()
    if not missing:
        who = "running as root" if uid == 0 else f"running as uid {uid} with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"
        return ok(name, f"{who}: daetui can load BPF programs, attach them and change routing")
    who = "root" if uid == 0 else f"uid {uid}"
    return blocker(name, f"running as {who} without {', '.join(missing)}: daetui loads BPF programs (the verifier "
                   "refuses its route_chunk without CAP_PERFMON), attaches them and adds policy routing",
                   "run daetui as root with all its capabilities (sudo, or the systemd unit: "
                   "`daetui install-service`)")


def check_bpf_syscall(priv: bool) -> Check:
    name = "bpf syscall"
    try:
        os.close(create_array_map())
    except OSError as e:
        if e.errno == errno.ENOSYS:
            return blocker(name, "the kernel has no bpf() syscall", "a kernel built with CONFIG_BPF_SYSCALL=y")
        if e.errno == errno.EPERM and not priv:
            return not_probed(name, "bpf() refuses unprivileged callers here (EPERM)")
        if e.errno == errno.EPERM:
            return blocker(name, "bpf() refused a one-entry map although this process holds CAP_BPF: a container, "
                           "a seccomp filter or kernel lockdown forbids it",
                           "run daetui on the host itself, or allow bpf() to it (CAP_BPF, CAP_NET_ADMIN, no seccomp "
                           "filter on bpf, lockdown off)")
        return blocker(name, f"bpf() could not create a one-entry map ({e.strerror or e})",
                       "check the kernel log (dmesg) and the memory limits (ulimit -l)")
    return ok(name, "bpf() created (and freed) a one-entry array map")


def check_btf() -> Check:
    name = "BTF"
    try:
        size = BTF.stat().st_size
    except OSError:
        return warn(name, f"{BTF} is missing: daetui's programs load without it (BCC brings their own type "
                    "information), but bpftool cannot describe kernel types and the kernel was likely built "
                    "without CONFIG_DEBUG_INFO_BTF",
                    "a kernel with CONFIG_DEBUG_INFO_BTF=y, if other BPF tools need it")
    return ok(name, f"{BTF} is there ({size // 1024} KiB of kernel type information)")


def check_bcc() -> Check:
    name = "bcc"
    try:
        import bcc  # noqa: F401
    except ImportError as e:
        return blocker(name, f"{sys.executable} cannot import bcc ({e}): daetui compiles and loads its kernel "
                       "programs with it", "apt install python3-bpfcc; a venv must be made from /usr/bin/python3 "
                       "with --system-site-packages (the PyPI package called bcc is a different thing)")
    return ok(name, f"bcc imports in {sys.executable}")


def headers_dir() -> Path:
    """Where BCC looks for the running kernel's headers."""
    return Path(f"/lib/modules/{os.uname().release}/build")


# A program that includes what daetui's do, compiled (and, with privileges, loaded) by BCC in a child process:
# BCC and clang write their errors to the terminal, and a child keeps them for the report.
_BCC_PROBE = r'''
import sys
from bcc import BPF
b = BPF(text=b"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <linux/ip.h>
int dt_doctor(struct __sk_buff *skb) { return TC_ACT_OK; }
""")
if sys.argv[1] == "load":
    b.load_func(b"dt_doctor", BPF.SCHED_CLS)
b.cleanup()
'''


def check_headers(priv: bool, bcc_ok: bool) -> Check:
    name = "kernel headers"
    build = headers_dir()
    rel = os.uname().release
    there = (build / "include").is_dir() or (build / "Makefile").is_file()
    if not there and not KHEADERS.exists():
        gone = "is empty" if build.is_dir() else "is missing"
        return blocker(name, f"{build} {gone}: BCC compiles daetui's kernel programs against the running kernel's "
                       "headers at every start",
                       f"install linux-headers-{rel}; on a kernel without a matching package, link build/ and source/ "
                       f"under /lib/modules/{rel}/ to the nearest headers (scripts/setup.sh does)")
    where = str(build) if there else f"{KHEADERS} (CONFIG_IKHEADERS)"
    if not bcc_ok:
        return warn(name, f"{where} is there; not tried: bcc does not import (see above)")
    mode = "load" if priv else "compile"
    try:
        done = subprocess.run([sys.executable, "-c", _BCC_PROBE, mode], capture_output=True, text=True,
                              timeout=180, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return warn(name, f"BCC did not compile a tiny program against {where} within 180 s",
                    "try again on a quieter machine; `daetui run` compiles the same way")
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip() and "modprobe" not in ln]
        errors = [ln for ln in lines if "error" in ln.lower()]
        why = (errors or lines or [f"exit status {done.returncode}"])[0].strip()
        return blocker(name, f"BCC could not build a tiny TC program against {where}: {why[:200]}",
                       f"install headers matching {rel} (linux-headers-{rel}), or link build/ and source/ to the "
                       "nearest ones")
    did = "compiled and loaded" if priv else "compiled (not loaded: no privileges)"
    return ok(name, f"BCC {did} a tiny TC program against {where}")
