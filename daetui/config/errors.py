"""Config errors that say where: file, line, column, and what was expected.

An error shows the line it is about with a caret under the culprit; a line
of [node] or [subscription] holds a password, a UUID or a token, so the
secrets in it are masked (the caret moved to match) before the error is
ever seen: in the terminal, in a reload's answer, in the console.
"""

from __future__ import annotations

from daetui.redact import MASK, merge, redact, secret_spans


class ConfigError(ValueError):
    """A config file that cannot be used. Nothing is started or changed.

    `secret_spans` are (start, end) columns (0-based) of `source_line` that
    hold secrets, as the loader knows them; the shapes of secrets anywhere in
    the line are masked too. `source_line` keeps the masked line.
    """

    def __init__(self, message: str, file: str = "<config>", line: int = 0, col: int = 0,
                 source_line: str | None = None, width: int = 1,
                 secret_spans: list[tuple[int, int]] | tuple[tuple[int, int], ...] = ()) -> None:
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.col = col
        self.path: tuple[str | int, ...] = ()   # the TOML key path it is about, where the loader knows it
        self.width = max(1, width)
        # Where the caret goes in the masked line (the location keeps the file's real column).
        self.caret_col = col
        self.source_line = source_line
        if source_line is not None:
            self.source_line, self.caret_col, self.width = _masked(source_line.rstrip("\n"), col, self.width,
                                                                   list(secret_spans))

    @property
    def location(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.col}"
        return self.file

    def __str__(self) -> str:
        text = f"{self.location}: {self.message}"
        if self.source_line is not None and self.col:
            line = self.source_line
            width = min(self.width, max(1, len(line) - self.caret_col + 1))
            text += f"\n    {line}\n    {' ' * (self.caret_col - 1)}{'^' * width}"
        return text


def _masked(line: str, col: int, width: int, known: list[tuple[int, int]]) -> tuple[str, int, int]:
    """The line with its secrets masked, and the caret's column and width in it."""
    spans = merge([(max(0, a), min(len(line), b)) for a, b in known if b > a] + secret_spans(line))
    if not spans:
        return line, col, width
    start, end = col - 1, col - 1 + width   # the caret's range, 0-based, in the original line

    def moved(pos: int, is_end: bool) -> int:
        """Where `pos` of the original line is in the masked one."""
        shift = 0
        for a, b in spans:
            if pos >= b if not is_end else pos > b:
                shift += (b - a) - len(MASK)
            elif a <= pos < b or (is_end and a < pos <= b):
                # Inside a secret: the caret covers its mask.
                return a - shift + (len(MASK) if is_end else 0)
            else:
                break
        return pos - shift

    out, last = [], 0
    for a, b in spans:
        out += [line[last:a], MASK]
        last = b
    out.append(line[last:])
    new_start, new_end = moved(start, False), moved(end, True)
    return "".join(out), new_start + 1, max(1, new_end - new_start)
