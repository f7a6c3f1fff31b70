"""daetui's console: the router, live, over the control socket.

The app knows the control plane only as a `Source` (the control socket's
client, or a fixed one for tests); it renders from snapshots at its own pace
and never holds the daemon up: it is a separate process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.css.query import NoMatches
from textual.notifications import SeverityLevel
from textual.widgets import Footer, TabbedContent, TabPane

from daetui.control import wire
from daetui.control.client import ControlError
from daetui.control.commands import ControlApi
from daetui.control.state import LogLine, ReloadResult, Snapshot
from daetui.ui import fmt
from daetui.ui.flows import FlowRow
from daetui.ui.panes import PANES, keyed
from daetui.ui.panes.base import PaletteEntry, Pane
from daetui.ui.panes.connections import ConnectionsPane
from daetui.ui.panes.dialers import DialersPane
from daetui.ui.panes.dns import DnsPane
from daetui.ui.panes.logs import LogsPane
from daetui.ui.panes.maps import MapsPane
from daetui.ui.panes.rules import RulesPane
from daetui.ui.screens.modals import ConfirmScreen, FlowScreen, HelpScreen, QuitScreen, global_help
from daetui.ui.screens.reload import ReloadPreviewScreen
from daetui.ui.screens.rule_edit import RuleEditScreen
from daetui.ui.themes import CSS_PATH, load_themes, resolve
from daetui.ui.widgets.statusbar import StatusBar

# What the console needs of a control plane: the control socket's commands (ControlClient is one).
Source = ControlApi

PaletteCommand = tuple[str, str, Callable[[], Any]]


class DaetuiCommands(Provider):
    """The command palette's daetui entries (DaetuiApp.palette)."""

    def _commands(self) -> list[PaletteCommand]:
        app = self.app
        return app.palette() if isinstance(app, DaetuiApp) else []

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, cb in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), cb, help=help_text)

    async def discover(self) -> Hits:
        for name, help_text, cb in self._commands():
            yield DiscoveryHit(name, cb, help=help_text)


class DaetuiApp(App[str | None]):
    """The console. Returns "stop", "detach" or None (lost) when it exits."""

    CSS_PATH = CSS_PATH
    TITLE = "daetui"
    COMMANDS = App.COMMANDS | {DaetuiCommands}
    BINDINGS = [
        *(Binding(key, f"pane('{pane.ID}')", pane.TITLE, show=False) for key, pane in keyed()),
        Binding("question_mark,f1", "help", "Help"),
        Binding("escape", "escape", "Back", show=False),
        Binding("slash", "filter", "Filter", show=False),
        Binding("q", "quit_prompt", "Quit"),
    ]

    def __init__(self, connect: Callable[[], Awaitable[Source]], *, refresh: float = 1.0,
                 theme: str | None = None, starting_text: str = "connecting to daetui…",
                 initial_pane: str = "overview") -> None:
        super().__init__()
        self.connect_source = connect
        self.refresh_interval = refresh
        self.theme_name = resolve(theme)
        self.starting_text = starting_text
        self.initial_pane = initial_pane
        self.source: Source | None = None
        self.snapshot: Snapshot | None = None
        self.refresh_count = 0
        self._pending_logs: list[LogLine] = []
        self._maps_busy = False
        self.panes: dict[str, Pane] = {}   # by id, in tab order (made in compose)

    # -- layout --------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        with TabbedContent(initial=self.initial_pane, id="panes"):
            for key, pane_class in keyed():
                with TabPane(f"{key} {pane_class.TITLE}", id=pane_class.ID):
                    pane = self.panes[pane_class.ID] = pane_class()
                    yield pane
        yield Footer()

    def on_mount(self) -> None:
        for theme in load_themes():
            self.register_theme(theme)
        self.theme = self.theme_name
        self.query_one(StatusBar).show_connecting(self.starting_text)
        self.set_interval(0.25, self._flush_logs)
        self._poll()

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information",
               timeout: float | None = None, markup: bool = False) -> None:
        """A notification, shown as written: most quote a name or an error from outside (a node's name, a
        config error's source line), so markup is off and controls are escaped, whoever calls."""
        text = fmt.markup(message) if not markup else message
        super().notify(text, title=fmt.markup(title), severity=severity, timeout=timeout, markup=True)

    def set_theme(self, short: str) -> None:
        self.theme = resolve(short)

    def palette(self) -> list[PaletteCommand]:
        """The command palette's entries: each pane, the themes, what the panes offer, leaving, help."""
        cmds: list[PaletteCommand] = [
            (f"Show {p.TITLE}", f"switch to the {p.ID} pane", partial(self.action_pane, p.ID)) for p in PANES]
        for short in ("dark", "light", "basic"):
            cmds.append((f"Theme: {short}", f"the {short} theme", partial(self.set_theme, short)))
        for pane in self.panes.values():
            cmds += [(entry.name, entry.help, partial(self._run_palette_entry, pane, entry))
                     for entry in pane.PALETTE]
        cmds += [
            ("Stop daetui (stop routing) and quit", "undoes every change daetui made",
             partial(self.finish, "stop")),
            ("Leave daetui running and quit", "daetui attach comes back", partial(self.finish, "detach")),
            ("Help", "keys of the current pane", self.action_help),
        ]
        return cmds

    def _run_palette_entry(self, pane: Pane, entry: PaletteEntry) -> None:
        if entry.show:
            self.action_pane(pane.ID)
        getattr(pane, f"action_{entry.action}")()

    @property
    def active_pane(self) -> str:
        return self.query_one(TabbedContent).active or "overview"

    # -- data ------------------------------------------------------------------------------
    @work(exclusive=True, group="poll")
    async def _poll(self) -> None:
        """Fetch a snapshot every `refresh_interval`; reconnect when the daemon goes away."""
        with contextlib.suppress(NoMatches):  # the app is closing: its widgets are gone
            await self._poll_loop()

    async def _poll_loop(self) -> None:
        status = self.query_one(StatusBar)
        while True:
            if self.source is None:
                try:
                    self.source = await self.connect_source()
                except ControlError as e:
                    status.show_lost(str(e))
                    await asyncio.sleep(2)
                    continue
                with contextlib.suppress(ControlError):
                    self._pending_logs.extend(await self.source.logs())
                self._flush_logs()
                self._listen(self.source)
            try:
                snap = await self.source.snapshot()
            except (ControlError, OSError) as e:
                status.show_lost(str(e) or "connection closed")
                with contextlib.suppress(Exception):
                    await self.source.close()
                self.source = None
                await asyncio.sleep(1)
                continue
            started = asyncio.get_running_loop().time()
            self._apply(snap)
            await self.panes[self.active_pane].tick(snap, self.refresh_count)
            # With very many flows a refresh costs real time: keep the console
            # under about a quarter of a core, whatever the refresh rate asked.
            cost = asyncio.get_running_loop().time() - started
            await asyncio.sleep(max(self.refresh_interval, 3 * cost))

    def _apply(self, snap: Snapshot) -> None:
        self.snapshot = snap
        self.refresh_count += 1
        self.query_one(StatusBar).show(snap)
        active = self.active_pane
        for pane in self.panes.values():
            if pane.FEED == "always" or (pane.FEED == "shown" and active == pane.ID):
                pane.update(snap)

    @work(exclusive=True, group="events")
    async def _listen(self, source: Source) -> None:
        """The daemon's event stream: log lines now, the rest on the next snapshot."""
        with contextlib.suppress(ControlError, OSError):
            async for ev in source.events():
                if ev.kind == "log":
                    self._pending_logs.append(wire.decode(LogLine, ev.data["line"]))

    def _flush_logs(self) -> None:
        if self._pending_logs:
            lines, self._pending_logs = self._pending_logs, []
            with contextlib.suppress(NoMatches):  # the app may be closing
                self.query_one(LogsPane).add(lines)

    # -- what the panes ask for: each one a message, answered through the control socket ------------
    @on(MapsPane.RefreshRequested)
    def refresh_maps(self) -> None:
        if not self._maps_busy:
            self._load_maps()

    @work(exclusive=True, group="maps")
    async def _load_maps(self) -> None:
        if self.source is None:
            return
        self._maps_busy = True
        pane = self.query_one(MapsPane)
        try:
            pane.update_maps(await self.source.maps())
            pane.update_entries(await self.source.map_entries(pane.selected, pane.search), self.snapshot)
        except ControlError as e:
            self.notify(f"maps: {e}", severity="error")
        finally:
            self._maps_busy = False

    @on(ConnectionsPane.DetailsRequested)
    def show_flow(self, event: ConnectionsPane.DetailsRequested) -> None:
        row = event.row
        interfaces = {i.index: i for i in self.snapshot.interfaces} if self.snapshot else {}
        screen = FlowScreen(row, {index: i.name for index, i in interfaces.items()})
        self.push_screen(screen)
        seen_on = interfaces.get(row.ifindex) if row.ifindex else None
        # The router's own flows are seen leaving by a WAN interface: wan(), not ifname(), is about that one.
        iface = seen_on.name if seen_on is not None and seen_on.side != "wan" else None
        wan = seen_on.name if seen_on is not None and seen_on.side == "wan" else None
        self._trace_flow(screen, row, iface, wan)

    @work(group="explain")
    async def _trace_flow(self, screen: FlowScreen, row: FlowRow, iface: str | None, wan: str | None) -> None:
        """The rule trace of a flow like this one under the rules now (as `daetui explain`)."""
        if self.source is None:
            return
        host = f"[{row.dst}]" if ":" in row.dst else row.dst
        try:
            result = await self.source.explain(target=f"{host}:{row.dport}", proto=row.proto.lower(),
                                               mac=row.mac or None, src=row.src, sport=row.sport, iface=iface,
                                               wan=wan, pname=row.process or None)
        except ControlError as e:
            screen.show_trace(f"explain failed: {e}")
            return
        screen.show_trace(result.text)

    @on(ConnectionsPane.CloseRequested)
    def close_flows(self, event: ConnectionsPane.CloseRequested) -> None:
        ids = event.ids
        if not event.confirm:
            self._close(ids)
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self._close(ids)
        self.push_screen(ConfirmScreen(f"Close the {len(ids)} relayed connection{'s' if len(ids) != 1 else ''} "
                                       "the filter shows? Their clients see a reset."), answer)

    @work(group="close")
    async def _close(self, ids: list[int]) -> None:
        if self.source is None:
            return
        try:
            n = await self.source.close_connections(ids)
            self.notify(f"closed {n} connection{'s' if n != 1 else ''}")
        except ControlError as e:
            self.notify(f"close: {e}", severity="error")

    # -- rules: every edit goes through the daemon, which writes the file and reloads --------------
    @on(RulesPane.EditRequested)
    def edit_rule(self, event: RulesPane.EditRequested) -> None:
        """toggle / set / insert / remove / move a rule (see ControlApi.edit_rules)."""
        self._edit_rule(event.op, event.index, event.args)

    @work(group="rules")
    async def _edit_rule(self, op: str, index: int, args: dict[str, Any]) -> None:
        if self.source is None:
            self.notify("not connected to daetui", severity="error")
            return
        try:
            result = await self.source.edit_rules(op, index, **args)
        except ControlError as e:
            self.notify(f"rule edit failed: {e}", severity="error")
            return
        self._reloaded(result, f"rule #{index + 1}: {op}")

    def _reloaded(self, result: ReloadResult, what: str) -> None:
        if result.ok:
            self.notify(f"{what} — saved and applied (generation {result.generation})")
            self._refresh_now()
        else:
            self.notify(f"{what} refused, nothing changed:\n{result.message}", severity="error", timeout=12)

    @work(group="refresh")
    async def _refresh_now(self) -> None:
        """A snapshot at once after a change, rather than at the next tick."""
        if self.source is not None:
            with contextlib.suppress(ControlError, OSError):
                self._apply(await self.source.snapshot(flows=False))

    @on(RulesPane.EditorRequested)
    def ask_rule(self, event: RulesPane.EditorRequested) -> None:
        """The rule editor; what it returns is saved by the daemon (which checks it again)."""
        snap = self.snapshot
        outbounds = set(snap.outbounds.values()) if snap else set()
        config = snap.health.config if snap else None

        def done(new: str | None) -> None:
            if new is not None and new != event.text:
                args: dict[str, Any] = {"text": new}
                if event.expect is not None:
                    args["expect"] = event.expect
                self._edit_rule(event.op, event.index, args)
        self.push_screen(RuleEditScreen(event.title, event.text, outbounds, config), done)

    @on(RulesPane.RemoveRequested)
    def confirm_remove(self, event: RulesPane.RemoveRequested) -> None:
        def answer(yes: bool | None) -> None:
            if yes:
                self._edit_rule("remove", event.index, {"expect": event.text})
        self.push_screen(ConfirmScreen(f"Delete rule #{event.index + 1}?\n\n  {event.text}\n\n"
                                       "It is removed from the config file (the old file is kept as .bak)."), answer)

    @on(RulesPane.ReloadRequested)
    def preview_reload(self) -> None:
        """R: what reloading the file would change; apply it if the operator says so."""
        self._preview_reload()

    @work(group="rules")
    async def _preview_reload(self) -> None:
        if self.source is None:
            return
        try:
            preview = await self.source.reload_preview()
        except ControlError as e:
            self.notify(f"reload: {e}", severity="error")
            return
        config = self.snapshot.health.config if self.snapshot else "the config"

        async def apply(yes: bool | None) -> None:
            if yes and self.source is not None:
                try:
                    self._reloaded(await self.source.reload(), "reload")
                except ControlError as e:
                    self.notify(f"reload: {e}", severity="error")
        self.push_screen(ReloadPreviewScreen(preview, config), apply)

    # -- DNS: lookups and flushes run as workers; the pane renders from the snapshot ---------------
    @on(DnsPane.LookupRequested)
    def dns_lookup(self, event: DnsPane.LookupRequested) -> None:
        """Resolve through the daemon's DNS controller; the DNS pane shows the answer and its route."""
        self._dns_lookup(event.name, event.qtype)

    @work(exclusive=True, group="dns-lookup")
    async def _dns_lookup(self, name: str, qtype: str) -> None:
        pane = self.query_one(DnsPane)
        if self.source is None:
            pane.show_error("not connected to daetui")
            return
        try:
            trace = await self.source.dns_lookup(name, qtype)
        except (ControlError, OSError, TimeoutError) as e:
            pane.show_error(f"lookup failed: {e or 'no answer in time'}")
            return
        pane.show_trace(trace)
        self._refresh_now()  # its cache entry, now rather than at the next tick

    @on(DnsPane.FlushRequested)
    def confirm_dns_flush(self) -> None:
        entries = self.snapshot.dns.cached if self.snapshot and self.snapshot.dns else 0

        def answer(yes: bool | None) -> None:
            if yes:
                self._dns_flush()
        self.push_screen(ConfirmScreen(f"Flush the DNS cache ({entries} entr{'y' if entries == 1 else 'ies'})?\n\n"
                                       "Every name is asked upstream again. The kernel keeps the names it "
                                       "knows until their TTL."), answer)

    @work(group="dns-flush")
    async def _dns_flush(self) -> None:
        if self.source is None:
            self.notify("not connected to daetui", severity="error")
            return
        try:
            n = await self.source.dns_flush()
        except (ControlError, OSError, TimeoutError) as e:
            self.notify(f"flush: {e}", severity="error")
            return
        self.notify(f"DNS cache flushed: {n} entr{'y' if n == 1 else 'ies'} dropped")
        self._refresh_now()

    # -- dialers: checks and pins run as workers; the pane renders from the snapshot ------------------
    @on(DialersPane.CheckRequested)
    def check_nodes(self, event: DialersPane.CheckRequested) -> None:
        """Check nodes (a group: all its members) now; the Dialers pane marks them until it is done."""
        pane = self.query_one(DialersPane)
        for name in event.names:
            pane.checks_started(name)
        self._check_nodes(event.names)

    @work(group="dialers-check")
    async def _check_nodes(self, names: list[str]) -> None:
        pane = self.query_one(DialersPane)
        try:
            failed = await self._run_check(names)
        finally:
            for name in names:
                pane.checks_done(name)
        if failed:
            self.notify(f"check {', '.join(names)}: {failed}", severity="error")
        else:
            self.notify("\n".join(pane.summary(n) for n in names))

    async def _run_check(self, names: list[str]) -> str:
        """Check `names` and take the snapshot that shows the results; why not, or ""."""
        if self.source is None:
            return "not connected to daetui"
        # A check takes seconds (a dead node: its whole timeout), and the daemon answers one
        # connection's requests in order: on a connection of its own, the snapshots keep coming.
        try:
            side = await self.connect_source()
        except (ControlError, OSError) as e:
            return str(e)
        try:
            await side.check_nodes(names)
        except (ControlError, OSError, TimeoutError) as e:
            return str(e) or "no answer in time"
        finally:
            if side is not self.source:
                with contextlib.suppress(Exception):
                    await side.close()
        if self.source is not None:
            # The results now, rather than at the next tick.
            with contextlib.suppress(ControlError, OSError):
                self._apply(await self.source.snapshot())
        return ""

    @on(DialersPane.PinRequested)
    def pin_node(self, event: DialersPane.PinRequested) -> None:
        """Pin a node in a group (None: unpin); new flows of the group go through it while it is alive."""
        self._pin_node(event.group, event.node)

    @work(group="dialers-pin")
    async def _pin_node(self, group: str, node: str | None) -> None:
        if self.source is None:
            self.notify("not connected to daetui", severity="error")
            return
        try:
            await self.source.pin_node(group, node)
        except (ControlError, OSError, TimeoutError) as e:
            self.notify(f"{'pin' if node else 'unpin'} {group}: {e}", severity="error")
            return
        if node:
            self.notify(f"{group}: pinned to {node} — new flows go through it while it is alive")
        else:
            self.notify(f"{group}: unpinned — its policy picks the node again")
        self._refresh_now()

    # -- actions ------------------------------------------------------------------------------
    def action_pane(self, pane: str) -> None:
        self.query_one(TabbedContent).active = pane
        self.on_tabbed_content_tab_activated()

    def on_tabbed_content_tab_activated(self, event: object = None) -> None:
        self.panes[self.active_pane].opened(self.snapshot)

    @property
    def shown_pane(self) -> Pane:
        """The pane on the screen."""
        return self.panes[self.active_pane]

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.shown_pane.HELP, global_help([p.TITLE for p in PANES])))

    def action_filter(self) -> None:
        """`/` opens the shown pane's filter line, wherever the focus is."""
        self.shown_pane.action_filter()

    def action_escape(self) -> None:
        self.shown_pane.leave_filter()

    def action_quit_prompt(self) -> None:
        if self.source is None:
            self.exit(None)
            return
        pid = self.snapshot.health.pid if self.snapshot else None

        def chosen(what: str | None) -> None:
            if what:
                self.finish(what)
        self.push_screen(QuitScreen(pid), chosen)

    def finish(self, what: str) -> None:
        """Leave the console: "stop" stops the daemon first, "detach" leaves it running."""
        self._finish(what)

    @work(group="finish")
    async def _finish(self, what: str) -> None:
        if what == "stop" and self.source is not None:
            try:
                await self.source.stop_daemon()
            except ControlError as e:
                self.notify(f"could not stop daetui: {e}", severity="error")
                return
        self.exit(what)
