"""How fast does daetui answer DNS, against dnsmasq doing the same job?

In the lab, in one run, with the same unbound (203.0.113.53) behind both:
  - daetui: the LAN's queries to 203.0.113.53 are hijacked by the kernel to
    daetui's DNS controller, which answers from its cache or asks unbound;
  - dnsmasq at 203.0.113.54 as a caching forwarder to unbound, asked
    directly. daetui stays attached (a `dip(203.0.113.54) -> must_direct`
    rule: must_* flows are not hijacked), so both are measured through the
    same router with the same kernel program on the path, in alternating
    rounds of the same run.

Figures:
  - cached queries per second: --names names, warmed, then asked for
    --seconds by dnsperf from the LAN (many queries in flight). Each name
    has an address of its own; with --shared-address they all share one
    (names from a wildcard: many names on one address, as on a CDN);
  - one query at a time from the LAN: latency of a cached answer, and of a
    cache miss (a name never asked before, from a wildcard in unbound, so
    both servers must forward it), p50 and p90 in ms.
Each figure is the median over --rounds rounds; ratios are daetui / dnsmasq.

    .venv/bin/python bench/dns.py [--seconds 5] [--rounds 3] [--names 200] [--shared-address] [--kernel-answers]
                                  [--summary FILE]

--kernel-answers turns dns.kernel_answers on: repeated queries are answered by the LAN program.

Needs dnsperf (Debian package `dnsperf`).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# This file is called dns.py: its directory, which Python puts first on the path when it runs
# it, would hide dnspython's `dns`. The directory goes last instead (for _lab): `remove` takes
# the first occurrence, the one in front.
sys.path.append(str(Path(__file__).resolve().parent))
sys.path.remove(str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _summary
from _lab import require_root

from daetui.control.client import ControlClient
from daetui.dns.state import DnsCounters
from daetui.lab.dnspeers import LAB_ZONE, Record, Unbound
from daetui.lab.topology import ADDR, Lab
from daetui.net.netns import netns
from testkit.daemon import Daemon, ns_exec
from testkit.peers.dnsmasq import Dnsmasq

UNBOUND_IP, DNSMASQ_IP = ADDR.dns4[0], ADDR.dns4[1]
CONFIG = f"""
[global]
lan_interface = ["lan0"]
log_level = "warn"

[dns]
upstream = {{ unbound = "udp://{UNBOUND_IP}:53" }}
request = ["fallback: unbound"]
cache_size = 65536

[routing]
# Queries to dnsmasq pass the router untouched: a must_* flow's DNS is not hijacked.
rules = ["dip({DNSMASQ_IP}) -> must_direct"]
fallback = "direct"
"""
ZONE = "bench.test"
CACHED = f"cached.{ZONE}"     # c<i>.cached.bench.test A: one address each, TTL an hour
SHARED = f"shared.{ZONE}"     # *.shared.bench.test A: one address for every name
MISS = f"miss.{ZONE}"         # *.miss.bench.test A: any name, never asked before
TTL = 3600
DNSPERF = "dnsperf"
DNSPERF_CLIENTS = 8           # sockets (source ports)
DNSPERF_INFLIGHT = 200        # queries outstanding


def cached_names(n: int, shared: bool = False) -> list[str]:
    return [f"c{i}.{SHARED if shared else CACHED}" for i in range(n)]


def records(n: int) -> list[Record]:
    """The lab zone, `n` cached names with an address each (no two alike), and the wildcards."""
    out = list(LAB_ZONE)
    out += [Record(name, "A", f"198.51.100.{50 + i}", ttl=TTL) for i, name in enumerate(cached_names(n))]
    out.append(Record(f"*.{SHARED}", "A", ADDR.hosts4[1], ttl=TTL))
    out.append(Record(f"*.{MISS}", "A", ADDR.hosts4[0], ttl=TTL))
    return out


# -- load: dnsperf --------------------------------------------------------------------------

@dataclass
class Blast:
    qps: float
    sent: int
    completed: int
    lost: int
    avg_ms: float


def dnsperf(lab: Lab, server: str, datafile: Path, seconds: float) -> Blast:
    out = ns_exec(lab.lan, DNSPERF, "-s", server, "-d", str(datafile), "-l", f"{seconds:g}",
                  "-c", str(DNSPERF_CLIENTS), "-q", str(DNSPERF_INFLIGHT), "-t", "2",
                  timeout=seconds + 30)
    text = out.stdout + out.stderr

    def field(label: str) -> str:
        m = re.search(rf"{label}:\s+([\d.]+)", text)
        if m is None:
            raise RuntimeError(f"dnsperf: no '{label}' in its output:\n{text}")
        return m.group(1)

    return Blast(float(field("Queries per second")), int(field("Queries sent")), int(field("Queries completed")),
                 int(field("Queries lost")),
                 float(field("Average Latency \\(s\\)")) * 1000)


# -- one query at a time --------------------------------------------------------------------

def wire_query(name: str, qid: int) -> bytes:
    """A plain A query, no EDNS, recursion desired."""
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)


def one_at_a_time(lab: Lab, server: str, names: list[str], timeout: float = 2.0) -> list[float]:
    """Latency in ms of each name's query, asked one after the other from the LAN; checks each answer."""
    with netns(lab.lan):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.connect((server, 53))
        out = []
        for i, name in enumerate(names):
            qid = (i * 7919 + 1) & 0xFFFF
            q = wire_query(name, qid)
            t0 = time.perf_counter()
            s.send(q)
            while True:
                r = s.recv(4096)
                if r[:2] == q[:2]:
                    break
            out.append((time.perf_counter() - t0) * 1000)
            rcode, ancount = r[3] & 0xF, struct.unpack_from("!H", r, 6)[0]
            if rcode != 0 or ancount < 1:
                raise RuntimeError(f"{server}: {name}: rcode {rcode}, {ancount} answers")
        return out
    finally:
        s.close()


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(p * len(v)))]


# -- counters, to show who answered -----------------------------------------------------------

async def _daetui_counters(control: Path) -> DnsCounters:
    client = ControlClient(control)
    await client.connect()
    try:
        snap = await client.snapshot(flows=False)
    finally:
        await client.close()
    assert snap.dns is not None
    return snap.dns.counters


def daetui_counters(daemon: Daemon) -> DnsCounters:
    return asyncio.run(_daetui_counters(daemon.control_path))


def dnsmasq_counter(lab: Lab, name: str) -> int:
    """dnsmasq's cache counters over CHAOS TXT (hits.bind, misses.bind), asked from the wan side."""
    import dns.message
    import dns.query

    q = dns.message.make_query(name, "TXT", "CH")
    with netns(lab.wan):
        r = dns.query.udp(q, DNSMASQ_IP, timeout=2)
    return int(r.answer[0][0].strings[0])


# -- the run ------------------------------------------------------------------------------------

@dataclass
class Round:
    qps: dict[str, Blast]
    hit_ms: dict[str, list[float]]
    miss_ms: dict[str, list[float]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5, help="dnsperf time per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--names", type=int, default=200, help="cached names (at most 200)")
    ap.add_argument("--misses", type=int, default=500, help="cache misses per server per round")
    ap.add_argument("--shared-address", action="store_true", help="cached names all share one address")
    ap.add_argument("--kernel-answers", action="store_true",
                    help="dns.kernel_answers on: repeated queries answered by the LAN program")
    ap.add_argument("--lab", default="dtdnsbench")
    _summary.add_option(ap)
    args = ap.parse_args()
    if shutil.which(DNSPERF) is None:
        sys.exit("bench/dns.py needs dnsperf: apt-get install --no-install-recommends dnsperf")
    if not 1 <= args.names <= 200:
        sys.exit("--names: 1 to 200 (one address each in 198.51.100.50-249)")

    names = cached_names(args.names, args.shared_address)
    tmp = Path(tempfile.mkdtemp(prefix="daetui-dnsbench-"))
    datafile = tmp / "cached.txt"
    datafile.write_text("".join(f"{n} A\n" for n in names))

    lab = Lab(args.lab)
    lab.up(servers=False)
    unbound = Unbound(lab, records(args.names))
    dnsmasq = Dnsmasq(lab, forward_to=UNBOUND_IP, cache_size=10000)
    daemon = None
    servers = {"daetui": UNBOUND_IP, "dnsmasq": DNSMASQ_IP}
    try:
        unbound.start()
        dnsmasq.start()
        config = CONFIG.replace("cache_size = 65536", "cache_size = 65536\nkernel_answers = true") \
            if args.kernel_answers else CONFIG
        daemon = Daemon.from_text(lab.router, config).start(timeout=90)

        # Warm both caches; from here on every cached name is a hit for both.
        for server in servers.values():
            one_at_a_time(lab, server, names)
        before = daetui_counters(daemon), dnsmasq_counter(lab, "hits.bind")
        rounds: list[Round] = []
        print(f"DNS: {args.rounds} alternating rounds; dnsperf {args.seconds:g}s, {DNSPERF_CLIENTS} sockets, "
              f"{DNSPERF_INFLIGHT} in flight, {args.names} cached names "
              f"({'one address for all' if args.shared_address else 'an address each'}); "
              f"{args.misses} misses one at a time", flush=True)
        for i in range(args.rounds):
            order = list(servers) if i % 2 == 0 else list(reversed(servers))
            r = Round({}, {}, {})
            for who in order:
                r.qps[who] = dnsperf(lab, servers[who], datafile, args.seconds)
            for who in order:
                r.hit_ms[who] = one_at_a_time(lab, servers[who], names)
            for who in order:
                token = secrets.token_hex(4)
                r.miss_ms[who] = one_at_a_time(lab, servers[who],
                                               [f"r{i}-{token}-{j}.{MISS}" for j in range(args.misses)])
            rounds.append(r)
            print(f"  round {i + 1}: " + "  ".join(
                f"{w} {r.qps[w].qps:.0f} q/s (lost {r.qps[w].lost}), miss p50 {pct(r.miss_ms[w], .5):.2f} ms"
                for w in servers), flush=True)
        after = daetui_counters(daemon), dnsmasq_counter(lab, "hits.bind")
        report(rounds, before, after, len(names), args.misses)
        summarize(args.summary, rounds, args)
    finally:
        if daemon is not None:
            daemon.stop()
        dnsmasq.stop()
        unbound.stop()
        lab.down()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def summarize(path: Path | None, rounds: list[Round], args: argparse.Namespace) -> None:
    """bench/all.py's rows: the medians of report()'s table, daetui against dnsmasq."""
    med = statistics.median
    d, m = "daetui", "dnsmasq"
    record = _summary.record
    a, b = med(r.qps[d].qps for r in rounds), med(r.qps[m].qps for r in rounds)
    record(path, _summary.DNS_CACHED, a, "q/s", baseline=b, baseline_of="dnsmasq", ratio=a / b,
           ratio_of="daetui/dnsmasq", met=a / b >= 1.0,
           note=f"dnsperf {args.seconds:g}s, {DNSPERF_INFLIGHT} in flight, {args.names} names; "
                f"median of {len(rounds)} alternating rounds")
    a, b = med(pct(r.hit_ms[d], .5) for r in rounds), med(pct(r.hit_ms[m], .5) for r in rounds)
    record(path, "cached answer, one at a time, p50", a, "ms", baseline=b, baseline_of="dnsmasq", ratio=a / b,
           ratio_of="daetui/dnsmasq", parent=_summary.DNS_CACHED)
    a, b = med(pct(r.miss_ms[d], .5) for r in rounds), med(pct(r.miss_ms[m], .5) for r in rounds)
    record(path, _summary.DNS_MISS, a, "ms", baseline=b, baseline_of="dnsmasq", ratio=a / b,
           ratio_of="daetui/dnsmasq", met=a / b <= 1.5,
           note=f"{args.misses} names new to both, one at a time, per round")
    a, b = med(pct(r.miss_ms[d], .9) for r in rounds), med(pct(r.miss_ms[m], .9) for r in rounds)
    record(path, "DNS miss latency p90", a, "ms", baseline=b, baseline_of="dnsmasq", ratio=a / b,
           ratio_of="daetui/dnsmasq", parent=_summary.DNS_MISS)


def report(rounds: list[Round], before: tuple[DnsCounters, int], after: tuple[DnsCounters, int],
           names: int, misses: int) -> None:
    med = statistics.median
    d, m = "daetui", "dnsmasq"

    def each(values: list[float], fmt: str) -> str:
        return "/".join(format(v, fmt) for v in values)

    qps = {w: [r.qps[w].qps for r in rounds] for w in (d, m)}
    lost = {w: sum(r.qps[w].lost for r in rounds) for w in (d, m)}
    hit = {w: [pct(r.hit_ms[w], .5) for r in rounds] for w in (d, m)}
    p50 = {w: [pct(r.miss_ms[w], .5) for r in rounds] for w in (d, m)}
    p90 = {w: [pct(r.miss_ms[w], .9) for r in rounds] for w in (d, m)}
    rows = [("cached answers, queries/s (dnsperf)", qps, ".0f"),
            ("cached answer, one at a time, p50 ms", hit, ".3f"),
            ("cache miss, one at a time, p50 ms", p50, ".3f"),
            ("cache miss, one at a time, p90 ms", p90, ".3f")]
    print()
    print(f"{'':40} {'daetui':>9} {'dnsmasq':>9} {'ratio':>6}")
    for label, v, fmt in rows:
        print(f"{label:40} {med(v[d]):9{fmt}} {med(v[m]):9{fmt}} {med(v[d]) / med(v[m]):6.2f}")
    print(f"(median of {len(rounds)} rounds; ratio daetui/dnsmasq. Each round: q/s daetui {each(qps[d], '.0f')}, "
          f"dnsmasq {each(qps[m], '.0f')}; miss p50 ms daetui {each(p50[d], '.3f')}, dnsmasq {each(p50[m], '.3f')}."
          f" dnsperf queries lost: daetui {lost[d]}, dnsmasq {lost[m]})")
    # The load generator can do at least what it did against dnsmasq: daetui's figure is not its limit.
    print(f"dnsperf's own ceiling here is at least {max(qps[m]):.0f} q/s (its best against dnsmasq), "
          f"{max(qps[m]) / med(qps[d]):.1f}x daetui's median")
    c0, c1 = before[0], after[0]
    sent = {w: sum(r.qps[w].sent for r in rounds) + len(rounds) * (names + misses) for w in (d, m)}
    print(f"who answered: daetui received {c1.queries - c0.queries} queries (its rounds sent {sent[d]}; "
          f"dnsmasq's rounds {sent[m]}, must_direct, not hijacked): cache hits +{c1.cache_hits - c0.cache_hits}, "
          f"misses +{c1.cache_misses - c0.cache_misses}; "
          f"answered by the kernel +{c1.kernel_answered - c0.kernel_answered}; "
          f"dnsmasq cache hits +{after[1] - before[1]}")
    print("both measured through the same router with daetui attached, in alternating order")

if __name__ == "__main__":
    require_root("bench/dns.py")
    sys.exit(main())
