"""daetui as systemd runs it, without systemd: its notifications, and the unit's capabilities.

systemd hands a Type=notify service a unix datagram socket in $NOTIFY_SOCKET
(and $WATCHDOG_USEC for WatchdogSec=); here the test owns that socket and
reads what the daemon, started in the lab, sends to it. The unit's
CapabilityBoundingSet= and NoNewPrivileges= are applied with setpriv, which
does what systemd does with them before it execs the daemon.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import tcp_echo

from daetui.service.unit import render_unit
from testkit.configs import RELAY_CONFIG, RELAYED4
from testkit.daemon import ROOT, Daemon, _env

pytestmark = pytest.mark.kernel


class NotifyListener:
    """The socket systemd would own: every datagram, and what the control socket said when READY=1 came."""

    def __init__(self, path: Path, daemon: Daemon) -> None:
        self.path = path
        self.daemon = daemon
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self.ping_at_ready: dict | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            if fields.get("READY") == "1" and self.ping_at_ready is None:
                # Asked the moment READY=1 arrives: the daemon must already answer that it runs.
                self.ping_at_ready = self.daemon.ping() or {}
            self.messages.append((time.monotonic(), fields))

    def kinds(self) -> list[str]:
        """The state each message announces (READY, RELOADING, STOPPING), in order; watchdog pings left out."""
        return [k for _, f in self.messages for k in ("READY", "RELOADING", "STOPPING") if f.get(k) == "1"]

    def wait_for(self, kinds: list[str], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.kinds()[:len(kinds)] != kinds and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.kinds()[:len(kinds)] == kinds, self.messages

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_the_daemon_tells_systemd_ready_reloading_stopping_and_pings_the_watchdog(lab, tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch):
    d = Daemon.from_text(lab.router, RELAY_CONFIG, tmp_path)
    listener = NotifyListener(tmp_path / "notify.sock", d)
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # WatchdogSec=0.4s: a ping every 0.2 s
    try:
        with d:
            listener.wait_for(["READY"])
            assert listener.ping_at_ready and listener.ping_at_ready.get("running") is True, listener.ping_at_ready
            ready = next(f for _, f in listener.messages if f.get("READY") == "1")
            assert ready.get("STATUS") == "running: tproxy port 12345"

            reloaded = d.cli("reload")
            assert reloaded.returncode == 0, reloaded.stderr
            listener.wait_for(["READY", "RELOADING", "READY"])
            reloading = next(f for _, f in listener.messages if f.get("RELOADING") == "1")
            assert int(reloading["MONOTONIC_USEC"]) > 0

            time.sleep(1.0)
            pings = [t for t, f in listener.messages if f.get("WATCHDOG") == "1"]
            assert len(pings) >= 3, listener.messages
        assert d.proc is not None and d.proc.returncode == 0, d.log()
        listener.wait_for(["READY", "RELOADING", "READY", "STOPPING"], timeout=10)
    finally:
        listener.close()


def test_no_notify_socket_no_notifications(lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Outside systemd the daemon sends nothing and runs as before (and a socket that is gone is no error)."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    with Daemon.from_text(lab.router, RELAY_CONFIG, tmp_path) as d:
        assert tcp_echo(lab, str(RELAYED4), b"still relayed") == b"still relayed"
    assert d.proc is not None and d.proc.returncode == 0, d.log()
    assert "could not notify systemd" in d.log()


def _unit_value(unit: str, key: str) -> str:
    return next(line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(f"{key}="))


def test_the_daemon_runs_with_only_the_units_capabilities(lab, tmp_path: Path):
    """CapabilityBoundingSet= and NoNewPrivileges= of the unit, applied by setpriv: daetui loads, attaches,
    routes, relays a flow, reloads and undoes everything at stop with only those capabilities."""
    unit = render_unit(tmp_path / "daetui.toml")
    caps = _unit_value(unit, "CapabilityBoundingSet").split()
    assert _unit_value(unit, "NoNewPrivileges") == "yes"
    bounding = ",".join(["-all", *(f"+{c.removeprefix('CAP_').lower()}" for c in caps)])
    d = Daemon.from_text(lab.router, RELAY_CONFIG, tmp_path)
    with open(d.log_path, "ab") as log:
        d.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.router, "setpriv", "--no-new-privs", f"--bounding-set={bounding}",
             "--inh-caps=-all", sys.executable, "-m", "daetui", "run", "--no-ui", "--config", str(d.config_path),
             "--run-dir", str(d.run_dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=_env())
    try:
        deadline = time.monotonic() + 90
        while not (d.ping() or {}).get("running"):
            assert d.proc.poll() is None, f"daetui exited ({d.proc.returncode}) with the unit's caps:\n{d.log()}"
            assert time.monotonic() < deadline, d.log()
            time.sleep(0.1)
        status = Path(f"/proc/{d.pid}/status").read_text()
        bnd = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("CapBnd:")), 16)
        assert bnd & (1 << 21) == 0, "CAP_SYS_ADMIN should be gone"  # the bounding set really applies
        assert tcp_echo(lab, str(RELAYED4), b"with fewer capabilities") == b"with fewer capabilities"
        reloaded = d.cli("reload")
        assert reloaded.returncode == 0, reloaded.stderr
    finally:
        assert d.stop() == 0, d.log()
    assert f"-> {RELAYED4}:7 by #1" in d.log(), d.log()
    assert "system changes undone" in d.log(), d.log()
    assert not (d.run_dir / "state.json").exists()
