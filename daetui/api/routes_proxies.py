"""The controller API's proxies, groups and providers: mihomo's /proxies, /group and /providers/proxies.

daetui's things in mihomo's words (the shapes are mihomo's, hub/route/proxies.go, groups.go, provider.go):

- A node is a proxy whose `type` is its protocol as mihomo names it: Shadowsocks, Vmess, Vless, Trojan,
  Socks5, Http (https:// nodes too: mihomo's Http with TLS), Socks4 (socks4/socks4a, which mihomo has
  not), Relay (a chain `a -> b`, which mihomo writes as a relay).
- A group's `type` is the mihomo group that picks as its policy does:
    min, min_avg10, min_moving_avg -> URLTest      the lowest latency by that measure; check_tolerance is
                                                   mihomo's tolerance
    fixed(N)                       -> Selector     the config selects the Nth node; it never fails over
    random                         -> LoadBalance  a live node per connection: no `now`, unless pinned
  None is a Fallback: no daetui policy takes the first live node in order.
  `now` is the node the next IPv4 flow gets (the pinned one while it is alive); when no node is alive,
  DIRECT or REJECT as global.dead_group says, and DIRECT for a group of no node (it relays directly).
  `fixed` (URLTest's) is the pin. PUT pins a node in any group (a pin beats every policy in daetui),
  DELETE unpins any group (mihomo refuses DELETE on a Selector; daetui's pin is one thing for all).
  Unlike mihomo, testing a group's delay does not unpin it: a test never changes where flows go.
- DIRECT and REJECT are daetui's `direct` and `block`.
- GLOBAL is mihomo's Selector for its "global" mode, which daetui has not: daetui's routing rules decide
  every flow, so GLOBAL cannot route. It is listed because dashboards read it (the order of GLOBAL.all is
  the order they show groups in): `all` is mihomo's (DIRECT, REJECT, the config's nodes, the groups),
  `now` names where flows that no rule matches go (routing.fallback), and PUT on it is refused.
- Providers: each [subscription] is one (vehicleType HTTP, or File for file://) holding the nodes it
  brought; `updatedAt` is when those nodes were fetched. "default" is mihomo's compatible provider:
  DIRECT, REJECT, the config's own [node] entries and the groups. PUT fetches a subscription now (503
  with the reason when the fetch fails, its saved copy then still in use); /healthcheck runs the
  scheduled checks of its nodes now. daetui does not read subscription-userinfo: no subscriptionInfo.

Latency: `history` holds the node's last scheduled check (delay 0: it failed) and the delay tests asked
through this API (mihomo records those too), each with its time, the newest last; `extra` holds them per
URL (the scheduled check under its check URL). The daemon keeps its earlier checks' latencies but not
their times, so those are not shown. `alive` is the scheduled checks' verdict (over IPv4 or IPv6): a
delay test through the API changes neither it nor which node flows get (Outbounds.probe).

Secrets: an answer names a node, its type and its health, never its link, password, UUID or
subscription URL; error messages are redacted (errors.error).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from daetui.api.context import ApiContext
from daetui.api.errors import TIMEOUT, ApiError, bad_request, json_object, not_found
from daetui.control.plane import ControlPlane
from daetui.control.state import Snapshot
from daetui.outbound.group import parse_policy
from daetui.outbound.links import scheme_of
from daetui.outbound.state import GroupState, NodeState
from daetui.redact import redact

log = logging.getLogger("daetui.api")

DIRECT, REJECT, GLOBAL = "DIRECT", "REJECT", "GLOBAL"
DEFAULT_PROVIDER = "default"       # mihomo's provider.ReservedName
HISTORY = 10                       # tests kept per name and URL (mihomo's defaultHistoriesNum)
TEST_URLS = 8                      # URLs whose tests are kept per name; the least recently tested forgotten
MAX_DELAY_TIMEOUT = 32767          # ms: mihomo reads /proxies/X/delay's timeout as an int16
MAX_GROUP_TIMEOUT = 2**31 - 1      # ms: and /group/X/delay's as an int32 ...
GROUP_WAIT = 60.0                  # ... but a group's test waits at most this long (s), whatever it is asked
EXPECTED = "200-399"               # the statuses daetui's scheduled checks take (health.tcp_check)
GO_ZERO_TIME = "0001-01-01T00:00:00Z"   # what mihomo writes for a provider never updated
BIG = 256                          # entries above which an answer is encoded off the loop
DELAY_FAILED = "An error occurred in the delay test"
ALL_TIMEOUT = "get delay: all proxies timeout"
GLOBAL_REFUSED = "GLOBAL cannot be set: daetui has no global mode, its routing rules decide every flow"
NOT_IN_GROUP = "Selector update error: proxy not exist"
NOT_A_GROUP = "Must be a Selector"

TYPES = {"ss": "Shadowsocks", "vmess": "Vmess", "vless": "Vless", "trojan": "Trojan", "socks5": "Socks5",
         "socks4": "Socks4", "socks4a": "Socks4", "http": "Http", "https": "Http", "hysteria2": "Hysteria2",
         "tuic": "Tuic", "anytls": "AnyTLS", "chain": "Relay"}
GROUP_TYPES = {"random": "LoadBalance", "fixed": "Selector", "min": "URLTest", "min_avg10": "URLTest",
               "min_moving_avg": "URLTest"}
# the protocols whose dialers carry datagrams
UDP = {"ss", "trojan", "vless", "vmess", "socks5", "tuic", "hysteria2", "anytls"}
# A chain's datagrams go through its last hop over the hops before it: only protocols that carry UDP
# inside their TCP stream manage that (ss and socks5 need a UDP socket to their server).
CHAIN_UDP = {"trojan", "vless", "vmess", "anytls"}
_ID_SPACE = uuid.UUID("6f1c1d7e-2b0a-4c55-9a51-6b1c0e7d2a14")

Json = dict[str, Any]


def _time(t: float) -> str:
    """A Unix time as mihomo writes one (RFC 3339 in local time)."""
    return datetime.fromtimestamp(t).astimezone().isoformat()


def _ms(seconds: float) -> int:
    # A test that worked is at least 1 ms: mihomo reads delay 0 as a failure. uint16 in mihomo.
    return min(65535, max(1, round(seconds * 1000)))


def _id(kind: str, name: str, address: str = "") -> str:
    # Stable while the proxy is the same (name, kind, server): mihomo's id is per adapter object. No secret in it.
    return str(uuid.uuid5(_ID_SPACE, f"{kind}\0{name}\0{address}"))


class DelayBook:
    """The delay tests asked through the API, per name and URL, with their times.

    mihomo keeps them in the proxy's `history` and `extra[url]`; so does this, bounded: HISTORY
    tests per URL, TEST_URLS URLs per name, and names no longer listed are forgotten (`prune`).
    """

    def __init__(self) -> None:
        self._tests: dict[str, dict[str, deque[tuple[float, int]]]] = {}

    def __len__(self) -> int:
        return len(self._tests)

    def record(self, name: str, url: str, ms: int) -> None:
        """A test of `name` with `url`: `ms` its delay, 0 when it failed."""
        urls = self._tests.setdefault(name, {})
        tests = urls.pop(url, None) or deque(maxlen=HISTORY)
        tests.append((time.time(), ms))
        urls[url] = tests                       # the most recently tested URL last
        while len(urls) > TEST_URLS:
            del urls[next(iter(urls))]

    def tests(self, name: str) -> dict[str, deque[tuple[float, int]]]:
        """`name`'s tests by URL: (Unix time, ms) oldest first."""
        return self._tests.get(name, {})

    def prune(self, names: Collection[str]) -> None:
        """Forget the names not in `names`."""
        for gone in [n for n in self._tests if n not in names]:
            del self._tests[gone]


def _entries(tests: Collection[tuple[float, int]]) -> list[Json]:
    return [{"time": _time(t), "delay": ms} for t, ms in sorted(tests)[-HISTORY:]]


def _latency(book: DelayBook, name: str, check: tuple[float, int] | None, check_url: str,
             alive: bool) -> Json:
    """`history`, `extra` (and `alive`) of one name: its last scheduled check and the API's tests."""
    by_url = book.tests(name)
    every = [x for tests in by_url.values() for x in tests] + ([check] if check is not None else [])
    extra: Json = {}
    for url, tests in by_url.items():
        mine = list(tests) + ([check] if check is not None and url == check_url else [])
        last = max(mine)
        extra[url] = {"alive": alive if url == check_url and last == check else last[1] > 0,
                      "history": _entries(mine)}
    if check is not None and check_url and check_url not in extra:
        extra[check_url] = {"alive": alive, "history": _entries([check])}
    return {"alive": alive, "history": _entries(every), "extra": extra}


def _common(name: str, kind: str, udp: bool, mark: int, ident: str) -> Json:
    """The fields mihomo's Proxy.MarshalJSON adds to every proxy (those daetui has no use for: false, "")."""
    return {"name": name, "type": kind, "id": ident, "udp": udp, "uot": False, "xudp": False, "tfo": False,
            "mptcp": False, "smux": False, "interface": "", "dialer-proxy": "", "routing-mark": mark}


def _node_udp(node: Any) -> bool:
    if node is None:
        return False
    if node.protocol == "chain":
        return bool(node.hops) and node.hops[-1].protocol in CHAIN_UDP
    return node.protocol in UDP


@dataclass
class Catalog:
    """Every proxy /proxies lists, as mihomo's JSON objects, built from one snapshot and the outbounds."""

    entries: dict[str, Json] = field(default_factory=dict)    # by name: what /proxies answers
    nodes: dict[str, Json] = field(default_factory=dict)      # the nodes alone (a group may shadow one's name)
    groups: dict[str, GroupState] = field(default_factory=dict)
    own_nodes: list[str] = field(default_factory=list)        # the config's [node] entries, in order
    by_provider: dict[str, list[str]] = field(default_factory=dict)   # subscription tag -> its nodes
    global_all: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, plane: ControlPlane, snap: Snapshot, book: DelayBook) -> Catalog:
        """The snapshot's nodes and groups, with what only the outbounds know (checks' times, sources, UDP)."""
        out = plane.outbounds
        config = out.config
        g = config.global_
        mark = g.so_mark_from_dae
        cat = cls()
        alive = {n.name: n.alive4 or n.alive6 for n in snap.nodes}
        alive4 = {n.name: n.alive4 for n in snap.nodes}
        udp = {n.name: _node_udp(out.nodes.get(n.name)) for n in snap.nodes}

        def builtin(name: str, kind: str) -> Json:
            return _common(name, kind, True, mark, _id(kind, name)) | _latency(book, name, None, "", True)

        cat.entries[DIRECT] = builtin(DIRECT, "Direct")
        cat.entries[REJECT] = builtin(REJECT, "Reject")
        for n in snap.nodes:
            cat.nodes[n.name] = cat.entries[n.name] = cls._node(n, out, book, mark, udp[n.name])
            source = out.node_source(n.name)
            if source:
                cat.by_provider.setdefault(source, []).append(n.name)
            else:
                cat.own_nodes.append(n.name)
        specs = {s.name: s for s in config.groups}
        for gr in snap.groups:
            kind, _ = parse_policy(gr.policy)
            spec = specs.get(gr.name)
            now = cls._now(gr, kind, alive4, g.dead_group)
            members_alive = [alive.get(m, True) for m in gr.members]
            # UDP as the node in use carries it (DIRECT and REJECT: yes); with no one node, as any member does.
            group_udp = udp.get(now, True) if now is not None else any(udp.get(m, False) for m in gr.members)
            d = _common(gr.name, GROUP_TYPES[kind], group_udp, mark, _id("group", gr.name))
            d |= _latency(book, gr.name, None, "", not members_alive or any(members_alive))
            if now is not None:
                d["now"] = now
            d["all"] = list(gr.members)
            d["testUrl"] = ((spec.tcp_check_url if spec and spec.tcp_check_url else None) or g.tcp_check_url)[0]
            d["expectedStatus"] = EXPECTED
            if GROUP_TYPES[kind] == "URLTest":
                d["fixed"] = gr.pinned or ""
            d["hidden"] = False
            d["icon"] = ""
            cat.entries[gr.name] = d
            cat.groups[gr.name] = gr
        cat.global_all = [DIRECT, REJECT, *cat.own_nodes, *cat.groups]
        if GLOBAL not in cat.entries:   # a group or node of the user's called GLOBAL is theirs, as in mihomo
            d = _common(GLOBAL, "Selector", True, mark, _id("group", GLOBAL))
            d |= _latency(book, GLOBAL, None, "", True)
            d |= {"now": fallback_name(plane, cat.groups), "all": cat.global_all, "hidden": False, "icon": ""}
            cat.entries[GLOBAL] = d
        return cat

    @staticmethod
    def _node(n: NodeState, out: Any, book: DelayBook, mark: int, udp: bool) -> Json:
        kind = TYPES.get(n.protocol, n.protocol.capitalize())
        check = None
        h = out.health.get(n.name)
        if h is not None:
            fam = h.families[4] if h.families[4].checked_at is not None else h.families[6]
            if fam.checked_at is not None and fam.latencies:
                last = fam.latencies[-1]
                check = (fam.checked_at, 0 if last is None else _ms(last))
        check_url = out.check_url(n.name) if n.name in out.nodes else ""
        return _common(n.name, kind, udp, mark, _id(kind, n.name, n.address)) | _latency(
            book, n.name, check, check_url, n.alive4 or n.alive6)

    @staticmethod
    def _now(gr: GroupState, kind: str, alive4: dict[str, bool], dead_group: str) -> str | None:
        """The node the group's next IPv4 flow gets, DIRECT/REJECT when it has none; None: no one answer."""
        if not gr.members:
            return DIRECT   # a group of no node relays directly
        if kind == "random":
            return gr.pinned if gr.pinned and alive4.get(gr.pinned, True) else None
        if gr.selected4:
            return gr.selected4
        return DIRECT if dead_group == "direct" else REJECT


def fallback_name(plane: ControlPlane, groups: Collection[str]) -> str:
    """Where flows that no rule matches go, as a name /proxies lists (GLOBAL's `now`)."""
    fallback = plane.ruleset.fallback
    if fallback in groups:
        return fallback
    return REJECT if fallback == "block" else DIRECT   # direct, or a group never declared (relayed directly)


# -- requests -----------------------------------------------------------------------------------------------

def _sorted(mapping: dict[str, Any]) -> dict[str, Any]:
    # mihomo's maps come out with their keys sorted (Go's encoding/json); clients that keep the order show it.
    return dict(sorted(mapping.items()))


async def _json(payload: Any, big: bool = False) -> web.Response:
    """A JSON answer; a big one (thousands of nodes) encoded in a thread, so the relays never wait on it."""
    text = await asyncio.to_thread(json.dumps, payload, ensure_ascii=False) if big else json.dumps(
        payload, ensure_ascii=False)
    return web.Response(text=text, content_type="application/json")


async def _pinned_name(request: web.Request) -> str:
    """PUT /proxies/GROUP's body, `{"name": NODE}`; 400 Body invalid when it is not that."""
    body = json_object(await request.read())
    if not isinstance(body.get("name", ""), str):
        raise bad_request()
    return str(body.get("name", ""))


_INT = re.compile(r"[0-9]{1,10}")


def expected_statuses(text: str) -> Callable[[int], bool] | None:
    """mihomo's `expected`: `200`, `200/302`, `200-299/404` (commas as slashes); None (any) when empty or `*`.

    ValueError when it is none of those."""
    text = text.strip()
    if not text or text == "*":
        return None
    items = [i for i in text.replace(",", "/").split("/") if i]
    if len(items) > 28:
        raise ValueError("too many ranges")
    ranges = []
    for item in items:
        ends = [e.strip("[ ]") for e in item.split("-")]
        if len(ends) > 2 or not all(_INT.fullmatch(e) and int(e) <= 65535 for e in ends):
            raise ValueError(f"bad range {item!r}")
        ranges.append((int(ends[0]), int(ends[-1])))
    return lambda status: any(lo <= status <= hi for lo, hi in ranges)


def delay_params(request: web.Request, max_timeout: int) -> tuple[str, float, Callable[[int], bool] | None]:
    """`?url=&timeout=` (ms) `[&expected=]`: the URL, the timeout in seconds, the statuses; 400 when bad."""
    q = request.query
    url, timeout = q.get("url", ""), q.get("timeout", "")
    if not _INT.fullmatch(timeout) or not 0 < int(timeout) <= max_timeout:
        raise bad_request()
    try:
        parts = urlsplit(url)
        _ = parts.port
        expected = expected_statuses(q.get("expected", ""))
    except ValueError:
        raise bad_request() from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad_request()
    return url, int(timeout) / 1000, expected


def routes(ctx: ApiContext) -> list[web.RouteDef]:
    """/proxies, /group and /providers/proxies (see the module's docstring)."""
    plane = ctx.plane
    book = DelayBook()
    checks: dict[str, asyncio.Task[None]] = {}   # provider health checks under way, by provider

    async def catalog(fresh: bool = False) -> Catalog:
        cat = Catalog.build(plane, await ctx.snapshot(fresh=fresh), book)
        book.prune(cat.entries)
        return cat

    def entry(cat: Catalog, request: web.Request) -> tuple[str, Json]:
        name = request.match_info["name"]
        found = cat.entries.get(name)
        if found is None:
            raise not_found()
        return name, found

    # Commands and tests look names up in the outbounds as they are now, not in a catalog: a dashboard
    # testing a thousand nodes one by one must not cost a thousand catalogs. The same precedence as
    # Catalog.build: a group, else a node, else DIRECT, REJECT or GLOBAL.
    def kind_of(name: str) -> str:
        """"group", "node", the builtin's own name, or 404."""
        out = plane.outbounds
        if name in out.groups:
            return "group"
        if name in out.nodes:
            return "node"
        if name in (DIRECT, REJECT, GLOBAL):
            return name
        raise not_found()

    def global_all() -> list[str]:
        out = plane.outbounds
        return [DIRECT, REJECT, *(n for n in out.nodes if not out.node_source(n)), *out.groups]

    async def test(name: str, url: str, timeout: float, expected: Callable[[int], bool] | None) -> int:
        """One delay test of `name`, recorded in the book: its ms; ApiError 504/503 as mihomo's."""
        kind = kind_of(name)
        if kind == GLOBAL:
            target = fallback_name(plane, plane.outbounds.groups)   # where GLOBAL's `now` says flows go
            kind = target if target in (DIRECT, REJECT) else "group"
        else:
            target = name
        try:
            if kind == REJECT:
                raise ApiError(503, DELAY_FAILED)   # as mihomo's REJECT: a dial that never connects
            seconds = await plane.outbounds.probe(None if kind == DIRECT else target, url, timeout, expected)
        except TimeoutError:
            book.record(name, url, 0)
            raise ApiError(504, TIMEOUT) from None
        except ApiError:
            book.record(name, url, 0)
            raise
        except Exception as e:   # DialError, OSError, TLS: the test failed, and why is logged
            book.record(name, url, 0)
            log.info("controller API: delay test of %s failed: %s", name, redact(f"{type(e).__name__}: {e}"))
            raise ApiError(503, DELAY_FAILED) from None
        ms = _ms(seconds)
        book.record(name, url, ms)
        if len(book) > len(plane.outbounds.nodes) + len(plane.outbounds.groups) + 1024:
            book.prune({*plane.outbounds.nodes, *plane.outbounds.groups, DIRECT, REJECT, GLOBAL})
        return ms

    # -- /proxies ------------------------------------------------------------------------------------
    async def get_proxies(request: web.Request) -> web.Response:
        cat = await catalog()
        return await _json({"proxies": _sorted(cat.entries)}, big=len(cat.entries) > BIG)

    async def get_proxy(request: web.Request) -> web.Response:
        _, found = entry(await catalog(), request)
        return await _json(found)

    async def put_proxy(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        kind = kind_of(name)
        node = await _pinned_name(request)
        if kind != "group":
            raise bad_request(GLOBAL_REFUSED if kind == GLOBAL else NOT_A_GROUP)
        if node not in {m for m, _ in plane.outbounds.groups[name].members}:
            raise bad_request(NOT_IN_GROUP)
        plane.pin_node(name, node)
        await ctx.snapshot(fresh=True)   # the next GET sees the pin
        return web.Response(status=204)

    async def delete_proxy(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if kind_of(name) != "group":
            raise bad_request()
        plane.pin_node(name, None)
        await ctx.snapshot(fresh=True)
        return web.Response(status=204)

    async def proxy_delay(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        kind_of(name)
        url, timeout, expected = delay_params(request, MAX_DELAY_TIMEOUT)
        return await _json({"delay": await test(name, url, timeout, expected)})

    # -- /group --------------------------------------------------------------------------------------
    def group_names(cat: Catalog) -> list[str]:
        return [*cat.groups, *([GLOBAL] if GLOBAL not in cat.groups and GLOBAL not in cat.nodes else [])]

    async def get_groups(request: web.Request) -> web.Response:
        cat = await catalog()
        return await _json({"proxies": [cat.entries[n] for n in group_names(cat)]})

    def group_entry(cat: Catalog, request: web.Request) -> tuple[str, Json]:
        name, found = entry(cat, request)
        if name not in group_names(cat):
            raise not_found()
        return name, found

    async def get_group(request: web.Request) -> web.Response:
        _, found = group_entry(await catalog(), request)
        return await _json(found)

    async def group_delay(request: web.Request) -> web.Response:
        """Every member tested at once (bounded by Outbounds.probe); those that answered, {name: ms}."""
        name = request.match_info["name"]
        kind = kind_of(name)
        if kind == "group":
            members = [m for m, _ in plane.outbounds.groups[name].members]
        elif kind == GLOBAL:
            members = global_all()
        else:
            raise not_found()
        url, timeout, expected = delay_params(request, MAX_GROUP_TIMEOUT)
        timeout = min(timeout, GROUP_WAIT)

        async def one(member: str) -> int | None:
            try:
                return await test(member, url, timeout, expected)
            except ApiError:
                return None

        members = list(dict.fromkeys(members))
        delays = await asyncio.gather(*(one(m) for m in members))
        answered = {m: d for m, d in zip(members, delays, strict=True) if d is not None}
        if not answered:
            raise ApiError(504, ALL_TIMEOUT)
        return await _json(_sorted(answered), big=len(answered) > BIG)

    # -- /providers/proxies ----------------------------------------------------------------------------
    def providers(cat: Catalog) -> dict[str, Json]:
        out = plane.outbounds
        g = out.config.global_
        found: dict[str, Json] = {
            DEFAULT_PROVIDER: {
                "name": DEFAULT_PROVIDER, "type": "Proxy", "vehicleType": "Compatible",
                "proxies": [cat.entries[n] for n in (DIRECT, REJECT)] + [cat.nodes[n] for n in cat.own_nodes]
                + [cat.entries[n] for n in cat.groups],
                "testUrl": g.tcp_check_url[0], "expectedStatus": EXPECTED, "updatedAt": GO_ZERO_TIME}}
        for tag, sub in out.subscriptions.items():
            fetched = sub.result.fetched_at if sub.result is not None else None
            found[tag] = {   # a subscription called "default" wins over mihomo's default, as a user's GLOBAL does
                "name": tag, "type": "Proxy", "vehicleType": "File" if scheme_of(sub.url) == "file" else "HTTP",
                "proxies": [cat.nodes[n] for n in cat.by_provider.get(tag, ())],
                "testUrl": g.tcp_check_url[0], "expectedStatus": EXPECTED,
                "updatedAt": _time(fetched) if fetched else GO_ZERO_TIME}
        return found

    def provider(cat: Catalog, request: web.Request) -> tuple[str, Json]:
        name = request.match_info["provider"]
        found = providers(cat).get(name)
        if found is None:
            raise not_found()
        return name, found

    async def get_providers(request: web.Request) -> web.Response:
        cat = await catalog()
        return await _json({"providers": _sorted(providers(cat))}, big=len(cat.entries) > BIG)

    async def get_provider(request: web.Request) -> web.Response:
        _, found = provider(await catalog(), request)
        return await _json(found, big=len(found["proxies"]) > BIG)

    async def update_provider(request: web.Request) -> web.Response:
        name, _ = provider(await catalog(), request)
        if name in plane.outbounds.subscriptions:
            result = await plane.outbounds.refresh_subscription(name)
            if not result.ok:
                raise ApiError(503, result.fetch_error or "the fetch failed")
            await ctx.snapshot(fresh=True)
        return web.Response(status=204)   # "default": nothing to fetch (mihomo: the same)

    async def provider_healthcheck(request: web.Request) -> web.Response:
        """The scheduled checks of the provider's nodes, now; answered when they are done. Asked again
        meanwhile, the same checks answer (a dashboard's clicks do not pile up checks)."""
        cat = await catalog()
        name, found = provider(cat, request)
        task = checks.get(name)
        if task is None:
            names = [p["name"] for p in found["proxies"] if p["name"] in cat.nodes]
            task = checks[name] = asyncio.get_running_loop().create_task(plane.check_nodes(names))
            task.add_done_callback(lambda t: checks.pop(name) if checks.get(name) is t else None)
        await asyncio.shield(task)
        await ctx.snapshot(fresh=True)
        return web.Response(status=204)

    def provider_node(cat: Catalog, request: web.Request) -> tuple[str, Json]:
        _, found = provider(cat, request)
        name = request.match_info["name"]
        node = next((p for p in found["proxies"] if p["name"] == name), None)
        if node is None:
            raise not_found()
        return name, node

    async def get_provider_node(request: web.Request) -> web.Response:
        _, node = provider_node(await catalog(), request)
        return await _json(node)

    async def provider_node_delay(request: web.Request) -> web.Response:
        provider, name = request.match_info["provider"], request.match_info["name"]
        out = plane.outbounds
        if provider == DEFAULT_PROVIDER and provider not in out.subscriptions:
            known = name in (DIRECT, REJECT) or name in out.groups or (name in out.nodes and not out.node_source(name))
        else:
            known = provider in out.subscriptions and name in out.nodes and out.node_source(name) == provider
        if not known:
            raise not_found()
        url, timeout, expected = delay_params(request, MAX_DELAY_TIMEOUT)
        return await _json({"delay": await test(name, url, timeout, expected)})

    return [
        web.get("/proxies", get_proxies),
        web.get("/proxies/{name}", get_proxy),
        web.put("/proxies/{name}", put_proxy),
        web.delete("/proxies/{name}", delete_proxy),
        web.get("/proxies/{name}/delay", proxy_delay),
        web.get("/group", get_groups),
        web.get("/group/{name}", get_group),
        web.get("/group/{name}/delay", group_delay),
        web.get("/providers/proxies", get_providers),
        web.get("/providers/proxies/{provider}", get_provider),
        web.put("/providers/proxies/{provider}", update_provider),
        # Before /{provider}/{name}: a node called "healthcheck" is shadowed, as in mihomo.
        web.get("/providers/proxies/{provider}/healthcheck", provider_healthcheck),
        web.get("/providers/proxies/{provider}/{name}", get_provider_node),
        web.get("/providers/proxies/{provider}/{name}/healthcheck", provider_node_delay),
    ]
