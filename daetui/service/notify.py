"""sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET per state change.

READY=1 when the daemon runs, RELOADING=1 and READY=1 around a reload,
STOPPING=1 at stop, WATCHDOG=1 from the event loop while it turns. Outside
systemd (no $NOTIFY_SOCKET) every call does nothing. A notification that
cannot be sent is logged and dropped: systemd's bookkeeping never stops
the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

log = logging.getLogger("daetui")
_warned = False


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if addr.startswith("@"):
        return "\0" + addr[1:]  # an abstract socket
    if addr.startswith("/"):
        return addr
    return None  # unset, or a kind systemd 252 does not use (vsock:)


def notify(*fields: str) -> bool:
    """Send `fields` (e.g. "READY=1", "STATUS=...") as one message; True when it was sent."""
    addr = _address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as s:
            s.connect(addr)
            s.send("\n".join(fields).encode())
    except OSError as e:
        global _warned
        # Once as a warning: the watchdog would repeat it every few seconds.
        log.log(logging.DEBUG if _warned else logging.WARNING, "could not notify systemd (%s): %s",
                ", ".join(fields), e.strerror or e)
        _warned = True
        return False
    return True


def _monotonic_usec() -> str:
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


def ready(status: str = "") -> bool:
    """The daemon runs: its programs are attached and its control socket answers."""
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def reloading() -> bool:
    """A reload begins; `ready()` ends it."""
    return notify("RELOADING=1", _monotonic_usec())


def stopping() -> bool:
    """The daemon is stopping (undoing its changes)."""
    return notify("STOPPING=1")


def watchdog_interval() -> float | None:
    """How often to send WATCHDOG=1 (half of systemd's WatchdogSec), or None when no watchdog is asked for."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
        pid = int(os.environ.get("WATCHDOG_PID", str(os.getpid())))
    except ValueError:
        return None
    if usec <= 0 or pid != os.getpid() or _address() is None:
        return None
    return usec / 2e6


def start_watchdog() -> asyncio.Task[None] | None:
    """On the running loop, the WATCHDOG=1 task when systemd asks for one (cancel it at stop)."""
    interval = watchdog_interval()
    return asyncio.ensure_future(keep_watchdog(interval)) if interval else None


async def keep_watchdog(interval: float) -> None:
    """WATCHDOG=1 every `interval` seconds from the event loop: a loop that hangs stops them, and systemd
    restarts the daemon."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
