"""Does daetui slow down traffic it routes direct?

In the lab, from the LAN client to a wan host, measured in one run:
  - bulk TCP throughput (iperf3, one stream) and new TCP connections per second,
    with no daetui, then with daetui attached and routing the flow direct;
  - for context, the same through daetui's control plane (relayed with splice).
Each figure is the median of --trials runs; ratios are against no daetui.

    .venv/bin/python bench/direct_path.py [--seconds 5] [--trials 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daetui.lab.topology import ADDR, Lab  # noqa: E402

CONFIG = """
[global]
lan_interface = ["lan0"]

[routing]
rules = ["dip(203.0.113.10) -> proxy"]
fallback = "direct"
"""
DIRECT_HOST, PROXIED_HOST = ADDR.hosts4[1], ADDR.hosts4[0]
IPERF_PORT, CPS_PORT = 5201, 5300


def ns_exec(ns: str, *argv: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, **kw)


def iperf(lab: Lab, host: str, seconds: float) -> float:
    out = ns_exec(lab.lan, "iperf3", "-c", host, "-p", str(IPERF_PORT), "-t", str(seconds), "-J",
                  timeout=seconds + 30)
    data = json.loads(out.stdout)
    if "error" in data:
        raise RuntimeError(data["error"])
    return data["end"]["sum_received"]["bits_per_second"] / 1e9


def cps(lab: Lab, host: str, seconds: float) -> float:
    out = ns_exec(lab.lan, sys.executable, str(ROOT / "bench" / "_cps.py"), "client", host, str(CPS_PORT),
                  str(seconds), timeout=seconds + 30)
    return int(out.stdout.strip()) / seconds


def measure(lab: Lab, host: str, seconds: float, trials: int) -> tuple[float, float]:
    gbps = statistics.median(iperf(lab, host, seconds) for _ in range(trials))
    rate = statistics.median(cps(lab, host, seconds) for _ in range(trials))
    return gbps, rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--lab", default="dtbench")
    args = ap.parse_args()

    lab = Lab(args.lab)
    lab.up()
    procs: list[subprocess.Popen[str]] = []
    daemon = None
    try:
        ns_exec(lab.lan, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1")
        for host in (DIRECT_HOST, PROXIED_HOST):
            procs.append(subprocess.Popen(["ip", "netns", "exec", lab.wan, "iperf3", "-s", "-B", host, "-p",
                                           str(IPERF_PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            p = subprocess.Popen(["ip", "netns", "exec", lab.wan, sys.executable, str(ROOT / "bench" / "_cps.py"),
                                  "server", host, str(CPS_PORT)], stdout=subprocess.PIPE, text=True)
            assert p.stdout is not None
            p.stdout.readline()
            procs.append(p)
        time.sleep(0.5)

        print(f"direct path, {args.trials} trials of {args.seconds:g}s each (median)", flush=True)
        print("measuring: no daetui", flush=True)
        base = measure(lab, DIRECT_HOST, args.seconds, args.trials)

        tmp = Path(tempfile.mkdtemp(prefix="daetui-bench-"))
        cfg = tmp / "bench.toml"
        cfg.write_text(CONFIG)
        log = tmp / "daetui.log"
        with open(log, "w") as logf:  # a file, not a pipe: nobody must be able to stall the daemon
            daemon = subprocess.Popen(["ip", "netns", "exec", lab.router, sys.executable, "-m", "daetui",
                                       "--no-ui", "--config", str(cfg), "--run-dir", str(tmp / "run")],
                                      stderr=logf, text=True, cwd=ROOT)
        deadline = time.monotonic() + 90
        while "daetui started" not in log.read_text():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("daetui did not start:\n" + log.read_text())
            time.sleep(0.2)
        print("measuring: daetui attached", flush=True)
        with_daetui = measure(lab, DIRECT_HOST, args.seconds, args.trials)
        relayed = measure(lab, PROXIED_HOST, args.seconds, args.trials)

        rows = [("no daetui (kernel forwarding)", base), ("daetui, flow routed direct", with_daetui),
                ("daetui, flow relayed by the control plane", relayed)]
        print(f"{'':44} {'TCP Gbit/s':>11} {'ratio':>6} {'new conn/s':>11} {'ratio':>6}")
        for name, (g, c) in rows:
            print(f"{name:44} {g:11.2f} {g / base[0]:6.2f} {c:11.0f} {c / base[1]:6.2f}")
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
        for p in procs:
            p.terminate()
            p.wait(10)
        lab.down()
    return 0


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("bench/direct_path.py needs root (network namespaces, BPF)")
    sys.exit(main())
