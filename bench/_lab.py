"""What the benchmarks share besides testkit (the daemon harness, the peers): load generators, ending processes.

iperf3 and bench/_cps.py run as servers in the lab's wan and as clients in
its LAN; every process started here is the caller's to `end`, by pid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from testkit.daemon import ns_exec

CPS = Path(__file__).resolve().parent / "_cps.py"


def require_root(name: str) -> None:
    if os.geteuid() != 0:
        sys.exit(f"{name} needs root (network namespaces, BPF)")


def iperf_server(ns: str, host: str, port: int) -> subprocess.Popen[str]:
    """iperf3 -s on host:port in namespace `ns`."""
    return subprocess.Popen(["ip", "netns", "exec", ns, "iperf3", "-s", "-B", host, "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def iperf(ns: str, host: str, port: int, seconds: float, reverse: bool = False) -> float:
    """One iperf3 stream from namespace `ns` to host:port (-R: the other way); Gbit/s received."""
    out = ns_exec(ns, "iperf3", "-c", host, "-p", str(port), "-t", f"{seconds:g}", "-J", *(["-R"] if reverse else []),
                  timeout=seconds + 30)
    data = json.loads(out.stdout)
    if "error" in data:
        raise RuntimeError(f"iperf3: {data['error']}")
    return data["end"]["sum_received"]["bits_per_second"] / 1e9


def cps_server(ns: str, host: str, port: int, answer: bool = False) -> subprocess.Popen[str]:
    """bench/_cps.py's server on host:port in namespace `ns`, returned once it listens."""
    p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(CPS), "server", host, str(port),
                          *(["--answer"] if answer else [])], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    p.stdout.readline()  # "ready"
    return p


def cps(ns: str, host: str, port: int, seconds: float, ask: bool = False, clients: int = 1) -> float:
    """New connections per second from namespace `ns` to a cps_server, for `seconds`, by `clients` processes
    connecting at once (each one connection after the other)."""
    if clients == 1:
        out = ns_exec(ns, sys.executable, str(CPS), "client", host, str(port), f"{seconds:g}",
                      *(["--ask"] if ask else []), timeout=seconds + 30)
        return int(out.stdout.strip()) / seconds
    argv = ["ip", "netns", "exec", ns, sys.executable, str(CPS), "client", host, str(port), f"{seconds:g}",
            *(["--ask"] if ask else [])]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(clients)]
    total = 0
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 30)
        total += int(out.strip())
    return total / seconds


def end(procs: list[subprocess.Popen[str]]) -> None:
    """End the processes a benchmark started, by pid."""
    for p in procs:
        p.terminate()
        p.wait(10)
