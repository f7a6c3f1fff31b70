"""Fixtures shared by the suite: capability checks, the lab, a daemon in it.

Tests marked `kernel` need root, BPF (BCC with kernel headers) and network
namespaces. Without them they skip -- unless DAETUI_REQUIRE_KERNEL=1 (set by
.ci/run), under which a missing capability fails the run.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# `from helpers import ...` in every directory of tests/ (testkit/ comes from pytest's pythonpath).
sys.path.insert(0, str(ROOT / "tests"))

REQUIRE_KERNEL = os.environ.get("DAETUI_REQUIRE_KERNEL") == "1"


def kernel_problem() -> str | None:
    """Why kernel tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) missing"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc (python3-bpfcc) not importable"
    build = Path(f"/lib/modules/{os.uname().release}/build")
    if not build.exists():
        return f"{build} missing (kernel headers)"
    if not Path("/sys/fs/bpf").exists() and not Path("/proc/sys/kernel/unprivileged_bpf_disabled").exists():
        return "no BPF support"
    return None


_PROBLEM = kernel_problem()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if _PROBLEM is None or "kernel" not in item.keywords:
        return
    if REQUIRE_KERNEL:
        pytest.fail(f"DAETUI_REQUIRE_KERNEL=1 but kernel tests cannot run: {_PROBLEM}")
    pytest.skip(f"kernel tests need: {_PROBLEM}")


@pytest.fixture(scope="session")
def lab() -> Iterator[object]:
    """A lab of its own for this test session (unique name), torn down at the end."""
    if _PROBLEM is not None:
        if REQUIRE_KERNEL:
            pytest.fail(f"DAETUI_REQUIRE_KERNEL=1 but the lab cannot run: {_PROBLEM}")
        pytest.skip(f"the lab needs: {_PROBLEM}")
    from daetui.lab.topology import Lab

    lab = Lab(f"dtt{os.getpid() % 100000}")
    lab.up()
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture
def daemon(lab, tmp_path: Path) -> Iterator[object]:
    """`daetui --no-ui` in the lab's router for this test, not started yet (helpers.Daemon).

    Its config is `daemon.config_path` (tmp_path/daetui.toml: write it, then
    `start()`), its run dir tmp_path/run. Stopped at the end, whatever happened.
    """
    from helpers import Daemon

    d = Daemon(lab, tmp_path / "daetui.toml", tmp_path / "run")
    yield d
    d.stop()
