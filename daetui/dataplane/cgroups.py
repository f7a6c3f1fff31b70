"""The cgroup v2 hierarchy that daetui's socket hooks attach to.

`global.cgroup` names a cgroup as /proc/PID/cgroup prints it ("/" the root,
"/system.slice"), not a file system path: the hierarchy is mounted in
different places (/sys/fs/cgroup, /sys/fs/cgroup/unified on hybrid systems),
or nowhere visible to daetui (`ip netns exec` mounts a fresh /sys). Where it
is not mounted, daetui mounts it itself, journaled, and unmounts it on exit.
"""

from __future__ import annotations

import ctypes as ct
import os
from pathlib import Path

MNT_DETACH = 2
_libc = ct.CDLL(None, use_errno=True)


def cgroup2_root(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Where the whole cgroup v2 hierarchy is mounted here, or None."""
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        # "36 25 0:31 / /sys/fs/cgroup rw,... shared:9 - cgroup2 cgroup2 rw,..."
        left, sep, right = line.partition(" - ")
        if sep and right.split(" ", 1)[0] == "cgroup2":
            fields = left.split(" ")
            if len(fields) > 4 and fields[3] == "/":
                return fields[4].replace("\\040", " ")
    return None


def mount_cgroup2(path: str) -> None:
    """Mount the cgroup v2 hierarchy at `path` (made if missing)."""
    os.makedirs(path, exist_ok=True)
    if _libc.mount(b"cgroup2", path.encode(), b"cgroup2", 0, None) != 0:
        err = ct.get_errno()
        raise OSError(err, f"mount cgroup2 on {path}: {os.strerror(err)}")


def unmount(path: str) -> None:
    """Unmount (lazily) what is mounted at `path`, and remove the directory."""
    if _libc.umount2(path.encode(), MNT_DETACH) != 0:
        err = ct.get_errno()
        if err not in (22, 2):  # EINVAL: not a mount point (any more); ENOENT: gone
            raise OSError(err, f"umount {path}: {os.strerror(err)}")
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


def own_cgroup(proc: str = "/proc/self/cgroup") -> str | None:
    """This process's cgroup v2, as a path within the hierarchy ("/system.slice/daetui.service")."""
    try:
        for line in Path(proc).read_text().splitlines():
            if line.startswith("0::"):
                return os.path.normpath(line[3:] or "/")
    except OSError:
        pass
    return None


def holds_self(cgroup: str) -> bool:
    """Whether `cgroup` (a path within the hierarchy) is this process's cgroup or one of its ancestors."""
    mine = own_cgroup()
    if mine is None:
        return False
    cgroup = os.path.normpath(cgroup)
    return cgroup == "/" or mine == cgroup or mine.startswith(cgroup.rstrip("/") + "/")
