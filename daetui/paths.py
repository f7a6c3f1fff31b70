"""Where daetui keeps its runtime files.

One daemon per network namespace: the default run directory is
`/run/daetui/netns-<name>` in a namespace named by `ip netns`,
`/run/daetui/netns-<inode>` in another namespace that is not the host's,
and `/run/daetui` otherwise, so daemons in different namespaces (the lab,
containers) never share a state file, a pid file or a control socket.
`--run-dir` overrides it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from daetui.net.netns import NETNS_RUN_DIR, current_netns_inode, init_netns_inode

RUN_ROOT = Path(os.environ.get("DAETUI_RUN_ROOT", "/run/daetui"))


def default_run_dir() -> Path:
    """The run directory for a daemon in the calling thread's network namespace."""
    here = current_netns_inode()
    try:
        for entry in sorted(NETNS_RUN_DIR.iterdir()):
            try:
                if entry.stat().st_ino == here:
                    return RUN_ROOT / f"netns-{entry.name}"
            except OSError:
                continue
    except OSError:
        pass
    try:
        if here != init_netns_inode():
            return RUN_ROOT / f"netns-{here}"
    except OSError:
        pass  # pid 1's namespace is not ours to look at (a sandbox): assume the host's
    return RUN_ROOT


def pid_is_daetui(pid: int) -> bool:
    """True when `pid` is alive and is a daetui process."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"daetui" in cmdline


def lab_state_dir() -> Path:
    """Where `daetui lab` records the labs it built."""
    return RUN_ROOT / "lab"


@dataclass(frozen=True)
class RunPaths:
    """The files of one daemon."""

    root: Path
    per_netns: bool = False   # the default dir of this namespace, not one given by --run-dir

    @classmethod
    def for_here(cls, run_dir: str | Path | None = None) -> RunPaths:
        """The run dir given, else this namespace's default."""
        if run_dir:
            return cls(Path(run_dir))
        return cls(default_run_dir(), per_netns=True)

    @property
    def state(self) -> Path:
        """The journal of system changes to undo."""
        return self.root / "state.json"

    @property
    def pid(self) -> Path:
        return self.root / "daetui.pid"

    @property
    def control(self) -> Path:
        """The control socket (`daetui attach`, `daetui reload`)."""
        return self.root / "control.sock"

    def ensure(self) -> None:
        """Create the run directory, readable by root only."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
