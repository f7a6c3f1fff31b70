"""The console's themes, read from `themes/*.toml` (Textual Theme arguments)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from textual.theme import Theme

from daetui.resources import themes_dir

THEMES_DIR = themes_dir()
CSS_PATH = THEMES_DIR / "daetui.tcss"
DEFAULT = "daetui-dark"
SHORT_NAMES = {"dark": "daetui-dark", "light": "daetui-light", "basic": "daetui-basic"}


def load_themes(directory: Path = THEMES_DIR) -> list[Theme]:
    """Every theme file in the directory, as Textual themes."""
    out = []
    for path in sorted(directory.glob("*.toml")):
        data = tomllib.loads(path.read_text())
        out.append(Theme(**data))
    return out


def resolve(name: str | None) -> str:
    """`dark`, `light`, `basic` or a full theme name."""
    if not name:
        return DEFAULT
    return SHORT_NAMES.get(name, name)
