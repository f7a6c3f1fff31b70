"""The connection table: every flow the control plane relays, open and recently closed."""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from daetui.redact import redact

Endpoint = tuple[str, int]


def format_endpoint(ep: Endpoint) -> str:
    host, port = ep
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class Connection:
    """One relayed flow. Byte counts grow while it is open."""

    id: int
    proto: str                 # "tcp" | "udp"
    src: Endpoint              # the LAN client
    dst: Endpoint              # the original destination
    started: float
    rule_index: int | None     # None: the fallback
    rule: str                  # the rule's text (or "fallback")
    outbound: str
    stage: str                 # "kernel": decided by lan_ingress; "userspace": by the matcher here
    mac: str | None = None
    up: int = 0                # bytes client -> destination
    down: int = 0              # bytes destination -> client
    state: str = "open"        # "open" | "closed" | "failed"
    ended: float | None = None
    error: str | None = None
    relay: str = ""            # "splice" | "copy" | "udp"; through a proxy's stream: "framed" | "stream"
    domain: str | None = None  # the name sniffed from its first bytes (TLS, HTTP, QUIC)
    sniffed: str | None = None  # which protocol it was sniffed from
    node: str | None = None    # the proxy node of its group it went through (None: direct)
    pid: int | None = None     # the router's own traffic (WAN side): the process that opened it
    process: str | None = None  # and its name (comm), as pname() matches it
    worker: int | None = None  # the relay worker that carries it (None: the main process)
    mark: int = 0              # direct(mark: ..): the mark its direct dial carries (0: so_mark_from_dae)

    @property
    def duration(self) -> float:
        return (self.ended or time.time()) - self.started

    def describe(self) -> str:
        """The log line of a connection: source, destination, rule and outbound (bytes once closed).

        `tcp 192.0.2.10:40000 -> 203.0.113.10:80 by #3 dip(203.0.113.10) -> proxy [kernel]`; the router's
        own flows name their process: `tcp 198.51.100.1:43610 (curl[812]) -> ...`
        """
        by = f"fallback -> {self.outbound}" if self.rule_index is None else f"#{self.rule_index + 1} {self.rule}"
        dst = format_endpoint(self.dst) + (f" ({self.domain})" if self.domain else "")
        via = f" via {self.node}" if self.node else ""
        who = f" ({self.process}[{self.pid}])" if self.process else ""
        text = f"{self.proto} {format_endpoint(self.src)}{who} -> {dst} by {by}{via} [{self.stage}]"
        if self.state != "open":
            text += f" {self.state}: up {self.up} B, down {self.down} B, {self.duration:.2f}s"
            if self.error:
                text += f" ({self.error})"
        return text


@dataclass
class ConnectionTable:
    """Open connections by id, and a ring of closed ones."""

    closed_keep: int = 2000
    open: dict[int, Connection] = field(default_factory=dict)
    closed: deque[Connection] = field(default_factory=deque)
    total: int = 0
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.closed = deque(maxlen=self.closed_keep)

    def add(self, **fields: object) -> Connection:
        conn = Connection(id=next(self._ids), started=time.time(), **fields)  # type: ignore[arg-type]
        self.open[conn.id] = conn
        self.total += 1
        return conn

    def finish(self, conn: Connection, error: str | None = None) -> None:
        """Move a connection to the closed ring (once)."""
        if self.open.pop(conn.id, None) is None:
            return
        conn.ended = time.time()
        conn.state = "failed" if error else "closed"
        conn.error = redact(error) if error else error   # a dialer's words may quote a link
        self.closed.append(conn)

    def snapshot(self) -> list[Connection]:
        """Copies of every open and kept closed connection, newest last."""
        return [replace(c) for c in itertools.chain(self.closed, self.open.values())]
