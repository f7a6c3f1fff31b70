"""The console's tests: local time fixed to UTC so times render the same everywhere."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


def frozen_app(pane: str = "overview", theme: str | None = None):
    from frozen import FrozenSource

    from daetui.ui.app import DaetuiApp

    source = FrozenSource()

    async def connect() -> FrozenSource:
        return source

    # One snapshot and no refresh after it: every picture is the same.
    app = DaetuiApp(connect, refresh=3600, theme=theme, initial_pane=pane)
    app.frozen_source = source  # type: ignore[attr-defined]
    return app


os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")
