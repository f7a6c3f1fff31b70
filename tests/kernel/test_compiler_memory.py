"""The compiler's memory goes back once the programs are loaded (dataplane/compilermemory.py)."""

from __future__ import annotations

import pytest

from daetui.dataplane.compilermemory import compiler_mappings, release_compiler_memory

pytestmark = pytest.mark.kernel


def compiler_rss_kb() -> int:
    """Resident kB of the compiler's mappings, from /proc/self/smaps."""
    with open("/proc/self/maps") as f:
        ours = {(s, e) for s, e, _ in compiler_mappings(f.read())}
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(x, 16) for x in head.split("-"))
                inside = (start, end) in ours
            elif inside and head == "Rss:":
                total += int(line.split()[1])
    return total


def test_a_compile_leaves_tens_of_megabytes_resident_and_they_are_given_back():
    from bcc import BPF

    b = BPF(text=b"#include <uapi/linux/bpf.h>\nint f(struct __sk_buff *skb) { return skb->len > 100; }")
    b.load_func(b"f", BPF.SCHED_CLS)
    before = compiler_rss_kb()
    assert before > 20_000, before        # LLVM and clang ran: their code is resident
    assert release_compiler_memory() > 0
    after = compiler_rss_kb()
    assert after < before / 4, (before, after)
    b.cleanup()


def test_the_mappings_are_found_by_library_name():
    maps = ("7f00-7f80 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1\n"
            "7f80-7f90 r--p 00000000 08:01 2 /usr/lib/llvm-14/lib/libclang-cpp.so.14\n"
            "7f90-7fa0 rw-p 00000000 00:00 0 [heap]\n"
            "7fa0-7fb0 r-xp 00000000 08:01 3 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert [p.rsplit("/", 1)[1] for _, _, p in compiler_mappings(maps)] == ["libLLVM-14.so.1", "libclang-cpp.so.14"]
