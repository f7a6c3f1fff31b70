"""Starting the console: attached to a running daemon, or with one of its own.

`daetui` with no flags starts the control plane as a headless daemon of its
own (its own session, its log in the run dir) and attaches the console to it.
So the console and `daetui attach` are the same code, the daemon never shares
a process (or a GIL) with the rendering, and when the SSH connection drops,
only the console goes: the daemon keeps routing, ready for `daetui attach`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from daetui.control.client import ControlClient, ControlError, call_once, wait_for_daemon
from daetui.logsetup import run_by_systemd
from daetui.paths import RunPaths, pid_is_daetui
from daetui.termtext import printable, printable_lines


def daemon_pid(run: RunPaths) -> int | None:
    """The pid of the daetui running in this run dir, if one is."""
    try:
        pid = int(run.pid.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_is_daetui(pid) else None


def spawn_daemon(config: str, run: RunPaths, netns: str | None = None) -> subprocess.Popen[bytes]:
    """`daetui --no-ui` in a session of its own, logging to <run dir>/daetui.log, rotated (daetui.logsetup);
    a console that systemd runs leaves the daemon's log where the unit sends its output (the journal)."""
    run.ensure()
    prefix = ["ip", "netns", "exec", netns] if netns else []
    args = [*prefix, sys.executable, "-m", "daetui", "--no-ui", "--config", config, "--run-dir", str(run.root)]
    if run_by_systemd():
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
    path = log_path(run)
    # What the daemon prints before its logging is set up (a config error) goes to the file too.
    log = open(path, "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen([*args, "--log-file", str(path)], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, start_new_session=True)
    finally:
        log.close()


def log_path(run: RunPaths) -> Path:
    """Where a daemon the console starts logs."""
    return run.root / "daetui.log"


def run_console(run: RunPaths, config: str | None, theme: str | None = None, refresh: float = 1.0,
                netns: str | None = None, initial_pane: str = "overview") -> int:
    """Attach to the daemon of `run`, starting one with `config` if none runs (and config is given)."""
    from daetui.ui.app import DaetuiApp

    child: subprocess.Popen[bytes] | None = None
    pid = daemon_pid(run)
    if pid is None and config is not None:
        child = spawn_daemon(config, run, netns)
        starting = f"starting daetui (pid {child.pid}): compiling the kernel programs…"
    elif pid is None:
        print(f"daetui attach: no daetui runs with run dir {run.root}", file=sys.stderr)
        return 1
    else:
        starting = f"attaching to daetui (pid {pid})…"

    async def connect() -> ControlClient:
        if child is not None:
            return await wait_for_daemon(run.control, 90, alive=lambda: child.poll() is None)
        client = ControlClient(run.control)
        await client.connect()
        return client

    app = DaetuiApp(connect, theme=theme, refresh=refresh, starting_text=starting, initial_pane=initial_pane)
    result = app.run()
    if child is not None and child.poll() is not None and child.returncode not in (0, None):
        print(f"daetui: the daemon exited ({child.returncode}); see {log_path(run)}", file=sys.stderr)
        return 1
    if result == "detach":
        now = daemon_pid(run) or (child.pid if child else pid)
        print(f"daetui keeps routing headless (pid {now}). `daetui attach` comes back, `daetui stop` stops it.")
    elif result == "stop":
        # The daemon undoes its changes (and removes its pid file) after it has answered the stop: say so
        # only once it is gone.
        gone = _wait_child(child, 60.0) if child is not None else (pid is None or _wait_gone(pid, 60.0))
        if not gone:
            print("daetui: the daemon still runs 60 s after it was asked to stop", file=sys.stderr)
            return 1
        print("daetui stopped; every change it made is undone.")
    return 0


def _wait_child(child: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait until `pid` is no longer a daetui process (at most `timeout` s); whether it is gone."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_is_daetui(pid):
        time.sleep(0.1)
    return not pid_is_daetui(pid)


def stop_daemon(run: RunPaths, timeout: float = 60.0) -> int:
    """Ask the daemon of `run` to stop, and wait until it has."""

    pid = daemon_pid(run)
    if pid is None:
        print(f"daetui stop: no daetui runs with run dir {run.root}", file=sys.stderr)
        return 1

    try:
        call_once(run.control, lambda c: c.stop_daemon())
    except ControlError as e:
        print(f"daetui stop: {e}; sending SIGTERM to {pid}", file=sys.stderr)
        os.kill(pid, 15)
    if not _wait_gone(pid, timeout):
        print(f"daetui stop: pid {pid} still runs after {timeout:.0f}s", file=sys.stderr)
        return 1
    print(f"daetui (pid {pid}) stopped")
    return 0


def reload_daemon(run: RunPaths, abort: bool = False) -> int:
    """`daetui reload`: the daemon reads its config again; prints what changed or why nothing did."""
    try:
        r = call_once(run.control, lambda c: c.reload(abort))
    except ControlError as e:
        print(f"daetui reload: {printable_lines(e)}", file=sys.stderr)
        return 1
    if not r.ok:
        print(f"daetui reload: nothing changed: {printable_lines(r.message)}", file=sys.stderr)
        return 1
    print(f"reloaded: rule generation {r.generation}; {len(r.added)} rules added, {len(r.removed)} removed, "
          f"{len(r.toggled)} toggled")
    for label, rules in (("+", r.added), ("-", r.removed), ("~", r.toggled)):
        for text in rules:
            print(f"  {label} {printable(text)}")
    if abort:
        print(f"  {r.aborted} flows reset; {r.kept} kernel-forwarded TCP flows left running")
    return 0


def status(run: RunPaths, as_json: bool = False) -> int:
    """Print the daemon's state (for scripts and people)."""
    import json

    from daetui.control import wire
    from daetui.ui import fmt

    try:
        snap = call_once(run.control, lambda c: c.snapshot(flows=True))
    except ControlError as e:
        print(f"daetui status: {e}", file=sys.stderr)
        return 1
    from daetui.control.state import Snapshot

    assert isinstance(snap, Snapshot)
    if as_json:
        data = wire.encode(snap)
        data.pop("raw_flows", None)
        data["kernel_flows"] = len(snap.kernel_flows)
        print(json.dumps(data, indent=1))
        return 0
    h = snap.health
    # A daemon answers while it still loads its programs: it has no start time yet.
    up = f"up {fmt.duration(snap.time - h.started)}" if h.started else "starting"
    p = printable  # names from the system and the network: shown, never obeyed by the terminal
    print(f"daetui pid {h.pid}, {up}, config {p(h.config)}")
    for i in snap.interfaces:
        if i.bound or i.configured:
            print(f"  {p(i.name)}: {p('bound ' + ', '.join(i.programs)) if i.bound else 'not bound'}")
    for name in snap.missing_interfaces:
        print(f"  {p(name)}: configured, not present")
    open_conns = sum(1 for c in snap.connections if c.state == "open")
    print(f"  flows in the kernel: {len(snap.kernel_flows)}; relayed now: {open_conns}, "
          f"in all: {snap.total_connections}")
    print(f"  rules: {sum(1 for r in snap.rules if r.enabled)} enabled, generation {h.generation}")
    return 0



