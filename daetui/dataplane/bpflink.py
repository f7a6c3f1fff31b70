"""BPF links that libbcc does not create: one bpf(BPF_LINK_CREATE) syscall.

The sk_lookup program is attached to a network namespace through a link, the
socket hooks to a cgroup.
The link lives as long as its file descriptor: when daetui exits, however it
exits, the kernel detaches the program. Nothing to journal, nothing to clean.
"""

from __future__ import annotations

import ctypes as ct
import os
import platform

BPF_LINK_CREATE = 28
BPF_SK_LOOKUP = 36
# enum bpf_attach_type: the cgroup socket hooks (uapi/linux/bpf.h).
BPF_CGROUP_INET_SOCK_CREATE = 2
BPF_CGROUP_INET4_CONNECT = 10
BPF_CGROUP_INET6_CONNECT = 11
BPF_CGROUP_UDP4_SENDMSG = 14
BPF_CGROUP_UDP6_SENDMSG = 15
BPF_CGROUP_UDP4_RECVMSG = 19
BPF_CGROUP_UDP6_RECVMSG = 20
BPF_CGROUP_INET_SOCK_RELEASE = 34
BPF_PROG_TYPE_SK_LOOKUP = 30

# bpf(2)'s number per architecture (asm/unistd.h).
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "armv7l": 386, "armv6l": 386, "ppc64le": 361,
            "mips": 4355, "mipsel": 4355, "mips64": 5315, "i686": 357, "i386": 357}

_libc = ct.CDLL(None, use_errno=True)


class _LinkCreateAttr(ct.Structure):
    # union bpf_attr, link_create member; the rest of the union must be zero.
    _fields_ = [("prog_fd", ct.c_uint32), ("target_fd", ct.c_uint32), ("attach_type", ct.c_uint32),
                ("flags", ct.c_uint32), ("_zero", ct.c_uint8 * 48)]


def bpf_syscall(cmd: int, attr: ct.Structure, what: str) -> int:
    """bpf(cmd, &attr, sizeof attr); its result (a file descriptor for most commands), or OSError."""
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise OSError(f"bpf syscall number unknown for {platform.machine()}")
    fd = _libc.syscall(nr, cmd, ct.byref(attr), ct.sizeof(attr))
    if fd < 0:
        err = ct.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return int(fd)


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """Attach `prog_fd` to `target_fd`; returns the link's file descriptor."""
    attr = _LinkCreateAttr(prog_fd=prog_fd, target_fd=target_fd, attach_type=attach_type)
    return bpf_syscall(BPF_LINK_CREATE, attr, "BPF_LINK_CREATE")


def attach_sk_lookup(prog_fd: int) -> int:
    """Attach an sk_lookup program to the calling thread's network namespace."""
    ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return link_create(prog_fd, ns, BPF_SK_LOOKUP)
    finally:
        os.close(ns)
