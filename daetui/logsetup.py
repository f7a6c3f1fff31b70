"""Logging for the daemon: one line per event, with its secrets masked, to stderr, the journal or a
bounded file.

Where the lines go:
- run by systemd (its stderr is the journal: JOURNAL_STREAM names it): to
  stderr, each line prefixed with its syslog priority (`<3>`) so journald
  files it at its level, without a timestamp of ours (the journal has one);
- given a file (`daetui --no-ui --log-file F`, as the console starts its
  daemon): to F, rotated at LOG_MAX_BYTES with LOG_BACKUPS old files kept,
  so the log never takes more than (1 + LOG_BACKUPS) * LOG_MAX_BYTES of the
  run dir (a tmpfs: RAM); the process's own stdout and stderr (a crash's
  traceback, BCC's compiler output) follow the current file;
- otherwise: to stderr.

Every record's message is formatted once, when it is made, the secrets in it
masked (daetui.redact) and its control characters escaped (daetui.termtext):
whichever handler takes it -- these, the console's event feed -- sees only
that text, and a terminal showing the log obeys nothing a LAN client or a
subscription wrote into it.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path

from daetui.redact import redact
from daetui.termtext import printable_lines

LEVELS = {"error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG,
          "trace": logging.DEBUG}

# At info a relayed connection is a line of about 150 bytes: 4 MiB holds some 25,000 of them, the last
# hours of a busy home. Four files, 16 MiB at most: a router's /run is RAM, often 10 % of 256 MiB to 1 GiB.
LOG_MAX_BYTES = 4 * 1024 * 1024
LOG_BACKUPS = 3

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DATEFMT = "%Y-%m-%d %H:%M:%S"
# sd-daemon(3) priorities: journald reads a leading <N> of a stderr line as the line's level.
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def under_journal(stream: object = None) -> bool:
    """True when `stream` (stderr) is connected to the journal: systemd sets JOURNAL_STREAM to its device and
    inode (a shell or console started from a unit and redirected elsewhere is not)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in value:
        return False
    try:
        fd = (stream or sys.stderr).fileno()  # type: ignore[attr-defined]
        st = os.fstat(fd)
        dev, ino = (int(x) for x in value.split(":", 1))
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def run_by_systemd() -> bool:
    """Started by systemd as (part of) a unit, its output the unit's (the journal's by default). A terminal
    is no unit's output, even where INVOCATION_ID was inherited (a terminal emulator run as a user service)."""
    if under_journal():
        return True
    try:
        on_terminal = os.isatty(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        on_terminal = False
    return bool(os.environ.get("INVOCATION_ID")) and not on_terminal


class _RedactingFormatter(logging.Formatter):
    """Tracebacks and stack traces masked as the messages are (an exception's text may quote a link)."""

    _last: tuple[int, str | None] = (-1, None)
    _stamp: str = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # A relayed connection logs its line: a timestamp to the second (a datefmt: without one, logging adds
        # milliseconds) is worked out once a second.
        if datefmt is None:
            return super().formatTime(record, datefmt)
        key = (int(record.created), datefmt)
        if key != self._last:
            self._stamp, self._last = super().formatTime(record, datefmt), key
        return self._stamp

    def formatException(self, ei) -> str:  # type: ignore[no-untyped-def,override]
        return _clean(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _clean(super().formatStack(stack_info))


class _JournalFormatter(_RedactingFormatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        # Every line of a multi-line record gets the prefix, or journald files the rest at info.
        return "\n".join(f"<{prio}>{line}" for line in super().format(record).splitlines())


class FollowingRotatingHandler(logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler that keeps the process's stdout and stderr on the current file.

    Output that bypasses logging (a traceback at exit, a C library's messages)
    goes to file descriptors 1 and 2; pointed at the log file, they would keep
    writing to the rotated-away one, unbounded, and once that is deleted, to a
    file no one can see that still takes RAM. After each rotation they are
    pointed at the new file. Their writes count towards the size at the next
    record (the handler measures the file, not what it wrote).
    """

    def __init__(self, filename: str, max_bytes: int, backups: int, take_stdio: bool) -> None:
        super().__init__(filename, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self.take_stdio = take_stdio
        self._point_stdio()

    def _point_stdio(self) -> None:
        if self.take_stdio and self.stream is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd in (1, 2):
                os.dup2(self.stream.fileno(), fd)

    def doRollover(self) -> None:
        super().doRollover()
        self._point_stdio()


def _clean(text: str) -> str:
    """A log line's text: its secrets masked, its control characters escaped (a sniffed name, a node's name
    from a subscription: the log is read on terminals, by `tail`, by the console)."""
    return printable_lines(redact(text))


def _redacting_factory(base):  # type: ignore[no-untyped-def]
    def make(*args, **kwargs):  # type: ignore[no-untyped-def]
        record = base(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it when the record is handled
            return record
        record.msg, record.args = _clean(message), None
        return record
    make._daetui = True  # type: ignore[attr-defined]
    return make


def install_redaction() -> None:
    """Mask the secrets of every log record of this process, once (idempotent)."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "_daetui", False):
        logging.setLogRecordFactory(_redacting_factory(factory))


def setup_logging(level: str = "info", stream: object = None, file: str | os.PathLike[str] | None = None,
                  max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS) -> None:
    """Configure the root logger once; later calls only change the level.

    `file`: log there, rotated (see the module's docstring), and point this
    process's stdout and stderr at it; None: stderr (the journal's format when
    stderr is the journal).
    """
    install_redaction()
    # What no line of ours shows, not worked out for each record (a relayed connection logs one): the caller's
    # file and line (a walk up the stack), and the thread, process and multiprocessing names.
    logging._srcfile = None  # type: ignore[attr-defined]  # logging's documented switch for the caller lookup
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.setLevel(LEVELS.get(level, logging.INFO))
    if not any(getattr(h, "_daetui", False) for h in root.handlers):
        handler: logging.Handler
        out = stream or sys.stderr
        if file is not None:
            Path(file).parent.mkdir(parents=True, exist_ok=True)
            handler = FollowingRotatingHandler(os.fspath(file), max_bytes, backups, take_stdio=stream is None)
            handler.setFormatter(_RedactingFormatter(FORMAT, DATEFMT))
            # A handler's own failure prints to stderr, which is this file: say nothing rather than loop.
            logging.raiseExceptions = False
        elif under_journal(out):
            handler = logging.StreamHandler(out)  # type: ignore[arg-type]
            handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
        else:
            handler = logging.StreamHandler(out)  # type: ignore[arg-type]
            handler.setFormatter(_RedactingFormatter(FORMAT, DATEFMT))
        handler._daetui = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    # pyroute2 and asyncio are chatty at debug; their warnings still show.
    for name in ("pyroute2", "asyncio"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
