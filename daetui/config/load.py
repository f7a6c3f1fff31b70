"""Read a config file (and the files it includes) into checked dataclasses,
or fail saying where and why: file, line, column, and what was expected."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions
from tomlkit.items import Array, InlineTable, Table

from daetui.config.dns_upstream import parse_upstream
from daetui.config.errors import ConfigError
from daetui.config.locate import Path_, SourceIndex
from daetui.config.model import Config, DnsConfig, GlobalConfig, GroupSpec, Tagged
from daetui.config.schema import (
    DAE_ONLY,
    DNS,
    GLOBAL,
    GROUP,
    NODE_SCHEMES,
    ROUTING,
    SECTIONS,
    SUBSCRIPTION_SCHEMES,
    KeySpec,
    parse_duration,
)
from daetui.redact import remember, remember_link
from daetui.routing.dns_rules import DnsRules, compile_list
from daetui.routing.errors import RuleError
from daetui.routing.geodata import GeoData, default_search_path
from daetui.routing.node_filters import parse_filter
from daetui.routing.parser import parse_outbound_name, parse_rule
from daetui.routing.ruleset import BLOCK, DIRECT, MUST_RULES, RuleEntry, RuleSet, check_rule, groups_of, rule_id

RULE_TABLE_KEYS = ("rule", "enabled", "name")

# Why a node's link cannot be used (None: it can). The dialers know, and the config layer may not import
# them: daetui.outbound.links registers its judge here when it is imported (the daemon and the CLI import
# it before loading), so a node no dialer speaks is refused at load, not when it is first dialled.
_link_check: Callable[[str], str | None] | None = None


def set_link_check(check: Callable[[str], str | None] | None) -> None:
    """Install the judge of node links used by every load from now on (None: their scheme only)."""
    global _link_check
    _link_check = check

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-@]*$")
# Sections that hold passwords: a file with them should not be world-readable.
SECRET_SECTIONS = ("node", "subscription")
MAX_INCLUDE_DEPTH = 8


def _secret_tail(lines: list[str], line: int) -> list[tuple[int, int]]:
    """A line that did not parse, in a [node] or [subscription] table: all after its `=` is masked (the link
    may be cut anywhere; the loader cannot tell where its secret ends)."""
    if not 0 < line <= len(lines):
        return []
    for above in reversed(lines[:line]):
        head = re.match(r"\s*\[+\s*([A-Za-z_\-]+)", above)
        if head:
            if head.group(1) not in SECRET_SECTIONS:
                return []
            break
    else:
        return []
    text = lines[line - 1]
    eq = text.find("=")
    if eq < 0 or re.match(r"\s*\[", text):
        return []
    start = eq + 1
    while start < len(text) and text[start] in " \t":
        start += 1
    end = len(text)
    if start < len(text) and text[start] in "\"'":
        close = text.find(text[start], start + 1)   # a string that closes: what follows it stays in sight
        end = close + 1 if close > 0 else end
    return [_link_body(text, start, end)]


def _link_body(text: str, start: int, end: int) -> tuple[int, int]:
    """The part of the value text[start:end] to mask: after its scheme (a typo there stays in sight), up to
    its #name or closing quote."""
    sep = text.find("://", start, end)
    a = sep + 3 if sep >= 0 else start
    frag = text.find("#", a, end)
    b = frag if frag >= 0 else end
    while b > a and text[b - 1] in "\"' \t":
        b -= 1
    return (a, b) if b > a else (start, end)


class _File:
    """One file of the config: its text, its TOML document, and where everything is."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self._index: SourceIndex | None = None
        try:
            self.doc = tomlkit.parse(text)
        except tomlkit.exceptions.ParseError as e:
            line = getattr(e, "line", 0)
            col = getattr(e, "col", 0) + 1  # tomlkit counts columns from 0
            msg = str(e).split(" at line ")[0]
            lines = text.splitlines()
            src = lines[line - 1] if 0 < line <= len(lines) else None
            raise ConfigError(f"TOML syntax: {msg}", source, line, col, src,
                              secret_spans=_secret_tail(lines, line)) from None

    @property
    def index(self) -> SourceIndex:
        if self._index is None:
            self._index = SourceIndex(self.text)
        return self._index

    def error(self, message: str, path: Path_ = (), offset: int | None = None, width: int = 1,
              at_key: bool = False) -> ConfigError:
        if offset is None:
            offset = self.index.key_offset(path) if at_key else self.index.value_offset(path)
        if offset is None:
            err = ConfigError(message, self.source)
        else:
            line, col = self.index.line_col(offset)
            err = ConfigError(message, self.source, line, col, self.index.line_text(line), width,
                              secret_spans=self._secrets_on(line))
        err.path = tuple(path)
        return err

    def _secrets_on(self, line: int) -> list[tuple[int, int]]:
        """Columns (0-based) of the line's values that are links or URLs of [node] and [subscription]."""
        index = self.index
        spans = []
        for path, start in index.values.items():
            if len(path) < 2 or path[0] not in SECRET_SECTIONS:
                continue
            end = index.ends.get(path, start)
            first, col = index.line_col(start)
            last, end_col = index.line_col(max(start, end - 1))
            if first == line == last:
                spans.append(_link_body(index.line_text(line), col - 1, end_col))
            elif first <= line <= last:
                spans.append((col - 1 if first == line else 0, end_col if last == line else 1 << 30))
        return spans

    def unknown_key(self, key: str, known: list[str], path: Path_, what: str) -> ConfigError:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {', '.join(known)}"
        return self.error(f"unknown {what} {key!r}{hint}", path, at_key=True, width=len(key))

    def rule_error(self, e: RuleError, path: Path_) -> ConfigError:
        start = self.index.values.get(tuple(path))
        if start is None:
            return self.error(str(e), path)
        return self.error(str(e), path, offset=self.index.char_offset(start, e.start), width=e.end - e.start)

    def typed(self, spec: KeySpec, value: Any, path: Path_) -> Any:
        name = ".".join(f"rule #{p + 1}" if isinstance(p, int) else p for p in path)
        value = value.unwrap() if hasattr(value, "unwrap") else value
        if spec.type == "bool":
            if not isinstance(value, bool):
                raise self.error(f"{name}: expected true or false", path)
            out: Any = bool(value)
        elif spec.type == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.error(f"{name}: expected an integer", path)
            out = int(value)
        elif spec.type == "str":
            if not isinstance(value, str):
                raise self.error(f"{name}: expected a string", path)
            out = str(value)
        elif spec.type == "duration":
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise self.error(f"{name}: expected a duration such as \"30s\" or \"100ms\"", path)
            try:
                out = parse_duration(value) if isinstance(value, str) else float(value)
            except ValueError as e:
                raise self.error(f"{name}: {e}", path) from None
        elif spec.type == "strlist":
            # dae writes lists as "eth0,eth1"; TOML users write ["eth0", "eth1"].
            if isinstance(value, str):
                out = tuple(v.strip() for v in value.split(",") if v.strip())
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                out = tuple(str(v) for v in value)
            else:
                raise self.error(f"{name}: expected a list of strings", path)
        elif spec.type == "intlist":
            items = value if isinstance(value, list) else str(value).split(",") if isinstance(value, str) else None
            try:
                if items is None or any(isinstance(v, bool) for v in items):
                    raise ValueError
                out = tuple(v if isinstance(v, int) else int(str(v).strip(), 0) for v in items if str(v).strip())
            except ValueError:
                raise self.error(f"{name}: expected a list of integers such as [0x100, 0x200]", path) from None
        elif spec.type == "table":
            if not isinstance(value, dict):
                raise self.error(f"{name}: expected a table", path)
            out = dict(value)
        elif spec.type == "rulelist":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise self.error(f"{name}: expected a list of rules (strings)", path)
            out = tuple(value)
        else:  # pragma: no cover - schema types are fixed
            raise AssertionError(spec.type)
        if spec.check and (problem := spec.check(out)):
            raise self.error(f"{name}: {problem}", path)
        return out


@dataclass
class _Part:
    file: _File
    table: Any


class _Loader:
    def __init__(self, text: str, source: str, path: Path | None = None,
                 overrides: dict[str, str] | None = None) -> None:
        self.main = _File(text, source)
        self.path = path
        self.files: list[_File] = [self.main]
        self.warnings: list[str] = []
        self.overrides = overrides or {}
        # geoip.dat/geosite.dat next to the config first, then the usual places.
        self.geo = GeoData(default_search_path(Path(source).parent if path else None))

    # -- files -------------------------------------------------------------------------
    def _includes(self, f: _File, depth: int, seen: set[str]) -> None:
        if "include" not in f.doc:
            return
        inc = f.doc["include"]
        items = [inc] if isinstance(inc, str) else (list(inc) if isinstance(inc, Array | list) else None)
        if items is None or not all(isinstance(i, str) for i in items):
            raise f.error("include: expected a file name or a list of them", ("include",))
        if depth >= MAX_INCLUDE_DEPTH:
            raise f.error(f"include: nested more than {MAX_INCLUDE_DEPTH} deep", ("include",))
        base = Path(f.source).parent
        for n, name in enumerate(items):
            p = (base / str(name)).resolve()
            where = ("include", n) if not isinstance(inc, str) else ("include",)
            if str(p) in seen:
                raise f.error(f"include: {name} is included twice (or includes itself)", where)
            seen.add(str(p))
            try:
                text = self.overrides[str(p)] if str(p) in self.overrides else p.read_text(encoding="utf-8")
            except OSError as e:
                raise f.error(f"include: cannot read {p}: {e.strerror}", where) from None
            child = _File(text, str(p))
            self.files.append(child)
            self._includes(child, depth + 1, seen)

    def _sections(self) -> dict[str, list[_Part]]:
        out: dict[str, list[_Part]] = {s: [] for s in SECTIONS}
        for f in self.files:
            for section in f.doc:
                if section == "include":
                    continue
                if section not in SECTIONS:
                    raise f.unknown_key(section, [*SECTIONS, "include"], (section,), "section")
                table = f.doc[section]
                if not isinstance(table, Table | InlineTable):
                    raise f.error(f"[{section}] must be a table", (section,))
                out[section].append(_Part(f, table))
        return out

    # -- sections ------------------------------------------------------------------------
    def load(self) -> Config:
        seen = {str(self.path.resolve())} if self.path else set()
        self._includes(self.main, 0, seen)
        parts = self._sections()
        glob = self._global(parts["global"])
        nodes = self._tagged(parts["node"], "node", NODE_SCHEMES)
        subs = self._tagged(parts["subscription"], "subscription", SUBSCRIPTION_SCHEMES)
        groups = self._groups(parts["group"])
        dns = self._dns(parts["dns"])
        devices = self._devices(parts["device"])
        if len(parts["routing"]) > 1:
            other = parts["routing"][1].file
            raise other.error(f"[routing] is in {parts['routing'][0].file.source} already: one file holds the rules",
                              ("routing",), at_key=True)
        routing_part = parts["routing"][0] if parts["routing"] else _Part(self.main, {})
        routing = self._routing(routing_part, groups)
        # The controller's secret is masked in every log line and error from now on.
        remember(str(glob.get("external_controller_secret") or ""))
        if not glob.get("lan_interface") and not glob.get("wan_interface"):
            self.warnings.append("global.lan_interface and wan_interface are empty: no traffic will be routed")
        return Config(
            source=self.main.source, global_=GlobalConfig(**glob), routing=routing, devices=devices, nodes=nodes,
            subscriptions=subs, groups=groups, dns=dns, files=tuple(f.source for f in self.files),
            routing_file=routing_part.file.source, text=self.main.text, warnings=tuple(self.warnings))

    def _global(self, parts: list[_Part]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        where: dict[str, str] = {}
        for part in parts:
            for key, value in part.table.items():
                path = ("global", key)
                if key in DAE_ONLY:
                    self.warnings.append(f"{part.file.source}: global.{key} is ignored: {DAE_ONLY[key]}")
                    continue
                if key not in GLOBAL:
                    raise part.file.unknown_key(key, list(GLOBAL), path, "key in [global]:")
                if key in out:
                    raise part.file.error(f"global.{key} is set in {where[key]} already", path, at_key=True)
                out[key] = part.file.typed(GLOBAL[key], value, path)
                where[key] = part.file.source
        lan, wan = out.get("lan_interface", ()), out.get("wan_interface", ())
        for name in sorted(set(lan) & set(wan)):
            # dae binds such an interface both ways (a one-armed router); daetui binds it as LAN only.
            self.warnings.append(f"global: {name} is in both lan_interface and wan_interface: daetui binds it "
                                 "as LAN (its clients are routed); the router's own traffic out of it is not")
        if "auto" in lan:
            self.warnings.append("global.lan_interface: 'auto' names an interface called auto (only "
                                 "wan_interface has auto, in dae as in daetui)")
        if out.get("tproxy_port_protect") is False:
            self.warnings.append("global.tproxy_port_protect = false has no effect: daetui listens on loopback only")
        return out

    def _tagged(self, parts: list[_Part], section: str, schemes: tuple[str, ...]) -> tuple[Tagged, ...]:
        out: dict[str, Tagged] = {}
        for part in parts:
            for tag, link in part.table.items():
                path = (section, tag)
                if not _TAG.match(tag):
                    raise part.file.error(f"{section} tag {tag!r}: letters, digits, _ . - @ only", path, at_key=True)
                if tag in out:
                    raise part.file.error(f"{section} {tag!r} is defined twice", path, at_key=True)
                if not isinstance(link, str):
                    raise part.file.error(f"{section}.{tag}: expected a link (a string)", path)
                scheme = str(link).split("://", 1)[0].lower() if "://" in str(link) else ""
                if scheme not in schemes:
                    close = difflib.get_close_matches(scheme, schemes, n=1)
                    hint = f" (did you mean {close[0]}://?)" if close else ""
                    raise part.file.error(f"{section}.{tag}: expected a {'/'.join(schemes)} link{hint}", path)
                # Its secrets are masked in every log line and error from now on.
                remember_link(str(link))
                reason = _link_check(str(link)) if _link_check is not None and section == "node" else None
                if reason is not None:
                    raise part.file.error(f"{section}.{tag}: {reason}", path)
                out[tag] = Tagged(tag, str(link))
        return tuple(out.values())

    def _groups(self, parts: list[_Part]) -> tuple[GroupSpec, ...]:
        out: dict[str, GroupSpec] = {}
        for part in parts:
            for name, table in part.table.items():
                path = ("group", name)
                if name in (DIRECT, BLOCK) or name.startswith("must_") or not re.match(r"^[A-Za-z_][\w\-]*$", name):
                    raise part.file.error(f"group name {name!r}: a name of letters, digits, _ and -, not "
                                          "direct, block or must_*", path, at_key=True)
                if name in out:
                    raise part.file.error(f"group {name!r} is defined twice", path, at_key=True)
                if not isinstance(table, Table | InlineTable | dict):
                    raise part.file.error(f"[group.{name}] must be a table (filter, policy)", path)
                kw: dict[str, Any] = {}
                for key, value in table.items():
                    if key not in GROUP:
                        raise part.file.unknown_key(key, list(GROUP), (*path, key), f"key in [group.{name}]:")
                    kw["filters" if key == "filter" else key] = part.file.typed(GROUP[key], value, (*path, key))
                for i, text in enumerate(kw.get("filters", ())):
                    try:
                        parse_filter(text)
                    except RuleError as e:
                        raise part.file.rule_error(e, (*path, "filter", i)) from None
                out[name] = GroupSpec(name, **kw)
        return tuple(out.values())

    def _dns(self, parts: list[_Part]) -> DnsConfig:
        kw: dict[str, Any] = {}
        where: dict[str, _File] = {}
        for part in parts:
            for key, value in part.table.items():
                path = ("dns", key)
                if key not in DNS:
                    raise part.file.unknown_key(key, list(DNS), path, "key in [dns]:")
                if key in kw:
                    raise part.file.error(f"dns.{key} is set twice", path, at_key=True)
                kw[key] = part.file.typed(DNS[key], value, path)
                if key in ("request", "response"):
                    rules, fallback = self._dns_fallback(part.file, key, kw[key])
                    kw[key] = rules
                    kw[f"{key}_fallback"] = fallback
                    where[key] = part.file
                elif key == "upstream":
                    where[key] = part.file
        for name, url in kw.get("upstream", {}).items():
            f = where["upstream"]
            try:
                if not isinstance(url, str):
                    raise ValueError("expected a string such as \"udp://192.0.2.53:53\"")
                parse_upstream(name, url)
            except ValueError as e:
                raise f.error(f"dns.upstream.{name}: {e}", ("dns", "upstream", name)) from None
        for name, ttl in kw.get("fixed_domain_ttl", {}).items():
            if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0:
                raise parts[0].file.error(f"dns.fixed_domain_ttl.{name}: expected seconds (an integer, 0 or more)",
                                          ("dns", "fixed_domain_ttl", name))
        config = DnsConfig(**kw)
        lists = {}
        for key in ("request", "response"):
            texts = getattr(config, key)
            try:
                lists[key] = compile_list(key, texts, getattr(config, f"{key}_fallback"), config.upstream, self.geo)
            except RuleError as e:
                f = where.get(key, parts[0].file if parts else self.files[0])
                i = getattr(e, "rule_index", 0)
                # The fallback is the list's last line as written.
                raise f.rule_error(e, ("dns", key, i)) from None
        return replace(config, compiled=DnsRules(lists["request"], lists["response"]))

    def _dns_fallback(self, f: _File, key: str, rules: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
        """The rules, and the fallback their last line names (dae's defaults: asis, accept)."""
        fallback = "asis" if key == "request" else "accept"
        out = []
        for i, text in enumerate(rules):
            if text.strip().startswith("fallback:"):
                if i != len(rules) - 1:
                    raise f.error(f"dns.{key}: the fallback comes last", ("dns", key, i))
                fallback = text.split(":", 1)[1].strip()
                continue
            out.append(text)
        return tuple(out), fallback

    def _devices(self, parts: list[_Part]) -> dict[str, str]:
        """`[device]`: labels for LAN clients by MAC, shown by the console."""
        out: dict[str, str] = {}
        for part in parts:
            for mac, label in part.table.items():
                norm = mac.lower().replace("-", ":")
                if not _MAC.match(norm):
                    raise part.file.error(f"device {mac!r}: expected a MAC address such as \"02:00:5e:00:02:10\"",
                                          ("device", mac), at_key=True, width=len(mac) + 2)
                if not isinstance(label, str):
                    raise part.file.error(f"device {mac}: expected a label (a string)", ("device", mac))
                out[norm] = str(label)
        return out

    def _routing(self, part: _Part, groups: tuple[GroupSpec, ...]) -> RuleSet:
        f, table = part.file, part.table
        for key in table:
            if key not in ROUTING:
                raise f.unknown_key(key, list(ROUTING), ("routing", key), "key in [routing]:")
        raw_rules = table.get("rules", [])
        if not isinstance(raw_rules, Array | list):
            raise f.error("routing.rules: expected a list of rules", ("routing", "rules"))
        declared = tuple(g.name for g in groups)
        entries: list[RuleEntry] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(raw_rules):
            path = ("routing", "rules", i)
            enabled, name = True, None
            text_path = path
            if isinstance(item, str):
                text = str(item)
            elif isinstance(item, InlineTable | Table | dict):
                for k in item:
                    if k not in RULE_TABLE_KEYS:
                        raise f.unknown_key(k, list(RULE_TABLE_KEYS), (*path, k), "key in a rule table:")
                if "rule" not in item or not isinstance(item["rule"], str):
                    raise f.error("a rule table needs rule = \"...\"", path)
                text = str(item["rule"])
                text_path = (*path, "rule")
                enabled = f.typed(KeySpec("bool", True, ""), item.get("enabled", True), (*path, "enabled"))
                if "name" in item:
                    name = f.typed(KeySpec("str", "", ""), item["name"], (*path, "name"))
            else:
                raise f.error("a rule is a string or a table { rule = \"...\", enabled = false }", path)
            try:
                rule = parse_rule(text)
                checked = check_rule(rule, self.geo)
            except RuleError as e:
                raise f.rule_error(e, text_path) from None
            target = rule.outbound.target
            if target not in (DIRECT, BLOCK, MUST_RULES) and target not in declared:
                at = max(0, text.rfind(rule.outbound.name))
                raise f.rule_error(RuleError(_no_group(target, declared), at, at + len(rule.outbound.name)),
                                   text_path)
            entries.append(RuleEntry(i, rule, checked, enabled, name, rule_id(rule, name, seen)))
        fallback = table.get("fallback", ROUTING["fallback"].default)
        if not isinstance(fallback, str):
            raise f.error("routing.fallback: expected an outbound name", ("routing", "fallback"))
        try:
            fallback = parse_outbound_name(str(fallback))
        except RuleError as e:
            raise f.rule_error(e, ("routing", "fallback")) from None
        if fallback.startswith("must_"):
            raise f.error("routing.fallback: a fallback cannot be must_*", ("routing", "fallback"))
        if fallback not in (DIRECT, BLOCK) and fallback not in declared:
            raise f.error(f"routing.fallback: {_no_group(fallback, declared)}", ("routing", "fallback"))
        return RuleSet(tuple(entries), fallback, groups_of(entries, fallback, declared))


def _no_group(name: str, declared: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, declared, n=1, cutoff=0.6)
    if close:
        return f"no group named {name!r}; did you mean {close[0]!r}?"
    if declared:
        return f"no group named {name!r}; the groups are {', '.join(declared)} (or direct, block)"
    return f"no group named {name!r}; declare it with a [group.{name}] table (or use direct, block)"


def parse_config(text: str, source: str = "<config>") -> Config:
    """Check a config given as text; ConfigError says where it is wrong."""
    return _Loader(text, source).load()


def load_config(path: str | os.PathLike[str], overrides: dict[str, str] | None = None) -> Config:
    """Read and check a config file and the files it includes.

    `overrides` maps resolved file paths to text to use instead of the file's
    (to check an edit before writing it).
    """
    p = Path(path)
    overrides = overrides or {}
    try:
        text = overrides.get(str(p.resolve())) or p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", str(p)) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", str(p)) from None
    loader = _Loader(text, str(p), p, overrides)
    cfg = loader.load()
    for f in loader.files:
        holds_secrets = any(s in f.doc for s in SECRET_SECTIONS)
        try:
            mode = os.stat(f.source).st_mode
        except OSError:
            continue
        if holds_secrets and mode & (stat.S_IROTH | stat.S_IWOTH):
            cfg = dataclasses.replace(cfg, warnings=(
                *cfg.warnings, f"{f.source} is readable by every user; it holds proxy links with passwords "
                               f"(chmod 600 {f.source})"))
    return cfg
