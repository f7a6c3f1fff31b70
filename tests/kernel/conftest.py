"""Fixtures of the kernel tests that more than one module uses."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from owntraffic import SS_PORT

from daetui.dataplane.cgroups import cgroup2_root
from daetui.lab.topology import Lab
from testkit.peers.shadowsocks import SsServer


@pytest.fixture(scope="module")
def own_ss(lab: Lab) -> Iterator[SsServer]:
    server = SsServer(lab, "aes-256-gcm", "own traffic test password", port=SS_PORT)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def own_cgroup() -> Iterator[tuple[str, Path]]:
    """A cgroup v2 of the test's own: (its name within the hierarchy, its directory)."""
    root = cgroup2_root()
    assert root is not None, "no cgroup v2 hierarchy mounted here"
    name = f"/daetui-own-{os.getpid()}"
    path = Path(root + name)
    path.mkdir()
    try:
        yield name, path
    finally:
        for _ in range(50):  # its processes are gone once reaped; the kernel frees the cgroup a moment later
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.1)
