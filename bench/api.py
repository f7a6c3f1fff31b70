"""What the controller API (issue 14) costs: GET /connections with 10k flows, and a dashboard's streams vs relaying.

In the lab, one daemon with the API on 127.0.0.1:9090 of the router namespace,
a group with one shadowsocks node (Debian's ss-server, 203.0.113.12) for the
LAN's TCP to 203.0.113.10, everything else direct. In one run:

(a) GET /connections, timed by a client in the router namespace on one
    keep-alive connection: first with the daemon nearly idle (a few relayed
    flows: the baseline), then with --flows kernel flows (the LAN's UDP churn
    to a direct host, 2 datagrams each, as tests/helpers.udp_churn makes them)
    and --relayed open TCP connections relayed through the node. Requests are
    --interval apart, longer than the API's shared snapshot lives (0.5 s), so
    each one builds its snapshot as a 1 Hz dashboard's does. Median and p95 of
    --requests requests; the goal is p95 <= 100 ms. GET /version is timed too:
    the floor of any answer (HTTP, auth, JSON).
(b) Relayed throughput (one iperf3 stream through the ss node, upload and
    download) without and with a dashboard attached, in alternating rounds of
    the same run, the flows of (a) still there: the dashboard is what zashboard
    opens (websockets /connections, /traffic, /memory, /logs with ?token=), a
    client process in the router namespace that reads every message but
    decodes only the first of each stream (a real dashboard decodes on another
    machine; here the client shares the router's two cores). Ratio with/without:
    the goal is >= 0.95. The daemon's CPU and what the streams carried are shown.

    .venv/bin/python bench/api.py [--flows 10000] [--relayed 200] [--requests 20] [--seconds 5] [--rounds 5]
                                  [--summary FILE]

Needs root, iperf3 and shadowsocks-libev. No figure is asserted: this prints.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The checkout and tests/ (helpers.udp_churn) on the path, bench/ last: its dns.py would hide dnspython.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
sys.path.append(str(_HERE.parent / "tests"))
sys.path.append(str(_HERE))

import _summary  # noqa: E402

PORT = 9090
SECRET = "bench-api-secret"
TARGET = "203.0.113.10"      # iperf3 and the echo server, in wan: through the node
CHURN_DST = "203.0.113.11"   # the churn's UDP: direct, the kernel's flows
IPERF_PORT, ECHO_PORT = 5201, 7
PASSWORD = "daetui api bench"
SS_PORT = 8388
CLK_TCK = os.sysconf("SC_CLK_TCK")
STREAMS = ("/connections", "/traffic", "/memory", "/logs?level=info")   # zashboard's, as it opens them

CONFIG = """
[global]
lan_interface = ["lan0"]
log_level = "info"
dial_mode = "ip"
external_controller = "127.0.0.1:{port}"
external_controller_secret = "{secret}"
check_interval = "600s"
{checks}

[node]
bench = "{link}"

[group.proxy]
policy = "fixed(0)"

[routing]
rules = ["dip({target}) -> proxy"]
fallback = "direct"
"""


# -- the dashboard-like client: `bench/api.py --dashboard SECONDS`, run in the router namespace ------------

async def _dashboard(seconds: float) -> dict[str, dict[str, int]]:
    import aiohttp

    stats = {s: {"messages": 0, "bytes": 0, "decoded": 0} for s in STREAMS}
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def stream(session: aiohttp.ClientSession, path: str) -> None:
        sep = "&" if "?" in path else "?"
        async with session.ws_connect(f"ws://127.0.0.1:{PORT}{path}{sep}token={SECRET}", max_msg_size=0) as ws:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                s = stats[path]
                if not s["messages"]:
                    json.loads(msg.data)  # the first of each stream is JSON, or this client fails
                    s["decoded"] += 1
                s["messages"] += 1
                s["bytes"] += len(msg.data)

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.ensure_future(stream(session, p)) for p in STREAMS]
        try:
            await asyncio.wait_for(stop.wait(), seconds)
        except TimeoutError:
            pass
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return stats


def dashboard_main(seconds: float) -> int:
    print(json.dumps(asyncio.run(_dashboard(seconds))), flush=True)
    return 0


def _keep_busy(lab: Any, src: str, dst: str, flows: int, passes: Any, seconds: float) -> None:
    """A datagram on each of the churn's flows, pass after pass, for at most `seconds` (a child process)."""
    from helpers import udp_churn

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        udp_churn(lab, src, dst, flows, repeat=1)
        passes.value += 1


# -- figures ----------------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank: with 20 samples p95 is the 19th."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


@dataclass
class Timing:
    label: str
    ms: list[float]
    size: int          # bytes of the last answer
    count: int         # connections in it (-1: not a /connections answer)

    def row(self) -> str:
        n = f"{self.count:7d}" if self.count >= 0 else f"{'':>7}"
        return (f"{self.label:38} {n} {self.ms[0]:8.1f} {statistics.median(self.ms):8.1f} {pct(self.ms, 95):8.1f} "
                f"{max(self.ms):8.1f} {self.size / 1e6:8.2f}")


def time_get(ns: str, path: str, requests: int, interval: float, label: str) -> Timing:
    """`requests` GETs of `path` on one keep-alive connection made in namespace `ns`, `interval` apart."""
    from daetui.net.netns import netns

    ms: list[float] = []
    body = b""
    # The whole loop stays in the namespace: http.client reconnects by itself, and a socket
    # it made outside would reach this machine's own loopback.
    with netns(ns):
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
        try:
            for _ in range(requests):
                t0 = time.perf_counter()
                conn.request("GET", path, headers={"Authorization": f"Bearer {SECRET}"})
                resp = conn.getresponse()
                body = resp.read()
                ms.append(1000 * (time.perf_counter() - t0))
                if resp.status != 200:
                    raise RuntimeError(f"GET {path}: {resp.status} {body[:200]!r}")
                time.sleep(interval)
        finally:
            conn.close()
    count = len(json.loads(body).get("connections") or []) if path.startswith("/connections") else -1
    return Timing(label, ms, len(body), count)


@dataclass
class Round:
    up: float = 0.0
    down: float = 0.0
    cpu: float = 0.0                       # the daemon's, % of one core, during iperf3
    streams: dict[str, dict[str, int]] = field(default_factory=dict)
    dropped: int = 0                       # stream messages the daemon dropped for a slow reader


# -- the run -------------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flows", type=int, default=10_000, help="kernel flows (LAN UDP churn to a direct host)")
    ap.add_argument("--relayed", type=int, default=200, help="open TCP connections relayed through the node")
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--interval", type=float, default=0.6, help="seconds between requests (> the snapshot's 0.5)")
    ap.add_argument("--seconds", type=float, default=5, help="each iperf3 run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--method", default="aes-256-gcm")
    ap.add_argument("--lab", default="dtbenchapi")
    ap.add_argument("--dashboard", type=float, metavar="SECONDS", help=argparse.SUPPRESS)  # the client, internal
    _summary.add_option(ap)
    args = ap.parse_args()
    if args.dashboard is not None:
        return dashboard_main(args.dashboard)
    if os.geteuid() != 0:
        sys.exit("bench/api.py needs root (network namespaces, BPF)")
    for tool in ("iperf3", "ss-server"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found")

    import _lab
    from helpers import lan_connect, udp_churn

    from daetui.control.client import call_once
    from daetui.lab.topology import ADDR, Lab
    from testkit.configs import LAB_CHECKS
    from testkit.daemon import Daemon, ns_exec
    from testkit.peers.shadowsocks import SsServer

    lab = Lab(args.lab)
    if lab.is_up():
        sys.exit(f"lab {args.lab} is up already; take it down first (python -m daetui lab down?) or use --lab")
    lab.up()
    ss = SsServer(lab, args.method, PASSWORD, SS_PORT, verbose=False)
    procs: list[subprocess.Popen[str]] = []
    socks: list[socket.socket] = []
    daemon: Daemon | None = None
    try:
        ns_exec(lab.lan, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1")
        procs.append(_lab.iperf_server(lab.wan, TARGET, IPERF_PORT))
        ss.start()
        config = CONFIG.format(port=PORT, secret=SECRET, checks=LAB_CHECKS, link=ss.node(4).link(), target=TARGET)
        old = os.umask(0o077)  # the config holds the node's password
        try:
            daemon = Daemon.from_text(lab.router, config).start(timeout=90)
        finally:
            os.umask(old)

        def snapshot():  # type: ignore[no-untyped-def]
            assert daemon is not None
            return call_once(daemon.control_path, lambda c: c.snapshot(flows=True))

        # (a) the baseline: a few relayed flows, nothing else.
        for _ in range(3):
            socks.append(lan_connect(lab, TARGET, ECHO_PORT, timeout=10))
        time.sleep(0.5)
        print(f"controller API bench: GET timed in the router namespace, {args.requests} requests "
              f"{args.interval:g}s apart", flush=True)
        timings = [time_get(lab.router, "/version", args.requests, 0.05, "GET /version"),
                   time_get(lab.router, "/connections", args.requests, args.interval, "GET /connections, idle")]
        print("  " + timings[-1].row(), flush=True)

        # The load: relayed TCP through the node, kept open; then the churn (the kernel's flows).
        t0 = time.monotonic()
        for _ in range(args.relayed):
            socks.append(lan_connect(lab, TARGET, ECHO_PORT, timeout=10))
        sent = udp_churn(lab, ADDR.client4, CHURN_DST, args.flows)
        snap = snapshot()
        kernel = snap.raw_flows.count if snap.raw_flows is not None else 0
        relayed = sum(1 for c in snap.connections if c.state == "open")
        print(f"  load: {len(socks)} relayed TCP connections open, {sent} churn datagrams; the daemon holds "
              f"{kernel} kernel flows, {relayed} open relayed ({time.monotonic() - t0:.1f}s)", flush=True)
        label = f"GET /connections, {kernel} + {relayed} flows"
        timings.append(time_get(lab.router, "/connections", args.requests, args.interval, label))
        print("  " + timings[-1].row(), flush=True)
        # The same flows, every one of them active meanwhile (a datagram each, pass after pass, from a
        # process of its own: not this one's GIL): each view then finds every kernel entry changed.
        passes = multiprocessing.get_context("fork").Value("i", 0)
        seconds = args.requests * (args.interval + 1) + 30    # bounded, whatever happens
        churner = multiprocessing.get_context("fork").Process(
            target=_keep_busy, args=(lab, ADDR.client4, CHURN_DST, args.flows, passes, seconds), daemon=True)
        churner.start()
        try:
            t0 = time.monotonic()
            timings.append(time_get(lab.router, "/connections", args.requests, args.interval,
                                    "  the same, every flow active"))
            rate = passes.value / (time.monotonic() - t0)
        finally:
            churner.terminate()
            churner.join(10)
        print("  " + timings[-1].row() + f"   ({rate:.1f} passes over the flows a second)", flush=True)

        # (b) throughput without and with a dashboard, alternating.
        rounds: dict[str, list[Round]] = {"without": [], "with dashboard": []}
        for i in range(args.rounds):
            for who in rounds:
                udp_churn(lab, ADDR.client4, CHURN_DST, args.flows)   # keep the kernel's flows fresh
                r = Round()
                client = None
                before_dropped = snapshot().api.dropped
                if who != "without":
                    client = subprocess.Popen(
                        ["ip", "netns", "exec", lab.router, sys.executable, str(Path(__file__).resolve()),
                         "--dashboard", str(4 * args.seconds + 30)], stdout=subprocess.PIPE, text=True)
                    time.sleep(2.0)   # attached, and the first big /connections message sent
                c0 = cpu_seconds(daemon.pid)
                t = time.monotonic()
                r.up = _lab.iperf(lab.lan, TARGET, IPERF_PORT, args.seconds)
                r.down = _lab.iperf(lab.lan, TARGET, IPERF_PORT, args.seconds, reverse=True)
                r.cpu = 100 * (cpu_seconds(daemon.pid) - c0) / (time.monotonic() - t)
                if client is not None:
                    client.send_signal(signal.SIGTERM)
                    out, _ = client.communicate(timeout=30)
                    r.streams = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
                r.dropped = snapshot().api.dropped - before_dropped
                rounds[who].append(r)
                carried = sum(s["bytes"] for s in r.streams.values()) / 1e6
                print(f"  round {i + 1} {who:15}: up {r.up:5.2f} down {r.down:5.2f} Gbit/s  daemon CPU "
                      f"{r.cpu:3.0f}%  streams {carried:7.1f} MB, dropped {r.dropped}", flush=True)
        report(timings, rounds, args)
        summarize(args.summary, timings, rounds, args)
    finally:
        for s in socks:
            s.close()
        if daemon is not None:
            daemon.stop()
            if daemon.directory is not None:
                shutil.rmtree(daemon.directory, ignore_errors=True)
        ss.stop()
        _lab.end(procs)
        lab.down()
    return 0


def summarize(path: Path | None, timings: list[Timing], rounds: dict[str, list[Round]],
              args: argparse.Namespace) -> None:
    """bench/all.py's rows (issue 14's goals): report()'s p95 with the load, and the dashboard's ratio."""
    record = _summary.record
    idle, loaded, active = timings[1], timings[2], timings[3]
    a, b = pct(loaded.ms, 95), pct(idle.ms, 95)
    record(path, _summary.API_CONNECTIONS, a, "ms", baseline=b, baseline_of="idle (3 relayed flows)", ratio=a / b,
           ratio_of="loaded/idle", met=a <= 100,
           note=f"{loaded.label.split(', ', 1)[1]}; {args.requests} requests {args.interval:g}s apart")
    record(path, "the same, every flow active", pct(active.ms, 95), "ms", parent=_summary.API_CONNECTIONS)
    if not args.rounds:
        return
    w, d = rounds["without"], rounds["with dashboard"]
    ratios = {k: statistics.median(getattr(r, k) for r in d) / statistics.median(getattr(r, k) for r in w)
              for k in ("up", "down")}
    k = min(ratios, key=lambda k: ratios[k])
    a, b = statistics.median(getattr(r, k) for r in d), statistics.median(getattr(r, k) for r in w)
    record(path, _summary.API_DASHBOARD, a, "Gbit/s", baseline=b, baseline_of="without", ratio=a / b,
           ratio_of="with/without", met=a / b >= 0.95,
           note=f"the lower of upload ({ratios['up']:.2f}) and download ({ratios['down']:.2f}): "
                f"{'upload' if k == 'up' else 'download'}; median of {len(w)} alternating rounds")


def report(timings: list[Timing], rounds: dict[str, list[Round]], args: argparse.Namespace) -> None:
    print(f"\n(a) GET answered to a client in the router namespace; {args.requests} requests each")
    print(f"{'':38} {'conns':>7} {'1st ms':>8} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'MB':>8}")
    for t in timings:
        print(t.row())
    loaded = timings[2]
    base = timings[1]
    print(f"{'p95 with the load / idle':38} {'':7} {'':8} {'':8} {pct(loaded.ms, 95) / pct(base.ms, 95):8.2f}x")
    print("(1st: the first request of the series, included in p50/p95: the first view of new flows encodes "
          "each of them; later views re-encode only flows that changed)")
    for t in timings[2:]:
        print(f"goal: p95 <= 100 ms with {args.flows} flows{',' + t.label.split(',')[-1] if t is not loaded else ''}: "
              f"{'met' if pct(t.ms, 95) <= 100 else 'NOT met'} ({pct(t.ms, 95):.0f} ms)")
    if not args.rounds:
        return
    w, d = rounds["without"], rounds["with dashboard"]

    def med(rs: list[Round], attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in rs)

    print(f"\n(b) relayed TCP through the ss node ({args.method}), one iperf3 stream {args.seconds:g}s; "
          f"median of {len(w)} alternating rounds; flows of (a) present")
    print(f"{'':34} {'without':>9} {'dashboard':>9} {'ratio':>6}")
    for label, attr in (("TCP upload, Gbit/s", "up"), ("TCP download, Gbit/s", "down")):
        a, b = med(w, attr), med(d, attr)
        print(f"{label:34} {a:9.2f} {b:9.2f} {b / a if a else float('nan'):6.2f}")
    print(f"{'daemon CPU % during iperf3':34} {med(w, 'cpu'):9.0f} {med(d, 'cpu'):9.0f}")
    # What the daemon spends per Gbit/s: steadier than the rates when other processes share the cores.
    a, b = (statistics.median(r.cpu / ((r.up + r.down) / 2) for r in rs) for rs in (w, d))
    print(f"{'daemon CPU % per Gbit/s':34} {a:9.1f} {b:9.1f} {b / a:6.2f}")
    for path in STREAMS:
        msgs = statistics.median(r.streams.get(path, {}).get("messages", 0) for r in d)
        mb = statistics.median(r.streams.get(path, {}).get("bytes", 0) for r in d) / 1e6
        print(f"{'  stream ' + path:34} {'':9} {msgs:9.0f} msgs {mb:8.1f} MB")
    print(f"{'  messages dropped (slow reader)':34} {'':9} {statistics.median(r.dropped for r in d):9.0f}")
    ratio = min(med(d, "up") / med(w, "up"), med(d, "down") / med(w, "down"))
    print(f"goal: with/without >= 0.95: {ratio:.2f} {'met' if ratio >= 0.95 else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
