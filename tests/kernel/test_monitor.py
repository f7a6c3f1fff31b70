"""The interface monitor under a netlink overflow (issue 11, fix 6): events come faster than it reads,
the kernel drops some (ENOBUFS), and the monitor lists the links again instead of ending for good."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator

import pytest
from helpers import wait_for

from daetui.dataplane.monitor import InterfaceMonitor, Link, link_changes
from daetui.net.netns import netns

pytestmark = pytest.mark.kernel

PAIRS = 300   # veth pairs: 600 RTM_NEWLINK of ~1 KiB against a receive buffer of a few KiB


@pytest.fixture
def ns() -> Iterator[str]:
    """A namespace of this test's own (no traffic: only links come and go in it)."""
    name = f"dtmon{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def batch(ns: str, lines: list[str]) -> None:
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n", text=True, check=True,
                   timeout=120)


def listed(ns: str) -> set[str]:
    out = subprocess.run(["ip", "-n", ns, "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def test_an_overflow_is_made_up_for_by_listing_again(ns: str) -> None:
    seen: list[tuple[str, str]] = []
    hold = threading.Event()
    first = threading.Event()

    def on_change(what: str, link: Link) -> None:
        seen.append((what, link.name))
        first.set()
        hold.wait(30)  # the first event holds the reader while the burst fills its buffer

    with netns(ns):
        mon = InterfaceMonitor(on_change, rcvbuf=4096)
        mon.start()
    try:
        batch(ns, ["link add mon0a type veth peer name mon0b"])
        assert first.wait(10), "the monitor saw no event"
        batch(ns, [f"link add m{i}a type veth peer name m{i}b" for i in range(PAIRS)])
        hold.set()
        # The burst overflowed the socket: the monitor must list again and be right afterwards.
        wait_for(lambda: mon.overflows >= 1 or None, timeout=20)
        wait_for(lambda: {lk.name for lk in dict(mon.links).values()} == listed(ns) or None, timeout=20)
        assert mon.alive
        news = {name for what, name in seen if what == "new"}
        assert {f"m{i}a" for i in range(PAIRS)} <= news, "links that appeared during the overflow were not reported"
        # And it goes on reading: a link deleted and one added afterwards are reported as they happen.
        seen.clear()
        batch(ns, ["link del m0a", "link add late0 type veth peer name late1"])
        wait_for(lambda: {("del", "m0a"), ("new", "late0")} <= set(seen) or None, timeout=10)
    finally:
        hold.set()
        mon.stop()
    assert not mon.alive


def test_link_changes_reports_gone_renamed_and_new() -> None:
    a, b, c = Link(1, "lo", True), Link(2, "lan0", True), Link(3, "wan0", False)
    changes = link_changes({1: a, 2: b}, {1: a, 2: Link(2, "lan1", True), 3: c})
    assert ("del", b) in changes and ("new", Link(2, "lan1", True)) in changes and ("new", c) in changes
    assert not any(lk.index == 1 for _, lk in changes)
    assert link_changes({1: a}, {1: a}) == []

