"""`daetui demo`: the lab, daetui routing in it, traffic flowing, and the console on it.

Brings the lab up (or uses the one that is up), starts daetui in the router
namespace with a copy of sample_configs/lab.toml (edits in the console
change the copy), makes traffic from the LAN client,
and opens the console. Quitting the console with "stop" ends everything the
demo started; "leave running" keeps the lab and daetui (come back with
`ip netns exec dtlab-router daetui attach`, end it all with
`daetui demo --down`). `--no-ui` prints the connection log instead.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from daetui.lab.topology import Lab
from daetui.lab.traffic import TrafficGenerator
from daetui.paths import RUN_ROOT, RunPaths
from daetui.resources import sample_configs_dir

SAMPLE = sample_configs_dir() / "lab.toml"


def demo_run_paths(lab: Lab) -> RunPaths:
    """The run dir daetui uses in the lab's router: its namespace's default."""
    return RunPaths(RUN_ROOT / f"netns-{lab.router}", per_netns=True)


def demo_config(lab: Lab, sample: Path) -> Path:
    """The demo's own copy of the sample config: the console's rule edits go there, not into the repo.

    A demo that is still running keeps its copy (and the edits made to it);
    a new one starts from the sample again.
    """
    from daetui.ui.launch import daemon_pid

    copy = RUN_ROOT / "demo" / f"{lab.name}.toml"
    if daemon_pid(demo_run_paths(lab)) is None or not copy.exists():
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(sample.read_text())
    return copy


def _forget_config(lab: Lab) -> None:
    for leftover in (RUN_ROOT / "demo" / f"{lab.name}.toml", RUN_ROOT / "demo" / f"{lab.name}.toml.bak"):
        leftover.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # only when empty: the headless demo's run dir lives there too
        (RUN_ROOT / "demo").rmdir()


def run_demo(duration: float = 0, lab_name: str = "dtlab", config: Path = SAMPLE, ui: bool = True,
             theme: str | None = None) -> int:
    lab = Lab(lab_name)
    made_lab = not lab.is_up()
    config = demo_config(lab, config)
    print(f"daetui demo: {'building' if made_lab else 'using'} lab {lab_name} "
          f"(namespaces {lab.lan}, {lab.router}, {lab.wan})", flush=True)
    lab.up()
    _start_dns(lab)
    traffic = TrafficGenerator(lab)
    if ui:
        return _with_console(lab, config, traffic, made_lab, theme)
    return _headless(lab, config, traffic, made_lab, duration)


def _start_dns(lab: Lab) -> None:
    """The lab's DNS server (unbound, the demo config's upstream), kept with the lab until it is taken down."""
    from daetui.lab.dnspeers import DnsPeerError, Unbound

    if lab.adopted("unbound") is not None:
        return
    unbound = Unbound(lab)
    try:
        unbound.start()
    except DnsPeerError as e:
        print(f"daetui demo: no DNS server in the lab ({e}); the DNS pane stays empty", file=sys.stderr)
        return
    assert unbound.pid is not None
    lab.adopt("unbound", unbound.pid)


def _with_console(lab: Lab, config: Path, traffic: TrafficGenerator, made_lab: bool, theme: str | None) -> int:
    from daetui.ui.launch import daemon_pid, run_console

    run = demo_run_paths(lab)
    traffic.start()
    try:
        rc = run_console(run, str(config), theme=theme, netns=lab.router, initial_pane="connections")
    finally:
        traffic.stop()
    if daemon_pid(run) is not None:
        print(f"daetui demo: the lab ({lab.name}) and daetui keep running. Come back with\n"
              f"    ip netns exec {lab.router} {sys.executable} -m daetui attach\n"
              f"and end it all with\n    {sys.executable} -m daetui demo --down")
        return rc
    _forget_config(lab)
    if made_lab:
        lab.down()
        print("daetui demo: lab removed")
    return rc


def demo_down(lab_name: str = "dtlab") -> int:
    """Stop the demo's daetui (if it runs) and take its lab down."""
    from daetui.ui.launch import daemon_pid, stop_daemon

    lab = Lab(lab_name)
    run = demo_run_paths(lab)
    if daemon_pid(run) is not None:
        stop_daemon(run)
    lab.down()
    _forget_config(lab)
    print(f"daetui demo: lab {lab_name} down")
    return 0


def _headless(lab: Lab, config: Path, traffic: TrafficGenerator, made_lab: bool, duration: float) -> int:
    run_dir = Path("/run/daetui/demo") / lab.name
    argv = ["ip", "netns", "exec", lab.router, sys.executable, "-m", "daetui", "--no-ui",
            "--config", str(config), "--run-dir", str(run_dir)]
    print(f"daetui demo: starting daetui in {lab.router} with {config}", flush=True)
    daemon = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    started = threading.Event()

    def pump() -> None:
        assert daemon.stderr is not None
        for line in daemon.stderr:
            sys.stdout.write(line)
            sys.stdout.flush()
            if "daetui started" in line:
                started.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    rc = 0
    try:
        deadline = time.monotonic() + 90
        while not started.is_set() and daemon.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if not started.is_set():
            print("daetui demo: the daemon did not start", file=sys.stderr)
            return 1
        print("daetui demo: traffic from the LAN client starts now; Ctrl-C ends the demo", flush=True)
        traffic.start()
        end = time.monotonic() + duration if duration else None
        while not stop.is_set() and daemon.poll() is None and (end is None or time.monotonic() < end):
            stop.wait(0.2)
    finally:
        traffic.stop()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                rc = daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                rc = 1
        reader.join(5)
        _forget_config(lab)
        if made_lab:
            lab.down()
        print(f"daetui demo: done ({traffic.rounds} rounds of traffic); "
              f"{'lab removed' if made_lab else 'lab left up'}", flush=True)
    return rc
