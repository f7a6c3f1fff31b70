"""The console's tests: local time fixed to UTC so times render the same everywhere, and the console
on a recorded daemon (`frozen`, `frozen_app`)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Before Textual is imported: it reads this once.
os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")

from frozen import FrozenSource, frozen_console

from daetui.ui.app import DaetuiApp


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


@pytest.fixture
def frozen() -> FrozenSource:
    """The recorded daemon (tests/ui/fixtures/lab.json), new for each test: what the console asks of it
    is kept there for the test to look at, and a test may change its data before the app starts."""
    return FrozenSource()


@pytest.fixture
def frozen_app(frozen: FrozenSource) -> Callable[..., DaetuiApp]:
    """`frozen_app(pane="overview", theme=None)`: the console on `frozen`."""
    return partial(frozen_console, frozen)
