"""The controller API's /rules: the routing rules as mihomo lists them, and its rule toggle.

`GET /rules` answers `{"rules": [...]}`, one object per rule in order and the
fallback last, as mihomo's hub/route/rules.go (v1.19's, with rule toggling):

    {"index": 0, "type": "GeoSite", "payload": "cn", "proxy": "direct", "size": 1532,
     "extra": {"disabled": false, "hitCount": 12, "hitAt": "2025-...Z", "missCount": 40, "missAt": "..."}}

`type` is mihomo's name of the rule type (its RuleType.String(): "DomainSuffix",
"IPCIDR", "DstPort", "GeoSite", ...) when a rule is one function with one
value that mihomo has a rule for, and `payload` that value as mihomo writes
it. A rule mihomo has no single type for is "AND" (functions together), "OR"
(one function, several values), "NOT" (a negated function), or the dae
function's own name (`ipversion`, `interface`, `ext:` files); its payload is
then the rule's dae text before the `->`, which is what daetui runs. `proxy`
is the outbound as written (`direct`, `block`, a group, `must_proxy`). The
fallback is mihomo's last rule, "Match". `size` is -1, or the number of
entries for a GeoSite / GeoIP rule, as mihomo's.

`hitCount`/`hitAt` are the flows each rule decided (the kernel's per-rule
counters, the snapshot's `hits`, kept across reloads by rule id). daetui
counts no misses as it evaluates, so `missCount`/`missAt` are worked out from
the same counters: the flows a later rule or the fallback decided went past
this rule without matching it (rules match first-to-last). A disabled rule
is not evaluated: no misses. "Never" is the Unix epoch, as mihomo's.

`PATCH /rules/disable` takes mihomo's `{"<index>": <disabled>, ...}` and
answers 204. The change is in force at once, through the reload machinery (a
new kernel generation; flows already decided keep their route), and lasts
until the next reload: the config file is not touched, as in mihomo. With
`?persist=true` (daetui's own) it is written to the config file too, comments
kept, like the console's toggle. Unlike mihomo, which skips an index it has no
rule at, an unknown index is a 404 and nothing changes; the fallback cannot be
disabled (400). A body that is not such an object is mihomo's 400 "Body invalid".
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from daetui.api.context import ApiContext
from daetui.api.errors import ApiError, bad_request, json_object
from daetui.routing.domains import DomainSet
from daetui.routing.functions import DOMAIN_KEY_ALIASES
from daetui.routing.ruleset import CheckedCondition, RuleEntry, RuleSet

Hits = dict[int | None, tuple[int, float | None]]

NEVER = "1970-01-01T00:00:00Z"   # mihomo's hitAt for a rule never hit (time.Unix(0, 0))
MATCH = "Match"

# domain(key: value) -> mihomo's rule type; a bare value is a suffix (dae's meaning).
_DOMAIN_TYPES = {"suffix": "DomainSuffix", "full": "Domain", "keyword": "DomainKeyword", "regex": "DomainRegex",
                 "geosite": "GeoSite"}
# Functions whose every value mihomo's rule of that type takes, `/`-separated (its port and DSCP ranges).
_RANGE_TYPES = {"dport": "DstPort", "sport": "SrcPort", "dscp": "DSCP"}
# Functions of one plain value.
_VALUE_TYPES = {"pname": "ProcessName", "mac": "SrcMAC"}
_INDEX = re.compile(r"[+-]?\d{1,9}")


def conditions_text(entry: RuleEntry) -> str:
    """The rule's dae text before its outbound: `dip(1.2.3.4) && dport(443)`."""
    return " && ".join(str(c.condition) for c in entry.conditions)


def _one_value(c: CheckedCondition) -> tuple[str, str, int] | None:
    """(type, payload, size) for a function mihomo has one rule type for, or None."""
    cond, fn = c.condition, c.function
    params = cond.params
    if fn in _RANGE_TYPES:
        # Ports as written (`8000-9000` is mihomo's range too); DSCP as numbers (dae also takes 0x2e).
        values = (str(v) for v in c.values) if fn == "dscp" else (p.value for p in params)
        return _RANGE_TYPES[fn], "/".join(values), -1
    if len(params) != 1:
        return None
    p = params[0]
    if fn == "domain":
        key = DOMAIN_KEY_ALIASES.get(p.key or "suffix", p.key or "suffix")
        kind = _DOMAIN_TYPES.get(key)
        if kind is None:
            return None
        values = c.values
        size = len(values[0]) if kind == "GeoSite" and values and isinstance(values[0], DomainSet) else -1
        return kind, p.value, size
    if fn in ("dip", "sip"):
        src = "Src" if fn == "sip" else ""
        if p.key == "geoip":
            return f"{src}GeoIP", p.value, len(c.values)
        if p.key is None and len(c.values) == 1:
            return f"{src}IPCIDR", str(c.values[0]), -1
        return None
    if fn == "l4proto":
        return "Network", p.value.lower(), -1
    if fn in _VALUE_TYPES:
        return _VALUE_TYPES[fn], p.value, -1
    return None


def mihomo_type(entry: RuleEntry) -> tuple[str, str, int]:
    """(type, payload, size) of a rule as mihomo would list it (see the module's docstring)."""
    conds = entry.conditions
    if len(conds) == 1 and not conds[0].condition.negate:
        native = _one_value(conds[0])
        if native is not None:
            return native
        fn = conds[0].function
        kind = "OR" if fn in ("domain", "dip", "sip", "l4proto", "pname", "mac") and \
            len(conds[0].condition.params) > 1 else fn
        return kind, conditions_text(entry), -1
    if len(conds) == 1:
        return "NOT", conditions_text(entry), -1
    return "AND", conditions_text(entry), -1


def when(t: float | None) -> str:
    """A Unix time as mihomo's JSON writes one (RFC 3339); the epoch for "never"."""
    if t is None:
        return NEVER
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _later(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def rules_answer(rs: RuleSet, hits: Hits) -> dict[str, Any]:
    """GET /rules' answer for the rules in force and their counters."""
    fallback_hits, fallback_at = hits.get(None, (0, None))
    # Walking from the end: what the rules after each one (enabled) and the fallback decided.
    after_count, after_at = fallback_hits, fallback_at
    missed: dict[int, tuple[int, float | None]] = {}
    for e in reversed(rs.entries):
        if not e.enabled:
            continue
        missed[e.index] = (after_count, after_at)
        count, at = hits.get(e.index, (0, None))
        after_count, after_at = after_count + count, _later(after_at, at)
    rules = []
    for e in rs.entries:
        kind, payload, size = mihomo_type(e)
        count, at = hits.get(e.index, (0, None))
        miss_count, miss_at = missed.get(e.index, (0, None))
        rules.append({"index": e.index, "type": kind, "payload": payload, "proxy": str(e.rule.outbound),
                      "size": size, "extra": {"disabled": not e.enabled, "hitCount": count, "hitAt": when(at),
                                              "missCount": miss_count, "missAt": when(miss_at)}})
    rules.append({"index": len(rs.entries), "type": MATCH, "payload": "", "proxy": rs.fallback, "size": -1,
                  "extra": {"disabled": False, "hitCount": fallback_hits, "hitAt": when(fallback_at),
                            "missCount": 0, "missAt": NEVER}})
    return {"rules": rules}


def parse_toggles(body: bytes) -> dict[int, bool]:
    """mihomo's body: a JSON object of rule index (as text) -> disabled; ApiError 400 for anything else."""
    data = json_object(body)
    out: dict[int, bool] = {}
    for k, v in data.items():
        # Go decodes map[int]bool keys with strconv: an optional sign and digits, nothing else.
        if not _INDEX.fullmatch(k) or not isinstance(v, bool):
            raise bad_request()
        out[int(k)] = v
    return out


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "").lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise bad_request(f"?{name}= takes true or false, not {value!r}")


def routes(ctx: ApiContext) -> list[web.RouteDef]:
    """`GET /rules` and `PATCH /rules/disable`."""
    plane = ctx.plane

    async def get_rules(request: web.Request) -> web.Response:
        rs, hits = plane.rules_in_force()   # together, on the loop: one batch read of the kernel's counters
        # The rule set is immutable and the hits a fresh dict: thousands of rules are laid out off the loop.
        text = await asyncio.to_thread(lambda: json.dumps(rules_answer(rs, hits), separators=(",", ":")))
        return web.Response(text=text, content_type="application/json")

    async def disable(request: web.Request) -> web.Response:
        toggles = parse_toggles(await request.read())
        persist = _flag(request, "persist")
        rs, _ = plane.rules_in_force()
        n = len(rs.entries)
        changes: dict[int, bool] = {}
        for index, disabled in toggles.items():
            if index == n:
                if disabled:
                    raise bad_request(f"index {n} is the fallback (Match): it decides what no rule does and cannot "
                                      "be disabled; change [routing] fallback instead")
                continue
            entry = rs.by_index(index)
            if entry is None:
                raise ApiError(404, f"no rule at index {index}: there are {n} rules (0-{n - 1}) and the fallback "
                                    f"({n})")
            changes[index] = not disabled
        if not persist:
            # Only what changes: setting a rule to the state it is in costs no reload.
            changes = {i: on for i, on in changes.items() if rs.entries[i].enabled != on}
        if changes:
            result = await plane.set_rules_enabled(changes, persist=persist)
            if not result.ok:
                raise ApiError(400, result.message)
        return web.Response(status=204)

    return [web.get("/rules", get_rules), web.patch("/rules/disable", disable)]
