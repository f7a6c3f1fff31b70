"""DNS routing: which upstream a query goes to, and what becomes of its answer.

Request rules look at the question (`qname`, `qtype`) and where it came in
(`interface`); their targets are an upstream's name, `asis` (the server the
client asked) or `reject`. Response rules also see the answer's addresses
(`ip`) and the upstream that gave it; their targets are `accept`, `reject` or
an upstream to ask again. A rule's functions are AND-ed, a function's values
OR-ed, `!` negates, as in routing rules. The last line of each list may be
`fallback: <target>`; dae's defaults are `asis` and `accept`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dns.rdatatype

from daetui.routing.errors import RuleError
from daetui.routing.functions import (
    DNS_REQUEST_RULE_FUNCTIONS,
    DNS_RESPONSE_FUNCTIONS,
    INTERNAL_SELECTORS,
    _domain_set,
    _geo,
    _interfaces,
    _ip,
)
from daetui.routing.parser import parse_rule
from daetui.routing.rule import Condition, Rule

if TYPE_CHECKING:
    from daetui.routing.geodata import GeoData

ASIS = "asis"
REJECT = "reject"
ACCEPT = "accept"
REQUEST_ACTIONS = (ASIS, REJECT)
RESPONSE_ACTIONS = (ACCEPT, REJECT)
MAX_DEPTH = 3  # response rules may send a query on to another upstream this many times

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class DnsFacts:
    """What a DNS rule can look at."""

    qname: str
    qtype: int
    interface: str | None = None          # the interface the query came in on
    ips: tuple[IPAddress, ...] = ()       # the answer's addresses (response rules)
    upstream: str | None = None           # who answered (response rules)


Test = Callable[[DnsFacts], bool]


# Functions whose verdict depends on the client asking, not only on the question and answer.
CLIENT_FUNCTIONS = frozenset({"interface"})


@dataclass(frozen=True)
class DnsRule:
    """One checked rule: its tests (all must pass) and its target."""

    index: int
    text: str
    tests: tuple[Test, ...]
    target: str
    by_client: bool = False    # looks at where the query came from (interface()): its verdict is not everyone's

    def matches(self, facts: DnsFacts) -> bool:
        return all(t(facts) for t in self.tests)


@dataclass(frozen=True)
class Choice:
    """A rule list's verdict: the target, and the rule that chose it (None: the fallback)."""

    target: str
    index: int | None
    text: str

    def describe(self, kind: str) -> str:
        by = f"{kind} rule #{self.index + 1}" if self.index is not None else f"{kind} fallback"
        return f"{by} -> {self.target}"


@dataclass(frozen=True)
class LookupFacts:
    """One of daetui's own lookups, as dae v2's sub()/node()/subnode() selectors see it."""

    kind: str             # "sub": a subscription's host; "node": a node's host
    tag: str = ""         # the subscription's tag (sub), or the node's subscription (node; "" for [node]'s)
    name: str = ""        # the node's name
    link: str = ""        # the subscription's URL or the node's link


@dataclass(frozen=True)
class InternalRule:
    """A request rule of sub()/node()/subnode() selectors: which upstream resolves daetui's own lookups."""

    index: int
    text: str
    tests: tuple[Callable[[LookupFacts], bool], ...]
    target: str
    subnode: bool          # dae checks subnode() rules before node() ones

    def matches(self, facts: LookupFacts) -> bool:
        return all(t(facts) for t in self.tests)


@dataclass(frozen=True)
class DnsRuleList:
    rules: tuple[DnsRule, ...]
    fallback: str
    internal: tuple[InternalRule, ...] = ()   # request lists only

    def internal_upstream(self, facts: LookupFacts) -> str | None:
        """The upstream a sub()/node()/subnode() rule gives this lookup (None: none does)."""
        order = sorted(self.internal, key=lambda r: (not r.subnode, r.index)) if facts.kind == "node" \
            else self.internal
        for r in order:
            if r.matches(facts):
                return r.target
        return None

    @property
    def by_client(self) -> bool:
        """Whether a verdict may differ between clients asking the same question (an interface() rule)."""
        return any(r.by_client for r in self.rules)

    def choose(self, facts: DnsFacts) -> Choice:
        for r in self.rules:
            if r.matches(facts):
                return Choice(r.target, r.index, r.text)
        return Choice(self.fallback, None, f"fallback: {self.fallback}")


@dataclass(frozen=True)
class DnsRules:
    """The request and response rules of one config."""

    request: DnsRuleList
    response: DnsRuleList


def _qtypes(cond: Condition) -> frozenset[int]:
    out = set()
    for p in cond.params:
        v = p.value.strip()
        try:
            out.add(int(v) if v.isdigit() else int(dns.rdatatype.from_text(v.upper())))
        except (ValueError, dns.rdatatype.UnknownRdatatype):
            raise RuleError(f"{v!r} is not a query type (a, aaaa, cname, https, ... or a number)",
                            p.value_start, p.end) from None
    return frozenset(out)


def _networks(cond: Condition, geo: GeoData | None) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for p in cond.params:
        if p.key is None:
            out.append(_ip(p))
        else:
            out.extend(_geo(geo, p, "ip"))
    return tuple(out)


def _test(cond: Condition, geo: GeoData | None) -> Test:
    """One function as a predicate on DnsFacts."""
    name = cond.name
    if name == "qname":
        domains = _domain_set(cond, geo)
        test: Test = lambda f: domains.matches(f.qname)  # noqa: E731
    elif name == "qtype":
        types = _qtypes(cond)
        test = lambda f: f.qtype in types  # noqa: E731
    elif name == "interface":
        names = frozenset(i.name for i in _interfaces(cond))
        test = lambda f: f.interface in names  # noqa: E731
    elif name == "ip":
        nets = _networks(cond, geo)
        v4 = tuple(n for n in nets if n.version == 4)
        v6 = tuple(n for n in nets if n.version == 6)
        test = lambda f: any(ip in n for ip in f.ips for n in (v4 if ip.version == 4 else v6))  # noqa: E731
    elif name == "upstream":
        ups = frozenset(p.value for p in cond.params)
        test = lambda f: f.upstream in ups  # noqa: E731
    else:  # pragma: no cover - the parser admits only the tables' functions
        raise RuleError(f"unknown function {name!r}", cond.start, cond.end)
    if cond.negate:
        return lambda f: not test(f)
    return test


def _matcher(key: str, values: list[str], p_start: int, p_end: int) -> Callable[[str], bool]:
    if key.endswith("regex"):
        try:
            pats = [re.compile(v) for v in values]
        except re.error as e:
            raise RuleError(f"bad regular expression: {e}", p_start, p_end) from None
        return lambda s: any(p.search(s) for p in pats)
    if key.endswith("keyword"):
        return lambda s: any(v in s for v in values)
    return lambda s: s in values


def _internal_test(cond: Condition) -> Callable[[LookupFacts], bool]:
    """One sub()/node()/subnode() function: its values OR-ed, by key, as dae's daedns router reads them."""
    by_key: dict[str, list[str]] = {}
    for p in cond.params:
        by_key.setdefault(p.key or "", []).append(p.value)
    tests: list[Callable[[LookupFacts], bool]] = []
    for key, values in by_key.items():
        field = "link" if key.startswith("link") else "name"
        if cond.name == "sub" or (cond.name == "subnode" and (key in ("", "regex") or key.startswith("subtag"))):
            field = "link" if key.startswith("link") else "tag"
        m = _matcher(key, values, cond.start, cond.end)
        tests.append(lambda f, m=m, field=field: m(getattr(f, field)))
    kind = "sub" if cond.name == "sub" else "node"
    only_subs = cond.name == "subnode"

    def test(f: LookupFacts) -> bool:
        if f.kind != kind or (only_subs and not f.tag):
            return False
        hit = any(t(f) for t in tests)
        return not hit if cond.negate else hit
    return test


def _target_error(rule: Rule, text: str, target: str, allowed: list[str]) -> RuleError:
    at = text.rfind(target)
    return RuleError(f"unknown target {target!r}: expected {', '.join(allowed)}",
                     max(at, 0), max(at, 0) + len(target))


def compile_list(kind: str, texts: tuple[str, ...], fallback: str, upstreams: dict[str, str],
                 geo: GeoData | None = None) -> DnsRuleList:
    """Check and compile one list; RuleError(index=...) names the rule that is wrong.

    The error's `rule_index` attribute is the rule's position (len(texts) for the fallback).
    """
    functions = DNS_REQUEST_RULE_FUNCTIONS if kind == "request" else DNS_RESPONSE_FUNCTIONS
    actions = REQUEST_ACTIONS if kind == "request" else RESPONSE_ACTIONS
    allowed = [*actions, *upstreams]
    out = []
    internal: list[InternalRule] = []
    for i, text in enumerate(texts):
        try:
            rule = parse_rule(text, functions)
            target = rule.outbound.name
            selectors = [c for c in rule.conditions if c.name in INTERNAL_SELECTORS]
            if selectors:
                # dae: internal selectors must point to an upstream and cannot be mixed with qname/qtype.
                other = next((c for c in rule.conditions if c.name not in INTERNAL_SELECTORS), None)
                if other is not None:
                    raise RuleError(f"{other.name}() cannot go with {selectors[0].name}() in one rule: "
                                    "sub(), node() and subnode() choose the upstream of daetui's own lookups",
                                    other.start, other.end)
                if target not in upstreams or rule.outbound.params:
                    raise _target_error(rule, text, target, list(upstreams))
                internal.append(InternalRule(i, str(rule), tuple(_internal_test(c) for c in rule.conditions),
                                             target, any(c.name == "subnode" for c in rule.conditions)))
                continue
            if target not in allowed or rule.outbound.params:
                raise _target_error(rule, text, target, allowed)
            tests = tuple(_test(c, geo) for c in rule.conditions)
            if kind == "response":
                for c in rule.conditions:
                    if c.name == "upstream":
                        for p in c.params:
                            if p.value not in upstreams:
                                raise RuleError(f"unknown upstream {p.value!r}: expected one of "
                                                f"{', '.join(upstreams) or '(none declared)'}",
                                                p.value_start, p.end)
        except RuleError as e:
            e.rule_index = i  # type: ignore[attr-defined]
            raise
        out.append(DnsRule(i, str(rule), tests, target, any(c.name in CLIENT_FUNCTIONS for c in rule.conditions)))
    if fallback not in allowed:
        e = RuleError(f"fallback: unknown target {fallback!r}: expected {', '.join(allowed)}",
                      len("fallback: "), len("fallback: ") + len(fallback))
        e.rule_index = len(texts)  # type: ignore[attr-defined]
        raise e
    return DnsRuleList(tuple(out), fallback, tuple(internal))
