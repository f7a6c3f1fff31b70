"""A terminal program as a person drives it: a tmux server of its own, keys in, the screen out.

    with Tmux("clashctl") as t:
        t.start("app", "ip netns exec ROUTER clashctl", env={...})
        t.keys("app", "2")
        screen = t.wait_text("app", "proxy")

Each Tmux has its own socket (-L), so no other session is touched, and `kill`
ends exactly its server (and with it the programs in its panes).
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable
from types import TracebackType

_servers = itertools.count()


class Tmux:
    """A tmux server of its own; sessions hold one pane each."""

    def __init__(self, name: str) -> None:
        # A socket per instance: a client reaching a previous server still shutting down fails.
        self.sock = f"daetui-{os.getpid()}-{name}-{next(_servers)}"

    def run(self, *args: str, check: bool = True) -> str:
        out = subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True, text=True, timeout=20)
        if check and out.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def start(self, session: str, argv: list[str], env: dict[str, str] | None = None,
              size: tuple[int, int] = (160, 48)) -> None:
        """Run `argv` in a new detached session of `size` (columns, rows), with `env` added."""
        unset = "-u COLUMNS -u LINES"   # the runner's own would pin the program's size
        prefix = f"env {unset} TERM=xterm-256color " + " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        # remain-on-exit: a program that dies leaves its last screen (and the reason) to read.
        self.run("new-session", "-d", "-s", session, "-x", str(size[0]), "-y", str(size[1]),
                 f"{prefix} {shlex.join(argv)}")
        self.run("set-option", "-t", session, "remain-on-exit", "on", check=False)
        self.run("resize-window", "-t", session, "-x", str(size[0]), "-y", str(size[1]), check=False)

    def keys(self, session: str, *keys: str) -> None:
        """tmux key names ("Enter", "Down", "q") or literal text."""
        self.run("send-keys", "-t", session, *keys)

    def screen(self, session: str) -> str:
        return self.run("capture-pane", "-p", "-t", session, check=False)

    def wait(self, session: str, ok: Callable[[str], bool], what: str, timeout: float = 30.0) -> str:
        """The screen once `ok(screen)`; fails after `timeout` with the last screen."""
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen(session)
            if ok(screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{what} never appeared; the screen:\n{screen}")

    def wait_text(self, session: str, text: str, timeout: float = 30.0) -> str:
        return self.wait(session, lambda s: text in s, repr(text), timeout)

    def wait_re(self, session: str, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        rx = re.compile(pattern)
        return rx.search(self.wait(session, lambda s: rx.search(s) is not None, f"/{pattern}/", timeout))  # type: ignore[return-value]

    def pane_pid(self, session: str) -> int:
        return int(self.run("display-message", "-p", "-t", session, "#{pane_pid}").strip())

    def kill(self) -> None:
        self.run("kill-server", check=False)
        deadline = time.monotonic() + 5   # bounded: nothing of it outlives the caller
        while time.monotonic() < deadline and self.run("list-sessions", check=False):
            time.sleep(0.05)

    def __enter__(self) -> Tmux:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.kill()
