"""The outbounds of one config: the nodes, the groups over them, their health, and the dialer for a flow.

A group with no node behaves as before nodes existed: it dials directly
(the lab's sample config relies on it). A group whose nodes are all dead
fails the dial (the connection is reset, and says why).
Checks run every `check_interval` for every node in a group, over IPv4 and
IPv6, TCP (an HTTP request) and, where the protocol has it, UDP (a DNS query);
the TCP checks decide liveness. At most CHECK_CONCURRENCY nodes are checked at
once, however large the groups (a subscription of a thousand nodes would
otherwise dial two thousand connections in the same instant).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from daetui.config.model import Config, GroupSpec
from daetui.net.address import is_address
from daetui.net.address import resolve as resolve_name
from daetui.net.stream import Dialer, DialError
from daetui.outbound.direct import DirectDialer
from daetui.outbound.group import Group, NodeHealth, NodeRef, members, parse_filter
from daetui.outbound.health import CHECK_TIMEOUT, tcp_check, udp_check, url_check
from daetui.outbound.links import LinkError, parse_link, with_allow_insecure
from daetui.outbound.state import GroupState, NodeState
from daetui.outbound.subscription import Resolve, Subscription, SubscriptionResult
from daetui.redact import redact
from daetui.routing.dns_rules import LookupFacts

log = logging.getLogger("daetui.outbound")

# Nodes checked at once. A node's check holds two connections (IPv4 and IPv6), so 32 nodes hold
# at most 64 descriptors, a small share of the relays' budget (control/budget.py: FD_RESERVE). At a
# typical 100-300 ms per check, 32 at a time check a thousand nodes in about 5-10 s, well within the
# default check_interval of 30 s; dead nodes (5 s timeouts) only make the rounds slower, never the
# relays' descriptors fewer.
CHECK_CONCURRENCY = 32
# One-off tests (the controller API's delay tests) at once, in slots of their own so that a dashboard
# testing a thousand nodes never delays the scheduled checks; one connection each.
PROBE_CONCURRENCY = 64
# Direct dialers kept by mark (direct(mark: ..) rules): more marks than this in the rules, and they are made anew.
MAX_MARKED_DIALERS = 256


class NamedDirect:
    """The direct dialer with a node server's name looked up by `resolve` (dae v2's node()/subnode() DNS
    rules say which upstream); everything else is the direct dialer's."""

    def __init__(self, direct: DirectDialer, resolve: Callable[[str], Awaitable[str]]) -> None:
        self.direct = direct
        self.resolve = resolve

    async def connect(self, host: str, port: int) -> Any:
        if not is_address(host):
            try:
                host = await self.resolve(host)
            except Exception as e:   # the upstream's own words: a dial error, not a crash
                raise DialError(f"resolving {host}: {e}") from None
        return await self.direct.connect(host, port)

    async def udp_address(self, host: str, port: int) -> str:
        """A node server's address for a UDP socket (its QUIC or UDP relay), by the node() DNS rules too."""
        if is_address(host):
            return host
        try:
            return await self.resolve(host)
        except Exception as e:   # the upstream's own words: a dial error, not a crash
            raise DialError(f"resolving {host}: {e}") from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.direct, name)


class Outbounds:
    """Nodes, groups and health; `dialer()` answers which dialer a new flow uses."""

    def __init__(self, config: Config, direct: DirectDialer, resolve: Resolve | None = None) -> None:
        self.direct = direct
        self.resolve = resolve  # how subscriptions find their server's address (None: the system's resolver)
        # dae v2's sub()/node()/subnode() DNS rules: daetui's own lookups through the upstream they name
        # (the control plane's DnsService.resolve_own); None: subscriptions by `resolve`, nodes by the system.
        self.resolve_own: Callable[[str, LookupFacts], Awaitable[str]] | None = None
        self._node_sub: dict[str, str] = {}
        self.nodes: dict[str, Any] = {}
        self.health: dict[str, NodeHealth] = {}
        self.groups: dict[str, Group] = {}
        self._specs: dict[str, GroupSpec] = {}
        self._dialers: dict[str, Dialer] = {}
        self._marked: dict[int, DirectDialer] = {}
        self.marks_on_dials = True   # False: wan_egress knows daetui's sockets by so_mark_from_dae alone (plane)
        self._checker: asyncio.Task[None] | None = None
        self._checks: dict[str, asyncio.Task[None]] = {}
        self._check_slots: asyncio.Semaphore | None = None   # CHECK_CONCURRENCY; made on the loop that checks
        self.subscriptions: dict[str, Subscription] = {}
        self._sub_nodes: dict[str, list[tuple[str, Any]]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._started = False
        self.on_health: Callable[[], None] | None = None   # told after checks: group liveness may have changed
        self._probe_slots: asyncio.Semaphore | None = None   # PROBE_CONCURRENCY; made on the loop that probes
        self._probe_tls: dict[bool, ssl.SSLContext] = {}     # by allow_insecure
        self._refreshing: dict[str, asyncio.Task[SubscriptionResult]] = {}   # subscription fetches asked for now
        self.config = config
        self.configure(config)

    # -- configuration ----------------------------------------------------------------
    def configure(self, config: Config) -> None:
        """Take a new config's nodes, subscriptions and groups; health and pins of what stays are kept."""
        self.config = config
        wanted = {t.tag: t.link for t in config.subscriptions}
        for tag in [t for t in self.subscriptions if t not in wanted or self.subscriptions[t].url != wanted[t]]:
            self._stop_later(self.subscriptions.pop(tag))
            self._sub_nodes.pop(tag, None)
        for tag, url in wanted.items():
            if tag not in self.subscriptions:
                self.subscriptions[tag] = self._subscription(tag, url)
                if self._started:
                    self._start_subscription(self.subscriptions[tag])
            else:
                self.subscriptions[tag].interval = config.global_.subscription_interval  # from its next fetch
        self._rebuild()

    def _subscription(self, tag: str, url: str) -> Subscription:
        g = self.config.global_
        source = Path(self.config.source)
        # dae keeps subscription copies in persist.d beside its config; so does daetui (a config given
        # as text, as tests do, keeps them in the temp dir).
        config_dir = source.resolve().parent if source.is_file() else Path(tempfile.gettempdir())
        state = config_dir / "persist.d" if source.is_file() else config_dir / "daetui-persist.d"
        resolve = functools.partial(self._resolve_subscription, facts=LookupFacts("sub", tag, link=url))
        return Subscription(tag, url, state, mark=g.so_mark_from_dae, resolve=resolve,
                            config_dir=config_dir, taken=[t.tag for t in self.config.nodes],
                            interval=g.subscription_interval)

    def _rebuild(self) -> None:
        config = self.config
        nodes: dict[str, Any] = {}
        refs = []
        for tagged in config.nodes:
            try:
                nodes[tagged.tag] = parse_link(tagged.link, tagged.tag)
            except LinkError as e:
                log.error("node %s: %s (left out)", tagged.tag, e)
                continue
            refs.append(NodeRef(tagged.tag))
        self._node_sub = {}
        for tag, sub_nodes in self._sub_nodes.items():
            for name, node in sub_nodes:
                if name not in nodes:
                    nodes[name] = node
                    refs.append(NodeRef(name, tag))
                    self._node_sub[name] = tag
        if config.global_.allow_insecure:
            nodes = {n: with_allow_insecure(node) for n, node in nodes.items()}
        groups: dict[str, Group] = {}
        for spec in config.groups:
            old = self.groups.get(spec.name)
            tolerance = spec.check_tolerance if spec.check_tolerance is not None else config.global_.check_tolerance
            g = Group(spec.name, spec.policy, tolerance)
            g.set_members([(n.name, add) for n, add in members(tuple(parse_filter(f) for f in spec.filters), refs)])
            if old is not None and old.pinned in {m for m, _ in g.members}:
                g.pinned = old.pinned
            groups[spec.name] = g
        self.nodes = nodes
        self.health = {n: self.health.get(n) or NodeHealth(n) for n in nodes}
        self._dialers = {}
        self.groups = groups
        self._specs = {s.name: s for s in config.groups}
        gl = config.global_
        self._node_settings: dict[str, tuple[tuple[str, ...], str, tuple[str, ...], float]] = {}
        for spec in config.groups:  # a node in several groups is checked as its first group says
            for m, _ in groups[spec.name].members:
                self._node_settings.setdefault(m, (
                    spec.tcp_check_url or gl.tcp_check_url, spec.tcp_check_http_method or gl.tcp_check_http_method,
                    spec.udp_check_dns or gl.udp_check_dns, spec.check_interval or gl.check_interval))
        self._changed()

    def _take(self, result: SubscriptionResult) -> None:
        """A subscription's nodes (fetched, or its saved copy): the groups are made again."""
        if result.tag not in self.subscriptions:
            return
        log.info("%s", result.summary())   # the summary names the subscription
        for e in result.errors:
            log.warning("subscription %s: %s (skipped)", result.tag, e)
        if result.nodes or result.ok:
            self._sub_nodes[result.tag] = list(result.nodes)
            self._rebuild()

    def _start_subscription(self, sub: Subscription) -> None:
        saved = sub.load_saved()
        if saved is not None:
            self._take(saved)  # nodes before the network is up
        sub.start(self._take)

    def _stop_later(self, sub: Subscription) -> None:
        with contextlib.suppress(RuntimeError):
            task = asyncio.get_running_loop().create_task(sub.stop())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _resolve_subscription(self, host: str, facts: LookupFacts) -> str:
        """A subscription server's address, asked when it is fetched (so the resolvers the control plane
        installs after making this object count): a sub() DNS rule's upstream, the bootstrap resolver, or
        the system's."""
        if self.resolve_own is not None and self._internal_rules():
            return await self.resolve_own(host, facts)
        if self.resolve is not None and self.config.global_.resolver:
            return await self.resolve(host)
        return await resolve_name(host, 0)

    def _internal_rules(self) -> bool:
        compiled = self.config.dns.compiled
        return compiled is not None and bool(compiled.request.internal)

    def node_resolver(self, node: str) -> Callable[[str], Awaitable[str]] | None:
        """How `node`'s server name is looked up: through dae v2's node() DNS rules (the control plane's
        resolve_own), or None: the system's resolver, as the direct dialer does."""
        if self.resolve_own is None or not self._internal_rules():
            return None
        link = self.nodes[node].link() if hasattr(self.nodes[node], "link") else ""
        facts = LookupFacts("node", tag=self._node_sub.get(node, ""), name=node, link=link)
        return functools.partial(self.resolve_own, facts=facts)

    def _dialer_of(self, node: str) -> Dialer:
        d = self._dialers.get(node)
        if d is None:
            resolver = self.node_resolver(node)
            via: Any = self.direct if resolver is None else NamedDirect(self.direct, resolver)
            d = self._dialers[node] = self.nodes[node].dialer(via)
        return d

    def dial_mark(self, mark: int) -> int:
        """The mark a direct dial of a `direct(mark: ..)` flow carries: the rule's, as dae's do, for the policy
        routing that picks a WAN by it (wan_egress knows daetui's sockets by the process); 0, so_mark_from_dae,
        where it could not (marks_on_dials) or the rule has none."""
        return mark if self.marks_on_dials and mark != self.direct.mark else 0

    def direct_for(self, mark: int) -> DirectDialer:
        """The direct dialer of a flow a `direct(mark: ..)` rule routed (see dial_mark)."""
        mark = self.dial_mark(mark)
        if not mark:
            return self.direct
        d = self._marked.get(mark)
        if d is None:
            if len(self._marked) >= MAX_MARKED_DIALERS:   # marks come from the rules: a reload's worth
                self._marked.clear()
            d = self._marked[mark] = dataclasses.replace(self.direct, mark=mark)
        return d

    def dialer(self, outbound: str, family: int = 4, mark: int = 0) -> tuple[Dialer, str | None]:
        """The dialer for a flow routed to `outbound` (with its rule's `mark`, for direct), and the node it goes
        through (None: direct)."""
        g = self.groups.get(outbound)
        if g is None or not g.members:
            return self.direct_for(mark), None
        node = g.select(self.health, family)
        if node is None:
            # As the kernel does for the flows it decides (global.dead_group): direct, or refused.
            if self.config.global_.dead_group == "direct":
                return self.direct, None
            raise DialError(f"group {outbound}: no live node over IPv{family}")
        return self._dialer_of(node), node

    def failed(self, node: str, family: int, error: str) -> None:
        """A dial through `node` failed: it counts as a failed check, so the next flow picks another."""
        h = self.health.get(node)
        if h is not None:
            h.families[family].record(None, error)
            log.info("node %s: IPv%d dial failed: %s", node, family, error)
            self._changed()

    def dead_families(self, group: str) -> set[int]:
        """The IP families over which `group` has nodes but none alive (a group of no node is never dead)."""
        g = self.groups.get(group)
        if g is None or not g.members:
            return set()
        return {f for f in (4, 6) if not any(self.health[m].alive(f) for m, _ in g.members if m in self.health)}

    def _changed(self) -> None:
        if self.on_health is not None:
            self.on_health()

    def pin(self, group: str, node: str | None) -> None:
        """Make a group use `node` while it is alive (None: the policy again)."""
        g = self.groups[group]
        if node is not None and node not in {m for m, _ in g.members}:
            raise KeyError(f"{node} is not in group {group}")
        g.pinned = node

    # -- health --------------------------------------------------------------------------
    def _settings(self, node: str) -> tuple[tuple[str, ...], str, tuple[str, ...], float]:
        """The check settings for a node: its first group's own, else [global]'s (worked out per rebuild)."""
        gl = self.config.global_
        return self._node_settings.get(node) or (gl.tcp_check_url, gl.tcp_check_http_method, gl.udp_check_dns,
                                                 gl.check_interval)

    def checked_nodes(self) -> list[str]:
        return list(self._node_settings)

    async def check_node(self, node: str) -> None:
        """Check one node now: TCP over both families (liveness), then UDP (its latency is logged).

        Each check gets at most check_interval (and 5 s), so a dead node is seen within one interval.
        At most CHECK_CONCURRENCY nodes are checked at once; a check's time starts once it has its turn.
        """
        if self._check_slots is None:
            self._check_slots = asyncio.Semaphore(CHECK_CONCURRENCY)
        async with self._check_slots:
            await self._check_node(node)

    async def _check_node(self, node: str) -> None:
        url, method, dns_check, interval = self._settings(node)
        timeout = min(CHECK_TIMEOUT, max(interval, 0.5))
        dialer = self._dialer_of(node)
        h = self.health[node]

        async def tcp(family: int) -> None:
            try:
                h.families[family].record(await tcp_check(dialer, url, family, method, timeout))
            except (DialError, OSError, TimeoutError) as e:
                h.families[family].record(None, str(e) or type(e).__name__)
                log.info("node %s: IPv%d check failed: %s", node, family, str(e) or type(e).__name__)

        async def udp(family: int) -> None:
            with contextlib.suppress(DialError, OSError, TimeoutError):
                latency = await udp_check(dialer, dns_check, family, timeout)
                log.debug("node %s: IPv%d UDP check %.1f ms", node, family, latency * 1000)

        await asyncio.gather(tcp(4), tcp(6))
        self._changed()
        await asyncio.gather(udp(4), udp(6))

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check_node(n) for n in self.checked_nodes()), return_exceptions=True)

    def start(self) -> None:
        self._started = True
        for sub in self.subscriptions.values():
            self._start_subscription(sub)
        self._checker = asyncio.get_running_loop().create_task(self._check_loop())

    async def stop(self) -> None:
        for sub in self.subscriptions.values():
            await sub.stop()
        tasks = [t for t in (self._checker, *self._checks.values(), *self._closing) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _check_loop(self) -> None:
        """Every node in a group, every check_interval; one node's slow check never holds up another's."""
        last: dict[str, float] = {}
        while True:
            now = time.monotonic()
            for n in self.checked_nodes():
                running = self._checks.get(n)
                if (running is None or running.done()) and now - last.get(n, -1e9) >= self._settings(n)[3]:
                    last[n] = now
                    self._checks[n] = asyncio.get_running_loop().create_task(self.check_node(n))
            await asyncio.sleep(0.25)

    # -- the controller API: one-off tests, a subscription fetched now --------------------------------
    def node_source(self, node: str) -> str:
        """The tag of the subscription `node` came from; "" for the config's own nodes."""
        return self._node_sub.get(node, "")

    def check_url(self, node: str) -> str:
        """The URL the scheduled checks of `node` ask (its first group's tcp_check_url, else [global]'s)."""
        return self._settings(node)[0][0]

    async def probe(self, name: str | None, url: str, timeout: float,
                    expected: Callable[[int], bool] | None = None) -> float:
        """Seconds to `url`'s answer through node `name` now: a group's name means the node it picks now for
        IPv4 (or direct, as dialer() says), None the direct dialer. See health.url_check.

        A one-off (the controller API's delay test): nothing is recorded in the node's health, since the
        URL and timeout are the caller's, not the group's; the scheduled checks alone decide which node
        flows get. At most PROBE_CONCURRENCY at once; `timeout` covers the wait for a turn too.
        DialError (or TimeoutError, OSError) says why not.
        """
        tls = await self._probe_context() if url[:6].lower() == "https:" else None
        if self._probe_slots is None:
            self._probe_slots = asyncio.Semaphore(PROBE_CONCURRENCY)
        async with asyncio.timeout(timeout):
            async with self._probe_slots:
                if name is None:
                    dialer: Dialer = self.direct
                elif name in self.groups:
                    dialer = self.dialer(name)[0]
                elif name in self.nodes:
                    dialer = self._dialer_of(name)
                else:
                    raise DialError(f"no node or group {name}")
                return await url_check(dialer, url, timeout, expected=expected, tls=tls)

    async def _probe_context(self) -> ssl.SSLContext:
        insecure = self.config.global_.allow_insecure
        ctx = self._probe_tls.get(insecure)
        if ctx is None:
            # Loading the system's CAs reads files: off the loop, once.
            ctx = await asyncio.to_thread(ssl.create_default_context)
            if insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._probe_tls[insecure] = ctx
        return ctx

    async def refresh_subscription(self, tag: str) -> SubscriptionResult:
        """Fetch subscription `tag` now and take its nodes, as a scheduled refresh does (KeyError: no such
        subscription). The schedule is kept. Asked again while a fetch is under way, the same fetch answers."""
        sub = self.subscriptions[tag]
        task = self._refreshing.get(tag)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._refresh(sub), name=f"refresh {tag}")
            self._refreshing[tag] = task
            self._closing.add(task)   # stop() cancels it with the rest

            def done(t: asyncio.Task[SubscriptionResult]) -> None:
                self._closing.discard(t)
                if self._refreshing.get(tag) is t:
                    del self._refreshing[tag]
            task.add_done_callback(done)
        return await asyncio.shield(task)   # a caller that gives up does not stop the fetch

    async def _refresh(self, sub: Subscription) -> SubscriptionResult:
        next_at = sub.result.next_at if sub.result is not None else None
        result = await sub.fetch()
        if next_at is not None:
            result = dataclasses.replace(result, next_at=next_at)
        if self.subscriptions.get(sub.tag) is sub:   # not replaced by a reload meanwhile
            sub.result = result
            self._take(result)
        return result

    # -- the console -------------------------------------------------------------------------
    def state(self) -> tuple[tuple[GroupState, ...], tuple[NodeState, ...]]:
        def chosen(g: Group, family: int) -> str | None:
            # What the next flow gets (random has no one answer).
            return None if g.policy == "random" else g.select(self.health, family)

        groups = tuple(GroupState(g.name, self._specs[g.name].policy, tuple(m for m, _ in g.members),
                                  chosen(g, 4), chosen(g, 6), g.pinned) for g in self.groups.values())
        nodes = []
        for name, node in self.nodes.items():
            h = self.health[name]
            f4, f6 = h.families[4], h.families[6]
            nodes.append(NodeState(name, node.protocol, f"{node.host}:{node.port}",
                                   f4.alive, f6.alive, tuple(f4.latencies), tuple(f6.latencies),
                                   redact(f4.last_error or f6.last_error)))
        return groups, tuple(nodes)
