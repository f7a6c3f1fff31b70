"""Does daetui slow down traffic it routes direct?

In the lab, from the LAN client to a wan host, measured in one run:
  - bulk TCP throughput (iperf3, one stream) and new TCP connections per second,
    with no daetui, then with daetui attached and routing the flow direct;
  - for context, the same through daetui's control plane (relayed with splice).
Each figure is the median of --trials runs; ratios are against no daetui.

The relayed flow's group is dialled with dial_mode "ip": the connection benchmark's
client sends nothing, so sniffing it for a name (dial_mode "domain", the default)
would hold every connection for sniffing_timeout and measure only that (10/s).

    .venv/bin/python bench/direct_path.py [--seconds 5] [--trials 3] [--summary FILE]
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


def measure(lab: Lab, host: str, seconds: float, trials: int) -> tuple[float, float]:
    gbps = statistics.median(iperf(lab.lan, host, IPERF_PORT, seconds) for _ in range(trials))
    rate = statistics.median(cps(lab.lan, host, CPS_PORT, seconds) for _ in range(trials))
    return gbps, rate


def summarize(path: Path | None, base: tuple[float, float], direct: tuple[float, float],
              relayed: tuple[float, float]) -> None:
    """bench/all.py's rows: the direct path against no daetui; the relayed one against the kernel's direct path."""
    record = _summary.record
    record(path, _summary.DIRECT_THROUGHPUT, direct[0], "Gbit/s", baseline=base[0], baseline_of="no daetui",
           ratio=direct[0] / base[0], ratio_of="daetui/no daetui", met=direct[0] / base[0] >= 0.97,
           note="iperf3, one TCP stream, LAN to wan, the flow routed direct in the kernel")
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
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--lab", default="dtbench")
    _summary.add_option(ap)
    args = ap.parse_args()

    lab = Lab(args.lab)
    lab.up()
    procs: list[subprocess.Popen[str]] = []
    daemon = None
    try:
        ns_exec(lab.lan, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1")
        for host in (DIRECT_HOST, PROXIED_HOST):
            procs += [iperf_server(lab.wan, host, IPERF_PORT), cps_server(lab.wan, host, CPS_PORT)]
        time.sleep(0.5)

        print(f"direct path, {args.trials} trials of {args.seconds:g}s each (median)", flush=True)
        print("measuring: no daetui", flush=True)
        base = measure(lab, DIRECT_HOST, args.seconds, args.trials)

        config = RELAY_CONFIG.replace("[global]\n", '[global]\ndial_mode = "ip"\n', 1)
        daemon = Daemon.from_text(lab.router, config).start(timeout=90)
        print("measuring: daetui attached", flush=True)
        with_daetui = measure(lab, DIRECT_HOST, args.seconds, args.trials)
        relayed = measure(lab, PROXIED_HOST, args.seconds, args.trials)

        rows = [("no daetui (kernel forwarding)", base), ("daetui, flow routed direct", with_daetui),
                ("daetui, flow relayed by the control plane", relayed)]
        print(f"{'':44} {'TCP Gbit/s':>11} {'ratio':>6} {'new conn/s':>11} {'ratio':>6}")
        for name, (g, c) in rows:
            print(f"{name:44} {g:11.2f} {g / base[0]:6.2f} {c:11.0f} {c / base[1]:6.2f}")
        summarize(args.summary, base, with_daetui, relayed)
    finally:
        if daemon is not None:
            daemon.stop()
        end(procs)
        lab.down()
    return 0


if __name__ == "__main__":
    require_root("bench/direct_path.py")
    sys.exit(main())
