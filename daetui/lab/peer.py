"""A server process of the lab's "internet": run in the wan namespace, with a directory of its own.

Subclasses write their config (`_write_config` returns the argv) and say how
to tell that this very server answers on an address (`_answers`). The
process is a child of the caller (`ip netns exec` execs the server in place,
so its pid is the server's) and `stop()` ends exactly that pid.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from daetui.lab.topology import Lab, LabError


class LabPeer:
    """A server process in the lab's wan namespace, with a temporary directory of its own."""

    kind = "peer"
    binary = ""
    error: type[LabError] = LabError                # raised when it cannot start
    transient: tuple[type[BaseException], ...] = (OSError,)  # what a probe may raise while it starts

    def __init__(self, lab: Lab, address4: str, address6: str, port: int) -> None:
        self.lab = lab
        self.address4 = address4
        self.address6 = address6
        self.port = port
        self.directory: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    # Filled in by subclasses.
    def _write_config(self, directory: Path) -> list[str]:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs (`ip netns exec` execs it in place)."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def log_path(self) -> Path:
        if self.directory is None:
            raise self.error(f"{self.kind} not started")
        return self.directory / f"{self.kind}.log"

    @property
    def console_path(self) -> Path:
        """Where the server's stdout/stderr go: errors from before its log opens."""
        if self.directory is None:
            raise self.error(f"{self.kind} not started")
        return self.directory / "console.log"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait (at most `timeout` s) until it answers on both its addresses."""
        if self.proc is not None:
            raise self.error(f"{self.kind} already started")
        if not os.access(self.binary, os.X_OK):
            raise self.error(f"{self.binary} not installed")
        if self.directory is not None:  # kept from a start that failed
            shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = Path(tempfile.mkdtemp(prefix=f"daetui-{self.lab.name}-{self.kind}-"))
        try:
            argv = self._write_config(self.directory)
            # Same session as the caller: a Ctrl-C that ends a test run ends its servers too.
            with open(self.console_path, "wb") as console:
                self.proc = subprocess.Popen(["ip", "netns", "exec", self.lab.wan, *argv], stdin=subprocess.DEVNULL,
                                             stdout=console, stderr=subprocess.STDOUT, cwd=self.directory)
            self._wait_ready(timeout)
        except BaseException:
            self.stop(keep_directory=True)
            raise

    def _answers(self, address: str) -> bool:
        """True when this very server (not another one on the same address) answers there."""
        raise NotImplementedError

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        pending = [self.address4, self.address6]
        while pending:
            if self.proc.poll() is not None:
                raise self.error(f"{self.kind} exited with status {self.proc.returncode}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise self.error(f"{self.kind} did not answer on {pending} within {timeout}s\n{self.log_tail()}")
            try:
                if self._answers(pending[0]):
                    pending.pop(0)
                    continue
            except self.transient:
                pass
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server's log and console output, for error messages."""
        out = []
        for path in (self.console_path, self.log_path):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except (FileNotFoundError, LabError):
                continue
            if text:
                out.append(f"--- {path}\n" + "\n".join(text))
        return "\n".join(out) or f"({self.kind} wrote nothing)"

    def stop(self, timeout: float = 5.0, keep_directory: bool = False) -> None:
        """End the server by its pid (SIGTERM, then SIGKILL) and remove its directory.

        The Popen object holds the child unreaped until it is waited for, so
        the pid cannot have been reused by another process in between.
        """
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self.directory is not None and not keep_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> LabPeer:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
