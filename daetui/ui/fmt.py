"""Numbers, sizes, rates and times as the console prints them; text from outside made safe to show."""

from __future__ import annotations

import time

from rich.text import Text
from textual.markup import escape as _escape_markup

from daetui.termtext import printable, printable_lines

__all__ = ["clock", "count", "duration", "endpoint", "markup", "ms", "printable", "printable_lines", "rate", "safe",
           "size", "ttl"]


def safe(text: object, style: str = "") -> Text:
    """A Text of `text` from outside (a name, an error, a log line), its control characters escaped: shown,
    never obeyed by the terminal. Line breaks are kept (a Text is no table cell)."""
    return Text(printable_lines(text), style=style)


def markup(text: object) -> str:
    """`text` from outside, to put into a markup string (a notification, a Static's text): controls escaped,
    and `[bold]`, `[link=...]` shown as written rather than read as markup."""
    return _escape_markup(printable_lines(text))


def size(n: float) -> str:
    """Bytes: 0 B, 999 B, 1.2 kB, 34 MB, 5.6 GB (powers of 1000, 3 significant digits)."""
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            if unit == "B":
                return f"{n:.0f} B"
            return f"{n:.1f} {unit}" if abs(n) < 100 else f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.0f} TB"


def rate(bps: float) -> str:
    """Bytes per second, blank when idle."""
    return "" if bps < 1 else f"{size(bps)}/s"


def count(n: int) -> str:
    """1234567 -> 1.2M; small numbers exact."""
    if n < 10000:
        return str(n)
    for unit, div in (("k", 1e3), ("M", 1e6), ("G", 1e9)):
        if n < div * 1000:
            return f"{n / div:.1f}{unit}" if n < div * 100 else f"{n / div:.0f}{unit}"
    return f"{n / 1e12:.0f}T"


def duration(seconds: float) -> str:
    """0.3s, 12s, 3m04s, 2h05m, 3d04h."""
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def clock(t: float) -> str:
    """A Unix time as local HH:MM:SS."""
    return time.strftime("%H:%M:%S", time.localtime(t))


def endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ttl(seconds: float) -> str:
    """A TTL left, whole seconds as dig counts them: 59s, 4m59s, 1h05m."""
    s = int(max(0.0, seconds))
    return f"{s}s" if s < 60 else duration(s)


def ms(value: float | None) -> str:
    """A latency: 0.4 ms, 12.3 ms, 250 ms; — when there is none yet."""
    if value is None:
        return "—"
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"
