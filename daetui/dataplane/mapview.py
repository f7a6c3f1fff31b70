"""Every eBPF map of the programs, described and decoded for people.

`maps_info()` lists each map with its type, capacity and fill;
`entries(name)` decodes one map's entries to text rows. Used by the Maps pane
(through the control plane's API); the layouts come from BCC's ctypes.
"""

from __future__ import annotations

import ctypes as ct
import dataclasses
import ipaddress
import time
from collections.abc import Callable
from typing import Any

from daetui.abi.constants import ABI
from daetui.abi.flowrecord import comm_text
from daetui.dataplane.mapinfo import MapEntries, MapInfo
from daetui.dataplane.program import KernelProgram
from daetui.routing.compile import DomainFunction, domain_functions
from daetui.routing.ruleset import RuleSet

MAP_TYPES = {1: "hash", 2: "array", 3: "prog_array", 5: "percpu_hash", 6: "percpu_array", 9: "lru_hash",
             11: "lpm_trie", 15: "sockmap"}

PURPOSE = {
    "routing_tuples": "each flow's decision and counters (LRU)",
    "match_sets": "the rules, laid out per generation",
    "ip_sets": "IP prefixes of dip/sip functions (LPM trie)",
    "domain_routing": "per address named by DNS: which domain() functions its names match, per generation "
                      "(kept within its size by the control plane, oldest out first)",
    "relayed_tuples": "TCP flows handed to the control plane, kept until their relay ends: a mid-stream packet "
                      "the LRU forgot goes to its socket or is dropped, never out raw",
    "heartbeat": "the control plane's last beat and the age at which it counts as stalled",
    "params": "active generation, tproxy mark, fail-open",
    "gen_params": "per generation: match sets in use, fallback",
    "rule_stats": "per rule and generation: hits and last hit (per CPU)",
    "counters": "global packet counters (per CPU)",
    "if_stats": "per interface below index 256: packets and bytes (per CPU)",
    "if_stats_far": "the same for interfaces of index 256 and up (per CPU)",
    "scratch": "per-CPU scratch of one packet's routing",
    "listeners": "the transparent listeners flows are handed to",
    "route_progs": "the programs of a new flow's decision (tail calls): walk, classify, match, decide",
    "cls_gens": "per generation: whether the rule classifier decides (else the rules are walked), bitmap size",
    "cls_blocks": "the classifier's rule bitmaps (bit r: rule position r), 64 words a block",
    "cls_rules": "per generation and rule position: outbound, rule, mark, must_rules, domain() bits",
    "cls_ports": "per generation: the class of every destination and source port",
    "cls_misc": "per generation: the class of each l4proto x ipversion x dscp",
    "cls_ifaces": "per generation: the class of each (LAN interface, WAN interface) pair",
    "cls_ip": "per generation: the class of each dip/sip prefix (LPM trie)",
    "cls_keyed": "per generation: the class of each MAC and process name, the index of each interface",
}

MATCH_NAMES = {v: k.lower() for k, v in ABI.prefixed("MATCH_").items()}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _mac(b: Any) -> str:
    return ":".join(f"{x:02x}" for x in bytes(b))


def _ip16(raw: bytes) -> str:
    a = ipaddress.IPv6Address(raw)
    return str(a.ipv4_mapped or a)


def _ep(addr: object, port: int) -> str:
    text = str(addr)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


class MapView:
    """Descriptions and decoded entries of a loaded KernelProgram's maps."""

    def __init__(self, program: KernelProgram, ruleset: Callable[[int], RuleSet],
                 listeners: Callable[[], dict[int, str]], ifnames: Callable[[], dict[int, str]],
                 names: Callable[[IPAddress], list[str]] | None = None) -> None:
        self.p = program
        self.ruleset = ruleset          # generation -> its rules
        self.listeners = listeners      # sockmap slot -> what sits there
        self.ifnames = ifnames
        self.names = names              # address -> the names DNS gave it (the control plane's NameBook)

    def _names(self) -> list[str]:
        return list(PURPOSE)

    def maps_info(self) -> list[MapInfo]:
        lib, mod = self.p._lib, self.p.bpf.module
        # BCC's libbcc.py leaves these two without a signature; without one
        # ctypes would truncate the module pointer.
        for fn in (lib.bpf_table_key_size_id, lib.bpf_table_leaf_size_id):
            fn.restype = ct.c_size_t
            fn.argtypes = [ct.c_void_p, ct.c_ulonglong]
        out = []
        for name in self._names():
            tid = lib.bpf_table_id(mod, name.encode())
            ttype = lib.bpf_table_type_id(mod, tid)
            out.append(MapInfo(
                name=name, type=MAP_TYPES.get(ttype, str(ttype)),
                max_entries=int(lib.bpf_table_max_entries_id(mod, tid)),
                key_size=int(lib.bpf_table_key_size_id(mod, tid)),
                value_size=int(lib.bpf_table_leaf_size_id(mod, tid)),
                entries=self._fill(name), purpose=PURPOSE[name]))
        return out

    def _fill(self, name: str) -> int:
        p = self.p
        if name == "routing_tuples":
            return p.raw_flows().count
        if name == "match_sets":
            return sum(int(p.gen_params[ct.c_int(g)].n_match_sets) for g in range(ABI.GENERATIONS))
        if name == "ip_sets":
            return sum(1 for _ in p.ip_sets)
        if name in ("domain_routing", "relayed_tuples"):
            return sum(1 for _ in p.bpf[name.encode()])
        if name == "heartbeat":
            return 1
        if name == "if_stats":
            return sum(1 for i in p.interface_stats() if i < ABI.MAX_INTERFACES)
        if name == "if_stats_far":
            return sum(1 for _ in p.bpf[b"if_stats_far"])
        if name == "listeners":
            return len(self.listeners())
        if name == "route_progs":
            return ABI.N_ROUTE_PROGS
        if name in ("cls_ip", "cls_keyed"):
            return sum(1 for _ in p.bpf[name.encode()])
        if name.startswith("cls_"):
            used = [c for c in p.classifiers.values() if c.ok]
            return {"cls_gens": len(used), "cls_blocks": sum(-(-len(c.words) // ABI.CLS_WORDS) for c in used),
                    "cls_rules": sum(len(c.rules) for c in used), "cls_ports": 2 * ABI.CLS_PORTS * len(used),
                    "cls_misc": ABI.CLS_MISC * len(used),
                    "cls_ifaces": ABI.CLS_IFACES * ABI.CLS_IFACES * len(used)}.get(name, -1)
        if name in ("params",):
            return 1
        if name == "gen_params":
            return ABI.GENERATIONS
        if name == "counters":
            return ABI.N_COUNTERS
        if name == "rule_stats":
            return sum(1 for g in range(ABI.GENERATIONS) for (h, _) in p.rule_hits(g, len(self.ruleset(g).entries))
                       .values() if h)
        return -1

    # -- entries ----------------------------------------------------------------------
    def entries(self, name: str, search: str = "", limit: int = 5000) -> MapEntries:
        decoder = getattr(self, f"_rows_{name}", None)
        if decoder is None:
            return MapEntries(name, ("note",), (("this map holds no entries to decode",),), 0)
        columns, rows = decoder()
        total = len(rows)
        if search:
            s = search.lower()
            rows = [r for r in rows if any(s in c.lower() for c in r)]
        return MapEntries(name, tuple(columns), tuple(tuple(r) for r in rows[:limit]), total)

    def _outbound(self, gen: int, ob: int) -> str:
        return self.ruleset(gen).outbound_name(ob)

    def _rows_routing_tuples(self) -> tuple[list[str], list[list[str]]]:
        cols = ["proto", "source", "destination", "outbound", "rule", "mac", "if", "pkts", "bytes", "rx pkts",
                "rx bytes", "flags", "gen", "last seen"]
        ifn = self.ifnames()
        rows = []
        now = time.time()
        for f in self.p.flows():
            k = f.key
            flags = "|".join(n.lower() for n, v in ABI.prefixed("FLOW_").items() if f.flags & v) or "-"
            rule = "fallback" if f.rule_index is None else f"#{f.rule_index + 1}"
            rows.append([k.proto, _ep(k.src, k.sport), _ep(k.dst, k.dport), self._outbound(f.generation, f.outbound),
                         rule, _mac(f.mac), ifn.get(f.ifindex, str(f.ifindex)), str(f.packets), str(f.bytes),
                         str(f.rx_packets), str(f.rx_bytes), flags, str(f.generation), f"{now - f.last_seen:.1f}s ago"])
        return cols, rows

    def _rows_match_sets(self) -> tuple[list[str], list[list[str]]]:
        cols = ["gen", "index", "rule", "type", "value", "not", "ends", "next", "outbound"]
        rows = []
        ifn = self.ifnames()
        for g in range(ABI.GENERATIONS):
            n = int(self.p.gen_params[ct.c_int(g)].n_match_sets)
            for i in range(n):
                m = self.p.match_sets[ct.c_int(g * self.p.max_match_sets + i)]
                t = MATCH_NAMES.get(int(m.type), str(m.type))
                if t in ("dport", "sport"):
                    value = f"{m.port_lo}" if m.port_lo == m.port_hi else f"{m.port_lo}-{m.port_hi}"
                elif t in ("dip", "sip"):
                    value = f"ip set {m.ip_set & 0x3FFFFFFF}"
                elif t == "l4proto":
                    value = ",".join(x for x, b in (("tcp", ABI.L4_TCP), ("udp", ABI.L4_UDP)) if m.mask & b)
                elif t == "ipversion":
                    value = ",".join(x for x, b in (("4", ABI.IPV_4), ("6", ABI.IPV_6)) if m.mask & b)
                elif t == "mac":
                    value = _mac(m.mac)
                elif t == "dscp":
                    value = str(m.dscp)
                elif t in ("iface_lan", "iface_wan"):
                    value = ifn.get(int(m.ifindex), "(not here)" if not m.ifindex else str(m.ifindex))
                elif t == "domain":
                    value = f"domain bit {m.domain_bit}"  # set per address by DNS: see domain_routing
                elif t == "pname":
                    value = comm_text(bytes(m.pname)) + " (the router's own flows)"
                elif t == "never":
                    value = "matches nothing here"
                else:
                    value = "?"
                ends = ("func" if m.flags & ABI.MS_FUNC_END else "") + (
                    "+rule" if m.flags & ABI.MS_RULE_END else "")
                rows.append([str(g), str(i), f"#{m.rule_index + 1}", t, value, "!" if m.negate else "", ends or "-",
                             str(m.next), self._rule_end(g, m) if m.flags & ABI.MS_RULE_END else ""])
        return cols, rows

    def _rule_end(self, gen: int, m: Any) -> str:
        """The outbound a rule's last match set names, with its must flag and mark."""
        out = self._outbound(gen, int(m.outbound))
        return out + (" (must)" if m.must else "") + (f" mark {int(m.mark):#x}" if m.mark else "")

    def _rows_ip_sets(self) -> tuple[list[str], list[list[str]]]:
        rows = []
        for k in self.p.ip_sets:
            v6 = k.set_id & 1
            gid = k.set_id >> 1
            plen = k.prefixlen - 32 - (0 if v6 else 96)
            rows.append([str(gid >> 30), str(gid & 0x3FFFFFFF), f"{_ip16(bytes(k.addr))}/{plen}"])
        rows.sort(key=lambda r: (int(r[0]), int(r[1]), r[2]))
        return ["gen", "set", "prefix"], rows

    def _rows_domain_routing(self) -> tuple[list[str], list[list[str]]]:
        """Each named address with its bits of the active generation, as the domain functions they stand for."""
        active = int(self.p.params[ct.c_int(0)].active_gen)
        functions = {f.bit: f for f in domain_functions(self.ruleset(active))}
        rows = []
        for addr, per_gen in sorted(self.p.domain_entries(), key=lambda e: (e[0].version, e[0])):
            bits = per_gen.get(active, 0)
            names = ", ".join(self.names(addr)) if self.names is not None else ""
            # 0 is news too: the kernel knows the name and it matches no domain
            # function, so flows to it are decided in the kernel without one.
            matched = ", ".join(_domain_function(functions.get(b), b) for b in _bits(bits)) or "none"
            # The standby generation's bits: written before a reload flips to it.
            others = " ".join(f"g{g}:{v:#x}" for g, v in sorted(per_gen.items()) if g != active and v)
            rows.append([str(addr), str(active), f"{bits:#x}", matched, names, others])
        return ["address", "gen", "bits", "matches", "names", "other gens"], rows

    def _rows_relayed_tuples(self) -> tuple[list[str], list[list[str]]]:
        key_t = self.p.relayed.Key
        now = time.monotonic_ns()
        rows = []
        for raw, t in self.p.relayed_entries():
            k = key_t.from_buffer_copy(raw)
            rows.append([_ep(_ip16(bytes(k.sip)), int(k.sport)), _ep(_ip16(bytes(k.dip)), int(k.dport)),
                         f"{max(0, now - t) / 1e9:.0f}s"])
        rows.sort()
        return ["client", "destination", "handed over"], rows

    def _rows_heartbeat(self) -> tuple[list[str], list[list[str]]]:
        beat, timeout = self.p.last_beat()
        age = (time.monotonic_ns() - beat) / 1e9 if beat else None
        return ["field", "value"], [["last beat", f"{age:.1f}s ago" if age is not None else "never"],
                                    ["stalled after", f"{timeout / 1e9:g}s" if timeout else "not checked"]]

    def _rows_params(self) -> tuple[list[str], list[list[str]]]:
        v = self.p.params[ct.c_int(0)]
        return ["field", "value"], [["active_gen", str(v.active_gen)], ["tproxy_mark", hex(v.tproxy_mark)],
                                    ["fail_open", str(v.fail_open)]]

    def _rows_gen_params(self) -> tuple[list[str], list[list[str]]]:
        rows = []
        for g in range(ABI.GENERATIONS):
            v = self.p.gen_params[ct.c_int(g)]
            rows.append([str(g), str(v.n_match_sets), self._outbound(g, int(v.fallback_outbound)),
                         hex(v.fallback_mark)])
        return ["gen", "match sets", "fallback", "fallback mark"], rows

    def _rows_rule_stats(self) -> tuple[list[str], list[list[str]]]:
        rows = []
        for g in range(ABI.GENERATIONS):
            rs = self.ruleset(g)
            for ri, (hits, last) in self.p.rule_hits(g, len(rs.entries)).items():
                if not hits:
                    continue
                label = "fallback" if ri is None else f"#{ri + 1}"
                text = rs.fallback if ri is None else (str(rs.entries[ri].rule) if ri < len(rs.entries) else "?")
                ago = f"{time.time() - last:.1f}s ago" if last else "-"
                rows.append([str(g), label, str(hits), ago, text])
        return ["gen", "rule", "hits", "last hit", "text"], rows

    def _rows_counters(self) -> tuple[list[str], list[list[str]]]:
        return ["counter", "value"], [[k.lower(), str(v)] for k, v in self.p.counters().items()]

    def _rows_if_stats(self) -> tuple[list[str], list[list[str]]]:
        ifn = self.ifnames()
        rows = [[str(i), ifn.get(i, "?"), str(s["rx_packets"]), str(s["rx_bytes"]), str(s["tx_packets"]),
                 str(s["tx_bytes"])] for i, s in sorted(self.p.interface_stats().items())]
        return ["ifindex", "name", "ingress pkts", "ingress bytes", "egress pkts", "egress bytes"], rows

    def _rows_listeners(self) -> tuple[list[str], list[list[str]]]:
        names = {v: k.lower() for k, v in ABI.prefixed("LISTENER_").items()}
        for w in range(ABI.MAX_WORKERS):
            names[ABI.WORKER_SLOT0 + 2 * w] = f"worker{w}_tcp4"
            names[ABI.WORKER_SLOT0 + 2 * w + 1] = f"worker{w}_tcp6"
        held = self.listeners()
        return ["slot", "listener", "socket"], [[str(s), names.get(s, "?"), held.get(s, "empty")]
                                                for s in range(ABI.N_LISTENER_SLOTS)]

    def _rows_route_progs(self) -> tuple[list[str], list[list[str]]]:
        p = self.p
        progs = ((ABI.PROG_CHUNK, "route_chunk", p.route), (ABI.PROG_CLASSIFY, "route_classify", p.classify),
                 (ABI.PROG_MATCH, "route_match", p.match), (ABI.PROG_DECIDE, "route_decide", p.decide))
        return ["slot", "program"], [[str(i), f"{name} (fd {fn.fd})"] for i, name, fn in progs]

    def _rows_cls_gens(self) -> tuple[list[str], list[list[str]]]:
        rows = []
        for gen in range(ABI.GENERATIONS):
            c = self.p.classifiers.get(gen)
            if c is None:
                continue
            how = "walked (params.walk)" if self.p.walk else "classified" if c.ok else f"walked: {c.why}"
            rows.append([str(gen), how, str(c.n_rules), str(c.n_words), str(c.n_bitmaps) if c.ok else "",
                         str(len(c.ip)), str(len(c.keyed))])
        return ["gen", "new flows", "rules", "words", "bitmaps", "prefixes", "keyed"], rows


def _bits(value: int) -> list[int]:
    return [i for i in range(value.bit_length()) if value >> i & 1]


def _domain_function(f: DomainFunction | None, bit: int) -> str:
    """`#1 domain(suffix: example.test)`: the rule and the function a bit stands for."""
    if f is None:
        return f"bit {bit} (no such function)"
    # The bit says whether the name matches; a `!` is the match set's business.
    cond = dataclasses.replace(f.condition.condition, negate=False)
    return f"#{f.rule_index + 1} {cond}"
