"""domain_routing never forgets behind the control plane's back (issue 11, fix 3).

It was an LRU: past its size the kernel dropped the addresses it chose while
KernelSync still listed them as written, so an address named again with the
same name was skipped ("the kernel already holds these bits") and its flows
stayed undecided in the kernel for good. Now the map is a plain hash that
KernelSync keeps within its size, oldest out first, so what it believes is
exactly what the kernel holds.
"""

from __future__ import annotations

import ipaddress
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import plane_in_lab, snapshot

from daetui.control.plane import ControlPlane
from daetui.control.runner import ControlPlaneThread

pytestmark = pytest.mark.kernel

TABLE = 1024
CONFIG = f"""
[global]
lan_interface = ["lan0"]
domain_table_size = {TABLE}

[group.proxy]

[routing]
rules = ["domain(suffix: named.test) -> proxy"]
fallback = "direct"
"""


@pytest.fixture(scope="module")
def plane(lab) -> Iterator[ControlPlaneThread]:  # type: ignore[no-untyped-def]
    with plane_in_lab(lab, CONFIG, Path(tempfile.mkdtemp(prefix="domains-"))) as runner:
        yield runner


def addr(i: int) -> str:
    return str(ipaddress.ip_address("198.18.0.0") + i)


def test_the_kernel_holds_exactly_what_the_control_plane_believes_and_renamed_addresses_come_back(plane):
    p: ControlPlane = plane.plane  # type: ignore[assignment]
    n = 3 * TABLE
    for i in range(n):
        plane.call(lambda i=i: p.learn_name(addr(i), f"h{i}.named.test"))

    def kernel() -> dict[ipaddress.IPv4Address | ipaddress.IPv6Address, dict[int, int]]:
        return dict(plane.call(lambda: p.sync.program.domain_entries()))

    held = kernel()
    believed = plane.call(lambda: dict(p.sync._bits_written))
    print(f"[figure] {n} addresses named into a table of {TABLE}: kernel holds {len(held)}, "
          f"KernelSync believes {len(believed)}, evicted {p.sync.domain_evicted}")
    assert set(held) == set(believed)
    assert all(held[ip][g] == bits for ip, per in believed.items() for g, bits in per.items())
    assert len(held) == TABLE
    # Oldest out first: the newest TABLE addresses are the ones held.
    assert {str(ip) for ip in held} == {addr(i) for i in range(n - TABLE, n)}
    assert p.sync.domain_evicted == n - TABLE
    # An address that went is written again when DNS names it again (the same name, the same bits).
    first = ipaddress.ip_address(addr(0))
    assert first not in held
    plane.call(lambda: p.learn_name(addr(0), "h0.named.test"))
    bits = plane.call(lambda: p.sync.program.domain_bits(first))
    assert bits is not None and bits[p.sync.generation] & 1
    assert len(kernel()) == TABLE
    assert snapshot(plane).dns.counters.kernel_evicted == n - TABLE + 1
