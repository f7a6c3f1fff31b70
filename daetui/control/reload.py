"""A new config for a running daemon: reload, rule edits, the preview of a reload, and the abort of flows.

Whatever asks (SIGUSR1, `daetui reload`, the console's `R`, a rule edited in
the console), a config replaces the running one here and only here: checked
first, compiled, written into the kernel's inactive generation with the
names' bits and groups' health recomputed for it, then flipped to in one
write. On any problem nothing changes and the reason is returned. Flows
already decided keep their route, unless `abort` asks to reset the ones the
new rules would route elsewhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from daetui.abi.flowrecord import FlowKey
from daetui.config.edit import EditError, RulesEditor
from daetui.config.errors import ConfigError
from daetui.config.load import Config, load_config
from daetui.control.decision import facts_of, kernel_facts, outbound_under
from daetui.control.state import ReloadResult
from daetui.routing.compile import CompileError, KernelRules
from daetui.routing.ruleset import RuleSet

if TYPE_CHECKING:
    from daetui.control.plane import ControlPlane

log = logging.getLogger("daetui.control")


class Reloader:
    """Replaces a ControlPlane's config, one change at a time."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self._lock = asyncio.Lock()
        self.applied = 0      # configs put in force since start (reloads, edits, runtime toggles): /metrics
        self.refused = 0      # reloads refused (the config in force stayed)

    def _refused(self, why: str, publish: bool = True) -> ReloadResult:
        self.refused += 1
        log.error("reload refused: %s", why)
        if publish:
            self.plane.events.publish("reload", ok=False, message=why)
        return ReloadResult(False, why, self.plane.generation)

    async def from_file(self, abort: bool = False) -> ReloadResult:
        """Read the config file again and apply it."""
        try:
            new = await asyncio.get_running_loop().run_in_executor(None, load_config, self.plane.config.source)
        except ConfigError as e:
            return self._refused(str(e))
        return await self.apply(new, abort)

    async def preview(self) -> ReloadResult:
        """What reloading the file would change (nothing is applied)."""
        plane = self.plane
        try:
            new = await asyncio.get_running_loop().run_in_executor(None, load_config, plane.config.source)
        except ConfigError as e:
            return ReloadResult(False, str(e), plane.generation)
        problem = restart_needed(plane.config, new)
        if problem:
            return ReloadResult(False, problem, plane.generation)
        return ReloadResult(True, "preview", plane.generation, *rule_diff(plane.config.routing, new.routing))

    async def edit(self, op: str, index: int = 0, text: str = "", to: int = 0, enabled: bool = True,
                   expect: str | None = None) -> ReloadResult:
        """Change a rule in the config file (comments kept), then apply the file.

        `expect` is the rule's text as the caller last saw it: if the file says
        otherwise it was changed by someone else, and nothing is done. An edit
        that would not give a valid config is refused and nothing is written.
        """
        config = self.plane.config

        def apply() -> Config:
            ed = RulesEditor(config.routing_file)
            if expect is not None and op != "insert" and ed.rule_text(index) != expect:
                raise EditError(f"rule #{index + 1} in {ed.path} is now {ed.rule_text(index)!r}, not {expect!r}: "
                                "the file changed; reload it (R) and try again")
            if op == "toggle":
                ed.set_enabled(index, enabled)
            elif op == "set":
                ed.set_rule(index, text)
            elif op == "insert":
                ed.insert(index, text)
            elif op == "remove":
                ed.remove(index)
            elif op == "move":
                ed.move(index, to)
            else:
                raise EditError(f"unknown edit {op!r}")
            return ed.save(config.source)

        try:
            new = await asyncio.get_running_loop().run_in_executor(None, apply)
        except EditError as e:
            log.error("rule edit refused: %s", e)
            return ReloadResult(False, str(e), self.plane.generation)
        log.info("rule edit (%s #%d) written to %s", op, index + 1, config.routing_file)
        return await self.apply(new)

    async def set_enabled(self, changes: dict[int, bool], persist: bool = False) -> ReloadResult:
        """Turn rules on (True) or off by index, without dropping a flow.

        At runtime (mihomo's PATCH /rules/disable) the file is not touched: the
        rules in force change until the next reload, which reads the file again.
        With `persist` the change is written to the file (comments kept) and the
        file applied; refused if the file no longer holds the rules in force.
        """
        if not persist:
            return await self.apply(lambda config: with_enabled(config, changes))
        config = self.plane.config

        def write() -> Config:
            ed = RulesEditor(config.routing_file)
            for i, enabled in changes.items():
                entry = config.routing.by_index(i)
                if entry is None:
                    raise EditError(f"there is no rule #{i + 1}")
                if i >= len(ed) or ed.rule_text(i) != entry.rule.text:
                    raise EditError(f"rule #{i + 1} in {ed.path} is not {entry.rule.text!r} as in force: the file "
                                    "changed since it was loaded; reload it and try again")
                ed.set_enabled(i, enabled)
            return ed.save(config.source)

        try:
            new = await asyncio.get_running_loop().run_in_executor(None, write)
        except EditError as e:
            log.error("rule toggle refused: %s", e)
            return ReloadResult(False, str(e), self.plane.generation)
        log.info("rules %s written to %s", ", ".join(f"#{i + 1} {'on' if on else 'off'}" for i, on in changes.items()),
                 config.routing_file)
        return await self.apply(new)

    async def apply(self, new: Config | Callable[[Config], Config], abort: bool = False) -> ReloadResult:
        """Apply a new config without dropping a flow; on any problem change nothing and say why.

        The rules are compiled first, then written into the inactive generation,
        the names' bitmaps recomputed for it, and one write flips the kernel to
        it. Flows already decided keep their route; with `abort`, relayed flows
        whose route changed are reset and UDP ones decided again. `new` may be
        a function of the config in force, called under the lock, so that no
        other change lands between reading that config and replacing it.
        """
        async with self._lock:
            plane = self.plane
            old = plane.config
            if callable(new):
                try:
                    new = new(old)
                except EditError as e:
                    return self._refused(str(e))
            problem = restart_needed(old, new)
            if problem:
                return self._refused(problem)
            dp, sync = plane.dataplane, plane.sync
            loop = asyncio.get_running_loop()
            gen = sync.generation
            if dp is not None and dp.program is not None:
                try:
                    compiled = await loop.run_in_executor(plane.netlink, dp.compile, new.routing)
                except CompileError as e:
                    return self._refused(str(e))
                sync.carry_hits()

                def before_flip(g: int, kr: KernelRules) -> None:
                    # Every known name's bits, and the groups' health, for the new generation before packets see it.
                    sync.prepare(g, kr, new.routing, new.global_.dead_group)
                    # unknown_domain too (a params field of its own): the new rules are never decided the old way.
                    dp.program.set_domain_no_match(new.global_.unknown_domain == "no_match")

                plane.outbounds.configure(new)  # the new generation's groups, before their health is written
                gen = await loop.run_in_executor(
                    plane.netlink, lambda: dp.load_rules(new.routing, compiled=compiled, before_flip=before_flip))
            else:
                plane.outbounds.configure(new)
            sync.activated(gen, new.routing, new.global_.dead_group)
            plane.config = new
            plane.decider.configure(new.global_.dial_mode)
            plane.pipeline.sniffing_timeout = new.global_.sniffing_timeout
            plane.pipeline.configure(new.global_)
            if plane.workers is not None:
                plane.workers.configure(new.global_)
            plane.dialer.mark = new.global_.so_mark_from_dae
            if plane.heartbeat is not None:
                plane.heartbeat.timeout = new.global_.heartbeat_timeout
                plane.heartbeat.beat()  # the new timeout in force now, not a quarter of the old one later
            plane.dns.configure(new)
            if dp is not None:
                await loop.run_in_executor(plane.netlink, dp.rebind, new.global_.lan_interface,
                                           new.global_.wan_interface)
            result = ReloadResult(True, "reloaded", plane.generation, *rule_diff(old.routing, new.routing))
            if abort:
                aborted, kept = self._abort_changed(old.routing, new.routing)
                result = dataclasses.replace(result, aborted=aborted, kept=kept)
            log.info("reloaded %s: generation %d, %d rules added, %d removed, %d toggled%s", new.source,
                     result.generation, len(result.added), len(result.removed), len(result.toggled),
                     f", {result.aborted} flows reset" if abort else "")
            plane.events.publish("reload", ok=True, message=result.message)
            self.applied += 1
            return result

    def _abort_changed(self, old: RuleSet, new: RuleSet) -> tuple[int, int]:
        """Reset the flows whose route the new rules change; returns (reset, left running)."""
        plane = self.plane
        prog = plane.sync.program
        aborted = kept = 0
        for conn in list(plane.connections.open.values()):
            facts = facts_of(conn, conn.domain)
            if outbound_under(new, facts) == conn.outbound:
                continue
            aborted += plane.close_connections([conn.id])
            if conn.proto == "udp" and prog is not None:
                # Its next datagram is decided again by the new rules.
                prog.forget_flow(FlowKey(facts.sip, conn.src[1], facts.dip, conn.dst[1], "udp"))
        if prog is not None:
            for f in prog.flows():
                if f.to_control_plane:
                    continue  # relayed: handled above
                if outbound_under(new, kernel_facts(f)) == old.outbound_name(f.outbound):
                    continue
                if f.key.proto == "udp":
                    prog.forget_flow(f.key)  # its next packet is decided again
                    aborted += 1
                elif not f.closed:
                    kept += 1  # the kernel forwards it; nothing here can reset it
        return aborted, kept


def with_enabled(config: Config, changes: dict[int, bool]) -> Config:
    """`config` with rules turned on (True) or off by index; EditError for an index it has no rule at."""
    rs = config.routing
    for i in changes:
        if rs.by_index(i) is None:
            raise EditError(f"there is no rule #{i + 1} (the rules in force are {len(rs.entries)})")
    entries = tuple(dataclasses.replace(e, enabled=changes[e.index]) if e.index in changes else e
                    for e in rs.entries)
    return dataclasses.replace(config, routing=dataclasses.replace(rs, entries=entries))


def restart_needed(old: Config, new: Config) -> str | None:
    """Why `new` cannot replace `old` without a restart, or None."""
    if old.global_.tproxy_port != new.global_.tproxy_port:
        return "global.tproxy_port cannot change while daetui runs: restart it"
    if old.global_.fail_open != new.global_.fail_open:
        return "global.fail_open cannot change while daetui runs: restart it"
    for key in ("flow_table_size", "domain_table_size", "relay_workers"):
        # The kernel's tables are sized when its programs are compiled, and the workers started, at start.
        if getattr(old.global_, key) != getattr(new.global_, key):
            return f"global.{key} cannot change while daetui runs: restart it"
    if bool(old.global_.wan_interface) != bool(new.global_.wan_interface):
        # The WAN side's veth and socket hooks are set up at start.
        return "global.wan_interface cannot be turned on or off while daetui runs: restart it"
    if old.global_.wan_interface:
        for key in ("so_mark_from_dae", "bypass_marks", "cgroup"):
            if getattr(old.global_, key) != getattr(new.global_, key):
                return f"global.{key} cannot change while daetui steers the router's own traffic: restart it"
    return None


def rule_diff(old: RuleSet, new: RuleSet) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Rules added, removed and toggled, by their stable ids."""
    before = {e.id: e for e in old.entries}
    after = {e.id: e for e in new.entries}
    added = tuple(e.text for i, e in after.items() if i not in before)
    removed = tuple(e.text for i, e in before.items() if i not in after)
    toggled = tuple(e.text for i, e in after.items() if i in before and before[i].enabled != e.enabled)
    return added, removed, toggled
