"""The console as a person uses it: in a terminal (tmux), over the lab.

`daetui --config F` (the embedded session: the console plus a daemon of its
own) runs in a tmux pane inside the router namespace; the test types keys and
reads the screen with capture-pane. Then the terminal goes away (SIGHUP) and
the daemon must keep routing, reachable by `daetui attach`.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, http_get, tcp_echo, wait_for

from daetui.lab.topology import ADDR
from daetui.paths import pid_is_daetui
from testkit.configs import RELAY_CONFIG

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(shutil.which("tmux") is None and
                                                     os.environ.get("DAETUI_REQUIRE_KERNEL") != "1",
                                                     reason="tmux missing")]

_servers = itertools.count()


class Tmux:
    """A tmux server of the test's own (-L), so nothing else's sessions are touched."""

    def __init__(self, name: str) -> None:
        # A socket of its own per test: a client that reaches the previous test's server while
        # it is still shutting down after kill-server fails with "server exited unexpectedly".
        self.sock = f"daetui-test-{os.getpid()}-{name}-{next(_servers)}"

    def run(self, *args: str, check: bool = True) -> str:
        out = subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True, text=True, timeout=20)
        if check and out.returncode != 0:
            raise RuntimeError(out.stderr)
        return out.stdout

    def start(self, session: str, command: str, size: tuple[int, int] = (120, 36)) -> None:
        self.run("new-session", "-d", "-s", session, "-x", str(size[0]), "-y", str(size[1]), command)
        # A detached session may still get tmux's default size: insist.
        self.run("resize-window", "-t", session, "-x", str(size[0]), "-y", str(size[1]), check=False)

    def keys(self, session: str, *keys: str) -> None:
        self.run("send-keys", "-t", session, *keys)

    def screen(self, session: str) -> str:
        return self.run("capture-pane", "-p", "-t", session, check=False)

    def wait_text(self, session: str, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen(session)
            if text in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never appeared; the screen:\n{self.screen(session)}")

    def pane_pid(self, session: str) -> int:
        return int(self.run("display-message", "-p", "-t", session, "#{pane_pid}").strip())

    def kill(self) -> None:
        self.run("kill-server", check=False)
        # Wait (bounded) for the server to be gone, so nothing of it outlives the test.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self.run("list-sessions", check=False):
            time.sleep(0.05)


@pytest.fixture
def tmux():
    t = Tmux("t")
    yield t
    t.kill()


@pytest.fixture
def setup(lab, tmp_path):
    cfg = tmp_path / "t.toml"
    cfg.write_text(RELAY_CONFIG)
    run = tmp_path / "run"
    yield cfg, run
    # Whatever happened, no daemon of this test outlives it.
    subprocess.run(["ip", "netns", "exec", lab.router, sys.executable, "-m", "daetui", "stop", "--run-dir",
                    str(run)], capture_output=True, timeout=90, cwd=ROOT)


def daetui_cmd(lab, *args: str) -> str:
    # COLUMNS/LINES from the test runner's environment would pin the app's size.
    return f"env -u COLUMNS -u LINES ip netns exec {lab.router} {sys.executable} -m daetui {' '.join(args)}"


def test_keys_and_screens_in_a_real_terminal(tmux, lab, setup):
    cfg, run = setup
    tmux.start("ui", f"cd {ROOT} && {daetui_cmd(lab, '--config', str(cfg), '--run-dir', str(run))}; sleep 30")
    tmux.wait_text("ui", "lan0 │")  # the daemon started and the console shows its binding
    tmux.wait_text("ui", "lan_ingress")

    tmux.keys("ui", "2")
    tmux.wait_text("ui", "Destination")
    assert tcp_echo(lab, ADDR.hosts4[0], b"through the console's daetui", sport=45444) == \
        b"through the console's daetui"
    screen = tmux.wait_text("ui", "203.0.113.10:7")
    assert "#1 dip(203.0.113.10" in screen and "proxy" in screen

    tmux.keys("ui", "/")
    for ch in "dport:7":
        tmux.keys("ui", ch)
    tmux.keys("ui", "Enter")
    tmux.wait_text("ui", "filter: dport:7")

    tmux.keys("ui", "5")
    tmux.wait_text("ui", "192.0.2.10:45444 -> 203.0.113.10:7 by #1")

    tmux.keys("ui", "?")
    tmux.wait_text("ui", "pause; lines that arrive meanwhile")
    tmux.keys("ui", "Escape")
    time.sleep(0.3)  # ESC followed at once by a key reads as alt+key, as in any terminal app

    tmux.keys("ui", "4")
    tmux.wait_text("ui", "routing_tuples")

    # Quit on purpose: the console asks; stopping stops the daemon and undoes its changes.
    tmux.keys("ui", "q")
    tmux.wait_text("ui", "Stop routing")
    tmux.keys("ui", "s")
    tmux.wait_text("ui", "daetui stopped; every change it made is undone.")
    assert not (run / "daetui.pid").exists()
    assert http_get(lab, ADDR.hosts4[0], "/whoami").decode().strip() == ADDR.client4  # no daetui: direct


def test_losing_the_terminal_never_stops_routing(tmux, lab, setup):
    cfg, run = setup
    tmux.start("ui", f"cd {ROOT} && {daetui_cmd(lab, '--config', str(cfg), '--run-dir', str(run))}")
    tmux.wait_text("ui", "lan0 │")
    console_pid = tmux.pane_pid("ui")
    daemon_pid = int(Path(run / "daetui.pid").read_text())
    assert daemon_pid != console_pid
    assert http_get(lab, ADDR.hosts4[0], "/whoami").decode().strip() == ADDR.router_wan4

    # The SSH connection drops: the terminal goes, its processes get SIGHUP.
    tmux.run("kill-session", "-t", "ui")
    wait_for(lambda: not pid_is_daetui(console_pid), timeout=10)

    assert pid_is_daetui(daemon_pid)
    payload = os.urandom(100_000)
    assert tcp_echo(lab, ADDR.hosts4[0], payload) == payload
    assert http_get(lab, ADDR.hosts4[0], "/whoami").decode().strip() == ADDR.router_wan4

    # And `daetui attach` reaches it.
    tmux.start("again", f"cd {ROOT} && {daetui_cmd(lab, 'attach', '--run-dir', str(run))}; sleep 30")
    tmux.wait_text("again", f"pid {daemon_pid}")
    tmux.keys("again", "q")
    tmux.wait_text("again", "Leave running")
    tmux.keys("again", "d")
    tmux.wait_text("again", f"daetui keeps routing headless (pid {daemon_pid})")
    assert pid_is_daetui(daemon_pid)
