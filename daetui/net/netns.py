"""Enter a network namespace on the calling thread only.

`setns(CLONE_NEWNET)` is per thread, so a test or the console can open a
socket inside the lab's `lan` namespace, or run a control plane inside the
`router` namespace, while the rest of the process stays where it was.
Sockets keep the namespace they were created in.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/run/netns")

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def netns_path(name: str) -> Path:
    """Where `ip netns` keeps the namespace called `name`."""
    return NETNS_RUN_DIR / name


def current_netns_inode() -> int:
    """Inode of the calling thread's network namespace (stable for its life)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def init_netns_inode() -> int:
    """Inode of the network namespace of pid 1 (the host's)."""
    return os.stat("/proc/1/ns/net").st_ino


@contextmanager
def netns(name: str | None) -> Iterator[None]:
    """Run the body with the calling thread inside namespace `name`.

    `None` means "stay where you are", so callers can pass an optional name.
    """
    if name is None:
        yield
        return
    target = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def enter_netns(name: str) -> None:
    """Move the calling thread into namespace `name` for good."""
    fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
    finally:
        os.close(fd)
