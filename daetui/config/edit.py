"""Editing the routing rules of a config file, the way a person would.

Each edit changes only the text of the rules it touches: every comment,
the order of everything else and the layout stay as the user wrote them. A
rule's "block" is its line(s) together with the comment lines directly above
it, so a moved or deleted rule takes its comment with it. After every edit
the text is parsed again; `save()` validates the whole config with the new
text and only then writes: to a temporary file in the same directory,
fsync'ed, renamed over the original, with the previous version kept as
`<file>.bak`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tomlkit
from tomlkit.items import InlineTable, String

from daetui.config.errors import ConfigError
from daetui.config.load import load_config
from daetui.config.locate import SourceIndex
from daetui.config.model import Config


class EditError(ValueError):
    """An edit that cannot be made (out of range, stale, or not a valid config)."""


@dataclass(frozen=True)
class _Block:
    start: int        # first character of the block (a comment line above, or the rule's line)
    value_start: int
    value_end: int
    end: int          # after the newline that ends the rule's line (or the value, inline arrays)
    own_lines: bool   # the rule sits on its own line(s)


def _literal(s: str) -> str:
    """A TOML string literal for a rule (tomlkit escapes it)."""
    return tomlkit.string(s).as_string()


def _inline(pairs: dict[str, object]) -> str:
    """`{ rule = "...", enabled = false }`: an inline table as people write them (tomlkit drops the spaces)."""
    return "{ " + ", ".join(f"{k} = {tomlkit.item(v).as_string()}" for k, v in pairs.items()) + " }"


class RulesEditor:
    """Edits `routing.rules` in the file that holds them."""

    def __init__(self, path: str | os.PathLike[str], text: str | None = None) -> None:
        self.path = Path(path)
        self.text = self.path.read_text(encoding="utf-8") if text is None else text
        self.original = self.text
        self._parse()

    # -- reading ----------------------------------------------------------------------------
    def _parse(self) -> None:
        try:
            self.doc = tomlkit.parse(self.text)
        except Exception as e:  # an edit that breaks the TOML is a bug to report, never to write
            raise EditError(f"the edit would not be valid TOML: {e}") from None
        self.index = SourceIndex(self.text)
        routing = self.doc.get("routing")
        if routing is None or "rules" not in routing:
            raise EditError(f"{self.path} has no routing.rules")
        self.items = list(routing["rules"])

    def __len__(self) -> int:
        return len(self.items)

    def rule_text(self, i: int) -> str:
        item = self._item(i)
        return str(item["rule"]) if isinstance(item, dict | InlineTable) else str(item)

    def enabled(self, i: int) -> bool:
        item = self._item(i)
        return not (isinstance(item, dict | InlineTable) and item.get("enabled", True) is False)

    def _item(self, i: int) -> object:
        if not 0 <= i < len(self.items):
            raise EditError(f"there is no rule #{i + 1} (the file has {len(self.items)})")
        return self.items[i]

    def _block(self, i: int) -> _Block:
        self._item(i)
        t = self.text
        vs = self.index.values[("routing", "rules", i)]
        ve = self.index.ends[("routing", "rules", i)]
        line_start = t.rfind("\n", 0, vs) + 1
        own = t[line_start:vs].strip() == ""
        if not own:
            return _Block(vs, vs, ve, ve, False)
        after = t.find("\n", ve)
        rest = t[ve:after if after >= 0 else len(t)]
        if rest.strip() not in ("", ",") and not rest.strip().lstrip(",").lstrip().startswith("#"):
            # Another value follows on the same line: this one is not alone.
            return _Block(vs, vs, ve, ve, False)
        end = len(t) if after < 0 else after + 1
        start = line_start
        # Comment lines directly above belong to the rule.
        while start > 0:
            prev_start = t.rfind("\n", 0, start - 1) + 1
            if t[prev_start:start].strip().startswith("#"):
                start = prev_start
            else:
                break
        return _Block(start, vs, ve, end, True)

    # -- edits ---------------------------------------------------------------------------------
    def _replace_value(self, i: int, literal: str) -> None:
        b = self._block(i)
        self.text = self.text[:b.value_start] + literal + self.text[b.value_end:]
        self._parse()

    def set_rule(self, i: int, rule_text: str) -> None:
        """Replace rule #i's text, keeping its name and enabled state."""
        item = self._item(i)
        if isinstance(item, dict | InlineTable):
            self._replace_value(i, _inline({k: rule_text if k == "rule" else v for k, v in item.items()}))
        else:
            self._replace_value(i, _literal(rule_text))

    def set_enabled(self, i: int, enabled: bool) -> None:
        """Enable or disable rule #i: `{ rule = "...", enabled = false }` and back."""
        item = self._item(i)
        if self.enabled(i) == enabled:
            return
        if isinstance(item, String | str) and not enabled:
            self._replace_value(i, _inline({"rule": item, "enabled": False}))
            return
        assert isinstance(item, dict | InlineTable)
        rest = {k: v for k, v in item.items() if k != "enabled"}
        if list(rest) == ["rule"] and enabled:
            self._replace_value(i, _literal(str(rest["rule"])))  # back to the plain string it was
            return
        self._replace_value(i, _inline({**rest, "enabled": False} if not enabled else rest))

    def insert(self, i: int, rule_text: str) -> None:
        """A new rule at position i (0 = first; len = last)."""
        if not 0 <= i <= len(self.items):
            raise EditError(f"cannot insert at position {i + 1}")
        literal = _literal(rule_text)
        if not self.items:
            arr = self.index.values[("routing", "rules")]
            end = self.index.ends[("routing", "rules")]
            self.text = self.text[:arr] + f"[\n  {literal},\n]" + self.text[end:]
        elif i < len(self.items):
            b = self._block(i)
            if b.own_lines:
                indent = self.text[self.text.rfind("\n", 0, b.value_start) + 1:b.value_start]
                self.text = self.text[:b.start] + f"{indent}{literal},\n" + self.text[b.start:]
            else:
                self.text = self.text[:b.value_start] + f"{literal}, " + self.text[b.value_start:]
        else:
            b = self._block(i - 1)
            after = self.text[b.value_end:]
            comma = "" if after.lstrip(" \t").startswith(",") else ","
            if b.own_lines:
                indent = self.text[self.text.rfind("\n", 0, b.value_start) + 1:b.value_start]
                self.text = self.text[:b.value_end] + comma + self.text[b.value_end:b.end] + \
                    f"{indent}{literal},\n" + self.text[b.end:]
            else:
                self.text = self.text[:b.value_end] + f", {literal}" + self.text[b.value_end:]
        self._parse()

    def remove(self, i: int) -> None:
        """Delete rule #i with the comment lines above it."""
        b = self._block(i)
        if b.own_lines:
            self.text = self.text[:b.start] + self.text[b.end:]
        else:
            arr = self.doc["routing"]["rules"]
            del arr[i]
            self.text = self.doc.as_string()
        self._parse()

    def move(self, i: int, to: int) -> None:
        """Move rule #i (with its comments) so that it becomes rule #to."""
        n = len(self.items)
        if not (0 <= i < n and 0 <= to < n):
            raise EditError(f"cannot move rule #{i + 1} to #{to + 1} (the file has {n})")
        if i == to:
            return
        b = self._block(i)
        if not b.own_lines:
            arr = self.doc["routing"]["rules"]
            item = self.items[i]
            del arr[i]
            arr.insert(to, item)
            self.text = self.doc.as_string()
            self._parse()
            return
        piece = self.text[b.start:b.end]
        rel = b.value_end - b.start
        if not piece[rel:].lstrip(" \t").startswith(","):
            piece = piece[:rel] + "," + piece[rel:]  # it was the last one; now it is followed by others
        if not piece.endswith("\n"):
            piece += "\n"
        self.text = self.text[:b.start] + self.text[b.end:]
        self._parse()
        if to >= len(self.items):
            last = self._block(len(self.items) - 1)
            tail = self.text[last.value_end:]
            comma = "" if tail.lstrip(" \t").startswith(",") else ","
            self.text = self.text[:last.value_end] + comma + self.text[last.value_end:last.end] + piece + \
                self.text[last.end:]
        else:
            target = self._block(to)
            self.text = self.text[:target.start] + piece + self.text[target.start:]
        self._parse()

    # -- saving ------------------------------------------------------------------------------------
    def validate(self, main: str | os.PathLike[str]) -> Config:
        """The whole config as it would be with this text (the main file may include ours)."""
        try:
            return load_config(main, overrides={str(self.path.resolve()): self.text})
        except ConfigError as e:
            raise EditError(str(e)) from None

    def save(self, main: str | os.PathLike[str] | None = None) -> Config:
        """Validate, then write atomically, keeping the previous version as <file>.bak."""
        cfg = self.validate(main or self.path)
        if self.text == self.original:
            return cfg
        write_atomic(self.path, self.text, backup=True)
        self.original = self.text
        return cfg


def write_atomic(path: Path, text: str, backup: bool = True) -> None:
    """Write `text` to `path` so that a reader sees the old file or the new one, never half of either."""
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o600
    if backup and path.exists():
        _replace_with(path.with_name(path.name + ".bak"), path.read_bytes(), mode)
    _replace_with(path, text.encode("utf-8"), mode)


def _replace_with(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
