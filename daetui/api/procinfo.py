"""The daemon's own process as dashboards ask about it: its memory, and the programs behind the router's flows."""

from __future__ import annotations

import os
import time
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE")
_limit: list[float] = [-1.0, 0.0]   # (when read, bytes): the cgroup's limit is read at most once a minute


def rss_bytes() -> int:
    """The daemon's resident set in bytes (/proc/self/statm's second field), 0 if unreadable."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def memory_limit() -> int:
    """What the OS lets the daemon hold: its cgroup's memory.max (v2) or limit_in_bytes (v1); 0 for none."""
    now = time.monotonic()
    if _limit[0] >= 0 and now - _limit[0] < 60:
        return int(_limit[1])
    value = 0
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            candidate = Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.max"
        elif "memory" in controllers.split(","):
            candidate = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.limit_in_bytes"
        else:
            continue
        try:
            text = candidate.read_text().strip()
        except OSError:
            continue
        # cgroup v1 writes "no limit" as a huge number (PAGE_COUNTER_MAX pages): as good as none.
        if text.isdigit() and int(text) < 1 << 60:
            value = int(text)
            break
    _limit[:] = [now, float(value)]
    return value


def process_path(pid: int, name: str, _cache: dict[tuple[int, str], str] = {}) -> str:  # noqa: B006 - a cache
    """The executable of process `pid` (named `name` when the kernel saw it), "" once it is gone.

    Cached by (pid, name): a pid reused by another program is another key.
    """
    key = (pid, name)
    path = _cache.get(key)
    if path is None:
        try:
            path = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            path = ""
        if len(_cache) > 4096:
            _cache.clear()
        _cache[key] = path
    return path
