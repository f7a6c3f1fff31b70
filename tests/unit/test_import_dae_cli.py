"""`daetui import-dae` end to end: a rich dae config converted, written, validated and routed by explain."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from daetui.config.load import load_config
from daetui.routing.geodata import DomainEntry, write_geoip, write_geosite

ROOT = Path(__file__).resolve().parents[2]
RICH = Path(__file__).resolve().parent / "data" / "rich.dae"


def daetui(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "daetui", *argv], capture_output=True, text=True, env=env,
                          timeout=60)


@pytest.fixture
def geo_dir(tmp_path: Path) -> Path:
    """Small geoip.dat/geosite.dat with the tags rich.dae uses, next to where the result goes."""
    write_geoip(tmp_path / "geoip.dat", {"cn": ["1.0.1.0/24", "240e::/20"],
                                         "private": ["10.0.0.0/8", "192.168.0.0/16", "fc00::/7"]})
    write_geosite(tmp_path / "geosite.dat", {
        "cn": [DomainEntry("suffix", "cn"), DomainEntry("suffix", "baidu.com")],
        "category-ads": [DomainEntry("suffix", "ads.example")],
        "category-ads-all": [DomainEntry("suffix", "ads.example"), DomainEntry("keyword", "doubleclick")],
        "google": [DomainEntry("suffix", "google.com"), DomainEntry("suffix", "google.cn", {"cn"})],
    })
    return tmp_path


def test_a_rich_dae_config_converts_and_the_result_validates(geo_dir: Path) -> None:
    out = geo_dir / "rich.toml"
    r = daetui("import-dae", str(RICH), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out}: ")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600   # it holds proxy passwords

    v = daetui("validate", str(out))
    assert v.returncode == 0, v.stderr + v.stdout

    cfg = load_config(out)
    dae_rules = [ln for ln in RICH.read_text().split("\nrouting {", 1)[1].splitlines()
                 if "->" in ln and not ln.strip().startswith("#")]
    assert len(cfg.routing.entries) == len(dae_rules)
    assert cfg.routing.fallback == "proxy"
    assert {g.name for g in cfg.groups} >= {"proxy", "media"}
    text = out.read_text()
    for comment in ("# Block ads.", "### Write your rules below.", "# A device that bypasses the proxy."):
        assert comment in text

    # And it routes: the converted rules, through the same matcher as the daemon's.
    def explain(*argv: str) -> str:
        e = daetui("explain", *argv, "--config", str(out), "--offline")
        assert e.returncode == 0, e.stderr
        return e.stdout

    assert "-> media" in explain("www.netflix.com:443")
    assert "-> direct" in explain("1.0.1.7:443")                  # geoip:cn
    assert "-> block" in explain("x.ads.example:443")              # geosite:category-ads
    assert "-> proxy" in explain("8.8.4.4:53", "--proto", "udp")   # spread over two lines in dae


def test_refuses_to_overwrite_and_names_the_line_of_what_it_cannot_convert(tmp_path: Path) -> None:
    out = tmp_path / "out.toml"
    out.write_text("# mine\n")
    r = daetui("import-dae", str(RICH), "-o", str(out))
    assert r.returncode == 1 and "exists (--force replaces it)" in r.stderr
    assert out.read_text() == "# mine\n"

    bad = tmp_path / "bad.dae"
    bad.write_text("global {\n  tproxy_port: 12345\n  no_such_option: 1\n}\nrouting {\n  fallback: direct\n}\n")
    r = daetui("import-dae", str(bad))
    assert r.returncode == 1
    assert f"{bad}:3:3:" in r.stderr and "no_such_option" in r.stderr


def test_dae_options_daetui_has_no_use_for_import_and_load_with_a_warning(tmp_path: Path) -> None:
    src = tmp_path / "small.dae"
    src.write_text("global {\n  lan_interface: lan0\n  auto_config_firewall_rule: true\n"
                   "  dns_performance_level: high\n  dns_ingress_manual {\n    workers: 4\n    queue: 100\n  }\n}\n"
                   "routing {\n  fallback: direct\n}\n")
    out = tmp_path / "small.toml"
    r = daetui("import-dae", str(src), "-o", str(out))
    assert r.returncode == 0, r.stderr
    cfg = load_config(out)
    for key in ("auto_config_firewall_rule", "dns_performance_level", "dns_ingress_manual"):
        assert any(f"global.{key} is ignored" in w for w in cfg.warnings), (key, cfg.warnings)


def test_validate_reads_every_node_link(tmp_path: Path) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text('[node]\ngood = "socks5://192.0.2.9:1080"\n'
                   'bad = "ss://bm90LWEtbWV0aG9kOnB3@192.0.2.9:8388"\n[routing]\nfallback = "direct"\n')
    r = daetui("validate", str(cfg))
    assert r.returncode == 1
    assert f"{cfg}:3:" in r.stderr and "node.bad:" in r.stderr and "good" not in r.stderr
    cfg.write_text('[node]\ngood = "socks5://192.0.2.9:1080"\n[routing]\nfallback = "direct"\n')
    ok = daetui("validate", str(cfg))
    assert ok.returncode == 0 and "1 nodes" in ok.stdout
