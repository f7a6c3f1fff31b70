"""What a new flow's routing decision costs in the kernel, at 1, 100, 1000 and 4096 rules.

lan_ingress is loaded as daetui loads it and run on a TCP SYN with
BPF_PROG_TEST_RUN (the kernel runs the program `--repeat` times on the
packet and reports the mean time per run). A SYN is always decided afresh,
so each run walks the rules: it matches none of them and takes the fallback,
the worst case, after evaluating every match set. The rules mix the kinds of
match sets real configs hold: ports, IP prefixes (an LPM trie lookup each)
and MACs.

Baselines measured in the same run: the same SYN with no rules at all, and
a packet of an already routed flow (one hash lookup, no rule walk): the cost
every later packet of a flow pays.

Runs in a network namespace of its own (nothing reaches an interface).

    .venv/bin/python bench/rules.py [--repeat 20000] [--trials 5]
"""

from __future__ import annotations

import argparse
import ctypes as ct
import os
import platform
import statistics
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daetui.config.load import parse_config
from daetui.dataplane.bpflink import _SYS_BPF
from daetui.dataplane.program import KernelProgram
from daetui.routing.compile import compile_rules

BPF_PROG_TEST_RUN = 10
CLONE_NEWNET = 0x40000000
SIZES = (1, 100, 1000, 4096)

_libc = ct.CDLL(None, use_errno=True)


class _TestRunAttr(ct.Structure):
    # union bpf_attr, its `test` member (linux/bpf.h); the rest of the union zero.
    _fields_ = [("prog_fd", ct.c_uint32), ("retval", ct.c_uint32), ("data_size_in", ct.c_uint32),
                ("data_size_out", ct.c_uint32), ("data_in", ct.c_uint64), ("data_out", ct.c_uint64),
                ("repeat", ct.c_uint32), ("duration", ct.c_uint32), ("ctx_size_in", ct.c_uint32),
                ("ctx_size_out", ct.c_uint32), ("ctx_in", ct.c_uint64), ("ctx_out", ct.c_uint64),
                ("flags", ct.c_uint32), ("cpu", ct.c_uint32), ("batch_size", ct.c_uint32),
                ("_zero", ct.c_uint8 * 16)]


def test_run(prog_fd: int, packet: bytes, repeat: int) -> tuple[int, int]:
    """(return value, mean ns per run) of the program on `packet`, run `repeat` times by the kernel."""
    data = ct.create_string_buffer(packet, len(packet))
    out = ct.create_string_buffer(len(packet) + 256)
    attr = _TestRunAttr(prog_fd=prog_fd, data_size_in=len(packet), data_size_out=len(out),
                        data_in=ct.addressof(data), data_out=ct.addressof(out), repeat=repeat)
    if _libc.syscall(_SYS_BPF[platform.machine()], BPF_PROG_TEST_RUN, ct.byref(attr), ct.sizeof(attr)) != 0:
        err = ct.get_errno()
        raise OSError(err, f"BPF_PROG_TEST_RUN: {os.strerror(err)}")
    return attr.retval, attr.duration


def _checksum(b: bytes) -> int:
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF


def tcp_packet(flags: int, src: str = "192.0.2.10", dst: str = "203.0.113.50", sport: int = 40000,
               dport: int = 443) -> bytes:
    """Ethernet + IPv4 + TCP from the lab's LAN client (its MAC) to a WAN host."""
    eth = bytes.fromhex("020000000001" "02005e000210") + b"\x08\x00"
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 64240, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0,
                     bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return eth + ip + tcp


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


def measure(prog: KernelProgram, n: int, packet: bytes, repeat: int, trials: int, gen: int,
            kinds: tuple[str, ...] = tuple(KINDS)) -> float:
    """Median ns per run with n rules loaded (written into `gen`, then made active)."""
    rules = compile_rules(parse_config(config(n, kinds), "bench.toml").routing, prog.max_match_sets)
    assert len(rules.match_sets) == n
    prog.clear_rule_stats(gen)
    prog.write_generation(gen, rules)
    prog.activate(gen)
    test_run(prog.ingress.fd, packet, 1000)  # warm up
    return statistics.median(test_run(prog.ingress.fd, packet, repeat)[1] for _ in range(trials))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20000, help="runs per measurement (the kernel's loop)")
    ap.add_argument("--trials", type=int, default=5, help="measurements per figure; the median is shown")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/rules.py needs root (BPF)")
    if _libc.unshare(CLONE_NEWNET) != 0:
        sys.exit(f"unshare(CLONE_NEWNET): {os.strerror(ct.get_errno())}")

    prog = KernelProgram()
    prog.set_params(tproxy_mark=0x2000000, fail_open=True, active_gen=0)
    syn, ack = tcp_packet(0x02), tcp_packet(0x10)
    empty = measure(prog, 0, syn, args.repeat, args.trials, gen=0)
    # The routed flow's later packets: its tuple is in routing_tuples now (the SYN just put it there).
    established = statistics.median(test_run(prog.ingress.fd, ack, args.repeat)[1] for _ in range(args.trials))
    counters_before = prog.counters()
    results = []
    for i, n in enumerate(SIZES):
        results.append((n, measure(prog, n, syn, args.repeat, args.trials, gen=(i + 1) & 1)))
    # What one match set of each kind costs: 1000 of a kind, less the rule-less walk, over 1000.
    per_kind = {k: (measure(prog, 1000, syn, args.repeat, args.trials, gen=i & 1, kinds=(k,)) - empty) / 1000
                for i, k in enumerate(KINDS)}
    counters = prog.counters()
    if counters["CHUNK_LIMIT"] != counters_before["CHUNK_LIMIT"]:
        sys.exit("the rule walk ran out of tail calls: the figures would not be a full walk")

    print(f"kernel: {platform.release()} · {os.cpu_count()} CPUs · {args.repeat} runs x {args.trials} trials "
          "(median) · BPF_PROG_TEST_RUN on lan_ingress")
    w = 40
    print(f"{'':{w}}{'ns/packet':>10}{'vs 1 rule':>11}")
    print(f"{'later packet of a routed flow':{w}}{established:>10.0f}")
    print(f"{'new flow, no rules':{w}}{empty:>10.0f}")
    one = results[0][1]
    for n, ns in results:
        label = f"new flow, {n} rule{'s' if n > 1 else ''} (all walked)"
        print(f"{label:{w}}{ns:>10.0f}{ns / one:>10.1f}x")
    print("per match set walked: " + ", ".join(f"{k}() {ns:.0f} ns" for k, ns in per_kind.items())
          + " (an IP prefix set is an LPM trie lookup)")
    print(f"a flow is decided once; its later packets cost {established:.0f} ns whatever the rules")
    prog.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
