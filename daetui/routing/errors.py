"""Errors of the rule language, positioned inside the rule text."""

from __future__ import annotations


class RuleError(ValueError):
    """A rule that cannot be parsed or checked.

    `start`/`end` are character offsets into the rule text; the config loader
    turns them into a file, line and column.
    """

    def __init__(self, message: str, start: int = 0, end: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.start = start
        self.end = start + 1 if end is None else max(end, start + 1)

    def __str__(self) -> str:
        return self.message

    def caret(self, text: str) -> str:
        """The rule text with a caret line under the offending part."""
        width = max(1, min(self.end, len(text) + 1) - self.start)
        return f"{text}\n{' ' * self.start}{'^' * width}"
