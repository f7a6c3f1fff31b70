"""What the benchmarks share besides testkit (the daemon harness, the peers): a root check, ending processes."""

from __future__ import annotations

import os
import subprocess
import sys


def require_root(name: str) -> None:
    if os.geteuid() != 0:
        sys.exit(f"{name} needs root (network namespaces, BPF)")


def end(procs: list[subprocess.Popen[str]]) -> None:
    """End the processes a benchmark started, by pid."""
    for p in procs:
        p.terminate()
        p.wait(10)
