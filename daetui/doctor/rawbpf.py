"""bpf(2) without BCC: a one-entry map, and the few-instruction programs that probe the kernel's helpers.

These need no kernel headers and no compiler, so they tell what the kernel
offers apart from what BCC needs to build daetui's own programs. The
verifier's log comes back with a refusal: it names a missing helper.
"""

from __future__ import annotations

import ctypes as ct
import os
import struct

from daetui.dataplane.bpflink import BPF_PROG_TYPE_SK_LOOKUP, BPF_SK_LOOKUP, bpf_syscall

BPF_MAP_CREATE = 0
BPF_PROG_LOAD = 5
BPF_MAP_TYPE_ARRAY = 2
BPF_PROG_TYPE_SCHED_CLS = 3

# Helper ids (enum bpf_func_id in <linux/bpf.h>).
SKC_LOOKUP_TCP = 99
SK_RELEASE = 86
SK_ASSIGN = 124

# The opcodes used below (<linux/bpf_common.h>, <linux/bpf.h>).
_MOV64_REG, _MOV64_IMM, _ADD64_IMM = 0xBF, 0xB7, 0x07
_ST_DW, _ST_W = 0x7A, 0x62
_JEQ_IMM, _CALL, _EXIT = 0x15, 0x85, 0x95


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One struct bpf_insn: opcode, dst and src registers in one byte, a 16-bit offset, a 32-bit immediate."""
    return struct.pack("<BBhi", code, dst | (src << 4), off, imm)


def sk_assign_program() -> bytes:
    """A TC program doing what daetui's lan_ingress does to a packet: look its socket up and assign it.

        r6 = skb; tuple = {0}; sk = bpf_skc_lookup_tcp(skb, &tuple, 12, CURRENT_NETNS, 0)
        if (sk) { bpf_sk_assign(skb, sk, 0); bpf_sk_release(sk); }
        return TC_ACT_OK
    """
    return b"".join([
        insn(_MOV64_REG, 6, 1),
        insn(_ST_DW, 10, off=-16), insn(_ST_W, 10, off=-8),     # a zeroed IPv4 bpf_sock_tuple (12 bytes)
        insn(_MOV64_REG, 2, 10), insn(_ADD64_IMM, 2, imm=-16),
        insn(_MOV64_IMM, 3, imm=12),
        insn(_MOV64_IMM, 4, imm=-1),                            # BPF_F_CURRENT_NETNS
        insn(_MOV64_IMM, 5, imm=0),
        insn(_CALL, imm=SKC_LOOKUP_TCP),
        insn(_JEQ_IMM, 0, off=7, imm=0),                        # no socket: to `r0 = 0`
        insn(_MOV64_REG, 7, 0),
        insn(_MOV64_REG, 1, 6), insn(_MOV64_REG, 2, 7), insn(_MOV64_IMM, 3, imm=0),
        insn(_CALL, imm=SK_ASSIGN),
        insn(_MOV64_REG, 1, 7),
        insn(_CALL, imm=SK_RELEASE),
        insn(_MOV64_IMM, 0, imm=0),
        insn(_EXIT),
    ])


def pass_program() -> bytes:
    """`return 1` (SK_PASS): enough to show the kernel has the sk_lookup program type and its link."""
    return insn(_MOV64_IMM, 0, imm=1) + insn(_EXIT)


class _MapCreateAttr(ct.Structure):
    _fields_ = [("map_type", ct.c_uint32), ("key_size", ct.c_uint32), ("value_size", ct.c_uint32),
                ("max_entries", ct.c_uint32), ("map_flags", ct.c_uint32), ("_zero", ct.c_uint8 * 60)]


class _ProgLoadAttr(ct.Structure):
    # The BPF_PROG_LOAD member of union bpf_attr up to expected_attach_type; the rest must be zero.
    _fields_ = [("prog_type", ct.c_uint32), ("insn_cnt", ct.c_uint32), ("insns", ct.c_uint64),
                ("license", ct.c_uint64), ("log_level", ct.c_uint32), ("log_size", ct.c_uint32),
                ("log_buf", ct.c_uint64), ("kern_version", ct.c_uint32), ("prog_flags", ct.c_uint32),
                ("prog_name", ct.c_char * 16), ("prog_ifindex", ct.c_uint32),
                ("expected_attach_type", ct.c_uint32), ("_zero", ct.c_uint8 * 64)]


class LoadError(OSError):
    """The kernel refused a program; `log` is the verifier's last words."""

    def __init__(self, err: int, log: str) -> None:
        super().__init__(err, os.strerror(err))
        self.log = log


def create_array_map() -> int:
    """A one-entry array map (the simplest map there is); returns its fd."""
    attr = _MapCreateAttr(map_type=BPF_MAP_TYPE_ARRAY, key_size=4, value_size=4, max_entries=1)
    return bpf_syscall(BPF_MAP_CREATE, attr, "BPF_MAP_CREATE")


def load_program(prog_type: int, code: bytes, name: str, expected_attach_type: int = 0) -> int:
    """Load bytecode; returns the program's fd, or LoadError carrying the verifier's log."""
    insns = ct.create_string_buffer(code, len(code))
    license_ = ct.create_string_buffer(b"GPL")
    log = ct.create_string_buffer(65536)
    attr = _ProgLoadAttr(prog_type=prog_type, insn_cnt=len(code) // 8, insns=ct.addressof(insns),
                         license=ct.addressof(license_), log_level=1, log_size=len(log), log_buf=ct.addressof(log),
                         prog_name=name.encode()[:15], expected_attach_type=expected_attach_type)
    try:
        return bpf_syscall(BPF_PROG_LOAD, attr, "BPF_PROG_LOAD")
    except OSError as e:
        # The verifier ends with statistics; the reason is the line before them.
        lines = [ln for ln in log.value.decode(errors="replace").splitlines()
                 if ln.strip() and not ln.startswith(("processed ", "verification time"))]
        raise LoadError(e.errno or 0, lines[-1] if lines else "") from None


def load_sk_assign_program() -> int:
    """The TC program above, loaded."""
    return load_program(BPF_PROG_TYPE_SCHED_CLS, sk_assign_program(), "dt_doctor_tc")


def load_sk_lookup_program() -> int:
    """An sk_lookup program, loaded for the sk_lookup attach type."""
    return load_program(BPF_PROG_TYPE_SK_LOOKUP, pass_program(), "dt_doctor_skl", BPF_SK_LOOKUP)
