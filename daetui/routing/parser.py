"""Parser for dae's rule syntax.

    rule      := condition ("&&" condition)* "->" outbound
    condition := "!"? NAME "(" param ("," param)* ")"
    param     := (KEY ":")? value
    value     := 'quoted' | "quoted" | bare
    outbound  := NAME ("(" param ("," param)* ")")?

A `KEY:` prefix counts only when KEY is a key of that function, so
`dip('ff00::/8')` and `dip(ff00::/8)` both read as the address and
`domain(geosite:cn)` as key `geosite`. Every error carries the offsets of the
offending text.
"""

from __future__ import annotations

import difflib
import re

from daetui.routing.errors import RuleError
from daetui.routing.functions import ALIASES, FUNCTIONS, OUTBOUND_FLAGS, OUTBOUND_KEYS, FunctionSpec, lookup
from daetui.routing.rule import Condition, Outbound, Param, Rule

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*:\s*")


class _Cursor:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def at_end(self) -> bool:
        self.skip_ws()
        return self.pos >= len(self.text)

    def peek(self, s: str) -> bool:
        self.skip_ws()
        return self.text.startswith(s, self.pos)

    def expect(self, s: str, what: str) -> None:
        if not self.peek(s):
            raise self.error(f"expected {what}")
        self.pos += len(s)

    def name(self, what: str) -> tuple[str, int]:
        self.skip_ws()
        m = _NAME.match(self.text, self.pos)
        if not m:
            raise self.error(f"expected {what}")
        self.pos = m.end()
        return m.group(0), m.start()

    def error(self, message: str) -> RuleError:
        if self.pos >= len(self.text):
            return RuleError(f"{message}, found the end of the rule", len(self.text))
        found = self.text[self.pos]
        return RuleError(f"{message}, found {found!r}", self.pos)


def _split_params(cur: _Cursor) -> list[tuple[str, int]]:
    """Raw parameter texts and their offsets, up to the closing parenthesis."""
    text = cur.text
    open_pos = cur.pos - 1
    params: list[tuple[str, int]] = []
    start = cur.pos
    quote: str | None = None
    i = cur.pos
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "(":
            raise RuleError("expected ',' or ')' in this parameter list, found '('", i)
        elif c in ",)":
            params.append((text[start:i], start))
            if c == ")":
                cur.pos = i + 1
                return params
            start = i + 1
        i += 1
    if quote:
        raise RuleError(f"unterminated {quote}-quoted value", start + text[start:].find(quote))
    raise RuleError("missing ')' to close this parameter list", open_pos)


def _unquote(raw: str, offset: int) -> str:
    if raw[0] == "'":
        if len(raw) < 2 or raw[-1] != "'" or "'" in raw[1:-1]:
            raise RuleError("a '-quoted value must end with ' and contain no other '", offset, offset + len(raw))
        return raw[1:-1]
    if len(raw) < 2 or raw[-1] != '"':
        raise RuleError('a "-quoted value must end with "', offset, offset + len(raw))
    out, i, body = [], 0, raw[1:-1]
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            out.append(body[i + 1])
            i += 2
        elif body[i] == '"':
            raise RuleError('unescaped " inside a "-quoted value', offset + 1 + i)
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


def _param(raw: str, offset: int, keys: frozenset[str], where: str) -> Param:
    lead = len(raw) - len(raw.lstrip())
    body = raw.strip()
    start = offset + lead
    end = start + len(body)
    if not body:
        raise RuleError(f"empty parameter in {where}", start)
    key: str | None = None
    value_start = start
    m = _KEY.match(body)
    if m and m.group(1) in keys:
        key = m.group(1)
        body = body[m.end():]
        value_start += m.end()
        if not body:
            raise RuleError(f"missing value after '{key}:'", value_start)
    if body[0] in "'\"":
        value = _unquote(body, value_start)
    else:
        bad = re.search(r"[\s'\"]", body)
        if bad and m and key is None and keys:
            # `name: value` with a name this function does not take (a value holding a space is quoted).
            raise RuleError(f"{where} takes no key {m.group(1)!r}: expected {', '.join(sorted(keys))}",
                            start, start + len(m.group(1)))
        if bad:
            raise RuleError(f"unexpected {bad.group(0)!r} in a value; quote values that contain it",
                            value_start + bad.start())
        value = body
    return Param(value=value, key=key, start=start, end=end, value_start=value_start)


def parse_rule(text: str, functions: dict[str, FunctionSpec] | None = None) -> Rule:
    """Parse one rule, e.g. `dip(10.0.0.0/8) && !dport(53) -> direct`.

    `functions` names another language's functions (the DNS rules'); by default
    routing's.
    """
    cur = _Cursor(text)
    if cur.at_end():
        raise RuleError("empty rule; expected e.g. `dport(443) -> proxy`", 0)
    conditions = []
    while True:
        cur.skip_ws()
        start = cur.pos
        negate = False
        if cur.peek("!"):
            cur.pos += 1
            negate = True
        name, name_pos = cur.name("a function name such as dip, dport or l4proto" if functions is None
                                  else f"a function name ({', '.join(functions)})")
        spec = lookup(name, functions)
        if spec is None:
            known = [*FUNCTIONS, *ALIASES] if functions is None else list(functions)
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else \
                f"expected one of {', '.join(FUNCTIONS if functions is None else functions)}"
            raise RuleError(f"unknown function {name!r}; {hint}", name_pos, name_pos + len(name))
        cur.expect("(", f"'(' after {name}")
        params = tuple(_param(raw, off, spec.keys, f"{name}()") for raw, off in _split_params(cur))
        conditions.append(Condition(name=name, params=params, negate=negate, start=start, end=cur.pos))
        if cur.peek("&&"):
            cur.pos += 2
            continue
        if cur.peek("->"):
            cur.pos += 2
            break
        raise cur.error("expected '&&' or '->'")
    out_name, _ = cur.name("an outbound (direct, block or a group name)")
    out_params: tuple[Param, ...] = ()
    if cur.peek("("):
        cur.pos += 1
        out_params = tuple(_param(raw, off, OUTBOUND_KEYS, f"{out_name}()") for raw, off in _split_params(cur))
        for p in out_params:
            if p.key is None and p.value in OUTBOUND_FLAGS:
                continue  # direct(must), proxy(must): dae's other spelling of must_direct, must_proxy
            if p.key != "mark" or out_name != "direct":
                raise RuleError(f"{out_name}() takes no such parameter; outbounds take `must`, and direct "
                                "also mark: 0x..", p.start, p.end)
            try:
                mark = int(p.value, 0)
            except ValueError:
                raise RuleError(f"mark {p.value!r} is not an integer (e.g. 0x100)", p.value_start, p.end) from None
            if not 0 < mark < 2**32:
                raise RuleError("mark must be between 1 and 0xffffffff", p.value_start, p.end)
    if not cur.at_end():
        raise cur.error("expected the end of the rule after the outbound")
    return Rule(conditions=tuple(conditions), outbound=Outbound(out_name, out_params), text=text)


def parse_outbound_name(text: str) -> str:
    """Check an outbound written alone (the routing fallback)."""
    cur = _Cursor(text)
    name, _ = cur.name("an outbound name")
    if not cur.at_end():
        raise cur.error("expected only an outbound name")
    return name
