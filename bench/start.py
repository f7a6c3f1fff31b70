"""How long daetui takes to start and to reload 1000 rules, and how much memory it holds with 10 000 flows.

In the lab, the headless daemon (`daetui --no-ui`, as testkit.daemon.Daemon runs it):
  - start to ready: from spawning it until it runs, as its control socket's `ping` says
    (`running: true`: the readiness testkit.daemon waits for, set once the kernel programs are
    compiled, loaded and attached and the listeners open). Timed to the daemon's own stamp of
    that moment (ping's `started`), so the harness's polling does not count; each start's
    snapshot must show the programs loaded (lan0 bound). Median of --starts starts, each
    stopped before the next; the programs' compile and load alone (the snapshot's
    health.kernel_load_seconds) beside it.
  - RSS (VmRSS, /proc/PID/status) of the last one: idle; after --flows kernel flows (the LAN's
    UDP churn to a direct host, tests/helpers.udp_churn) before anything asks for them; after a
    snapshot of them over the control socket (which counts them); with --held relayed TCP
    connections held open too; after the reloads below.
  - reload of --rules rules: the config file rewritten with that many rules (ports, /24
    prefixes and MACs, as bench/rules.py makes them, none matching the lab's traffic) and the
    control socket's `reload` timed until it answers: it answers once the rules are compiled,
    written into the kernel's inactive generation and flipped to. Reloads alternate between two
    sets of rules (every rule changes each time), the flows above still there. Median of
    --reloads. The snapshot does not say how much of that is the kernel's write:
    bench/rules.py times the compile and write alone ("load ms", no daemon).

    .venv/bin/python bench/start.py [--starts 3] [--rules 1000] [--reloads 3] [--flows 10000] [--held 1000]
                                    [--summary FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The checkout and tests/ (helpers.udp_churn) on the path, bench/ last: its dns.py would hide dnspython.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
sys.path.append(str(_HERE.parent / "tests"))
sys.path.append(str(_HERE))

import _summary  # noqa: E402

PROXIED = "203.0.113.10"     # relayed (the group has no nodes: its direct dialer), the lab's echo server
CHURN_DST = "203.0.113.11"   # the churn's UDP: direct, the kernel's flows
ECHO_PORT = 7
LAB_RULE = f"dip({PROXIED}) -> proxy"

CONFIG = """
[global]
lan_interface = ["lan0"]
log_level = "warn"

[group.proxy]
# No nodes: a group relays through the direct dialer until proxy nodes exist.

[routing]
rules = [
{rules}
]
fallback = "direct"
"""


def config(n: int, first: int = 0) -> str:
    """The lab's rule and n-1 more (ports, /24 prefixes, MACs in turn, numbered from `first`), none matching."""
    kinds = (lambda i: f"dport({10000 + i})", lambda i: f"dip(10.{i >> 8 & 255}.{i & 255}.0/24)",
             lambda i: f"mac(02:00:00:00:{i >> 8 & 255:02x}:{i & 255:02x})")
    rules = [LAB_RULE] + [f"{kinds[i % 3](i)} -> {'proxy' if i % 2 else 'direct'}" for i in range(first, first + n - 1)]
    return CONFIG.format(rules="\n".join(f'  "{r}",' for r in rules))


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """The process's resident memory (VmRSS; RssAnon: of it, not backed by files), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--rules", type=int, default=1000, help="rules in the reloaded config")
    ap.add_argument("--reloads", type=int, default=3)
    ap.add_argument("--flows", type=int, default=10_000, help="kernel flows (LAN UDP churn to a direct host)")
    ap.add_argument("--held", type=int, default=1000, help="relayed TCP connections held open")
    ap.add_argument("--lab", default="dtbstart")
    _summary.add_option(ap)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/start.py needs root (network namespaces, BPF)")
    if args.starts < 1 or args.reloads < 1 or not 2 <= args.rules <= 20000:
        sys.exit("--starts and --reloads: at least 1; --rules: 2 to 20000")
    # The held connections are this process's descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.held + 1024)), hard))

    from helpers import lan_connect, udp_churn

    from daetui.control.client import ControlClient, call_once
    from daetui.control.state import Snapshot
    from daetui.lab.topology import ADDR, Lab
    from testkit.daemon import Daemon

    def snapshot(d: Daemon, flows: bool = False) -> Snapshot:
        return call_once(d.control_path, lambda c: c.snapshot(flows=flows, dns=False))

    lab = Lab(args.lab)
    if lab.is_up():
        sys.exit(f"lab {args.lab} is up already; take it down first (python -m daetui lab down?) or use --lab")
    directory = Path(tempfile.mkdtemp(prefix="daetui-bench-start-"))
    lab.up()
    daemon: Daemon | None = None
    held: list[socket.socket] = []
    summary = args.summary
    try:
        # -- start to ready --------------------------------------------------------------------------
        print(f"start to ready: {args.starts} starts of the headless daemon (lan0, one rule)",
              flush=True)
        ready, loads, polled = [], [], []
        for i in range(args.starts):
            if daemon is not None:
                daemon.stop()
            daemon = Daemon.from_text(lab.router, config(1), directory)
            t0, m0 = time.time(), time.monotonic()
            daemon.start(timeout=90)
            polled.append(time.monotonic() - m0)
            ping = daemon.ping() or {}
            if not ping.get("running"):
                raise RuntimeError(f"start {i + 1}: the daemon does not say it runs: {ping}")
            ready.append(float(ping["started"]) - t0)
            snap = snapshot(daemon)
            bound = [b.name for b in snap.bindings]
            if snap.health.kernel_load_seconds <= 0 or "lan0" not in bound:
                raise RuntimeError(f"start {i + 1}: kernel programs not loaded ({snap.health.kernel_load_seconds}s) "
                                   f"or lan0 not bound ({bound})")
            loads.append(snap.health.kernel_load_seconds)
            print(f"  start {i + 1}: ready in {ready[-1]:.2f}s (programs compiled and loaded in {loads[-1]:.2f}s; "
                  f"the harness saw it at {polled[-1]:.2f}s)", flush=True)
        assert daemon is not None
        med = statistics.median
        print(f"start to ready: median {med(ready):.2f}s of {args.starts}; the kernel programs' compile and load "
              f"{med(loads):.2f}s of it")
        each = ", ".join(f"{r:.2f}" for r in ready)
        _summary.record(summary, _summary.START, med(ready), "s", met=med(ready) <= 3.0,
                        note=f"spawn to `ping` running: true (the daemon's own stamp), median of {args.starts} "
                             f"({each} s)")
        _summary.record(summary, "kernel programs compiled and loaded (in the above)", med(loads), "s",
                        parent=_summary.START)

        # -- RSS with the flows ----------------------------------------------------------------------
        pid = daemon.pid
        idle = rss_mb(pid)
        t = time.monotonic()
        sent = udp_churn(lab, ADDR.client4, CHURN_DST, args.flows)
        time.sleep(1)
        with_flows, anon = rss_mb(pid), rss_mb(pid, "RssAnon")  # before anything asks for them: headless
        snap = snapshot(daemon, flows=True)
        kernel = snap.raw_flows.count if snap.raw_flows is not None else 0
        del snap
        asked = rss_mb(pid)
        for _ in range(args.held):
            held.append(lan_connect(lab, PROXIED, ECHO_PORT, timeout=10))
        time.sleep(1)
        relayed = sum(1 for c in snapshot(daemon).connections if c.state == "open")
        with_held = rss_mb(pid)
        print(f"RSS of the daemon (VmRSS): idle {idle:.1f} MB; {kernel} kernel flows ({sent} churn datagrams, "
              f"{time.monotonic() - t:.1f}s) {with_flows:.1f} MB ({anon:.1f} MB of it anonymous), "
              f"after a snapshot of them {asked:.1f} MB; "
              f"and {relayed} relayed TCP connections open {with_held:.1f} MB", flush=True)
        _summary.record(summary, _summary.RSS, with_flows, "MB", baseline=idle, baseline_of="idle, just started",
                        ratio=with_flows / idle, ratio_of="with flows/idle", met=with_flows <= 80,
                        note=f"{kernel} kernel flows (UDP churn to a direct host), before anything asked for them")
        _summary.record(summary, "of it anonymous memory (RssAnon; the rest is files mapped: libraries)", anon,
                        "MB", parent=_summary.RSS)
        _summary.record(summary, "after a snapshot of the flows over the control socket", asked, "MB",
                        parent=_summary.RSS)
        _summary.record(summary, f"and {relayed} relayed TCP connections held open", with_held, "MB",
                        parent=_summary.RSS)

        # -- reload of N rules -----------------------------------------------------------------------
        async def reloads() -> list[float]:
            assert daemon is not None
            client = ControlClient(daemon.control_path)
            await client.connect()
            out = []
            try:
                for i in range(args.reloads):
                    daemon.config_path.write_text(config(args.rules, first=(i % 2) * args.rules))
                    t0 = time.perf_counter()
                    result = await client.reload()
                    out.append(time.perf_counter() - t0)
                    if not result.ok:
                        raise RuntimeError(f"reload {i + 1} refused: {result.message}")
                    print(f"  reload {i + 1}: {out[-1] * 1000:.0f} ms (generation {result.generation}, "
                          f"{len(result.added)} rules added, {len(result.removed)} removed)", flush=True)
                rules = len((await client.snapshot(flows=False, dns=False)).rules)
                if rules != args.rules:
                    raise RuntimeError(f"the daemon holds {rules} rules, not {args.rules}")
            finally:
                await client.close()
            return out

        print(f"reload of {args.rules} rules, {args.reloads} times over the control socket", flush=True)
        times = asyncio.run(reloads())
        after = rss_mb(pid)
        print(f"reload of {args.rules} rules: median {med(times) * 1000:.0f} ms of {args.reloads}; "
              f"RSS after {after:.1f} MB")
        _summary.record(summary, _summary.RELOAD, med(times) * 1000, "ms", met=med(times) * 1000 <= 300,
                        note=f"`reload` over the control socket until it answers, every rule changed, "
                             f"{args.flows} flows and {len(held)} relayed connections there; median of {args.reloads}")
        _summary.record(summary, f"RSS after the reloads of {args.rules} rules", after, "MB", parent=_summary.RSS)
    finally:
        for s in held:
            s.close()
        if daemon is not None:
            daemon.stop()
        lab.down()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
