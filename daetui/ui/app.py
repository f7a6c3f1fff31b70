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

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.css.query import NoMatches
from textual.widgets import Footer, TabbedContent, TabPane

from daetui.control import wire
from daetui.control.client import ControlError
from daetui.control.commands import ControlApi
from daetui.control.state import LogLine, ReloadResult, Snapshot
from daetui.ui.flows import FlowRow
from daetui.ui.panes.connections import ConnectionsPane
from daetui.ui.panes.dialers import DialersPane
from daetui.ui.panes.dns import DnsPane
from daetui.ui.panes.logs import LogsPane
from daetui.ui.panes.maps import MapsPane
from daetui.ui.panes.overview import OverviewPane
from daetui.ui.panes.rules import RulesPane
from daetui.ui.screens.modals import ConfirmScreen, FlowScreen, HelpScreen, QuitScreen
from daetui.ui.screens.reload import ReloadPreviewScreen
from daetui.ui.screens.rule_edit import RuleEditScreen
from daetui.ui.themes import CSS_PATH, load_themes, resolve
from daetui.ui.widgets.statusbar import StatusBar

PANES = ("overview", "connections", "rules", "maps", "logs", "dns", "dialers")
PANE_TITLES = {p: p.title() for p in PANES} | {"dns": "DNS"}


# What the console needs of a control plane: the control socket's commands (ControlClient is one).
Source = ControlApi


class DaetuiCommands(Provider):
    """The command palette's daetui entries."""

    def _commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        app: DaetuiApp = self.app  # type: ignore[assignment]
        cmds: list[tuple[str, str, Callable[[], Any]]] = [
            (f"Show {PANE_TITLES[p]}", f"switch to the {p} pane", partial(app.action_pane, p)) for p in PANES]
        for short in ("dark", "light", "basic"):
            cmds.append((f"Theme: {short}", f"the {short} theme", partial(app.set_theme, short)))
        cmds += [
            ("Close all shown relayed connections", "as X in Connections",
             lambda: app.query_one(ConnectionsPane).action_close_filtered()),
            ("Pause or resume the log", "as p in Logs", lambda: app.query_one(LogsPane).action_pause()),
            ("Reload the config file", "as R in Rules: shows what changes first", app.preview_reload),
            ("Resolve a name through daetui's DNS", "as l in DNS", app.open_dns_query),
            ("Flush the DNS cache", "as f in DNS: asks first",
             lambda: app.confirm_dns_flush(app.snapshot.dns.cached if app.snapshot and app.snapshot.dns else 0)),
            ("Check every group's nodes now", "as c on a group in Dialers", app.check_all_groups),
            ("Stop daetui (stop routing) and quit", "undoes every change daetui made",
             partial(app.finish, "stop")),
            ("Leave daetui running and quit", "daetui attach comes back", partial(app.finish, "detach")),
            ("Help", "keys of the current pane", app.action_help),
        ]
        return cmds

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
        Binding("1", "pane('overview')", "Overview", show=False),
        Binding("2", "pane('connections')", "Connections", show=False),
        Binding("3", "pane('rules')", "Rules", show=False),
        Binding("4", "pane('maps')", "Maps", show=False),
        Binding("5", "pane('logs')", "Logs", show=False),
        Binding("6", "pane('dns')", "DNS", show=False),
        Binding("7", "pane('dialers')", "Dialers", show=False),
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

    # -- layout --------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        with TabbedContent(initial=self.initial_pane, id="panes"):
            with TabPane("1 Overview", id="overview"):
                yield OverviewPane()
            with TabPane("2 Connections", id="connections"):
                yield ConnectionsPane()
            with TabPane("3 Rules", id="rules"):
                yield RulesPane()
            with TabPane("4 Maps", id="maps"):
                yield MapsPane()
            with TabPane("5 Logs", id="logs"):
                yield LogsPane()
            with TabPane("6 DNS", id="dns"):
                yield DnsPane()
            with TabPane("7 Dialers", id="dialers"):
                yield DialersPane()
        yield Footer()

    def on_mount(self) -> None:
        for theme in load_themes():
            self.register_theme(theme)
        self.theme = self.theme_name
        self.query_one(StatusBar).show_connecting(self.starting_text)
        self.set_interval(0.25, self._flush_logs)
        self._poll()

    def set_theme(self, short: str) -> None:
        self.theme = resolve(short)

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
            if self.active_pane == "connections":
                await self.query_one(ConnectionsPane).refresh_from(snap)
            if self.active_pane == "maps" and self.refresh_count % 2 == 0:
                self.refresh_maps()
            # With very many flows a refresh costs real time: keep the console
            # under about a quarter of a core, whatever the refresh rate asked.
            cost = asyncio.get_running_loop().time() - started
            await asyncio.sleep(max(self.refresh_interval, 3 * cost))

    def _apply(self, snap: Snapshot) -> None:
        self.snapshot = snap
        self.refresh_count += 1
        self.query_one(StatusBar).show(snap)
        self.query_one(OverviewPane).update_snapshot(snap)
        self.query_one(RulesPane).update_snapshot(snap)
        # A few groups and nodes: cheap, and a check's result is read from the pane whichever is shown.
        self.query_one(DialersPane).update_state(snap.groups, snap.nodes)
        if self.active_pane == "dns":
            self.query_one(DnsPane).update_state(snap.dns)

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

    # -- commands from the panes ----------------------------------------------------------------
    def show_flow(self, row: FlowRow) -> None:
        names = {i.index: i.name for i in self.snapshot.interfaces} if self.snapshot else {}
        screen = FlowScreen(row, names)
        self.push_screen(screen)
        self._trace_flow(screen, row, names.get(row.ifindex) if row.ifindex else None)

    @work(group="explain")
    async def _trace_flow(self, screen: FlowScreen, row: FlowRow, iface: str | None) -> None:
        """The rule trace of a flow like this one under the rules now (as `daetui explain`)."""
        if self.source is None:
            return
        host = f"[{row.dst}]" if ":" in row.dst else row.dst
        try:
            result = await self.source.explain(target=f"{host}:{row.dport}", proto=row.proto.lower(),
                                               mac=row.mac or None, src=row.src, sport=row.sport, iface=iface)
        except ControlError as e:
            screen.show_trace(f"explain failed: {e}")
            return
        screen.show_trace(result.text)

    # -- rules: every edit goes through the daemon, which writes the file and reloads --------------
    def edit_rule(self, op: str, index: int, **args: Any) -> None:
        """toggle / set / insert / remove / move a rule (see ControlPlane.edit_rules)."""
        self._edit_rule(op, index, args)

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

    def ask_rule(self, title: str, text: str, op: str, index: int, expect: str | None = None) -> None:
        """The rule editor; what it returns is saved by the daemon (which checks it again)."""
        snap = self.snapshot
        outbounds = set(snap.outbounds.values()) if snap else set()
        config = snap.health.config if snap else None

        def done(new: str | None) -> None:
            if new is not None and new != text:
                args: dict[str, Any] = {"text": new}
                if expect is not None:
                    args["expect"] = expect
                self.edit_rule(op, index, **args)
        self.push_screen(RuleEditScreen(title, text, outbounds, config), done)

    def confirm_remove(self, index: int, text: str) -> None:
        def answer(yes: bool | None) -> None:
            if yes:
                self.edit_rule("remove", index, expect=text)
        self.push_screen(ConfirmScreen(f"Delete rule #{index + 1}?\n\n  {text}\n\n"
                                       "It is removed from the config file (the old file is kept as .bak)."), answer)

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
    def open_dns_query(self) -> None:
        self.action_pane("dns")
        self.query_one(DnsPane).action_query()

    def dns_lookup(self, name: str, qtype: str = "A") -> None:
        """Resolve through the daemon's DNS controller; the DNS pane shows the answer and its route."""
        self._dns_lookup(name, qtype)

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

    def confirm_dns_flush(self, entries: int) -> None:
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
    def check_nodes(self, names: list[str]) -> None:
        """Check nodes (a group: all its members) now; the Dialers pane marks them until it is done."""
        pane = self.query_one(DialersPane)
        for name in names:
            pane.checks_started(name)
        self._check_nodes(names)

    def check_all_groups(self) -> None:
        groups = [g.name for g in self.snapshot.groups] if self.snapshot else []
        if not groups:
            self.notify("no proxy groups in the config", severity="warning")
            return
        self.check_nodes(groups)

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

    def pin_node(self, group: str, node: str | None) -> None:
        """Pin `node` in `group` (None: unpin); new flows of the group go through it while it is alive."""
        self._pin_node(group, node)

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

    def close_flows(self, ids: list[int]) -> None:
        self._close(ids)

    @work(group="close")
    async def _close(self, ids: list[int]) -> None:
        if self.source is None:
            return
        try:
            n = await self.source.close_connections(ids)
            self.notify(f"closed {n} connection{'s' if n != 1 else ''}")
        except ControlError as e:
            self.notify(f"close: {e}", severity="error")

    def confirm_close(self, ids: list[int]) -> None:
        def answer(yes: bool | None) -> None:
            if yes:
                self.close_flows(ids)
        self.push_screen(ConfirmScreen(f"Close the {len(ids)} relayed connection{'s' if len(ids) != 1 else ''} "
                                       "the filter shows? Their clients see a reset."), answer)

    # -- actions ------------------------------------------------------------------------------
    def action_pane(self, pane: str) -> None:
        self.query_one(TabbedContent).active = pane
        self.on_tabbed_content_tab_activated()

    def on_tabbed_content_tab_activated(self, event: object = None) -> None:
        pane = self.active_pane
        if pane == "connections" and self.snapshot is not None:
            self.query_one(ConnectionsPane).update_snapshot(self.snapshot)
            self.query_one(ConnectionsPane).table.focus()
        elif pane == "rules":
            self.query_one(RulesPane).table.focus()
        elif pane == "maps":
            self.query_one(MapsPane).maps.focus()
            self.refresh_maps()
        elif pane == "logs":
            self.query_one("#log-view").focus()
        elif pane == "dns":
            dns = self.query_one(DnsPane)
            if self.snapshot is not None:
                dns.update_state(self.snapshot.dns)
            dns.cache.focus()
        elif pane == "dialers":
            dialers = self.query_one(DialersPane)
            if self.snapshot is not None:
                dialers.update_state(self.snapshot.groups, self.snapshot.nodes)
            dialers.table.focus()

    def _pane_widget(self) -> Any:
        return {"overview": OverviewPane, "connections": ConnectionsPane, "rules": RulesPane, "maps": MapsPane,
                "logs": LogsPane, "dns": DnsPane, "dialers": DialersPane}[self.active_pane]

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.query_one(self._pane_widget()).HELP))

    def action_filter(self) -> None:
        """`/` opens the active pane's filter line, wherever the focus is."""
        pane = self.query_one(self._pane_widget())
        for name in ("action_filter", "action_search"):
            if hasattr(pane, name):
                getattr(pane, name)()
                return

    def action_escape(self) -> None:
        pane = self.query_one(self._pane_widget())
        leave = getattr(pane, "leave_filter", None)
        if leave is not None:
            leave()

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
