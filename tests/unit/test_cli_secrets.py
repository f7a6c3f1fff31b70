"""`daetui validate` and the config errors the command line prints: a node's secret never on the terminal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TYPO_UUID = "7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2"   # one digit short: the protocol module says so, quoting it
PASSWORD = "Sup3r-S3cret-pw"


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daetui", "validate", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_validate_masks_the_secret_a_link_error_quotes(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[node]\ntypo = "vless://{TYPO_UUID}@203.0.113.10:443?security=none#typo"\n'
                   '[routing]\nfallback = "direct"\n')
    cfg.chmod(0o600)
    out = validate(cfg)
    assert out.returncode == 1
    assert "node.typo: vless:// link: id '***' is not a UUID" in out.stderr
    assert TYPO_UUID not in out.stderr + out.stdout


def test_a_config_error_on_a_link_line_masks_it(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[node]\ns = "sock5://alice:{PASSWORD}@203.0.113.10:1080"\n')
    out = validate(cfg)
    assert out.returncode == 1
    assert f"{cfg}:2:5: node.s: expected a" in out.stderr and 's = "sock5://***"' in out.stderr
    assert PASSWORD not in out.stderr + out.stdout
