"""Config errors that say where: file, line, column, and what was expected."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file that cannot be used. Nothing is started or changed."""

    def __init__(self, message: str, file: str = "<config>", line: int = 0, col: int = 0,
                 source_line: str | None = None, width: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.col = col
        self.source_line = source_line
        self.width = max(1, width)

    @property
    def location(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.col}"
        return self.file

    def __str__(self) -> str:
        text = f"{self.location}: {self.message}"
        if self.source_line is not None and self.col:
            line = self.source_line.rstrip("\n")
            width = min(self.width, max(1, len(line) - self.col + 1))
            text += f"\n    {line}\n    {' ' * (self.col - 1)}{'^' * width}"
        return text
