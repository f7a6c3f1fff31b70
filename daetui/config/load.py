"""Read a config file into checked dataclasses, or fail saying where and why."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions
from tomlkit.items import Array, InlineTable, Table

from daetui.config.errors import ConfigError
from daetui.config.locate import Path_, SourceIndex
from daetui.config.schema import GLOBAL, ROUTING, SECTIONS, KeySpec
from daetui.routing.errors import RuleError
from daetui.routing.parser import parse_outbound_name, parse_rule
from daetui.routing.ruleset import RuleEntry, RuleSet, check_rule, groups_of, rule_id

# Sections of dae's config that later versions of daetui read.
NOT_YET = ("node", "subscription", "group", "dns")
RULE_TABLE_KEYS = ("rule", "enabled", "name")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# Sections that hold passwords: a file with them should not be world-readable.
SECRET_SECTIONS = ("node", "subscription")


@dataclass(frozen=True)
class GlobalConfig:
    """The `[global]` section."""

    lan_interface: tuple[str, ...] = ()
    wan_interface: tuple[str, ...] = ()
    tproxy_port: int = 12345
    so_mark_from_dae: int = GLOBAL["so_mark_from_dae"].default
    log_level: str = "info"
    auto_config_kernel_parameter: bool = True
    fail_open: bool = True


@dataclass(frozen=True)
class Config:
    """A whole config, checked."""

    source: str
    global_: GlobalConfig
    routing: RuleSet
    devices: dict[str, str] = field(default_factory=dict)   # MAC (aa:bb:..) -> label
    warnings: tuple[str, ...] = field(default=(), compare=False)


class _Loader:
    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self._index: SourceIndex | None = None

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
            return ConfigError(message, self.source)
        line, col = self.index.line_col(offset)
        return ConfigError(message, self.source, line, col, self.index.line_text(line), width)

    def unknown_key(self, key: str, known: list[str], path: Path_, what: str) -> ConfigError:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {', '.join(known)}"
        return self.error(f"unknown {what} {key!r}{hint}", path, at_key=True, width=len(key))

    def typed(self, spec: KeySpec, value: Any, path: Path_) -> Any:
        name = ".".join(f"rule #{p + 1}" if isinstance(p, int) else p for p in path)
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
        elif spec.type == "strlist":
            # dae writes lists as "eth0,eth1"; TOML users write ["eth0", "eth1"].
            if isinstance(value, str):
                out = tuple(v.strip() for v in value.split(",") if v.strip())
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                out = tuple(str(v) for v in value)
            else:
                raise self.error(f"{name}: expected a list of strings", path)
        else:  # pragma: no cover - schema types are fixed
            raise AssertionError(spec.type)
        if spec.check and (problem := spec.check(out)):
            raise self.error(f"{name}: {problem}", path)
        return out

    def load(self) -> Config:
        try:
            doc = tomlkit.parse(self.text)
        except tomlkit.exceptions.ParseError as e:
            line = getattr(e, "line", 0)
            col = getattr(e, "col", 0) + 1  # tomlkit counts columns from 0
            msg = str(e).split(" at line ")[0]
            src = self.text.splitlines()[line - 1] if 0 < line <= len(self.text.splitlines()) else None
            raise ConfigError(f"TOML syntax: {msg}", self.source, line, col, src) from None

        for section in doc:
            if section == "device":
                continue
            if section in SECTIONS:
                if not isinstance(doc[section], Table | InlineTable):
                    raise self.error(f"[{section}] must be a table", (section,))
            elif section in NOT_YET:
                raise self.error(f"section [{section}] is not supported yet by this version of daetui",
                                 (section,), at_key=True, width=len(section) + 2)
            else:
                raise self.unknown_key(section, [*SECTIONS, "device", *NOT_YET], (section,), "section")

        glob = self.section(doc, "global", GLOBAL)
        routing = self.routing(doc)
        warnings = []
        if not glob.get("lan_interface"):
            warnings.append("global.lan_interface is empty: no LAN traffic will be routed")
        return Config(self.source, GlobalConfig(**glob), routing, self.devices(doc), tuple(warnings))

    def devices(self, doc: Any) -> dict[str, str]:
        """`[device]`: labels for LAN clients by MAC, shown by the console."""
        if "device" not in doc:
            return {}
        table = doc["device"]
        if not isinstance(table, Table | InlineTable):
            raise self.error("[device] must be a table of \"aa:bb:cc:dd:ee:ff\" = \"label\"", ("device",))
        out = {}
        for mac, label in table.items():
            norm = mac.lower().replace("-", ":")
            if not _MAC.match(norm):
                raise self.error(f"device {mac!r}: expected a MAC address such as \"02:00:5e:00:02:10\"",
                                 ("device", mac), at_key=True, width=len(mac) + 2)
            if not isinstance(label, str):
                raise self.error(f"device {mac}: expected a label (a string)", ("device", mac))
            out[norm] = str(label)
        return out

    def section(self, doc: Any, name: str, specs: dict[str, KeySpec]) -> dict[str, Any]:
        table = doc.get(name, {})
        out: dict[str, Any] = {}
        for key, value in table.items():
            if key not in specs:
                raise self.unknown_key(key, list(specs), (name, key), f"key in [{name}]:")
            out[key] = self.typed(specs[key], value.unwrap() if hasattr(value, "unwrap") else value,
                                  (name, key))
        return out

    def routing(self, doc: Any) -> RuleSet:
        table = doc.get("routing", {})
        for key in table:
            if key not in ROUTING:
                raise self.unknown_key(key, list(ROUTING), ("routing", key), "key in [routing]:")
        raw_rules = table.get("rules", [])
        if not isinstance(raw_rules, Array | list):
            raise self.error("routing.rules: expected a list of rules", ("routing", "rules"))
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
                        raise self.unknown_key(k, list(RULE_TABLE_KEYS), (*path, k), "key in a rule table:")
                if "rule" not in item or not isinstance(item["rule"], str):
                    raise self.error("a rule table needs rule = \"...\"", path)
                text = str(item["rule"])
                text_path = (*path, "rule")
                enabled = self.typed(KeySpec("bool", True, ""), item.get("enabled", True), (*path, "enabled"))
                if "name" in item:
                    name = self.typed(KeySpec("str", "", ""), item["name"], (*path, "name"))
            else:
                raise self.error("a rule is a string or a table { rule = \"...\", enabled = false }", path)
            try:
                rule = parse_rule(text)
                checked = check_rule(rule)
            except RuleError as e:
                raise self.rule_error(e, text_path) from None
            entries.append(RuleEntry(i, rule, checked, enabled, name, rule_id(rule, name, seen)))
        fallback = table.get("fallback", ROUTING["fallback"].default)
        if not isinstance(fallback, str):
            raise self.error("routing.fallback: expected an outbound name", ("routing", "fallback"))
        try:
            fallback = parse_outbound_name(str(fallback))
        except RuleError as e:
            raise self.rule_error(e, ("routing", "fallback")) from None
        if fallback.startswith("must_"):
            raise self.error("routing.fallback: a fallback cannot be must_*", ("routing", "fallback"))
        return RuleSet(tuple(entries), fallback, groups_of(entries, fallback))

    def rule_error(self, e: RuleError, path: Path_) -> ConfigError:
        start = self.index.values.get(tuple(path))
        if start is None:
            return self.error(str(e), path)
        offset = self.index.char_offset(start, e.start)
        return self.error(str(e), path, offset=offset, width=e.end - e.start)


def parse_config(text: str, source: str = "<config>") -> Config:
    """Check a config given as text; ConfigError says where it is wrong."""
    return _Loader(text, source).load()


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and check a config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", str(p)) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", str(p)) from None
    cfg = _Loader(text, str(p)).load()
    mode = p.stat().st_mode
    holds_secrets = any(s in tomlkit.parse(text) for s in SECRET_SECTIONS)
    if holds_secrets and mode & (stat.S_IROTH | stat.S_IWOTH):
        extra = f"{p} is readable by every user; it may hold proxy passwords (chmod 600 {p})"
        cfg = dataclasses.replace(cfg, warnings=(*cfg.warnings, extra))
    return cfg
