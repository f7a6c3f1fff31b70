"""What the control plane knows of addresses' names, and the kernel's copy of it.

An address's name decides its domain rules in the kernel: for each address
the kernel holds one bitmap per rule generation, bit i set when the name
matches domain function i. The DNS controller (and tests) tell the NameBook
about a name; it writes the bitmaps, and a reload rewrites them for the new
generation before the flip.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

from daetui.routing.compile import DomainFunction, domain_bitmap

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class NameBook:
    """Names by address (most recent last), bounded like the kernel's map."""

    def __init__(self, max_addresses: int = 65536) -> None:
        self.max_addresses = max_addresses
        self._names: OrderedDict[IPAddress, list[str]] = OrderedDict()

    def learn(self, addr: IPAddress, name: str) -> list[IPAddress]:
        """Note that `addr` is `name`; returns addresses dropped to stay in bounds."""
        names = self._names.setdefault(addr, [])
        name = name.rstrip(".").lower()
        if name in names:
            names.remove(name)
        names.append(name)
        del names[:-8]  # a handful of names per address is plenty (CDNs share addresses)
        self._names.move_to_end(addr)
        dropped = []
        while len(self._names) > self.max_addresses:
            old, _ = self._names.popitem(last=False)
            dropped.append(old)
        return dropped

    def names(self, addr: IPAddress) -> list[str]:
        return list(self._names.get(addr, ()))

    def forget(self, addr: IPAddress) -> None:
        self._names.pop(addr, None)

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
