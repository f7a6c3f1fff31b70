"""Where each key and value of a TOML file is, for error messages.

tomlkit keeps comments and layout but not positions, so once a file has
parsed, this scanner walks the same text and records the offset of every
table, key, value and array element by its path, e.g.
`("routing", "rules", 2)`. It reads only valid TOML (tomlkit has accepted
the text before it runs).
"""

from __future__ import annotations

import bisect
import re

Path_ = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_\-]+")


class SourceIndex:
    """Offsets of the values (and keys) of a TOML document by path."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.values: dict[Path_, int] = {}
        self.ends: dict[Path_, int] = {}      # where each value's text ends (exclusive)
        self.keys: dict[Path_, int] = {}
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        try:
            self._scan()
        except (IndexError, ValueError):
            pass  # positions are a courtesy; whatever was recorded stays usable

    # -- queries --------------------------------------------------------------
    def line_col(self, offset: int) -> tuple[int, int]:
        """1-based line and column of a character offset."""
        line = bisect.bisect_right(self._line_starts, offset) - 1
        return line + 1, offset - self._line_starts[line] + 1

    def line_text(self, line: int) -> str:
        start = self._line_starts[line - 1]
        end = self.text.find("\n", start)
        return self.text[start:] if end < 0 else self.text[start:end]

    def value_offset(self, path: Path_) -> int | None:
        """Offset of the value at `path`, or of its nearest recorded parent."""
        p = tuple(path)
        while p:
            if p in self.values:
                return self.values[p]
            p = p[:-1]
        return None

    def key_offset(self, path: Path_) -> int | None:
        """Offset of the key that names `path` (falls back to the value)."""
        p = tuple(path)
        if p in self.keys:
            return self.keys[p]
        return self.value_offset(p)

    def char_offset(self, value_offset: int, k: int) -> int:
        """Offset in the file of character `k` of the string value at `value_offset`."""
        t = self.text
        if t.startswith(('"""', "'''"), value_offset):
            i = value_offset + 3
            if t.startswith("\n", i):  # a newline right after the opening quotes is trimmed
                i += 1
        else:
            i = value_offset + 1
        basic = t[value_offset] == '"'
        for _ in range(k):
            if basic and i < len(t) and t[i] == "\\":
                nxt = t[i + 1] if i + 1 < len(t) else ""
                i += {"u": 6, "U": 10}.get(nxt, 2)
            else:
                i += 1
        return i

    # -- scanner --------------------------------------------------------------
    def _skip_blank(self, i: int, newlines: bool) -> int:
        t = self.text
        while i < len(t):
            c = t[i]
            if c in " \t\r" or (newlines and c == "\n"):
                i += 1
            elif c == "#" and newlines:
                j = t.find("\n", i)
                i = len(t) if j < 0 else j + 1
            else:
                break
        return i

    def _key(self, i: int) -> tuple[tuple[str, ...], int]:
        t = self.text
        parts: list[str] = []
        while True:
            i = self._skip_blank(i, newlines=False)
            if t[i] == '"':
                j = i + 1
                while t[j] != '"':
                    j += 2 if t[j] == "\\" else 1
                parts.append(t[i + 1 : j].encode().decode("unicode_escape"))
                i = j + 1
            elif t[i] == "'":
                j = t.index("'", i + 1)
                parts.append(t[i + 1 : j])
                i = j + 1
            else:
                m = _BARE_KEY.match(t, i)
                if not m:
                    raise ValueError("not a key")
                parts.append(m.group(0))
                i = m.end()
            i = self._skip_blank(i, newlines=False)
            if i < len(t) and t[i] == ".":
                i += 1
                continue
            return tuple(parts), i

    def _scan(self) -> None:
        t = self.text
        table: Path_ = ()
        aot_count: dict[Path_, int] = {}
        i = 0
        while True:
            i = self._skip_blank(i, newlines=True)
            if i >= len(t):
                return
            if t.startswith("[[", i):
                path, j = self._key(i + 2)
                n = aot_count.get(path, 0)
                aot_count[path] = n + 1
                table = (*path, n)
                self.values[table] = i
                self.keys.setdefault(path, i)
                i = t.index("]]", j) + 2
            elif t[i] == "[":
                path, j = self._key(i + 1)
                table = path
                self.values[table] = i
                self.keys[table] = i
                i = t.index("]", j) + 1
            else:
                start = i
                key, i = self._key(i)
                full = (*table, *key)
                self.keys[full] = start
                i = self._skip_blank(i, newlines=False)
                if t[i] != "=":
                    raise ValueError("expected =")
                i = self._value(self._skip_blank(i + 1, newlines=False), full)

    def _value(self, i: int, path: Path_) -> int:
        end = self._value_end(i, path)
        self.ends[path] = end
        return end

    def _value_end(self, i: int, path: Path_) -> int:
        t = self.text
        self.values[path] = i
        for q in ('"""', "'''"):
            if t.startswith(q, i):
                j = i + 3
                while not t.startswith(q, j) or (q == '"""' and t[j - 1] == "\\"):
                    j += 1
                while t.startswith(q[0], j + 3):  # up to two quotes may end the body
                    j += 1
                return j + 3
        c = t[i]
        if c == '"':
            j = i + 1
            while t[j] != '"':
                j += 2 if t[j] == "\\" else 1
            return j + 1
        if c == "'":
            return t.index("'", i + 1) + 1
        if c == "[":
            i += 1
            n = 0
            while True:
                i = self._skip_blank(i, newlines=True)
                if t[i] == "]":
                    return i + 1
                i = self._value(i, (*path, n))
                n += 1
                i = self._skip_blank(i, newlines=True)
                if t[i] == ",":
                    i += 1
        if c == "{":
            i += 1
            while True:
                i = self._skip_blank(i, newlines=False)
                if t[i] == "}":
                    return i + 1
                start = i
                key, i = self._key(i)
                self.keys[(*path, *key)] = start
                i = self._skip_blank(i, newlines=False)
                i = self._value(self._skip_blank(i + 1, newlines=False), (*path, *key))
                i = self._skip_blank(i, newlines=False)
                if t[i] == ",":
                    i += 1
        m = re.compile(r"[^,\]}\n#]*").match(t, i)
        assert m is not None
        end = m.end()
        while end > i and t[end - 1] in " \t\r":  # a bare value ends before the spaces after it
            end -= 1
        return end
