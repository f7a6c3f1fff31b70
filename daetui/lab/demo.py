"""`daetui demo`: the lab, daetui routing in it, and traffic flowing.

Brings the lab up (or uses the one that is up), runs the daemon in the
router namespace with sample_configs/lab.toml, and makes traffic from the
LAN client until Ctrl-C or --duration. Everything it started, it ends.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from daetui.lab.topology import Lab
from daetui.lab.traffic import TrafficGenerator

SAMPLE = Path(__file__).resolve().parent.parent.parent / "sample_configs" / "lab.toml"


def run_demo(duration: float = 0, lab_name: str = "dtlab", config: Path = SAMPLE) -> int:
    lab = Lab(lab_name)
    made_lab = not lab.is_up()
    print(f"daetui demo: {'building' if made_lab else 'using'} lab {lab_name} "
          f"(namespaces {lab.lan}, {lab.router}, {lab.wan})", flush=True)
    lab.up()
    run_dir = Path("/run/daetui/demo") / lab_name
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
    traffic = TrafficGenerator(lab)
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
        if made_lab:
            lab.down()
        print(f"daetui demo: done ({traffic.rounds} rounds of traffic); "
              f"{'lab removed' if made_lab else 'lab left up'}", flush=True)
    return rc
