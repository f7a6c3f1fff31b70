"""Which nodes a group takes: dae's filter lines over node names and subscription tags.

`name(...)` and `subtag(...)` with plain names (exact), `keyword:` or
`regex:` values, `!` and `&&`; a group's lines are OR-ed, and a line may end
in `[add_latency: -500ms]` to make its nodes look that much faster (or
slower) to the latency policies. No filter: every node.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from daetui.routing.errors import RuleError
from daetui.routing.functions import FunctionSpec, _text
from daetui.routing.parser import parse_rule

FILTER_FUNCTIONS: dict[str, FunctionSpec] = {
    "name": FunctionSpec("name", _text, frozenset({"keyword", "regex"}), expects="node names"),
    "subtag": FunctionSpec("subtag", _text, frozenset({"keyword", "regex"}), expects="subscription tags"),
}
_ANNOTATION = re.compile(r"\[\s*add_latency\s*:\s*([+-]?\d+(?:\.\d+)?)\s*(ms|s)\s*\]\s*$")


@dataclass(frozen=True)
class NodeRef:
    """What a filter sees of a node."""

    name: str
    subtag: str = ""     # the subscription it came from ("" for [node])


@dataclass(frozen=True)
class _Value:
    kind: str            # "", "keyword", "regex"
    text: str
    rx: re.Pattern[str] | None = None

    def matches(self, s: str) -> bool:
        if self.kind == "keyword":
            return self.text.lower() in s.lower()
        if self.kind == "regex":
            assert self.rx is not None
            return self.rx.search(s) is not None
        return s == self.text


@dataclass(frozen=True)
class FilterLine:
    """One filter line: its conditions (AND-ed) and the latency it adds to the nodes it takes."""

    text: str
    conditions: tuple[tuple[str, bool, tuple[_Value, ...]], ...]   # (function, negate, values OR-ed)
    add_latency: float = 0.0                                         # seconds

    def matches(self, node: NodeRef) -> bool:
        for fn, negate, values in self.conditions:
            subject = node.name if fn == "name" else node.subtag
            if any(v.matches(subject) for v in values) == negate:
                return False
        return True


def parse_filter(text: str) -> FilterLine:
    """`name(keyword: hk) && !subtag(old) [add_latency: -50ms]`; RuleError says where it is wrong."""
    add = 0.0
    body = text
    m = _ANNOTATION.search(text)
    if m:
        add = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
        body = text[:m.start()].rstrip()
    elif "[" in text:
        at = text.index("[")
        raise RuleError("a filter's annotation is [add_latency: <duration>], e.g. [add_latency: -500ms]", at, len(text))
    rule = parse_rule(body + " -> x", FILTER_FUNCTIONS)
    conds = []
    for c in rule.conditions:
        values = []
        for p in c.params:
            if p.key == "regex":
                try:
                    values.append(_Value("regex", p.value, re.compile(p.value)))
                except re.error as e:
                    raise RuleError(f"bad regular expression {p.value!r}: {e}", p.value_start, p.end) from None
            else:
                values.append(_Value(p.key or "", p.value))
        conds.append((c.name, c.negate, tuple(values)))
    return FilterLine(text, tuple(conds), add)


def members(filters: tuple[FilterLine, ...], nodes: list[NodeRef]) -> list[tuple[NodeRef, float]]:
    """The nodes a group takes, in node order, each with its added latency (first matching line's)."""
    if not filters:
        return [(n, 0.0) for n in nodes]
    out = []
    for n in nodes:
        line = next((f for f in filters if f.matches(n)), None)
        if line is not None:
            out.append((n, line.add_latency))
    return out
