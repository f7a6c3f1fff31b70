"""Every file in sample_configs/ loads, with small geo data files beside it where its rules use geoip/geosite."""

from __future__ import annotations

import shutil
from ipaddress import ip_address
from pathlib import Path

import pytest

from daetui.config.dae_import import convert_dae
from daetui.config.load import load_config
from daetui.routing.geodata import DomainEntry, write_geoip, write_geosite
from daetui.routing.matcher import FlowFacts, decide

SAMPLES = Path(__file__).resolve().parents[2] / "sample_configs"


@pytest.fixture
def beside_geo(tmp_path: Path):
    """Copy a sample into a directory that holds geoip.dat/geosite.dat with the tags the samples use."""
    write_geoip(tmp_path / "geoip.dat", {"cn": ["1.0.1.0/24", "240e::/20"],
                                         "private": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]})
    write_geosite(tmp_path / "geosite.dat", {
        "cn": [DomainEntry("suffix", "cn"), DomainEntry("suffix", "baidu.com")],
        "category-ads-all": [DomainEntry("suffix", "doubleclick.net")],
        "netflix": [DomainEntry("suffix", "netflix.com"), DomainEntry("suffix", "nflxvideo.net")],
        "disney": [DomainEntry("suffix", "disneyplus.com")],
    })

    def copy(name: str) -> Path:
        dst = tmp_path / name
        shutil.copy(SAMPLES / name, dst)
        dst.chmod(0o600)
        return dst
    return copy


def outbound(cfg, dip: str, dport: int, l4proto: str, **more) -> str | None:
    """Where the daemon sends the flow once sniffing is done (no name given: none was found)."""
    facts = FlowFacts(ip_address("192.168.1.20"), ip_address(dip), 40000, dport, l4proto, **more)
    return decide(cfg.routing, facts, unknown_name_matches=False).outbound


def test_every_sample_is_tested() -> None:
    assert {p.name for p in SAMPLES.glob("*.toml")} == {"lab.toml", "minimal.toml", "home-router.toml",
                                                        "from-dae.toml", "desktop.toml"}


def test_desktop(beside_geo) -> None:
    """No LAN: valid, no warning, and its rules route the machine's own programs by name."""
    cfg = load_config(beside_geo("desktop.toml"))
    assert not cfg.warnings
    assert (cfg.global_.lan_interface, cfg.global_.wan_interface, cfg.global_.cgroup) == ((), ("auto",), "/")
    assert outbound(cfg, dip="223.5.5.5", dport=53, l4proto="udp", pname="systemd-resolved") == "direct"
    assert outbound(cfg, dip="203.0.113.9", dport=53, l4proto="udp", pname="curl") == "proxy"
    assert outbound(cfg, dip="203.0.113.9", dport=443, l4proto="tcp", pname="ssh") == "direct"
    assert outbound(cfg, dip="203.0.113.9", dport=443, l4proto="tcp", pname="firefox") == "proxy"
    assert outbound(cfg, dip="192.168.1.1", dport=443, l4proto="tcp", pname="firefox") == "direct"


def test_minimal(beside_geo) -> None:
    cfg = load_config(beside_geo("minimal.toml"))
    assert cfg.global_.lan_interface == ("br-lan",) and not cfg.routing.entries
    assert cfg.routing.fallback == "direct" and not cfg.warnings


def test_lab(beside_geo) -> None:
    cfg = load_config(beside_geo("lab.toml"))
    assert len(cfg.routing.entries) == 6 and cfg.global_.lan_interface == ("lan0",)
    assert cfg.dns.upstream == {"lab": "udp://203.0.113.53:53"} and cfg.dns.request_fallback == "lab"


def test_home_router(beside_geo) -> None:
    cfg = load_config(beside_geo("home-router.toml"))
    assert not cfg.warnings
    g = cfg.global_
    assert (g.dial_mode, g.sniffing_timeout, g.check_tolerance) == ("domain", 0.1, 0.05)
    assert {n.tag for n in cfg.nodes} == {"hk1", "jp1", "home-socks"}
    media = next(x for x in cfg.groups if x.name == "media")
    assert (media.policy, media.check_interval) == ("min_avg10", 120.0)
    assert cfg.devices["02:42:ac:11:00:02"] == "tv"
    assert [e.name for e in cfg.routing.entries if not e.enabled] == ["no-quic"]
    # What it means for flows, through the daemon's own matcher.
    tv = bytes.fromhex("0242ac110002")
    assert outbound(cfg, dip="1.0.1.9", dport=443, l4proto="tcp") == "direct"                     # geoip:cn
    assert outbound(cfg, dip="10.1.2.3", dport=22, l4proto="tcp") == "direct"                     # private
    assert outbound(cfg, dip="203.0.113.9", dport=443, l4proto="tcp", domain="www.netflix.com",
                    mac=tv) == "media"
    assert outbound(cfg, dip="203.0.113.9", dport=443, l4proto="tcp", domain="ad.doubleclick.net") == "block"
    assert outbound(cfg, dip="203.0.113.9", dport=443, l4proto="tcp", domain="example.com") == "proxy"


def test_from_dae_is_what_import_dae_makes_of_its_dae_file(beside_geo) -> None:
    dae = SAMPLES / "from-dae.dae"
    assert convert_dae(dae.read_text(), dae.name) == (SAMPLES / "from-dae.toml").read_text()
    cfg = load_config(beside_geo("from-dae.toml"))
    assert cfg.routing.fallback == "my_group" and len(cfg.routing.entries) == 7
    assert {g.name for g in cfg.groups} == {"my_group", "local_group"}
    assert outbound(cfg, dip="203.0.113.9", dport=443, l4proto="udp") == "block"   # no h3
