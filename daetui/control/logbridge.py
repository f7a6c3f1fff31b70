"""The daemon's log, kept for the console: a ring of recent lines and a live feed."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque

from daetui.control.events import EventBus
from daetui.control.state import LogLine

LEVEL_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn", logging.ERROR: "error",
               logging.CRITICAL: "error"}


class EventLogHandler(logging.Handler):
    """Publishes every log record on the event bus, from whatever thread logged it."""

    def __init__(self, bus: EventBus, loop: asyncio.AbstractEventLoop, keep: int = 2000) -> None:
        super().__init__(logging.DEBUG)
        self.bus = bus
        self.loop = loop
        self.recent: deque[LogLine] = deque(maxlen=keep)
        self._loop_thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = LogLine(record.created, LEVEL_NAMES.get(record.levelno, "info"), record.name,
                           record.getMessage())
        except Exception:
            return
        self.recent.append(line)
        if threading.get_ident() == self._loop_thread:
            self.bus.publish("log", line=line)
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(lambda: self.bus.publish("log", line=line))
