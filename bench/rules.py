"""What a new flow's routing decision costs in the kernel, at 1, 100, 1000 and 4096 rules: walk vs classifier.

lan_ingress is loaded as daetui loads it and run on a TCP SYN with
BPF_PROG_TEST_RUN (the kernel runs the program `--repeat` times on the
packet and reports the mean time per run). A SYN is always decided afresh.
The rules match none of it: the fallback decides, the worst case. The rules
mix the kinds of match sets real configs hold: ports, IP prefixes (an LPM trie
lookup each, walked) and MACs.

Each size is measured twice in the same run: by the rule walk (route_chunk,
one match set after another: params.walk) and by the rule classifier
(route_classify + route_match: a lookup per field and an AND of bitmaps).
Also timed: writing the rules into the kernel (compile, classifier tables and
every map write, as a reload does) at each size.

Baselines measured in the same run: the same SYN with no rules at all, and
a packet of an already routed flow (one hash lookup, no rule walk): the cost
every later packet of a flow pays.

Runs in a network namespace of its own (nothing reaches an interface).

    .venv/bin/python bench/rules.py [--repeat 20000] [--trials 5] [--summary FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# The checkout, not bench/ (whose dns.py would stand in for dnspython), on the path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
sys.path.append(str(_HERE))  # last: for _summary

import _summary  # noqa: E402

from testkit.packets import TCP_ACK, TCP_SYN, Packet  # noqa: E402
from testkit.progtest import RouteHarness  # noqa: E402

SIZES = (1, 100, 1000, 4096)


def tcp_packet(flags: int, src: str = "192.0.2.10", dst: str = "203.0.113.50", sport: int = 40000,
               dport: int = 443) -> Packet:
    """A TCP segment from the lab's LAN client (its MAC) to a WAN host."""
    return Packet(src, dst, sport, dport, "tcp", tcp_flags=flags)


KINDS = {
    "dport": lambda i: f"dport({10000 + i})",
    "dip": lambda i: f"dip(10.{i >> 8 & 255}.{i & 255}.0/24)",
    "mac": lambda i: f"mac(02:00:00:00:{i >> 8 & 255:02x}:{i & 255:02x})",
}


def config(n: int, kinds: tuple[str, ...] = tuple(KINDS)) -> str:
    """n rules, one match set each (kinds in turn), none matching the benchmark's packet."""
    rules = [f'  "{KINDS[kinds[i % len(kinds)]](i)} -> {"ga" if i % 2 else "gb"}",' for i in range(n)]
    return ("[global]\nlan_interface = [\"lan0\"]\n[group.ga]\n[group.gb]\n"
            "[routing]\nrules = [\n" + "\n".join(rules) + "\n]\nfallback = \"direct\"\n")


def ns_per_run(h: RouteHarness, packet: Packet, repeat: int) -> int:
    """Mean ns of one lan_ingress run on `packet`, over `repeat` runs by the kernel (the flow's entry kept)."""
    return h.run(packet, keep_flow=True, repeat=repeat).duration_ns


def measure(h: RouteHarness, n: int, packet: Packet, repeat: int, trials: int,
            kinds: tuple[str, ...] = tuple(KINDS), walk: bool = False) -> float:
    """Median ns per run with n rules loaded (into the inactive generation, then made active)."""
    rules = h.load(config(n, kinds))
    assert len(rules.match_sets) == n
    h.set_walk(walk)
    if n and not walk and not h.classified:
        sys.exit(f"{n} rules were not classified: {h.program.classifiers[h.generation].why}")
    ns_per_run(h, packet, 1000)  # warm up
    return statistics.median(ns_per_run(h, packet, repeat) for _ in range(trials))


def load_ms(h: RouteHarness, n: int, trials: int) -> float:
    """Median ms to compile n rules and write them (match sets, ip sets, classifier) and flip to them."""
    text = config(n)
    times = []
    for _ in range(trials):
        t = time.perf_counter()
        h.load(text, forget_flows=False)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def summarize(path: Path | None, results: list[tuple[int, float, float, float]], established: float) -> None:
    """bench/all.py's rows: the classifier's decision at the most rules (against the walk), the load at 1000."""
    n, walked, classified, _ = results[-1]
    _summary.record(path, _summary.KERNEL_DECISION, classified / 1000, "µs", baseline=walked / 1000,
                    baseline_of="the rule walk", ratio=walked / classified, ratio_of="walk/classifier",
                    met=n >= 4096 and classified <= 2000,
                    note=f"{n} rules, a TCP SYN no rule matches; later packets of a flow {established:.0f} ns")
    for n, _, _, load in results:
        if n == 1000:
            _summary.record(path, "compile + kernel write alone (bench/rules.py's harness, no daemon)", load,
                            "ms", parent=_summary.RELOAD)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20000, help="runs per measurement (the kernel's loop)")
    ap.add_argument("--trials", type=int, default=5, help="measurements per figure; the median is shown")
    _summary.add_option(ap)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/rules.py needs root (BPF)")
    # The harness loads lan_ingress as the daemon does and runs it in a network namespace of its own.
    h = RouteHarness()
    prog = h.program
    syn, ack = tcp_packet(TCP_SYN), tcp_packet(TCP_ACK)
    empty = measure(h, 0, syn, args.repeat, args.trials)
    # The routed flow's later packets: its tuple is in routing_tuples now (the SYN just put it there).
    established = statistics.median(ns_per_run(h, ack, args.repeat) for _ in range(args.trials))
    counters_before = prog.counters()
    results = []
    for n in SIZES:
        walked = measure(h, n, syn, args.repeat, args.trials, walk=True)
        classified = measure(h, n, syn, args.repeat, args.trials)
        results.append((n, walked, classified, load_ms(h, n, args.trials)))
    h.set_walk(False)
    counters = prog.counters()
    if counters["CHUNK_LIMIT"] != counters_before["CHUNK_LIMIT"]:
        sys.exit("a decision ran out of tail calls: the figures would not be whole decisions")

    print(f"kernel: {platform.release()} · {os.cpu_count()} CPUs · {args.repeat} runs x {args.trials} trials "
          "(median) · BPF_PROG_TEST_RUN on lan_ingress")
    w = 34
    print(f"{'ns per packet':{w}}{'walk':>10}{'classifier':>12}{'walk/cls':>10}{'load ms':>10}")
    print(f"{'later packet of a routed flow':{w}}{established:>10.0f}")
    print(f"{'new flow, no rules':{w}}{empty:>10.0f}")
    for n, walked, classified, load in results:
        label = f"new flow, {n} rule{'s' if n > 1 else ''} (fallback)"
        print(f"{label:{w}}{walked:>10.0f}{classified:>12.0f}{walked / classified:>9.1f}x{load:>10.0f}")
    last = results[-1]
    print(f"goal: a new-flow decision at {last[0]} rules <= 2000 ns: "
          f"{'met' if last[2] <= 2000 else 'NOT met'} ({last[2]:.0f} ns classified)")
    print(f"a flow is decided once; its later packets cost {established:.0f} ns whatever the rules")
    summarize(args.summary, results, established)
    h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
