"""daetui installed as a user installs it (built into a folder of its own, not the checkout), run from /.

The installed copy must find its kernel sources, themes and example configs
through importlib.resources (daetui/resources.py), never by walking up to a
checkout: a daemon started from that copy in the lab loads its programs and
routes. The build takes setuptools from the package index (build isolation),
as `pip install .` does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.configs import RELAY_CONFIG, RELAYED4
from testkit.daemon import ROOT, Daemon

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding daetui as `pip install <checkout>` builds it (its dependencies are the venv's)."""
    target = tmp_path_factory.mktemp("site")
    argv = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(ROOT)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd="/")
    assert out.returncode == 0, out.stderr
    return target


def run_installed(site: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120, cwd="/", env=env)


def test_the_installed_copy_holds_its_files_and_runs_from_root(site: Path) -> None:
    where = run_installed(site, "-c", "import json, daetui, daetui.resources as r; print(json.dumps([daetui.__file__, "
                                      "str(r.bpf_dir()), str(r.themes_dir()), str(r.sample_configs_dir())]))")
    assert where.returncode == 0, where.stderr
    module, bpf, themes, samples = map(Path, json.loads(where.stdout))
    for path in (module, bpf, themes, samples):
        assert path.is_relative_to(site), f"{path} is not the installed copy's"
    assert {"lan.c", "daetui.h"} <= {p.name for p in bpf.iterdir()}
    assert (themes / "daetui.tcss").is_file() and (samples / "lab.toml").is_file()
    assert not (site / "testkit").exists() and not (site / "tests").exists()  # test infrastructure stays out

    helped = run_installed(site, "-m", "daetui", "--help")
    assert helped.returncode == 0 and "validate" in helped.stdout, helped.stderr
    checked = run_installed(site, "-m", "daetui", "validate", str(ROOT / "sample_configs" / "minimal.toml"))
    assert checked.returncode == 0 and ": ok:" in checked.stdout, checked.stdout + checked.stderr


def test_a_daemon_of_the_installed_copy_starts_in_the_lab_and_routes(site: Path, lab, tmp_path: Path) -> None:
    from helpers import tcp_echo

    config = tmp_path / "daetui.toml"
    config.write_text(RELAY_CONFIG)
    with Daemon(lab.router, config, tmp_path / "run", site=site, cwd=Path("/")) as d:
        ping = d.ping() or {}
        assert ping.get("running") and ping.get("config") == str(config)
        assert tcp_echo(lab, str(RELAYED4), b"through the installed daetui") == b"through the installed daetui"
    assert d.proc is not None and d.proc.returncode == 0, d.log()
    # Relayed by that daemon (the rule sends the flow to the control plane), which then undid its changes.
    assert f"-> {RELAYED4}:7 by #1" in d.log(), d.log()
    assert "system changes undone" in d.log(), d.log()
