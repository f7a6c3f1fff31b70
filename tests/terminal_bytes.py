"""A program in a real terminal (a pty), every byte it writes kept: what a terminal would obey.

`Pty(argv, size)` starts the program on a new pseudo-terminal of that size;
`keys(...)` types, `wait_for(b"text")` reads until the text has appeared, and
`output` holds everything written so far. `stray_escapes(output)` counts the
ESC bytes that do not start a CSI sequence (`ESC [ ... final`) or Textual's
pointer shape (OSC 22): Textual draws with those only, so any other ESC (an
OSC title or clipboard write, a hyperlink, a DCS) came from the text it was
given.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Sequence

CSI = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]")
POINTER = re.compile(rb"\x1b\]22;[a-z-]*\x07")  # Textual sets the mouse pointer's shape (OSC 22)


def stray_escapes(output: bytes) -> int:
    """ESC bytes outside CSI sequences, and C1 controls (U+0080-U+009F as UTF-8), in `output`."""
    rest = POINTER.sub(b"", CSI.sub(b"", output))
    return rest.count(b"\x1b") + len(re.findall(rb"\xc2[\x80-\x9f]", rest))


class Pty:
    """One program on a pseudo-terminal of its own; ended by its pid."""

    def __init__(self, argv: Sequence[str], size: tuple[int, int] = (160, 45), env: dict[str, str] | None = None,
                 cwd: str | None = None) -> None:
        self.master, slave = os.openpty()
        cols, rows = size
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        full_env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        full_env.update({"TERM": "xterm-256color", "COLORTERM": "truecolor"}, **(env or {}))
        self.proc = subprocess.Popen(list(argv), stdin=slave, stdout=slave, stderr=slave, env=full_env, cwd=cwd,
                                     start_new_session=True, close_fds=True)
        os.close(slave)
        self.output = b""

    def read(self, seconds: float) -> None:
        """Keep what the program writes for `seconds`."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master], [], [], min(left, 0.1))
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the program has gone: its side of the pty is closed
                    return
                if not chunk:
                    return
                self.output += chunk

    def wait_for(self, text: bytes, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared; last output: {self.output[-2000:]!r}")
            self.read(0.2)

    def keys(self, *keys: bytes, pause: float = 0.8) -> None:
        """Type each key, reading for `pause` after it (an ESC alone needs its pause: ESC then a key is alt+key)."""
        for k in keys:
            os.write(self.master, k)
            self.read(pause)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.read(0.2)
        os.close(self.master)
