"""The layer contracts of pyproject.toml ([tool.importlinter]) fail on an import that runs the wrong way.

`make test` runs lint-imports on the tree as it is; here a copy of the tree gets
one import that breaks a contract, and lint-imports must refuse it and say which.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")

BREACHES = [
    # (module the import is added to, the import, what lint-imports must say)
    ("daetui/dns/wire.py", "from daetui.control import plane",
     "daetui.dns is not allowed to import daetui.control"),
    ("daetui/outbound/direct.py", "from daetui.dataplane import journal",
     "daetui.outbound is not allowed to import daetui.dataplane"),
    ("daetui/ui/fmt.py", "from daetui.net import sockopts",
     "daetui.ui is not allowed to import daetui.net"),
    ("daetui/dns/wire.py", "from daetui.outbound import _share",
     "daetui.dns.wire imports daetui.outbound._share, private to its package"),
    ("daetui/routing/rule.py", "import testkit.configs",
     "daetui is not allowed to import testkit"),
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what lint-imports reads: the packages and pyproject.toml."""
    if not LINT.exists():
        pytest.skip("lint-imports is not installed (the test extras)")
    dst = tmp_path_factory.mktemp("tree")
    for package in ("daetui", "testkit"):
        shutil.copytree(ROOT / package, dst / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dst)
    return dst


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}  # this copy, not the checkout the venv points at
    return subprocess.run([str(LINT), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=120)


def test_the_copy_keeps_every_contract(tree: Path) -> None:
    out = lint(tree)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(("module", "line", "says"), BREACHES)
def test_an_import_the_wrong_way_is_refused(tree: Path, module: str, line: str, says: str) -> None:
    path = tree / module
    kept = path.read_text()
    path.write_text(kept + f"\n{line}  # noqa: E402, F401\n")
    try:
        out = lint(tree)
    finally:
        path.write_text(kept)
    assert out.returncode != 0
    assert says in " ".join(out.stdout.split()), out.stdout
