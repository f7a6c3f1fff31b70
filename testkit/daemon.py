"""daetui as a process inside a network namespace: the one harness of the tests and the benchmarks.

    d = Daemon(lab.router, config_path, run_dir).start()   # returns once the daemon says it runs
    ...
    assert d.stop() == 0, d.log()

Readiness is asked of the daemon itself, on its control socket (`ping`
answers `running: true` once it has started), never read from its log. The
log (stdout and stderr) goes to a file: a pipe nobody reads would fill up
and stall the daemon. `ip netns exec` execs the daemon in place, so the
child's pid is the daemon's, and signals go to exactly that pid.
"""

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
from types import TracebackType
from typing import Any

from daetui.paths import RunPaths

ROOT = Path(__file__).resolve().parent.parent  # the checkout: the daemon runs its daetui, not an installed one


def _env(first: Path = ROOT) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(first), os.environ.get("PYTHONPATH")]))}


def ns_exec(ns: str, *argv: str, timeout: float = 60.0, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run `argv` in namespace `ns` and wait for it, bounded by `timeout`; its output is captured as text."""
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout, **kw)


def daetui_cli(ns: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`daetui ARGS` (reload, status, cleanup, a daemon that must fail...) in namespace `ns`, waited for."""
    return ns_exec(ns, sys.executable, "-m", "daetui", *args, timeout=timeout, cwd=ROOT, env=_env())


class Daemon:
    """`daetui --no-ui --config CONFIG --run-dir RUN_DIR` as a process in namespace `ns`.

    Its log is `log_path` (default: RUN_DIR's name + ".log" beside it, so that
    the run dir holds only what the daemon makes). Several daemons in turn may
    share a log file: each reads back only what was written since its start.
    Its daetui is the checkout's, unless `site` names a folder holding an
    installed copy (tests/kernel/test_install.py); `cwd` is where it starts.
    """

    def __init__(self, ns: str, config: Path, run_dir: Path, log: Path | None = None, *,
                 site: Path = ROOT, cwd: Path = ROOT) -> None:
        self.ns = ns
        self.site = site  # where its daetui is imported from: the checkout, or an installed copy
        self.cwd = cwd
        self.config_path = Path(config)
        self.run_dir = Path(run_dir)
        self.log_path = log or self.run_dir.with_name(self.run_dir.name + ".log")
        self.directory: Path | None = None  # set by from_text: where the config, run dir and log are
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_from = 0

    @staticmethod
    def from_text(ns: str, config_text: str, directory: Path | None = None) -> Daemon:
        """A daemon for `config_text`, written to DIRECTORY/daetui.toml with the run dir and log beside it.

        Without `directory`, a new temporary one (`self.directory`; left in
        place, with the log, for a look afterwards: remove it when done).
        """
        directory = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="daetui-daemon-"))
        config = directory / "daetui.toml"
        config.write_text(config_text)
        daemon = Daemon(ns, config, directory / "run", directory / "daetui.log")
        daemon.directory = directory
        return daemon

    @property
    def control_path(self) -> Path:
        """The daemon's control socket (`daetui attach`, ControlClient)."""
        return RunPaths(self.run_dir).control

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> Daemon:
        """Start the daemon and return once it says it runs; fail (and end it) if it exits or takes too long."""
        if self.proc is not None:
            raise RuntimeError("daemon already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            self._log_from = logf.tell()
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, sys.executable, "-m", "daetui", "--no-ui",
                 "--config", str(self.config_path), "--run-dir", str(self.run_dir)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, cwd=self.cwd, env=_env(self.site))
        deadline = time.monotonic() + timeout
        while not (self.ping() or {}).get("running"):
            if self.proc.poll() is not None:
                raise RuntimeError(f"daetui exited with status {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"daetui did not start within {timeout:g}s:\n{self.log()}")
            time.sleep(0.1)
        return self

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`daetui ARGS --run-dir RUN_DIR` in the daemon's namespace: reload, status, explain, cleanup..."""
        return daetui_cli(self.ns, *args, "--run-dir", str(self.run_dir), timeout=timeout)

    def ping(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """The daemon's answer to `ping` on its control socket (None while nothing answers there).

        It listens before its slow start and says `running: true` once started.
        """
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(timeout)
                s.connect(str(self.control_path))
                s.sendall(b'{"id": 1, "cmd": "ping"}\n')
                line = s.makefile("rb").readline()
            return json.loads(line)["result"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def signal(self, sig: int) -> None:
        """Send `sig` to the daemon's pid."""
        assert self.proc is not None, "not started"
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the daemon to exit; its exit status."""
        assert self.proc is not None, "not started"
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; its exit status. One that does not exit in time is killed, and that is an error."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise
        return self.proc.returncode

    def log(self) -> str:
        """What this daemon has logged so far."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_from)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
