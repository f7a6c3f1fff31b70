"""Compiled rules -> the kernel's rule classifier (bpf/daetui.h, "The rule classifier").

The walk (route_chunk) tries the rules one after another: its cost grows with
the rules. The classifier looks a new flow's packet up once per field instead
(destination and source port, destination and source address, protocol x IP
version x DSCP, MAC, LAN and WAN interface, process name). Each lookup gives
the field's *class*: the bitmap of rules whose functions on that field hold for
the packet's value, negations folded in. A rule can match when its bit is set
in every class; the kernel takes the first such rule, after applying domain()
(the name DNS gave the destination) and must_rules in rule order, exactly as
the walk does. Bit r is the r-th enabled rule (its *position*).

What is built here is what the maps hold, for one generation:
- bitmaps, deduplicated, `n_words` 64-bit words each; a class is a bitmap plus
  at most one extra rule bit, so that "the rules with no function on this field,
  and the one rule naming this port" (the common case) does not need a bitmap
  per value;
- the class of every port (two arrays of 65536), of every l4proto x ipversion x
  dscp combination (the rules that can never match cleared there), of every
  prefix named by dip()/sip() (longest prefix first, as the LPM trie answers),
  and of every MAC, interface index and process name a rule names, with each
  field's class for a value no rule names;
- per rule position: its outbound, index, mark, must, whether it is must_rules,
  and its domain() functions (consecutive bits of domain_routing).

A rule set the classifier cannot hold (more distinct bitmaps than the blocks
hold, a rule with more domain() functions than CLS_MAX_RULE_DOMAINS, more keyed
values than the map) is walked instead: `Classifier.ok` is False and `why` says
why.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from daetui.abi.constants import ABI
from daetui.routing.compile import KernelRules, MatchSet
from daetui.routing.functions import IPNetwork

PORTS = 65536
_NONE = 0   # "no extra bit" in a class value


@dataclass
class ClsRule:
    """What the kernel needs of one rule position (struct cls_rule)."""

    rule_index: int
    outbound: int
    mark: int
    must: int
    must_rules: bool
    dom_first: int = 0
    dom_count: int = 0
    dom_negate: int = 0
    ms_first: int = 0      # its first match set (where the walk takes over)


@dataclass
class Classifier:
    """One generation's classifier tables, as bpf/daetui.h lays them out."""

    ok: bool
    why: str = ""
    n_rules: int = 0
    n_words: int = 1
    words: list[int] = field(default_factory=list)     # the bitmaps, n_words each, back to back
    ports: tuple[array, array] = (array("I"), array("I"))  # dport, sport: class of each port
    misc: array = field(default_factory=lambda: array("I"))
    ifaces: array = field(default_factory=lambda: array("I"))  # [lan index][wan index]: class
    ip: list[tuple[int, IPNetwork, int]] = field(default_factory=list)  # (0 dip / 1 sip, prefix, class)
    keyed: list[tuple[int, int, bytes, int]] = field(default_factory=list)  # (CLS_KEY_*, ifindex, name, value)
    defaults: list[int] = field(default_factory=list)  # per field: the class of a value no entry names
    rules: list[ClsRule] = field(default_factory=list)
    has_wan: bool = False
    has_pname: bool = False
    used: int = 0          # bit CLS_F_*: the fields some rule has a function on (the others are not looked up)

    @property
    def n_bitmaps(self) -> int:
        return len(self.words) // self.n_words


class _Unfit(Exception):
    """The rules do not fit the classifier: they are walked."""


@dataclass
class _Function:
    type: int
    negate: bool
    sets: list[MatchSet]


def _rules(rules: KernelRules) -> list[list[_Function]]:
    """The match sets, back into rules of functions."""
    out: list[list[_Function]] = []
    funcs: list[_Function] = []
    values: list[MatchSet] = []
    for m in rules.match_sets:
        values.append(m)
        if m.flags & ABI.MS_FUNC_END:
            funcs.append(_Function(m.type, bool(m.negate), values))
            values = []
        if m.flags & ABI.MS_RULE_END:
            out.append(funcs)
            funcs = []
    return out


class _Bitmaps:
    """Distinct bitmaps (Python ints, bit r = rule position r) and the class values that name them."""

    def __init__(self, n_words: int, capacity: int) -> None:
        self.n_words = n_words
        self.capacity = capacity
        self.ids: dict[int, int] = {}
        self.all = (1 << (64 * n_words)) - 1

    def bitmap_id(self, bits: int) -> int:
        got = self.ids.get(bits)
        if got is None:
            if len(self.ids) >= self.capacity:
                raise _Unfit(f"more than {self.capacity} distinct rule bitmaps")
            got = self.ids[bits] = len(self.ids)
        return got

    def cls(self, bits: int, base: int | None = None) -> int:
        """The class value of `bits`: `base` and one extra bit when that is all they differ by."""
        if base is not None and bits != base:
            extra = bits & ~base
            if bits & base == base and extra & (extra - 1) == 0:
                return self.bitmap_id(base) * self.n_words << ABI.CLS_EXTRA_BITS | extra.bit_length()
        return self.bitmap_id(bits) * self.n_words << ABI.CLS_EXTRA_BITS | _NONE

    def words(self) -> list[int]:
        out = [0] * (len(self.ids) * self.n_words)
        mask = (1 << 64) - 1
        for bits, i in self.ids.items():
            for w in range(self.n_words):
                out[i * self.n_words + w] = (bits >> (64 * w)) & mask
        return out


class _Field:
    """The rules with functions on one field: the ones with one function (the fast sums) and the rest."""

    def __init__(self, all_bits: int) -> None:
        self.free = all_bits            # rules with no function on the field: true whatever the value
        self.single: dict[int, _Function] = {}
        self.multi: dict[int, list[_Function]] = {}

    def add(self, pos: int, fn: _Function) -> None:
        self.free &= ~(1 << pos)
        if pos in self.multi:
            self.multi[pos].append(fn)
        elif pos in self.single:
            self.multi[pos] = [self.single.pop(pos), fn]
        else:
            self.single[pos] = fn

    def by_rule(self) -> list[tuple[int, list[_Function]]]:
        """Each rule with functions on the field: (position, its functions on it)."""
        return [(p, [f]) for p, f in self.single.items()] + list(self.multi.items())

    @property
    def used(self) -> bool:
        return bool(self.single or self.multi)


def _discrete(fld: _Field, points: Callable[[_Function], set[Hashable]]) -> tuple[dict[Hashable, int], int]:
    """A field whose values are points (MAC, name, protocol, DSCP): (point -> bitmap, the bitmap of a point
    no function names). A rule's bit is set for a point when each of its functions on the field names the
    point XOR is negated; `points` says which points a function names."""
    neg = 0
    members: dict[Hashable, int] = {}
    for pos, fn in fld.single.items():
        bit = 1 << pos
        if fn.negate:
            neg |= bit
        for v in points(fn):
            members[v] = members.get(v, 0) | bit
    multi = {pos: [(points(fn), fn.negate) for fn in fns] for pos, fns in fld.multi.items()}
    named = set(members).union(*(vals for fns in multi.values() for vals, _ in fns))
    default = fld.free | neg
    for pos, fns in multi.items():
        if all(negate for _, negate in fns):
            default |= 1 << pos
    out = {}
    for p in named:
        bits = fld.free | (neg ^ members.get(p, 0))
        for pos, fns in multi.items():
            if all((p in vals) != negate for vals, negate in fns):
                bits |= 1 << pos
        out[p] = bits
    return out, default


def _intervals_of(fn: _Function) -> list[tuple[int, int]]:
    """The ports a port function holds for, as sorted disjoint inclusive intervals."""
    spans = sorted((m.port_lo, m.port_hi) for m in fn.sets)
    merged: list[tuple[int, int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    if not fn.negate:
        return merged
    out, at = [], 0
    for lo, hi in merged:
        if lo > at:
            out.append((at, lo - 1))
        at = hi + 1
    if at < PORTS:
        out.append((at, PORTS - 1))
    return out


def _intersect(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _ports(fld: _Field, bm: _Bitmaps) -> array:
    """The class of every port: a sweep over the boundaries of every rule's port intervals."""
    toggles: dict[int, int] = {0: 0}
    for pos, fns in fld.by_rule():
        spans = _intervals_of(fns[0])
        for fn in fns[1:]:
            spans = _intersect(spans, _intervals_of(fn))
        bit = 1 << pos
        for lo, hi in spans:
            toggles[lo] = toggles.get(lo, 0) ^ bit
            if hi + 1 < PORTS:
                toggles[hi + 1] = toggles.get(hi + 1, 0) ^ bit
    out = array("I", bytes(4 * PORTS))
    starts = sorted(toggles)
    cur = fld.free
    for i, start in enumerate(starts):
        cur ^= toggles[start]
        end = starts[i + 1] if i + 1 < len(starts) else PORTS
        out[start:end] = array("I", [bm.cls(cur, fld.free)]) * (end - start)
    return out


def _prefix_classes(nets_sets: dict[IPNetwork, set[int]]) -> list[tuple[IPNetwork, frozenset[int]]]:
    """Each prefix and the ip sets that hold an address whose longest named prefix it is: its own and
    its ancestors'. Prefixes that add nothing to their nearest ancestor's are left out (the ancestor's
    entry answers for them)."""
    out = []
    for version in (4, 6):
        nets = sorted((n for n in nets_sets if n.version == version),
                      key=lambda n: (int(n.network_address), n.prefixlen))
        stack: list[tuple[int, frozenset[int]]] = []   # (last address, sets) of the open ancestors
        for n in nets:
            first, last = int(n.network_address), int(n.broadcast_address)
            while stack and stack[-1][0] < first:
                stack.pop()
            above = stack[-1][1] if stack else frozenset()
            sets = above | nets_sets[n]
            if sets != above or not stack:
                out.append((n, sets))
            stack.append((last, sets))
    return out


def build_classifier(rules: KernelRules, max_rules: int = ABI.MAX_RULES,
                     blocks: int = ABI.CLS_BLOCKS) -> Classifier:
    """The classifier of one generation's rules, or one with ok=False (and why) when it cannot hold them."""
    try:
        return _build(rules, max_rules, blocks)
    except _Unfit as e:
        return Classifier(ok=False, why=str(e))


def _build(rules: KernelRules, max_rules: int, blocks: int) -> Classifier:
    parsed = _rules(rules)
    n = len(parsed)
    if n == 0:
        raise _Unfit("no rules")
    if n > min(max_rules, 64 * ABI.CLS_WORDS):
        raise _Unfit(f"{n} rules")
    n_words = 1
    while 64 * n_words < n:
        n_words *= 2
    bm = _Bitmaps(n_words, blocks * ABI.CLS_WORDS // n_words)
    all_bits = (1 << n) - 1
    bm.bitmap_id(bm.all)   # id 0: every bit, the class of a field no rule uses

    fields = {t: _Field(all_bits) for t in (ABI.MATCH_DPORT, ABI.MATCH_SPORT, ABI.MATCH_DIP, ABI.MATCH_SIP,
                                               ABI.MATCH_L4PROTO, ABI.MATCH_IPVERSION, ABI.MATCH_DSCP,
                                               ABI.MATCH_MAC, ABI.MATCH_IFACE_LAN, ABI.MATCH_PNAME)}
    live = all_bits
    out = Classifier(ok=True, n_rules=n, n_words=n_words)
    ms_first = 0
    for pos, funcs in enumerate(parsed):
        end = funcs[-1].sets[-1]
        cr = ClsRule(rule_index=end.rule_index, outbound=end.outbound, mark=end.mark, must=end.must,
                     must_rules=end.outbound == ABI.OUTBOUND_MUST_RULES, ms_first=ms_first)
        ms_first = end.next
        doms = [f for f in funcs if f.type == ABI.MATCH_DOMAIN]
        if doms:
            bits = [f.sets[0].domain_bit for f in doms]
            if len(doms) > ABI.CLS_MAX_RULE_DOMAINS or bits != list(range(bits[0], bits[0] + len(bits))):
                raise _Unfit(f"rule {end.rule_index + 1} has {len(doms)} domain() functions")
            cr.dom_first, cr.dom_count = bits[0], len(bits)
            cr.dom_negate = sum(1 << i for i, f in enumerate(doms) if f.negate)
        out.rules.append(cr)
        for fn in funcs:
            if fn.type == ABI.MATCH_DOMAIN:
                continue
            if fn.type == ABI.MATCH_NEVER:
                if not fn.negate:
                    live &= ~(1 << pos)
                continue
            # One interface() may name both sides: its LAN and WAN values are one field, the pair.
            fields[ABI.MATCH_IFACE_LAN if fn.type == ABI.MATCH_IFACE_WAN else fn.type].add(pos, fn)

    # Ports.
    out.ports = (_ports(fields[ABI.MATCH_DPORT], bm), _ports(fields[ABI.MATCH_SPORT], bm))

    # Protocol x IP version x DSCP, and the rules that can never match.
    l4, l4_default = _discrete(fields[ABI.MATCH_L4PROTO], _mask_points)
    ipv, ipv_default = _discrete(fields[ABI.MATCH_IPVERSION], _mask_points)
    dscp, dscp_default = _discrete(fields[ABI.MATCH_DSCP], lambda fn: {m.dscp for m in fn.sets})
    misc = array("I", bytes(4 * ABI.CLS_MISC))
    for udp, l4_point in enumerate((ABI.L4_TCP, ABI.L4_UDP)):
        for v6, ipv_point in enumerate((ABI.IPV_4, ABI.IPV_6)):
            both = l4.get(l4_point, l4_default) & ipv.get(ipv_point, ipv_default) & live
            for d in range(64):
                misc[udp << 7 | v6 << 6 | d] = bm.cls(both & dscp.get(d, dscp_default))
    out.misc = misc

    # Addresses: every prefix named by a dip()/sip(), with the ip sets that hold it.
    out.defaults = [0] * ABI.CLS_FIELDS
    for side, mtype, fidx in ((0, ABI.MATCH_DIP, ABI.CLS_F_DIP), (1, ABI.MATCH_SIP, ABI.CLS_F_SIP)):
        fld = fields[mtype]
        if not fld.used:
            continue
        nets_sets: dict[IPNetwork, set[int]] = {}
        for _, fns in fld.by_rule():
            for fn in fns:
                sid = fn.sets[0].ip_set
                for net in rules.ip_sets.get(sid, ()):
                    nets_sets.setdefault(net, set()).add(sid)
        by_sets: dict[frozenset[int], int] = {}
        in_sets = _SetBits(fld)
        for net, sets in _prefix_classes(nets_sets):
            if sets not in by_sets:
                by_sets[sets] = in_sets(sets)
            out.ip.append((side, net, bm.cls(by_sets[sets], fld.free)))
        out.defaults[fidx] = bm.cls(in_sets(frozenset()), fld.free)

    if len(out.ip) > ABI.MAX_IP_SET_ENTRIES // ABI.GENERATIONS:   # a set used by dip() and sip() counts twice
        raise _Unfit(f"{len(out.ip)} address prefixes")

    # MACs and process names: hashed, with the class of any other.
    keyed = (
        (ABI.CLS_F_MAC, ABI.CLS_KEY_MAC, ABI.MATCH_MAC, lambda fn: {bytes(m.mac) for m in fn.sets}),
        (ABI.CLS_F_PNAME, ABI.CLS_KEY_PNAME, ABI.MATCH_PNAME, lambda fn: {bytes(m.pname) for m in fn.sets}),
    )
    for fidx, kind, mtype, points in keyed:
        fld = fields[mtype]
        if not fld.used:
            continue
        by_point, default = _discrete(fld, points)
        out.defaults[fidx] = bm.cls(default, fld.free)
        for p, bits in by_point.items():
            out.keyed.append((kind, 0, p, bm.cls(bits, fld.free)))
    out.has_pname = fields[ABI.MATCH_PNAME].used
    out.ifaces, lan, wan = _ifaces(fields[ABI.MATCH_IFACE_LAN], bm)
    out.keyed += [(ABI.CLS_KEY_LAN, i, b"", x) for i, x in lan.items()]
    out.keyed += [(ABI.CLS_KEY_WAN, i, b"", x) for i, x in wan.items()]
    out.has_wan = bool(wan)
    if len(out.keyed) > ABI.CLS_KEYED_ENTRIES // ABI.GENERATIONS:
        raise _Unfit(f"{len(out.keyed)} MACs, interfaces and process names")
    used = {ABI.CLS_F_DPORT: ABI.MATCH_DPORT, ABI.CLS_F_SPORT: ABI.MATCH_SPORT, ABI.CLS_F_DIP: ABI.MATCH_DIP,
            ABI.CLS_F_SIP: ABI.MATCH_SIP, ABI.CLS_F_MAC: ABI.MATCH_MAC, ABI.CLS_F_IFACE: ABI.MATCH_IFACE_LAN,
            ABI.CLS_F_PNAME: ABI.MATCH_PNAME}
    out.used = sum(1 << f for f, mtype in used.items() if fields[mtype].used) | 1 << ABI.CLS_F_MISC
    out.words = bm.words()
    return out


def _mask_points(fn: _Function) -> set[Hashable]:
    """The protocols (L4_*) or IP versions (IPV_*) a mask function names, one point each."""
    mask = 0
    for m in fn.sets:
        mask |= m.mask
    return {b for b in (1, 2) if mask & b}


def _ifaces(fld: _Field, bm: _Bitmaps) -> tuple[array, dict[int, int], dict[int, int]]:
    """The class of each (LAN interface, WAN interface) pair, and the index of each named interface a side
    (0: any other). An interface() function holds when the LAN value or the WAN value is one it names."""
    table = array("I", bytes(4 * ABI.CLS_IFACES * ABI.CLS_IFACES))
    if not fld.used:
        return table, {}, {}
    by_rule = fld.by_rule()
    lan: dict[int, int] = {}
    wan: dict[int, int] = {}
    for _, fns in by_rule:
        for fn in fns:
            for m in fn.sets:
                side = lan if m.type == ABI.MATCH_IFACE_LAN else wan
                if m.ifindex and m.ifindex not in side:   # 0: an interface not there (yet): matches nothing
                    side[m.ifindex] = len(side) + 1
    if len(lan) >= ABI.CLS_IFACES or len(wan) >= ABI.CLS_IFACES:
        raise _Unfit(f"interface() names {len(lan)} LAN and {len(wan)} WAN interfaces")
    for a in [0, *lan]:
        for b in [0, *wan]:
            bits = fld.free
            for pos, fns in by_rule:
                if all(any(m.ifindex and m.ifindex == (a if m.type == ABI.MATCH_IFACE_LAN else b) for m in fn.sets)
                       != fn.negate for fn in fns):
                    bits |= 1 << pos
            table[lan.get(a, 0) * ABI.CLS_IFACES + wan.get(b, 0)] = bm.cls(bits, fld.free)
    return table, lan, wan


class _SetBits:
    """An address field's bitmap for an address in exactly some ip sets (ids)."""

    def __init__(self, fld: _Field) -> None:
        self.fld = fld
        self.neg = 0
        self.members: dict[int, int] = {}   # ip set -> the one-function rules naming it
        for pos, fn in fld.single.items():
            if fn.negate:
                self.neg |= 1 << pos
            sid = fn.sets[0].ip_set
            self.members[sid] = self.members.get(sid, 0) | 1 << pos

    def __call__(self, sets: frozenset[int]) -> int:
        named = 0
        for sid in sets:
            named |= self.members.get(sid, 0)
        bits = self.fld.free | (self.neg ^ named)
        for pos, fns in self.fld.multi.items():
            if all((fn.sets[0].ip_set in sets) != fn.negate for fn in fns):
                bits |= 1 << pos
        return bits
