"""Does daetui slow down traffic it routes direct?

In the lab, from the LAN client to a wan host, measured in one run:
  - bulk TCP throughput (iperf3, one stream) and new TCP connections per second,
    with no daetui, then with daetui attached and routing the flow direct;
  - for context, the same through daetui's control plane (relayed with splice).
Each figure is the median of --rounds rounds; ratios are against no daetui. The rounds
alternate which setup goes first (none/daetui, daetui/none, ...), with daetui started for
each round and stopped after it: this VM's figures drift within a run (each connection
leaves a TIME_WAIT socket on the server, and whoever is measured first meets fewer), so one
setup measured entirely before the other is off by tens of percent.

The relayed flow's group is dialled with dial_mode "ip": the connection benchmark's
client sends nothing, so sniffing it for a name (dial_mode "domain", the default)
would hold every connection for sniffing_timeout and measure only that (10/s).

    .venv/bin/python bench/direct_path.py [--seconds 5] [--rounds 5] [--summary FILE]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _summary
from _lab import cps, cps_server, end, iperf, iperf_server, require_root

from daetui.lab.topology import ADDR, Lab
from testkit.configs import RELAY_CONFIG, RELAYED4
from testkit.daemon import Daemon, ns_exec

DIRECT_HOST, PROXIED_HOST = ADDR.hosts4[1], RELAYED4
IPERF_PORT, CPS_PORT = 5201, 5300


def measure(lab: Lab, host: str, seconds: float) -> tuple[float, float]:
    return iperf(lab.lan, host, IPERF_PORT, seconds), cps(lab.lan, host, CPS_PORT, seconds)


def median(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(g for g, _ in runs), statistics.median(c for _, c in runs)


def summarize(path: Path | None, base: tuple[float, float], direct: tuple[float, float],
              relayed: tuple[float, float], rounds: int) -> None:
    """bench/all.py's rows: the direct path against no daetui; the relayed one against the kernel's direct path."""
    record = _summary.record
    record(path, _summary.DIRECT_THROUGHPUT, direct[0], "Gbit/s", baseline=base[0], baseline_of="no daetui",
           ratio=direct[0] / base[0], ratio_of="daetui/no daetui", met=direct[0] / base[0] >= 0.97,
           note="iperf3, one TCP stream, LAN to wan, the flow routed direct in the kernel; median of "
                f"{rounds} alternating rounds (daetui started for each)")
    record(path, _summary.DIRECT_CPS, direct[1], "conn/s", baseline=base[1], baseline_of="no daetui",
           ratio=direct[1] / base[1], ratio_of="daetui/no daetui", met=direct[1] / base[1] >= 0.95)
    record(path, _summary.RELAYED_CPS, relayed[1], "conn/s", baseline=direct[1],
           baseline_of="daetui, routed direct in the kernel", ratio=relayed[1] / direct[1],
           ratio_of="relayed/kernel", met=relayed[1] / direct[1] >= 0.5,
           note=f"relayed by a group without nodes (its direct dialer), dial_mode ip: no sniffing (the client "
                f"sends nothing); against no daetui {relayed[1] / base[1]:.2f}")
    record(path, "relayed throughput against the kernel's direct path", relayed[0], "Gbit/s", baseline=direct[0],
           baseline_of="daetui, routed direct in the kernel", ratio=relayed[0] / direct[0],
           ratio_of="relayed/kernel", parent=_summary.RELAYED_CPS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", "--trials", dest="rounds", type=int, default=5)
    ap.add_argument("--lab", default="dtbench")
    _summary.add_option(ap)
    args = ap.parse_args()

    lab = Lab(args.lab)
    lab.up()
    procs: list[subprocess.Popen[str]] = []
    config = RELAY_CONFIG.replace("[global]\n", '[global]\ndial_mode = "ip"\n', 1)
    try:
        ns_exec(lab.lan, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1")
        for host in (DIRECT_HOST, PROXIED_HOST):
            procs += [iperf_server(lab.wan, host, IPERF_PORT), cps_server(lab.wan, host, CPS_PORT)]
        time.sleep(0.5)

        print(f"direct path, {args.rounds} alternating rounds of {args.seconds:g}s each (median)", flush=True)
        runs: dict[str, list[tuple[float, float]]] = {"base": [], "direct": [], "relayed": []}
        for r in range(args.rounds):
            for setup in ("none", "daetui") if r % 2 == 0 else ("daetui", "none"):
                if setup == "none":
                    runs["base"].append(measure(lab, DIRECT_HOST, args.seconds))
                    continue
                daemon = Daemon.from_text(lab.router, config).start(timeout=90)
                try:
                    runs["direct"].append(measure(lab, DIRECT_HOST, args.seconds))
                    runs["relayed"].append(measure(lab, PROXIED_HOST, args.seconds))
                finally:
                    daemon.stop()
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1][0]:.2f} Gbit/s {v[-1][1]:.0f} conn/s"
                                                   for k, v in runs.items()), flush=True)
        base, with_daetui, relayed = median(runs["base"]), median(runs["direct"]), median(runs["relayed"])

        rows = [("no daetui (kernel forwarding)", base), ("daetui, flow routed direct", with_daetui),
                ("daetui, flow relayed by the control plane", relayed)]
        print(f"{'':44} {'TCP Gbit/s':>11} {'ratio':>6} {'new conn/s':>11} {'ratio':>6}")
        for name, (g, c) in rows:
            print(f"{name:44} {g:11.2f} {g / base[0]:6.2f} {c:11.0f} {c / base[1]:6.2f}")
        summarize(args.summary, base, with_daetui, relayed, args.rounds)
    finally:
        end(procs)
        lab.down()
    return 0


if __name__ == "__main__":
    require_root("bench/direct_path.py")
    sys.exit(main())
