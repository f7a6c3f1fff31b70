"""What the benchmarks share: daetui as a process in a lab's router, and the processes around it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ns_exec(ns: str, *argv: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, **kw)


def require_root(name: str) -> None:
    if os.geteuid() != 0:
        sys.exit(f"{name} needs root (network namespaces, BPF)")


class Daetui:
    """`daetui --no-ui` with a given config in a lab's router; its log goes to a file.

    A file, not a pipe: a pipe nobody reads would fill up and stall the daemon.
    """

    def __init__(self, router_ns: str, config_text: str) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="daetui-bench-"))
        self.run = self.tmp / "run"
        self.log = self.tmp / "daetui.log"
        config = self.tmp / "bench.toml"
        config.write_text(config_text)
        with open(self.log, "w") as logf:
            self.proc = subprocess.Popen(["ip", "netns", "exec", router_ns, sys.executable, "-m", "daetui",
                                          "--no-ui", "--config", str(config), "--run-dir", str(self.run)],
                                         stderr=logf, cwd=ROOT)
        deadline = time.monotonic() + 90
        while not self._running():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("daetui did not start:\n" + self.log.read_text())
            time.sleep(0.2)

    def _running(self) -> bool:
        """Ask the daemon: it answers on its socket while starting, and says when it runs."""
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(str(self.run / "control.sock"))
                s.sendall(b'{"id": 1, "cmd": "ping"}\n')
                line = s.makefile().readline()
        except OSError:
            return False
        return bool(line) and json.loads(line).get("result", {}).get("running", False)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


def end(procs: list[subprocess.Popen[str]]) -> None:
    """End the processes a benchmark started, by pid."""
    for p in procs:
        p.terminate()
        p.wait(10)
