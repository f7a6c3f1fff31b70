"""Keeping the kernel's copy of what user space knows: names' domain bits, group health, rule generations.

The kernel routes by maps that user space fills: `domain_routing` (for each
address DNS named, one bitmap per rule generation of the domain functions its
names match), the groups' health (which groups have no live node, per family,
and what `dead_group` says to do then), and two generations of rules. This is
the one place that writes the first two and remembers which rule set each
generation holds, so a kernel record (which names its generation) is decoded
by the rules that made it. Writes are skipped when the kernel already holds
the value. With no kernel side (tests, `kernel=False`) everything here is a
no-op but the bookkeeping.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from daetui.abi.constants import ABI
from daetui.abi.flowrecord import FlowKey, KernelFlow
from daetui.control.names import IPAddress, NameBook
from daetui.dataplane.dataplane import Dataplane
from daetui.dataplane.program import KernelProgram
from daetui.outbound.manager import Outbounds
from daetui.routing.compile import KernelRules
from daetui.routing.ruleset import RuleSet

log = logging.getLogger("daetui.control")

DEAD_GROUP_ACTIONS = {"reject": ABI.GROUP_DEAD_REJECT, "drop": ABI.GROUP_DEAD_DROP, "direct": ABI.GROUP_DEAD_DIRECT}
_DEAD_GROUP_SAYS = {"reject": "are reset", "drop": "are dropped", "direct": "go direct"}

Hits = dict[int | None, tuple[int, float | None]]  # rule index (None: the fallback) -> (hits, last hit)


class KernelSync:
    """The kernel's domain bits, group health and rule generations, written from user space's state."""

    def __init__(self, dataplane: Dataplane | None, names: NameBook, outbounds: Outbounds, ruleset: RuleSet,
                 dead_group: str) -> None:
        self.dataplane = dataplane
        self.names = names
        self.outbounds = outbounds
        self.dead_group = dead_group
        self.current = ruleset                   # the active generation's rule set
        self._rulesets: dict[int, RuleSet] = {0: ruleset, 1: ruleset}
        self._kernel_rules: dict[int, KernelRules] = {}
        # What domain_routing holds, least recently written first. The map is a plain hash this
        # class keeps within its size (oldest out first), so this is exactly the kernel's content.
        self._bits_written: OrderedDict[IPAddress, dict[int, int]] = OrderedDict()
        self.domain_evicted = 0       # addresses taken out of a full domain_routing
        self.names_lost: Callable[[], None] | None = None   # called when a name left early (DNS kernel answers)
        self._health_written: dict[tuple[int, int], int] = {}
        # Rule hits of earlier generations, by rule id: a rule that survives a reload keeps its count.
        self._hits_carry: dict[str, tuple[int, float | None]] = {}

    @property
    def program(self) -> KernelProgram | None:
        return self.dataplane.program if self.dataplane is not None else None

    @property
    def generation(self) -> int:
        return self.dataplane.state.generation if self.dataplane is not None else 0

    def flow(self, key: FlowKey) -> KernelFlow | None:
        """The kernel's record of a flow, if it has one."""
        prog = self.program
        return prog.flow(key) if prog is not None else None

    def ruleset(self, generation: int) -> RuleSet:
        """The rule set a generation was written from (what a kernel record of it means)."""
        return self._rulesets.get(generation, self.current)

    def loaded(self, kernel_rules: KernelRules | None) -> None:
        """The dataplane started with the first rule set in generation 0."""
        if kernel_rules is not None:
            self._kernel_rules[0] = kernel_rules

    def prepare(self, generation: int, kernel_rules: KernelRules, ruleset: RuleSet, dead_group: str) -> None:
        """A reload wrote `generation`: its names' bits and groups' health, before packets see it."""
        self._kernel_rules[generation] = kernel_rules
        self._rulesets[generation] = ruleset
        lost, evicted = self.names.lost, self.domain_evicted
        for ip in self.names.addresses():
            self.write_bits(ip)
        self._check_lost(lost, evicted)
        for key in [k for k in self._health_written if k[0] == generation]:
            del self._health_written[key]
        self.write_group_health([generation], dead_group)

    def activated(self, generation: int, ruleset: RuleSet, dead_group: str) -> None:
        """The flip is done (or, with no kernel side, the reload): `ruleset` is the one in force."""
        self._rulesets[generation] = ruleset
        self.current = ruleset
        self.dead_group = dead_group

    # -- names --------------------------------------------------------------------------------
    def _check_lost(self, lost: int, evicted: int) -> None:
        """A name left the NameBook or the kernel's domain map before its deadline: the kernel's DNS answers
        may hand out an address whose name it no longer knows, so they are all retired (names_lost)."""
        if (self.names.lost != lost or self.domain_evicted != evicted) and self.names_lost is not None:
            self.names_lost()

    def feed(self, names: tuple[str, ...], ips: tuple[Any, ...], deadline: float) -> None:
        """A DNS answer's addresses and names, into the kernel before the reply leaves."""
        lost, evicted = self.names.lost, self.domain_evicted
        for ip in ips:
            changed = False
            for name in names:
                new, dropped = self.names.learn(ip, name, deadline)
                changed |= new
                for old in dropped:
                    self.forget(old)
            if changed:
                self.write_bits(ip)
        self._check_lost(lost, evicted)

    def learn(self, addr: str, name: str) -> None:
        """`addr` answers to `name` with no expiry (tests and the control socket)."""
        lost, evicted = self.names.lost, self.domain_evicted
        ip = ipaddress.ip_address(addr)
        _, dropped = self.names.learn(ip, name)
        for old in dropped:
            self.forget(old)
        self.write_bits(ip)
        self._check_lost(lost, evicted)

    def expire(self, now: float | None = None) -> None:
        """Names whose TTL ran out leave the kernel's domain map."""
        changed, emptied = self.names.expire(time.monotonic() if now is None else now)
        for ip in emptied:
            self.forget(ip)
        for ip in changed:
            self.write_bits(ip)

    @property
    def kernel_names(self) -> int:
        """Addresses the kernel's domain map holds."""
        return len(self._bits_written)

    def write_bits(self, ip: IPAddress) -> None:
        prog = self.program
        if prog is None:
            return
        bits = {gen: self.names.bits(kr.domain_functions, ip) for gen, kr in self._kernel_rules.items()}
        written = self._bits_written
        if written.get(ip) == bits:
            written.move_to_end(ip)
            return  # a name that came and went again (CDNs): the kernel already holds these bits
        if ip not in written:
            while len(written) >= prog.max_domain_ips:
                # Full: the least recently written address goes. Its flows are then undecided in the
                # kernel and the control plane decides them by the names it still knows.
                old, _ = written.popitem(last=False)
                prog.forget_domain(old)
                self.domain_evicted += 1
        try:
            prog.set_domain_bits(ip, bits)
        except Exception as e:  # BCC raises a bare Exception. Not expected (room was made): ip gets no bits
            written.pop(ip, None)
            log.error("domain_routing: could not write %s: %s", ip, e)
            return
        written[ip] = bits
        written.move_to_end(ip)

    def forget(self, ip: IPAddress) -> None:
        self._bits_written.pop(ip, None)
        if self.program is not None:
            self.program.forget_domain(ip)

    def domain_bits(self, ip: IPAddress) -> int | None:
        """The active generation's bits the kernel holds for `ip` (for explain)."""
        per_gen = self.program.domain_bits(ip) if self.program is not None else None
        return per_gen.get(self.generation) if per_gen else None

    # -- groups -------------------------------------------------------------------------------
    def write_group_health(self, generations: list[int] | None = None, dead_group: str | None = None) -> None:
        """Tell the kernel which groups have no live node (per family), and what to do then."""
        prog = self.program
        if prog is None:
            return
        dead_group = dead_group or self.dead_group
        action = DEAD_GROUP_ACTIONS[dead_group]
        for gen in generations if generations is not None else list(self._kernel_rules):
            for i, group in enumerate(self.ruleset(gen).groups[:ABI.MAX_GROUPS]):
                dead = self.outbounds.dead_families(group)
                value = (ABI.GROUP_DEAD4 if 4 in dead else 0) | (ABI.GROUP_DEAD6 if 6 in dead else 0)
                value |= action if value else 0
                if self._health_written.get((gen, i)) == value:
                    continue
                prog.set_group_health(gen, i, value)
                self._health_written[(gen, i)] = value
                if value:
                    log.warning("group %s has no live node over IPv%s: new flows %s", group,
                                "/".join(str(f) for f in sorted(dead)), _DEAD_GROUP_SAYS[dead_group])

    # -- rule hits ----------------------------------------------------------------------------
    def rule_hits(self) -> Hits:
        """The active generation's hits per rule, with what its rules had in earlier generations."""
        prog = self.program
        rs = self.ruleset(self.generation)
        now = prog.rule_hits(self.generation, len(rs.entries)) if prog is not None else {}
        out: Hits = {None: now.get(None, (0, None))}
        for e in rs.entries:
            out[e.index] = self._with_carry(e.id, now.get(e.index, (0, None)))
        return out

    def carry_hits(self) -> None:
        """Before a reload: keep the active generation's hits under their rules' ids."""
        prog = self.program
        if prog is None:
            return
        rs = self.current
        hits = prog.rule_hits(self.generation, len(rs.entries))
        for e in rs.entries:
            self._hits_carry[e.id] = self._with_carry(e.id, hits.get(e.index, (0, None)))

    def _with_carry(self, rule_id: str, now: tuple[int, float | None]) -> tuple[int, float | None]:
        carried = self._hits_carry.get(rule_id, (0, None))
        return carried[0] + now[0], _later(carried[1], now[1])


def _later(a: float | None, b: float | None) -> float | None:
    return max(x for x in (a, b) if x is not None) if (a is not None or b is not None) else None
