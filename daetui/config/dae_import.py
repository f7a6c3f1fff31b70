"""Convert a dae config file (dae's own syntax) into daetui's TOML.

`daetui import-dae FILE.dae` calls `convert_dae`. The conversion is faithful
or it fails: anything that would be lost, guessed at or that dae itself would
reject is a `DaeImportError` with the file, line and column, never dropped.

dae's syntax, as its ANTLR grammar (dae-config-dist, dae_config.g4) reads it:

    section     := ID "{" item* "}"
    item        := section | declaration | rule | literal
    declaration := ID ":" (functions annotation? | literal ("," literal)*)
    rule        := functions "->" outbound
    functions   := "!"? ID "(" param ("," param)* ")" ("&&" ...)*
    param       := (ID ":")? literal
    literal     := 'single' | "double" | bare word
    annotation  := "[" param ("," param)* "]"      (group filters: [add_latency: -500ms])

with `#` line comments and `/* */` block comments. Newlines do not matter to
dae, with one exception here: a declaration's value must start on the line of
its key, so that a key left without a value is reported where it is instead of
swallowing the next line's key.

Rules and filters are copied as text with only their whitespace normalised;
daetui's own rule parser checks them after conversion. Comments are kept at the
corresponding place in the TOML.
"""

from __future__ import annotations

import bisect
import difflib
import glob
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.container import Container
from tomlkit.items import Comment, Integer, Item, Table, Trivia

from daetui.config import dae_keys

__all__ = ["Conversion", "DaeImportError", "convert_dae", "convert_dae_file"]


class DaeImportError(ValueError):
    """A dae config that cannot be converted faithfully, with where and why."""

    def __init__(self, message: str, file: str = "<dae>", line: int = 0, col: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.col = col

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


# ---------------------------------------------------------------------------
# dae's keys, as dae's config/config.go declares them.

# The keys themselves, their kinds and what daetui makes of them: dae_keys.py.
_FILTER_ANNOTATIONS = dae_keys.FILTER_ANNOTATIONS
_SECTIONS = dae_keys.SECTIONS
_REQUIRED_SECTIONS = dae_keys.REQUIRED_SECTIONS
_GROUP_KEYS = {k: v.kind for k, v in dae_keys.GROUP.items() if k not in ("filter", "policy")}

# Go's time.ParseDuration: a sequence of decimal numbers with units, or a bare 0.
_DURATION = re.compile(r"[-+]?(?:0|(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+)")
# Go reads 0100 as octal, Python refuses it: a leading zero is left out rather than guessed at.
_INT = re.compile(r"[-+]?(?:0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0|[1-9]\d*)")
_TRUE = ("1", "t", "T", "TRUE", "true", "True")       # Go's strconv.ParseBool
_FALSE = ("0", "f", "F", "FALSE", "false", "False")
_RANGES = {"u16": (0, 2**16 - 1), "u32": (0, 2**32 - 1), "int": (-(2**63), 2**63 - 1)}

# Control characters: TOML forbids them in comments (dae does not) and needs them escaped in strings.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

_MAX_DEPTH = 8        # dae's deepest is dns { routing { request { } } }
_INLINE_WIDTH = 100   # longer arrays go one element per line

# ---------------------------------------------------------------------------
# Lexer: dae's tokens, with its longest-match rules.

_ID_HEAD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NONID_HEAD = frozenset("/\\^*.+-0123456789")
_SAFE = _ID_HEAD | _NONID_HEAD | frozenset("=@$!#%")   # a bare word goes on with these
_PUNCT = frozenset("{}:!(),[]")


@dataclass(frozen=True)
class _Tok:
    kind: str        # "word", "quoted", or the punctuation itself: "{", "->", "&&", ...
    text: str
    start: int
    end: int
    line: int
    col: int
    end_line: int
    src: _Source | None = field(default=None, compare=False, repr=False)   # the file it is in

    @property
    def is_id(self) -> bool:
        """A word dae accepts as a name: section, key, function."""
        return self.kind == "word" and self.text[0] in _ID_HEAD

    @property
    def value(self) -> str:
        """The literal's value as dae reads it: quotes removed, nothing unescaped."""
        return self.text[1:-1] if self.kind == "quoted" else self.text


@dataclass
class _Comment:
    lines: list[str]      # TOML comment lines, each starting with "#"
    start: int
    line: int
    end_line: int
    blank: bool = False   # a blank line precedes it in the dae file


class _Source:
    """The dae text with offset -> line:col and errors that say where."""

    def __init__(self, text: str, name: str) -> None:
        self.text = text
        self.name = name
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.lines = text.split("\n")

    def pos(self, offset: int) -> tuple[int, int]:
        i = bisect.bisect_right(self.line_starts, offset) - 1
        return i + 1, offset - self.line_starts[i] + 1

    def error(self, offset: int, message: str) -> DaeImportError:
        line, col = self.pos(min(offset, len(self.text)))
        return DaeImportError(message, self.name, line, col)

    def blank_before(self, line: int) -> bool:
        """Whether the line above `line` is empty: kept as a blank line in the TOML."""
        return line > 1 and not self.lines[line - 2].strip()


def _tokenize(src: _Source) -> tuple[list[_Tok], list[_Comment]]:
    text = src.text
    n = len(text)
    toks: list[_Tok] = []
    comments: list[_Comment] = []

    def tok(kind: str, start: int, end: int) -> None:
        line, col = src.pos(start)
        toks.append(_Tok(kind, text[start:end], start, end, line, col, src.pos(end - 1)[0], src))

    def comment(start: int, end: int, lines: list[str]) -> None:
        bad = _CONTROL.search(text, start, end)
        # Newlines separate the lines of a block comment; anything else TOML refuses in a comment.
        while bad and bad.group() == "\n":
            bad = _CONTROL.search(text, bad.end(), end)
        if bad:
            raise src.error(bad.start(), f"control character {bad.group()!r} in a comment: TOML does not allow it")
        comments.append(_Comment(lines, start, src.pos(start)[0], src.pos(max(start, end - 1))[0]))

    i = 0
    while i < n:
        c = text[i]
        if c in " \t\n":
            i += 1
            continue
        if c == "#":
            j = text.find("\n", i)
            j = n if j < 0 else j
            comment(i, j, [text[i:j].rstrip()])
            i = j
            continue
        if c in "'\"":
            j = i + 1
            while j < n and text[j] != c:
                if text[j] == "\n":
                    # dae would let the string run on into the next lines; nobody means that.
                    raise src.error(i, f"unterminated quote: {c} has no closing {c} on its line")
                j += 2 if text[j] == "\\" and text.startswith(c, j + 1) else 1
            if j >= n:
                raise src.error(i, f"unterminated quote: {c} has no closing {c}")
            tok("quoted", i, j + 1)
            i = j + 1
            continue
        if c in _ID_HEAD or c in _NONID_HEAD:
            j = i + 1
            while j < n and text[j] in _SAFE:
                j += 1
            if text.startswith("->", i):
                tok("->", i, i + 2)
                i += 2
                continue
            if text.startswith("/*", i):
                k = text.find("*/", i + 2)
                if k < 0:
                    raise src.error(i, "unterminated /* comment")
                if k + 2 >= j:      # the longer match wins, as in dae's lexer; a tie is a comment
                    body = text[i + 2:k].split("\n")
                    lines = [f"# {ln.strip()}" if ln.strip() else "#" for ln in body]
                    while len(lines) > 1 and lines[-1] == "#":
                        lines.pop()
                    while len(lines) > 1 and lines[0] == "#":
                        lines.pop(0)
                    comment(i, k + 2, lines)
                    i = k + 2
                    continue
            tok("word", i, j)
            i = j
            continue
        if text.startswith("&&", i):
            tok("&&", i, i + 2)
            i += 2
            continue
        if c in _PUNCT:
            tok(c, i, i + 1)
            i += 1
            continue
        raise src.error(i, f"unexpected character {c!r}")
    return toks, comments


# ---------------------------------------------------------------------------
# Parser: tokens -> a tree of nodes that remember their tokens and comments.

@dataclass
class _Node:
    kind: str                     # "block", "decl", "rule", "expr" (functions without ->), "lit"
    first: int                    # token indices
    last: int
    key: _Tok | None = None       # a block's name, a declaration's key
    values: list[_Tok] = field(default_factory=list)   # a declaration's literals, or the literal
    text: str = ""                # normalised functions (declaration value, rule, expr)
    annotation: str = ""          # normalised "[add_latency: -500ms]"
    annotation_params: list[tuple[_Tok | None, _Tok]] = field(default_factory=list)
    children: list[_Node] = field(default_factory=list)
    open: int = -1                # a block's "{" and "}"
    close: int = -1
    leading: list[_Comment] = field(default_factory=list)    # comment lines above it
    trailing: list[_Comment] = field(default_factory=list)   # at the end of its last line
    header: list[_Comment] = field(default_factory=list)     # after a block's "{"
    dangling: list[_Comment] = field(default_factory=list)   # after a block's last item, and after "}"
    blank: bool = False
    toks: list[_Tok] = field(default_factory=list, repr=False)   # the tokens of its file

    @property
    def is_func(self) -> bool:
        return self.kind == "decl" and not self.values


def _describe(t: _Tok | None) -> str:
    if t is None:
        return "the end of the file"
    return f"`{t.text}`" if t.kind in ("word", "quoted") else f"`{t.kind}`"


class _Parser:
    def __init__(self, src: _Source, toks: list[_Tok]) -> None:
        self.src = src
        self.toks = toks
        self.p = 0
        # Which node each token starts, ends, opens, closes or sits inside, to place the comments.
        self.first_of: dict[int, _Node] = {}
        self.last_of: dict[int, _Node] = {}
        self.open_of: dict[int, _Node] = {}
        self.close_of: dict[int, _Node] = {}
        self.inside: dict[int, _Node] = {}

    # -- helpers

    def peek(self, ahead: int = 0) -> _Tok | None:
        i = self.p + ahead
        return self.toks[i] if i < len(self.toks) else None

    def next(self) -> _Tok:
        t = self.toks[self.p]
        self.p += 1
        return t

    def at(self, kind: str) -> bool:
        t = self.peek()
        return t is not None and t.kind == kind

    def error(self, t: _Tok | None, message: str) -> DaeImportError:
        return self.src.error(len(self.src.text) if t is None else t.start, message)

    def expect(self, kind: str, what: str) -> _Tok:
        t = self.peek()
        if t is None or t.kind != kind:
            raise self.error(t, f"expected {what}, found {_describe(t)}")
        return self.next()

    def register(self, node: _Node) -> _Node:
        node.toks = self.toks
        self.first_of[node.first] = node
        self.last_of[node.last] = node
        if node.kind == "block":
            self.inside[node.first] = node
            self.open_of[node.open] = node
            self.close_of[node.close] = node
        else:
            for i in range(node.first, node.last + 1):
                self.inside[i] = node
        return node

    # -- grammar

    def parse(self) -> _Node:
        root = _Node("block", 0, max(0, len(self.toks) - 1), toks=self.toks)
        while self.p < len(self.toks):
            t = self.peek()
            if t is not None and t.kind == "}":
                raise self.error(t, "unmatched `}`: no `{` opens it")
            root.children.append(self.item(1))
        return root

    def item(self, depth: int) -> _Node:
        t = self.peek()
        assert t is not None
        if t.kind == "word":
            n = self.peek(1)
            kind = n.kind if n is not None else ""
            if kind == "{":
                return self.block(depth)
            if kind == ":":
                return self.declaration()
            if kind == "(":
                return self.rule()
            return self.literal()
        if t.kind == "!":
            return self.rule()
        if t.kind == "quoted":
            return self.literal()
        hint = " (quote values that contain `:`)" if t.kind == ":" else ""
        raise self.error(t, f"unexpected {_describe(t)}{hint}")

    def block(self, depth: int) -> _Node:
        first = self.p
        name = self.next()
        if not name.is_id:
            raise self.error(name, f"`{name.text}` cannot name a block: a name starts with a letter or _")
        if depth > _MAX_DEPTH:
            raise self.error(name, "blocks nested too deeply")
        open_ = self.p
        brace = self.next()
        node = _Node("block", first, first, key=name, open=open_)
        while True:
            t = self.peek()
            if t is None:
                raise self.error(brace, f"`{name.text} {{` is never closed: missing `}}`")
            if t.kind == "}":
                break
            node.children.append(self.item(depth + 1))
        node.close = node.last = self.p
        self.next()
        return self.register(node)

    def declaration(self) -> _Node:
        first = self.p
        key = self.next()
        if not key.is_id:
            raise self.error(key, f"`{key.text}` cannot be a key: a key starts with a letter or _")
        colon = self.next()
        v = self.peek()
        n = self.peek(1)
        node = _Node("decl", first, first, key=key)
        if v is None or v.line != colon.end_line:
            raise self.error(key, f"`{key.text}` has no value")
        if v.kind == "!" or (v.kind == "word" and n is not None and n.kind == "("):
            node.text = self.functions()
            if self.at("["):
                node.annotation, node.annotation_params = self.annotation()
        elif v.kind in ("word", "quoted"):
            node.values.append(self.next())
            while self.at(","):
                self.next()
                node.values.append(self.literal_tok("a value after `,`"))
        else:
            raise self.error(key, f"`{key.text}` has no value")
        node.last = self.p - 1
        return self.register(node)

    def literal(self) -> _Node:
        node = _Node("lit", self.p, self.p, values=[self.next()])
        return self.register(node)

    def rule(self) -> _Node:
        first = self.p
        cond = self.functions()
        if not self.at("->"):
            node = _Node("expr", first, self.p - 1, text=cond)
            return self.register(node)
        self.next()
        out = self.peek()
        if out is None or out.kind != "word":
            raise self.error(out, f"expected an outbound after `->`, found {_describe(out)}")
        self.next()
        outbound = out.text
        if self.at("(") and out.is_id:
            self.next()
            outbound += "(" + ", ".join(self.params(")")) + ")"
        node = _Node("rule", first, self.p - 1, text=f"{cond} -> {outbound}")
        return self.register(node)

    def functions(self) -> str:
        """`f(..) && !g(..)`, normalised: one space around &&, none before ( or after !."""
        parts = [self.function()]
        while self.at("&&"):
            self.next()
            parts.append(self.function())
        return " && ".join(parts)

    def function(self) -> str:
        neg = ""
        if self.at("!"):
            self.next()
            neg = "!"
        name = self.peek()
        if name is None or not name.is_id:
            raise self.error(name, f"expected a function name, found {_describe(name)}")
        self.next()
        self.expect("(", f"`(` after `{name.text}`")
        return f"{neg}{name.text}(" + ", ".join(self.params(")")) + ")"

    def params(self, close: str) -> list[str]:
        """Parameters up to `close`, each as written but for its whitespace."""
        out: list[str] = []
        for key, value, spaced in self.param_list(close):
            out.append(value.text if key is None else f"{key.text}:{' ' if spaced else ''}{value.text}")
        return out

    def param_list(self, close: str) -> list[tuple[_Tok | None, _Tok, bool]]:
        if self.at(close):
            raise self.error(self.peek(), "empty parameter list: dae rejects it")
        out: list[tuple[_Tok | None, _Tok, bool]] = []
        while True:
            t = self.peek()
            n = self.peek(1)
            key: _Tok | None = None
            spaced = False
            if t is not None and t.is_id and n is not None and n.kind == ":":
                key = self.next()
                colon = self.next()
                v = self.peek()
                if v is not None and v.kind == ":":
                    raise self.error(v, f"unexpected `:` after `{key.text}:` (quote IPv6 addresses: '{key.text}::...')")
                value = self.literal_tok(f"a value after `{key.text}:`")
                spaced = value.start > colon.end
            else:
                value = self.literal_tok("a parameter")
            out.append((key, value, spaced))
            t = self.peek()
            if t is not None and t.kind == ",":
                self.next()
                continue
            if t is not None and t.kind == close:
                self.next()
                return out
            raise self.error(t, f"expected `,` or `{close}`, found {_describe(t)}")

    def annotation(self) -> tuple[str, list[tuple[_Tok | None, _Tok]]]:
        self.next()
        params = self.param_list("]")
        text = ", ".join(v.text if k is None else f"{k.text}:{' ' if s else ''}{v.text}" for k, v, s in params)
        return f"[{text}]", [(k, v) for k, v, _ in params]

    def literal_tok(self, what: str) -> _Tok:
        t = self.peek()
        if t is None or t.kind not in ("word", "quoted"):
            raise self.error(t, f"expected {what}, found {_describe(t)}")
        return self.next()


def _attach_comments(src: _Source, parser: _Parser, root: _Node, comments: list[_Comment]) -> None:
    """Give each comment to the node it belongs to, so that it lands at the same place in the TOML.

    A comment after code on its line trails that code; a comment on lines of its
    own goes above the next item, or at the end of the block it closes. One in
    the middle of a multi-line item goes above that item.
    """
    toks = parser.toks
    starts = [t.start for t in toks]
    for c in comments:
        k = bisect.bisect_left(starts, c.start)
        prev = toks[k - 1] if k > 0 else None
        nxt = toks[k] if k < len(toks) else None
        c.blank = src.blank_before(c.line)
        if prev is not None and prev.end_line == c.line:
            c.blank = False
            if (nxt is None or nxt.line > c.end_line) and len(c.lines) == 1:
                if k - 1 in parser.open_of:
                    parser.open_of[k - 1].header.append(c)
                elif k - 1 in parser.close_of:
                    parser.close_of[k - 1].dangling.append(c)
                elif k - 1 in parser.last_of:
                    parser.last_of[k - 1].trailing.append(c)
                else:
                    parser.inside[k - 1].leading.append(c)
                continue
            # Code follows it on the line, or it spans lines: it goes above what it sits in.
            if k - 1 in parser.open_of or k - 1 in parser.close_of:
                _before(parser, root, k, c)
            else:
                parser.inside[k - 1].leading.append(c)
            continue
        _before(parser, root, k, c)


def _before(parser: _Parser, root: _Node, k: int, c: _Comment) -> None:
    """Place comment `c` that comes before token `k`."""
    if k >= len(parser.toks):
        root.dangling.append(c)
    elif k in parser.first_of:
        parser.first_of[k].leading.append(c)
    elif k in parser.close_of:
        parser.close_of[k].dangling.append(c)
    elif k in parser.open_of:
        parser.open_of[k].leading.append(c)
    else:
        c.blank = False
        parser.inside[k].leading.append(c)


def _set_blanks(src: _Source, parser: _Parser, node: _Node) -> None:
    for child in node.children:
        child.blank = src.blank_before(parser.toks[child.first].line)
        if child.kind == "block":
            _set_blanks(src, parser, child)


# ---------------------------------------------------------------------------
# Converter: the tree -> a tomlkit document.

def _toml_string(s: str) -> Item:
    """A TOML string item; a literal string when it spares backslashes (regexes read as written)."""
    if "\\" in s and "'" not in s and not _CONTROL.search(s):
        return tomlkit.string(s, literal=True)
    return tomlkit.string(s)


def _comment_item(line: str) -> Comment:
    return Comment(Trivia(comment_ws="", comment=line, trail="\n"))


def _trailing_text(comments: list[_Comment]) -> str:
    return " ".join(c.lines[0] for c in comments)


def _body(container: Table | Container) -> list[Any]:
    inner = container.value if isinstance(container, Table) else container
    return inner.body


@dataclass
class _Elem:
    """One element of an array of rules or filters, with the comments around it."""

    text: str
    leading: list[_Comment]
    trailing: list[_Comment]
    blank: bool


class _Converter:
    def __init__(self, src: _Source, root: _Node, check_link: LinkCheck | None = None) -> None:
        self.src = src            # the entry file (included files' tokens carry their own)
        self.root = root          # the sections of every file, same names merged
        self.check_link = check_link
        self.doc = tomlkit.document()
        # The container whose end is the current end of the text: comments that go
        # above the next table header are added there.
        self.tail: Table | Container = self.doc
        self.warnings: list[str] = []
        # TOML path -> the dae token it came from, so a later error points at what the user wrote.
        self.origins: dict[tuple[str | int, ...], _Tok] = {}
        self.left_out: list[str] = []
        self.left_out_subscriptions: list[str] = []

    def err(self, t: _Tok | None, message: str) -> DaeImportError:
        if t is None:
            return self.src.error(len(self.src.text), message)
        return (t.src or self.src).error(t.start, message)

    def where(self, t: _Tok) -> str:
        """file:line:col of a token, for warnings."""
        return f"{(t.src or self.src).name}:{t.line}:{t.col}"

    def warn(self, t: _Tok, message: str) -> None:
        self.warnings.append(f"{self.where(t)}: {message}")

    def first_tok(self, node: _Node) -> _Tok:
        return node.toks[node.first]

    # -- output helpers

    def comments(self, container: Table | Container, comments: Iterable[_Comment]) -> None:
        for c in comments:
            if c.blank and _body(container):
                container.add(tomlkit.nl())
            for line in c.lines:
                container.add(_comment_item(line))

    def put(self, table: Table | Container, key: str, item: Item, node: _Node,
            notes: Iterable[str] = ()) -> None:
        """Add `key = item` with the comments `node` had around it in the dae file."""
        self.comments(table, node.leading)
        if node.blank and _body(table) and not node.leading:
            table.add(tomlkit.nl())
        for note in notes:
            table.add(_comment_item(note))
        if node.trailing:
            item.comment(_trailing_text(node.trailing))
        table.add(key, item)

    def open_table(self, parent: Table | Container, key: str, node: _Node,
                   table: Table | None = None, lead: Iterable[_Comment] = ()) -> Table:
        """Add the table for dae block `node`, its comments above and on its header line."""
        table = table if table is not None else tomlkit.table()
        self.above_header(list(lead) + node.leading, node.blank)
        if len(node.header) == 1:
            table.comment(node.header[0].lines[0])
        else:
            self.comments(table, node.header)
        parent.add(key, table)
        # Blank lines before headers are placed by above_header, not by tomlkit.
        table.trivia.indent = ""
        self.tail = table
        return table

    def above_header(self, comments: list[_Comment], blank_after: bool) -> None:
        if _body(self.tail):
            self.tail.add(tomlkit.nl())
        for i, c in enumerate(comments):
            if c.blank and i:
                self.tail.add(tomlkit.nl())
            for line in c.lines:
                self.tail.add(_comment_item(line))
        if comments and blank_after:
            self.tail.add(tomlkit.nl())

    def array(self, elems: list[_Elem], head: list[_Comment], tail: list[_Comment]) -> Item:
        """An array of strings, one element a line with the comments in place, or inline if it has none."""
        rendered = [_toml_string(e.text).as_string() for e in elems]
        plain = not head and not tail and not any(e.leading or e.trailing or e.blank for e in elems)
        if plain and len(", ".join(rendered)) + 2 <= _INLINE_WIDTH:
            arr = tomlkit.array()
            for e in elems:
                arr.append(_toml_string(e.text))
            return arr
        indent = "    "
        lines = ["["]
        for c in head:
            lines.extend(indent + ln for ln in c.lines)
        for e, r in zip(elems, rendered, strict=True):
            for c in e.leading:
                if c.blank and len(lines) > 1:
                    lines.append("")
                lines.extend(indent + ln for ln in c.lines)
            if e.blank and len(lines) > 1 and not e.leading:
                lines.append("")
            lines.append(f"{indent}{r}," + (f" {_trailing_text(e.trailing)}" if e.trailing else ""))
        for c in tail:
            if c.blank and len(lines) > 1:
                lines.append("")
            lines.extend(indent + ln for ln in c.lines)
        lines.append("]")
        # Parsing the array back is how tomlkit keeps comments inside it.
        return tomlkit.parse("x = " + "\n".join(lines) + "\n")["x"]

    # -- values

    def single(self, node: _Node, what: str) -> _Tok:
        """The one literal of a declaration."""
        assert node.key is not None
        if node.is_func:
            raise self.err(node.toks[node.first + 2], f"`{node.key.text}` takes {what}, not a function")
        if node.annotation:
            raise self.err(node.key, "an annotation `[...]` only goes after a group's filter")
        if len(node.values) > 1:
            raise self.err(node.values[1], f"`{node.key.text}` takes one value")
        return node.values[0]

    def typed(self, node: _Node, kind: str) -> Item:
        """A declaration's value as the TOML type of dae's Go type for that key."""
        assert node.key is not None
        key = node.key.text
        if kind == "list":
            if node.is_func:
                raise self.err(node.toks[node.first + 2], f"`{key}` takes a list of values, not a function")
            if node.annotation:
                raise self.err(node.key, "an annotation `[...]` only goes after a group's filter")
            # dae joins `a, 'b,c'` into "a,b,c" and splits it at the commas.
            parts: list[str] = []
            for t in node.values:
                for p in t.value.split(","):
                    if not p.strip():
                        raise self.err(t, f"`{key}` has an empty element")
                    parts.append(p.strip())
            arr = tomlkit.array()
            for p in parts:
                arr.append(_toml_string(p))
            return arr
        tok = self.single(node, "a value")
        v = tok.value
        if kind in _RANGES:
            if not _INT.fullmatch(v):
                hint = ": write it without leading zeros" if re.fullmatch(r"[-+]?0\d+", v) else ""
                raise self.err(tok, f"`{key}` takes an integer, not `{v}`{hint}")
            n = int(v, 0)
            lo, hi = _RANGES[kind]
            if not lo <= n <= hi:
                raise self.err(tok, f"`{key}` must be between {lo} and {hi}")
            if re.fullmatch(r"0x[0-9a-fA-F]+", v):      # marks read better in hex: keep it
                return Integer(n, Trivia(), v)
            return tomlkit.integer(n)
        if kind == "bool":
            if v in _TRUE:
                return tomlkit.boolean("true")
            if v in _FALSE:
                return tomlkit.boolean("false")
            raise self.err(tok, f"`{key}` takes true or false, not `{v}`")
        if kind == "seconds":    # dae's int TTLs in seconds, a duration in daetui
            if not re.fullmatch(r"\d+", v):
                raise self.err(tok, f"`{key}` takes a number of seconds, not `{v}`")
            return _toml_string(f"{int(v)}s")
        if kind == "duration":
            if not _DURATION.fullmatch(v):
                raise self.err(tok, f"`{key}` takes a duration such as 30s or 100ms, not `{v}`")
            return _toml_string(v)
        return _toml_string(v)

    def unknown(self, t: _Tok, what: str, known: Iterable[str]) -> DaeImportError:
        close = difflib.get_close_matches(t.text, list(known), n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        return self.err(t, f"unknown {what} `{t.text}`{hint}")

    def not_here(self, node: _Node, where: str, expected: str) -> DaeImportError:
        t = self.first_tok(node)
        if node.kind == "expr":
            return self.err(t, f"`{node.text}` has no `-> outbound`, and {where} takes {expected}")
        if node.kind == "rule":
            return self.err(t, f"a rule does not go in {where}: it takes {expected}")
        if node.kind == "block":
            return self.err(t, f"unknown block `{t.text}` in {where}: it takes {expected}")
        return self.err(t, f"unexpected {_describe(t)} in {where}: it takes {expected}")

    def dup(self, seen: dict[str, _Tok], t: _Tok, what: str, name: str | None = None) -> None:
        """Refuse a second `name` (default: the token's text) in the same place."""
        name = t.text if name is None else name
        if name in seen:
            raise self.err(t, f"duplicate {what} `{name}` (first at line {seen[name].line})")
        seen[name] = t

    # -- sections

    def convert(self) -> str:
        self.doc.add(_comment_item(f"# Converted from {_CONTROL.sub('?', self.src.name)} by daetui import-dae."))
        handlers = {
            "global": self.global_,
            "subscription": lambda n: self.links(n, "subscription", "sub"),
            "node": lambda n: self.links(n, "node", "node"),
            "group": self.groups,
            "dns": self.dns,
            "routing": self.routing,
        }
        seen: set[str] = set()
        for sec in self.root.children:
            assert sec.key is not None
            seen.add(sec.key.text)
            handlers[sec.key.text](sec)
        for name in _REQUIRED_SECTIONS:
            if name not in seen:
                raise self.err(None, f"no `{name}` section: dae requires one")
        if "dns" not in seen:
            # dae's DNS defaults hold without a dns section too.
            table = tomlkit.table()
            for key, spec in dae_keys.DNS.items():
                if spec.dae_default is not None:
                    table.add(_comment_item("# dae's default, written out so that daetui does as dae did"))
                    table.add(key, tomlkit.boolean(spec.dae_default))
            if _body(self.tail):
                self.tail.add(tomlkit.nl())
            self.doc.add("dns", table)
            self.tail = table
        self.comments(self.tail, self.root.dangling)
        out = self.doc.as_string()
        return out if out.endswith("\n") else out + "\n"

    def end_block(self, node: _Node) -> None:
        self.comments(self.tail, node.dangling)

    def last_wins(self, nodes: list[_Node], where: str, appends: Callable[[str], bool] = lambda k: False
                  ) -> dict[int, tuple[str, list[_Node]]]:
        """dae's reading of a key given more than once in one place: the last one counts, or for a
        list (`appends(key)`) every one adds to it. Returns, by the index of the node that is written,
        the key and every node it stands for (in order); the others are written as comments."""
        by_key: dict[str, list[int]] = {}
        for i, node in enumerate(nodes):
            if node.key is not None and node.kind in ("decl", "block"):
                by_key.setdefault(node.key.text, []).append(i)
        out: dict[int, tuple[str, list[_Node]]] = {}
        for key, idx in by_key.items():
            group = [nodes[i] for i in idx]
            if len(idx) > 1:
                lines = ", ".join(str(n.key.line) for n in group if n.key is not None)
                if appends(key):
                    self.warn(group[1].key, f"`{key}` in {where} is given {len(idx)} times (lines {lines}): "
                                            "dae joins them into one list")
                else:
                    self.warn(group[-1].key, f"`{key}` in {where} is given {len(idx)} times (lines {lines}): "
                                             "dae keeps the last")
            out[idx[0] if appends(key) else idx[-1]] = (key, group)
        return out

    def superseded(self, table: Table | Container, node: _Node, why: str) -> None:
        """A key dae does not read (given again later): its comments, and itself as a comment."""
        self.comments(table, node.leading)
        for k, line in enumerate(self.src_text(node).split("\n")):
            table.add(_comment_item(f"# {line}  ({why})" if k == 0 else f"# {line}"))

    def src_text(self, node: _Node) -> str:
        first, last = node.toks[node.first], node.toks[node.last]
        src = first.src or self.src
        return _CONTROL.sub("?", src.text[first.start:last.end])

    def global_(self, sec: _Node) -> None:
        table = self.open_table(self.doc, "global", sec)
        deferred: list[tuple[str, _Node, dict[str, str]]] = []
        keys = dae_keys.GLOBAL
        for node in sec.children:
            if node.kind not in ("decl", "block") or node.key is None or \
                    (node.kind == "block" and node.key.text not in dae_keys.GLOBAL_BLOCKS):
                raise self.not_here(node, "global", "`key: value` lines")
            if node.key.text not in keys:
                raise self.unknown(node.key, "key in global", keys)
            if (node.kind == "block") != (keys[node.key.text].kind == "block"):
                form = "a block" if node.kind == "decl" else "a `key: value` line"
                raise self.err(node.key, f"`{node.key.text}` in global is {form}")
            if node.kind == "decl":
                self.typed(node, keys[node.key.text].kind)   # its value's errors before the next line's
        written = self.last_wins(sec.children, "global", lambda k: keys[k].kind == "list")
        for i, node in enumerate(sec.children):
            assert node.key is not None
            if i not in written:
                self.superseded(table, node, "given again below; dae reads the last" if keys[node.key.text].kind
                                != "list" else "joined into the list above, as dae does")
                continue
            name, group = written[i]
            spec = keys[name]
            if not spec.has_meaning:
                self.warn(node.key, f"global.{name} has no meaning for daetui ({spec.why}): kept, ignored")
            if node.kind == "block":
                block_spec = dae_keys.GLOBAL_BLOCKS[name]
                if not self.keyed_inline(table, node, lambda n, s=block_spec: self.typed_entry(n, s)):
                    deferred.append((name, node, block_spec))
                continue
            target = spec.target(name)
            item = self.typed_list(group, name) if spec.kind == "list" else self.typed(node, spec.kind)
            notes = [f"# dae's {name}"] if target != name else []
            self.origins[("global", target)] = node.key
            self.put(table, target, item, node, notes)
        for name, spec in keys.items():
            if spec.dae_default is not None and not any(n.key is not None and n.key.text == name
                                                        for n in sec.children):
                table.add(_comment_item("# dae's default, written out so that daetui does as dae did"))
                kind = spec.kind
                value = spec.dae_default
                table.add(name, tomlkit.boolean(value) if kind == "bool" else _toml_string(value))
        for name, node, block_spec in deferred:
            self.keyed_table(table, name, node, lambda n, s=block_spec: self.typed_entry(n, s))
        self.end_block(sec)

    def typed_list(self, group: list[_Node], key: str) -> Item:
        """A list key given once or more: dae joins every value into one list."""
        arr = tomlkit.array()
        for node in group:
            for v in self.typed(node, "list"):
                arr.append(_toml_string(str(v)))
        return arr

    def typed_entry(self, node: _Node, spec: dict[str, str]) -> Item:
        assert node.key is not None
        if node.key.text not in spec:
            raise self.unknown(node.key, "key", spec)
        return self.typed(node, spec[node.key.text])

    def links(self, sec: _Node, section: str, prefix: str) -> None:
        """subscription and node: `tag: 'link'` or an untagged `'link'`, which gets a tag of ours.

        A tag given twice: dae keeps the last. A node whose link daetui cannot use (a placeholder, a
        protocol with no server here) is left out as dae leaves out the links it cannot parse: written
        as a comment, with a warning naming the tag and the reason."""
        table = self.open_table(self.doc, section, sec)
        explicit = {n.key.text for n in sec.children if n.kind == "decl" and n.key is not None}
        for node in sec.children:
            if node.kind not in ("decl", "lit"):
                raise self.not_here(node, section, "`tag: 'link'` or `'link'` lines")
        written = self.last_wins(sec.children, section)
        taken: set[str] = set()
        counter = 0
        for i, node in enumerate(sec.children):
            if node.kind == "decl":
                assert node.key is not None
                link = self.single(node, "a link")
                if link.kind == "word" and link.text.startswith("//"):
                    raise self.err(node.key, f"`{node.key.text}:{link.text}` looks like a link without quotes, "
                                             f"which dae reads as tag `{node.key.text}`: quote the link")
                if i not in written:
                    self.comments(table, node.leading)
                    table.add(_comment_item(f"# {node.key.text}: given again below; dae keeps the last"))
                    continue
                tag, tok = node.key.text, node.key
            else:
                counter += 1
                while f"{prefix}{counter}" in explicit or f"{prefix}{counter}" in taken:
                    counter += 1
                tag, tok, link = f"{prefix}{counter}", node.values[0], node.values[0]
            taken.add(tag)
            notes = [f"# untagged in the dae file: tag {tag} given by daetui import-dae"] if node.kind == "lit" else []
            if section == "node":
                reason = self.check_link(link.value) if self.check_link else None
            else:
                reason = _subscription_problem(link.value)
            if reason is not None:
                (self.left_out if section == "node" else self.left_out_subscriptions).append(tag)
                self.warn(tok, f"{section} {tag} left out: {reason} (dae, too, leaves out what it cannot use)")
                self.comments(table, node.leading)
                table.add(_comment_item(f"# left out by daetui import-dae: {_CONTROL.sub('?', reason)}"))
                table.add(_comment_item(f"# {tag} = {_toml_string(link.value).as_string()}"))
                continue
            self.origins[(section, tag)] = tok
            self.put(table, tag, _toml_string(link.value), node, notes)
        self.end_block(sec)

    def groups(self, sec: _Node) -> None:
        if not sec.children:
            self.open_table(self.doc, "group", sec)
            self.end_block(sec)
            return
        # [group.NAME] tables under a group table that shows no header of its own.
        parent = tomlkit.table(is_super_table=True)
        lead = sec.leading + sec.header
        self.doc.add("group", parent)
        parent.trivia.indent = ""
        seen: dict[str, _Tok] = {}
        for i, g in enumerate(sec.children):
            if g.kind != "block":
                raise self.not_here(g, "group", "groups: `name { filter: ... policy: ... }`")
            assert g.key is not None
            self.dup(seen, g.key, "group")
            self.origins[("group", g.key.text)] = g.key
            table = self.open_table(parent, g.key.text, g, lead=lead if i == 0 else ())
            self.group(g, table)
            self.end_block(g)
        self.end_block(sec)

    def group(self, g: _Node, table: Table) -> None:
        assert g.key is not None
        filters: list[_Node] = []
        others: list[_Node] = []
        for node in g.children:
            if node.kind != "decl":
                raise self.not_here(node, f"group `{g.key.text}`", "`filter:`, `policy:` and check settings")
            assert node.key is not None
            key = node.key.text
            if key == "filter":
                if not node.is_func:
                    raise self.err(node.values[0], "a filter is a function such as name(keyword: HK)")
                for k, v in node.annotation_params:
                    if k is None or k.text not in _FILTER_ANNOTATIONS:
                        t = v if k is None else k
                        raise self.err(t, "a filter's annotation takes `add_latency: <duration>`")
                    if not _DURATION.fullmatch(v.value):
                        raise self.err(v, f"`add_latency` takes a duration such as -500ms, not `{v.value}`")
                filters.append(node)
                continue
            if key != "policy" and key not in _GROUP_KEYS:
                raise self.unknown(node.key, "key in a group", ["filter", "policy", *_GROUP_KEYS])
            others.append(node)
        if not any(n.key is not None and n.key.text == "policy" for n in others):
            raise self.err(g.key, f"group `{g.key.text}` has no `policy:`: dae requires one")
        written = self.last_wins(others, f"group `{g.key.text}`")
        slots: list[tuple[str, _Node | None]] = []
        for node in g.children:
            assert node.key is not None
            if node.key.text == "filter":
                if node is filters[0]:
                    slots.append(("filter", node))
            elif others.index(node) in written:
                slots.append((node.key.text, node))
            else:
                slots.append(("", node))
        base = ("group", g.key.text)
        for key, node in slots:
            assert node is not None
            if key == "":
                self.superseded(table, node, "given again below; dae reads the last")
            elif key == "filter":
                elems = [_Elem(f.text + (f" {f.annotation}" if f.annotation else ""), f.leading, f.trailing,
                               f.blank and j > 0) for j, f in enumerate(filters)]
                for j, f in enumerate(filters):
                    self.origins[(*base, "filter", j)] = self.first_tok(f)
                if node.blank and _body(table):
                    table.add(tomlkit.nl())
                table.add("filter", self.array(elems, [], []))
            elif key == "policy":
                value = node.text if node.is_func else self.single(node, "a policy").value
                if node.annotation:
                    raise self.err(node.key, "an annotation `[...]` only goes after a group's filter")
                self.origins[(*base, key)] = node.key  # type: ignore[assignment]
                self.put(table, key, _toml_string(value), node)
            else:
                self.origins[(*base, key)] = node.key  # type: ignore[assignment]
                self.put(table, key, self.typed(node, _GROUP_KEYS[key]), node)

    def keyed_entries(self, block: _Node, value: Any) -> list[tuple[str, Item, _Node]]:
        """A block of `name: value` lines; a name given twice: dae keeps the last."""
        assert block.key is not None
        for node in block.children:
            if node.kind != "decl":
                raise self.not_here(node, f"`{block.key.text}`", "`name: value` lines")
        written = self.last_wins(block.children, f"`{block.key.text}`")
        out = []
        for i, node in enumerate(block.children):
            assert node.key is not None
            if i in written:
                out.append((node.key.text, value(node), node))
        return out

    def keyed_inline(self, table: Table, block: _Node, value: Any) -> bool:
        """`name { a: 1 }` as `name = { a = 1 }` when no comment needs a line inside it."""
        entries = self.keyed_entries(block, value)
        if block.header or block.dangling or any(n.leading or n.trailing for _, _, n in entries) or \
                len(entries) != len(block.children):
            return False
        assert block.key is not None
        inline = tomlkit.inline_table()
        for key, item, _ in entries:
            inline.append(key, item)
        self.put(table, block.key.text, inline, block)
        return True

    def keyed_table(self, parent: Table, name: str, block: _Node, value: Any) -> None:
        """`name { a: 1 }` as a [parent.name] table, which has room for its comments."""
        table = self.open_table(parent, name, block)
        entries = {id(n): (k, item) for k, item, n in self.keyed_entries(block, value)}
        for node in block.children:
            if id(node) in entries:
                key, item = entries[id(node)]
                self.put(table, key, item, node)
            else:
                self.superseded(table, node, "given again below; dae keeps the last")
        self.end_block(block)

    def dns(self, sec: _Node) -> None:
        table = self.open_table(self.doc, "dns", sec)
        keys = dae_keys.DNS
        deferred: list[tuple[_Node, Any]] = []
        for node in sec.children:
            if node.kind not in ("decl", "block") or node.key is None:
                raise self.not_here(node, "dns", "ipversion_prefer, fixed_domain_ttl, upstream and routing")
            if node.key.text not in keys:
                raise self.unknown(node.key, "key in dns", keys)
            if (node.kind == "block") != (keys[node.key.text].kind == "block"):
                form = "a block" if node.kind == "decl" else "a `key: value` line"
                raise self.err(node.key, f"`{node.key.text}` in dns is {form}")
        # Blocks given twice are joined (dae merges their entries); lines given twice: the last counts.
        written = self.last_wins(sec.children, "dns", lambda k: keys[k].kind == "block")
        for i, node in enumerate(sec.children):
            assert node.key is not None
            name = node.key.text
            if i not in written:
                if node.kind == "decl":
                    self.superseded(table, node, "given again below; dae reads the last")
                continue
            group = written[i][1]
            if node.kind == "block" and len(group) > 1:
                node = _joined(group)
            spec = keys[name]
            if name == "routing":
                self.dns_routing(table, node)
            elif name in ("fixed_domain_ttl", "upstream"):
                value = self.ttl if name == "fixed_domain_ttl" else self.upstream
                for c in node.children:
                    if c.key is not None:
                        self.origins[("dns", name, c.key.text)] = c.key
                if not self.keyed_inline(table, node, value):
                    deferred.append((node, value))
            elif name == "max_cache_size":
                tok = self.single(node, "a number")
                n = int(self.typed(node, "int"))
                if n <= 0:
                    self.comments(table, node.leading)
                    table.add(_comment_item(f"# dae's max_cache_size: {tok.value} (no limit): daetui keeps its "
                                            "cache bounded (cache_size, default 4096)"))
                    self.warn(node.key, "dns.max_cache_size 0 (no limit in dae): daetui's cache stays bounded "
                                        "(cache_size, 4096)")
                    continue
                self.origins[("dns", "cache_size")] = node.key
                self.put(table, "cache_size", tomlkit.integer(n), node, ["# dae's max_cache_size"])
            else:
                self.origins[("dns", spec.target(name))] = node.key
                self.put(table, spec.target(name), self.typed(node, spec.kind), node)
        for name, spec in keys.items():
            if spec.dae_default is not None and not any(n.key is not None and n.key.text == name
                                                        for n in sec.children):
                table.add(_comment_item("# dae's default, written out so that daetui does as dae did"))
                table.add(name, tomlkit.boolean(spec.dae_default))
        for node, value in deferred:
            assert node.key is not None
            self.keyed_table(table, node.key.text, node, value)
        self.end_block(sec)

    def ttl(self, node: _Node) -> Item:
        return self.typed(node, "u32")

    def upstream(self, node: _Node) -> Item:
        return _toml_string(self.single(node, "an upstream such as 'udp://1.1.1.1:53'").value)

    def dns_routing(self, table: Table, routing: _Node) -> None:
        # The routing block has no key of its own in the TOML: its comments go with request.
        lead = routing.leading + routing.header
        blocks: dict[str, list[_Node]] = {}
        for node in routing.children:
            if node.kind != "block" or node.key is None or node.key.text not in ("request", "response"):
                raise self.not_here(node, "dns routing", "`request { ... }` and `response { ... }`")
            blocks.setdefault(node.key.text, []).append(node)
        for name, group in blocks.items():
            node = group[0]
            if len(group) > 1:   # dae joins a block given twice
                node = _joined(group)
            assert node.key is not None
            rules, fallback = self.rules(node, name)
            if fallback is None:
                raise self.err(node.key, f"{name} has no `fallback:`: dae requires one there "
                                         f"(add `fallback: {'asis' if name == 'request' else 'accept'}`)")
            elems = [self.rule_elem(r, j) for j, r in enumerate(rules)]
            for j, r in enumerate(rules):
                self.origins[("dns", name, j)] = self.first_tok(r)
            assert fallback.key is not None
            self.origins[("dns", name, len(rules))] = fallback.key
            fb = fallback.text if fallback.is_func else self.single(fallback, "an upstream").value
            elems.append(_Elem(f"fallback: {fb}", fallback.leading, fallback.trailing, fallback.blank and bool(rules)))
            tail = node.dangling
            self.comments(table, lead + node.leading)
            lead = []
            if node.blank and _body(table) and not node.leading:
                table.add(tomlkit.nl())
            table.add(name, self.array(elems, node.header, tail))
        self.comments(table, lead + routing.dangling)

    def rule_elem(self, r: _Node, j: int) -> _Elem:
        return _Elem(r.text, r.leading, r.trailing, r.blank and j > 0)

    def rules(self, block: _Node, where: str) -> tuple[list[_Node], _Node | None]:
        """The rules and the fallback (the last one given, as dae reads it) of routing, dns request or
        dns response; None when there is none."""
        assert block.key is not None
        rules: list[_Node] = []
        fallbacks: list[_Node] = []
        for node in block.children:
            if node.kind == "rule":
                rules.append(node)
            elif node.kind == "decl" and node.key is not None and node.key.text == "fallback":
                if node.annotation:
                    raise self.err(node.key, "an annotation `[...]` only goes after a group's filter")
                fallbacks.append(node)
            elif node.kind == "expr":
                raise self.err(self.first_tok(node), f"rule `{node.text}` has no `-> outbound`")
            elif node.kind == "decl" and node.key is not None:
                raise self.unknown(node.key, f"key in {where}", ["fallback"])
            else:
                t = self.first_tok(node)
                raise self.err(t, f"{_describe(t)} is not a rule: {where} takes `condition -> outbound` "
                                  f"lines and `fallback: outbound`")
        if len(fallbacks) > 1:
            self.last_wins(fallbacks, where)
            last = fallbacks[-1]
            for f in fallbacks[:-1]:
                # The earlier ones stay as comments where they were, above the next rule or at the end.
                note = _Comment([f"# {ln}  (given again below; dae reads the last)" if k == 0 else f"# {ln}"
                                 for k, ln in enumerate(self.src_text(f).split("\n"))], 0, 0, 0)
                after = [r for r in rules if r.first > f.first]
                if after:
                    after[0].leading = [*f.leading, note, *after[0].leading]
                else:
                    last.leading = [*f.leading, note, *last.leading]
            return rules, last
        return rules, (fallbacks[0] if fallbacks else None)

    def routing(self, sec: _Node) -> None:
        table = self.open_table(self.doc, "routing", sec)
        rules, fallback = self.rules(sec, "routing")
        last_is_rule = bool(sec.children) and sec.children[-1].kind == "rule"
        elems = [self.rule_elem(r, j) for j, r in enumerate(rules)]
        for j, r in enumerate(rules):
            self.origins[("routing", "rules", j)] = self.first_tok(r)
        table.add("rules", self.array(elems, [], sec.dangling if last_is_rule else []))
        if fallback is None:
            # dae's Routing.Fallback has default:"direct"; its documented minimal config has no fallback.
            table.add(_comment_item("# no fallback in the dae file: dae's default"))
            table.add("fallback", _toml_string("direct"))
            assert sec.key is not None
            self.origins[("routing", "fallback")] = sec.key
            if not last_is_rule:
                self.end_block(sec)
            return
        value = fallback.text if fallback.is_func else self.single(fallback, "an outbound").value
        fallback.blank = fallback.blank and bool(rules)
        assert fallback.key is not None
        self.origins[("routing", "fallback")] = fallback.key
        self.put(table, "fallback", _toml_string(value), fallback)
        if not last_is_rule:
            self.end_block(sec)


LinkCheck = Callable[[str], "str | None"]

# Where a subscription is fetched from (schema.SUBSCRIPTION_SCHEMES; `tag:` prefixes are a link's own).
_SUBSCRIPTION = re.compile(r"^(https?|file|https?-file)://\S+$", re.IGNORECASE)


def _subscription_problem(value: str) -> str | None:
    """Why a subscription value cannot be fetched (dae fails on it only when it fetches it)."""
    if _SUBSCRIPTION.match(value.strip()):
        return None
    return "not a http://, https:// or file:// address"


@dataclass
class Conversion:
    """A dae config converted: the TOML text, what was left out or means nothing here, and where each
    TOML value came from in the dae files (for errors found later)."""

    text: str
    warnings: list[str]
    files: list[str]                                   # the entry file, then every included one
    left_out: list[str] = field(default_factory=list)  # node tags left out
    left_out_subscriptions: list[str] = field(default_factory=list)
    origins: dict[tuple[str | int, ...], tuple[str, int, int]] = field(default_factory=dict)

    def locate(self, path: tuple[str | int, ...]) -> tuple[str, int, int] | None:
        """file, line and column in the dae files of the TOML value at `path` (or of its nearest parent)."""
        p = tuple(path)
        while p:
            if p in self.origins:
                return self.origins[p]
            p = p[:-1]
        return None


_MAX_INCLUDED = 256   # files one config may pull in


def _parse_file(text: str, name: str) -> tuple[_Source, _Node]:
    # dae treats \r as whitespace and ends comments at it; as line breaks, they count lines like editors do.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    src = _Source(text, name)
    toks, comments = _tokenize(src)
    parser = _Parser(src, toks)
    root = parser.parse()
    _attach_comments(src, parser, root, comments)
    _set_blanks(src, parser, root)
    return src, root


def _check_sections(src: _Source, root: _Node) -> None:
    for sec in root.children:
        t = sec.toks[sec.first]
        if sec.kind != "block":
            raise src.error(t.start, f"unexpected {_describe(t)}: expected a section such as `global {{`")
        assert sec.key is not None
        if sec.key.text not in _SECTIONS:
            close = difflib.get_close_matches(sec.key.text, list(_SECTIONS), n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            raise src.error(t.start, f"unknown section `{sec.key.text}`{hint}")


def _include_patterns(src: _Source, sec: _Node, entry_dir: Path) -> list[str]:
    out = []
    for item in sec.children:
        if item.kind != "lit":
            t = item.toks[item.first]
            raise src.error(t.start, "include takes file names or glob patterns, one a line "
                                     "(e.g. config.d/*.dae)")
        name = item.values[0].value
        out.append(name if Path(name).is_absolute() else str(entry_dir / name))
    return out


def _read_included(path: Path, entry_dir: Path, tok: _Tok, src: _Source, warnings: list[str]) -> str:
    try:
        path.resolve().relative_to(entry_dir.resolve())
    except ValueError:
        raise src.error(tok.start, f"include: {path} is outside {entry_dir}: dae includes only files "
                                   "under the entry file's directory") from None
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise src.error(tok.start, f"include: cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise src.error(tok.start, f"include: {path} is not UTF-8 text") from None
    if mode & 0o037:
        warnings.append(f"{path}: permissions {mode & 0o777:04o} are too open for dae, which refuses to run "
                        "with a config file that others can read or its group can write (chmod 600)")
    return text


def _gather(text: str, name: str, read_includes: bool) -> tuple[_Source, list[tuple[_Source, _Node]], list[str]]:
    """The entry file and every file its `include` sections pull in, in dae's order (depth first: a
    file's own sections, then its includes', glob matches sorted), each parsed."""
    warnings: list[str] = []
    entry_src, entry_root = _parse_file(text, name)
    entry_dir = Path(name).parent
    files: list[tuple[_Source, _Node]] = []
    visiting: list[str] = []

    def visit(src: _Source, root: _Node) -> None:
        _check_sections(src, root)
        files.append((src, root))
        key = str(Path(src.name).resolve()) if read_includes else src.name
        visiting.append(key)
        for sec in root.children:
            if sec.key is None or sec.key.text != "include":
                continue
            t = sec.key
            if not read_includes:
                raise src.error(t.start, "include: convert the file by its path so that included files can "
                                         "be found (daetui import-dae FILE)")
            for pattern in _include_patterns(src, sec, entry_dir):
                for match in sorted(glob.glob(pattern)):
                    p = Path(match)
                    if not match.endswith(".dae") or p.is_dir():
                        continue   # dae skips what is not a .dae file
                    if str(p.resolve()) in visiting:
                        raise src.error(t.start, f"include: {match} includes itself (circular include, "
                                                 "which dae refuses)")
                    if len(files) >= _MAX_INCLUDED:
                        raise src.error(t.start, f"include: more than {_MAX_INCLUDED} files")
                    child_text = _read_included(p, entry_dir, t, src, warnings)
                    visit(*_parse_file(child_text, str(p)))
        visiting.pop()

    visit(entry_src, entry_root)
    return entry_src, files, warnings


def _joined(blocks: list[_Node]) -> _Node:
    """One block holding the items (and end comments) of `blocks`, in order, with the first one's place
    and comments: dae reads a block given twice as one."""
    b = blocks[0]
    return _Node("block", b.first, b.last, key=b.key, open=b.open, close=b.close, leading=list(b.leading),
                 header=list(b.header), blank=b.blank, toks=b.toks,
                 children=[c for g in blocks for c in g.children], dangling=[c for g in blocks for c in g.dangling])


def _merged(files: list[tuple[_Source, _Node]]) -> _Node:
    """One root holding each section once, in order of first appearance: dae merges sections of the
    same name, within a file and across included files, by joining their items."""
    root = _Node("block", 0, 0, toks=files[0][1].toks)
    by_name: dict[str, _Node] = {}
    for src, file_root in files:
        for sec in file_root.children:
            assert sec.key is not None
            name = sec.key.text
            if name == "include":
                continue
            if name not in by_name:
                merged = _joined([sec])
                by_name[name] = merged
                root.children.append(merged)
                continue
            merged = by_name[name]
            # The later section's own comments go above its first item (or at the end if it has none).
            note = _Comment([f"# {name} continued from {_CONTROL.sub('?', src.name)}:{sec.key.line}"], 0, 0, 0)
            lead = [*sec.leading, note, *sec.header]
            if sec.children:
                first = sec.children[0]
                first.leading = lead + first.leading
                merged.children.extend(sec.children)
                merged.dangling.extend(sec.dangling)
            else:
                merged.dangling.extend(lead + sec.dangling)
        root.dangling.extend(file_root.dangling)
    return root


def convert_dae_full(text: str, source: str = "<dae>", *, check_link: LinkCheck | None = None,
                     read_includes: bool = False) -> Conversion:
    """Convert dae config text (and, with `read_includes`, the files its `include` pulls in, found
    next to `source`) into daetui's TOML, as dae reads it.

    `check_link(link)` says why a node's link cannot be used (None: it can); such nodes are left out
    with a warning, as dae leaves out the links it cannot parse. Raises DaeImportError, located at
    file:line:col of the dae file, for what dae refuses or what cannot be converted faithfully.
    """
    src, files, warnings = _gather(text, source, read_includes)
    root = _merged(files)
    conv = _Converter(src, root, check_link)
    out = conv.convert()
    origins = {path: ((t.src or src).name, t.line, t.col) for path, t in conv.origins.items()}
    return Conversion(out, warnings + conv.warnings, [s.name for s, _ in files], conv.left_out,
                      conv.left_out_subscriptions, origins)


def convert_dae_file(path: str | Path, *, check_link: LinkCheck | None = None) -> Conversion:
    """Convert the dae config at `path` and every file it includes (dae's glob rules)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DaeImportError("not UTF-8 text", str(p)) from None
    return convert_dae_full(text, str(p), check_link=check_link, read_includes=True)


def convert_dae(text: str, source: str = "<dae>") -> str:
    """Convert dae config text into daetui's TOML config text (no includes, no link checks).

    `source` names the input in error messages and in the header comment.
    Raises DaeImportError, located at file:line:col, for anything that cannot be
    converted faithfully: syntax errors, unknown sections or keys, rules without
    `-> outbound`.
    """
    return convert_dae_full(text, source).text
