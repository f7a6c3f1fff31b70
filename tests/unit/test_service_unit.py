"""The systemd unit `daetui install-service` writes: what it holds, that systemd's own parser accepts it.

systemd does not run here (PID 1 is not systemd), but `systemd-analyze
verify` reads a unit offline with systemd's parser: unknown keys, bad
values and commands that are not executable are all reported.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from daetui.service.unit import UnitError, install_unit, render_unit, shipped_unit
from testkit.daemon import ROOT, _env


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daetui", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=_env())


def unit_keys(text: str) -> dict[str, dict[str, str]]:
    p = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    p.optionxform = str  # type: ignore[assignment,method-assign]
    p.read_string(text)
    return {s: dict(p[s]) for s in p.sections()}


def test_install_service_writes_the_unit_it_prints(tmp_path: Path):
    config = tmp_path / "etc" / "daetui" / "config.toml"
    shown = cli("install-service", "--dry-run", "-c", str(config))
    assert shown.returncode == 0, shown.stderr
    wrote = cli("install-service", "--root", str(tmp_path), "-c", str(config))
    assert wrote.returncode == 0, wrote.stderr
    unit = tmp_path / "etc/systemd/system/daetui.service"
    assert f"wrote {unit}" in wrote.stdout
    assert "does not exist yet" in wrote.stderr  # the config is not there
    assert unit.read_text() == shown.stdout
    assert unit.stat().st_mode & 0o777 == 0o644

    svc = unit_keys(shown.stdout)["Service"]
    exe = str(Path(sys.executable).parent / "daetui")
    assert svc["Type"] == "notify" and svc["NotifyAccess"] == "main"
    assert svc["ExecStart"] == f"{exe} run --no-ui --config {config}"
    assert svc["ExecReload"] == f"{exe} reload"
    assert svc["ExecStopPost"] == f"{exe} cleanup"
    assert svc["Restart"] == "on-failure" and svc["LimitNOFILE"] == "524288"
    assert svc["ReadWritePaths"] == f"-{config.parent}"
    assert "/usr/bin/daetui" not in shown.stdout.split("[Unit]")[1]  # the shipped path is replaced everywhere


def test_install_service_keeps_a_different_unit_without_force(tmp_path: Path):
    first = render_unit("/etc/daetui/config.toml", ["/opt/daetui/bin/daetui"])
    install_unit(first, tmp_path)
    install_unit(first, tmp_path)  # the same text again: fine
    second = render_unit("/etc/daetui/other.toml", ["/opt/daetui/bin/daetui"])
    with pytest.raises(UnitError, match="exists and differs"):
        install_unit(second, tmp_path)
    assert install_unit(second, tmp_path, force=True).read_text() == second
    refused = cli("install-service", "--root", str(tmp_path), "-c", "/etc/daetui/third.toml")
    assert refused.returncode == 1 and "--force replaces it" in refused.stderr


def test_paths_systemd_would_misread_are_refused():
    with pytest.raises(UnitError, match="absolute paths without spaces"):
        render_unit("/etc/dae tui/config.toml")
    text = render_unit("/etc/daetui/100%.toml", ["/opt/daetui/bin/daetui"])
    assert "--config /etc/daetui/100%%.toml" in text  # % is a specifier in a unit file


def test_the_shipped_unit_is_the_rendered_one_for_the_shipped_paths():
    assert render_unit("/etc/daetui/config.toml", ["/usr/bin/daetui"]) == shipped_unit()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path):
    """systemd's parser, offline: no unknown key, no bad value, every command executable."""
    unit = install_unit(render_unit(tmp_path / "config.toml"), tmp_path)
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    complaints = [ln for ln in (done.stdout + done.stderr).splitlines() if "daetui.service" in ln]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr

    # And it does catch mistakes: the same unit with a misspelt key and a bad value.
    bad = unit.with_name("daetui-bad.service")
    bad.write_text(unit.read_text().replace("Restart=on-failure", "Restart=sometimes\nRestartSecs=2"))
    done = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert "Unknown key" in done.stderr and "Restart" in done.stderr, done.stderr
