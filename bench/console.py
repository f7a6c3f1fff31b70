"""Does the console cost the data path anything, and does it keep up with 10 000 flows?

In the lab, with daetui running and about 10 000 live flows (kernel-direct UDP
flows plus a thousand relayed TCP connections held open):
  - the time to refresh the Connections pane: fetch the snapshot over the
    control socket and decode it, rebuild, filter and sort the rows (wall
    time), draw the screen (the CPU time it takes: waiting for Textual to be
    idle adds sleep that is not the console's cost) (median of --refreshes);
  - relay throughput (iperf3 through the control plane) headless, then with a
    real console attached (`daetui attach` in tmux, on Connections, refreshing
    every second), in the same run, and their ratio.

    .venv/bin/python bench/console.py [--flows 10000] [--held 1000] [--seconds 8] [--summary FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _summary
from _lab import end, iperf, iperf_server, require_root

from daetui.control.client import ControlClient
from daetui.lab.topology import ADDR, Lab
from daetui.net.netns import netns
from testkit.daemon import ROOT, Daemon

CONFIG = """
[global]
lan_interface = ["lan0"]
log_level = "warn"

[group.proxy]
# No nodes yet: a group relays through the direct dialer until proxy nodes exist.

[routing]
rules = ["dip(203.0.113.10) -> proxy"]
fallback = "direct"
"""
PROXIED, DIRECT = ADDR.hosts4[0], ADDR.hosts4[1]
IPERF_PORT = 5201


def make_udp_flows(lab: Lab, n: int) -> None:
    """n kernel-direct UDP flows: one datagram each from its own source port."""
    for i in range(n):
        with netns(lab.lan):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", 20000 + i))
        s.sendto(b"x", (DIRECT, 7))
        s.close()


def hold_tcp(lab: Lab, n: int) -> list[socket.socket]:
    """n relayed TCP connections, open for the rest of the run."""
    out = []
    for _ in range(n):
        with netns(lab.lan):
            s = socket.socket()
        s.connect((PROXIED, 7))
        out.append(s)
    return out


async def refresh_cost(control: Path, refreshes: int) -> dict[str, float]:
    """Time the console's own refresh of the Connections pane, step by step."""
    from daetui.ui.app import DaetuiApp
    from daetui.ui.panes.connections import ConnectionsPane

    client = ControlClient(control)
    await client.connect()

    async def connect() -> ControlClient:
        return client

    app = DaetuiApp(connect, refresh=3600, initial_pane="connections")
    fetch, model, draw = [], [], []
    rows = 0
    async with app.run_test(size=(160, 48)) as pilot:
        for _ in range(50):
            await pilot.pause(0.1)
            if app.snapshot is not None:
                break
        pane = app.query_one(ConnectionsPane)
        for _ in range(refreshes):
            t0 = time.perf_counter()
            snap = await client.snapshot()
            t1 = time.perf_counter()
            await pane.refresh_from(snap)
            t2 = time.perf_counter()
            # The screen is drawn (only the visible rows). Timed as CPU: pilot.pause() returns only
            # after a quiet window of Textual's (tens of ms of sleep, whatever the drawing cost).
            c2 = time.process_time()
            await pilot.pause()
            c3 = time.process_time()
            fetch.append(t1 - t0)
            model.append(t2 - t1)
            draw.append(c3 - c2)
            rows = len(pane.all_rows)
            await asyncio.sleep(0.2)
    await client.close()
    return {"rows": rows, "fetch": statistics.median(fetch), "model": statistics.median(model),
            "draw": statistics.median(draw)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flows", type=int, default=10000)
    ap.add_argument("--held", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--refreshes", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lab", default="dtbcon")
    _summary.add_option(ap)
    args = ap.parse_args()

    lab = Lab(args.lab)
    lab.up()
    tmux_sock = f"daetui-bench-{os.getpid()}"
    procs: list[subprocess.Popen[str]] = []
    daemon = None
    held: list[socket.socket] = []
    try:
        procs.append(iperf_server(lab.wan, PROXIED, IPERF_PORT))
        daemon = Daemon.from_text(lab.router, CONFIG).start(timeout=90)
        time.sleep(1)
        make_udp_flows(lab, args.flows)
        held = hold_tcp(lab, args.held)
        time.sleep(1)

        cost = asyncio.run(refresh_cost(daemon.control_path, args.refreshes))
        total = cost["fetch"] + cost["model"] + cost["draw"]
        print(f"Connections pane with {cost['rows']} live flows (median of {args.refreshes} refreshes):")
        print(f"  fetch + decode {cost['fetch'] * 1000:6.1f} ms   rows {cost['model'] * 1000:6.1f} ms   "
              f"draw {cost['draw'] * 1000:6.1f} ms   total {total * 1000:6.1f} ms")
        _summary.record(args.summary, _summary.PANE_REFRESH, total * 1000, "ms", met=total * 1000 <= 50,
                        note=f"{cost['rows']} rows ({args.flows} kernel UDP flows + {args.held} relayed TCP); "
                             f"fetch + decode {cost['fetch'] * 1000:.0f}, rows {cost['model'] * 1000:.0f}, "
                             f"draw {cost['draw'] * 1000:.0f} ms; median of {args.refreshes}")

        # Alternate: each round measures headless, then with a console attached,
        # so that drift of the machine falls on both sides alike.
        headless, attached = [], []
        for _ in range(args.rounds):
            headless.append(iperf(lab.lan, PROXIED, IPERF_PORT, args.seconds))
            subprocess.run(["tmux", "-L", tmux_sock, "new-session", "-d", "-x", "160", "-y", "48",
                            f"env -u COLUMNS -u LINES ip netns exec {lab.router} {sys.executable} -m daetui "
                            f"attach --run-dir {daemon.run_dir}"], check=True, cwd=ROOT)
            time.sleep(3)
            subprocess.run(["tmux", "-L", tmux_sock, "send-keys", "2"], check=True)  # Connections
            time.sleep(2)
            attached.append(iperf(lab.lan, PROXIED, IPERF_PORT, args.seconds))
            subprocess.run(["tmux", "-L", tmux_sock, "kill-server"], capture_output=True)
        h, a = statistics.median(headless), statistics.median(attached)
        print(f"relayed TCP throughput (iperf3 through the control plane, {args.seconds:g}s, "
              f"median of {args.rounds} alternating rounds):")
        print(f"  headless {h:6.2f} Gbit/s   console attached {a:6.2f} Gbit/s   ratio {a / h:.2f}")
        _summary.record(args.summary, "relayed throughput with the console attached", a, "Gbit/s", baseline=h,
                        baseline_of="headless", ratio=a / h, ratio_of="attached/headless",
                        parent=_summary.PANE_REFRESH)
        print(f"  (each round, headless/attached: "
              f"{', '.join(f'{x:.1f}/{y:.1f}' for x, y in zip(headless, attached, strict=True))})")
    finally:
        subprocess.run(["tmux", "-L", tmux_sock, "kill-server"], capture_output=True)
        for s in held:
            s.close()
        if daemon is not None:
            daemon.stop()
        end(procs)
        lab.down()
    return 0


if __name__ == "__main__":
    require_root("bench/console.py")
    sys.exit(main())
