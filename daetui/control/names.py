"""What the control plane knows of addresses' names, and the kernel's copy of it.

An address's name decides its domain rules in the kernel: for each address
the kernel holds one bitmap per rule generation, bit i set when the name
matches domain function i. The DNS controller (and tests) tell the NameBook
about a name and until when it holds (the answer's TTL); the control plane
writes the bitmaps, removes them when the names expire, and a reload
rewrites them for the new generation before the flip.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
from collections import OrderedDict

from daetui.routing.compile import DomainFunction, domain_bitmap

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_NAMES_PER_ADDRESS = 8


class NameBook:
    """Names by address, each until its deadline (most recent last), bounded like the kernel's map."""

    def __init__(self, max_addresses: int = 65536) -> None:
        self.max_addresses = max_addresses
        self._names: OrderedDict[IPAddress, dict[str, float]] = OrderedDict()  # name -> deadline
        self._deadlines: list[tuple[float, int, IPAddress, str]] = []          # a heap; stale ones skipped
        self._seq = 0
        self.lost = 0    # names dropped before their deadline (bounds): the kernel's DNS answers are retired then

    def learn(self, addr: IPAddress, name: str, deadline: float = math.inf) -> tuple[bool, list[IPAddress]]:
        """Note that `addr` is `name` until `deadline` (time.monotonic()).

        Returns whether the address gained a name (its kernel bits need writing) and
        the addresses dropped to stay within bounds (their kernel entries must go).
        """
        name = name.rstrip(".").lower()
        names = self._names.get(addr)
        if names is None:
            names = self._names[addr] = {}
        else:
            self._names.move_to_end(addr)
        old = names.pop(name, None)
        names[name] = deadline if old is None else max(old, deadline)
        if (old is None or deadline > old) and deadline != math.inf:
            self._seq += 1
            heapq.heappush(self._deadlines, (deadline, self._seq, addr, name))
        if len(names) > MAX_NAMES_PER_ADDRESS:
            # CDNs put many names on one address; the oldest learned go first.
            del names[next(iter(names))]
            self.lost += 1
        dropped = []
        while len(self._names) > self.max_addresses:
            old_addr, _ = self._names.popitem(last=False)
            dropped.append(old_addr)
            self.lost += 1
        return old is None, dropped

    def expire(self, now: float) -> tuple[list[IPAddress], list[IPAddress]]:
        """Forget names whose deadline passed: (addresses that still have names, addresses with none left)."""
        changed: set[IPAddress] = set()
        emptied: list[IPAddress] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            deadline, _, addr, name = heapq.heappop(heap)
            names = self._names.get(addr)
            if names is None or names.get(name) != deadline:
                continue  # renewed, replaced or already gone
            del names[name]
            if names:
                changed.add(addr)
            else:
                del self._names[addr]
                changed.discard(addr)
                emptied.append(addr)
        return [a for a in changed if a in self._names], emptied

    def names(self, addr: IPAddress) -> list[str]:
        return list(self._names.get(addr, ()))

    def addresses(self) -> list[IPAddress]:
        return list(self._names)

    def bits(self, functions: list[DomainFunction], addr: IPAddress) -> int:
        """The bitmap of `addr` for one generation's domain functions (any of its names)."""
        out = 0
        for name in self._names.get(addr, ()):
            out |= domain_bitmap(functions, name)
        return out

    def __len__(self) -> int:
        return len(self._names)
