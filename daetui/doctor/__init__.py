"""`daetui doctor`: what this machine has and lacks for daetui, each check with a verdict.

Probes are real where they can be (a BPF map created, tiny programs loaded,
a clsact qdisc and policy routes added) and run in a network namespace of
their own that dies with them, so the host's interfaces are never touched;
the host itself is only read (its TC filters, nft/iptables rules, sysctls).

    report.py    a check's verdict and how a report is printed
    rawbpf.py    bpf(2) without BCC: a map, and programs written as bytecode
    kernel.py    privileges, the BPF syscall, BTF, BCC and the kernel headers
    sandbox.py   probes in a throwaway network namespace (clsact, sk_assign, sk_lookup, TPROXY)
    host.py      the host as it is, read only (conflicting rules, rp_filter, forwarding)
    run.py       all of them, in order, for a config or none
"""
