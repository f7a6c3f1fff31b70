"""Logging for the daemon: one line per event, to stderr."""

from __future__ import annotations

import logging
import sys

LEVELS = {"error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG,
          "trace": logging.DEBUG}


def setup_logging(level: str = "info", stream: object = None) -> None:
    """Configure the root logger once; later calls only change the level."""
    root = logging.getLogger()
    root.setLevel(LEVELS.get(level, logging.INFO))
    if not any(getattr(h, "_daetui", False) for h in root.handlers):
        handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                                               "%Y-%m-%d %H:%M:%S"))
        handler._daetui = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    # pyroute2 and asyncio are chatty at debug; their warnings still show.
    for name in ("pyroute2", "asyncio"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
