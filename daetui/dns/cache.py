"""The DNS cache: answers by question (and, for asis answers, the server asked), for their TTL, least
recently used out first.

An entry holds the answer as a wire template (no EDNS record, ID zero) and
the offsets of its TTL fields, so serving it is a copy and a few patches.
Negative answers (NXDOMAIN, or no record of the type) are cached too, for
the SOA's negative TTL (RFC 2308) or NEGATIVE_TTL without one. The cache
lives in the controller, not the config: it is kept across reloads.

Serving stale (RFC 8767, dae's `optimistic_cache`): with `serve_stale` on, an
entry past its TTL is kept for `stale_window` more seconds (0: until evicted
as least recently used) and `get(..., stale_ok=True)` still returns it; the
controller answers with it at once (TTL STALE_TTL) and refreshes it in the
background. Without it, an expired entry is dropped when met.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NEGATIVE_TTL = 30     # seconds, for a negative answer that carries no SOA
MAX_NEGATIVE_TTL = 3600  # a name that did not exist may exist soon: at most an hour (unbound's default)
MAX_TTL = 86400 * 7   # no answer is kept longer than a week, whatever it says
STALE_TTL = 30        # the TTL of a stale answer (RFC 8767 4: "30 seconds"), or its own TTL when shorter


@dataclass(slots=True)
class CacheEntry:
    """One cached answer."""

    key: bytes                   # the question as bytes (name lower-cased, type, class)
    qname: str
    qtype: int
    template: bytes
    offsets: list[int]
    ttls: list[int]              # each record's TTL when stored (fixed_domain_ttl applied)
    stored: float                # time.monotonic()
    expires: float
    upstream: str
    rcode: int
    negative: bool
    addresses: tuple[IPAddress, ...] = ()  # A/AAAA answers, for the kernel (parsed once)
    answers: tuple[str, ...] = ()     # every answer record of the question's type, as text (the console)
    names: tuple[str, ...] = ()       # the question's name and its CNAME chain
    route: str = ""                   # how the answer was reached (rules, upstream)
    # A configured upstream's answer: its addresses may be named in the kernel. An answer of a server a
    # client chose (asis) is kept under that server's key and names nothing (see controller.Scope).
    trusted: bool = True
    scope: str = ""                   # "" (every client's), or the server asked ("asis 192.0.2.1:53")
    wall: float = field(default_factory=time.time)
    hits: int = 0

    def ttl_left(self, now: float) -> float:
        return max(0.0, self.expires - now)

    def stale_ttls(self) -> list[int]:
        """The TTLs a stale answer goes out with: STALE_TTL, or the record's own when it was shorter."""
        return [min(STALE_TTL, t) for t in self.ttls]


class DnsCache:
    """Bounded, LRU-evicting; expired entries are dropped when met and by `sweep`."""

    def __init__(self, max_entries: int = 4096, serve_stale: bool = False, stale_window: float = 60.0) -> None:
        self.max_entries = max(1, max_entries)
        self.serve_stale = serve_stale
        self.stale_window = stale_window   # seconds past expiry an entry may be served; 0: no limit
        self._entries: OrderedDict[bytes, CacheEntry] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evicted = 0
        self.stale_hits = 0

    def usable_until(self, e: CacheEntry) -> float:
        """Until when `e` may answer: its expiry, or the end of its stale window."""
        if not self.serve_stale:
            return e.expires
        return float("inf") if self.stale_window <= 0 else e.expires + self.stale_window

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: float, count_miss: bool = True, stale_ok: bool = False) -> CacheEntry | None:
        """The live entry for `key` (counted as a hit), or None.

        With `stale_ok` (and serving stale on), an expired entry within its stale window too: the
        caller tells it by `e.expires <= now`.
        """
        e = self._entries.get(key)
        if e is None or e.expires <= now:
            if e is not None and self.usable_until(e) <= now:
                del self._entries[key]
            elif e is not None and stale_ok and self.serve_stale:
                self._entries.move_to_end(key)
                e.hits += 1
                self.hits += 1
                self.stale_hits += 1
                return e
            self.misses += count_miss
            return None
        self._entries.move_to_end(key)
        e.hits += 1
        self.hits += 1
        return e

    def peek(self, key: bytes) -> CacheEntry | None:
        return self._entries.get(key)

    def put(self, entry: CacheEntry) -> list[CacheEntry]:
        """Store `entry`; returns the entries evicted to stay within the bound."""
        self._entries[entry.key] = entry
        self._entries.move_to_end(entry.key)
        out = []
        while len(self._entries) > self.max_entries:
            _, old = self._entries.popitem(last=False)
            self.evicted += 1
            out.append(old)
        return out

    def resize(self, max_entries: int) -> list[CacheEntry]:
        self.max_entries = max(1, max_entries)
        out = []
        while len(self._entries) > self.max_entries:
            out.append(self._entries.popitem(last=False)[1])
            self.evicted += 1
        return out

    def sweep(self, now: float) -> list[CacheEntry]:
        """Drop and return the entries that may answer no more (expired, and past their stale window)."""
        gone = [k for k, e in self._entries.items() if self.usable_until(e) <= now]
        return [self._entries.pop(k) for k in gone]

    def flush(self) -> int:
        n = len(self._entries)
        self._entries.clear()
        return n

    def entries(self) -> list[CacheEntry]:
        """Most recently used first."""
        return list(reversed(self._entries.values()))
