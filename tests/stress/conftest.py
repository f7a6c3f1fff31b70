"""The load and fault suite: shared fixtures and the figures table.

Every test here is `kernel` and `stress`. Each records what it measured with
the `figures` fixture; the table of all figures is printed at the end of the
run (`make stress` runs only this folder, with output), so a run shows what
was held, not only that it passed.

A second LAN host ("host B") is a second address on the LAN client's link:
the router tells clients apart by source address, as its budgets and its DNS
cache do, so two addresses are two devices to it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

HOST_B4 = "192.0.2.11"
HOST_B6 = "2001:db8:1::11"


@dataclass
class Figure:
    """One measured value of a stress test, with the bound it was held to."""

    test: str
    name: str
    value: str
    bound: str


@dataclass
class _Figures:
    rows: list[Figure] = field(default_factory=list)


_ALL = _Figures()


class FigureBook:
    """What one test measured: `figures.add("lookups within 500 ms", "99.8 %", ">= 99 %")`."""

    def __init__(self, test: str) -> None:
        self.test = test

    def add(self, name: str, value: object, bound: str = "") -> None:
        row = Figure(self.test, name, str(value), bound)
        _ALL.rows.append(row)
        print(f"[figure] {self.test}: {name} = {value} {('(' + bound + ')') if bound else ''}")


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> FigureBook:
    """Record a figure for the end-of-run table."""
    return FigureBook(request.node.name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/stress/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.stress)
            item.add_marker(pytest.mark.kernel)


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if not _ALL.rows:
        return
    tr = terminalreporter
    tr.section("stress figures")
    for r in _ALL.rows:
        tr.write_line(f"{r.test:<44} {r.name:<48} {r.value:>14}  {r.bound}")


@pytest.fixture(scope="session")
def host_b(lab) -> Iterator[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """A second LAN device: HOST_B4 / HOST_B6 on the LAN client's link (bind to them to be host B)."""
    dev = lab.addr.client_ifname
    argv = ["ip", "-n", lab.lan]
    subprocess.run([*argv, "addr", "add", f"{HOST_B4}/24", "dev", dev], check=True)
    subprocess.run([*argv, "-6", "addr", "add", f"{HOST_B6}/64", "dev", dev, "nodad"], check=True)
    try:
        yield HOST_B4, HOST_B6
    finally:
        subprocess.run([*argv, "addr", "del", f"{HOST_B4}/24", "dev", dev], check=False)
        subprocess.run([*argv, "-6", "addr", "del", f"{HOST_B6}/64", "dev", dev], check=False)
