"""The kernel programs, compiled by BCC, and typed access to their maps.

The ctypes of every map come from BCC, derived from the structs in
`bpf/daetui.h`; this module only moves values between them and Python.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import ipaddress
import logging
import os
import socket
import time
from array import array
from pathlib import Path
from typing import Any

from daetui.abi.constants import ABI
from daetui.abi.flowrecord import PROTO_NUMBERS, FlowKey, KernelFlow, RawFlows, ctypes_layout
from daetui.dataplane.bpflink import (
    BPF_CGROUP_INET4_CONNECT,
    BPF_CGROUP_INET6_CONNECT,
    BPF_CGROUP_INET_SOCK_CREATE,
    BPF_CGROUP_INET_SOCK_RELEASE,
    BPF_CGROUP_UDP4_RECVMSG,
    BPF_CGROUP_UDP4_SENDMSG,
    BPF_CGROUP_UDP6_RECVMSG,
    BPF_CGROUP_UDP6_SENDMSG,
    BPF_PROG_TYPE_SK_LOOKUP,
    BPF_SK_LOOKUP,
    attach_sk_lookup,
    link_create,
)
from daetui.dataplane.compilermemory import release_compiler_memory
from daetui.resources import bpf_dir
from daetui.routing.classify import Classifier, build_classifier
from daetui.routing.compile import KernelRules

log = logging.getLogger("daetui.dataplane")

PROGRAM_SOURCE = bpf_dir() / "lan.c"


def _v6(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """16 bytes as the kernel keys them: IPv4 v4-mapped."""
    if addr.version == 4:
        return b"\0" * 10 + b"\xff\xff" + addr.packed
    return addr.packed


def _word(gen: int, w: int) -> int:
    """Where a generation's word sits in domain_entry.bits (flat: see bpf/daetui.h)."""
    return gen * ABI.DOMAIN_WORDS + w


def _batch(table: Any, first: int, n: int, values: bytes) -> None:
    """Write entries first..first+n-1 of an array map from `values` (their leaves back to back), in one call."""
    if n == 0:
        return
    keys = (ct.c_uint32 * n)(*range(first, first + n))
    leaves = (table.Leaf * n).from_buffer_copy(values)
    table.items_update_batch(keys, leaves)


def monotonic_to_wall(ns: int) -> float:
    """A bpf_ktime_get_ns() timestamp as a Unix time."""
    return time.time() - (time.monotonic_ns() - ns) / 1e9


class KernelProgram:
    """lan_ingress, route_chunk, lan_egress and tproxy_lookup, loaded, with their maps."""

    def __init__(self, max_match_sets: int = ABI.MAX_MATCH_SETS, source: Path = PROGRAM_SOURCE,
                 max_flows: int = ABI.MAX_FLOWS, max_domain_ips: int = ABI.MAX_DOMAIN_IPS) -> None:
        from bcc import BPF  # Debian's python3-bpfcc; imported late so tests without it can still import us

        # Tail calls a packet may make (33): the classifier's runs, a walk of every chunk after its
        # hand-over, and route_decide must fit, or a decision would pass the packet undecided.
        if 1 + ABI.CLS_MAX_RUNS + -(-max_match_sets // ABI.ROUTE_CHUNK) + 1 > 32:
            raise ValueError(f"{max_match_sets} match sets need more tail calls than a packet may make")

        t0 = time.monotonic()
        cflags = [f"-I{source.parent}", f"-DMAX_MATCH_SETS={max_match_sets}", f"-DMAX_FLOWS={max_flows}",
                  f"-DMAX_DOMAIN_IPS={max_domain_ips}", "-Wno-unused-value",
                  "-Wno-pointer-sign", "-Wno-compare-distinct-pointer-types"]
        self.bpf = BPF(src_file=str(source).encode(), cflags=cflags)
        self.ingress = self.bpf.load_func(b"lan_ingress", BPF.SCHED_CLS)
        self.egress = self.bpf.load_func(b"lan_egress", BPF.SCHED_CLS)
        self.ingress_l3 = self.bpf.load_func(b"lan_ingress_l3", BPF.SCHED_CLS)
        self.egress_l3 = self.bpf.load_func(b"lan_egress_l3", BPF.SCHED_CLS)
        self.wan = self.bpf.load_func(b"wan_egress", BPF.SCHED_CLS)
        self.wan_l3 = self.bpf.load_func(b"wan_egress_l3", BPF.SCHED_CLS)
        self.own_in = self.bpf.load_func(b"own_ingress", BPF.SCHED_CLS)
        self._cgroup_links: list[int] = []
        self.route = self.bpf.load_func(b"route_chunk", BPF.SCHED_CLS)
        self.lookup = self.bpf.load_func(b"tproxy_lookup", BPF_PROG_TYPE_SK_LOOKUP, attach_type=BPF_SK_LOOKUP)
        self._lookup_link: int | None = None
        self._batch: tuple[Any, Any, int] | None = None
        self.classify = self.bpf.load_func(b"route_classify", BPF.SCHED_CLS)
        self.match = self.bpf.load_func(b"route_match", BPF.SCHED_CLS)
        self.decide = self.bpf.load_func(b"route_decide", BPF.SCHED_CLS)
        self.dns_answer = self.bpf.load_func(b"dns_answer", BPF.SCHED_CLS)
        progs = self.bpf[b"route_progs"]
        for index, fn in ((ABI.PROG_CHUNK, self.route), (ABI.PROG_CLASSIFY, self.classify),
                          (ABI.PROG_MATCH, self.match), (ABI.PROG_DECIDE, self.decide),
                          (ABI.PROG_DNS, self.dns_answer)):
            progs[ct.c_int(index)] = ct.c_int(fn.fd)
        self.max_match_sets = max_match_sets
        self.walk = False
        self.classifiers: dict[int, Classifier] = {}   # what each generation's cls_* maps hold
        self.max_flows = max_flows
        self.max_domain_ips = max_domain_ips
        self.relayed = self.bpf[b"relayed_tuples"]
        self.tuples = self.bpf[b"routing_tuples"]
        self._layouts: tuple[Any, ...] | None = None
        self._decode_one: tuple[float, Any] | None = None  # (rebuild after, decoder) for flow()
        self._ncpu: int | None = None  # possible CPUs (_cpus())
        self.match_sets = self.bpf[b"match_sets"]
        self.ip_sets = self.bpf[b"ip_sets"]
        self.params = self.bpf[b"params"]
        self.gen_params = self.bpf[b"gen_params"]
        self.heartbeat_map = self.bpf[b"heartbeat"]
        self._heartbeat_t = self.heartbeat_map.Leaf
        self.rule_stats_map = self.bpf[b"rule_stats"]
        self.counters_map = self.bpf[b"counters"]
        self.if_stats_map = self.bpf[b"if_stats"]
        from bcc.libbcc import lib

        self._lib = lib
        self._listeners_fd = lib.bpf_table_fd(self.bpf.module, b"listeners")
        self.load_seconds = time.monotonic() - t0
        self.loaded_at = time.time()
        log.info("kernel programs compiled and loaded in %.1fs", self.load_seconds)
        release_compiler_memory()   # nothing is compiled again: ~110 MB of RSS back

    # -- params and rules -------------------------------------------------------
    def set_params(self, tproxy_mark: int, fail_open: bool, active_gen: int, so_mark: int = 0,
                   domain_no_match: bool = False, workers: int = 0) -> None:
        p = self.params.Leaf()
        p.workers = min(workers, ABI.MAX_WORKERS)
        p.worker_seed = int.from_bytes(os.urandom(4), "little")
        p.active_gen = active_gen
        p.tproxy_mark = tproxy_mark
        p.fail_open = int(fail_open)
        p.so_mark = so_mark
        p.own_tgid = os.getpid()
        p.walk = int(self.walk)
        p.domain_no_match = int(domain_no_match)
        self.params[ct.c_int(0)] = p

    def set_domain_no_match(self, no_match: bool) -> None:
        """global.unknown_domain: a domain() function of an address with no known name is false (True), or
        the flow is handed over to have its name sniffed (False)."""
        p = self.params[ct.c_int(0)]
        p.domain_no_match = int(no_match)
        self.params[ct.c_int(0)] = p

    def set_walk(self, walk: bool) -> None:
        """Walk the rules (True) even where a generation has a classifier: the reference the classifier is
        tested against."""
        self.walk = walk
        p = self.params[ct.c_int(0)]
        p.walk = int(walk)
        self.params[ct.c_int(0)] = p

    def set_own_path(self, ifindex: int, mac: bytes) -> None:
        """daetui0, where wan_egress redirects the router's own flows for the control plane (0: none)."""
        p = self.params[ct.c_int(0)]
        p.own_ifindex = ifindex
        ct.memmove(p.own_mac, mac.ljust(6, b"\0")[:6], 6)
        self.params[ct.c_int(0)] = p

    def set_bypass_marks(self, marks: tuple[int, ...]) -> None:
        """The marks whose packets wan_egress never catches (besides so_mark_from_dae)."""
        m = self.bpf[b"bypass_marks"]
        m.clear()
        for mark in marks:
            m[ct.c_uint32(mark)] = ct.c_uint8(1)

    def attach_cgroup(self, path: str) -> None:
        """Attach the socket hooks (who owns each socket, for pname()) to the cgroup v2 at `path`.

        Through BPF links: the kernel detaches them when daetui exits, however it exits.
        """
        from bcc import BPF

        hooks = [("own_sock_create", BPF.CGROUP_SOCK, BPF_CGROUP_INET_SOCK_CREATE),
                 ("own_sock_release", BPF.CGROUP_SOCK, BPF_CGROUP_INET_SOCK_RELEASE),
                 ("own_connect4", BPF.CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_CONNECT),
                 ("own_connect6", BPF.CGROUP_SOCK_ADDR, BPF_CGROUP_INET6_CONNECT),
                 ("own_sendmsg4", BPF.CGROUP_SOCK_ADDR, BPF_CGROUP_UDP4_SENDMSG),
                 ("own_sendmsg6", BPF.CGROUP_SOCK_ADDR, BPF_CGROUP_UDP6_SENDMSG),
                 ("own_recvmsg4", BPF.CGROUP_SOCK_ADDR, BPF_CGROUP_UDP4_RECVMSG),
                 ("own_recvmsg6", BPF.CGROUP_SOCK_ADDR, BPF_CGROUP_UDP6_RECVMSG)]
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for name, prog_type, attach_type in hooks:
                fn = self.bpf.load_func(name.encode(), prog_type, attach_type=attach_type)
                self._cgroup_links.append(link_create(fn.fd, fd, attach_type))
        except BaseException:
            self.detach_cgroup()
            raise
        finally:
            os.close(fd)

    def detach_cgroup(self) -> None:
        for link in self._cgroup_links:
            os.close(link)
        self._cgroup_links.clear()

    def beat(self, timeout: float) -> None:
        """The control plane is alive now; the kernel treats it as stalled `timeout` seconds after the last beat."""
        hb = self._heartbeat_t()
        hb.beat_ns = time.monotonic_ns()  # CLOCK_MONOTONIC: bpf_ktime_get_ns()'s clock
        hb.timeout_ns = int(timeout * 1e9)
        self.heartbeat_map[ct.c_int(0)] = hb

    def last_beat(self) -> tuple[int, int]:
        """(beat_ns, timeout_ns) as the kernel holds them."""
        hb = self.heartbeat_map[ct.c_int(0)]
        return int(hb.beat_ns), int(hb.timeout_ns)

    @property
    def active_generation(self) -> int:
        return int(self.params[ct.c_int(0)].active_gen) & 1

    def write_inactive(self, rules: KernelRules, initial: bool = False) -> int:
        """Write rules into the generation packets do not see (0 for the first rules), its counters
        zeroed; returns it, for `activate` to make it the one packets see."""
        gen = 0 if initial else 1 - self.active_generation
        self.clear_rule_stats(gen)
        self.write_generation(gen, rules)
        return gen

    def write_generation(self, gen: int, rules: KernelRules) -> None:
        """Write rules into the inactive generation `gen` (packets do not see it yet)."""
        base = gen * self.max_match_sets
        leaf_t = self.match_sets.Leaf
        for i, m in enumerate(rules.match_sets):
            leaf = leaf_t()
            for name in ("type", "negate", "flags", "outbound", "rule_index", "next", "func_end", "port_lo",
                         "port_hi", "mask", "mark", "must", "dscp", "ifindex", "domain_bit"):
                setattr(leaf, name, getattr(m, name))
            leaf.ip_set = self._global_set_id(gen, m.ip_set) if m.ip_set else 0
            for j, b in enumerate(m.mac):
                leaf.mac[j] = b
            if m.pname:  # a char array: its attribute is a copy, so written in place
                ct.memmove(ct.addressof(leaf) + leaf_t.pname.offset, m.pname, len(m.pname))
            self.match_sets[ct.c_int(base + i)] = leaf
        # Old entries of this generation's ip sets go first: ids are per generation.
        self.clear_ip_sets(gen)
        key_t = self.ip_sets.Key
        one = ct.c_uint8(1)
        for set_id, nets in rules.ip_sets.items():
            for net in nets:
                k = key_t()
                v6 = net.version == 6
                k.set_id = (self._global_set_id(gen, set_id) << 1) | int(v6)
                k.prefixlen = 32 + (net.prefixlen if v6 else 96 + net.prefixlen)
                raw = _v6(net.network_address)
                for j in range(16):
                    k.addr[j] = raw[j]
                self.ip_sets[k] = one
        self.write_classifier(gen, build_classifier(rules))
        gp = self.gen_params.Leaf()
        gp.n_match_sets = len(rules.match_sets)
        gp.fallback_outbound = rules.fallback_outbound
        gp.fallback_mark = rules.fallback_mark
        self.gen_params[ct.c_int(gen)] = gp

    def write_classifier(self, gen: int, cls: Classifier) -> None:
        """Write a generation's classifier (`gen` is not active); one that is not ok leaves its rules walked."""
        gens = self.bpf[b"cls_gens"]
        g = gens.Leaf()   # ok = 0 first: a half-written classifier is never used
        gens[ct.c_int(gen)] = g
        self.classifiers[gen] = Classifier(ok=False, why="not written yet")
        self._clear_classifier(gen)
        if not cls.ok:
            self.classifiers[gen] = cls
            return
        try:
            self._write_tables(gen, cls, g)
        except Exception as e:   # a map full or refused: the generation is walked, which decides the same
            log.warning("rule classifier of generation %d not written (%s): its rules are walked", gen, e)
            self.classifiers[gen] = Classifier(ok=False, why=f"not written: {e}")
            return
        g.ok = 1
        gens[ct.c_int(gen)] = g
        self.classifiers[gen] = cls

    def _write_tables(self, gen: int, cls: Classifier, g: Any) -> None:
        """The classifier's tables for `gen`, and its cls_gens entry's fields but ok."""
        per_block = ABI.CLS_WORDS
        words = array("Q", cls.words)
        words.extend([0] * (-len(words) % per_block))
        n_blocks = len(words) // per_block
        _batch(self.bpf[b"cls_blocks"], gen * ABI.CLS_BLOCKS, n_blocks, words.tobytes())
        rules_map = self.bpf[b"cls_rules"]
        leaves = (rules_map.Leaf * len(cls.rules))()
        for leaf, r in zip(leaves, cls.rules, strict=True):
            leaf.rule_index, leaf.outbound, leaf.mark, leaf.must = r.rule_index, r.outbound, r.mark, r.must
            leaf.flags = ABI.CLS_RULE_MUST_RULES if r.must_rules else 0
            leaf.dom_first, leaf.dom_count, leaf.dom_negate = r.dom_first, r.dom_count, r.dom_negate
            leaf.ms_first = r.ms_first
        _batch(rules_map, gen * ABI.MAX_RULES, len(cls.rules), bytes(leaves))
        for side, ports in enumerate(cls.ports):
            _batch(self.bpf[b"cls_ports"], (gen * 2 + side) * ABI.CLS_PORTS, ABI.CLS_PORTS, ports.tobytes())
        _batch(self.bpf[b"cls_misc"], gen * ABI.CLS_MISC, ABI.CLS_MISC, cls.misc.tobytes())
        _batch(self.bpf[b"cls_ifaces"], gen * len(cls.ifaces), len(cls.ifaces), cls.ifaces.tobytes())
        ip = self.bpf[b"cls_ip"]
        for side, net, value in cls.ip:
            k = ip.Key()
            v6 = net.version == 6
            k.set_id = gen << 2 | side << 1 | int(v6)
            k.prefixlen = 32 + (net.prefixlen if v6 else 96 + net.prefixlen)
            ct.memmove(ct.addressof(k) + type(k).addr.offset, _v6(net.network_address), 16)
            ip[k] = ct.c_uint32(value)
        keyed = self.bpf[b"cls_keyed"]
        key_t = keyed.Key
        for kind, ifindex, name, value in cls.keyed:
            k = key_t()
            k.gen, k.kind, k.ifindex = gen, kind, ifindex
            ct.memmove(ct.addressof(k) + key_t.name.offset, name, min(len(name), ABI.PNAME_LEN))
            keyed[k] = ct.c_uint32(value)
        g.n_words = cls.n_words
        g.has_wan, g.has_pname, g.used = int(cls.has_wan), int(cls.has_pname), cls.used
        for i, d in enumerate(cls.defaults):
            g.dflt[i] = d
        g.n_rules = cls.n_rules

    def _clear_classifier(self, gen: int) -> None:
        """Remove a generation's prefixes and keyed classes (the arrays are written whole)."""
        ip = self.bpf[b"cls_ip"]
        for k in [k for k in ip if (k.set_id >> 2) == gen]:
            del ip[k]
        keyed = self.bpf[b"cls_keyed"]
        for k in [k for k in keyed if k.gen == gen]:
            del keyed[k]

    @staticmethod
    def _global_set_id(gen: int, set_id: int) -> int:
        """Set ids are per generation; the top bit of the trie key says which."""
        return (gen << 30) | set_id

    def clear_ip_sets(self, gen: int) -> None:
        doomed = [k for k in self.ip_sets if (k.set_id >> 31) == gen]
        for k in doomed:
            del self.ip_sets[k]

    def clear_rule_stats(self, gen: int) -> None:
        """Zero a generation's rule counters before it is used again."""
        stride = ABI.MAX_RULES + 1
        zero = self.rule_stats_map.Leaf()
        ncpu = len(self.rule_stats_map[ct.c_int(0)])
        leaves = (self.rule_stats_map.Leaf * ncpu)(*([zero] * ncpu))
        for ri in range(stride):
            self.rule_stats_map[ct.c_int(gen * stride + ri)] = leaves

    # -- names of addresses (domain_routing) ----------------------------------------------
    def _domain_key(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[Any, Any]:
        dr = self.bpf[b"domain_routing"]
        k = dr.Key()
        ct.memmove(k.addr, _v6(addr), 16)
        return dr, k

    @staticmethod
    def _unpack_bits(v: Any) -> dict[int, int]:
        return {gen: sum(int(v.bits[_word(gen, w)]) << (64 * w) for w in range(ABI.DOMAIN_WORDS))
                for gen in range(ABI.GENERATIONS)}

    def set_domain_bits(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address, bits: dict[int, int]) -> None:
        """What `addr`'s name matched, per generation: bit i = domain function i of that generation."""
        dr, k = self._domain_key(addr)
        v = dr.Leaf()
        for gen, value in bits.items():
            for w in range(ABI.DOMAIN_WORDS):
                v.bits[_word(gen, w)] = (value >> (64 * w)) & 0xFFFFFFFFFFFFFFFF
        dr[k] = v

    def domain_bits(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> dict[int, int] | None:
        """The bits the kernel holds for `addr`, or None when it knows no name for it."""
        dr, k = self._domain_key(addr)
        try:
            return self._unpack_bits(dr[k])
        except KeyError:
            return None

    def forget_domain(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        dr, k = self._domain_key(addr)
        try:
            del dr[k]
        except KeyError:
            pass

    def domain_entries(self) -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, dict[int, int]]]:
        """Every address with a known name and its bits per generation."""
        out = []
        for k, v in self.bpf[b"domain_routing"].items():
            a = ipaddress.IPv6Address(bytes(k.addr))
            addr = a.ipv4_mapped or a
            out.append((addr, self._unpack_bits(v)))
        return out

    def set_group_health(self, gen: int, index: int, value: int) -> None:
        """group_health[gen][index]: GROUP_DEAD4/6 bits and the GROUP_DEAD_* action."""
        self.bpf[b"group_health"][ct.c_int(gen * ABI.MAX_GROUPS + index)] = ct.c_uint8(value)

    def activate(self, gen: int) -> None:
        """Flip to generation `gen`: one write, so a packet sees one whole generation."""
        p = self.params[ct.c_int(0)]
        p.active_gen = gen
        self.params[ct.c_int(0)] = p

    # -- cached DNS answered in the kernel (dns_answer) ------------------------------
    def set_dns_conf(self, enabled: bool, epoch: int) -> None:
        """dns.kernel_answers on or off, and the epoch an entry must carry to be used."""
        c = self.bpf[b"dns_conf"].Leaf()
        c.enabled = int(enabled)
        c.epoch = epoch & 0xFFFFFFFF
        self.bpf[b"dns_conf"][ct.c_int(0)] = c

    def _dns_key(self, qname: bytes, qtype: int, qclass: int) -> Any:
        k = self.bpf[b"dns_answers"].Key()
        ct.memmove(k.name, qname, len(qname))
        k.qtype = qtype
        k.qclass = qclass
        return k

    def put_dns_answer(self, qname: bytes, qtype: int, qclass: int, *, expires_ns: int, stored_ns: int, epoch: int,
                       flags: int, counts: tuple[int, int, int], rest: bytes, ttl_offsets: list[int],
                       ttls: list[int]) -> None:
        """dns_answers[(qname, qtype, qclass)]: `qname` lower-cased wire form, `rest` the sections after the
        question (TTLs as of `stored_ns`), `ttl_offsets` relative to `rest`. The caller checked the bounds."""
        table = self.bpf[b"dns_answers"]
        v = table.Leaf()
        v.expires_ns, v.stored_ns, v.epoch, v.flags = expires_ns, stored_ns, epoch & 0xFFFFFFFF, flags
        v.ancount, v.nscount, v.arcount = counts
        v.rest_len, v.n_ttls = len(rest), len(ttls)
        ct.memmove(v.rest, rest, len(rest))
        for i, (off, ttl) in enumerate(zip(ttl_offsets, ttls, strict=True)):
            v.ttl_off[i], v.ttls[i] = off, ttl
        table[self._dns_key(qname, qtype, qclass)] = v

    def forget_dns_answer(self, qname: bytes, qtype: int, qclass: int) -> None:
        try:
            del self.bpf[b"dns_answers"][self._dns_key(qname, qtype, qclass)]
        except KeyError:
            pass

    def clear_dns_answers(self) -> None:
        self.bpf[b"dns_answers"].clear()

    def dns_answer_count(self) -> int:
        return sum(1 for _ in self.bpf[b"dns_answers"])

    def dns_stats(self) -> dict[str, int]:
        """dns_answer's counters by name (summed over CPUs): ANSWERED, MISS, EDNS, ..."""
        names = {v: k for k, v in ABI.prefixed("DNS_ST_").items()}
        table = self.bpf[b"dns_stats"]
        return {names.get(i, str(i)): int(sum(table[ct.c_int(i)])) for i in range(ABI.N_DNS_STATS)}

    # -- listeners ---------------------------------------------------------------
    def set_listener(self, slot: int, sock: socket.socket) -> None:
        """Put a listener socket into the sockmap the programs hand flows to."""
        k, v = ct.c_uint32(slot), ct.c_uint64(sock.fileno())
        if self._lib.bpf_update_elem(self._listeners_fd, ct.byref(k), ct.byref(v), 0) != 0:
            err = ct.get_errno()
            raise OSError(err, f"sockmap update (slot {slot}): {os.strerror(err)}")

    def clear_listener(self, slot: int) -> None:
        k = ct.c_uint32(slot)
        self._lib.bpf_delete_elem(self._listeners_fd, ct.byref(k))

    def set_own_process(self, pid: int, own: bool) -> None:
        """A relay worker's process (`own`), or one that ended: its sockets are daetui's own, never caught."""
        table, k = self.bpf[b"own_tgids"], ct.c_uint32(pid)
        if own:
            table[k] = ct.c_uint8(1)
        else:
            with contextlib.suppress(KeyError):
                del table[k]

    # -- flows -------------------------------------------------------------------
    def _key(self, key: FlowKey) -> Any:
        k = self.tuples.Key()
        kt = type(k)  # the addresses copied in whole: 32 item assignments were a visible cost per flow
        ct.memmove(ct.addressof(k) + kt.sip.offset, _v6(key.src), 16)
        ct.memmove(ct.addressof(k) + kt.dip.offset, _v6(key.dst), 16)
        k.sport = key.sport
        k.dport = key.dport
        k.l4proto = PROTO_NUMBERS[key.proto]
        return k

    def _raw(self, keys: bytes, values: bytes) -> RawFlows:
        if self._layouts is None:  # the same for the program's life: worked out once
            self._layouts = (*ctypes_layout(self.tuples.Key), *ctypes_layout(self.tuples.Leaf))
        return RawFlows(*self._layouts, keys, values)

    def flow(self, key: FlowKey) -> KernelFlow | None:
        """The kernel's decision for one flow, if it has one."""
        k = self._key(key)
        try:
            v = self.tuples[k]
        except KeyError:
            return None
        now = time.monotonic()
        if self._decode_one is None or now > self._decode_one[0]:
            # Built once a minute, not per flow (the profile's biggest cost of a routing lookup);
            # the minute is for the wall clock's offset it carries (NTP moves it after boot).
            self._decode_one = (now + 60.0, self._raw(b"", b"").decoder())
        r = self._decode_one[1](bytes(k), bytes(v))
        return KernelFlow(key=key, outbound=r.outbound, rule_index=r.rule_index, mac=r.mac, ifindex=r.ifindex,
                          first_seen=r.first_seen, last_seen=r.last_seen, packets=r.packets, bytes=r.bytes,
                          rx_packets=r.rx_packets, rx_bytes=r.rx_bytes, flags=r.flags, generation=r.generation,
                          mark=r.mark, pid=r.pid, process=r.process)

    def raw_flows(self) -> RawFlows:
        """Every routing_tuples entry, as raw bytes, in as few syscalls as the kernel allows."""
        key_t, leaf_t = self.tuples.Key, self.tuples.Leaf
        if self._batch is None:
            n = self.tuples.max_entries
            self._batch = ((key_t * n)(), (leaf_t * n)(), n)
        keys, values, cap = self._batch
        ksz, vsz = ct.sizeof(key_t), ct.sizeof(leaf_t)
        token, cnt = ct.c_uint32(0), ct.c_uint32(0)
        total = 0
        while total < cap:
            cnt.value = cap - total
            res = self._lib.bpf_lookup_batch(self.tuples.map_fd, ct.byref(token) if total else None,
                                             ct.byref(token), ct.byref(keys, ksz * total),
                                             ct.byref(values, vsz * total), ct.byref(cnt))
            err = ct.get_errno()
            total += cnt.value
            if res != 0:
                if err != errno.ENOENT:
                    raise OSError(err, f"routing_tuples batch lookup: {os.strerror(err)}")
                break  # ENOENT: the whole map has been read
            if cnt.value == 0:
                break
        return self._raw(ct.string_at(keys, ksz * total), ct.string_at(values, vsz * total))

    def flows(self) -> list[KernelFlow]:
        """Every flow the kernel has decided."""
        return self.raw_flows().decode()

    def forget_flow(self, key: FlowKey) -> None:
        try:
            del self.tuples[self._key(key)]
        except KeyError:
            pass

    # -- relayed_tuples: the relayed TCP flows no churn evicts ------------------------
    def relayed_key(self, key: FlowKey) -> bytes:
        """`key` as relayed_tuples keys it (the bytes of struct tuple_key)."""
        return bytes(self._key(key))

    def relayed_entries(self) -> list[tuple[bytes, int]]:
        """Every remembered relayed TCP flow: (its key's bytes, when it was handed over, monotonic ns)."""
        return [(bytes(k), int(v.value)) for k, v in self.relayed.items()]

    def forget_relayed(self, keys: list[bytes]) -> int:
        """Remove these relayed_tuples entries; how many were there."""
        key_t, n = self.relayed.Key, 0
        for raw in keys:
            try:
                del self.relayed[key_t.from_buffer_copy(raw)]
                n += 1
            except KeyError:
                pass
        return n

    # -- counters ------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """Global counters by name (summed over CPUs): PACKETS, FRAGMENT, ..."""
        names = {v: k for k, v in ABI.prefixed("CNT_").items()}
        out = {}
        for i in range(ABI.N_COUNTERS):
            out[names.get(i, str(i))] = int(sum(self.counters_map[ct.c_int(i)]))
        return out

    def rule_hits(self, gen: int, n_rules: int) -> dict[int | None, tuple[int, float | None]]:
        """Hits and last hit time of each rule index (None: the fallback) in a generation.

        The rules' entries are read in one batch: one lookup each took 16 ms for 4000 rules, on
        the control plane's loop, every time the console asked for a snapshot.
        """
        stride = ABI.MAX_RULES + 1
        n = min(n_rules, ABI.MAX_RULES)
        stats = self._rule_stats_batch(gen * stride, n) if n else []
        if len(stats) != n:  # no batch lookups for arrays in this kernel: one entry at a time
            stats = [self._rule_stat(gen * stride + ri) for ri in range(n)]
        stats.append(self._rule_stat(gen * stride + ABI.MAX_RULES))
        out: dict[int | None, tuple[int, float | None]] = {}
        for ri, (hits, last) in enumerate(stats):
            out[None if ri == n else ri] = (hits, monotonic_to_wall(last) if last else None)
        return out

    def _rule_stat(self, index: int) -> tuple[int, int]:
        per_cpu = self.rule_stats_map[ct.c_int(index)]
        return sum(int(x.hits) for x in per_cpu), max(int(x.last_hit_ns) for x in per_cpu)

    def _rule_stats_batch(self, start: int, n: int) -> list[tuple[int, int]]:
        """(hits, last hit ns) of entries start..start+n-1, summed over CPUs; [] when the kernel refuses."""
        words = self._percpu_batch(self.rule_stats_map, start, n)
        if words is None:
            return []
        per_entry = 2 * self._cpus()  # two u64 per CPU per entry: hits, last_hit_ns
        return [(sum(words[i:i + per_entry:2]), max(words[i + 1:i + per_entry:2]))
                for i in range(0, n * per_entry, per_entry)]

    def _cpus(self) -> int:
        """Possible CPUs: a per-CPU map's value comes in this many."""
        if self._ncpu is None:
            self._ncpu = len(self.rule_stats_map[ct.c_int(0)])
        return self._ncpu

    def _percpu_batch(self, table: Any, start: int, n: int) -> memoryview | None:
        """Entries start..start+n-1 of a per-CPU array of u64 fields, as its u64 words (entry by entry, CPU by
        CPU, field by field), in one syscall; None when the kernel refuses."""
        keys, values = (ct.c_uint32 * n)(), (table.Leaf * (n * self._cpus()))()
        # A batch starts after the key it is given: the one before `start` (none for 0).
        before, token, cnt = ct.c_uint32(start - 1), ct.c_uint32(0), ct.c_uint32(n)
        res = self._lib.bpf_lookup_batch(table.map_fd, ct.byref(before) if start else None,
                                         ct.byref(token), keys, values, ct.byref(cnt))
        if (res != 0 and ct.get_errno() != errno.ENOENT) or cnt.value != n:
            return None
        return memoryview(values).cast("B").cast("Q")

    def interface_stats(self) -> dict[int, dict[str, int]]:
        """Packets and bytes per interface index, summed over CPUs (interfaces with none left out)."""
        fields = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes")
        out = {}
        n = ABI.MAX_INTERFACES
        words = self._percpu_batch(self.if_stats_map, 0, n)
        if words is None:   # no batch lookups for arrays in this kernel: one entry at a time
            rows = [[sum(int(getattr(x, f)) for x in self.if_stats_map[ct.c_int(i)]) for f in fields]
                    for i in range(n)]
        else:
            per_entry, k = len(fields) * self._cpus(), len(fields)
            rows = [[sum(words[i + j:i + per_entry:k]) for j in range(k)] for i in range(0, n * per_entry, per_entry)]
        for ifindex, row in enumerate(rows):
            if any(row):
                out[ifindex] = dict(zip(fields, row, strict=True))
        for key, per_cpu in self.bpf[b"if_stats_far"].items():
            out[int(key.value)] = {f: sum(int(getattr(x, f)) for x in per_cpu) for f in fields}
        return out

    def attach_lookup(self) -> None:
        """Attach tproxy_lookup to this network namespace (detached when we exit)."""
        if self._lookup_link is None:
            self._lookup_link = attach_sk_lookup(self.lookup.fd)

    def close(self) -> None:
        self.detach_cgroup()
        if self._lookup_link is not None:
            os.close(self._lookup_link)
            self._lookup_link = None
        self.bpf.cleanup()
